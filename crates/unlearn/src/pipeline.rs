//! The unlearning pipeline: build the forget / retain / test data of a scenario, run a method on
//! a copy of the original model (timed), evaluate it with the field's metrics, search its
//! learning rate, and tabulate a benchmark against Retrain.

use crate::methods::{MethodConfig, MethodReport, UnlearnCtx, UnlearnData};
use crate::metrics::{avg_gap, mia_efficacy, try_true_label_confidence, UnlearnMetrics};
use crate::scenario::Scenario;
use crate::svm::SvcConfig;
use rustworthy_core::{Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Builds the scenario's datasets on `device`. `full_train` is the dataset's whole training file
/// (indices of the scenario refer to it); class-wise scenarios drop their classes from `test`.
pub fn build_data(
    full_train: &Dataset,
    test: &Dataset,
    scenario: Scenario,
    device: Device,
) -> Result<UnlearnData> {
    let n = full_train.len();
    if let Some(&bad) = scenario
        .forget
        .iter()
        .chain(&scenario.retain)
        .find(|&&i| i >= n)
    {
        return Err(Error::invalid(format!(
            "scenario index {bad} is out of range for {} ({n} samples)",
            full_train.name
        )));
    }
    let forget = full_train.subset(&scenario.forget)?.to_device(device);
    let retain = full_train.subset(&scenario.retain)?.to_device(device);
    let test = if scenario.forget_classes.is_empty() {
        test.to_device(device)
    } else {
        let keep: Vec<usize> = test
            .labels_vec()
            .iter()
            .enumerate()
            .filter(|(_, &y)| !scenario.forget_classes.contains(&(y as usize)))
            .map(|(i, _)| i)
            .collect();
        if keep.is_empty() {
            return Err(Error::invalid(
                "no test sample remains outside the forgotten classes",
            ));
        }
        test.subset(&keep)?.to_device(device)
    };
    Ok(UnlearnData {
        forget,
        retain,
        test,
        scenario,
    })
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Runs one method on a copy of `original`; returns the unlearned model, the method's own
/// report and its wall-clock run time (RTE) in seconds.
pub fn run_method(
    original: &Model,
    cfg: &MethodConfig,
    ctx: &UnlearnCtx,
) -> Result<(Model, MethodReport, f64)> {
    let method = cfg.build()?;
    let mut model = original.try_clone()?;
    sync(model.device());
    let t0 = Instant::now();
    let rep = method.unlearn(&mut model, ctx)?;
    if let Some(m) = ctx.masks {
        // Methods that edit weights without the optimizer (FF, IU) are projected back onto the
        // mask; for the others this is a no-op.
        rustworthy_train::mask::apply_masks(&model, m)?;
    }
    sync(model.device());
    let rte = t0.elapsed().as_secs_f64();
    for (name, p) in model.parameters() {
        if !all_finite(&p) {
            return Err(Error::Numerical(format!(
                "{}: parameter {name} became non-finite; lower the learning rate",
                cfg.name()
            )));
        }
    }
    Ok((model, rep, rte))
}

/// Eval-mode logits, accuracy (%) and true-label confidences of `model` on `data`.
fn scores(model: &Model, data: &Dataset, batch: usize) -> Result<(f64, Vec<f64>)> {
    let logits = rustworthy_train::eval::logits(model, data, batch)?;
    let y = data.labels.to_device(logits.device());
    let correct = logits
        .argmax(-1, false)
        .eq_tensor(&y)
        .sum(Kind::Int64)
        .int64_value(&[]);
    let acc = 100.0 * correct as f64 / data.len().max(1) as f64;
    let conf = try_true_label_confidence(&logits, &y)?;
    Ok((acc, conf))
}

/// UA, RA, TA, MIA-Efficacy (and AUCs) of `model` on the scenario; `rte_s` is passed through.
pub fn evaluate(
    model: &Model,
    data: &UnlearnData,
    svc: &SvcConfig,
    batch: usize,
    rte_s: f64,
) -> Result<UnlearnMetrics> {
    let (forget_acc, forget_conf) = scores(model, &data.forget, batch)?;
    let (ra, retain_conf) = scores(model, &data.retain, batch)?;
    let (ta, test_conf) = scores(model, &data.test, batch)?;
    let mia = mia_efficacy(&retain_conf, &test_conf, &forget_conf, svc)?;
    Ok(UnlearnMetrics {
        ua: 100.0 - forget_acc,
        ra,
        ta,
        mia_efficacy: mia.efficacy,
        mia_auc_members_vs_test: mia.auc_members_vs_test,
        mia_auc_forget_vs_test: mia.auc_forget_vs_test,
        rte_s,
    })
}

/// One evaluated method run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodResult {
    /// The method's name.
    pub method: String,
    /// The configuration that ran (at the selected learning rate after a search).
    pub config: MethodConfig,
    /// The unlearned model's metrics.
    pub metrics: UnlearnMetrics,
    /// Avg. Gap to Retrain (None for Retrain itself or when Retrain was not run).
    pub gap: Option<f64>,
    /// What the method reported about its own run.
    pub report: MethodReport,
    /// The learning-rate grid, when the lr was searched.
    pub lr_grid: Vec<GridPoint>,
}

/// One point of a learning-rate search.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GridPoint {
    /// The learning rate tried (the scale `alpha` for FF and IU).
    pub lr: f64,
    /// The run's metrics (`None` if it failed).
    pub metrics: Option<UnlearnMetrics>,
    /// Avg. Gap to Retrain of the run, when Retrain's metrics are known.
    pub gap: Option<f64>,
    /// Why the run failed (e.g. diverged), if it did.
    pub error: Option<String>,
    /// Whether the search picked this point.
    pub selected: bool,
}

/// How the learning-rate search picks a point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Selection {
    /// Smallest Avg. Gap to Retrain (needs Retrain's metrics).
    Gap,
    /// Largest UA among runs whose TA is at least `reference TA - max_ta_drop` (the reference
    /// being Retrain when available, else the original model).
    UaWithTaFloor {
        /// The largest accepted TA drop, in percentage points (>= 0).
        max_ta_drop: f64,
    },
}

impl std::str::FromStr for Selection {
    type Err = Error;
    /// `gap` or `ua:ta-drop=2`.
    fn from_str(s: &str) -> Result<Self> {
        if s == "gap" {
            return Ok(Selection::Gap);
        }
        if let Some(v) = s.strip_prefix("ua:ta-drop=") {
            let d: f64 = v
                .parse()
                .map_err(|_| Error::config("select", format!("`{v}` is not a number")))?;
            rustworthy_core::validate::non_negative("select.ta-drop", d)?;
            return Ok(Selection::UaWithTaFloor { max_ta_drop: d });
        }
        Err(Error::config(
            "select",
            format!("`{s}`: expected `gap` or `ua:ta-drop=POINTS`"),
        ))
    }
}

/// Runs `cfg` at each learning rate of `lrs`, evaluates every run, and picks one by `select`.
/// Runs that fail numerically are recorded in the grid, not fatal.
#[allow(clippy::too_many_arguments)]
pub fn lr_search(
    original: &Model,
    cfg: &MethodConfig,
    lrs: &[f64],
    ctx: &UnlearnCtx,
    svc: &SvcConfig,
    batch: usize,
    select: &Selection,
    retrain: Option<&UnlearnMetrics>,
    reference_ta: f64,
) -> Result<(MethodResult, Model)> {
    if cfg.lr().is_none() {
        return Err(Error::config(
            "lr_search",
            format!("{} has no learning rate to search", cfg.name()),
        ));
    }
    if *select == Selection::Gap && retrain.is_none() {
        return Err(Error::config("select", "`gap` needs Retrain's metrics"));
    }
    let mut grid = Vec::new();
    let mut best: Option<(usize, f64, Model, MethodReport)> = None;
    for &lr in lrs {
        let c = cfg.with_lr(lr);
        match run_method(original, &c, ctx) {
            Ok((m, rep, rte)) => {
                let met = evaluate(&m, ctx.data, svc, batch, rte)?;
                let gap = retrain.map(|r| avg_gap(&met, r));
                let score = match select {
                    Selection::Gap => gap.map(|g| -g),
                    Selection::UaWithTaFloor { max_ta_drop } => {
                        (met.ta >= reference_ta - max_ta_drop).then_some(met.ua)
                    }
                };
                if let Some(s) = score {
                    if best.as_ref().is_none_or(|b| s > b.1) {
                        best = Some((grid.len(), s, m, rep));
                    }
                }
                grid.push(GridPoint {
                    lr,
                    metrics: Some(met),
                    gap,
                    error: None,
                    selected: false,
                });
            }
            Err(e @ Error::Numerical(_)) => grid.push(GridPoint {
                lr,
                metrics: None,
                gap: None,
                error: Some(e.to_string()),
                selected: false,
            }),
            Err(e) => return Err(e),
        }
    }
    let (i, _, model, report) = best.ok_or_else(|| {
        Error::invalid(format!(
            "lr search for {}: no learning rate met the selection criterion",
            cfg.name()
        ))
    })?;
    grid[i].selected = true;
    let chosen = &grid[i];
    let result = MethodResult {
        method: cfg.name().to_string(),
        config: cfg.with_lr(chosen.lr),
        metrics: chosen
            .metrics
            .clone()
            .expect("selected points have metrics"),
        gap: chosen.gap,
        report,
        lr_grid: grid,
    };
    Ok((result, model))
}

/// Paper-style table (Markdown) of benchmark results: UA, RA, TA, MIA-Efficacy, RTE, Avg. Gap.
pub fn markdown_table(rows: &[MethodResult]) -> String {
    let mut s = String::from(
        "| Method | UA | RA | TA | MIA-Efficacy | MIA AUC (forget vs test) | RTE (s) | Avg. Gap |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let m = &r.metrics;
        s.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} |\n",
            r.method,
            m.ua,
            m.ra,
            m.ta,
            m.mia_efficacy,
            m.mia_auc_forget_vs_test,
            m.rte_s,
            r.gap
                .map(|g| format!("{g:.2}"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    s
}

/// The same table as CSV.
pub fn csv_table(rows: &[MethodResult]) -> String {
    let mut s = String::from("method,ua,ra,ta,mia_efficacy,mia_auc_members_vs_test,mia_auc_forget_vs_test,rte_s,avg_gap,lr\n");
    for r in rows {
        let m = &r.metrics;
        s.push_str(&format!(
            "{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.3},{},{}\n",
            r.method,
            m.ua,
            m.ra,
            m.ta,
            m.mia_efficacy,
            m.mia_auc_members_vs_test,
            m.mia_auc_forget_vs_test,
            m.rte_s,
            r.gap.map(|g| format!("{g:.4}")).unwrap_or_default(),
            r.config.lr().map(|l| l.to_string()).unwrap_or_default()
        ));
    }
    s
}

/// Whether every entry of `t` is finite.
fn all_finite(t: &Tensor) -> bool {
    t.isfinite().all().int64_value(&[]) == 1
}

//! The unlearning benchmark: train (or reuse) the original model, run Retrain first and then
//! every method on one scenario (optionally also on the pruned original), with a per-method
//! result cache so an interrupted benchmark continues, and write the paper-style table
//! (Markdown, CSV, JSON), a gap-vs-time plot and the report.

use crate::config::preset;
use crate::train_run::{set_threads, train, TrainOptions};
use crate::unlearn_run::{prune_original, PruneSpec, UnlearnSetup, PRUNE_FINETUNE_EPOCHS};
use rustworthy_core::device::device_name;
use rustworthy_core::fsutil::{atomic_write, write_json_atomic};
use rustworthy_core::plot::{Chart, Point};
use rustworthy_core::progress::ProgressMode;
use rustworthy_core::report::{utc_now, RunReport};
use rustworthy_core::{DeviceSpec, Error, Result};
use rustworthy_train::checkpoint::{read_meta, sidecar_of, CheckpointMeta};
use rustworthy_unlearn::metrics::{avg_gap, UnlearnMetrics};
use rustworthy_unlearn::pipeline::{
    csv_table, evaluate, lr_search, markdown_table, run_method, MethodResult, Selection,
};
use rustworthy_unlearn::svm::SvcConfig;
use rustworthy_unlearn::{ForgetSpec, MethodConfig, Profile, UnlearnCtx};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// A benchmark preset: the original model's training preset, the scenario and the methods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchConfig {
    /// Training preset of the original model.
    pub original: String,
    /// Epochs of the original model (default: the training preset's).
    #[serde(default)]
    pub original_epochs: Option<usize>,
    /// Settings of the original model's training preset changed as `train --set` changes them
    /// (`key=value`, e.g. `data.train_subset=10000` for a quick benchmark on a seeded subset;
    /// the forget set, Retrain and every method then use that subset).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub original_sets: Vec<String>,
    /// Where the original model lives (default: `<out>/original`); presets that share an
    /// original model point here so it is trained once.
    #[serde(default)]
    pub original_out: Option<PathBuf>,
    /// What to forget (`class:K`, `random:FRACTION`, `indices:FILE`).
    pub forget: String,
    #[serde(default = "one")]
    /// Seed of a random forget set.
    pub forget_seed: u64,
    /// Seed of the methods' own randomness.
    #[serde(default)]
    pub seed: u64,
    /// The methods, in table order (Retrain always runs first).
    pub methods: Vec<String>,
    /// Which published account the methods' defaults follow (default `reference`); the
    /// per-method settings below override it.
    #[serde(default)]
    pub profile: Profile,
    /// Per-method settings, e.g. `[method.ft] epochs = 5`.
    #[serde(default)]
    pub method: BTreeMap<String, toml::Table>,
    #[serde(default)]
    /// Learning-rate search of every method.
    pub lr_search: LrSearchConfig,
    #[serde(default = "default_eval_batch")]
    /// Batch size of the evaluations.
    pub eval_batch_size: usize,
    /// Device.
    pub device: DeviceSpec,
    /// Output folder.
    pub out: PathBuf,
    /// libtorch threads (0: default).
    #[serde(default)]
    pub threads: usize,
    /// Also run every method on the original model pruned one-shot (`METHOD:SPARSITY`, e.g.
    /// `omp:0.95`), with the mask fixed; those rows are named `method@METHOD:SPARSITY` and their
    /// gaps are to the masked Retrain.
    #[serde(default)]
    pub prune: Option<String>,
}

fn one() -> u64 {
    1
}
fn default_eval_batch() -> usize {
    1000
}

/// The learning-rate search of the benchmark.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSearchConfig {
    #[serde(default)]
    /// Search (else each method's configured lr).
    pub enabled: bool,
    #[serde(default = "default_grid")]
    /// Multipliers of each method's lr.
    pub multipliers: Vec<f64>,
    #[serde(default = "default_select")]
    /// Selection rule: `gap` or `ua:ta-drop=POINTS`.
    pub select: String,
}

impl Default for LrSearchConfig {
    fn default() -> Self {
        LrSearchConfig {
            enabled: false,
            multipliers: default_grid(),
            select: default_select(),
        }
    }
}

fn default_grid() -> Vec<f64> {
    vec![0.25, 0.5, 1.0, 2.0, 4.0]
}
fn default_select() -> String {
    "gap".into()
}

/// Benchmark presets shipped with the binary.
pub const BENCH_PRESETS: &[(&str, &str, &str)] = &[
    (
        "fmnist-lenet-random10",
        "LeNet-5 / Fashion-MNIST, forget a random 10% of the training set",
        include_str!("../../../presets/bench/fmnist-lenet-random10.toml"),
    ),
    (
        "fmnist-lenet-random50",
        "LeNet-5 / Fashion-MNIST, forget a random 50% of the training set",
        include_str!("../../../presets/bench/fmnist-lenet-random50.toml"),
    ),
    (
        "fmnist-lenet-class",
        "LeNet-5 / Fashion-MNIST, forget class 0 (T-shirt/top) entirely",
        include_str!("../../../presets/bench/fmnist-lenet-class.toml"),
    ),
    (
        "fmnist-resnet18-random10",
        "ResNet-18 / Fashion-MNIST, random 10% (for a GPU)",
        include_str!("../../../presets/bench/fmnist-resnet18-random10.toml"),
    ),
];

/// Loads a benchmark preset by name.
pub fn bench_preset(name: &str) -> Result<BenchConfig> {
    match BENCH_PRESETS.iter().find(|p| p.0 == name) {
        Some((n, _, text)) => toml::from_str(text)
            .map_err(|e| Error::config(format!("bench preset {n}"), e.to_string())),
        None => Err(Error::config(
            "preset",
            format!(
                "unknown bench preset `{name}`; known: {}",
                BENCH_PRESETS
                    .iter()
                    .map(|p| p.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

impl BenchConfig {
    /// Checks the config: the forget spec, the selection rule, the prune spec, every method
    /// name and every method's settings. Errors name the field.
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = &self.prune {
            p.parse::<PruneSpec>()?;
        }
        self.forget.parse::<ForgetSpec>()?;
        self.lr_search.select.parse::<Selection>()?;
        if self.methods.is_empty() {
            return Err(Error::config("methods", "no method to run"));
        }
        for (name, _) in self.method.iter() {
            MethodConfig::default_for(name)?;
        }
        for m in &self.methods {
            method_from_bench(self, m)?;
        }
        preset(&self.original)?;
        Ok(())
    }

    /// The same benchmark under `profile`. A profile other than the preset's writes to its
    /// own folder (`<out>-<profile>`), so the tables of both profiles stay side by side; the
    /// original model is shared.
    pub fn with_profile(mut self, profile: Profile) -> BenchConfig {
        if profile != self.profile {
            if self.original_out.is_none() {
                self.original_out = Some(self.out.join("original"));
            }
            let mut name = self.out.file_name().unwrap_or_default().to_os_string();
            name.push(format!("-{profile}"));
            self.out.set_file_name(name);
            self.profile = profile;
        }
        self
    }

    /// Reads a TOML file shaped like `presets/bench/*.toml` and checks it; errors name the
    /// file.
    pub fn from_file(p: &std::path::Path) -> Result<BenchConfig> {
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        let c: BenchConfig = toml::from_str(&text)
            .map_err(|e| Error::config(p.display().to_string(), e.to_string()))?;
        c.validate().map_err(|e| e.in_file(p))?;
        Ok(c)
    }
}

/// How a benchmark is driven (none of it changes the results).
#[derive(Clone, Debug, Default)]
pub struct BenchOptions {
    /// Where the dataset is read from.
    pub data_dir: Option<PathBuf>,
    /// Ignore method results already in the output folder.
    pub fresh: bool,
    /// Progress display (library default: quiet).
    pub progress: ProgressMode,
}

/// What a benchmark produced.
pub struct BenchOutcome {
    /// The Markdown table with its header lines (also in `results.md`).
    pub markdown: String,
    /// The original model's metrics.
    pub original: UnlearnMetrics,
    /// One result per row (Retrain first), in table order.
    pub results: Vec<MethodResult>,
    /// Methods that diverged, with the error.
    pub failed: Vec<(String, String)>,
    /// The output folder.
    pub out: PathBuf,
}

fn method_from_bench(c: &BenchConfig, name: &str) -> Result<MethodConfig> {
    let o = match c.method.get(name) {
        Some(t) => match serde_json::to_value(t)? {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
        None => serde_json::Map::new(),
    };
    MethodConfig::with_overrides_for(name, c.profile, &o)
}

/// What is saved per method so an interrupted benchmark can continue.
#[derive(Serialize, Deserialize)]
struct SavedResult {
    key: serde_json::Value,
    result: MethodResult,
}

/// Runs the whole benchmark of `c` and writes its folder.
pub fn bench_unlearn(c: &BenchConfig, opts: &BenchOptions) -> Result<BenchOutcome> {
    let t_total = Instant::now();
    let mode = opts.progress;
    c.validate()?;
    set_threads(c.threads);
    let device = c.device.resolve()?;
    let out = c.out.clone();
    let _lock = crate::train_run::lock_out(&out)?;
    std::fs::create_dir_all(out.join("methods")).map_err(|e| Error::io(&out, e))?;
    let mut timings = BTreeMap::new();

    // 1. The original model: reuse it if it was trained with the same config.
    let mut orig_cfg = crate::config::apply_sets(&preset(&c.original)?, &c.original_sets)?;
    if let Some(e) = c.original_epochs {
        orig_cfg.train.epochs = e;
    }
    orig_cfg.run.out = c
        .original_out
        .clone()
        .unwrap_or_else(|| out.join("original"));
    orig_cfg.run.device = c.device;
    orig_cfg.run.threads = c.threads;
    if let Some(d) = &opts.data_dir {
        orig_cfg.data.data_dir = Some(d.clone());
    }
    orig_cfg.validate()?;
    let orig_path = orig_cfg.run.out.join("model.safetensors");
    // Reuse an original model trained on the same data, model and recipe (where it was
    // written and how many threads it used do not change it).
    let want = serde_json::to_value(&orig_cfg)?;
    let same = |m: &CheckpointMeta| {
        ["data", "model", "train"]
            .iter()
            .all(|k| m.config.get(k) == want.get(k))
    };
    let reuse = sidecar_of(&orig_path).is_file()
        && read_meta(&sidecar_of(&orig_path))
            .map(|m| same(&m))
            .unwrap_or(false);
    let t0 = Instant::now();
    if reuse {
        tracing::info!("reusing the original model {}", orig_path.display());
    } else {
        tracing::info!("training the original model ({})", c.original);
        train(
            &orig_cfg,
            &TrainOptions {
                progress: mode,
                resume: true,
                ..Default::default()
            },
        )?;
    }
    timings.insert("original_train".to_string(), t0.elapsed().as_secs_f64());

    // 2. Scenario and data.
    let spec: ForgetSpec = c.forget.parse()?;
    let s = UnlearnSetup::open(
        &orig_path,
        &spec,
        c.forget_seed,
        opts.data_dir.as_deref(),
        device,
    )?;
    s.data.scenario.save(&out.join("scenario.json"))?;
    let svc = SvcConfig::default();
    let original_metrics = evaluate(&s.original, &s.data, &svc, c.eval_batch_size, 0.0)?;
    let prune_spec = c
        .prune
        .as_deref()
        .map(str::parse::<PruneSpec>)
        .transpose()?;
    let mut results: Vec<MethodResult> = Vec::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut sparse_original = None;
    let variants: Vec<Option<PruneSpec>> =
        std::iter::once(None).chain(prune_spec.map(Some)).collect();
    for variant in variants {
        let (pruned, masks, suffix) = match variant {
            None => (None, None, String::new()),
            Some(p) => {
                let (m, mk, secs) = prune_original(&s, p, c.seed)?;
                timings.insert(format!("prune_{p}"), secs);
                let met = evaluate(&m, &s.data, &svc, c.eval_batch_size, 0.0)?;
                tracing::info!(
                "pruned original ({p}, fine-tuned {PRUNE_FINETUNE_EPOCHS} epochs, {secs:.1}s): UA {:.2} RA {:.2} TA {:.2} MIA {:.2}",
                met.ua, met.ra, met.ta, met.mia_efficacy
            );
                sparse_original = Some((p.to_string(), met));
                (Some(m), Some(mk), format!("@{p}"))
            }
        };
        let base_model = pruned.as_ref().unwrap_or(&s.original);
        let ctx = UnlearnCtx {
            data: &s.data,
            seed: c.seed,
            progress: mode,
            original: &s.train_config,
            masks: masks.as_ref(),
            dist: None,
        };
        let select: Selection = c.lr_search.select.parse()?;

        // 3. Retrain first (the reference of every gap), then the other methods.
        let mut order: Vec<String> = vec!["retrain".to_string()];
        order.extend(c.methods.iter().filter(|m| *m != "retrain").cloned());
        let mut retrain_metrics: Option<UnlearnMetrics> = None;
        for name in &order {
            let cfg = method_from_bench(c, name)?;
            let search = c.lr_search.enabled && name != "retrain" && cfg.lr().is_some();
            let key = serde_json::json!({
                "config": &cfg, "scenario": &s.data.scenario.spec, "forget_seed": c.forget_seed,
                "seed": c.seed, "original": serde_json::to_value(&orig_cfg)?,
                "lr_search": if search { serde_json::to_value(&c.lr_search)? } else { serde_json::Value::Null },
                "device": device_name(device),
                "prune": variant.map(|p| p.to_string()),
            });
            let row = format!("{name}{suffix}");
            let saved_path = out.join("methods").join(format!("{row}.json"));
            let saved: Option<SavedResult> = if opts.fresh {
                None
            } else {
                std::fs::read_to_string(&saved_path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<SavedResult>(&t).ok())
                    .filter(|s| s.key == key)
            };
            let mut r = match saved {
                Some(sr) => {
                    tracing::info!("{row}: reusing the result in {}", saved_path.display());
                    sr.result
                }
                None => {
                    tracing::info!("{row}: running");
                    let r = if search {
                        let base = cfg.lr().expect("checked");
                        let lrs: Vec<f64> =
                            c.lr_search.multipliers.iter().map(|m| m * base).collect();
                        let reference_ta = retrain_metrics
                            .as_ref()
                            .map(|m| m.ta)
                            .unwrap_or(original_metrics.ta);
                        lr_search(
                            base_model,
                            &cfg,
                            &lrs,
                            &ctx,
                            &svc,
                            c.eval_batch_size,
                            &select,
                            retrain_metrics.as_ref(),
                            reference_ta,
                        )?
                        .0
                    } else {
                        match run_method(base_model, &cfg, &ctx) {
                            Ok((m, rep, rte)) => {
                                let met = evaluate(&m, &s.data, &svc, c.eval_batch_size, rte)?;
                                MethodResult {
                                    method: row.clone(),
                                    config: cfg.clone(),
                                    metrics: met,
                                    gap: None,
                                    report: rep,
                                    lr_grid: Vec::new(),
                                }
                            }
                            // A diverged method is a result too: record it and go on.
                            Err(e @ Error::Numerical(_)) if name != "retrain" => {
                                tracing::warn!("{row}: FAILED: {e}");
                                failures.push((row.clone(), e.to_string()));
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    };
                    write_json_atomic(
                        &saved_path,
                        &SavedResult {
                            key: key.clone(),
                            result: r.clone(),
                        },
                    )?;
                    r
                }
            };
            if name == "retrain" {
                retrain_metrics = Some(r.metrics.clone());
            } else if let Some(rm) = &retrain_metrics {
                r.gap = Some(avg_gap(&r.metrics, rm));
            }
            r.method = row.clone();
            tracing::info!(
                "{row}: UA {:.2} RA {:.2} TA {:.2} MIA {:.2} RTE {:.1}s{}",
                r.metrics.ua,
                r.metrics.ra,
                r.metrics.ta,
                r.metrics.mia_efficacy,
                r.metrics.rte_s,
                r.gap.map(|g| format!(" gap {g:.2}")).unwrap_or_default()
            );
            results.push(r);
        }
    }

    // 4. Tables, plot, report.
    let md = format!(
        "Scenario: {} (seed {}), original: {} on {}; {} forget / {} retain / {} test samples; device {}; method profile `{}`.\n\nOriginal model: UA {:.2} RA {:.2} TA {:.2} MIA-Efficacy {:.2}\n\n{}",
        spec,
        c.forget_seed,
        c.original,
        s.run_config.data.dataset,
        s.data.forget.len(),
        s.data.retain.len(),
        s.data.test.len(),
        device_name(device),
        c.profile,
        original_metrics.ua,
        original_metrics.ra,
        original_metrics.ta,
        original_metrics.mia_efficacy,
        sparse_original
            .as_ref()
            .map(|(p, m)| format!(
                "Pruned original ({p}, {PRUNE_FINETUNE_EPOCHS}-epoch masked fine-tune): UA {:.2} RA {:.2} TA {:.2} MIA-Efficacy {:.2}; rows `method@{p}` unlearn it with the mask fixed, gaps to the masked Retrain.\n\n",
                m.ua, m.ra, m.ta, m.mia_efficacy
            ))
            .unwrap_or_default()
            + &markdown_table(&results)
    ) + &failures
        .iter()
        .map(|(n, e)| format!("\n{n} did not finish: {e}\n"))
        .collect::<String>();
    atomic_write(&out.join("results.md"), md.as_bytes())?;
    atomic_write(&out.join("results.csv"), csv_table(&results).as_bytes())?;
    write_json_atomic(
        &out.join("results.json"),
        &serde_json::json!({"profile": c.profile, "original": &original_metrics, "results": &results, "failed": &failures}),
    )?;
    let chart = Chart {
        title: format!("avg gap to retrain vs run time ({})", spec),
        x_label: "run time (s, log scale)".into(),
        y_label: "avg gap (points)".into(),
        log_x: true,
        points: results
            .iter()
            .map(|r| Point {
                x: r.metrics.rte_s.max(1e-3),
                y: r.gap.unwrap_or(0.0),
                label: r.method.clone(),
            })
            .collect(),
        lines: Vec::new(),
    };
    chart.write_png(&out.join("gap_vs_time.png"), 800, 500)?;
    timings.insert("total".to_string(), t_total.elapsed().as_secs_f64());
    let mut report = RunReport::new(
        "bench-unlearn",
        serde_json::to_value(c)?,
        &device_name(device),
    );
    report.seeds.insert("forget".into(), c.forget_seed);
    report.seeds.insert("method".into(), c.seed);
    report
        .seeds
        .insert("original_train".into(), orig_cfg.train.seed);
    report.timings_s = timings;
    report.metrics = serde_json::json!({"original": &original_metrics, "pruned_original": &sparse_original, "results": &results, "failed": &failures});
    report.artifacts = [
        "results.md",
        "results.csv",
        "results.json",
        "gap_vs_time.png",
        "scenario.json",
        "original/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    report.finished_utc = Some(utc_now());
    report.write(&out.join("report.json"))?;
    Ok(BenchOutcome {
        markdown: md,
        original: original_metrics,
        results,
        failed: failures,
        out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::preset;

    #[test]
    fn every_bench_preset_resolves() {
        for (name, _, _) in BENCH_PRESETS {
            let c = bench_preset(name).unwrap();
            preset(&c.original).unwrap().validate().unwrap();
            c.forget.parse::<ForgetSpec>().unwrap();
            assert_eq!(c.methods[0], "retrain", "{name}");
            for m in &c.methods {
                method_from_bench(&c, m).unwrap_or_else(|e| panic!("{name}/{m}: {e}"));
            }
            for m in c.method.keys() {
                assert!(
                    c.methods.contains(m),
                    "{name}: settings for unused method {m}"
                );
            }
        }
    }

    #[test]
    fn selection_parses() {
        assert_eq!("gap".parse::<Selection>().unwrap(), Selection::Gap);
        assert_eq!(
            "ua:ta-drop=2".parse::<Selection>().unwrap(),
            Selection::UaWithTaFloor { max_ta_drop: 2.0 }
        );
        assert!("ua:ta-drop=-1".parse::<Selection>().is_err());
        assert!("best".parse::<Selection>().is_err());
    }
}

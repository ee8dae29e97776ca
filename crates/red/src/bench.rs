//! The RED study end to end: generate the dataset, train the denoisers (pixel and
//! class-discriminative), the attribution classifier and the model parser, and score them in
//! and out of distribution. Every stage's result is kept in the output folder and reused on a
//! rerun, so an interrupted study resumes at the stage it stopped in.

use crate::classify::{self, ClassifyConfig, HeadScore, InputKind, Task};
use crate::denoise::{self, DenoiseConfig, DenoiseMode, EstimateScore};
use crate::family::{
    train_victim, AttackBudget, AttackFamily, AttackSetting, Victim, VictimAttrs, VictimFamily,
    VictimRecipe,
};
use crate::generate::{self, load_split, GenConfig, Manifest, RedSet, Split};
use crate::nets::{read_json, Denoiser, DenoiserConfig, MultiHead};
use rustworthy_core::report::RunReport;
use rustworthy_core::{fsutil, plot, Error, Result};
use rustworthy_data::load_dataset;
use rustworthy_models::{Activation, Arch, Model};
use rustworthy_robust::Norm;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The whole study's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedBenchConfig {
    /// Preset name.
    pub preset: String,
    /// The dataset.
    pub data: GenConfig,
    /// The surrogate classifier of the class-discriminative denoiser when it does not align
    /// with the victims (trained with the victims' recipe on its own seed; not a victim).
    pub surrogate: VictimAttrs,
    /// Align the class-discriminative term with each training example's own victim (the
    /// models the training data was made on) instead of the surrogate.
    pub align_with_victims: bool,
    /// The denoisers.
    pub denoise: DenoiseConfig,
    /// The attribution classifier.
    pub attribution: ClassifyConfig,
    /// What the attribution classifier sees.
    pub attribution_input: InputKind,
    /// Also train an attribution classifier that adds the off-grid counts to the level
    /// statistics (`attribution.levels` must be set): it reads the float precision of the
    /// examples, so it is scored on the same examples saved as 8-bit images too.
    #[serde(default)]
    pub attribution_off_grid: bool,
    /// Also score the shrunk estimates projected onto the grid of `k / estimate_grid` values
    /// (255: the 8-bit grid the clean Fashion-MNIST images lie on), with shrinkage factors
    /// fitted through the projection; 0: not scored. It only helps on adversarial examples kept
    /// in float precision (an 8-bit file is already on the grid), so the table shows the
    /// projected identity beside it.
    #[serde(default)]
    pub estimate_grid: i64,
    /// The model parser (trained on true perturbations).
    pub parsing: ClassifyConfig,
    /// Attack families left out of the parser's training (its unseen-attack test).
    pub unseen_families: Vec<AttackFamily>,
    /// Train and score on the adversarial examples that fooled their victim only (failed
    /// attempts stay in the dataset with `success` 0).
    pub successful_only: bool,
}

impl RedBenchConfig {
    /// The examples of `set` the tools train and score on: the successful ones when
    /// `successful_only`, else all.
    pub fn usable(&self, set: RedSet) -> RedSet {
        if self.successful_only {
            let ok = set.labels["success"].eq(1);
            set.filter(&ok)
        } else {
            set
        }
    }
}

/// `k/255`.
fn e255(k: f64) -> f64 {
    k / 255.0
}

/// A named preset: `fmnist-red-mini` (CPU, about 10 minutes on 2 cores) or `fmnist-red`
/// (ResNet-20 victims and more examples; GPU-sized).
pub fn preset(name: &str) -> Result<RedBenchConfig> {
    let linf = |family, eps| AttackSetting {
        family,
        norm: Norm::Linf,
        eps,
    };
    let mini = RedBenchConfig {
        preset: "fmnist-red-mini".into(),
        data: GenConfig {
            family: VictimFamily {
                archs: vec![Arch::Mlp, Arch::Lenet],
                activations: Activation::ALL.to_vec(),
                sparsities: vec![0, 50, 90],
            },
            recipe: VictimRecipe {
                train_images: 10000,
                epochs: 3,
                finetune_epochs: 1,
                lr: 1e-3,
                batch_size: 128,
                seed: 0,
            },
            budget: AttackBudget {
                pgd_steps: 10,
                apgd_steps: 10,
                cw_steps: 20,
                cw_search: 3,
                square_queries: 200,
                nes_iterations: 10,
                nes_samples: 20,
            },
            linf_families: vec![
                AttackFamily::Fgsm,
                AttackFamily::Pgd,
                AttackFamily::Apgd,
                AttackFamily::Square,
                AttackFamily::Nes,
            ],
            l2_families: vec![AttackFamily::Pgd, AttackFamily::Cw],
            linf_eps: vec![e255(8.0), e255(16.0), e255(32.0)],
            l2_eps: vec![1.0, 2.0, 3.0],
            ood_linf_eps: vec![e255(24.0)],
            ood_l2_eps: vec![2.5],
            transfer: vec![
                linf(AttackFamily::Pgd, e255(16.0)),
                linf(AttackFamily::Fgsm, e255(16.0)),
            ],
            train_per_shard: 100,
            test_per_shard: 40,
            seed: 0,
        },
        surrogate: VictimAttrs {
            arch: Arch::Lenet,
            activation: Activation::Relu,
            sparsity_pct: 0,
        },
        align_with_victims: true,
        denoise: DenoiseConfig {
            net: DenoiserConfig {
                depth: 8,
                width: 32,
                channels: 1,
            },
            epochs: 6,
            batch_size: 128,
            lr: 1e-3,
            lambda: 0.1,
            shift: 2,
            max_examples: 0,
            balance_families: true,
            seed: 0,
        },
        attribution: ClassifyConfig {
            width: 16,
            epochs: 8,
            batch_size: 128,
            lr: 2e-3,
            max_examples: 0,
            hist_bins: 0,
            levels: 64,
            off_grid: false,
            seed: 0,
        },
        attribution_input: InputKind::AdvEstimated,
        attribution_off_grid: true,
        estimate_grid: 255,
        parsing: ClassifyConfig {
            width: 16,
            epochs: 6,
            batch_size: 128,
            lr: 2e-3,
            max_examples: 0,
            hist_bins: 0,
            levels: 0,
            off_grid: false,
            seed: 1,
        },
        unseen_families: vec![AttackFamily::Apgd, AttackFamily::Nes],
        successful_only: true,
    };
    match name {
        "fmnist-red-mini" => Ok(mini),
        "fmnist-red" => {
            let mut c = mini;
            c.preset = "fmnist-red".into();
            c.data.family.archs.push(Arch::Resnet20);
            c.data.recipe.train_images = 30000;
            c.data.recipe.epochs = 10;
            c.data.recipe.finetune_epochs = 3;
            c.data.budget = AttackBudget {
                pgd_steps: 20,
                apgd_steps: 50,
                cw_steps: 100,
                cw_search: 5,
                square_queries: 1000,
                nes_iterations: 20,
                nes_samples: 50,
            };
            c.data.train_per_shard = 400;
            c.data.test_per_shard = 100;
            c.denoise.net = DenoiserConfig {
                depth: 17,
                width: 64,
                channels: 1,
            };
            c.denoise.epochs = 10;
            c.denoise.max_examples = 0;
            c.attribution.width = 32;
            c.attribution.epochs = 15;
            c.parsing.width = 32;
            c.parsing.epochs = 15;
            Ok(c)
        }
        o => Err(Error::config(
            "preset",
            format!("unknown RED preset `{o}`; valid: fmnist-red-mini, fmnist-red"),
        )),
    }
}

/// Perturbation estimation of one group (an attack family, or all).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EstimateRow {
    /// The group (`fgsm`, ..., or `all`).
    pub group: String,
    /// The identity baseline.
    pub identity: EstimateScore,
    /// The pixel-loss denoiser.
    pub pixel: EstimateScore,
    /// The class-discriminative denoiser.
    pub cdd: EstimateScore,
}

/// Accuracy of a classifier's heads on one evaluation set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScoreRow {
    /// The evaluation (e.g. `in-distribution`, `unseen strength`).
    pub eval: String,
    /// What the classifier saw.
    pub input: String,
    /// Per head.
    pub heads: BTreeMap<String, HeadScore>,
}

/// Everything the study measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedBenchResult {
    /// The config.
    pub config: RedBenchConfig,
    /// Victims: id, test accuracy, measured sparsity.
    pub victims: Vec<(String, f64, f64)>,
    /// Surrogate test accuracy (percent), when the class-discriminative term used one.
    pub surrogate_accuracy: Option<f64>,
    /// Attack success rate (percent) per split and setting.
    pub success: BTreeMap<String, BTreeMap<String, f64>>,
    /// Examples per split.
    pub examples: BTreeMap<String, usize>,
    /// Perturbation estimation on the in-distribution test split, per attack family and all.
    pub estimation: Vec<EstimateRow>,
    /// Perturbation estimation on the held-out strengths (all families together).
    pub estimation_ood: EstimateRow,
    /// Perturbation estimation with each estimate shrunk by a factor per *predicted* attack
    /// family and norm (the attribution classifier's, fitted on the training split): per true family on
    /// the test split, all, and all at the held-out strengths.
    #[serde(default)]
    pub estimation_shrunk: Vec<EstimateRow>,
    /// The shrinkage factors: denoiser (`pixel`, `cdd`) -> predicted family and norm (e.g.
    /// `pgd-l2`) -> factor, for the groups some training example was predicted in.
    #[serde(default)]
    pub shrinkage: BTreeMap<String, BTreeMap<String, f64>>,
    /// The same as `estimation_shrunk` with every estimate (the identity's too) projected onto
    /// the grid of `config.estimate_grid` (when it is set), the factors fitted through the
    /// projection.
    #[serde(default)]
    pub estimation_grid: Vec<EstimateRow>,
    /// The factors of `estimation_grid`, as `shrinkage`.
    #[serde(default)]
    pub shrinkage_grid: BTreeMap<String, BTreeMap<String, f64>>,
    /// Attribution accuracy per evaluation.
    pub attribution: Vec<ScoreRow>,
    /// The same with the off-grid counts (when `attribution_off_grid`).
    #[serde(default)]
    pub attribution_off_grid: Vec<ScoreRow>,
    /// Parsing accuracy per evaluation.
    pub parsing: Vec<ScoreRow>,
    /// Seconds per stage, as the run that computed it took (a rerun that reads a finished
    /// stage back reports the time it first took, kept in `stage_seconds.json`).
    pub seconds: BTreeMap<String, f64>,
    /// Seconds per stage in this run (reading a finished stage back is quick).
    #[serde(default)]
    pub seconds_this_run: BTreeMap<String, f64>,
}

/// Whether a denoiser stage in `dir` is finished.
fn denoiser_done(dir: &Path) -> bool {
    dir.join("denoiser.json").exists() && dir.join("history.json").exists()
}

/// Whether a classifier stage `name` in `dir` is finished.
fn classifier_done(dir: &Path, name: &str) -> bool {
    dir.join(format!("{name}.json")).exists() && dir.join(format!("{name}-history.json")).exists()
}

/// The seconds to report per stage: this run's for the stages it computed (recorded in
/// `file`), the recorded ones for the stages it read back (this run's when none is recorded,
/// as for a folder written before the record was kept).
fn stage_seconds(
    file: &Path,
    this_run: &BTreeMap<String, f64>,
    reused: &std::collections::BTreeSet<String>,
) -> Result<BTreeMap<String, f64>> {
    let mut first: BTreeMap<String, f64> = if file.exists() {
        read_json(file)?
    } else {
        BTreeMap::new()
    };
    let mut out = BTreeMap::new();
    for (stage, secs) in this_run {
        let kept = first.get(stage).copied().filter(|_| reused.contains(stage));
        let v = kept.unwrap_or(*secs);
        if kept.is_none() && !reused.contains(stage) {
            first.insert(stage.clone(), *secs);
        }
        out.insert(stage.clone(), v);
    }
    fsutil::write_json_atomic(file, &first)?;
    Ok(out)
}

/// Every trained victim of the dataset in `dir`, by its `victim` label.
pub fn victims_by_label(dir: &Path, m: &Manifest, device: Device) -> Result<BTreeMap<i64, Model>> {
    let mut out = BTreeMap::new();
    for (i, v) in m.victims.iter().enumerate() {
        let vdir = dir.join("victims").join(v.id());
        if !vdir.join("victim.json").exists() {
            continue;
        }
        let rec: crate::family::VictimRecord = read_json(&vdir.join("victim.json"))?;
        let mut model = Model::new(rec.spec, device)?;
        model.load(vdir.join("model.safetensors"))?;
        out.insert(i as i64, model);
    }
    Ok(out)
}

/// Trains (or reads back) a denoiser of `mode` into `dir`.
pub fn denoiser_stage(
    dir: &Path,
    cfg: &DenoiseConfig,
    mode: DenoiseMode,
    train: &RedSet,
    classifier: Option<&denoise::Aligner>,
    device: Device,
    say: impl FnMut(&str),
) -> Result<Denoiser> {
    if denoiser_done(dir) {
        return Denoiser::load(dir, device);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (d, hist) = denoise::train_denoiser(cfg, mode, train, classifier, device, say)?;
    d.save(dir)?;
    fsutil::write_json_atomic(&dir.join("history.json"), &hist)?;
    Ok(d)
}

/// Trains (or reads back) a classifier of `task` into `dir` under `name`.
#[allow(clippy::too_many_arguments)]
pub fn classifier_stage(
    dir: &Path,
    name: &str,
    cfg: &ClassifyConfig,
    task: Task,
    x: &Tensor,
    set: &RedSet,
    classes: &BTreeMap<&'static str, i64>,
    device: Device,
    say: impl FnMut(&str),
) -> Result<MultiHead> {
    if classifier_done(dir, name) {
        return MultiHead::load(dir, name, device);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (net, hist) = classify::train_classifier(cfg, task, x, set, classes, device, say)?;
    net.save(dir, name)?;
    fsutil::write_json_atomic(&dir.join(format!("{name}-history.json")), &hist)?;
    Ok(net)
}

/// Keeps the examples whose attack family is (or, with `invert`, is not) in `families`.
pub fn by_family(set: &RedSet, m: &Manifest, families: &[AttackFamily], invert: bool) -> RedSet {
    let fam = &set.labels["family"];
    let mut keep = Tensor::zeros([set.len() as i64], (Kind::Bool, fam.device()));
    for (i, f) in m.families.iter().enumerate() {
        if families.contains(f) {
            keep = keep.logical_or(&fam.eq(i as i64));
        }
    }
    if invert {
        keep = keep.logical_not();
    }
    set.filter(&keep)
}

/// Runs the study of `cfg` in `out` on Fashion-MNIST. `say` receives progress lines.
pub fn run_bench(
    cfg: &RedBenchConfig,
    out: &Path,
    data_dir: Option<&Path>,
    device: Device,
    mut say: impl FnMut(&str),
) -> Result<RedBenchResult> {
    cfg.data.validate()?;
    cfg.denoise.validate()?;
    cfg.attribution.validate()?;
    cfg.parsing.validate()?;
    if cfg.attribution_off_grid && cfg.attribution.levels == 0 {
        return Err(Error::config(
            "attribution_off_grid",
            "the off-grid counts join the level statistics: set attribution.levels > 0",
        ));
    }
    if cfg.estimate_grid != 0 {
        denoise::check_grid(cfg.estimate_grid).map_err(|e| {
            Error::config(
                "estimate_grid",
                format!("must be 0 (off) or a grid size: {e}"),
            )
        })?;
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let cfg_path = out.join("bench_config.json");
    let now = serde_json::to_value(cfg)?;
    if cfg_path.exists() {
        let old: serde_json::Value = read_json(&cfg_path)?;
        if old != now {
            return Err(Error::invalid(format!(
                "{} holds a RED study of another config; use another --out",
                out.display()
            )));
        }
    } else {
        fsutil::write_json_atomic(&cfg_path, &now)?;
    }
    let mut report = RunReport::new("bench red", now.clone(), &format!("{device:?}"));
    report.seeds.insert("data".into(), cfg.data.seed);
    report.seeds.insert("victims".into(), cfg.data.recipe.seed);
    report.seeds.insert("denoise".into(), cfg.denoise.seed);
    report
        .seeds
        .insert("attribution".into(), cfg.attribution.seed);
    report.seeds.insert("parsing".into(), cfg.parsing.seed);
    let mut seconds = BTreeMap::new();
    // Stages a rerun found finished and read back (their time is not this run's work).
    let mut reused = std::collections::BTreeSet::new();
    let (train, test) = load_dataset("fashion-mnist", data_dir)?;
    let (train, test) = (train.to_device(device), test.to_device(device));
    let data = out.join("data");
    let t = Instant::now();
    say("generate the RED dataset");
    let gen = generate::generate(&cfg.data, &data, &train, &test, device, &mut say)?;
    seconds.insert("generate".into(), t.elapsed().as_secs_f64());
    if gen.written.values().sum::<usize>() == 0 {
        reused.insert("generate".to_string());
    }
    let m = Manifest::read(&data)?;
    let t = Instant::now();
    let surrogate = if cfg.align_with_victims {
        None
    } else {
        let (model, rec) = train_victim(
            &out.join("surrogate"),
            &Victim {
                attrs: cfg.surrogate,
                instance: 2,
            },
            &cfg.data.recipe,
            &train,
            &test,
            device,
        )?;
        say(&format!(
            "surrogate {}: test accuracy {:.2}%",
            cfg.surrogate.id(),
            rec.test_accuracy
        ));
        seconds.insert("surrogate".into(), t.elapsed().as_secs_f64());
        Some((model, rec.test_accuracy))
    };
    let cpu = Device::Cpu;
    let tr = cfg.usable(load_split(&data, Split::Train)?);
    let te = cfg.usable(load_split(&data, Split::Test)?);
    let ood = cfg.usable(load_split(&data, Split::OodStrength)?);
    let xf = cfg.usable(load_split(&data, Split::Transfer)?);
    let mut examples = BTreeMap::new();
    for (s, set) in [
        ("train", &tr),
        ("test", &te),
        ("ood-strength", &ood),
        ("transfer", &xf),
    ] {
        examples.insert(s.to_string(), set.len());
    }
    let t = Instant::now();
    say("denoiser: pixel loss");
    for name in ["denoiser-pixel", "denoiser-cdd"] {
        if denoiser_done(&out.join(name)) {
            reused.insert(name.to_string());
        }
    }
    let d_pix = denoiser_stage(
        &out.join("denoiser-pixel"),
        &cfg.denoise,
        DenoiseMode::Pixel,
        &tr,
        None,
        device,
        &mut say,
    )?;
    seconds.insert("denoiser-pixel".into(), t.elapsed().as_secs_f64());
    let t = Instant::now();
    say("denoiser: class-discriminative");
    let victims = victims_by_label(&data, &m, device)?;
    let aligner = match &surrogate {
        None => denoise::Aligner::Victims(&victims),
        Some((m, _)) => denoise::Aligner::Surrogate(m),
    };
    let d_cdd = denoiser_stage(
        &out.join("denoiser-cdd"),
        &cfg.denoise,
        DenoiseMode::ClassDiscriminative,
        &tr,
        Some(&aligner),
        device,
        &mut say,
    )?;
    seconds.insert("denoiser-cdd".into(), t.elapsed().as_secs_f64());
    let t = Instant::now();
    say("score perturbation estimates");
    let est_pix_te = denoise::estimate(Some(&d_pix), &te.x_adv);
    let est_cdd_te = denoise::estimate(Some(&d_cdd), &te.x_adv);
    let s_id = denoise::score_estimates(&te.x_adv, &te, &victims, "family")?;
    let s_pix = denoise::score_estimates(&est_pix_te, &te, &victims, "family")?;
    let s_cdd = denoise::score_estimates(&est_cdd_te, &te, &victims, "family")?;
    let estimation = estimate_rows(&m, &s_id, &s_pix, &s_cdd);
    let est_cdd_ood = denoise::estimate(Some(&d_cdd), &ood.x_adv);
    let est_pix_ood = denoise::estimate(Some(&d_pix), &ood.x_adv);
    let all = |s: BTreeMap<i64, EstimateScore>| s.get(&i64::MIN).cloned().unwrap_or_default();
    let estimation_ood = EstimateRow {
        group: "all (unseen strengths)".into(),
        identity: all(denoise::score_estimates(
            &ood.x_adv, &ood, &victims, "family",
        )?),
        pixel: all(denoise::score_estimates(
            &est_pix_ood,
            &ood,
            &victims,
            "family",
        )?),
        cdd: all(denoise::score_estimates(
            &est_cdd_ood,
            &ood,
            &victims,
            "family",
        )?),
    };
    seconds.insert("estimation-eval".into(), t.elapsed().as_secs_f64());
    let classes = m.head_classes();
    // Attribution: the classifier of the preset, and optionally the one with off-grid counts.
    let input = cfg.attribution_input;
    let est_of = |e: &Tensor| {
        if input.reads_estimates() {
            Some(e.shallow_clone())
        } else {
            None
        }
    };
    let est_cdd_tr = denoise::estimate(Some(&d_cdd), &tr.x_adv);
    let linf = te.labels["norm"].eq(0).nonzero().squeeze_dim(1);
    let te_linf = te.select(&linf);
    let est_te_linf = est_cdd_te.index_select(0, &linf);
    // The same l_inf examples saved as 8-bit images (and denoised as such).
    let te_linf_8bit = RedSet {
        x_clean: te_linf.x_clean.shallow_clone(),
        x_adv: (&te_linf.x_adv * 255.0).round() / 255.0,
        labels: te_linf
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect(),
        eps: te_linf.eps.shallow_clone(),
    };
    let est_te_linf_8bit = denoise::estimate(Some(&d_cdd), &te_linf_8bit.x_adv);
    let evals: [(&str, &RedSet, &Tensor); 4] = [
        ("in-distribution", &te, &est_cdd_te),
        ("in-distribution, l_inf only", &te_linf, &est_te_linf),
        (
            "in-distribution, l_inf only, 8-bit images",
            &te_linf_8bit,
            &est_te_linf_8bit,
        ),
        ("unseen strengths", &ood, &est_cdd_ood),
    ];
    let mut variants = vec![("attribution", cfg.attribution.clone())];
    if cfg.attribution_off_grid {
        let mut c = cfg.attribution.clone();
        c.off_grid = true;
        variants.push(("attribution-off-grid", c));
    }
    let mut attr_nets = Vec::new();
    let mut attr_rows = Vec::new();
    for (name, ccfg) in &variants {
        let t = Instant::now();
        say(&format!(
            "{name} classifier (input: {}{})",
            input.name(),
            if ccfg.off_grid {
                ", level statistics with off-grid counts"
            } else if ccfg.levels > 0 {
                ", level statistics"
            } else {
                ""
            }
        ));
        let x_tr = classify::inputs(input, &tr, est_of(&est_cdd_tr).as_ref())?;
        // Saved as `attribution` with its input kind, as `red train` writes it, so that
        // `red infer` reads either folder.
        let dir = out.join(name);
        if classifier_done(&dir, "attribution") {
            reused.insert(name.to_string());
        }
        let net = classifier_stage(
            &dir,
            "attribution",
            ccfg,
            Task::Attribution,
            &x_tr,
            &tr,
            &classes,
            device,
            &mut say,
        )?;
        drop(x_tr);
        fsutil::write_json_atomic(&dir.join("input.json"), &input)?;
        let mut rows = Vec::new();
        for (eval, set, est) in &evals {
            let x = classify::inputs(input, set, est_of(est).as_ref())?;
            rows.push(ScoreRow {
                eval: eval.to_string(),
                input: input.name().into(),
                heads: classify::score(&net, &x, set)?,
            });
        }
        seconds.insert(name.to_string(), t.elapsed().as_secs_f64());
        attr_nets.push(net);
        attr_rows.push(rows);
    }
    let mut attr_rows = attr_rows.into_iter();
    let attribution = attr_rows.next().unwrap_or_default();
    let attribution_off_grid = attr_rows.next().unwrap_or_default();
    // Shrinkage of the estimates per family predicted by the preset's attribution classifier
    // (the one that does not read float precision), fitted on the training split.
    let t = Instant::now();
    say("shrink the estimates per predicted attack family");
    let attr = &attr_nets[0];
    // The group of an example: its predicted family and norm (`family * 2 + norm`).
    let predicted_group = |set: &RedSet, est: &Tensor| -> Result<Tensor> {
        let x = classify::inputs(input, set, est_of(est).as_ref())?;
        classify::predicted_group(attr, &x)
    };
    let ng = 2 * m.families.len();
    let pf_tr = predicted_group(&tr, &est_cdd_tr)?;
    let est_pix_tr = denoise::estimate(Some(&d_pix), &tr.x_adv);
    let fitted: Vec<i64> = Vec::try_from(pf_tr.bincount::<Tensor>(None, ng as i64))?;
    let pf_te = predicted_group(&te, &est_cdd_te)?;
    let pf_ood = predicted_group(&ood, &est_cdd_ood)?;
    // Fits both denoisers' factors (through the grid projection, with `grid`) and scores the
    // shrunk (and projected) estimates per family on the test split, then all at the held-out
    // strengths. The identity column is the (projected) adversarial image.
    let groups = denoise::Shrinkage::group_names(&m.families);
    let shrink_study = |grid: Option<i64>| -> Result<_> {
        let fit = |est: &Tensor| -> Result<denoise::Shrinkage> {
            Ok(denoise::Shrinkage {
                groups: groups.clone(),
                factors: denoise::fit_shrinkage(&tr.x_adv, est, &tr.x_clean, &pf_tr, ng, grid)?,
                grid,
            })
        };
        let (sh_pix, sh_cdd) = (fit(&est_pix_tr)?, fit(&est_cdd_tr)?);
        let mut factors = BTreeMap::new();
        for (who, sh) in [("pixel", &sh_pix), ("cdd", &sh_cdd)] {
            let by = (0..ng)
                .filter(|&g| fitted[g] > 0)
                .map(|g| (groups[g].clone(), sh.factors[g]))
                .collect();
            factors.insert(who.to_string(), by);
        }
        // The identity without a grid was scored with the unshrunk estimates already.
        let identity = |set: &RedSet, scored: &BTreeMap<i64, EstimateScore>| match grid {
            Some(l) => {
                denoise::score_estimates(&denoise::to_grid(&set.x_adv, l)?, set, &victims, "family")
            }
            None => Ok(scored.clone()),
        };
        let score = |set: &RedSet, pix: &Tensor, cdd: &Tensor, pf: &Tensor| -> Result<_> {
            let sc = |sh: &denoise::Shrinkage, e: &Tensor| {
                denoise::score_estimates(&sh.apply(&set.x_adv, e, pf)?, set, &victims, "family")
            };
            Ok((sc(&sh_pix, pix)?, sc(&sh_cdd, cdd)?))
        };
        let (sp, sc) = score(&te, &est_pix_te, &est_cdd_te, &pf_te)?;
        let mut rows = estimate_rows(&m, &identity(&te, &s_id)?, &sp, &sc);
        let (sp, sc) = score(&ood, &est_pix_ood, &est_cdd_ood, &pf_ood)?;
        let ood_identity = BTreeMap::from([(i64::MIN, estimation_ood.identity.clone())]);
        rows.push(EstimateRow {
            group: "all (unseen strengths)".into(),
            identity: all(identity(&ood, &ood_identity)?),
            pixel: all(sp),
            cdd: all(sc),
        });
        // Beside each denoiser, the factors as `red infer --shrink` reads them.
        let file = if grid.is_some() {
            "shrinkage-grid.json"
        } else {
            "shrinkage.json"
        };
        for (dir, sh) in [("denoiser-pixel", &sh_pix), ("denoiser-cdd", &sh_cdd)] {
            fsutil::write_json_atomic(&out.join(dir).join(file), sh)?;
        }
        Ok((rows, factors))
    };
    let (estimation_shrunk, shrinkage) = shrink_study(None)?;
    let (estimation_grid, shrinkage_grid) = if cfg.estimate_grid > 0 {
        say(&format!(
            "shrink the estimates projected onto the grid of {} steps",
            cfg.estimate_grid
        ));
        shrink_study(Some(cfg.estimate_grid))?
    } else {
        (Vec::new(), BTreeMap::new())
    };
    drop((est_pix_tr, est_cdd_tr, pf_tr));
    seconds.insert("shrinkage".into(), t.elapsed().as_secs_f64());
    // Parsing: trained on true perturbations of the seen attack families.
    let t = Instant::now();
    say("model parser (input: true perturbations, seen attack families)");
    let tr_seen = by_family(&tr, &m, &cfg.unseen_families, true);
    if classifier_done(&out.join("parsing"), "parsing") {
        reused.insert("parsing".to_string());
    }
    let parser = classifier_stage(
        &out.join("parsing"),
        "parsing",
        &cfg.parsing,
        Task::Parsing,
        &tr_seen.perturbation(),
        &tr_seen,
        &classes,
        device,
        &mut say,
    )?;
    drop(tr_seen);
    fsutil::write_json_atomic(&out.join("parsing").join("input.json"), &InputKind::True)?;
    let seen_mask = |set: &RedSet, invert: bool| by_family(set, &m, &cfg.unseen_families, invert);
    let te_seen = seen_mask(&te, true);
    let te_unseen = seen_mask(&te, false);
    let ood_seen = seen_mask(&ood, true);
    let est_te_seen = denoise::estimate(Some(&d_cdd), &te_seen.x_adv);
    let mut parsing = Vec::new();
    let rows: Vec<(&str, &RedSet, InputKind, Option<&Tensor>)> = vec![
        ("in-distribution", &te_seen, InputKind::True, None),
        (
            "in-distribution",
            &te_seen,
            InputKind::Estimated,
            Some(&est_te_seen),
        ),
        ("in-distribution", &te_seen, InputKind::Adv, None),
        ("unseen strengths", &ood_seen, InputKind::True, None),
        ("unseen attack types", &te_unseen, InputKind::True, None),
        ("transfer (unseen twins)", &xf, InputKind::True, None),
    ];
    for (eval, set, kind, est) in rows {
        if set.is_empty() {
            continue;
        }
        let x = classify::inputs(kind, set, est)?;
        parsing.push(ScoreRow {
            eval: eval.into(),
            input: kind.name().into(),
            heads: classify::score(&parser, &x, set)?,
        });
    }
    seconds.insert("parsing".into(), t.elapsed().as_secs_f64());
    // Picture: one l_inf test example per family, then one l_2.
    let mut picks = Vec::new();
    for (i, _) in m.families.iter().enumerate() {
        let hit = te.labels["family"].eq(i as i64).nonzero();
        if hit.size()[0] > 0 {
            picks.push(hit.int64_value(&[0, 0]));
        }
    }
    let pick = Tensor::from_slice(&picks);
    let sel = |t: &Tensor| t.index_select(0, &pick).to_device(cpu);
    let delta = sel(&te.perturbation());
    let est_delta = sel(&(&te.x_adv - &est_cdd_te));
    let show = |d: &Tensor| {
        let a = d
            .abs()
            .flatten(1, -1)
            .amax(&[1i64][..], true)
            .clamp_min(1e-8);
        (d / a.view([-1, 1, 1, 1]) * 0.5 + 0.5).clamp(0.0, 1.0)
    };
    plot::write_grid(
        &out.join("red_examples.png"),
        &[
            sel(&te.x_clean),
            sel(&te.x_adv),
            sel(&est_cdd_te),
            show(&delta),
            show(&est_delta),
        ],
        3,
    )?;
    let res = RedBenchResult {
        config: cfg.clone(),
        victims: gen
            .victims
            .iter()
            .map(|r| (r.victim.id(), r.test_accuracy, r.measured_sparsity))
            .collect(),
        surrogate_accuracy: surrogate.as_ref().map(|s| s.1),
        success: gen.success.clone(),
        examples,
        estimation,
        estimation_ood,
        estimation_shrunk,
        shrinkage,
        estimation_grid,
        shrinkage_grid,
        attribution,
        attribution_off_grid,
        parsing,
        seconds: stage_seconds(&out.join("stage_seconds.json"), &seconds, &reused)?,
        seconds_this_run: seconds.clone(),
    };
    fsutil::atomic_write(&out.join("red.md"), markdown(&res).as_bytes())?;
    fsutil::atomic_write(&out.join("red.csv"), csv(&res).as_bytes())?;
    fsutil::write_json_atomic(&out.join("red.json"), &res)?;
    report.timings_s = seconds;
    report.metrics = serde_json::to_value(&res)?;
    report.artifacts = ["red.md", "red.csv", "red.json", "red_examples.png"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    report.write(&out.join("report.json"))?;
    Ok(res)
}

/// One row per attack family, then `all`, from scores grouped by family label (`i64::MIN`: all).
fn estimate_rows(
    m: &Manifest,
    identity: &BTreeMap<i64, EstimateScore>,
    pixel: &BTreeMap<i64, EstimateScore>,
    cdd: &BTreeMap<i64, EstimateScore>,
) -> Vec<EstimateRow> {
    let mut rows: Vec<EstimateRow> = identity
        .iter()
        .map(|(k, id)| EstimateRow {
            group: if *k == i64::MIN {
                "all".to_string()
            } else {
                m.families[*k as usize].name().to_string()
            },
            identity: id.clone(),
            pixel: pixel.get(k).cloned().unwrap_or_default(),
            cdd: cdd.get(k).cloned().unwrap_or_default(),
        })
        .collect();
    rows.sort_by_key(|r| (r.group == "all", r.group.clone()));
    rows
}

fn head_cell(r: &ScoreRow, h: &str) -> String {
    match r.heads.get(h) {
        Some(s) => format!("{:.1} (chance {:.1})", s.accuracy, s.majority),
        None => "-".into(),
    }
}

/// The study's tables in Markdown.
pub fn markdown(res: &RedBenchResult) -> String {
    let mut s = format!("# RED study `{}`\n\n", res.config.preset);
    s += &format!(
        "Examples (successful attacks{}): {}. Class-discriminative term aligned with {}.\n\n",
        if res.config.successful_only {
            " only"
        } else {
            " and failed attempts"
        },
        res.examples
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        match res.surrogate_accuracy {
            Some(a) => format!(
                "the surrogate {} ({a:.2}% test accuracy)",
                res.config.surrogate.id()
            ),
            None => "each example's own victim".into(),
        }
    );
    s += "## Perturbation estimation (test split, per attack family)\n\n";
    s += "| family | n | PSNR identity | PSNR pixel | PSNR CDD | cos pixel | cos CDD | restored identity % | restored pixel % | restored CDD % |\n|---|---|---|---|---|---|---|---|---|---|\n";
    for r in res
        .estimation
        .iter()
        .chain(std::iter::once(&res.estimation_ood))
    {
        s += &format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} |\n",
            r.group,
            r.identity.n,
            r.identity.psnr,
            r.pixel.psnr,
            r.cdd.psnr,
            r.pixel.cosine,
            r.cdd.cosine,
            r.identity.restored,
            r.pixel.restored,
            r.cdd.restored
        );
    }
    s += &shrunk_table(
        &res.estimation_shrunk,
        &res.shrinkage,
        "Estimates shrunk per predicted attack family (test split)",
        "",
    );
    s += &shrunk_table(
        &res.estimation_grid,
        &res.shrinkage_grid,
        &format!(
            "Shrunk estimates projected onto the grid of k/{} (test split)",
            res.config.estimate_grid
        ),
        "Every estimate, the identity's too, is rounded to the nearest grid value, where the clean images lie; the factors are fitted through the rounding. This only changes images kept in float precision: an adversarial image saved as an 8-bit file is on the grid already, and its projected identity is the identity. ",
    );
    for (title, rows) in [
        ("level statistics", &res.attribution),
        (
            "level statistics with off-grid counts",
            &res.attribution_off_grid,
        ),
    ] {
        if rows.is_empty() {
            continue;
        }
        s += &format!("\n## Attack attribution, {title} (accuracy %)\n\n| evaluation | input | family | norm | strength |\n|---|---|---|---|---|\n");
        for r in rows {
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                r.eval,
                r.input,
                head_cell(r, "family"),
                head_cell(r, "norm"),
                head_cell(r, "strength")
            );
        }
        if let Some(r) = rows.iter().find(|r| r.eval.contains("l_inf")) {
            if let Some(h) = r.heads.get("family") {
                let fams: Vec<&str> = attack_family_names(res);
                s += "\nFamily confusion on l_inf test examples (rows: true, columns: predicted):\n\n| |";
                for f in &fams {
                    s += &format!(" {f} |");
                }
                s += "\n|---|";
                s += &"---|".repeat(fams.len());
                s += "\n";
                for (i, row) in h.confusion.iter().enumerate() {
                    if row.iter().sum::<u64>() == 0 {
                        continue;
                    }
                    s += &format!("| {} |", fams.get(i).copied().unwrap_or("?"));
                    for c in row {
                        s += &format!(" {c} |");
                    }
                    s += "\n";
                }
            }
        }
    }
    s += "\n## Model parsing (accuracy %)\n\n| evaluation | input | architecture | activation | sparsity |\n|---|---|---|---|---|\n";
    for r in &res.parsing {
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r.eval,
            r.input,
            head_cell(r, "arch"),
            head_cell(r, "activation"),
            head_cell(r, "sparsity")
        );
    }
    s += "\n## Victims\n\n| victim | test accuracy % | measured sparsity % |\n|---|---|---|\n";
    for (id, acc, sp) in &res.victims {
        s += &format!("| {id} | {acc:.2} | {:.1} |\n", sp * 100.0);
    }
    s += "\n## Attack success rate % (test split)\n\n| setting | success % |\n|---|---|\n";
    if let Some(t) = res.success.get("test") {
        for (k, v) in t {
            s += &format!("| {k} | {v:.1} |\n");
        }
    }
    let line = |m: &BTreeMap<String, f64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    s += &format!(
        "\nSeconds per stage, as first computed: {}.\n",
        line(&res.seconds)
    );
    if !res.seconds_this_run.is_empty() && res.seconds_this_run != res.seconds {
        s += &format!(
            "\nThis run read finished stages back: {} (total {:.0} s).\n",
            line(&res.seconds_this_run),
            res.seconds_this_run.values().sum::<f64>()
        );
    }
    s
}

/// A Markdown section of shrunk estimates with their factors (empty without rows).
fn shrunk_table(
    rows: &[EstimateRow],
    factors: &BTreeMap<String, BTreeMap<String, f64>>,
    title: &str,
    lead: &str,
) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut s = format!("\n## {title}\n\n{lead}");
    s += "Each estimated perturbation is scaled by a factor of its *predicted* family and norm (the attribution classifier's, without off-grid counts), fitted on the training split to maximise mean PSNR. Factors (pixel / CDD): ";
    let empty = BTreeMap::new();
    let cdd = factors.get("cdd").unwrap_or(&empty);
    s += &factors
        .get("pixel")
        .unwrap_or(&empty)
        .iter()
        .map(|(g, v)| {
            let c = cdd.get(g).map_or("-".to_string(), |c| format!("{c:.3}"));
            format!("{g} {v:.3} / {c}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    s += ".\n\n| family | n | PSNR identity | PSNR pixel, shrunk | PSNR CDD, shrunk | restored identity % | restored pixel, shrunk % | restored CDD, shrunk % |\n|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        s += &format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} |\n",
            r.group,
            r.identity.n,
            r.identity.psnr,
            r.pixel.psnr,
            r.cdd.psnr,
            r.identity.restored,
            r.pixel.restored,
            r.cdd.restored
        );
    }
    s
}

fn attack_family_names(res: &RedBenchResult) -> Vec<&'static str> {
    res.config
        .data
        .families()
        .into_iter()
        .map(|f| f.name())
        .collect()
}

/// The study's numbers as CSV: `section,group,evaluation,input,metric,value`.
pub fn csv(res: &RedBenchResult) -> String {
    let mut s = String::from("section,group,evaluation,input,metric,value\n");
    for r in res
        .estimation
        .iter()
        .chain(std::iter::once(&res.estimation_ood))
    {
        for (who, sc) in [
            ("identity", &r.identity),
            ("pixel", &r.pixel),
            ("cdd", &r.cdd),
        ] {
            for (metric, v) in [
                ("psnr", sc.psnr),
                ("cosine", sc.cosine),
                ("restored", sc.restored),
            ] {
                s += &format!("estimation,{},test,{who},{metric},{v}\n", r.group);
            }
        }
    }
    let shrunk = res
        .estimation_shrunk
        .iter()
        .flat_map(|r| [(r, "pixel-shrunk", &r.pixel), (r, "cdd-shrunk", &r.cdd)]);
    let grid = res.estimation_grid.iter().flat_map(|r| {
        [
            (r, "identity-grid", &r.identity),
            (r, "pixel-shrunk-grid", &r.pixel),
            (r, "cdd-shrunk-grid", &r.cdd),
        ]
    });
    for (r, who, sc) in shrunk.chain(grid) {
        for (metric, v) in [
            ("psnr", sc.psnr),
            ("cosine", sc.cosine),
            ("restored", sc.restored),
        ] {
            s += &format!("estimation,{},test,{who},{metric},{v}\n", r.group);
        }
    }
    for (section, rows) in [
        ("attribution", &res.attribution),
        ("attribution-off-grid", &res.attribution_off_grid),
        ("parsing", &res.parsing),
    ] {
        for r in rows {
            for (h, sc) in &r.heads {
                s += &format!(
                    "{section},{h},{},{},accuracy,{}\n",
                    r.eval, r.input, sc.accuracy
                );
                s += &format!(
                    "{section},{h},{},{},chance,{}\n",
                    r.eval, r.input, sc.majority
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rerun reports the recorded time of the stages it read back and records the ones it
    /// computed; a folder without a record reports this run's times.
    #[test]
    fn reruns_report_stage_times_as_first_computed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stage_seconds.json");
        let times = |a: f64, b: f64| BTreeMap::from([("a".to_string(), a), ("b".to_string(), b)]);
        let none = std::collections::BTreeSet::new();
        assert_eq!(
            stage_seconds(&file, &times(100.0, 20.0), &none).unwrap(),
            times(100.0, 20.0)
        );
        let a_reused = std::collections::BTreeSet::from(["a".to_string()]);
        assert_eq!(
            stage_seconds(&file, &times(1.0, 25.0), &a_reused).unwrap(),
            times(100.0, 25.0)
        );
        let rec: BTreeMap<String, f64> = read_json(&file).unwrap();
        assert_eq!(rec, times(100.0, 25.0));
        // Without a record, a stage read back can only report this run's time.
        let other = dir.path().join("none.json");
        assert_eq!(
            stage_seconds(&other, &times(1.0, 25.0), &a_reused).unwrap(),
            times(1.0, 25.0)
        );
    }
}

//! The procedures behind `rustworthy red generate|train|infer`: one dataset folder, tools
//! trained on its `train` split, and scoring of a trained tool on any split.

use crate::bench::{by_family, classifier_stage, denoiser_stage, victims_by_label, RedBenchConfig};
use crate::classify::{self, HeadScore, InputKind, Task};
use crate::denoise::{self, DenoiseMode, EstimateScore};
use crate::family::{train_victim, Victim};
use crate::generate::{self, load_split, GenSummary, Manifest, Split};
use crate::nets::{read_json, Denoiser, MultiHead};
use rustworthy_core::report::RunReport;
use rustworthy_core::{fsutil, Error, Result};
use rustworthy_data::load_dataset;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Device;

/// Generates (or completes) the dataset of `cfg` in `out` from Fashion-MNIST, with a run
/// report.
pub fn generate_dataset(
    cfg: &RedBenchConfig,
    out: &Path,
    data_dir: Option<&Path>,
    device: Device,
    say: impl FnMut(&str),
) -> Result<GenSummary> {
    let (train, test) = load_dataset("fashion-mnist", data_dir)?;
    let mut report = RunReport::new(
        "red generate",
        serde_json::to_value(&cfg.data)?,
        &format!("{device:?}"),
    );
    report.seeds.insert("data".into(), cfg.data.seed);
    report.seeds.insert("victims".into(), cfg.data.recipe.seed);
    let s = generate::generate(
        &cfg.data,
        out,
        &train.to_device(device),
        &test.to_device(device),
        device,
        say,
    )?;
    report.timings_s = s.seconds.clone();
    report.metrics = serde_json::to_value(&s)?;
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    report.write(&out.join("generate_report.json"))?;
    Ok(s)
}

/// What `red train` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tool {
    /// A denoiser with the pixel loss.
    DenoisePixel,
    /// A class-discriminative denoiser.
    DenoiseCdd,
    /// The attack attribution classifier.
    Attribution,
    /// The model parser.
    Parsing,
}

impl std::str::FromStr for Tool {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "denoise-pixel" => Ok(Tool::DenoisePixel),
            "denoise-cdd" => Ok(Tool::DenoiseCdd),
            "attribution" => Ok(Tool::Attribution),
            "parsing" => Ok(Tool::Parsing),
            o => Err(Error::config(
                "tool",
                format!(
                    "unknown tool `{o}`; valid: denoise-pixel, denoise-cdd, attribution, parsing"
                ),
            )),
        }
    }
}

/// Trains `tool` on the `train` split of the dataset in `data` into `out`, with `cfg`'s
/// settings. Attribution from estimated perturbations needs `denoiser` (a denoiser folder); the
/// class-discriminative denoiser trains the config's surrogate into `data/surrogate` first
/// (or reads it back).
#[allow(clippy::too_many_arguments)]
pub fn train_tool(
    cfg: &RedBenchConfig,
    tool: Tool,
    data: &Path,
    out: &Path,
    denoiser: Option<&Path>,
    fmnist_dir: Option<&Path>,
    device: Device,
    mut say: impl FnMut(&str),
) -> Result<()> {
    let m = Manifest::read(data)?;
    let tr = cfg.usable(load_split(data, Split::Train)?);
    let classes = m.head_classes();
    let mut report = RunReport::new(
        "red train",
        serde_json::json!({"tool": tool, "config": cfg, "data": data}),
        &format!("{device:?}"),
    );
    let t = std::time::Instant::now();
    match tool {
        Tool::DenoisePixel => {
            denoiser_stage(
                out,
                &cfg.denoise,
                DenoiseMode::Pixel,
                &tr,
                None,
                device,
                say,
            )?;
        }
        Tool::DenoiseCdd => {
            let victims;
            let sur;
            let aligner = if cfg.align_with_victims {
                victims = victims_by_label(data, &m, device)?;
                denoise::Aligner::Victims(&victims)
            } else {
                let (train, test) = load_dataset("fashion-mnist", fmnist_dir)?;
                sur = train_victim(
                    &data.join("surrogate"),
                    &Victim {
                        attrs: cfg.surrogate,
                        instance: 2,
                    },
                    &m.config.recipe,
                    &train.to_device(device),
                    &test.to_device(device),
                    device,
                )?
                .0;
                denoise::Aligner::Surrogate(&sur)
            };
            denoiser_stage(
                out,
                &cfg.denoise,
                DenoiseMode::ClassDiscriminative,
                &tr,
                Some(&aligner),
                device,
                say,
            )?;
        }
        Tool::Attribution => {
            let input = cfg.attribution_input;
            let est = estimates_for(input, denoiser, &tr.x_adv, device)?;
            let x = classify::inputs(input, &tr, est.as_ref())?;
            classifier_stage(
                out,
                "attribution",
                &cfg.attribution,
                Task::Attribution,
                &x,
                &tr,
                &classes,
                device,
                &mut say,
            )?;
            fsutil::write_json_atomic(&out.join("input.json"), &input)?;
        }
        Tool::Parsing => {
            let seen = by_family(&tr, &m, &cfg.unseen_families, true);
            classifier_stage(
                out,
                "parsing",
                &cfg.parsing,
                Task::Parsing,
                &seen.perturbation(),
                &seen,
                &classes,
                device,
                &mut say,
            )?;
            fsutil::write_json_atomic(&out.join("input.json"), &InputKind::True)?;
        }
    }
    report
        .timings_s
        .insert("train".into(), t.elapsed().as_secs_f64());
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    report.write(&out.join("report.json"))
}

fn estimates_for(
    input: InputKind,
    denoiser: Option<&Path>,
    x_adv: &tch::Tensor,
    device: Device,
) -> Result<Option<tch::Tensor>> {
    if !input.reads_estimates() {
        return Ok(None);
    }
    let dir = denoiser.ok_or_else(|| {
        Error::invalid(format!(
            "input `{}` needs a denoiser folder (--denoiser)",
            input.name()
        ))
    })?;
    let d = Denoiser::load(dir, device)?;
    Ok(Some(denoise::estimate(Some(&d), x_adv)))
}

/// The inputs of `input` kind for the `name` network, refused by name when the network reads
/// another number of channels.
fn checked_inputs(
    net: &MultiHead,
    name: &str,
    input: InputKind,
    set: &crate::generate::RedSet,
    est: Option<&tch::Tensor>,
) -> Result<tch::Tensor> {
    let x = classify::inputs(input, set, est)?;
    let want = net.config.channels;
    if x.size()[1] != want {
        return Err(Error::invalid(format!(
            "the {name} network reads {want} channels, the input has {}",
            x.size()[1]
        )));
    }
    Ok(x)
}

/// What `red infer` measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Inference {
    /// A denoiser's estimates, scored per attack family (key `all`: every example).
    Denoiser(BTreeMap<String, EstimateScore>),
    /// A classifier's heads.
    Classifier(BTreeMap<String, HeadScore>),
}

/// Shrinkage of a denoiser's estimates at inference: the factors file (`shrinkage.json` or
/// `shrinkage-grid.json`, see [`denoise::Shrinkage`]) and the attribution folder whose
/// predicted family and norm pick each example's factor (the `attribution` folder of the
/// `bench red` run that fitted them).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ShrinkWith<'a> {
    /// The factors file.
    pub factors: &'a Path,
    /// The attribution classifier's folder.
    pub attribution: &'a Path,
}

/// [`infer`], with a report: `out/inference.json` holds the scores and `out/report.json` the
/// config, versions, host and timing (both written atomically).
#[allow(clippy::too_many_arguments)]
pub fn infer_with_report(
    cfg: &RedBenchConfig,
    tool_dir: &Path,
    data: &Path,
    split: Split,
    denoiser: Option<&Path>,
    shrink: Option<ShrinkWith>,
    device: Device,
    out: &Path,
) -> Result<Inference> {
    let mut report = RunReport::new(
        "red infer",
        serde_json::json!({
            "tool": tool_dir,
            "data": data,
            "split": split.name(),
            "denoiser": denoiser,
            "shrink": shrink,
            "config": cfg,
        }),
        &format!("{device:?}"),
    );
    let t = std::time::Instant::now();
    let r = infer(cfg, tool_dir, data, split, denoiser, shrink, device)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    fsutil::write_json_atomic(&out.join("inference.json"), &r)?;
    report
        .timings_s
        .insert("infer".into(), t.elapsed().as_secs_f64());
    report.metrics = serde_json::to_value(&r)?;
    report.artifacts = vec!["inference.json".into()];
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    report.write(&out.join("report.json"))?;
    Ok(r)
}

/// Scores the tool in `tool_dir` (a denoiser, attribution or parsing folder written by
/// [`train_tool`]) on `split` of the dataset in `data` (the examples `cfg` keeps). A classifier
/// that reads estimated perturbations takes them from `denoiser`. A denoiser's estimates are
/// shrunk (and projected onto a grid) with `shrink`; its attribution classifier reads estimates
/// of `denoiser`, or of the tool itself when none is given.
pub fn infer(
    cfg: &RedBenchConfig,
    tool_dir: &Path,
    data: &Path,
    split: Split,
    denoiser: Option<&Path>,
    shrink: Option<ShrinkWith>,
    device: Device,
) -> Result<Inference> {
    let m = Manifest::read(data)?;
    let set = cfg.usable(load_split(data, split)?);
    let is_denoiser = tool_dir.join("denoiser.json").exists();
    if shrink.is_some() && !is_denoiser {
        return Err(Error::invalid(format!(
            "shrinkage applies to a denoiser's estimates; {} holds no denoiser",
            tool_dir.display()
        )));
    }
    if is_denoiser {
        let d = Denoiser::load(tool_dir, device)?;
        let mut est = denoise::estimate(Some(&d), &set.x_adv);
        if let Some(sw) = shrink {
            let sh: denoise::Shrinkage = read_json(sw.factors)?;
            sh.check(&m.families).map_err(|e| e.in_file(sw.factors))?;
            let net = MultiHead::load(sw.attribution, "attribution", device)?;
            let input: InputKind = read_json(&sw.attribution.join("input.json"))?;
            // The classifier reads `denoiser`'s estimates, or these (no second pass) without one.
            let cls_est = match denoiser {
                Some(_) => estimates_for(input, denoiser, &set.x_adv, device)?,
                None => input.reads_estimates().then(|| est.shallow_clone()),
            };
            let x = checked_inputs(&net, "attribution", input, &set, cls_est.as_ref())?;
            let group = classify::predicted_group(&net, &x)?;
            est = sh.apply(&set.x_adv, &est, &group)?;
        }
        let victims = victims_by_label(data, &m, device)?;
        let s = denoise::score_estimates(&est, &set, &victims, "family")?;
        return Ok(Inference::Denoiser(
            s.into_iter()
                .map(|(k, v)| {
                    let name = if k == i64::MIN {
                        "all".to_string()
                    } else {
                        m.families[k as usize].name().to_string()
                    };
                    (name, v)
                })
                .collect(),
        ));
    }
    for name in ["attribution", "parsing"] {
        if tool_dir.join(format!("{name}.json")).exists() {
            let net = MultiHead::load(tool_dir, name, device)?;
            let input: InputKind = read_json(&tool_dir.join("input.json"))?;
            let est = estimates_for(input, denoiser, &set.x_adv, device)?;
            let x = checked_inputs(&net, name, input, &set, est.as_ref())?;
            return Ok(Inference::Classifier(classify::score(&net, &x, &set)?));
        }
    }
    Err(Error::invalid(format!(
        "{} holds no RED tool (denoiser.json, attribution.json or parsing.json)",
        tool_dir.display()
    )))
}

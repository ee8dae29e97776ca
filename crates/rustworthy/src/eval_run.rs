//! Evaluation of a saved model on a test split, with an optional per-sample logits file.

use crate::model_source::{open_with_test_data, ModelSource, ModelWithData};
use rustworthy_core::device::device_name;
use rustworthy_core::report::RunReport;
use rustworthy_core::{DeviceSpec, Result};
use rustworthy_data::Dataset;
use rustworthy_train::{evaluate, EvalResult};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

/// One evaluation.
#[derive(Clone, Debug)]
pub struct EvalRequest {
    /// The model: a run's model file with its sidecar, a TorchScript module, or a bare state
    /// dict with what to assume about it.
    pub model: ModelSource,
    /// Dataset (default: the one the model was trained on).
    pub dataset: Option<String>,
    /// Where the dataset is read from.
    pub data_dir: Option<PathBuf>,
    /// Device.
    pub device: DeviceSpec,
    /// Batch size.
    pub batch_size: usize,
    /// Output folder (default: `eval/` beside the model).
    pub out: Option<PathBuf>,
    /// Also write every sample's logits, prediction and label to this safetensors file.
    pub save_logits: Option<PathBuf>,
}

impl EvalRequest {
    /// Evaluates `model` on its training dataset's test split, batches of 1000.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        EvalRequest {
            model: ModelSource::new(model),
            dataset: None,
            data_dir: None,
            device: DeviceSpec::default(),
            batch_size: 1000,
            out: None,
            save_logits: None,
        }
    }
}

/// What an evaluation produced.
pub struct EvalOutcome {
    /// Accuracy, loss, per-class accuracy, confusion.
    pub result: EvalResult,
    /// The test data (class names for tables).
    pub data: Dataset,
    /// Dataset name.
    pub dataset: String,
    /// The report written to `report.json`.
    pub report: RunReport,
    /// Output folder.
    pub out: PathBuf,
}

/// Evaluates a saved model and writes `report.json` (and the logits file when asked).
pub fn eval(req: &EvalRequest) -> Result<EvalOutcome> {
    let t_total = Instant::now();
    let device = req.device.resolve()?;
    let ModelWithData {
        opened,
        test,
        dataset,
    } = open_with_test_data(
        &req.model,
        req.dataset.as_deref(),
        req.data_dir.as_deref(),
        device,
    )?;
    let (model, meta) = (opened.model, opened.meta);
    for n in &opened.notes {
        tracing::info!("{n}");
    }
    let non_finite = model.non_finite();
    let warning = (!non_finite.is_empty()).then(|| {
        format!(
            "the model holds non-finite values (NaN or infinity) in {}; its accuracy and loss are not meaningful",
            rustworthy_models::model::describe_non_finite(&non_finite)
        )
    });
    if let Some(w) = &warning {
        tracing::warn!("{}: {w}", req.model.path.display());
    }
    let test = test.to_device(device);
    let t0 = Instant::now();
    let r = evaluate(&model, &test, req.batch_size)?;
    let eval_s = t0.elapsed().as_secs_f64();
    let out = req.out.clone().unwrap_or_else(|| {
        req.model
            .path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("eval")
    });
    let mut report = RunReport::new(
        "eval",
        serde_json::json!({"model": req.model, "dataset": dataset, "batch_size": req.batch_size,
            "save_logits": req.save_logits, "model_kind": opened.kind, "model_notes": opened.notes}),
        &device_name(device),
    );
    if let Some(m) = &meta {
        report.seeds = m.seeds.clone();
    }
    if let Some(path) = &req.save_logits {
        let logits = tch::no_grad(|| -> Result<Tensor> {
            let mut parts = Vec::new();
            let n = test.len();
            let mut i = 0;
            while i < n {
                let k = req.batch_size.min(n - i);
                let x = test.images.narrow(0, i as i64, k as i64);
                parts.push(
                    model
                        .try_forward_t(&x, false)?
                        .to_kind(Kind::Float)
                        .to_device(tch::Device::Cpu),
                );
                i += k;
            }
            Ok(Tensor::cat(&parts, 0))
        })?;
        let pred = logits.argmax(1, false);
        let labels = test.labels.to_device(tch::Device::Cpu).to_kind(Kind::Int64);
        rustworthy_core::fsutil::atomic_write_with(path, |tmp| {
            Tensor::write_safetensors(
                &[
                    ("logits", &logits),
                    ("prediction", &pred),
                    ("label", &labels),
                ],
                tmp,
            )?;
            Ok(())
        })?;
        report.artifacts.push(path.display().to_string());
    }
    report.timings_s.insert("eval".into(), eval_s);
    report
        .timings_s
        .insert("total".into(), t_total.elapsed().as_secs_f64());
    report.metrics = serde_json::to_value(&r)?;
    if let Some(w) = warning {
        report.metrics["non_finite_weights"] = serde_json::json!(non_finite
            .iter()
            .map(|(n, k, _)| (n.clone(), *k))
            .collect::<std::collections::BTreeMap<_, _>>());
        report.notes.push(format!("warning: {w}"));
    }
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    let _lock = crate::train_run::lock_out(&out)?;
    report.write(&out.join("report.json"))?;
    Ok(EvalOutcome {
        result: r,
        data: test,
        dataset,
        report,
        out,
    })
}

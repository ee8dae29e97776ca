//! Evaluation of a saved model on a test split, with an optional per-sample logits file.

use crate::trained::data_of;
use rustworthy_core::device::device_name;
use rustworthy_core::report::RunReport;
use rustworthy_core::{DeviceSpec, Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::{Arch, ModelSpec};
use rustworthy_train::checkpoint::load_model;
use rustworthy_train::{evaluate, EvalResult};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

/// One evaluation.
#[derive(Clone, Debug)]
pub struct EvalRequest {
    /// The model file.
    pub model: PathBuf,
    /// Dataset (default: the one the model was trained on).
    pub dataset: Option<String>,
    /// Where the dataset is read from.
    pub data_dir: Option<PathBuf>,
    /// For a weights file without sidecar: the architecture.
    pub arch: Option<Arch>,
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
            model: model.into(),
            dataset: None,
            data_dir: None,
            arch: None,
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
    let spec_override = req.arch.map(|arch| match req.dataset.as_deref() {
        Some("cifar10") | Some("cifar100") => ModelSpec::cifar10(arch),
        _ => ModelSpec::fashion_mnist(arch),
    });
    let (model, meta) = load_model(&req.model, spec_override, device)?;
    let (dataset, data_dir) = data_of(
        meta.as_ref(),
        req.dataset.as_deref(),
        req.data_dir.as_deref(),
    );
    let test = crate::datasets::load_test(&dataset, data_dir.as_deref(), meta.as_ref())?;
    model.check_input(&test.images.narrow(0, 0, 1))?;
    if test.num_classes as i64 != model.spec.num_classes {
        return Err(Error::invalid(format!(
            "model has {} outputs but {dataset} has {} classes",
            model.spec.num_classes, test.num_classes
        )));
    }
    let test = test.to_device(device);
    let t0 = Instant::now();
    let r = evaluate(&model, &test, req.batch_size)?;
    let eval_s = t0.elapsed().as_secs_f64();
    let out = req.out.clone().unwrap_or_else(|| {
        req.model
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("eval")
    });
    let mut report = RunReport::new(
        "eval",
        serde_json::json!({"model": req.model, "dataset": dataset, "batch_size": req.batch_size,
            "save_logits": req.save_logits}),
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
    report.finished_utc = Some(rustworthy_core::report::utc_now());
    report.write(&out.join("report.json"))?;
    Ok(EvalOutcome {
        result: r,
        data: test,
        dataset,
        report,
        out,
    })
}

//! Evaluation: loss, accuracy, per-class accuracy and the confusion matrix, computed on the
//! dataset's device with a single host transfer at the end.

use rustworthy_core::{Error, Result};
use rustworthy_data::Dataset;
use rustworthy_models::Model;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Evaluation of a classifier on one dataset. Accuracies are in percent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalResult {
    /// Number of samples evaluated.
    pub n: usize,
    /// Mean cross-entropy over the samples.
    pub loss: f64,
    /// Top-1 accuracy, in percent.
    pub accuracy: f64,
    /// Accuracy per class (None for classes absent from the data).
    pub per_class_accuracy: Vec<Option<f64>>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Logits of `model` on every sample of `data`, in order, in eval mode and without gradients.
pub fn logits(model: &Model, data: &Dataset, batch_size: usize) -> Result<Tensor> {
    if batch_size == 0 {
        return Err(Error::config("batch_size", "must be >= 1"));
    }
    let n = data.len() as i64;
    let mut outs = Vec::new();
    tch::no_grad(|| {
        let mut start = 0i64;
        while start < n {
            let len = (batch_size as i64).min(n - start);
            let x = data.images.narrow(0, start, len);
            outs.push(model.forward_t(&x.to_device(model.vs.device()), false));
            start += len;
        }
    });
    if outs.is_empty() {
        return Err(Error::invalid(format!("dataset {} is empty", data.name)));
    }
    Ok(Tensor::cat(&outs, 0))
}

/// Evaluates `model` on `data`.
pub fn evaluate(model: &Model, data: &Dataset, batch_size: usize) -> Result<EvalResult> {
    let c = data.num_classes as i64;
    let out = logits(model, data, batch_size)?;
    let y = data.labels.to_device(out.device());
    let loss = out.cross_entropy_for_logits(&y).double_value(&[]);
    let pred = out.argmax(-1, false);
    let flat = &y * c + &pred;
    let counts = flat
        .bincount::<Tensor>(None, c * c)
        .to_kind(Kind::Int64)
        .to_device(tch::Device::Cpu);
    let counts: Vec<i64> = Vec::<i64>::try_from(&counts)?;
    Ok(from_confusion(&counts, data.num_classes, loss))
}

/// Builds an [`EvalResult`] from a flattened `classes x classes` confusion matrix.
pub fn from_confusion(counts: &[i64], classes: usize, loss: f64) -> EvalResult {
    let confusion: Vec<Vec<u64>> = (0..classes)
        .map(|t| {
            (0..classes)
                .map(|p| counts[t * classes + p] as u64)
                .collect()
        })
        .collect();
    let n: u64 = confusion.iter().flatten().sum();
    let correct: u64 = (0..classes).map(|k| confusion[k][k]).sum();
    let per_class_accuracy = confusion
        .iter()
        .enumerate()
        .map(|(k, row)| {
            let tot: u64 = row.iter().sum();
            (tot > 0).then(|| 100.0 * row[k] as f64 / tot as f64)
        })
        .collect();
    EvalResult {
        n: n as usize,
        loss,
        accuracy: if n > 0 {
            100.0 * correct as f64 / n as f64
        } else {
            0.0
        },
        per_class_accuracy,
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn confusion_metrics_hand_computed() {
        // true 0: 3 right, 1 predicted as 1; true 1: 2 right; true 2: absent.
        let counts = [3, 1, 0, 0, 2, 0, 0, 0, 0];
        let r = from_confusion(&counts, 3, 0.5);
        assert_eq!(r.n, 6);
        assert!((r.accuracy - 500.0 / 6.0).abs() < 1e-12);
        assert_eq!(r.per_class_accuracy[0], Some(75.0));
        assert_eq!(r.per_class_accuracy[1], Some(100.0));
        assert_eq!(r.per_class_accuracy[2], None);
        assert_eq!(r.confusion[0], vec![3, 1, 0]);
    }
}

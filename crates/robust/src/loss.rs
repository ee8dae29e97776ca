//! Per-sample attack losses (`[B]`, larger means closer to a successful attack for the
//! untargeted forms).

use tch::{Kind, Tensor};

/// Cross-entropy per sample.
pub fn ce(logits: &Tensor, y: &Tensor) -> Tensor {
    logits
        .log_softmax(-1, logits.kind())
        .gather(1, &y.unsqueeze(1), false)
        .squeeze_dim(1)
        .neg()
}

/// Largest logit among the classes other than `y`.
pub fn max_other(logits: &Tensor, y: &Tensor) -> Tensor {
    let mask = y.one_hot(logits.size()[1]).to_kind(Kind::Bool);
    logits.masked_fill(&mask, f64::NEG_INFINITY).amax(1, false)
}

/// Logit of class `y`.
pub fn logit_of(logits: &Tensor, y: &Tensor) -> Tensor {
    logits.gather(1, &y.unsqueeze(1), false).squeeze_dim(1)
}

/// Classification margin `z_y - max_{j != y} z_j`: positive while `y` is predicted.
pub fn margin(logits: &Tensor, y: &Tensor) -> Tensor {
    logit_of(logits, y) - max_other(logits, y)
}

/// Difference of logits ratio (Croce & Hein, 2020), untargeted:
/// `-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`. Invariant to shifts and scalings of the logits.
pub fn dlr(logits: &Tensor, y: &Tensor) -> Tensor {
    let (sorted, _) = logits.sort(1, true);
    let denom = sorted.select(1, 0) - sorted.select(1, 2) + 1e-12;
    -margin(logits, y) / denom
}

/// Targeted DLR: `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`.
pub fn dlr_targeted(logits: &Tensor, y: &Tensor, target: &Tensor) -> Tensor {
    let (sorted, _) = logits.sort(1, true);
    let denom = sorted.select(1, 0) - (sorted.select(1, 2) + sorted.select(1, 3)) * 0.5 + 1e-12;
    -(logit_of(logits, y) - logit_of(logits, target)) / denom
}

/// The margin to the attack's goal, below zero exactly when it is reached: `z_y - max_{j != y}
/// z_j` (untargeted) or `max_{j != t} z_j - z_t` (targeted). The loss of the score-based attacks.
pub fn goal_margin(logits: &Tensor, y: &Tensor, target: Option<&Tensor>) -> Tensor {
    match target {
        None => margin(logits, y),
        Some(t) => -margin(logits, t),
    }
}

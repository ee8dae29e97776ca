//! Learning-rate schedules, evaluated at fractional epochs so that per-step schedules (cyclic,
//! one-cycle, warmup) and per-epoch ones (multistep) share one definition.

use rustworthy_core::validate;
use rustworthy_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The shape of the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LrSchedule {
    /// Constant `lr`.
    Constant,
    /// `lr * gamma^k` after the k-th milestone (in epochs), as PyTorch's MultiStepLR.
    Multistep {
        /// Epochs at which the rate drops, strictly increasing and > 0.
        milestones: Vec<f64>,
        /// Factor applied at each milestone, > 0.
        gamma: f64,
    },
    /// Cosine annealing from `lr` to `min_lr` over the run (per step).
    Cosine {
        /// Learning rate at the end of the run (default 0, at most `lr`).
        #[serde(default)]
        min_lr: f64,
    },
    /// Triangular cyclic schedule (the fast adversarial training one): linear 0 -> `lr` over the
    /// first `peak_frac` of the run, then linear back to 0.
    Cyclic {
        /// Fraction of the run at which the peak `lr` is reached, in [0, 1] (default 0.5).
        #[serde(default = "half")]
        peak_frac: f64,
    },
    /// One-cycle: cosine warm-up from `lr/div` to `lr` over `peak_frac` of the run, then cosine
    /// annealing to `lr/final_div`.
    OneCycle {
        /// Fraction of the run spent warming up, in [0, 1] (default 0.3).
        #[serde(default = "default_one_cycle_peak")]
        peak_frac: f64,
        /// The initial learning rate is `lr/div`, >= 1 (default 25).
        #[serde(default = "default_div")]
        div: f64,
        /// The final learning rate is `lr/final_div`, >= 1 (default 1e4).
        #[serde(default = "default_final_div")]
        final_div: f64,
    },
}

fn half() -> f64 {
    0.5
}
fn default_one_cycle_peak() -> f64 {
    0.3
}
fn default_div() -> f64 {
    25.0
}
fn default_final_div() -> f64 {
    1e4
}

/// A schedule with its base (peak) learning rate and an optional linear warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Base (peak) learning rate, > 0.
    pub lr: f64,
    /// The shape of the schedule (default constant).
    #[serde(default = "default_schedule")]
    pub schedule: LrSchedule,
    /// Linear warm-up from 0 over this many epochs (multiplies the schedule).
    #[serde(default)]
    pub warmup_epochs: f64,
}

fn default_schedule() -> LrSchedule {
    LrSchedule::Constant
}

impl ScheduleConfig {
    /// Checks the learning rate, warm-up and schedule parameters for a run of `epochs` epochs;
    /// errors name the field.
    pub fn validate(&self, epochs: usize) -> Result<()> {
        validate::positive("lr", self.lr)?;
        validate::non_negative("warmup_epochs", self.warmup_epochs)?;
        if self.warmup_epochs > epochs as f64 {
            return Err(Error::config(
                "warmup_epochs",
                format!(
                    "{} exceeds the {} epochs of the run",
                    self.warmup_epochs, epochs
                ),
            ));
        }
        match &self.schedule {
            LrSchedule::Constant => {}
            LrSchedule::Multistep { milestones, gamma } => {
                validate::positive("schedule.gamma", *gamma)?;
                let mut last = 0.0;
                for &m in milestones {
                    validate::positive("schedule.milestones", m)?;
                    if m <= last {
                        return Err(Error::config(
                            "schedule.milestones",
                            "must be strictly increasing",
                        ));
                    }
                    last = m;
                }
            }
            LrSchedule::Cosine { min_lr } => {
                validate::non_negative("schedule.min_lr", *min_lr)?;
                if *min_lr > self.lr {
                    return Err(Error::config("schedule.min_lr", "must not exceed lr"));
                }
            }
            LrSchedule::Cyclic { peak_frac } => {
                validate::in_range("schedule.peak_frac", *peak_frac, 0.0, 1.0)?;
            }
            LrSchedule::OneCycle {
                peak_frac,
                div,
                final_div,
            } => {
                validate::in_range("schedule.peak_frac", *peak_frac, 0.0, 1.0)?;
                if *div < 1.0 || !div.is_finite() {
                    return Err(Error::config("schedule.div", "must be >= 1"));
                }
                if *final_div < 1.0 || !final_div.is_finite() {
                    return Err(Error::config("schedule.final_div", "must be >= 1"));
                }
            }
        }
        Ok(())
    }

    /// The learning rate at fractional epoch `t` of a run of `epochs` epochs.
    pub fn lr_at(&self, t: f64, epochs: usize) -> f64 {
        let total = epochs.max(1) as f64;
        let frac = (t / total).clamp(0.0, 1.0);
        let base = self.lr;
        let lr = match &self.schedule {
            LrSchedule::Constant => base,
            LrSchedule::Multistep { milestones, gamma } => {
                let k = milestones.iter().filter(|&&m| t >= m).count();
                base * gamma.powi(k as i32)
            }
            LrSchedule::Cosine { min_lr } => {
                min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * frac).cos())
            }
            LrSchedule::Cyclic { peak_frac } => {
                if *peak_frac <= 0.0 {
                    base * (1.0 - frac)
                } else if frac <= *peak_frac {
                    base * frac / peak_frac
                } else if *peak_frac >= 1.0 {
                    base
                } else {
                    base * (1.0 - frac) / (1.0 - peak_frac)
                }
            }
            LrSchedule::OneCycle {
                peak_frac,
                div,
                final_div,
            } => {
                let cos = |a: f64, b: f64, p: f64| {
                    b + 0.5 * (a - b) * (1.0 + (std::f64::consts::PI * p).cos())
                };
                let start = base / div;
                let end = base / final_div;
                if *peak_frac > 0.0 && frac <= *peak_frac {
                    cos(start, base, frac / peak_frac)
                } else if *peak_frac >= 1.0 {
                    base
                } else {
                    cos(base, end, (frac - peak_frac) / (1.0 - peak_frac))
                }
            }
        };
        if self.warmup_epochs > 0.0 && t < self.warmup_epochs {
            lr * (t / self.warmup_epochs)
        } else {
            lr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: LrSchedule) -> ScheduleConfig {
        ScheduleConfig {
            lr: 0.1,
            schedule,
            warmup_epochs: 0.0,
        }
    }

    #[test]
    fn multistep_decays_at_milestones() {
        let c = cfg(LrSchedule::Multistep {
            milestones: vec![91.0, 136.0],
            gamma: 0.1,
        });
        c.validate(182).unwrap();
        assert!((c.lr_at(90.9, 182) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(91.0, 182) - 0.01).abs() < 1e-12);
        assert!((c.lr_at(150.0, 182) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn cosine_endpoints_and_midpoint() {
        let c = cfg(LrSchedule::Cosine { min_lr: 0.0 });
        assert!((c.lr_at(0.0, 10) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(5.0, 10) - 0.05).abs() < 1e-12);
        assert!(c.lr_at(10.0, 10).abs() < 1e-12);
    }

    #[test]
    fn cyclic_is_triangular() {
        let c = cfg(LrSchedule::Cyclic { peak_frac: 0.5 });
        assert!(c.lr_at(0.0, 10).abs() < 1e-12);
        assert!((c.lr_at(5.0, 10) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(2.5, 10) - 0.05).abs() < 1e-12);
        assert!((c.lr_at(7.5, 10) - 0.05).abs() < 1e-12);
        assert!(c.lr_at(10.0, 10).abs() < 1e-12);
    }

    #[test]
    fn one_cycle_peaks_at_peak_frac() {
        let c = cfg(LrSchedule::OneCycle {
            peak_frac: 0.3,
            div: 25.0,
            final_div: 1e4,
        });
        assert!((c.lr_at(0.0, 10) - 0.004).abs() < 1e-12);
        assert!((c.lr_at(3.0, 10) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(10.0, 10) - 1e-5).abs() < 1e-12);
    }

    #[test]
    fn warmup_is_linear() {
        let mut c = cfg(LrSchedule::Constant);
        c.warmup_epochs = 2.0;
        assert!((c.lr_at(1.0, 10) - 0.05).abs() < 1e-12);
        assert!((c.lr_at(3.0, 10) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn validation_names_fields() {
        let c = cfg(LrSchedule::Multistep {
            milestones: vec![5.0, 3.0],
            gamma: 0.1,
        });
        assert!(c
            .validate(10)
            .unwrap_err()
            .to_string()
            .contains("milestones"));
        let mut c = cfg(LrSchedule::Constant);
        c.lr = -1.0;
        assert!(c.validate(10).unwrap_err().to_string().contains("`lr`"));
        let mut c = cfg(LrSchedule::Constant);
        c.warmup_epochs = 20.0;
        assert!(c
            .validate(10)
            .unwrap_err()
            .to_string()
            .contains("warmup_epochs"));
    }
}

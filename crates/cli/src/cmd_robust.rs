//! `attack` and `robust-eval`.

use crate::args::{ModelHints, RunOpts};
use crate::print::{emit_summary, print_pairs};
use clap::{Args, ValueEnum};
use rustworthy::core::Result;
use rustworthy::robust::{AttackLoss, Norm, SuiteConfig, TargetSpec, ThreatModel};
use rustworthy::robust_run::{
    attack as attack_run, robust_eval_run, AttackKind, AttackRequest, AttackSpec, ModelData,
    RobustEvalRequest,
};
use rustworthy::table::render;
use std::path::PathBuf;

/// Model and data options shared by the robustness commands.
#[derive(Args, Debug)]
pub struct ModelDataArgs {
    /// The model: a run folder or `model.safetensors` with its sidecar, a TorchScript module
    /// (`torch.jit.script`/`trace`), or a state dict (safetensors, `.pt`/`.pth`) with --arch.
    #[arg(long)]
    pub model: PathBuf,
    /// How to read a model file without our sidecar.
    #[command(flatten)]
    pub hints: ModelHints,
    /// Dataset (default: the one the model was trained on); its test split is attacked.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Folder holding the dataset files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Attack the first N test samples (0 = all).
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// Batch size.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Precision and layout.
    #[command(flatten)]
    pub exec: crate::args::ExecArgs,
    /// Device, threads, seed, output folder and progress.
    #[command(flatten)]
    pub run: RunOpts,
}

impl ModelDataArgs {
    /// The library's form of these options (seed 0 and all threads unless given).
    fn to_lib(&self) -> ModelData {
        ModelData {
            model: self.hints.source(&self.model),
            dataset: self.dataset.clone(),
            data_dir: self.data_dir.clone(),
            n: self.n,
            batch_size: self.batch_size,
            seed: self.run.seed.unwrap_or(0),
            device: self.run.device(),
            threads: self.run.threads.unwrap_or(0),
            out: self.run.out.clone(),
            exec: self.exec.exec(),
        }
    }
}

/// The attacks.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AttackArg {
    /// One signed-gradient step.
    Fgsm,
    /// Projected gradient descent.
    Pgd,
    /// Auto-PGD.
    Apgd,
    /// Targeted Auto-PGD (DLR loss).
    #[value(name = "apgd-t")]
    ApgdT,
    /// Carlini-Wagner l2.
    Cw,
    /// Square attack (scores only).
    Square,
    /// ZOO (scores only).
    Zoo,
    /// ZO-signSGD (scores only).
    #[value(name = "zo-signsgd")]
    ZoSignsgd,
    /// NES (scores only).
    Nes,
}

impl From<AttackArg> for AttackKind {
    fn from(a: AttackArg) -> AttackKind {
        match a {
            AttackArg::Fgsm => AttackKind::Fgsm,
            AttackArg::Pgd => AttackKind::Pgd,
            AttackArg::Apgd => AttackKind::Apgd,
            AttackArg::ApgdT => AttackKind::ApgdT,
            AttackArg::Cw => AttackKind::Cw,
            AttackArg::Square => AttackKind::Square,
            AttackArg::Zoo => AttackKind::Zoo,
            AttackArg::ZoSignsgd => AttackKind::ZoSignsgd,
            AttackArg::Nes => AttackKind::Nes,
        }
    }
}

/// Threat-model norms.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NormArg {
    /// l_inf ball.
    Linf,
    /// l_2 ball.
    L2,
}

impl From<NormArg> for Norm {
    fn from(n: NormArg) -> Norm {
        match n {
            NormArg::Linf => Norm::Linf,
            NormArg::L2 => Norm::L2,
        }
    }
}

/// Attack losses.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LossArg {
    /// Cross-entropy.
    Ce,
    /// Difference of logits ratio.
    Dlr,
    /// Logit margin (C&W).
    Margin,
}

/// Flags of `rustworthy attack`.
#[derive(Args, Debug)]
pub struct AttackArgs {
    /// The model, the data and the run options.
    #[command(flatten)]
    pub md: ModelDataArgs,
    /// The attack.
    #[arg(long, value_enum, default_value_t = AttackArg::Pgd)]
    pub attack: AttackArg,
    /// Threat-model norm.
    #[arg(long, value_enum, default_value_t = NormArg::Linf)]
    pub norm: NormArg,
    /// Radius in pixel units (C&W: optional cap on the l2 norm of a success).
    #[arg(long)]
    pub eps: Option<f64>,
    /// Iterations (pgd 10, apgd 100, cw 100 per binary-search step).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Step size (pgd: default eps/4; zoo: the Adam rate, default eps/2; zo-signsgd and nes:
    /// the signed step, default eps/20).
    #[arg(long)]
    pub step_size: Option<f64>,
    /// Random restarts (pgd, apgd).
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Attack loss for pgd and apgd.
    #[arg(long, value_enum, default_value_t = LossArg::Ce)]
    pub loss: LossArg,
    /// Targeted attack: random | least-likely | CLASS.
    #[arg(long)]
    pub target: Option<TargetSpec>,
    /// Start PGD from the clean image instead of a random point.
    #[arg(long)]
    pub no_random_start: bool,
    /// Run every sample for all steps (no early stop on success), as torchattacks does.
    #[arg(long)]
    pub no_early_stop: bool,
    /// Query budget per sample (square, zoo, zo-signsgd, nes).
    #[arg(long, default_value_t = 5000)]
    pub queries: usize,
    /// Directions per estimate (zo-signsgd 20, nes 50) or coordinates per iteration (zoo 128).
    #[arg(long)]
    pub q: Option<usize>,
    /// Finite-difference radius (zoo h 1e-3, zo-signsgd mu 5e-3, nes sigma 1e-3).
    #[arg(long)]
    pub mu: Option<f64>,
    /// zo-signsgd and nes: momentum of the normalized estimates (0: the published plain step).
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f64,
    /// Targets tried by apgd-t.
    #[arg(long, default_value_t = 9)]
    pub targets: usize,
    /// C&W: initial constant.
    #[arg(long, default_value_t = 1e-2)]
    pub cw_c: f64,
    /// C&W: binary-search steps.
    #[arg(long, default_value_t = 5)]
    pub cw_search: usize,
    /// Save the adversarial images (safetensors, `x_adv` [N, C, H, W]).
    #[arg(long)]
    pub save_images: bool,
    /// Also run the attack on samples the model already misclassifies (same work as libraries
    /// that attack every input; the statistics still count only clean-correct samples).
    #[arg(long)]
    pub attack_all: bool,
    /// Run the attack once on the first batch before the timed run (library initialization,
    /// kernel loading and autotuning stay out of the timing; the result is discarded).
    #[arg(long)]
    pub warmup: bool,
}

impl AttackArgs {
    /// The attack and its settings as the library takes them.
    fn spec(&self) -> AttackSpec {
        let mut s = AttackSpec::new(self.attack.into(), self.eps);
        s.norm = self.norm.into();
        s.steps = self.steps;
        s.step_size = self.step_size;
        s.restarts = self.restarts;
        s.loss = match self.loss {
            LossArg::Ce => AttackLoss::Ce,
            LossArg::Dlr => AttackLoss::Dlr,
            LossArg::Margin => AttackLoss::Margin,
        };
        s.random_start = !self.no_random_start;
        s.early_stop = !self.no_early_stop;
        s.queries = self.queries;
        s.q = self.q;
        s.mu = self.mu;
        s.momentum = self.momentum;
        s.targets = self.targets;
        s.cw_c = self.cw_c;
        s.cw_search = self.cw_search;
        s
    }
}

/// `v` with `digits` decimals, or `-` when absent.
fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// Runs `attack` and prints the summary (or a JSON line with `--progress json`).
pub fn attack(a: AttackArgs) -> Result<()> {
    let req = AttackRequest {
        md: a.md.to_lib(),
        spec: a.spec(),
        target: a.target,
        save_images: a.save_images,
        attack_all: a.attack_all,
        warmup: a.warmup,
    };
    let o = attack_run(&req)?;
    if emit_summary(a.md.run.mode(), &o.report.metrics) {
        return Ok(());
    }
    let s = &o.run.summary;
    print_pairs(&[
        ("attack".into(), s.attack.clone()),
        ("clean accuracy".into(), format!("{:.2}%", s.clean_accuracy)),
        (
            "robust accuracy".into(),
            format!("{:.2}%", s.robust_accuracy),
        ),
        (
            "success rate".into(),
            format!("{:.2}% ({}/{})", s.success_rate, s.successes, s.attacked),
        ),
        (
            "median queries (success)".into(),
            fmt_opt(s.median_queries_success, 0),
        ),
        (
            "median linf (success)".into(),
            fmt_opt(s.median_linf_success, 4),
        ),
        (
            "median l2 (success)".into(),
            fmt_opt(s.median_l2_success, 4),
        ),
        (
            "max constraint violation".into(),
            format!("{:.1e}", s.max_violation),
        ),
        (
            "examples / s".into(),
            format!("{:.1}", s.examples_per_second),
        ),
        ("time".into(), format!("{:.2} s", s.seconds)),
        (
            "report".into(),
            o.out.join("report.json").display().to_string(),
        ),
    ]);
    Ok(())
}

/// Suites of the robust evaluation.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SuiteArg {
    /// PGD-20, APGD-CE 50, APGD-T 50 x 3 targets, Square 1000.
    Quick,
    /// PGD-50 x 10 restarts, APGD-CE 100, APGD-T 100 x 9, Square 5000.
    Standard,
}

/// Flags of `rustworthy robust-eval`.
#[derive(Args, Debug)]
pub struct RobustEvalArgs {
    /// The model, the data and the run options.
    #[command(flatten)]
    pub md: ModelDataArgs,
    /// Radius in pixel units.
    #[arg(long)]
    pub eps: f64,
    /// Threat-model norm.
    #[arg(long, value_enum, default_value_t = NormArg::Linf)]
    pub norm: NormArg,
    /// The attack suite.
    #[arg(long, value_enum, default_value_t = SuiteArg::Standard)]
    pub suite: SuiteArg,
    /// Radii of the accuracy-vs-eps curve, comma-separated (default: eps x 1/4..4, plus 0.5).
    #[arg(long, value_delimiter = ',')]
    pub curve: Option<Vec<f64>>,
}

/// Runs `robust-eval` and prints the accuracy per attack, the accuracy-vs-eps curve and any sign of
/// gradient masking.
pub fn robust_eval(a: RobustEvalArgs) -> Result<()> {
    let threat = ThreatModel::new(a.norm.into(), a.eps)?;
    let name = match a.suite {
        SuiteArg::Quick => "quick",
        SuiteArg::Standard => "standard",
    };
    let mut suite = SuiteConfig::preset(name, threat)?;
    if let Some(c) = &a.curve {
        suite.curve = c.clone();
    }
    let o = robust_eval_run(&RobustEvalRequest {
        md: a.md.to_lib(),
        suite,
    })?;
    if emit_summary(a.md.run.mode(), &o.report.metrics) {
        return Ok(());
    }
    let r = &o.result;
    let mut rows = vec![vec![
        "clean".into(),
        format!("{:.2}%", r.clean_accuracy),
        "-".into(),
    ]];
    for (name, acc, secs) in [
        (&r.fgsm.attack, r.fgsm.robust_accuracy, r.fgsm.seconds),
        (&r.pgd.attack, r.pgd.robust_accuracy, r.pgd.seconds),
    ] {
        rows.push(vec![
            name.clone(),
            format!("{acc:.2}%"),
            format!("{secs:.1} s"),
        ]);
    }
    for e in &r.ensemble {
        rows.push(vec![
            format!("+ {} (ensemble, {} attacked)", e.attack, e.attacked),
            format!("{:.2}%", e.robust_accuracy),
            format!("{:.1} s", e.seconds),
        ]);
    }
    rows.push(vec![
        "ensemble".into(),
        format!("{:.2}%", r.ensemble_accuracy),
        "-".into(),
    ]);
    rows.push(vec![
        "worst case (all attacks)".into(),
        format!("{:.2}%", r.worst_case_accuracy),
        format!("{:.1} s", r.seconds),
    ]);
    println!("{}", render(&["attack", "accuracy", "time"], &rows));
    let curve: Vec<Vec<String>> = r
        .curve
        .iter()
        .map(|(e, acc)| vec![format!("{e}"), format!("{acc:.2}%")])
        .collect();
    println!("{}", render(&["eps", "PGD accuracy"], &curve));
    if r.flags.is_empty() {
        println!("no signs of gradient masking found");
    }
    for f in &r.flags {
        println!("warning: {f}");
    }
    println!("report: {}", o.out.join("report.json").display());
    Ok(())
}

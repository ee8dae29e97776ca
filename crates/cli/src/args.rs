//! Option groups and value parsers shared by the commands.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};
use rustworthy::core::progress::ProgressMode;
use rustworthy::core::DeviceSpec;
use std::path::PathBuf;
use std::str::FromStr;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// Progress bars on stderr.
    Bar,
    /// Only the final summary.
    Quiet,
    /// JSON lines on stdout, for scripts.
    Json,
}

impl From<Progress> for ProgressMode {
    fn from(p: Progress) -> ProgressMode {
        match p {
            Progress::Bar => ProgressMode::Bar,
            Progress::Quiet => ProgressMode::Quiet,
            Progress::Json => ProgressMode::JsonLines,
        }
    }
}

/// Options every command that runs something shares.
#[derive(Args, Debug, Clone)]
pub struct RunOpts {
    /// Device: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, value_parser = parse_device)]
    pub device: Option<DeviceSpec>,
    /// libtorch intra-op threads (0: libtorch's default).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the command's own randomness (training, the method, the attack).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = Progress::Bar)]
    pub progress: Progress,
    /// Output folder (each command has its own default, shown in its report).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl RunOpts {
    /// The device, `auto` when not given.
    pub fn device(&self) -> DeviceSpec {
        self.device.unwrap_or_default()
    }
    /// The progress mode.
    pub fn mode(&self) -> ProgressMode {
        self.progress.into()
    }
}

/// Precision and layout of a model's forward passes.
#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Precision of forward passes: fp32, or bf16 autocast (as PyTorch AMP).
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    pub precision: rustworthy::models::Precision,
    /// Convolution weights and inputs in channels-last (NHWC) memory order.
    #[arg(long)]
    pub channels_last: bool,
}

impl ExecArgs {
    /// The library's form.
    pub fn exec(&self) -> rustworthy::models::Exec {
        rustworthy::models::Exec {
            precision: self.precision,
            channels_last: self.channels_last,
        }
    }
}

/// Parses `--precision` (fp32 or bf16).
pub fn parse_precision(s: &str) -> Result<rustworthy::models::Precision, String> {
    rustworthy::models::Precision::parse(s).map_err(|e| e.to_string())
}

/// Parses `--device` (`auto`, `cpu`, `cuda`, `cuda:N`), with the library's error as the message.
fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse::<DeviceSpec>().map_err(|e| e.to_string())
}

/// A parser accepting exactly `names` (listed by `--help`) and converting with `FromStr`.
pub fn choice<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    PossibleValuesParser::new(names).try_map(|s: String| s.parse::<T>().map_err(|e| e.to_string()))
}

/// Names of the model zoo's architectures.
pub const ARCHS: &[&str] = &[
    "mlp",
    "lenet",
    "resnet18",
    "resnet20",
    "preact-resnet18",
    "vgg16-bn",
];
/// Names of the pruning methods.
pub const PRUNE_METHODS: &[&str] = &[
    "omp", "imp", "snip", "grasp", "synflow", "random", "hydra", "bip",
];
/// Names of the adversarial-training methods, and `none`.
pub const ADV_METHODS: &[&str] = &["pgd", "fast", "gradalign", "fast-bat", "trades", "none"];

/// What to assume about a model file that does not say it itself (a bare state dict or a
/// TorchScript module).
#[derive(Args, Debug, Clone, Default)]
pub struct ModelHints {
    /// Architecture of a bare weights file (safetensors or .pt/.pth state dict) without a
    /// rustworthy sidecar.
    #[arg(long, value_parser = choice::<rustworthy::models::Arch>(ARCHS))]
    pub arch: Option<rustworthy::models::Arch>,
    /// Per-channel mean the model subtracts from [0, 1] inputs (comma-separated; a bare state
    /// dict: else its normalize buffers; TorchScript: else none).
    #[arg(long, value_delimiter = ',')]
    pub mean: Option<Vec<f64>>,
    /// Per-channel standard deviation (comma-separated; as for --mean).
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f64>>,
    /// Number of classes the model must have.
    #[arg(long)]
    pub num_classes: Option<i64>,
    /// Rename rule for a state dict's names, `old=new` (a name component or prefix; repeatable).
    #[arg(long, value_name = "OLD=NEW")]
    pub map: Vec<String>,
}

impl ModelHints {
    /// The library's model source for `path`.
    pub fn source(&self, path: &std::path::Path) -> rustworthy::model_source::ModelSource {
        rustworthy::model_source::ModelSource {
            path: path.to_path_buf(),
            arch: self.arch,
            mean: self.mean.clone(),
            std: self.std.clone(),
            num_classes: self.num_classes,
            map: self.map.clone(),
        }
    }
}

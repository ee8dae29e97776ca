//! rustworthy's test kit: what the workspace's tests share, used only as a dev-dependency and
//! never published.
//!
//! * [`torch_lock`]: a process-wide lock on libtorch's global random generator. Every test that
//!   seeds it or draws from it (directly, or through model construction, training, unlearning,
//!   attacks with random starts, ZO objectives...) holds the guard for its whole body, so the
//!   tests of one binary run in parallel threads without disturbing each other's random
//!   streams; tests that touch no global state take no lock and stay parallel.
//! * Paths and environment: the workspace root, the committed TorchScript fixture, the project's
//!   Python (`.venv/bin/python`) and whether tests must find it or Fashion-MNIST instead of
//!   skipping (`RUSTWORTHY_REQUIRE_PYTHON=1`, `RUSTWORTHY_REQUIRE_DATA=1`).
//! * Small set-ups: tiny one-channel model specs, a short SGD recipe, synthetic train/test
//!   splits, seeded and trained models, bit patterns of parameters, and [`task`], the small
//!   trained MLP that the attack tests share.
//!
//! None of the helpers takes the lock itself: the test that calls them holds it.

#![warn(missing_docs)]

use rustworthy_core::progress::ProgressMode;
use rustworthy_data::locate::DEBIAN_FASHION_MNIST;
use rustworthy_data::synthetic::synthetic;
use rustworthy_data::Dataset;
use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_train::schedule::{LrSchedule, ScheduleConfig};
use rustworthy_train::trainer::FitOptions;
use rustworthy_train::{fit, OptimConfig, TrainConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use tch::Device;

// ---------------------------------------------------------------------------------------------
// The lock on libtorch's generator

static TORCH: Mutex<()> = Mutex::new(());

/// Locks libtorch's process-wide random generator (`tch::manual_seed`, `Tensor::rand*`, parameter
/// init, dropout) for the calling test; hold the guard for the whole test body
/// (`let _torch = torch_lock();`). A test that panicked while holding it does not fail the
/// others: the poisoned lock is recovered. Not reentrant: take it once per test, never inside a
/// helper the test calls.
pub fn torch_lock() -> MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Paths and environment

/// The workspace root (the folder of the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The committed TorchScript fixture `tests/fixtures/torchscript/small-cnn.pt` (written by
/// `scripts/ref/export_torchscript.py --fixture`): a small CNN for 1x12x12 inputs and 4 classes
/// with batch norm and dropout.
pub fn small_cnn_fixture() -> PathBuf {
    workspace_root().join("tests/fixtures/torchscript/small-cnn.pt")
}

/// The project's Python interpreter (`.venv/bin/python`, made by `scripts/setup.sh`), if
/// installed.
pub fn python() -> Option<PathBuf> {
    let p = workspace_root().join(".venv/bin/python");
    p.exists().then_some(p)
}

/// Whether a missing Python must fail a test instead of skipping it
/// (`RUSTWORTHY_REQUIRE_PYTHON=1`).
pub fn python_required() -> bool {
    std::env::var("RUSTWORTHY_REQUIRE_PYTHON").is_ok_and(|v| v == "1")
}

/// The project's Python for the test named `test`; `None` (with a message) when it is absent,
/// and a panic instead when it is required ([`python_required`]).
pub fn python_or_skip(test: &str) -> Option<PathBuf> {
    match python() {
        Some(p) => Some(p),
        None if python_required() => {
            panic!("{test}: RUSTWORTHY_REQUIRE_PYTHON=1 but .venv/bin/python is missing")
        }
        None => {
            eprintln!("{test}: skipped, .venv/bin/python not found (run scripts/setup.sh)");
            None
        }
    }
}

/// Whether a missing real dataset must fail a test instead of skipping it
/// (`RUSTWORTHY_REQUIRE_DATA=1`).
pub fn data_required() -> bool {
    std::env::var("RUSTWORTHY_REQUIRE_DATA").is_ok_and(|v| v == "1")
}

/// Whether Debian's Fashion-MNIST (`dataset-fashion-mnist`, in
/// `/usr/share/datasets/fashion-mnist`) is installed. When it is not, says so and returns
/// `false`, or panics if the data is required ([`data_required`]).
pub fn fashion_mnist_present() -> bool {
    let dir = Path::new(DEBIAN_FASHION_MNIST);
    let here = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
        .iter()
        .all(|f| dir.join(f).is_file());
    if !here {
        assert!(
            !data_required(),
            "Fashion-MNIST is required (RUSTWORTHY_REQUIRE_DATA=1) but {DEBIAN_FASHION_MNIST} is \
             missing; apt-get install dataset-fashion-mnist"
        );
        eprintln!(
            "skipped: Fashion-MNIST not installed in {DEBIAN_FASHION_MNIST} \
             (apt-get install dataset-fashion-mnist)"
        );
    }
    here
}

// ---------------------------------------------------------------------------------------------
// Specs, recipes, data and models

/// Number of classes of the synthetic tasks and tiny specs.
pub const CLASSES: usize = 4;

/// A tiny spec: `arch` on one-channel `size` x `size` images of [`CLASSES`] classes, normalized
/// with mean 0.5 and std 0.25.
pub fn tiny_spec(arch: Arch, size: i64) -> ModelSpec {
    ModelSpec {
        activation: Default::default(),
        arch,
        in_channels: 1,
        num_classes: CLASSES as i64,
        input_size: (size, size),
        mean: vec![0.5],
        std: vec![0.25],
    }
}

/// A short training recipe: SGD (momentum 0.9, weight decay 5e-4) with a cosine schedule from
/// `lr` to 0, no warm-up, no augmentation, evaluation batches of 256.
pub fn sgd_recipe(epochs: usize, batch_size: usize, lr: f64, seed: u64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size,
        eval_batch_size: 256,
        optim: OptimConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 5e-4,
        },
        lr: ScheduleConfig {
            lr,
            schedule: LrSchedule::Cosine { min_lr: 0.0 },
            warmup_epochs: 0.0,
        },
        augment: Default::default(),
        drop_last: false,
        seed,
        precision: Default::default(),
        channels_last: false,
        optim_impl: Default::default(),
    }
}

/// Fit options without progress output.
pub fn quiet() -> FitOptions {
    FitOptions {
        progress: ProgressMode::Quiet,
        ..Default::default()
    }
}

/// A synthetic one-channel task of [`CLASSES`] classes (`per_class` images of `size` x `size`
/// each, `noise` and `seed` as in [`synthetic`]) split in order: the first `n_train` samples
/// train, the rest test (the same class prototypes on both sides).
pub fn synthetic_split(
    per_class: usize,
    size: usize,
    noise: f64,
    seed: u64,
    n_train: usize,
) -> (Dataset, Dataset) {
    let all = synthetic(CLASSES, per_class, 1, size, noise, seed);
    let idx: Vec<usize> = (0..all.len()).collect();
    (
        all.subset(&idx[..n_train]).unwrap(),
        all.subset(&idx[n_train..]).unwrap(),
    )
}

/// A CPU model of `spec` initialised after `tch::manual_seed(seed)`.
pub fn seeded_model(spec: ModelSpec, seed: i64) -> Model {
    tch::manual_seed(seed);
    Model::new(spec, Device::Cpu).unwrap()
}

/// [`seeded_model`] trained quietly on `train` with `recipe`.
pub fn trained_model(spec: ModelSpec, seed: i64, train: &Dataset, recipe: &TrainConfig) -> Model {
    let mut m = seeded_model(spec, seed);
    fit(&mut m, train, None, recipe, &quiet()).unwrap();
    m
}

/// A copy of `m` in a newly built model of the same spec. Building it draws a fresh init from
/// libtorch's generator (then overwritten), as `Model::new` does.
pub fn copy_of(m: &Model) -> Model {
    let mut c = Model::new(m.spec.clone(), m.device()).unwrap();
    c.copy_from(m).unwrap();
    c
}

/// The bit patterns of every float32 parameter, by name: equal maps mean bit-for-bit equal
/// parameters.
pub fn param_bits(m: &Model) -> BTreeMap<String, Vec<u32>> {
    tensor_bits(m.parameters())
}

/// The bit patterns of float32 tensors, by name (for models other than [`Model`]).
pub fn tensor_bits(named: Vec<(String, tch::Tensor)>) -> BTreeMap<String, Vec<u32>> {
    named
        .into_iter()
        .map(|(n, t)| {
            let v: Vec<f32> = Vec::try_from(&t.flatten(0, -1)).unwrap();
            (n, v.into_iter().map(f32::to_bits).collect())
        })
        .collect()
}

/// The small task the attack tests share (robustness and ZO attacks): 4 classes of 12x12
/// synthetic images (100 each, noise 0.3, seed 7; 300 train, 100 test) and an MLP trained on
/// them.
pub mod task {
    use super::{quiet, seeded_model, sgd_recipe, synthetic_split, tiny_spec};
    use rustworthy_data::Dataset;
    use rustworthy_models::{Arch, Model, ModelSpec};
    use rustworthy_train::{fit, fit_with, TrainConfig, TrainHook};

    pub use super::CLASSES;

    /// Image side.
    pub const SIZE: usize = 12;

    /// The MLP's spec.
    pub fn spec() -> ModelSpec {
        tiny_spec(Arch::Mlp, SIZE as i64)
    }

    /// The training recipe ([`sgd_recipe`](super::sgd_recipe): batches of 32, lr 0.05, seed 5).
    pub fn recipe(epochs: usize) -> TrainConfig {
        sgd_recipe(epochs, 32, 0.05, 5)
    }

    /// Train and test splits.
    pub fn data() -> (Dataset, Dataset) {
        synthetic_split(100, SIZE, 0.3, 7, 300)
    }

    /// An untrained MLP initialised after `tch::manual_seed(seed)`.
    pub fn fresh_model(seed: i64) -> Model {
        seeded_model(spec(), seed)
    }

    /// A standard (non-robust) MLP trained for 6 epochs (init seed 3), with the splits.
    pub fn trained() -> (Model, Dataset, Dataset) {
        let (train, test) = data();
        let mut m = fresh_model(3);
        fit(&mut m, &train, None, &recipe(6), &quiet()).unwrap();
        (m, train, test)
    }

    /// An MLP (init seed 3) trained for `epochs` epochs through `hook` (e.g. adversarial
    /// training).
    pub fn trained_with(hook: &mut dyn TrainHook, epochs: usize) -> Model {
        let (train, _) = data();
        let mut m = fresh_model(3);
        fit_with(&mut m, &train, None, &recipe(epochs), &quiet(), hook).unwrap();
        m
    }
}

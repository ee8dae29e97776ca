//! `rustworthy._rustworthy`: the native half of the Python package. Every function here parses
//! its arguments, calls the library (`rustworthy::tensors` and friends) and converts the
//! result; tensors cross in both directions without copies (DLPack, see `tensor`), results
//! come back as JSON text that the Python half turns into dicts. Long calls release the GIL
//! and check for Ctrl-C between batches.

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use rustworthy::core::progress::{set_interrupt_check, ProgressMode};
use rustworthy::core::{DeviceSpec, Error};
use rustworthy::model_source::{open_model, ModelSource};
use rustworthy::models::{Arch, MapRules, Model, ScriptOptions};
use rustworthy::prune::{PruneMethod, Scope};
use rustworthy::robust::{Norm, SuiteConfig, ThreatModel};
use rustworthy::robust_run::{AttackKind, AttackSpec};
use rustworthy::tch::{self, Device, Kind, Tensor};
use rustworthy::unlearn::{ForgetSpec, MethodConfig, Profile};
use rustworthy::zo::{
    minimize, Cge, Diff, Dist, Estimator, Objective, Oracle, Rge, Update, ZoConfig,
};
use std::path::PathBuf;
use tensor::PyTensor;

mod tensor;

/// Library errors as Python exceptions: bad arguments are `ValueError`, the rest
/// `RuntimeError`, a Ctrl-C `KeyboardInterrupt`; the message is the library's.
fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Interrupted => PENDING
            .lock()
            .ok()
            .and_then(|mut p| p.take())
            .unwrap_or_else(|| PyKeyboardInterrupt::new_err(msg)),
        Error::Config { .. } | Error::Shape { .. } | Error::Invalid(_) => {
            PyValueError::new_err(msg)
        }
        _ => PyRuntimeError::new_err(msg),
    }
}

fn value_err(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

fn parse<T: std::str::FromStr<Err = Error>>(s: &str) -> PyResult<T> {
    s.parse().map_err(py_err)
}

fn device(s: &str) -> PyResult<Device> {
    parse::<DeviceSpec>(s)?.resolve().map_err(py_err)
}

fn json<T: serde::Serialize>(v: &T) -> PyResult<String> {
    serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

fn json_map(text: &str, what: &str) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(value_err(format!("{what}: expected a dict of settings"))),
    }
}

/// `base` with the fields given in `settings` (a JSON dict) replaced. A field `base` does not
/// have, or one of `fixed`, is an unknown `what` setting, and a value of the wrong type is
/// refused by deserialization: both `ValueError`.
fn with_settings<T: serde::Serialize + serde::de::DeserializeOwned>(
    base: &T,
    settings: &str,
    what: &str,
    fixed: &[&str],
) -> PyResult<T> {
    let mut v = serde_json::to_value(base).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    for (k, val) in json_map(settings, &format!("{what} settings"))? {
        if v.get(&k).is_none() || fixed.contains(&k.as_str()) {
            return Err(value_err(format!("unknown {what} setting `{k}`")));
        }
        v[&k] = val;
    }
    serde_json::from_value(v).map_err(|e| value_err(format!("{what} settings: {e}")))
}

/// Progress bars when `bar`, else nothing.
fn progress_mode(bar: bool) -> ProgressMode {
    if bar {
        ProgressMode::Bar
    } else {
        ProgressMode::Quiet
    }
}

/// Runs `f` with the GIL released, on this thread.
///
/// # Safety
/// `f` must capture no Python object (`Bound`, `Py`, `Python`): pyo3's `Ungil` check is
/// bypassed because `Model` is not `Send`. The closures here capture a `&Model`, datasets and
/// plain values. The model and the tensors stay owned by objects this call borrows, so they
/// are not freed meanwhile; another Python thread could still change a tensor it shares (the
/// caller's images, or `state_dict()` views) while the call runs, as it could with any
/// PyTorch function that releases the GIL.
unsafe fn without_gil<T: Send>(py: Python<'_>, f: impl FnOnce() -> T) -> T {
    struct AssertSend<F>(F);
    // SAFETY: the closure runs on this thread (allow_threads does not move it); see above.
    unsafe impl<F> Send for AssertSend<F> {}
    let f = AssertSend(f);
    py.allow_threads(move || {
        let f = f;
        (f.0)()
    })
}

/// What a Python signal handler raised during a call (KeyboardInterrupt for Ctrl-C, or a
/// handler's own exception), re-raised when the call returns `Error::Interrupted`.
static PENDING: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);

/// The library's interrupt check while a call runs: Python's signal handlers run, and if one
/// raises, the work stops at the next batch with `Error::Interrupted`.
fn check_ctrl_c() -> bool {
    Python::with_gil(|py| match py.check_signals() {
        Ok(()) => false,
        Err(e) => {
            if let Ok(mut p) = PENDING.lock() {
                p.get_or_insert(e);
            }
            true
        }
    })
}

/// A model the library can run: a TorchScript module, a saved model of any kind rustworthy
/// reads, or a zoo architecture with a state dict.
#[pyclass(unsendable, name = "Model", module = "rustworthy._rustworthy")]
struct PyModel {
    model: Model,
    notes: Vec<String>,
}

#[pymethods]
impl PyModel {
    /// A TorchScript archive in memory (what `torch.jit.save` writes to a `BytesIO`).
    #[staticmethod]
    #[pyo3(signature = (data, name, in_channels, height, width, mean=None, std=None, num_classes=None, device="cpu"))]
    #[allow(clippy::too_many_arguments)]
    fn from_script(
        data: &[u8],
        name: &str,
        in_channels: i64,
        height: i64,
        width: i64,
        mean: Option<Vec<f64>>,
        std: Option<Vec<f64>>,
        num_classes: Option<i64>,
        device: &str,
    ) -> PyResult<Self> {
        let mut opts = ScriptOptions::new(in_channels, (height, width));
        opts.mean = mean;
        opts.std = std;
        opts.num_classes = num_classes;
        let model = Model::from_torchscript_bytes(data.to_vec(), name, opts, self::device(device)?)
            .map_err(py_err)?;
        Ok(PyModel {
            model,
            notes: Vec::new(),
        })
    }

    /// A model file or run folder, opened as `rustworthy` commands open `--model`.
    #[staticmethod]
    #[pyo3(signature = (path, in_channels, height, width, arch=None, mean=None, std=None, num_classes=None, device="cpu"))]
    #[allow(clippy::too_many_arguments)]
    fn from_path(
        path: PathBuf,
        in_channels: i64,
        height: i64,
        width: i64,
        arch: Option<&str>,
        mean: Option<Vec<f64>>,
        std: Option<Vec<f64>>,
        num_classes: Option<i64>,
        device: &str,
    ) -> PyResult<Self> {
        let src = ModelSource {
            path,
            arch: arch.map(parse::<Arch>).transpose()?,
            mean,
            std,
            num_classes,
            map: Vec::new(),
        };
        let o = open_model(&src, (in_channels, (height, width)), self::device(device)?)
            .map_err(py_err)?;
        Ok(PyModel {
            model: o.model,
            notes: o.notes,
        })
    }

    /// A zoo architecture (`lenet`, `resnet18`, ...) with a PyTorch state dict; names are
    /// mapped as for a foreign weights file (prefixes, normalization buffers).
    #[staticmethod]
    #[pyo3(signature = (arch, state_dict, device="cpu"))]
    fn from_state_dict(
        arch: &str,
        state_dict: Vec<(String, PyTensor)>,
        device: &str,
    ) -> PyResult<Self> {
        let tensors = state_dict.into_iter().map(|(n, t)| (n, t.0)).collect();
        let (model, inferred, report) = Model::from_state_dict(
            tensors,
            "state_dict",
            parse::<Arch>(arch)?,
            &MapRules::none(),
            self::device(device)?,
        )
        .map_err(py_err)?;
        let mut notes = inferred.notes;
        notes.push(format!("{} tensors loaded", report.loaded));
        notes.extend(report.skipped.iter().map(|s| format!("skipped `{s}`")));
        Ok(PyModel { model, notes })
    }

    /// The model's parameters and buffers by name (the model's own tensors, not copies).
    fn state_dict(&self) -> Vec<(String, PyTensor)> {
        self.model
            .state_dict()
            .into_iter()
            .map(|(n, t)| (n, PyTensor(t.detach())))
            .collect()
    }

    /// Logits for images `x` in [0, 1], in eval mode, without gradients.
    fn logits(&self, x: PyTensor) -> PyResult<PyTensor> {
        let x = x.0.to_device(self.model.device());
        let out = tch::no_grad(|| self.model.try_forward_t(&x, false)).map_err(py_err)?;
        Ok(PyTensor(out))
    }

    /// An independent copy (same spec and values).
    fn copy(&self) -> PyResult<Self> {
        Ok(PyModel {
            model: self.model.try_clone().map_err(py_err)?,
            notes: self.notes.clone(),
        })
    }

    /// What opening the model read or assumed.
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    /// The model's spec (architecture, classes, input geometry, normalization) as JSON.
    fn spec_json(&self) -> PyResult<String> {
        json(&self.model.spec)
    }

    /// Sets the precision (`fp32` or `bf16` autocast, as PyTorch AMP) and the memory layout
    /// (`channels_last`) of every later forward pass: attacks, evaluation and unlearning (its
    /// copies of the model keep them).
    #[pyo3(signature = (precision="fp32", channels_last=false))]
    fn set_exec(&mut self, precision: &str, channels_last: bool) -> PyResult<()> {
        let precision = rustworthy::models::Precision::parse(precision).map_err(py_err)?;
        self.model
            .set_exec(rustworthy::models::Exec {
                precision,
                channels_last,
            })
            .map_err(py_err)
    }

    /// Writes a TorchScript model back as a TorchScript file.
    fn save_torchscript(&self, path: PathBuf) -> PyResult<()> {
        self.model.save_torchscript(path).map_err(py_err)
    }
}

fn data(
    name: &str,
    x: &PyTensor,
    y: &PyTensor,
    classes: Option<usize>,
) -> PyResult<rustworthy::data::Dataset> {
    rustworthy::tensors::dataset(name, &x.0, &y.0, classes).map_err(py_err)
}

/// Attacks `(x, y)`; returns the adversarial images, per-sample success, and the summary and
/// per-sample records as JSON.
#[pyfunction]
#[pyo3(signature = (model, x, y, attack, eps, settings, batch_size, seed, attack_all, progress=false))]
#[allow(clippy::too_many_arguments)]
fn attack(
    py: Python<'_>,
    model: &PyModel,
    x: PyTensor,
    y: PyTensor,
    attack: &str,
    eps: Option<f64>,
    settings: &str,
    batch_size: usize,
    seed: u64,
    attack_all: bool,
    progress: bool,
) -> PyResult<(PyTensor, PyTensor, String, String)> {
    let kind: AttackKind = serde_json::from_value(serde_json::Value::String(attack.into()))
        .map_err(|_| {
            value_err(format!(
                "unknown attack `{attack}`: fgsm, pgd, apgd, apgd-t, cw, square, zoo, zo-signsgd or nes"
            ))
        })?;
    let spec = with_settings(&AttackSpec::new(kind, eps), settings, "attack", &[])?;
    let ds = data("x", &x, &y, Some(model.model.spec.num_classes as usize))?;
    let m = &model.model;
    let mode = progress_mode(progress);
    // SAFETY: captures a &Model, a dataset and plain values.
    let run = unsafe {
        without_gil(py, || {
            rustworthy::tensors::attack(m, &ds, &spec, batch_size, seed, attack_all, mode)
        })
    }
    .map_err(py_err)?;
    let x_adv = run
        .x_adv
        .as_ref()
        .ok_or_else(|| PyRuntimeError::new_err("the attack kept no images"))?
        .shallow_clone();
    let success = Tensor::from_slice(&run.per_sample.success).to_kind(Kind::Bool);
    Ok((
        PyTensor(x_adv),
        PyTensor(success),
        json(&run.summary)?,
        json(&run.per_sample)?,
    ))
}

/// The robust-evaluation suite on `(x, y)`; the report as JSON.
#[pyfunction]
#[pyo3(signature = (model, x, y, suite, norm, eps, batch_size, seed, settings))]
#[allow(clippy::too_many_arguments)]
fn robust_eval(
    py: Python<'_>,
    model: &PyModel,
    x: PyTensor,
    y: PyTensor,
    suite: &str,
    norm: &str,
    eps: f64,
    batch_size: usize,
    seed: u64,
    settings: &str,
) -> PyResult<String> {
    let threat = ThreatModel::new(parse::<Norm>(norm)?, eps).map_err(py_err)?;
    let mut cfg = SuiteConfig::preset(suite, threat).map_err(py_err)?;
    cfg.batch_size = batch_size;
    cfg.seed = seed;
    let cfg = with_settings(&cfg, settings, "suite", &["threat"])?;
    cfg.validate().map_err(py_err)?;
    let ds = data("x", &x, &y, Some(model.model.spec.num_classes as usize))?;
    let m = &model.model;
    // SAFETY: captures a &Model, a dataset and plain values.
    let r = unsafe { without_gil(py, || rustworthy::tensors::robust_eval(m, &ds, &cfg)) }
        .map_err(py_err)?;
    json(&r)
}

/// Unlearns the training indices `forget` from `model`; returns the unlearned model and the
/// metrics before and after, with the method's report, as JSON.
#[pyfunction]
#[pyo3(signature = (model, train_x, train_y, test_x, test_y, forget, method, settings, profile, seed, recipe, progress))]
#[allow(clippy::too_many_arguments)]
fn unlearn(
    py: Python<'_>,
    model: &PyModel,
    train_x: PyTensor,
    train_y: PyTensor,
    test_x: PyTensor,
    test_y: PyTensor,
    forget: Vec<usize>,
    method: &str,
    settings: &str,
    profile: &str,
    seed: u64,
    recipe: &str,
    progress: bool,
) -> PyResult<(PyModel, String)> {
    let classes = Some(model.model.spec.num_classes as usize);
    let train = data("train", &train_x, &train_y, classes)?;
    let test = data("test", &test_x, &test_y, classes)?;
    let cfg = MethodConfig::with_overrides_for(
        method,
        parse::<Profile>(profile)?,
        &json_map(settings, "method settings")?,
    )
    .map_err(py_err)?;
    let original = model.model.try_clone().map_err(py_err)?;
    let spec = ForgetSpec::List { indices: forget };
    let mode = progress_mode(progress);
    // SAFETY: captures a model, datasets and plain values.
    let out = unsafe {
        without_gil(py, || {
            rustworthy::tensors::unlearn(
                original, &train, &test, &spec, 0, &cfg, seed, recipe, mode,
            )
        })
    }
    .map_err(py_err)?;
    let report = serde_json::json!({
        "method": out.result.method,
        "config": out.result.config,
        "before": out.before,
        "metrics": out.result.metrics,
        "report": out.result.report,
    });
    Ok((
        PyModel {
            model: out.model,
            notes: Vec::new(),
        },
        json(&report)?,
    ))
}

/// Prunes `model` in place with a one-shot method; returns the masks by name and the
/// per-layer sparsity as JSON.
#[pyfunction]
#[pyo3(signature = (model, method, sparsity, scope, x=None, y=None, seed=0))]
#[allow(clippy::too_many_arguments)]
fn prune(
    py: Python<'_>,
    model: &PyModel,
    method: &str,
    sparsity: f64,
    scope: &str,
    x: Option<PyTensor>,
    y: Option<PyTensor>,
    seed: u64,
) -> PyResult<(Vec<(String, PyTensor)>, String)> {
    let method = parse::<PruneMethod>(method)?;
    let scope = parse::<Scope>(scope)?;
    let ds = match (&x, &y) {
        (Some(x), Some(y)) => Some(data(
            "x",
            x,
            y,
            Some(model.model.spec.num_classes as usize),
        )?),
        (None, None) => None,
        _ => return Err(value_err("pass both x and y, or neither")),
    };
    let m = &model.model;
    // SAFETY: captures a &Model, a dataset and plain values.
    let masks = unsafe {
        without_gil(py, || {
            rustworthy::tensors::prune(m, method, sparsity, scope, ds.as_ref(), seed)
        })
    }
    .map_err(py_err)?;
    let (layers, total) = rustworthy::train::mask::mask_stats(&masks);
    let stats = serde_json::json!({"layers": layers, "sparsity": total});
    let out = masks
        .into_inner()
        .into_iter()
        .map(|(n, t)| (n, PyTensor(t)))
        .collect();
    Ok((out, json(&stats)?))
}

/// The unlearning benchmark of a preset (`rustworthy bench unlearn --preset NAME`), with
/// config fields changed by `settings` (JSON) and the `profile`; writes its run folder and
/// returns the table and every row as JSON.
#[pyfunction]
#[pyo3(signature = (preset, settings, profile, data_dir, fresh, progress))]
fn bench_unlearn(
    py: Python<'_>,
    preset: &str,
    settings: &str,
    profile: Option<&str>,
    data_dir: Option<PathBuf>,
    fresh: bool,
    progress: bool,
) -> PyResult<String> {
    use rustworthy::bench_unlearn::{
        bench_preset, bench_unlearn as run, BenchConfig, BenchOptions,
    };
    let base = bench_preset(preset).map_err(py_err)?;
    let mut cfg: BenchConfig = with_settings(&base, settings, "benchmark", &[])?;
    if let Some(p) = profile {
        cfg = cfg.with_profile(parse::<Profile>(p)?);
    }
    let opts = BenchOptions {
        data_dir,
        fresh,
        progress: progress_mode(progress),
    };
    // SAFETY: captures plain values only.
    let out = unsafe { without_gil(py, || run(&cfg, &opts)) }.map_err(py_err)?;
    json(&serde_json::json!({
        "markdown": out.markdown,
        "original": out.original,
        "results": out.results,
        "failed": out.failed,
        "out": out.out,
    }))
}

/// A Python callable as a black-box objective: one call per point, each returning a float.
struct PyObjective {
    f: PyObject,
    dim: i64,
    error: Option<PyErr>,
}

impl Objective for PyObjective {
    fn dim(&self) -> i64 {
        self.dim
    }
    fn eval(&mut self, xs: &Tensor, _batch: Option<&Tensor>) -> rustworthy::core::Result<Tensor> {
        let n = xs.size()[0];
        let mut out = Vec::with_capacity(n as usize);
        Python::with_gil(|py| -> rustworthy::core::Result<()> {
            for i in 0..n {
                let row = xs.get(i).copy();
                let v = self
                    .f
                    .call1(py, (PyTensor(row),))
                    .and_then(|r| r.extract::<f64>(py));
                match v {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        let msg = format!("the objective raised: {e}");
                        self.error = Some(e);
                        return Err(Error::Invalid(msg));
                    }
                }
            }
            Ok(())
        })?;
        Ok(Tensor::from_slice(&out).to_device(xs.device()))
    }
}

/// Zeroth-order minimization of `f` from `x0`; returns the best point, the last point and the
/// trace as JSON.
#[pyfunction]
#[pyo3(signature = (f, x0, estimator, optimizer, lr, steps, budget, q, mu, seed))]
#[allow(clippy::too_many_arguments)]
fn zo_minimize(
    f: PyObject,
    x0: PyTensor,
    estimator: &str,
    optimizer: &str,
    lr: f64,
    steps: usize,
    budget: Option<u64>,
    q: usize,
    mu: f64,
    seed: u64,
) -> PyResult<(PyTensor, PyTensor, String)> {
    let x0 = x0.0.to_kind(Kind::Double).flatten(0, -1);
    let d = x0.size()[0];
    if d == 0 {
        return Err(value_err("x0 is empty"));
    }
    let est = match estimator {
        "rge" => Estimator::Rge(Rge {
            dist: Dist::Sphere,
            q,
            mu,
            diff: Diff::Forward,
        }),
        "cge" => Estimator::Cge(Cge {
            mu,
            diff: Diff::Forward,
            coords: None,
        }),
        o => return Err(value_err(format!("unknown estimator `{o}`: rge or cge"))),
    };
    let update = match optimizer {
        "zo-sgd" => Update::Sgd,
        "zo-signsgd" => Update::Sign,
        "zo-adam" => Update::adam(),
        o => {
            return Err(value_err(format!(
                "unknown optimizer `{o}`: zo-sgd, zo-signsgd or zo-adam"
            )))
        }
    };
    let mut cfg = ZoConfig::new(est, update, lr, steps);
    cfg.seed = seed;
    let obj = PyObjective {
        f,
        dim: d,
        error: None,
    };
    let mut oracle = Oracle::new(obj, budget).map_err(py_err)?;
    let trace = minimize(&mut oracle, &x0, None, &cfg);
    if let Some(e) = oracle.objective.error.take() {
        return Err(e);
    }
    let trace = trace.map_err(py_err)?;
    let summary = serde_json::json!({
        "f_best": trace.f_best,
        "steps": trace.steps,
        "queries": oracle.queries(),
        "rejected": trace.rejected,
        "stopped": trace.stopped,
        "history": trace.history,
    });
    Ok((PyTensor(trace.x_best), PyTensor(trace.x), json(&summary)?))
}

/// The libtorch version this extension was built against.
#[pyfunction]
fn built_libtorch() -> &'static str {
    env!("RUSTWORTHY_LIBTORCH_VERSION")
}

#[pymodule]
fn _rustworthy(m: &Bound<'_, PyModule>) -> PyResult<()> {
    set_interrupt_check(check_ctrl_c);
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(attack, m)?)?;
    m.add_function(wrap_pyfunction!(robust_eval, m)?)?;
    m.add_function(wrap_pyfunction!(unlearn, m)?)?;
    m.add_function(wrap_pyfunction!(bench_unlearn, m)?)?;
    m.add_function(wrap_pyfunction!(prune, m)?)?;
    m.add_function(wrap_pyfunction!(zo_minimize, m)?)?;
    m.add_function(wrap_pyfunction!(built_libtorch, m)?)?;
    Ok(())
}

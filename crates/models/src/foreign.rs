//! Weights from other code bases: state dicts whose names differ from ours, in safetensors or
//! `torch.save` files, loaded into a zoo [`Model`].
//!
//! [`Model::load_foreign`] reads a weights file (the format is told by the file's first bytes,
//! not its extension: safetensors, `torch.save` zip or legacy `torch.save`, the latter two
//! through the restricted reader of [`crate::pth`], which also finds the state dict inside a
//! checkpoint dict), then maps its names onto the model's with [`MapRules`], in this order:
//!
//! 1. **prefixes** (`module.`, `model.` by default) are stripped from the start of every name,
//!    repeatedly (`module.module.conv1.weight` -> `conv1.weight`), as `DataParallel` and
//!    wrapper modules add them;
//! 2. **renames** `old=new`, each applied once per name in the order given: `old` matches a
//!    whole name or a leading run of whole components (`linear=fc` maps `linear.weight` to
//!    `fc.weight`, not `linear2.weight`); an `old` ending in `.` is a raw prefix (`backbone.=`
//!    strips `backbone.`);
//! 3. **normalization buffers**: a `P.mean`/`P.std` pair with `P` one of `normalize`,
//!    `normalizer`, `norm`, `normalization` becomes the model's per-channel normalization
//!    (`spec.mean`/`spec.std` and the forward pass's constants), after checking it has one
//!    entry per input channel (with [`MapRules::read_normalization`] off the pair is skipped and
//!    the model keeps its own);
//! 4. **built-in layouts** ([`builtin_layouts`]), tried only when the names still differ, and
//!    used only when one makes them match exactly.
//!
//! The result must then match the model exactly, with the strict checks of [`Model::load`]
//! (float32, same shapes); `num_batches_tracked` counters are optional. When names still
//! differ, the error lists the missing model variables side by side with the closest unexpected
//! name of the file (edit distance) and suggests rename rules. Nothing changes on error.
//! [`infer_spec`] reads the input channels, class count and (if present) normalization of a
//! bare file for an architecture, so such a file loads with the architecture alone
//! ([`Model::from_foreign`]).

use crate::io::{self, COUNTER_SUFFIX};
use crate::layers::{Role, Var};
use crate::model::Model;
use crate::pth;
use crate::spec::{
    Arch, ModelSpec, CIFAR10_MEAN, CIFAR10_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
};
use rustworthy_core::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tch::{Device, Kind, Tensor};

/// The container format of a weights file, told by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsFormat {
    /// A safetensors file.
    Safetensors,
    /// A `torch.save` zip archive (the default since PyTorch 1.6).
    TorchZip,
    /// A legacy `torch.save` stream (`_use_new_zipfile_serialization=False`).
    TorchLegacy,
}

impl fmt::Display for WeightsFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightsFormat::Safetensors => "safetensors",
            WeightsFormat::TorchZip => "torch.save (zip)",
            WeightsFormat::TorchLegacy => "torch.save (legacy)",
        })
    }
}

/// Tells the format of a weights file from its first bytes (never from its extension).
pub fn detect_format(path: impl AsRef<Path>) -> Result<WeightsFormat> {
    let path = path.as_ref();
    if path.is_dir() {
        return Err(Error::checkpoint(path, "not a regular file"));
    }
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = Vec::with_capacity(16);
    f.by_ref()
        .take(16)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    if head.len() >= 9 {
        let header_len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if head[8] == b'{' && header_len >= 2 && header_len <= len - 8 {
            return Ok(WeightsFormat::Safetensors);
        }
    }
    if pth::is_zip(&head) {
        return Ok(WeightsFormat::TorchZip);
    }
    if pth::looks_like_pth(&head) {
        return Ok(WeightsFormat::TorchLegacy);
    }
    Err(Error::checkpoint(
        path,
        format!(
            "unrecognized weights file: neither safetensors nor torch.save (first bytes {:02x?})",
            &head[..head.len().min(8)]
        ),
    ))
}

/// The tensors of a weights file, as read by [`read_weights`].
#[derive(Debug)]
pub struct Weights {
    /// The file's format.
    pub format: WeightsFormat,
    /// Name and tensor of every entry, in file order.
    pub tensors: Vec<(String, Tensor)>,
    /// For a `torch.save` checkpoint dict, the key its state dict was found under.
    pub source_key: Option<String>,
    /// Entries that were not tensors and were skipped (`_metadata`).
    pub skipped: Vec<String>,
}

/// Reads every tensor of a safetensors or `torch.save` file (format by magic bytes); for a
/// `torch.save` checkpoint, the state dict it holds (see [`pth::read_pth_state_dict`]).
pub fn read_weights(path: impl AsRef<Path>) -> Result<Weights> {
    let path = path.as_ref();
    let format = detect_format(path)?;
    match format {
        WeightsFormat::Safetensors => Ok(Weights {
            format,
            tensors: io::read_safetensors(path)?,
            source_key: None,
            skipped: Vec::new(),
        }),
        WeightsFormat::TorchZip | WeightsFormat::TorchLegacy => {
            let sd = pth::read_pth_state_dict(path)?;
            Ok(Weights {
                format,
                tensors: sd.tensors,
                source_key: sd.source_key,
                skipped: sd.skipped,
            })
        }
    }
}

/// A rename rule `from=to` (see the [module documentation](self) for how it matches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rename {
    /// What to match: a whole name or leading components, or a raw prefix if it ends in `.`.
    pub from: String,
    /// What replaces it.
    pub to: String,
}

impl Rename {
    /// A rule renaming `from` to `to`.
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Rename {
        Rename {
            from: from.into(),
            to: to.into(),
        }
    }

    /// The renamed `name`, or `None` if the rule does not match it.
    pub fn apply(&self, name: &str) -> Option<String> {
        if self.from.is_empty() {
            return None;
        }
        if self.from.ends_with('.') {
            return name
                .strip_prefix(self.from.as_str())
                .map(|rest| format!("{}{rest}", self.to));
        }
        if name == self.from {
            return Some(self.to.clone());
        }
        let rest = name.strip_prefix(self.from.as_str())?.strip_prefix('.')?;
        Some(if self.to.is_empty() {
            rest.to_string()
        } else {
            format!("{}.{rest}", self.to)
        })
    }
}

impl FromStr for Rename {
    type Err = Error;
    /// Parses `old=new` (surrounding spaces ignored; `old` must not be empty).
    fn from_str(s: &str) -> Result<Rename> {
        match s.split_once('=') {
            Some((from, to)) if !from.trim().is_empty() => Ok(Rename::new(from.trim(), to.trim())),
            _ => Err(Error::config(
                "map",
                format!("`{s}` is not a rename rule `old=new` (e.g. `linear=fc`)"),
            )),
        }
    }
}

impl fmt::Display for Rename {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.from, self.to)
    }
}

/// How the names of a foreign state dict are mapped onto a model's (see the
/// [module documentation](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRules {
    /// Prefixes stripped from the start of every name, repeatedly. Default: `module.`,
    /// `model.`.
    pub strip_prefixes: Vec<String>,
    /// Rename rules, applied in order after stripping. Default: none.
    pub renames: Vec<Rename>,
    /// Whether `normalize.mean`/`normalize.std` (and the `norm`, `normalizer`,
    /// `normalization` variants) become the model's normalization; when off, such pairs are
    /// skipped. Default: on.
    pub read_normalization: bool,
    /// Whether the [`builtin_layouts`] are tried when names still differ. Default: on.
    pub builtin_layouts: bool,
}

impl Default for MapRules {
    fn default() -> Self {
        MapRules {
            strip_prefixes: vec!["module.".into(), "model.".into()],
            renames: Vec::new(),
            read_normalization: true,
            builtin_layouts: true,
        }
    }
}

impl MapRules {
    /// Only the user's renames: no prefix stripping, normalization or layouts.
    pub fn none() -> MapRules {
        MapRules {
            strip_prefixes: Vec::new(),
            renames: Vec::new(),
            read_normalization: false,
            builtin_layouts: false,
        }
    }

    /// These rules plus `old=new` rename rules parsed from `specs` (as given to `--map`).
    pub fn with_renames<S: AsRef<str>>(mut self, specs: &[S]) -> Result<MapRules> {
        for s in specs {
            self.renames.push(s.as_ref().parse()?);
        }
        Ok(self)
    }
}

/// A built-in set of name rules for a layout common in other code bases.
#[derive(Clone, Copy)]
pub struct Layout {
    /// Short name, reported in [`LoadReport::layout`].
    pub name: &'static str,
    /// What the layout is and what it renames.
    pub description: &'static str,
    /// The architectures it applies to.
    pub archs: &'static [Arch],
    map: fn(&str) -> String,
}

impl fmt::Debug for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layout").field("name", &self.name).finish()
    }
}

impl Layout {
    /// The name `name` takes in this layout's mapping.
    pub fn apply(&self, name: &str) -> String {
        (self.map)(name)
    }
}

/// The "pytorch-cifar" CIFAR ResNet layout: `linear` head, `shortcut` projections.
fn pytorch_cifar(name: &str) -> String {
    let name = match name.strip_prefix("linear.") {
        Some(rest) => format!("fc.{rest}"),
        None => name.to_string(),
    };
    name.replace(".shortcut.", ".downsample.")
}

const LAYOUTS: [Layout; 1] = [Layout {
    name: "pytorch-cifar",
    description: "CIFAR ResNets written with a `linear` head and `shortcut` projection blocks \
                  (`linear.*` -> `fc.*`, `*.shortcut.*` -> `*.downsample.*`)",
    archs: &[Arch::Resnet18, Arch::Resnet20],
    map: pytorch_cifar,
}];

/// The built-in layouts, tried in this order.
///
/// The ResNet-18/ResNet-20 of the Unlearn-Saliency code base (`normalize`, `conv1`, `bn1`,
/// `layerN.M.{conv,bn}{1,2}`, `downsample.{0,1}`, `fc`) need none: their names are ours but for
/// the `normalize` buffers, which rule 3 reads.
pub fn builtin_layouts() -> &'static [Layout] {
    &LAYOUTS
}

/// Prefixes of the normalization buffer pairs `P.mean`/`P.std`.
pub const NORMALIZATION_PREFIXES: [&str; 4] = ["normalize", "normalizer", "norm", "normalization"];

/// A normalization read from a weights file.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    /// The file's name of the mean buffer (before any rule).
    pub mean_key: String,
    /// The file's name of the std buffer (before any rule).
    pub std_key: String,
    /// Per-channel mean.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation.
    pub std: Vec<f64>,
}

/// What [`Model::load_foreign`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReport {
    /// The file read.
    pub path: PathBuf,
    /// Its format.
    pub format: WeightsFormat,
    /// For a checkpoint dict, the key the state dict was taken from.
    pub source_key: Option<String>,
    /// Each prefix that was stripped, with how many names it was stripped from.
    pub stripped: Vec<(String, usize)>,
    /// Each rename rule that fired (as `old=new`), with how many names it renamed.
    pub renamed: Vec<(String, usize)>,
    /// The built-in layout used, if any.
    pub layout: Option<String>,
    /// The normalization taken from the file, if any.
    pub normalization: Option<Normalization>,
    /// File entries not loaded: `num_batches_tracked` counters the model lacks (or of another
    /// type), normalization buffers when not read, non-tensor `_metadata`.
    pub skipped: Vec<String>,
    /// How many model variables received a value.
    pub loaded: usize,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loaded {} tensor(s) from {} ({}",
            self.loaded,
            self.path.display(),
            self.format
        )?;
        if let Some(k) = &self.source_key {
            write!(f, ", state dict under `{k}`")?;
        }
        f.write_str(")")?;
        for (p, n) in &self.stripped {
            write!(f, "; stripped `{p}` from {n} name(s)")?;
        }
        for (r, n) in &self.renamed {
            write!(f, "; renamed `{r}` ({n} name(s))")?;
        }
        if let Some(l) = &self.layout {
            write!(f, "; layout {l}")?;
        }
        if let Some(n) = &self.normalization {
            write!(
                f,
                "; normalization from `{}`/`{}`: mean {:?}, std {:?}",
                n.mean_key, n.std_key, n.mean, n.std
            )?;
        }
        if !self.skipped.is_empty() {
            write!(f, "; skipped {}: ", self.skipped.len())?;
            let shown: Vec<String> = self
                .skipped
                .iter()
                .take(4)
                .map(|s| format!("`{s}`"))
                .collect();
            f.write_str(&shown.join(", "))?;
            if self.skipped.len() > 4 {
                write!(f, " (+{} more)", self.skipped.len() - 4)?;
            }
        }
        Ok(())
    }
}

/// A spec inferred from a weights file by [`infer_spec`].
#[derive(Clone, Debug, PartialEq)]
pub struct InferredSpec {
    /// The spec (validated).
    pub spec: ModelSpec,
    /// Where each value came from, and which were guessed.
    pub notes: Vec<String>,
}

/// Names after the rules, before matching against a model.
struct Mapped {
    /// (mapped name, file name, tensor), in file order.
    tensors: Vec<(String, String, Tensor)>,
    stripped: Vec<(String, usize)>,
    renamed: Vec<(String, usize)>,
    /// (mean file name, std file name, mean, std).
    norm: Option<(String, String, Tensor, Tensor)>,
    skipped: Vec<String>,
}

fn bump(counts: &mut Vec<(String, usize)>, key: &str) {
    match counts.iter_mut().find(|(k, _)| k == key) {
        Some((_, n)) => *n += 1,
        None => counts.push((key.to_string(), 1)),
    }
}

/// Applies rules 1-3 (prefixes, renames, normalization) to the file's names.
fn apply_rules(path: &Path, weights: &Weights, rules: &MapRules) -> Result<Mapped> {
    let mut stripped = Vec::new();
    let mut renamed = Vec::new();
    let mut tensors = Vec::with_capacity(weights.tensors.len());
    for (orig, t) in &weights.tensors {
        let mut name = orig.as_str();
        let mut fired: Vec<&str> = Vec::new();
        'strip: loop {
            for p in &rules.strip_prefixes {
                if !p.is_empty() && name.len() > p.len() && name.starts_with(p.as_str()) {
                    name = &name[p.len()..];
                    if !fired.contains(&p.as_str()) {
                        fired.push(p);
                        bump(&mut stripped, p);
                    }
                    continue 'strip;
                }
            }
            break;
        }
        let mut name = name.to_string();
        for r in &rules.renames {
            if let Some(new) = r.apply(&name) {
                name = new;
                bump(&mut renamed, &r.to_string());
            }
        }
        tensors.push((name, orig.clone(), t.shallow_clone()));
    }

    let mut skipped = weights.skipped.clone();
    let pairs: Vec<&str> = NORMALIZATION_PREFIXES
        .iter()
        .copied()
        .filter(|p| {
            let has = |s: &str| tensors.iter().any(|(n, _, _)| *n == format!("{p}.{s}"));
            has("mean") && has("std")
        })
        .collect();
    let mut norm = None;
    match pairs.as_slice() {
        [] => {}
        [p] => {
            let mut take = |s: &str| {
                let i = tensors
                    .iter()
                    .position(|(n, _, _)| *n == format!("{p}.{s}"))
                    .expect("present");
                tensors.remove(i)
            };
            let (_, mean_key, mean) = take("mean");
            let (_, std_key, std) = take("std");
            if rules.read_normalization {
                norm = Some((mean_key, std_key, mean, std));
            } else {
                skipped.push(mean_key);
                skipped.push(std_key);
            }
        }
        several => {
            return Err(Error::checkpoint(
                path,
                format!(
                    "several normalization buffer pairs ({}); rename or drop all but one",
                    several
                        .iter()
                        .map(|p| format!("`{p}.mean`/`{p}.std`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    }

    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (name, orig, _) in &tensors {
        if let Some(first) = seen.insert(name, orig) {
            return Err(Error::checkpoint(
                path,
                format!("file entries `{first}` and `{orig}` both map to `{name}`"),
            ));
        }
    }
    Ok(Mapped {
        tensors,
        stripped,
        renamed,
        norm,
        skipped,
    })
}

/// Per-channel values of a normalization buffer: floating point, `channels` entries, laid out
/// as `[C]`, `[C, 1, 1]` or `[1, C, 1, 1]` (every other dimension 1).
fn channel_values(path: &Path, name: &str, t: &Tensor, channels: i64) -> Result<Vec<f64>> {
    if !matches!(
        t.kind(),
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        return Err(Error::checkpoint(
            path,
            format!(
                "normalization buffer `{name}` is {:?}, not floating point",
                t.kind()
            ),
        ));
    }
    let size = t.size();
    let non_one: Vec<i64> = size.iter().copied().filter(|&d| d != 1).collect();
    let numel: i64 = size.iter().product();
    if numel != channels || non_one.len() > 1 {
        return Err(Error::checkpoint(
            path,
            format!(
                "normalization buffer `{name}` has shape {size:?}, but the model has {channels} \
                 input channel(s) (expected [{channels}])"
            ),
        ));
    }
    let flat = t
        .f_to_kind(Kind::Double)?
        .f_to_device(Device::Cpu)?
        .f_reshape([numel])?
        .f_contiguous()?;
    Ok(Vec::<f64>::try_from(&flat)?)
}

fn normalization_of(
    path: &Path,
    norm: &(String, String, Tensor, Tensor),
    channels: i64,
) -> Result<Normalization> {
    let (mean_key, std_key, mean, std) = norm;
    Ok(Normalization {
        mean_key: mean_key.clone(),
        std_key: std_key.clone(),
        mean: channel_values(path, mean_key, mean, channels)?,
        std: channel_values(path, std_key, std, channels)?,
    })
}

/// The model's variables with their roles, as handles sharing the model's storage.
fn model_vars(model: &Model) -> Vec<Var> {
    let params: HashSet<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    model
        .state_dict()
        .into_iter()
        .map(|(name, tensor)| {
            let role = if params.contains(&name) {
                Role::Param
            } else if name.ends_with(COUNTER_SUFFIX) && tensor.kind() == Kind::Int64 {
                Role::Counter
            } else {
                Role::Buffer
            };
            Var { name, tensor, role }
        })
        .collect()
}

/// Missing (required model variables absent from `names`) and unexpected (names the model
/// lacks, counters aside), both sorted.
fn mismatch(vars: &[Var], names: &HashSet<String>) -> (Vec<String>, Vec<String>) {
    let mut missing: Vec<String> = vars
        .iter()
        .filter(|v| v.role != Role::Counter && !names.contains(&v.name))
        .map(|v| v.name.clone())
        .collect();
    let known: HashSet<&str> = vars.iter().map(|v| v.name.as_str()).collect();
    let mut unexpected: Vec<String> = names
        .iter()
        .filter(|n| !known.contains(n.as_str()) && !n.ends_with(COUNTER_SUFFIX))
        .cloned()
        .collect();
    missing.sort();
    unexpected.sort();
    (missing, unexpected)
}

/// Levenshtein distance over bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The rename rule turning `file_name` into `model_name`: both minus their longest common run
/// of trailing components.
fn suggest_rule(file_name: &str, model_name: &str) -> Option<String> {
    let f: Vec<&str> = file_name.split('.').collect();
    let m: Vec<&str> = model_name.split('.').collect();
    let common = f
        .iter()
        .rev()
        .zip(m.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    if common == 0 || common == f.len() {
        return None;
    }
    let from = f[..f.len() - common].join(".");
    let to = m[..m.len() - common].join(".");
    Some(if to.is_empty() {
        format!("{from}.=")
    } else {
        format!("{from}={to}")
    })
}

/// Rows shown in a mismatch error.
const ROWS: usize = 20;
/// Unexpected names considered when looking for the closest one.
const CANDIDATES: usize = 5000;

fn mismatch_error(
    path: &Path,
    arch: Arch,
    mapped: &Mapped,
    missing: &[String],
    unexpected: &[String],
) -> Error {
    let mut msg = format!("names do not match the {arch} model");
    let mut applied: Vec<String> = mapped
        .stripped
        .iter()
        .map(|(p, n)| format!("stripped `{p}` from {n}"))
        .collect();
    applied.extend(
        mapped
            .renamed
            .iter()
            .map(|(r, n)| format!("renamed `{r}` x{n}")),
    );
    if !applied.is_empty() {
        let _ = write!(msg, " (after rules: {})", applied.join(", "));
    }
    let _ = write!(
        msg,
        ": {} model variable(s) missing from the file, {} unexpected key(s) in the file",
        missing.len(),
        unexpected.len()
    );
    let candidates = &unexpected[..unexpected.len().min(CANDIDATES)];
    let rows: Vec<(&str, Option<&str>)> = missing
        .iter()
        .take(ROWS)
        .map(|m| {
            let closest = candidates
                .iter()
                .min_by_key(|u| (edit_distance(m, u), u.len()))
                .map(|s| s.as_str());
            (m.as_str(), closest)
        })
        .collect();
    if !rows.is_empty() {
        let width = rows
            .iter()
            .map(|(m, _)| m.len())
            .max()
            .unwrap_or(0)
            .clamp(24, 60);
        let _ = write!(
            msg,
            "\n    {:<width$}  closest unexpected name in the file",
            "missing from the file"
        );
        for (m, c) in &rows {
            let _ = write!(msg, "\n    {m:<width$}  {}", c.unwrap_or("-"));
        }
        if missing.len() > ROWS {
            let _ = write!(msg, "\n    (+{} more missing)", missing.len() - ROWS);
        }
    }
    let paired: HashSet<&str> = rows.iter().filter_map(|(_, c)| *c).collect();
    let others: Vec<String> = unexpected
        .iter()
        .filter(|u| !paired.contains(u.as_str()))
        .take(ROWS)
        .map(|u| format!("`{u}`"))
        .collect();
    if !others.is_empty() {
        let rest = unexpected.len() - paired.len() - others.len();
        let _ = write!(msg, "\n    other unexpected: {}", others.join(", "));
        if rest > 0 {
            let _ = write!(msg, " (+{rest} more)");
        }
    }
    let mut rules: Vec<String> = Vec::new();
    for (m, c) in &rows {
        if let Some(rule) = c.and_then(|c| suggest_rule(c, m)) {
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
    }
    if !rules.is_empty() {
        rules.truncate(3);
        let shown: Vec<String> = rules.iter().map(|r| format!("`{r}`")).collect();
        let _ = write!(
            msg,
            "\n    rename rules (old=new) may fix this, e.g. {}",
            shown.join(", ")
        );
    }
    Error::checkpoint(path, msg)
}

/// Finds the names under which `vars` are loaded: the mapped names, or (when they differ from
/// the model's and layouts are on) the first built-in layout for `arch` that matches exactly.
fn resolve_names(
    path: &Path,
    arch: Arch,
    vars: &[Var],
    mapped: &Mapped,
    rules: &MapRules,
) -> Result<(Vec<String>, Option<&'static str>)> {
    let plain: Vec<String> = mapped.tensors.iter().map(|(n, _, _)| n.clone()).collect();
    let set: HashSet<String> = plain.iter().cloned().collect();
    let (missing, unexpected) = mismatch(vars, &set);
    if missing.is_empty() && unexpected.is_empty() {
        return Ok((plain, None));
    }
    if rules.builtin_layouts {
        for layout in builtin_layouts().iter().filter(|l| l.archs.contains(&arch)) {
            let names: Vec<String> = plain.iter().map(|n| layout.apply(n)).collect();
            let set: HashSet<String> = names.iter().cloned().collect();
            if set.len() != names.len() {
                continue;
            }
            let (m, u) = mismatch(vars, &set);
            if m.is_empty() && u.is_empty() {
                return Ok((names, Some(layout.name)));
            }
        }
    }
    Err(mismatch_error(path, arch, mapped, &missing, &unexpected))
}

/// Loads `weights` (read from `path`) into `model` under `rules`.
fn load_weights(
    model: &mut Model,
    path: &Path,
    weights: &Weights,
    rules: &MapRules,
) -> Result<LoadReport> {
    let mapped = apply_rules(path, weights, rules)?;
    let vars = model_vars(model);
    let (names, layout) = resolve_names(path, model.arch(), &vars, &mapped, rules)?;
    let normalization = match &mapped.norm {
        Some(n) => {
            let n = normalization_of(path, n, model.spec.in_channels)?;
            let mut spec = model.spec.clone();
            spec.mean = n.mean.clone();
            spec.std = n.std.clone();
            spec.validate().map_err(|e| {
                Error::checkpoint(
                    path,
                    format!("normalization from `{}`/`{}`: {e}", n.mean_key, n.std_key),
                )
            })?;
            Some(n)
        }
        None => None,
    };

    let file: HashMap<String, Tensor> = names
        .iter()
        .zip(&mapped.tensors)
        .map(|(n, (_, _, t))| (n.clone(), t.shallow_clone()))
        .collect();
    io::load_map(&vars, path, &file)?;
    if let Some(n) = &normalization {
        model.set_normalization(&n.mean, &n.std)?;
    }

    let by_name: HashMap<&str, &Var> = vars.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut skipped = mapped.skipped.clone();
    let mut loaded = 0;
    for (name, (_, orig, t)) in names.iter().zip(&mapped.tensors) {
        match by_name.get(name.as_str()) {
            Some(v)
                if v.role != Role::Counter
                    || (t.kind() == Kind::Int64 && t.size() == v.tensor.size()) =>
            {
                loaded += 1
            }
            _ => skipped.push(orig.clone()),
        }
    }
    Ok(LoadReport {
        path: path.to_path_buf(),
        format: weights.format,
        source_key: weights.source_key.clone(),
        stripped: mapped.stripped,
        renamed: mapped.renamed,
        layout: layout.map(str::to_string),
        normalization,
        skipped,
        loaded,
    })
}

/// Where each zoo architecture keeps its first layer (weight `[out, C, ...]` or, for the MLP,
/// `[out, C*H*W]`) and its final linear layer (weight `[classes, features]`).
const STEM_AND_HEAD: [(Arch, &str, &str); 6] = [
    (Arch::Mlp, "fc1.weight", "fc3.weight"),
    (Arch::Lenet, "conv1.weight", "fc3.weight"),
    (Arch::Resnet18, "conv1.weight", "fc.weight"),
    (Arch::Resnet20, "conv1.weight", "fc.weight"),
    (Arch::PreactResnet18, "conv1.weight", "linear.weight"),
    (Arch::Vgg16Bn, "features.0.weight", "classifier.weight"),
];

fn stem_and_head(arch: Arch) -> Result<(&'static str, &'static str)> {
    STEM_AND_HEAD
        .iter()
        .find(|(a, _, _)| *a == arch)
        .map(|&(_, stem, head)| (stem, head))
        .ok_or_else(|| {
            Error::invalid(format!(
                "cannot infer a spec for `{arch}`: not an architecture of the zoo"
            ))
        })
}

fn isqrt(n: i64) -> Option<i64> {
    if n < 0 {
        return None;
    }
    let r = (n as f64).sqrt().round() as i64;
    (r * r == n).then_some(r)
}

fn infer_from(
    path: &Path,
    weights: &Weights,
    arch: Arch,
    rules: &MapRules,
) -> Result<InferredSpec> {
    let (stem, head) = stem_and_head(arch)?;
    let mapped = apply_rules(path, weights, rules)?;
    let mut tables: Vec<(Option<&'static str>, HashMap<String, &Tensor>)> = vec![(
        None,
        mapped
            .tensors
            .iter()
            .map(|(n, _, t)| (n.clone(), t))
            .collect(),
    )];
    if rules.builtin_layouts {
        for l in builtin_layouts().iter().filter(|l| l.archs.contains(&arch)) {
            tables.push((
                Some(l.name),
                mapped
                    .tensors
                    .iter()
                    .map(|(n, _, t)| (l.apply(n), t))
                    .collect(),
            ));
        }
    }
    let Some((layout, table)) = tables
        .iter()
        .find(|(_, t)| t.contains_key(stem) && t.contains_key(head))
    else {
        return Err(Error::checkpoint(
            path,
            format!(
                "cannot infer a {arch} spec: the file has no `{stem}` and `{head}` (after the name \
                 rules); add rename rules so its first layer and classifier get these names"
            ),
        ));
    };
    let (stem_t, head_t) = (table[stem], table[head]);
    let mut notes = Vec::new();
    if let Some(l) = layout {
        notes.push(format!("names follow the built-in layout {l}"));
    }
    let head_size = head_t.size();
    let [num_classes, _] = head_size[..] else {
        return Err(Error::checkpoint(
            path,
            format!("`{head}` has shape {head_size:?}, not [classes, features]"),
        ));
    };
    notes.push(format!(
        "num_classes = {num_classes} from `{head}` {head_size:?}"
    ));
    let stem_size = stem_t.size();
    let (in_channels, input_size) = if arch == Arch::Mlp {
        let [_, features] = stem_size[..] else {
            return Err(Error::checkpoint(
                path,
                format!("`{stem}` has shape {stem_size:?}, not [out, in]"),
            ));
        };
        let (c, side) = if let Some(s) = isqrt(features) {
            (1, s)
        } else if let Some(s) = (features % 3 == 0).then(|| isqrt(features / 3)).flatten() {
            (3, s)
        } else {
            return Err(Error::checkpoint(
                path,
                format!(
                    "cannot infer the input geometry of an MLP with {features} input features \
                     (not C x S x S with C = 1 or 3); give the spec explicitly"
                ),
            ));
        };
        notes.push(format!(
            "in_channels = {c} and input {side}x{side} guessed from `{stem}` {stem_size:?} \
             (square input)"
        ));
        (c, (side, side))
    } else {
        let [_, c, _, _] = stem_size[..] else {
            return Err(Error::checkpoint(
                path,
                format!("`{stem}` has shape {stem_size:?}, not a convolution weight"),
            ));
        };
        notes.push(format!("in_channels = {c} from `{stem}` {stem_size:?}"));
        let side =
            if arch == Arch::Lenet {
                // fc1 takes 16 x s x s features, s = (side / 2 - 4) / 2.
                let fc1 = table.get("fc1.weight").map(|t| t.size());
                match fc1.as_deref() {
                    Some(&[_, f]) if f % 16 == 0 && isqrt(f / 16).is_some() => {
                        let s = isqrt(f / 16).expect("checked");
                        let side = 4 * s + 8;
                        notes.push(format!(
                            "input {side}x{side} from `fc1.weight` ({f} features)"
                        ));
                        side
                    }
                    _ => {
                        return Err(Error::checkpoint(
                            path,
                            "cannot infer LeNet's input size: `fc1.weight` is missing or not \
                         [120, 16*s*s]",
                        ))
                    }
                }
            } else {
                let side = if c == 1 { 28 } else { 32 };
                notes.push(format!(
                "input {side}x{side} assumed (the weights do not fix it; {} for {c} channel(s))",
                if c == 1 { "Fashion-MNIST/MNIST size" } else { "CIFAR size" }
            ));
                side
            };
        (c, (side, side))
    };
    let (mean, std) = match &mapped.norm {
        Some(n) => {
            let n = normalization_of(path, n, in_channels)?;
            notes.push(format!(
                "normalization from `{}`/`{}`: mean {:?}, std {:?}",
                n.mean_key, n.std_key, n.mean, n.std
            ));
            (n.mean, n.std)
        }
        None => {
            let (m, s, what) = match in_channels {
                1 => (
                    FASHION_MNIST_MEAN.to_vec(),
                    FASHION_MNIST_STD.to_vec(),
                    "Fashion-MNIST",
                ),
                3 => (CIFAR10_MEAN.to_vec(), CIFAR10_STD.to_vec(), "CIFAR-10"),
                c => (vec![0.0; c as usize], vec![1.0; c as usize], "identity"),
            };
            notes.push(format!(
                "no normalization buffers in the file: {what} normalization assumed"
            ));
            (m, s)
        }
    };
    let spec = ModelSpec {
        activation: Default::default(),
        arch,
        in_channels,
        num_classes,
        input_size,
        mean,
        std,
    };
    spec.validate()
        .map_err(|e| Error::checkpoint(path, format!("inferred spec is invalid: {e}")))?;
    Ok(InferredSpec { spec, notes })
}

/// Infers the spec of a weights file for `arch`: input channels from the first layer's weight,
/// classes from the final linear layer's, normalization from the file's buffers (else the
/// Fashion-MNIST / CIFAR-10 values for 1 / 3 channels), input size from LeNet's `fc1` (else
/// 28x28 for one channel, 32x32 otherwise; an MLP's from its input width). Names are mapped
/// with `rules` first. [`InferredSpec::notes`] says what was read and what was assumed.
pub fn infer_spec(path: impl AsRef<Path>, arch: Arch, rules: &MapRules) -> Result<InferredSpec> {
    let path = path.as_ref();
    let weights = read_weights(path)?;
    infer_from(path, &weights, arch, rules)
}

impl Model {
    /// Loads a foreign weights file (safetensors or `torch.save`, told by its bytes) whose
    /// names may differ from ours, mapping them with `rules` (see [`crate::foreign`]). The
    /// checks of [`Model::load`] apply after mapping; a normalization found in the file
    /// replaces the model's (`spec.mean`/`spec.std`). Nothing changes on error.
    pub fn load_foreign(&mut self, path: impl AsRef<Path>, rules: &MapRules) -> Result<LoadReport> {
        let path = path.as_ref();
        let weights = read_weights(path)?;
        load_weights(self, path, &weights, rules)
    }

    /// Builds a model of `arch` for a bare weights file: the spec comes from [`infer_spec`],
    /// then the weights are loaded with [`Model::load_foreign`]'s rules.
    pub fn from_foreign(
        path: impl AsRef<Path>,
        arch: Arch,
        rules: &MapRules,
        device: Device,
    ) -> Result<(Model, InferredSpec, LoadReport)> {
        let path = path.as_ref();
        from_weights(path, &read_weights(path)?, arch, rules, device)
    }
}

/// A model of `arch` for `weights` (read from `path`, or named so): spec inferred, then loaded.
fn from_weights(
    path: &Path,
    weights: &Weights,
    arch: Arch,
    rules: &MapRules,
    device: Device,
) -> Result<(Model, InferredSpec, LoadReport)> {
    let inferred = infer_from(path, weights, arch, rules)?;
    let mut model = Model::new(inferred.spec.clone(), device)?;
    let report = load_weights(&mut model, path, weights, rules)?;
    Ok((model, inferred, report))
}

impl Model {
    /// [`Model::from_foreign`] for a state dict already in memory (named tensors, e.g. a
    /// PyTorch `state_dict()` handed over from Python); `name` stands for the file in errors.
    /// The tensors are copied into the model's own variables.
    pub fn from_state_dict(
        tensors: Vec<(String, Tensor)>,
        name: impl AsRef<Path>,
        arch: Arch,
        rules: &MapRules,
        device: Device,
    ) -> Result<(Model, InferredSpec, LoadReport)> {
        let weights = Weights {
            format: WeightsFormat::Safetensors,
            tensors,
            source_key: None,
            skipped: Vec::new(),
        };
        from_weights(name.as_ref(), &weights, arch, rules, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_match_whole_components() {
        let r: Rename = "linear=fc".parse().unwrap();
        assert_eq!(r.apply("linear.weight").as_deref(), Some("fc.weight"));
        assert_eq!(r.apply("linear").as_deref(), Some("fc"));
        assert_eq!(r.apply("linear2.weight"), None);
        assert_eq!(r.apply("x.linear.weight"), None);
        let raw: Rename = "backbone.=".parse().unwrap();
        assert_eq!(
            raw.apply("backbone.conv1.weight").as_deref(),
            Some("conv1.weight")
        );
        let deep: Rename = " layer1.0.shortcut = layer1.0.downsample ".parse().unwrap();
        assert_eq!(
            deep.apply("layer1.0.shortcut.1.bias").as_deref(),
            Some("layer1.0.downsample.1.bias")
        );
        assert!("=fc".parse::<Rename>().is_err());
        assert!("fc".parse::<Rename>().is_err());
    }

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            suggest_rule("linear.weight", "fc.weight").as_deref(),
            Some("linear=fc")
        );
        assert_eq!(
            suggest_rule("layer2.0.shortcut.0.weight", "layer2.0.downsample.0.weight").as_deref(),
            Some("layer2.0.shortcut=layer2.0.downsample")
        );
        assert_eq!(
            suggest_rule("backbone.conv1.weight", "conv1.weight").as_deref(),
            Some("backbone.=")
        );
        assert_eq!(suggest_rule("a.weight", "b.bias"), None);
    }

    #[test]
    fn pytorch_cifar_layout() {
        let l = &builtin_layouts()[0];
        assert_eq!(l.apply("linear.weight"), "fc.weight");
        assert_eq!(
            l.apply("layer2.0.shortcut.1.running_mean"),
            "layer2.0.downsample.1.running_mean"
        );
        assert_eq!(l.apply("layer2.0.conv1.weight"), "layer2.0.conv1.weight");
    }
}

//! Device selection: `auto | cpu | cuda | cuda:N`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A device request as the user writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// CUDA device 0 when available, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this index (`cuda` alone means `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                if let Some(n) = s.strip_prefix("cuda:") {
                    n.parse::<usize>()
                        .map(DeviceSpec::Cuda)
                        .map_err(|_| Error::config("device", format!("bad CUDA index in `{s}`")))
                } else {
                    Err(Error::config(
                        "device",
                        format!("`{s}` is not one of auto, cpu, cuda, cuda:N"),
                    ))
                }
            }
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Resolves the request to a concrete device, failing if CUDA is asked for but absent.
    pub fn resolve(self) -> Result<tch::Device> {
        match self {
            DeviceSpec::Auto => Ok(tch::Device::cuda_if_available()),
            DeviceSpec::Cpu => Ok(tch::Device::Cpu),
            DeviceSpec::Cuda(n) => {
                let count = tch::Cuda::device_count() as usize;
                if count == 0 {
                    Err(Error::Device(format!(
                        "cuda:{n} requested but no CUDA device is available (is libtorch_cuda linked and a driver present?)"
                    )))
                } else if n >= count {
                    Err(Error::Device(format!(
                        "cuda:{n} requested but only {count} CUDA device(s) exist"
                    )))
                } else {
                    Ok(tch::Device::Cuda(n))
                }
            }
        }
    }
}

/// Human-readable name of a resolved device.
pub fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".to_string(),
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_all_forms() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        let e = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(e.contains("device"), "{e}");
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
    }
    #[test]
    fn cpu_resolves() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), tch::Device::Cpu);
    }
}

/// The libtorch version this build was compiled against (from the torch wheel's `version.py`).
pub const BUILT_LIBTORCH: &str = env!("RUSTWORTHY_LIBTORCH_VERSION");

/// The version of the libtorch actually loaded by this process: the `version.py` beside the
/// loaded `libtorch_cpu.so` (a torch wheel's layout), or `None` when it cannot be told.
pub fn loaded_libtorch_version() -> Option<(String, std::path::PathBuf)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))?;
    let torch_dir = std::path::Path::new(lib).parent()?.parent()?.to_path_buf();
    let text = std::fs::read_to_string(torch_dir.join("version.py")).ok()?;
    let v = text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("__version__")?;
        Some(rest.split(['\'', '"']).nth(1)?.to_string())
    })?;
    Some((v, torch_dir))
}

/// Checks that the loaded libtorch is the release this build was compiled against (local
/// build tags such as `+cpu` or `+cu130` may differ). A mismatch (for example a venv whose
/// torch was upgraded by another package's install) is an error naming both versions and the
/// folder, instead of wrong results or a crash later.
pub fn check_libtorch() -> Result<()> {
    let release = |v: &str| v.split('+').next().unwrap_or(v).to_string();
    let Some((loaded, dir)) = loaded_libtorch_version() else {
        return Ok(());
    };
    if BUILT_LIBTORCH == "unknown" || release(&loaded) == release(BUILT_LIBTORCH) {
        return Ok(());
    }
    Err(Error::Device(format!(
        "this build of rustworthy was compiled against libtorch {BUILT_LIBTORCH} but loaded torch {loaded} from {}; reinstall it with `pip install -c constraints.txt torch` (constraints.txt pins torch==2.11.0) or rebuild",
        dir.display()
    )))
}

#[cfg(test)]
mod libtorch_tests {
    #[test]
    fn the_loaded_libtorch_is_the_one_built_against() {
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        let (v, dir) = super::loaded_libtorch_version().expect("libtorch_cpu.so is mapped");
        assert!(dir.join("version.py").is_file());
        assert_eq!(v.split('+').next(), super::BUILT_LIBTORCH.split('+').next());
        super::check_libtorch().unwrap();
    }
}

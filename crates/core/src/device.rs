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
    Cpu,
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

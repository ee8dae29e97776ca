//! Boundary checks for configuration values: each names the field it rejects.

use crate::error::{Error, Result};

/// Returns `v` if it is finite, else a config error on `field`.
pub fn finite(field: &str, v: f64) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::config(
            field,
            format!("must be a finite number, got {v}"),
        ))
    }
}

/// Returns `v` if it is finite and `> 0`, else a config error on `field`.
pub fn positive(field: &str, v: f64) -> Result<f64> {
    finite(field, v)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(Error::config(field, format!("must be > 0, got {v}")))
    }
}

/// Returns `v` if it is finite and `>= 0`, else a config error on `field`.
pub fn non_negative(field: &str, v: f64) -> Result<f64> {
    finite(field, v)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(Error::config(field, format!("must be >= 0, got {v}")))
    }
}

/// `lo <= v <= hi`.
pub fn in_range(field: &str, v: f64, lo: f64, hi: f64) -> Result<f64> {
    finite(field, v)?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(Error::config(
            field,
            format!("must be in [{lo}, {hi}], got {v}"),
        ))
    }
}

/// `lo <= v < hi`.
pub fn in_half_open(field: &str, v: f64, lo: f64, hi: f64) -> Result<f64> {
    finite(field, v)?;
    if v >= lo && v < hi {
        Ok(v)
    } else {
        Err(Error::config(
            field,
            format!("must be in [{lo}, {hi}), got {v}"),
        ))
    }
}

/// Returns `v` if it is at least 1, else a config error on `field`.
pub fn positive_int(field: &str, v: usize) -> Result<usize> {
    if v > 0 {
        Ok(v)
    } else {
        Err(Error::config(field, "must be >= 1, got 0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names_the_field() {
        let e = positive("optim.lr", f64::NAN).unwrap_err().to_string();
        assert!(e.contains("optim.lr") && e.contains("finite"), "{e}");
        let e = positive("optim.lr", -1.0).unwrap_err().to_string();
        assert!(e.contains("> 0"), "{e}");
        assert!(in_range("p", 1.0, 0.0, 1.0).is_ok());
        assert!(in_half_open("p", 1.0, 0.0, 1.0).is_err());
        assert!(positive_int("epochs", 0).is_err());
        assert!(non_negative("wd", 0.0).is_ok());
    }
}

//! Deterministic, class-stratified train/validation splits.

use rustworthy_core::{validate, Error, Result, SeedRng};

/// Splits `0..labels.len()` into (train, validation) index lists, holding out
/// `round(fraction * n_c)` examples of every class `c`, chosen with the stream
/// `SeedRng::stream(seed, "val-split", c)`. Both lists are sorted, disjoint and together cover
/// every index. `fraction` must lie in `[0, 1)` (the field is reported as `val_fraction`).
pub fn per_class_split(
    labels: &[i64],
    num_classes: usize,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    validate::in_half_open("val_fraction", fraction, 0.0, 1.0)?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        if l < 0 || l as usize >= num_classes {
            return Err(Error::invalid(format!(
                "label {l} at index {i} is out of range 0..{num_classes}"
            )));
        }
        by_class[l as usize].push(i);
    }
    let mut train = Vec::with_capacity(labels.len());
    let mut val = Vec::new();
    for (c, mut idx) in by_class.into_iter().enumerate() {
        let hold = (fraction * idx.len() as f64).round() as usize;
        SeedRng::stream(seed, "val-split", c as u64).shuffle(&mut idx);
        val.extend_from_slice(&idx[..hold]);
        train.extend_from_slice(&idx[hold..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok((train, val))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(n: usize, k: usize) -> Vec<i64> {
        (0..n).map(|i| ((i * 7 + i / 3) % k) as i64).collect()
    }

    #[test]
    fn deterministic_disjoint_and_complete() {
        let l = labels(1000, 10);
        let (t, v) = per_class_split(&l, 10, 0.1, 5).unwrap();
        assert_eq!(
            (t.clone(), v.clone()),
            per_class_split(&l, 10, 0.1, 5).unwrap()
        );
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        for c in 0..10 {
            let n_c = l.iter().filter(|&&x| x == c).count() as f64;
            let v_c = v.iter().filter(|&&i| l[i] == c).count() as f64;
            assert!((v_c - 0.1 * n_c).abs() <= 1.0, "class {c}: {v_c} of {n_c}");
        }
        let (_, v2) = per_class_split(&l, 10, 0.1, 6).unwrap();
        assert_ne!(v, v2, "a different seed gives a different split");
    }

    #[test]
    fn zero_fraction_and_bad_inputs() {
        let l = labels(50, 5);
        let (t, v) = per_class_split(&l, 5, 0.0, 1).unwrap();
        assert_eq!(t.len(), 50);
        assert!(v.is_empty());
        for bad in [1.0, -0.1, f64::NAN, 1.5] {
            let e = per_class_split(&l, 5, bad, 1).unwrap_err().to_string();
            assert!(e.contains("val_fraction"), "{e}");
        }
        let e = per_class_split(&[0, 5], 5, 0.1, 1).unwrap_err().to_string();
        assert!(e.contains("label 5 at index 1"), "{e}");
        assert!(per_class_split(&[-1], 5, 0.1, 1).is_err());
    }

    proptest! {
        #[test]
        fn partition_holds(n in 0usize..300, k in 1usize..8, f in 0.0f64..0.99, seed in any::<u64>()) {
            let l = labels(n, k);
            let (t, v) = per_class_split(&l, k, f, seed).unwrap();
            prop_assert_eq!(t.len() + v.len(), n);
            let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
            all.sort_unstable();
            all.dedup();
            prop_assert_eq!(all.len(), n);
            for c in 0..k {
                let n_c = l.iter().filter(|&&x| x == c as i64).count();
                let v_c = v.iter().filter(|&&i| l[i] == c as i64).count();
                prop_assert_eq!(v_c, (f * n_c as f64).round() as usize);
            }
        }
    }
}

//! The text and statistics metrics against the Python libraries TOFU and MUSE use
//! (scripts/ref/textmetrics_ref.py): nltk's Porter stemmer, rouge_score's tokenizer and scores,
//! scipy's `ks_2samp`, `kstwo.sf`, `special.smirnov` and `hmean`, and sklearn's
//! `roc_auc_score`, on seeded cases; and the error cases.

use rustworthy_llm::textmetrics::{
    hmean, ks_2samp, kstwo_sf, porter_stem, roc_auc, rouge1, rouge_l, rouge_n, rouge_tokenize,
    smirnov_sf, RougeScore,
};
use rustworthy_testkit::{python_or_skip, python_required, workspace_root};
use serde_json::Value;
use std::process::Command;
use std::sync::OnceLock;

/// The reference fixture, generated once per test binary; `None` when Python (or the packages
/// scripts/setup.sh installs) is missing and not required.
fn reference() -> Option<&'static Value> {
    static REF: OnceLock<Option<Value>> = OnceLock::new();
    REF.get_or_init(|| {
        let py = python_or_skip("textmetrics")?;
        let out = tempfile::tempdir().unwrap();
        let o = Command::new(py)
            .arg(workspace_root().join("scripts/ref/textmetrics_ref.py"))
            .arg(out.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() && stderr.contains("ModuleNotFoundError") && !python_required() {
            eprintln!(
                "textmetrics: skipped, reference packages missing (run scripts/setup.sh)\n{stderr}"
            );
            return None;
        }
        assert!(o.status.success(), "{stderr}");
        let text = std::fs::read(out.path().join("textmetrics.json")).unwrap();
        let v: Value = serde_json::from_slice(&text).unwrap();
        eprintln!("textmetrics reference: {}", v["versions"]);
        Some(v)
    })
    .as_ref()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(f).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Relative difference, with both zero counting as equal.
fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs())
    }
}

#[test]
fn porter_stems_match_nltk() {
    let Some(r) = reference() else { return };
    let cases = r["stems"].as_array().unwrap();
    assert!(cases.len() >= 1500);
    let mut bad = Vec::new();
    for c in cases {
        let w = c["word"].as_str().unwrap();
        let want = c["stem"].as_str().unwrap();
        let got = porter_stem(w);
        if got != want {
            bad.push(format!("{w:?}: {got:?} != nltk {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    eprintln!("porter: {} words, all equal", cases.len());
}

#[test]
fn rouge_matches_rouge_score() {
    let Some(r) = reference() else { return };
    let cases = r["rouge"].as_array().unwrap();
    assert!(cases.len() >= 600);
    let mut worst = 0.0f64;
    for (i, c) in cases.iter().enumerate() {
        let (reference, prediction) = (
            c["reference"].as_str().unwrap(),
            c["prediction"].as_str().unwrap(),
        );
        let stem = c["stem"].as_bool().unwrap();
        assert_eq!(
            rouge_tokenize(reference, stem),
            strings(&c["ref_tokens"]),
            "case {i}: tokens of {reference:?} (stem {stem})"
        );
        assert_eq!(
            rouge_tokenize(prediction, stem),
            strings(&c["pred_tokens"]),
            "case {i}: tokens of {prediction:?} (stem {stem})"
        );
        let scores: [(&str, RougeScore); 3] = [
            ("rouge1", rouge1(reference, prediction, stem)),
            ("rouge2", rouge_n(reference, prediction, 2, stem).unwrap()),
            ("rougeL", rouge_l(reference, prediction, stem)),
        ];
        for (name, got) in scores {
            let want = floats(&c[name]);
            for (g, w) in [got.precision, got.recall, got.fmeasure].iter().zip(&want) {
                let d = (g - w).abs();
                worst = worst.max(d);
                assert!(d <= 1e-6, "case {i} {name}: {got:?} vs {want:?}");
            }
        }
    }
    eprintln!("rouge: {} comparisons, max |diff| {worst:e}", cases.len());
}

#[test]
fn ks_2samp_matches_scipy() {
    let Some(r) = reference() else { return };
    let cases = r["ks"].as_array().unwrap();
    assert!(cases.len() >= 190);
    let (mut worst_stat, mut worst_abs, mut worst_rel) = (0.0f64, 0.0f64, 0.0f64);
    let mut smallest = 1.0f64;
    for c in cases {
        let tag = c["tag"].as_str().unwrap();
        let (a, b) = (floats(&c["a"]), floats(&c["b"]));
        let got = ks_2samp(&a, &b).unwrap();
        let (stat, p) = (f(&c["statistic"]), f(&c["pvalue"]));
        let ds = (got.statistic - stat).abs();
        let dp = (got.pvalue - p).abs();
        let rp = rel(got.pvalue, p);
        worst_stat = worst_stat.max(ds);
        worst_abs = worst_abs.max(dp);
        worst_rel = worst_rel.max(rp);
        smallest = smallest.min(p);
        let ctx = format!(
            "{tag} ({}, {}): {got:?} vs scipy ({stat}, {p:e})",
            a.len(),
            b.len()
        );
        assert!(ds <= 1e-12, "statistic: {ctx}");
        assert!(dp <= 1e-6, "p-value: {ctx}");
        assert!(rp <= 1e-9, "relative p-value: {ctx}");
    }
    eprintln!(
        "ks_2samp: {} cases, max |stat diff| {worst_stat:e}, max |p diff| {worst_abs:e}, \
         max relative p diff {worst_rel:e} (smallest p {smallest:e})",
        cases.len()
    );
}

#[test]
fn kstwo_and_smirnov_match_scipy() {
    let Some(r) = reference() else { return };
    for (key, field, fun) in [
        ("kstwo", "sf", kstwo_sf as fn(u64, f64) -> f64),
        ("smirnov", "sf", smirnov_sf as fn(u64, f64) -> f64),
    ] {
        let cases = r[key].as_array().unwrap();
        let (mut worst_abs, mut worst_rel) = (0.0f64, 0.0f64);
        for c in cases {
            let n = c["n"].as_u64().unwrap();
            let d = f(&c["d"]);
            let want = f(&c[field]);
            let got = fun(n, d);
            let (da, dr) = ((got - want).abs(), rel(got, want));
            worst_abs = worst_abs.max(da);
            let ctx = format!("{key}(n={n}, d={d:e}): {got:e} vs scipy {want:e}");
            assert!(da <= 1e-6, "{ctx}");
            // Relative agreement down to the smallest normal double (subnormals carry few digits).
            if got.abs().max(want.abs()) >= f64::MIN_POSITIVE {
                worst_rel = worst_rel.max(dr);
                assert!(dr <= 1e-6, "{ctx}");
            }
        }
        eprintln!(
            "{key}: {} points, max |diff| {worst_abs:e}, max relative diff {worst_rel:e}",
            cases.len()
        );
    }
}

#[test]
fn hmean_and_roc_auc_match_scipy_and_sklearn() {
    let Some(r) = reference() else { return };
    let mut worst = 0.0f64;
    for c in r["hmean"].as_array().unwrap() {
        let (got, want) = (hmean(&floats(&c["x"])).unwrap(), f(&c["hmean"]));
        worst = worst.max((got - want).abs());
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
    eprintln!("hmean: max |diff| {worst:e}");
    let mut worst = 0.0f64;
    for c in r["roc_auc"].as_array().unwrap() {
        let labels: Vec<bool> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        let got = roc_auc(&floats(&c["scores"]), &labels).unwrap();
        let want = f(&c["auc"]);
        worst = worst.max((got - want).abs());
        assert!((got - want).abs() <= 1e-9, "{got} vs {want}");
    }
    eprintln!("roc_auc: max |diff| {worst:e}");
}

#[test]
fn bad_inputs_are_errors() {
    assert!(ks_2samp(&[], &[1.0]).is_err());
    assert!(ks_2samp(&[1.0], &[]).is_err());
    assert!(ks_2samp(&[1.0, f64::NAN], &[1.0]).is_err());
    assert!(ks_2samp(&[1.0], &[f64::NAN]).is_err());
    assert!(hmean(&[]).is_err());
    assert!(hmean(&[1.0, f64::NAN]).is_err());
    assert!(hmean(&[1.0, -2.0]).is_err());
    assert!(roc_auc(&[0.1, 0.2], &[true, true]).is_err());
    assert!(roc_auc(&[0.1, 0.2], &[false, false]).is_err());
    assert!(roc_auc(&[0.1, 0.2], &[true]).is_err());
    assert!(roc_auc(&[0.1, f64::NAN], &[true, false]).is_err());
    assert!(roc_auc(&[0.1, f64::INFINITY], &[true, false]).is_err());
    assert!(roc_auc(&[], &[]).is_err());
    assert!(rouge_n("a b", "a b", 0, false).is_err());
    assert!(kstwo_sf(0, 0.5).is_nan());
    assert!(kstwo_sf(10, f64::NAN).is_nan());
    assert!(smirnov_sf(0, 0.5).is_nan());
    assert!(smirnov_sf(10, 1.5).is_nan());
}

#[test]
fn edge_values() {
    // scipy: a zero makes the harmonic mean 0; +inf values add nothing to the sum of reciprocals.
    assert_eq!(hmean(&[1.0, 0.0, 3.0]).unwrap(), 0.0);
    assert_eq!(hmean(&[2.0, f64::INFINITY]).unwrap(), 4.0);
    assert_eq!(hmean(&[f64::INFINITY]).unwrap(), f64::INFINITY);
    assert_eq!(hmean(&[2.0, 2.0]).unwrap(), 2.0);
    // Ties: a positive tied with a negative counts one half.
    assert_eq!(roc_auc(&[0.5, 0.5], &[true, false]).unwrap(), 0.5);
    assert_eq!(
        roc_auc(&[0.1, 0.9, 0.5], &[false, true, true]).unwrap(),
        1.0
    );
    // Infinite samples are allowed in the KS test.
    let r = ks_2samp(&[f64::NEG_INFINITY, 0.0], &[1.0, f64::INFINITY]).unwrap();
    assert_eq!(r.statistic, 1.0);
    // Empty token lists score 0, as rouge_score does.
    assert_eq!(rouge_l("...", "a b", true), RougeScore::default());
    assert_eq!(rouge1("", "", false), RougeScore::default());
    assert_eq!(kstwo_sf(5, 0.0), 1.0);
    assert_eq!(kstwo_sf(5, 1.0), 0.0);
    assert_eq!(smirnov_sf(5, 0.0), 1.0);
    assert_eq!(smirnov_sf(5, 1.0), 0.0);
}

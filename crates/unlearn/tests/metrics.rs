//! The unlearning metrics and their SVM: the RBF C-SVC against scikit-learn's `SVC` on the
//! committed fixtures (tests/fixtures/unlearn, written by scripts/ref/mia_fixture.py), and
//! hand-checkable cases of every metric.

use std::path::PathBuf;
use std::time::Instant;

use rustworthy_core::SeedRng;
use rustworthy_unlearn::metrics::{
    accuracy_pct, avg_gap, mia_efficacy, roc_auc, true_label_confidence, try_true_label_confidence,
    UnlearnMetrics,
};
use rustworthy_unlearn::svm::{Gamma, Svc, SvcConfig};
use serde_json::Value;
use tch::Tensor;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/unlearn")
}

struct Case {
    name: String,
    d: usize,
    cfg: SvcConfig,
    gamma_resolved: f64,
    n_support: [usize; 2],
    intercept: f64,
    n_iter: usize,
    x: Vec<f64>,
    y: Vec<bool>,
    q: Vec<f64>,
    decision: Vec<f64>,
    predict: Vec<bool>,
}

fn f32s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
        .collect()
}

fn load_cases() -> Vec<Case> {
    let dir = fixture_dir();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for c in manifest["cases"].as_array().unwrap() {
        let d = c["n_features"].as_u64().unwrap() as usize;
        let n = c["n_train"].as_u64().unwrap() as usize;
        let m = c["n_query"].as_u64().unwrap() as usize;
        let bytes = std::fs::read(dir.join(c["file"].as_str().unwrap())).unwrap();
        assert_eq!(bytes.len(), 4 * n * d + n + 4 * m * d + 8 * m + m);
        let (xb, rest) = bytes.split_at(4 * n * d);
        let (yb, rest) = rest.split_at(n);
        let (qb, rest) = rest.split_at(4 * m * d);
        let (db, pb) = rest.split_at(8 * m);
        let gamma = match &c["gamma"] {
            Value::String(s) if s == "auto" => Gamma::Auto,
            Value::String(s) if s == "scale" => Gamma::Scale,
            v => Gamma::Value(v.as_f64().unwrap()),
        };
        let ns = c["n_support"].as_array().unwrap();
        out.push(Case {
            name: c["name"].as_str().unwrap().to_string(),
            d,
            cfg: SvcConfig {
                c: c["c"].as_f64().unwrap(),
                gamma,
                ..SvcConfig::default()
            },
            gamma_resolved: c["gamma_resolved"].as_f64().unwrap(),
            n_support: [
                ns[0].as_u64().unwrap() as usize,
                ns[1].as_u64().unwrap() as usize,
            ],
            intercept: c["intercept"].as_f64().unwrap(),
            n_iter: c["n_iter"].as_u64().unwrap() as usize,
            x: f32s(xb),
            y: yb.iter().map(|&b| b == 1).collect(),
            q: f32s(qb),
            decision: db
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            predict: pb.iter().map(|&b| b == 1).collect(),
        });
    }
    out
}

/// CPU seconds of the calling thread so far (Linux; None elsewhere): unlike wall-clock time it
/// does not grow when other processes load the machine.
fn thread_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9)
}

/// Largest KKT violation of a fitted model, measured from the outside through its decision
/// function: with `h_t = decision(x_t) - intercept` and `l_t = +1` (class 1) or `-1`,
/// `max_{I_up} (h_t - l_t) - min_{I_low} (h_t - l_t)`, where I_up holds class-0 samples with
/// alpha < C and class-1 samples with alpha > 0, I_low the reverse. libsvm stops below `tol`.
fn kkt_violation(svc: &Svc, x: &[f64], y: &[bool], c: f64) -> f64 {
    let mut alpha = vec![0.0; y.len()];
    for (&i, &a) in svc.support().iter().zip(svc.dual_coef()) {
        alpha[i] = a.abs();
    }
    let dec = svc.decision_function(x).unwrap();
    let (mut m_up, mut m_low) = (f64::NEG_INFINITY, f64::INFINITY);
    for t in 0..y.len() {
        let l = if y[t] { 1.0 } else { -1.0 };
        let v = dec[t] - svc.intercept() - l;
        let (up, low) = if y[t] {
            (alpha[t] > 0.0, alpha[t] < c)
        } else {
            (alpha[t] < c, alpha[t] > 0.0)
        };
        if up {
            m_up = m_up.max(v);
        }
        if low {
            m_low = m_low.min(v);
        }
    }
    m_up - m_low
}

#[test]
fn svc_matches_sklearn_on_fixtures() {
    let manifest = std::fs::read_to_string(fixture_dir().join("manifest.json")).unwrap();
    let version = serde_json::from_str::<Value>(&manifest).unwrap()["sklearn_version"].clone();
    eprintln!("fixtures from scikit-learn {version}");
    let cases = load_cases();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "auto_200",
            "auto_2000",
            "auto_10000",
            "overlap_2000",
            "scale_2d_500",
            "c1_gamma10_300"
        ]
    );
    for c in &cases {
        let (t0, c0) = (Instant::now(), thread_cpu_s());
        let svc = Svc::fit(&c.x, c.d, &c.y, &c.cfg).unwrap();
        let fit_s = t0.elapsed().as_secs_f64();
        let fit_cpu = c0
            .and_then(|v| Some(thread_cpu_s()? - v))
            .unwrap_or(f64::NAN);
        let dec = svc.decision_function(&c.q).unwrap();
        let pred = svc.predict(&c.q).unwrap();
        let agree = pred.iter().zip(&c.predict).filter(|(a, b)| a == b).count();
        let agreement = 100.0 * agree as f64 / pred.len() as f64;
        let max_diff = dec
            .iter()
            .zip(&c.decision)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let kkt = kkt_violation(&svc, &c.x, &c.y, c.cfg.c);
        eprintln!(
            "{}: n {} fit {fit_s:.3}s wall {fit_cpu:.3}s CPU, iters {} (sklearn {}) n_support {:?} (sklearn {:?}) intercept {:.9} \
             (sklearn {:.9}) agreement {agree}/{} = {agreement:.2}% max |decision diff| \
             {max_diff:.3e} KKT violation {kkt:.2e}",
            c.name,
            c.y.len(),
            svc.n_iter(),
            c.n_iter,
            svc.n_support(),
            c.n_support,
            svc.intercept(),
            c.intercept,
            pred.len()
        );
        assert!(svc.converged(), "{}", c.name);
        // numpy sums the variance pairwise: equal up to rounding.
        assert!(
            (svc.gamma() - c.gamma_resolved).abs() <= 1e-12 * c.gamma_resolved,
            "{}: gamma {} vs {}",
            c.name,
            svc.gamma(),
            c.gamma_resolved
        );
        assert!(agreement >= 99.0, "{}: agreement {agreement}%", c.name);
        // Same algorithm and stopping rule: the solutions agree far inside the tolerance.
        assert!(
            max_diff <= 1e-3,
            "{}: decision values differ by {max_diff}",
            c.name
        );
        assert!((svc.intercept() - c.intercept).abs() <= 1e-3, "{}", c.name);
        let n = c.y.len() as f64;
        for k in 0..2 {
            let d = svc.n_support()[k].abs_diff(c.n_support[k]) as f64;
            assert!(d <= 0.01 * n, "{}: n_support {:?}", c.name, svc.n_support());
        }
        assert!(kkt < c.cfg.tol + 1e-4, "{}: KKT violation {kkt}", c.name);
        // scikit-learn shrinks by default, which may change the path by a few iterations.
        assert!(
            svc.n_iter().abs_diff(c.n_iter) <= c.n_iter / 50 + 10,
            "{}: {} iterations vs {}",
            c.name,
            svc.n_iter(),
            c.n_iter
        );
    }
}

/// Confidence-like values in (0, 1] (f64 softmax: no exact ties at 1): members close to 1,
/// non-members more spread with a misclassified-like tail.
fn member_like(rng: &mut SeedRng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            if rng.unit() < 0.04 {
                rng.unit()
            } else {
                (0.005 * (1.0 - rng.unit()).ln()).exp()
            }
        })
        .collect()
}

fn non_member_like(rng: &mut SeedRng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            if rng.unit() < 0.17 {
                rng.unit()
            } else {
                (0.08 * (1.0 - rng.unit()).ln()).exp()
            }
        })
        .collect()
}

#[test]
fn svc_fits_20k_one_dimensional_points() {
    let mut rng = SeedRng::new(7);
    let n = 10_000;
    let mut x = member_like(&mut rng, n);
    x.extend(non_member_like(&mut rng, n));
    let y: Vec<bool> = (0..2 * n).map(|i| i < n).collect();
    let cfg = SvcConfig::default();
    let (t0, c0) = (Instant::now(), thread_cpu_s());
    let svc = Svc::fit(&x, 1, &y, &cfg).unwrap();
    let fit_s = t0.elapsed().as_secs_f64();
    let fit_cpu = c0
        .and_then(|c| Some(thread_cpu_s()? - c))
        .unwrap_or(f64::NAN);
    let mut q = member_like(&mut rng, 15_000);
    q.extend(non_member_like(&mut rng, 15_000));
    let t1 = Instant::now();
    let pred = svc.predict(&q).unwrap();
    let pred_s = t1.elapsed().as_secs_f64();
    let kkt = kkt_violation(&svc, &x, &y, cfg.c);
    let members_hit = pred[..15_000].iter().filter(|&&p| p).count();
    let non_members_hit = pred[15_000..].iter().filter(|&&p| !p).count();
    eprintln!(
        "20k points: fit {fit_s:.3}s wall, {fit_cpu:.3}s CPU ({} iterations, n_support {:?}), predict 30k {pred_s:.3}s, \
         KKT violation {kkt:.2e}, fresh members called members {members_hit}/15000, \
         fresh non-members called non-members {non_members_hit}/15000",
        svc.n_iter(),
        svc.n_support()
    );
    assert!(svc.converged());
    assert!(kkt < cfg.tol + 1e-4, "KKT violation {kkt}");
    // The attack works on this data: both classes mostly recognised.
    assert!(members_hit > 9_000 && non_members_hit > 7_500);
}

#[test]
fn svc_two_points_has_the_closed_form_solution() {
    // x = 0 (class 0) and x = 1 (class 1), K(0, 1) = k = e^-gamma. The dual optimum is
    // alpha = 2 / (2 - 2k) = 1 / (1 - k) for both when that is <= C (then the decision is -1 and
    // +1 on the points), else alpha = C with decision +-C (1 - k); the intercept is 0 by symmetry.
    let x = [0.0, 1.0];
    let y = [false, true];
    let k = (-1.0f64).exp();
    let svc = Svc::fit(&x, 1, &y, &SvcConfig::default()).unwrap();
    let a = 1.0 / (1.0 - k);
    assert_eq!(svc.n_support(), [1, 1]);
    assert_eq!(svc.support(), [0, 1]);
    assert!(
        (svc.dual_coef()[0] + a).abs() < 1e-6,
        "{:?}",
        svc.dual_coef()
    );
    assert!(
        (svc.dual_coef()[1] - a).abs() < 1e-6,
        "{:?}",
        svc.dual_coef()
    );
    assert!(svc.intercept().abs() < 1e-9);
    let d = svc.decision_function(&[0.0, 1.0, 0.5]).unwrap();
    assert!(
        (d[0] + 1.0).abs() < 1e-6 && (d[1] - 1.0).abs() < 1e-6,
        "{d:?}"
    );
    assert!(d[2].abs() < 1e-9, "{d:?}");

    let cfg = SvcConfig {
        c: 1.0,
        ..SvcConfig::default()
    };
    let svc = Svc::fit(&x, 1, &y, &cfg).unwrap();
    assert_eq!(svc.dual_coef(), [-1.0, 1.0]);
    let d = svc.decision_function(&[0.0, 1.0]).unwrap();
    assert!(
        (d[1] - (1.0 - k)).abs() < 1e-6 && (d[0] + (1.0 - k)).abs() < 1e-6,
        "{d:?}"
    );
}

#[test]
fn svc_separates_separable_data() {
    let x: Vec<f64> = (0..20)
        .map(|i| 0.02 * f64::from(i))
        .chain((0..20).map(|i| 0.6 + 0.02 * f64::from(i)))
        .collect();
    let y: Vec<bool> = (0..40).map(|i| i >= 20).collect();
    let svc = Svc::fit(&x, 1, &y, &SvcConfig::default()).unwrap();
    assert!(svc.converged());
    assert_eq!(svc.predict(&x).unwrap(), y);
    assert_eq!(
        svc.predict(&[-5.0, 0.1, 0.45, 0.55, 0.9, 5.0]).unwrap(),
        [false, false, false, true, true, true]
    );
    // Swapping the labels negates the decision function.
    let flipped: Vec<bool> = y.iter().map(|b| !b).collect();
    let svf = Svc::fit(&x, 1, &flipped, &SvcConfig::default()).unwrap();
    let q = [0.0, 0.3, 0.5, 0.7, 1.0];
    let (d, df) = (
        svc.decision_function(&q).unwrap(),
        svf.decision_function(&q).unwrap(),
    );
    for (a, b) in d.iter().zip(&df) {
        assert!((a + b).abs() < 1e-2, "{d:?} vs {df:?}");
    }
    // Row-wise input gives the same model.
    let rows: Vec<Vec<f64>> = x.iter().map(|&v| vec![v]).collect();
    let svr = Svc::fit_rows(&rows, &y, &SvcConfig::default()).unwrap();
    assert_eq!(svr.dual_coef(), svc.dual_coef());
    assert_eq!(svr.intercept(), svc.intercept());
}

#[test]
fn svc_rejects_bad_input() {
    let cfg = SvcConfig::default();
    let err = |r: rustworthy_core::Result<Svc>| r.unwrap_err().to_string();
    let e = err(Svc::fit(&[], 1, &[], &cfg));
    assert!(e.contains("no training samples"), "{e}");
    let e = err(Svc::fit_rows(&[], &[], &cfg));
    assert!(e.contains("no training samples"), "{e}");
    let e = err(Svc::fit(&[0.1, 0.2], 1, &[true, true], &cfg));
    assert!(
        e.contains("both classes") && e.contains("only class 1"),
        "{e}"
    );
    let e = err(Svc::fit(&[0.1, 0.2], 1, &[false, false], &cfg));
    assert!(e.contains("only class 0"), "{e}");
    let e = err(Svc::fit(&[0.1, f64::NAN], 1, &[true, false], &cfg));
    assert!(e.contains("row 1") && e.contains("NaN"), "{e}");
    let e = err(Svc::fit(&[0.1, f64::INFINITY], 1, &[true, false], &cfg));
    assert!(e.contains("finite"), "{e}");
    let e = err(Svc::fit(&[0.1, 0.2, 0.3], 1, &[true, false], &cfg));
    assert!(e.contains("3 values") && e.contains("need 2"), "{e}");
    let e = err(Svc::fit(&[0.1, 0.2], 0, &[true, false], &cfg));
    assert!(e.contains("n_features"), "{e}");
    let e = err(Svc::fit_rows(
        &[vec![0.1], vec![0.2, 0.3]],
        &[true, false],
        &cfg,
    ));
    assert!(e.contains("row 1 has 2 features"), "{e}");
    let e = err(Svc::fit_rows(&[vec![0.1], vec![0.2]], &[true], &cfg));
    assert!(e.contains("2 rows but 1 labels"), "{e}");

    let bad = [
        (SvcConfig { c: 0.0, ..cfg }, "svc.c"),
        (SvcConfig { c: -1.0, ..cfg }, "svc.c"),
        (SvcConfig { c: f64::NAN, ..cfg }, "svc.c"),
        (
            SvcConfig {
                gamma: Gamma::Value(0.0),
                ..cfg
            },
            "svc.gamma",
        ),
        (
            SvcConfig {
                gamma: Gamma::Value(-2.0),
                ..cfg
            },
            "svc.gamma",
        ),
        (
            SvcConfig {
                gamma: Gamma::Value(f64::NAN),
                ..cfg
            },
            "svc.gamma",
        ),
        (SvcConfig { tol: 0.0, ..cfg }, "svc.tol"),
        (SvcConfig { max_iter: 0, ..cfg }, "svc.max_iter"),
        (SvcConfig { cache_mb: 0, ..cfg }, "svc.cache_mb"),
    ];
    for (c, field) in bad {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
        let e = err(Svc::fit(&[0.0, 1.0], 1, &[false, true], &c));
        assert!(e.contains(field), "{e}");
    }
    assert!(cfg.validate().is_ok());
    assert_eq!((cfg.c, cfg.gamma, cfg.tol), (3.0, Gamma::Auto, 1e-3));

    let svc = Svc::fit(&[0.0, 0.0, 1.0, 1.0], 2, &[false, true], &cfg).unwrap();
    assert_eq!(svc.gamma(), 0.5);
    let e = svc
        .decision_function(&[0.0, 1.0, 2.0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("rows of 2"), "{e}");
    let e = svc.predict(&[0.0, f64::NAN]).unwrap_err().to_string();
    assert!(e.contains("finite"), "{e}");
    assert!(svc.predict(&[]).unwrap().is_empty());
}

#[test]
fn svc_handles_identical_points_of_both_classes() {
    // Fully overlapping classes (e.g. every confidence saturated at 1.0): all alphas end at C,
    // the decision is constant and the larger class wins.
    let x = [1.0; 7];
    let y = [true, true, true, true, false, false, false];
    let svc = Svc::fit(&x, 1, &y, &SvcConfig::default()).unwrap();
    assert!(svc.converged());
    assert_eq!(svc.predict(&[1.0, 0.5]).unwrap(), [true, true]);
    let x = [1.0, 1.0, 0.2, 0.9, 0.9];
    let y = [true, false, false, true, false];
    let svc = Svc::fit(&x, 1, &y, &SvcConfig::default()).unwrap();
    assert!(svc.converged());
    assert!(kkt_violation(&svc, &x, &y, 3.0) < 1e-3 + 1e-4);
}

#[test]
fn svc_stops_at_max_iter_and_says_so() {
    let mut rng = SeedRng::new(3);
    let mut x = member_like(&mut rng, 300);
    x.extend(non_member_like(&mut rng, 300));
    let y: Vec<bool> = (0..600).map(|i| i < 300).collect();
    let cfg = SvcConfig {
        max_iter: 5,
        ..SvcConfig::default()
    };
    let svc = Svc::fit(&x, 1, &y, &cfg).unwrap();
    assert_eq!(svc.n_iter(), 5);
    assert!(!svc.converged());
    let svc = Svc::fit(&x, 1, &y, &SvcConfig::default()).unwrap();
    assert!(svc.converged() && svc.n_iter() > 5);
}

#[test]
fn svc_serde_config() {
    let cfg: SvcConfig = serde_json::from_str(r#"{"c": 1.5, "gamma": {"value": 0.5}}"#).unwrap();
    assert_eq!(cfg.c, 1.5);
    assert_eq!(cfg.gamma, Gamma::Value(0.5));
    assert_eq!(cfg.tol, 1e-3);
    let cfg: SvcConfig = serde_json::from_str(r#"{"gamma": "scale"}"#).unwrap();
    assert_eq!(cfg.gamma, Gamma::Scale);
    let back: SvcConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    assert!(serde_json::from_str::<SvcConfig>(r#"{"C": 1}"#).is_err());
}

#[test]
fn accuracy_in_percent() {
    assert_eq!(accuracy_pct(3, 4).unwrap(), 75.0);
    assert_eq!(accuracy_pct(0, 7).unwrap(), 0.0);
    assert_eq!(accuracy_pct(7, 7).unwrap(), 100.0);
    assert!(accuracy_pct(0, 0)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    assert!(accuracy_pct(5, 4).is_err());
}

#[test]
fn roc_auc_hand_computed() {
    assert_eq!(roc_auc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
    assert_eq!(roc_auc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
    // 1 < 2: 0; 2 = 2: 1/2; 3 > 2: 1.
    assert_eq!(roc_auc(&[1.0, 2.0, 3.0], &[2.0]), 0.5);
    // Pairs: (.9,.8) 1, (.9,.1) 1, (.8,.8) 1/2 twice, (.8,.1) 1 twice -> 5 / 6.
    assert_eq!(roc_auc(&[0.9, 0.8, 0.8], &[0.8, 0.1]), 5.0 / 6.0);
    // All tied: 1/2.
    assert_eq!(roc_auc(&[1.0; 5], &[1.0; 3]), 0.5);
    assert!(roc_auc(&[], &[1.0]).is_nan());
    assert!(roc_auc(&[1.0], &[]).is_nan());
    assert!(roc_auc(&[f64::NAN], &[1.0]).is_nan());

    // Against the O(n m) definition on coarse values (many ties).
    let mut rng = SeedRng::new(11);
    let pos: Vec<f64> = (0..137).map(|_| (rng.unit() * 20.0).floor()).collect();
    let neg: Vec<f64> = (0..91).map(|_| (rng.unit() * 17.0).floor()).collect();
    let mut s = 0.0;
    for p in &pos {
        for q in &neg {
            s += if p > q {
                1.0
            } else if p == q {
                0.5
            } else {
                0.0
            };
        }
    }
    let brute = s / (pos.len() * neg.len()) as f64;
    assert!((roc_auc(&pos, &neg) - brute).abs() < 1e-15);
    assert!((roc_auc(&neg, &pos) - (1.0 - brute)).abs() < 1e-12);
}

fn metrics(ua: f64, ra: f64, ta: f64, mia: f64) -> UnlearnMetrics {
    UnlearnMetrics {
        ua,
        ra,
        ta,
        mia_efficacy: mia,
        mia_auc_members_vs_test: 60.0,
        mia_auc_forget_vs_test: 55.0,
        rte_s: 162.0,
    }
}

#[test]
fn avg_gap_hand_computed() {
    // The reported CIFAR-10 random-10% numbers: SalUn vs Retrain.
    let retrain = metrics(5.24, 100.0, 94.26, 12.88);
    let salun = metrics(2.85, 99.62, 93.93, 14.39);
    // (2.39 + 0.38 + 0.33 + 1.51) / 4 = 1.1525
    assert!((avg_gap(&salun, &retrain) - 1.1525).abs() < 1e-12);
    assert_eq!(avg_gap(&retrain, &salun), avg_gap(&salun, &retrain));
    assert_eq!(avg_gap(&retrain, &retrain), 0.0);
    // The AUCs and RTE do not enter.
    let mut other = retrain.clone();
    other.mia_auc_forget_vs_test = 99.0;
    other.rte_s = 1.0;
    assert_eq!(avg_gap(&other, &retrain), 0.0);
    assert_eq!(
        avg_gap(&metrics(1.0, 2.0, 3.0, 4.0), &metrics(0.0, 0.0, 0.0, 0.0)),
        2.5
    );
    assert_eq!(salun.rte_min(), 2.7);

    let json = serde_json::to_string(&salun).unwrap();
    assert!(json.contains("\"mia_efficacy\":14.39") && json.contains("\"rte_s\":162.0"));
    let back: UnlearnMetrics = serde_json::from_str(&json).unwrap();
    assert_eq!(back, salun);
}

#[test]
fn mia_efficacy_separates_members_from_fresh_data() {
    let mut rng = SeedRng::new(5);
    let retain = member_like(&mut rng, 3000);
    let test = non_member_like(&mut rng, 1000);
    let cfg = SvcConfig::default();

    // Forgetting nothing: the forget set is the members themselves.
    let r = mia_efficacy(&retain, &test, &retain[..1000], &cfg).unwrap();
    eprintln!("forget = members: {r:?}");
    assert_eq!(r.n_train, 1000);
    assert!(r.efficacy < 15.0, "{r:?}");
    assert!(r.auc_members_vs_test > 70.0, "{r:?}");
    // Identical to the members: the forget-vs-test AUC is the members-vs-test one.
    assert_eq!(r.auc_forget_vs_test, r.auc_members_vs_test);

    // Perfect forgetting: the forget set looks like unseen data.
    let fresh = non_member_like(&mut rng, 800);
    let r2 = mia_efficacy(&retain, &test, &fresh, &cfg).unwrap();
    eprintln!("forget = fresh non-members: {r2:?}");
    assert!(r2.efficacy > 60.0, "{r2:?}");
    assert!((r2.auc_forget_vs_test - 50.0).abs() < 5.0, "{r2:?}");
    assert_eq!(r2.auc_members_vs_test, r.auc_members_vs_test);

    // Efficacy is the share predicted non-member by the SVM fitted on the documented set.
    let x: Vec<f64> = retain[..1000].iter().chain(&test).copied().collect();
    let y: Vec<bool> = (0..2000).map(|i| i < 1000).collect();
    let svc = Svc::fit(&x, 1, &y, &cfg).unwrap();
    let pred = svc.predict(&fresh).unwrap();
    let share = 100.0 * pred.iter().filter(|&&m| !m).count() as f64 / 800.0;
    assert_eq!(r2.efficacy, share);
    assert_eq!(r2.n_support, svc.n_support());

    // Fewer retain than test samples: all retain and as many test samples.
    let r3 = mia_efficacy(&retain[..400], &test, &fresh, &cfg).unwrap();
    assert_eq!(r3.n_train, 400);
    assert_eq!(
        r3.auc_members_vs_test,
        100.0 * roc_auc(&retain[..400], &test[..400])
    );
    assert_eq!(r3.auc_forget_vs_test, 100.0 * roc_auc(&fresh, &test));
}

#[test]
fn mia_efficacy_rejects_empty_and_bad_sets() {
    let cfg = SvcConfig::default();
    let a = [0.9, 0.99, 0.5];
    let b = [0.2, 0.7, 0.95];
    for (r, t, f, what) in [
        (&a[..], &b[..], &[][..], "forget set is empty"),
        (&a[..], &[][..], &a[..], "test set is empty"),
        (&[][..], &b[..], &a[..], "retain set is empty"),
        (
            &a[..],
            &b[..],
            &[0.5, f64::NAN][..],
            "forget confidence 1 is NaN",
        ),
    ] {
        let e = mia_efficacy(r, t, f, &cfg).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }
    let e = mia_efficacy(&a, &b, &a, &SvcConfig { c: 0.0, ..cfg })
        .unwrap_err()
        .to_string();
    assert!(e.contains("svc.c"), "{e}");
    // Retain and test identical: no separable class structure, but a valid answer.
    let r = mia_efficacy(&a, &a, &b, &cfg).unwrap();
    assert_eq!(r.auc_members_vs_test, 50.0);
    assert!((0.0..=100.0).contains(&r.efficacy));
}

#[test]
fn true_label_confidence_of_known_logits() {
    let logits =
        Tensor::from_slice(&[0.0f32, 0.0, 3f32.ln(), 0.0, 30.0, 0.0, 1.0, 2.0]).reshape([4, 2]);
    let labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
    let p = true_label_confidence(&logits, &labels);
    let e = 1.0 / (1.0 + 1.0f64.exp());
    let want = [
        0.5,
        0.75,
        (-30.0f64).exp() / (1.0 + (-30.0f64).exp()),
        1.0 - e,
    ];
    for (a, b) in p.iter().zip(want) {
        assert!((a - b).abs() <= 1e-7 * b, "{p:?} vs {want:?}");
    }
    // A confident row does not saturate in f64 (a float32 softmax gives exactly 1.0 here), and
    // the tiny probability of the other class keeps its relative precision.
    let big = Tensor::from_slice(&[30.0f32, 0.0]).reshape([1, 2]);
    let p0 = true_label_confidence(&big, &Tensor::from_slice(&[0i64]));
    let p1 = true_label_confidence(&big, &Tensor::from_slice(&[1i64]));
    assert!(p0[0] < 1.0, "{p0:?}");
    let tiny = (-30.0f64).exp() / (1.0 + (-30.0f64).exp());
    assert!((p1[0] - tiny).abs() <= 1e-12 * tiny, "{p1:?}");
    // Int32 labels are accepted; empty input gives an empty list.
    let p = true_label_confidence(&logits, &Tensor::from_slice(&[0i32, 0, 1, 1]));
    assert_eq!(p.len(), 4);
    let empty = Tensor::zeros([0, 3], (tch::Kind::Float, tch::Device::Cpu));
    let none = Tensor::zeros([0], (tch::Kind::Int64, tch::Device::Cpu));
    assert!(true_label_confidence(&empty, &none).is_empty());

    let e = try_true_label_confidence(&logits, &Tensor::from_slice(&[0i64, 1]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels [4]"), "{e}");
    let e = try_true_label_confidence(&logits.reshape([8]), &labels)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[N, K]"), "{e}");
    let e = try_true_label_confidence(&logits, &Tensor::from_slice(&[0i64, 2, 0, 0]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("0..2"), "{e}");
}

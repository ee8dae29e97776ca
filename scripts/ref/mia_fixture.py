"""Exports scikit-learn SVC reference fixtures for the rustworthy-unlearn SVM tests.

The MIA-Efficacy metric trains an RBF-kernel C-SVC on per-sample confidences (members =
retain samples, label 1; non-members = test samples, label 0). This script generates
confidence-like data in [0, 1] (members skewed towards 1, some exactly 1.0 as a saturated
float32 softmax gives; non-members more spread), fits sklearn.svm.SVC on it, and records
sklearn's decision values and predictions on query points, so the Rust solver can be checked
against it without Python.

Features are stored as float32 (the dtype of real softmax confidences); sklearn fits on their
exact float64 values, and so do the tests.

Output (default tests/fixtures/unlearn):
  manifest.json   sklearn version and, per case: name, n_features, n_train, n_query, C, gamma
                  as given ("auto" / "scale" / a number), gamma as resolved by sklearn,
                  n_support [class 0, class 1], intercept, solver iterations, file name
                  (no timings, so a rerun rewrites identical files)
  {case}.bin      little-endian, concatenated in this order:
                    x_train   f32[n_train * n_features]  row-major
                    y_train   u8[n_train]                0 = non-member, 1 = member
                    x_query   f32[n_query * n_features]  row-major
                    decision  f64[n_query]               SVC.decision_function(x_query)
                    predict   u8[n_query]                SVC.predict(x_query)

Usage:
  python scripts/ref/mia_fixture.py [--out DIR]
"""

import argparse
import json
import os
import time

import numpy as np
import sklearn
from sklearn.svm import SVC

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "unlearn")


def member_conf(rng, n):
    """Training-set confidences of a well-fit model: mostly within 1e-2 of 1, a fifth
    saturated at exactly 1.0, a few hard samples anywhere."""
    conf = np.exp(-rng.exponential(0.005, n))
    conf[rng.random(n) < 0.2] = 1.0
    hard = rng.random(n) < 0.04
    conf[hard] = rng.beta(2.0, 2.0, hard.sum())
    return conf


def nonmember_conf(rng, n):
    """Unseen-data confidences: mostly high but spread, a sixth misclassified-like."""
    conf = np.exp(-rng.exponential(0.08, n))
    conf[rng.random(n) < 0.05] = 1.0
    wrong = rng.random(n) < 0.17
    conf[wrong] = rng.uniform(0.0, 1.0, wrong.sum())
    return conf


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def one_d_case(rng, n_per_class, same_distribution=False):
    if same_distribution:
        mem = nonmember_conf(rng, n_per_class)
    else:
        mem = member_conf(rng, n_per_class)
    non = nonmember_conf(rng, n_per_class)
    # Members first, then non-members, like the MIA's training set.
    x = f32(np.concatenate([mem, non]))[:, None]
    y = np.concatenate([np.ones(n_per_class), np.zeros(n_per_class)]).astype(np.uint8)
    grid = np.linspace(0.0, 1.0, 201)
    near_one = 1.0 - np.geomspace(1e-7, 0.3, 200)
    forget_like = np.concatenate([member_conf(rng, 300), nonmember_conf(rng, 300)])
    q = f32(np.concatenate([grid, near_one, forget_like, x[:100, 0]]))[:, None]
    return x, y, q


def two_d_case(rng, n_per_class):
    """(confidence, a second score in [0, 1] correlated with it), gamma='scale'."""
    mem_c = member_conf(rng, n_per_class)
    non_c = nonmember_conf(rng, n_per_class)
    mem_s = np.clip(mem_c ** 3 + rng.normal(0.0, 0.05, n_per_class), 0.0, 1.0)
    non_s = np.clip(non_c ** 3 + rng.normal(0.0, 0.15, n_per_class), 0.0, 1.0)
    x = f32(
        np.concatenate(
            [np.stack([mem_c, mem_s], axis=1), np.stack([non_c, non_s], axis=1)]
        )
    )
    y = np.concatenate([np.ones(n_per_class), np.zeros(n_per_class)]).astype(np.uint8)
    g = np.linspace(0.0, 1.0, 21)
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2)
    q = f32(np.concatenate([grid, x[::7]]))
    return x, y, q


CASES = [
    # name, generator, C, gamma
    ("auto_200", lambda r: one_d_case(r, 200), 3.0, "auto"),
    ("auto_2000", lambda r: one_d_case(r, 2000), 3.0, "auto"),
    ("auto_10000", lambda r: one_d_case(r, 10000), 3.0, "auto"),
    ("overlap_2000", lambda r: one_d_case(r, 2000, same_distribution=True), 3.0, "auto"),
    ("scale_2d_500", lambda r: two_d_case(r, 500), 3.0, "scale"),
    ("c1_gamma10_300", lambda r: one_d_case(r, 300), 1.0, 10.0),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=20240917)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    manifest = {"sklearn_version": sklearn.__version__, "seed": args.seed, "cases": []}
    for k, (name, gen, c, gamma) in enumerate(CASES):
        rng = np.random.default_rng([args.seed, k])
        x, y, q = gen(rng)
        clf = SVC(C=c, gamma=gamma, kernel="rbf")
        t0 = time.perf_counter()
        clf.fit(x.astype(np.float64), y)
        fit_s = time.perf_counter() - t0
        dec = clf.decision_function(q.astype(np.float64)).astype("<f8")
        pred = clf.predict(q.astype(np.float64)).astype(np.uint8)
        fname = f"{name}.bin"
        with open(os.path.join(args.out, fname), "wb") as f:
            f.write(x.astype("<f4").tobytes())
            f.write(y.tobytes())
            f.write(q.astype("<f4").tobytes())
            f.write(dec.tobytes())
            f.write(pred.tobytes())
        manifest["cases"].append(
            {
                "name": name,
                "file": fname,
                "n_features": int(x.shape[1]),
                "n_train": int(x.shape[0]),
                "n_query": int(q.shape[0]),
                "c": c,
                "gamma": gamma,
                "gamma_resolved": float(clf._gamma),
                "n_support": [int(v) for v in clf.n_support_],
                "intercept": float(clf.intercept_[0]),
                "n_iter": int(clf.n_iter_[0]),
            }
        )
        print(
            f"{name}: n={x.shape[0]} d={x.shape[1]} q={q.shape[0]} "
            f"n_support={clf.n_support_.tolist()} fit {fit_s:.3f}s"
        )
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()

//! FF, IU, BE and BS on a small synthetic task: each moves the forget-set accuracy the way it
//! should and leaves the retain set usable; IU's WoodFisher product equals a dense solve; FF's
//! noise follows the inverse Fisher; configs reject bad values and unknown keys.

use rustworthy_core::progress::ProgressMode;
use rustworthy_data::Dataset;
use rustworthy_models::{Arch, Model, ModelSpec};
use rustworthy_testkit::{copy_of, sgd_recipe, synthetic_split, tiny_spec, torch_lock};
use rustworthy_testkit::{trained_model, CLASSES};
use rustworthy_train::{evaluate, TrainConfig};
use rustworthy_unlearn::methods::be::BeConfig;
use rustworthy_unlearn::methods::bs::{nearest_wrong_labels, BsConfig};
use rustworthy_unlearn::methods::common::{flat_grad, head_param_names, RunConfig};
use rustworthy_unlearn::methods::ff::{fisher_diagonal, noise_plan, FfConfig};
use rustworthy_unlearn::methods::iu::{woodfisher_ihvp, IuConfig};
use rustworthy_unlearn::{ForgetSpec, MethodReport, Scenario, UnlearnCtx, UnlearnData, Unlearner};
use tch::{Device, Kind, Tensor};

/// A trained model and its data: the first 160 synthetic samples are the training file.
struct Task {
    model: Model,
    train: Dataset,
    test: Dataset,
    cfg: TrainConfig,
}

/// Tests run in parallel threads: one libtorch thread each avoids oversubscribing the cores.
fn single_threaded() {
    tch::set_num_threads(1);
}

fn task(arch: Arch) -> Task {
    single_threaded();
    let (train, test) = synthetic_split(60, 12, 0.35, 5, 160);
    let cfg = sgd_recipe(12, 16, 0.05, 7);
    let model = trained_model(tiny_spec(arch, 12), 1, &train, &cfg);
    Task {
        model,
        train,
        test,
        cfg,
    }
}

fn unlearn_data(t: &Task, spec: ForgetSpec) -> UnlearnData {
    let labels = t.train.labels_vec();
    let train_idx: Vec<usize> = (0..t.train.len()).collect();
    let scenario = Scenario::resolve(&spec, &train_idx, &labels, CLASSES, 3).unwrap();
    let test_labels = t.test.labels_vec();
    let keep: Vec<usize> = (0..t.test.len())
        .filter(|&i| !scenario.forget_classes.contains(&(test_labels[i] as usize)))
        .collect();
    UnlearnData {
        forget: t.train.subset(&scenario.forget).unwrap(),
        retain: t.train.subset(&scenario.retain).unwrap(),
        test: t.test.subset(&keep).unwrap(),
        scenario,
    }
}

fn class_wise() -> ForgetSpec {
    ForgetSpec::Class { classes: vec![1] }
}

fn random() -> ForgetSpec {
    ForgetSpec::Random { fraction: 0.2 }
}

fn acc(m: &Model, ds: &Dataset) -> f64 {
    evaluate(m, ds, 256).unwrap().accuracy
}

fn ctx<'a>(t: &'a Task, data: &'a UnlearnData, seed: u64) -> UnlearnCtx<'a> {
    UnlearnCtx {
        data,
        seed,
        progress: ProgressMode::Quiet,
        original: &t.cfg,
        masks: None,
        dist: None,
    }
}

/// Forget / retain / test accuracy.
struct Accs {
    forget: f64,
    retain: f64,
    test: f64,
}

fn accs(m: &Model, data: &UnlearnData) -> Accs {
    Accs {
        forget: acc(m, &data.forget),
        retain: acc(m, &data.retain),
        test: acc(m, &data.test),
    }
}

/// Runs `method` on a copy of the trained model: accuracies before and after, the report and
/// the unlearned model.
fn run(t: &Task, data: &UnlearnData, method: &dyn Unlearner) -> (Accs, Accs, MethodReport, Model) {
    let before = accs(&t.model, data);
    let mut m = copy_of(&t.model);
    let report = method.unlearn(&mut m, &ctx(t, data, 11)).unwrap();
    let after = accs(&m, data);
    eprintln!(
        "{}: forget {:.1} -> {:.1}, retain {:.1} -> {:.1}, test {:.1} -> {:.1}",
        method.name(),
        before.forget,
        after.forget,
        before.retain,
        after.retain,
        before.test,
        after.test
    );
    (before, after, report, m)
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn params_of(m: &Model) -> Vec<(String, Vec<f64>)> {
    m.parameters()
        .into_iter()
        .map(|(n, t)| (n, values(&t)))
        .collect()
}

/// Spearman rank correlation (average ranks for ties).
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].partial_cmp(&v[j]).unwrap());
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn err_of<T>(r: rustworthy_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// FF

#[test]
fn ff_forgets_a_class_and_keeps_the_rest() {
    let _torch = torch_lock();
    let t = task(Arch::Mlp);
    let data = unlearn_data(&t, class_wise());
    let method = FfConfig::default().build().unwrap();
    let (before, after, report, m) = run(&t, &data, &method);
    assert_eq!(before.forget, 100.0);
    assert!(after.forget <= 75.0, "forget accuracy {}", after.forget);
    assert!(after.retain >= 95.0, "retain accuracy {}", after.retain);
    assert!(after.test >= 90.0, "test accuracy {}", after.test);
    assert_eq!(report.extra["zeroed_classes"], serde_json::json!([1]));
    // The forgotten class's classifier row is resampled around zero.
    let head: Vec<f64> = values(&m.parameters()[4].1.get(1));
    let mean = head.iter().sum::<f64>() / head.len() as f64;
    let rms = (head.iter().map(|x| x * x).sum::<f64>() / head.len() as f64).sqrt();
    assert!(mean.abs() < 0.02 && rms < 0.1, "row mean {mean}, rms {rms}");

    // Random forgetting: the noise is small enough to keep the model.
    let data = unlearn_data(&t, random());
    let (before, after, _, _) = run(&t, &data, &method);
    assert!(after.forget <= before.forget);
    assert!(after.retain >= 95.0, "retain accuracy {}", after.retain);
}

#[test]
fn ff_noise_follows_the_inverse_fisher() {
    let _torch = torch_lock();
    let t = task(Arch::Mlp);
    let data = unlearn_data(&t, random());
    // No clamping: the variance is alpha / (F + 1e-8) everywhere (row-averaged for matrices).
    let cfg = FfConfig {
        alpha: 1e-9,
        max_inv_fisher: 1e12,
        head_max_inv_fisher: 1e12,
        ..Default::default()
    };
    let (fisher, batches) =
        fisher_diagonal(&t.model, &data.retain, cfg.batch_size, ProgressMode::Quiet).unwrap();
    assert_eq!(batches, data.retain.len().div_ceil(32));
    let plan = noise_plan(&t.model, &fisher, &cfg, &[]).unwrap();
    let mut m = copy_of(&t.model);
    cfg.clone()
        .build()
        .unwrap()
        .unlearn(&mut m, &ctx(&t, &data, 5))
        .unwrap();

    // Every perturbation is N(0, var) with the planned variance: z-scores are standard normal.
    let mut z = Vec::new();
    for ((name, p), np) in m.parameters().iter().zip(&plan) {
        assert_eq!(*name, np.name);
        let zt = (p - &np.mean) / np.var.sqrt();
        z.extend(values(&zt));
    }
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let second = z.iter().map(|v| v * v).sum::<f64>() / n;
    let within = z.iter().filter(|v| v.abs() < 1.959964).count() as f64 / n;
    eprintln!("z: n {n}, mean {mean}, mean square {second}, within 1.96 {within}");
    assert!(n > 50_000.0);
    assert!(mean.abs() < 0.02, "mean z {mean}");
    assert!((second - 1.0).abs() < 0.03, "mean z^2 {second}");
    assert!((within - 0.95).abs() < 0.01, "share within 1.96: {within}");

    // Larger where the Fisher is small. Biases: per entry; weight matrices: per row (the
    // variance is averaged over a row's inputs).
    let before = t.model.parameters();
    let after = m.parameters();
    let (mut inv_f, mut size) = (Vec::new(), Vec::new());
    let (mut row_inv_f, mut row_rms) = (Vec::new(), Vec::new());
    for i in 0..before.len() {
        let f = &fisher[i].1;
        let delta = &after[i].1 - &before[i].1;
        if f.dim() == 1 {
            inv_f.extend(values(&(f + 1e-8).reciprocal()));
            size.extend(values(&delta.abs()));
        } else {
            row_inv_f.extend(values(&(f + 1e-8).reciprocal().mean_dim(
                1,
                false,
                Kind::Double,
            )));
            row_rms.extend(values(
                &delta.square().mean_dim(1, false, Kind::Double).sqrt(),
            ));
        }
    }
    let r_entries = spearman(&inv_f, &size);
    let r_rows = spearman(&row_inv_f, &row_rms);
    eprintln!("rank correlations: entries {r_entries}, rows {r_rows}");
    assert!(r_entries > 0.5, "entries: rank correlation {r_entries}");
    assert!(r_rows > 0.8, "rows: rank correlation {r_rows}");
}

#[test]
fn ff_clamps_a_vanishing_fisher_and_rejects_a_broken_one() {
    let _torch = torch_lock();
    let t = task(Arch::Mlp);
    let cfg = FfConfig {
        alpha: 1e-3,
        ..Default::default()
    };
    let zeros: Vec<(String, Tensor)> = t
        .model
        .parameters()
        .into_iter()
        .map(|(n, p)| (n, p.zeros_like()))
        .collect();
    let plan = noise_plan(&t.model, &zeros, &cfg, &[2]).unwrap();
    for np in &plan {
        let v = values(&np.var);
        assert!(v.iter().all(|x| x.is_finite()), "{}", np.name);
        let max = v.iter().cloned().fold(0.0, f64::max);
        let (expect, head) = match np.name.as_str() {
            "fc3.weight" | "fc3.bias" => (1e-3 * 1e2 * 10.0, true),
            n if n.ends_with("bias") => (1e-3 * 1e3 * 10.0, false),
            _ => (1e-3 * 1e3, false),
        };
        assert!((max - expect).abs() <= 1e-6 * expect, "{}: {max}", np.name);
        if head {
            // The forgotten class's row: zero mean, variance 1e-4 (times ten).
            let row = np.mean.get(2);
            assert_eq!(row.abs().sum(Kind::Double).double_value(&[]), 0.0);
            let rv = np.var.get(2).max().double_value(&[]);
            assert!((rv - 1e-3).abs() < 1e-9, "{rv}");
        }
    }
    let mut broken = zeros;
    broken[0].1 = broken[0].1.fill(f64::NAN);
    let e = err_of(noise_plan(&t.model, &broken, &cfg, &[]));
    assert!(e.contains("fc1.weight") && e.contains("NaN"), "{e}");
    let e = err_of(noise_plan(&t.model, &broken[1..], &cfg, &[]));
    assert!(e.contains("Fisher"), "{e}");
}

#[test]
fn ff_is_reproducible_from_the_seed() {
    let _torch = torch_lock();
    let t = task(Arch::Mlp);
    let data = unlearn_data(&t, random());
    let method = FfConfig {
        samples: Some(50),
        ..Default::default()
    }
    .build()
    .unwrap();
    let once = |seed| {
        let mut m = copy_of(&t.model);
        let r = method.unlearn(&mut m, &ctx(&t, &data, seed)).unwrap();
        assert_eq!(r.extra["fisher_samples"], 50);
        params_of(&m)
    };
    assert_eq!(once(1), once(1));
    assert_ne!(once(1), once(2));
}

// ---------------------------------------------------------------------------------------------
// IU

/// A softmax regression with 4 x 60 weights and 4 biases (244 parameters) and per-sample
/// gradients of its cross-entropy.
struct Tiny {
    x: Tensor,
    y: Tensor,
    params: Vec<Tensor>,
}

impl Tiny {
    fn new(n: i64) -> Tiny {
        single_threaded();
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([n, 60], opts);
        let y = Tensor::randint(4, [n], (Kind::Int64, Device::Cpu));
        let w = (Tensor::randn([4, 60], opts) * 0.3).set_requires_grad(true);
        let b = (Tensor::randn([4], opts) * 0.1).set_requires_grad(true);
        Tiny {
            x,
            y,
            params: vec![w, b],
        }
    }

    fn grad(&self, k: usize) -> Tensor {
        let x = self.x.narrow(0, k as i64, 1);
        let y = self.y.narrow(0, k as i64, 1);
        let loss = x
            .linear(&self.params[0], Some(&self.params[1]))
            .cross_entropy_for_logits(&y);
        flat_grad(&loss, &self.params, false).unwrap()
    }
}

#[test]
fn woodfisher_equals_a_dense_solve() {
    let _torch = torch_lock();
    let d = 244i64;
    let tiny = Tiny::new(300);
    let v = Tensor::randn([d], (Kind::Float, Device::Cpu));
    // (gradients, rows kept in memory): more gradients than parameters, all in memory or in
    // blocks; and one gradient at a time.
    for (n, rows) in [(300usize, 300usize), (300, 16), (40, 1)] {
        let g = Tensor::stack(&(0..n).map(|k| tiny.grad(k)).collect::<Vec<_>>(), 0)
            .to_kind(Kind::Double);
        assert_eq!(g.size(), [n as i64, d]);
        for damping in [1.0, 1e-2] {
            let eye = Tensor::eye(d, (Kind::Double, Device::Cpu));
            let f = eye * damping + g.tr().matmul(&g) / n as f64;
            let exact = Tensor::linalg_solve(&f, &v.to_kind(Kind::Double), true);
            let budget = rows * d as usize * 8;
            let (got, stats) = woodfisher_ihvp(
                n,
                |k| Ok(tiny.grad(k)),
                &v,
                damping,
                budget,
                ProgressMode::Quiet,
            )
            .unwrap();
            let rel = (got.to_kind(Kind::Double) - &exact)
                .norm()
                .double_value(&[])
                / exact.norm().double_value(&[]);
            eprintln!("n {n}, damping {damping}, {rows} rows: relative error {rel}");
            assert!(
                rel < 1e-6,
                "n {n}, damping {damping}, {rows} rows: relative error {rel}"
            );
            assert_eq!(stats.n, n);
            assert_eq!(stats.block_rows, rows);
            // Every gradient once, plus the recomputations the memory budget forces.
            let blocks = n.div_ceil(rows);
            let last = n - (blocks - 1) * rows;
            let streamed: usize = (0..blocks).map(|b| n - ((b + 1) * rows).min(n)).sum();
            assert_eq!(stats.grad_evals, n + streamed + (n - last));
            assert!(stats.min_denominator >= n as f64);
        }
    }
}

#[test]
fn iu_forgets_a_class() {
    let _torch = torch_lock();
    let t = task(Arch::Mlp);
    let data = unlearn_data(&t, class_wise());
    let cfg = IuConfig {
        alpha: 5.0,
        damping: 1e-2,
        ..Default::default()
    };
    let (before, after, report, m) = run(&t, &data, &cfg.clone().build().unwrap());
    assert_eq!(before.forget, 100.0);
    assert!(after.forget <= 60.0, "forget accuracy {}", after.forget);
    assert!(after.retain >= 90.0, "retain accuracy {}", after.retain);
    assert_eq!(report.extra["fisher_gradients"], data.retain.len());

    // A memory budget of a few gradients gives the same update (blocked recursion).
    let small = IuConfig {
        memory_mb: 2,
        ..cfg.clone()
    };
    let (_, _, report, m_small) = run(&t, &data, &small.build().unwrap());
    assert!(report.extra["block_rows"].as_u64().unwrap() < 10);
    for ((n, a), (_, b)) in params_of(&m).iter().zip(params_of(&m_small)) {
        let scale = a.iter().map(|x| x.abs()).fold(1e-6, f64::max);
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff <= 1e-4 * scale, "{n}: {diff}");
    }

    // Mini-batch gradients for the Fisher: fewer of them, same kind of update.
    let batched = IuConfig {
        grad_batch: 4,
        ..cfg
    };
    let (_, after, report, _) = run(&t, &data, &batched.build().unwrap());
    assert_eq!(
        report.extra["fisher_gradients"],
        (data.retain.len() / 4) as u64
    );
    assert!(after.forget < 100.0 && after.retain >= 80.0);
}

#[test]
fn iu_with_reference_defaults_keeps_the_model_on_random_forgetting() {
    let _torch = torch_lock();
    let t = task(Arch::Mlp);
    let data = unlearn_data(&t, random());
    let (before, after, report, _) = run(&t, &data, &IuConfig::default().build().unwrap());
    assert!(after.forget <= before.forget);
    assert!(after.retain >= 95.0, "retain accuracy {}", after.retain);
    assert!(report.extra["update_norm"].as_f64().unwrap() > 0.0);
}

#[test]
fn iu_refuses_a_non_finite_update() {
    let _torch = torch_lock();
    let t = task(Arch::Mlp);
    let data = unlearn_data(&t, class_wise());
    for (cfg, want) in [
        (
            IuConfig {
                alpha: 1e300,
                ..Default::default()
            },
            "iu: the update contains NaN or infinite values",
        ),
        (
            IuConfig {
                damping: 1e-300,
                ..Default::default()
            },
            "recursion denominator",
        ),
    ] {
        let mut m = copy_of(&t.model);
        let e = err_of(cfg.build().unwrap().unlearn(&mut m, &ctx(&t, &data, 1)));
        assert!(e.contains(want), "{e}");
        assert_eq!(
            params_of(&m),
            params_of(&t.model),
            "the model must be left as it was"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// BE and BS

fn recipe(lr: f64) -> RunConfig {
    let mut r = RunConfig::new(10, lr);
    r.batch_size = 32;
    r
}

#[test]
fn be_forgets_a_class_and_keeps_the_model_shape() {
    let _torch = torch_lock();
    let t = task(Arch::Mlp);
    let data = unlearn_data(&t, class_wise());
    let method = BeConfig { run: recipe(3e-3) }.build().unwrap();
    let (before, after, report, m) = run(&t, &data, &method);
    assert_eq!(before.forget, 100.0);
    assert!(after.forget <= 10.0, "forget accuracy {}", after.forget);
    assert!(after.retain >= 95.0, "retain accuracy {}", after.retain);
    assert!(after.test >= 90.0, "test accuracy {}", after.test);
    assert!(report.extra["forget_to_shadow"].as_f64().unwrap() >= 0.9);
    assert_eq!(report.extra["shadow_class"], 4);
    // The shadow output is gone: same variables, same shapes, same number of classes.
    assert_eq!(m.spec, t.model.spec);
    let shapes = |m: &Model| {
        m.parameters()
            .into_iter()
            .map(|(n, p)| (n, p.size()))
            .collect::<Vec<_>>()
    };
    assert_eq!(shapes(&m), shapes(&t.model));
    assert_eq!(m.forward_t(&data.forget.images, false).size(), [39, 4]);

    let data = unlearn_data(&t, random());
    let (before, after, _, _) = run(&t, &data, &method);
    assert!(after.forget <= before.forget);
    assert!(after.retain >= 95.0, "retain accuracy {}", after.retain);
}

#[test]
fn bs_forgets_a_class_through_its_nearest_wrong_labels() {
    let _torch = torch_lock();
    let t = task(Arch::Mlp);
    let data = unlearn_data(&t, class_wise());
    let forget_labels = data.forget.labels_vec();
    let near = nearest_wrong_labels(&t.model, &data.forget, 0.1, true, 16).unwrap();
    let labels = Vec::<i64>::try_from(&near.labels).unwrap();
    assert_eq!(labels.len(), forget_labels.len());
    assert!(labels.iter().zip(&forget_labels).all(|(a, b)| a != b));
    assert_eq!(near.attack_flipped + near.fallback, labels.len());
    let raw = nearest_wrong_labels(&t.model, &data.forget, 0.1, false, 64).unwrap();
    assert_eq!(raw.fallback, 0);
    assert_eq!(raw.attack_flipped, near.attack_flipped);
    let raw_labels = Vec::<i64>::try_from(&raw.labels).unwrap();
    let flipped = raw_labels
        .iter()
        .zip(&forget_labels)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(flipped, raw.attack_flipped);

    // The paper's variant: a failed attack's sample still gets a wrong label.
    let method = BsConfig {
        run: recipe(3e-3),
        force_wrong: true,
        ..Default::default()
    }
    .build()
    .unwrap();
    let (before, after, report, _) = run(&t, &data, &method);
    assert_eq!(before.forget, 100.0);
    assert!(after.forget <= 10.0, "forget accuracy {}", after.forget);
    assert!(after.retain >= 95.0, "retain accuracy {}", after.retain);
    assert!(after.test >= 90.0, "test accuracy {}", after.test);
    let success = report.extra["attack_success"].as_f64().unwrap();
    assert!((success - near.attack_flipped as f64 / 39.0).abs() < 1e-12);

    let data = unlearn_data(&t, random());
    let method = BsConfig {
        run: recipe(1e-3),
        ..Default::default()
    }
    .build()
    .unwrap();
    let (before, after, _, _) = run(&t, &data, &method);
    assert!(after.forget <= before.forget);
    assert!(after.retain >= 95.0, "retain accuracy {}", after.retain);
}

#[test]
fn diverging_fine_tuning_is_an_error() {
    let _torch = torch_lock();
    let t = task(Arch::Mlp);
    let data = unlearn_data(&t, class_wise());
    let be = BeConfig { run: recipe(1e9) }.build().unwrap();
    let e = err_of(be.unlearn(&mut copy_of(&t.model), &ctx(&t, &data, 1)));
    assert!(e.contains("be") && e.contains("learning rate"), "{e}");
    let bs = BsConfig {
        run: recipe(1e9),
        ..Default::default()
    }
    .build()
    .unwrap();
    let e = err_of(bs.unlearn(&mut copy_of(&t.model), &ctx(&t, &data, 1)));
    assert!(e.contains("bs") && e.contains("learning rate"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Configs

#[test]
fn defaults_are_the_reference_values() {
    let ff = FfConfig::default();
    assert_eq!(
        (
            ff.alpha,
            ff.batch_size,
            ff.samples,
            ff.max_inv_fisher,
            ff.head_max_inv_fisher
        ),
        (1e-8, 32, None, 1e3, 1e2)
    );
    assert!(ff.zero_forgotten_rows);
    let iu = IuConfig::default();
    assert_eq!(
        (
            iu.alpha,
            iu.samples,
            iu.damping,
            iu.grad_batch,
            iu.batch_size
        ),
        (0.2, 1000, 1.0, 1, 256)
    );
    for run in [BeConfig::default().run, BsConfig::default().run] {
        assert_eq!(
            (
                run.epochs,
                run.lr,
                run.batch_size,
                run.momentum,
                run.weight_decay
            ),
            (10, 1e-5, 256, 0.9, 5e-4)
        );
        assert!(!run.cosine);
    }
    assert_eq!(BsConfig::default().bound, 0.1);
    // Omitted keys take the defaults.
    assert_eq!(serde_json::from_str::<FfConfig>("{}").unwrap(), ff);
    assert_eq!(serde_json::from_str::<IuConfig>("{}").unwrap(), iu);
    assert_eq!(
        serde_json::from_str::<BsConfig>(r#"{"epochs": 10, "lr": 1e-5}"#).unwrap(),
        BsConfig::default()
    );
}

#[test]
fn configs_name_the_bad_field_and_reject_unknown_keys() {
    let ff = FfConfig::default;
    let cases: Vec<(String, &str)> = vec![
        (err_of(FfConfig { alpha: 0.0, ..ff() }.build()), "ff.alpha"),
        (
            err_of(
                FfConfig {
                    alpha: f64::NAN,
                    ..ff()
                }
                .build(),
            ),
            "ff.alpha",
        ),
        (
            err_of(
                FfConfig {
                    batch_size: 0,
                    ..ff()
                }
                .build(),
            ),
            "ff.batch_size",
        ),
        (
            err_of(
                FfConfig {
                    samples: Some(0),
                    ..ff()
                }
                .build(),
            ),
            "ff.samples",
        ),
        (
            err_of(
                FfConfig {
                    max_inv_fisher: -1.0,
                    ..ff()
                }
                .build(),
            ),
            "ff.max_inv_fisher",
        ),
        (
            err_of(
                FfConfig {
                    head_max_inv_fisher: 0.0,
                    ..ff()
                }
                .build(),
            ),
            "ff.head_max_inv_fisher",
        ),
    ];
    let iu = IuConfig::default;
    let more: Vec<(String, &str)> = vec![
        (
            err_of(
                IuConfig {
                    alpha: -1.0,
                    ..iu()
                }
                .build(),
            ),
            "iu.alpha",
        ),
        (
            err_of(IuConfig { samples: 0, ..iu() }.build()),
            "iu.samples",
        ),
        (
            err_of(
                IuConfig {
                    damping: 0.0,
                    ..iu()
                }
                .build(),
            ),
            "iu.damping",
        ),
        (
            err_of(
                IuConfig {
                    grad_batch: 0,
                    ..iu()
                }
                .build(),
            ),
            "iu.grad_batch",
        ),
        (
            err_of(
                IuConfig {
                    batch_size: 0,
                    ..iu()
                }
                .build(),
            ),
            "iu.batch_size",
        ),
        (
            err_of(
                IuConfig {
                    memory_mb: 0,
                    ..iu()
                }
                .build(),
            ),
            "iu.memory_mb",
        ),
        (err_of(BeConfig { run: recipe(-1.0) }.build()), "be.lr"),
        (
            err_of(
                BeConfig {
                    run: RunConfig::new(0, 0.1),
                }
                .build(),
            ),
            "be.epochs",
        ),
        (
            err_of(
                BsConfig {
                    bound: 1.5,
                    ..Default::default()
                }
                .build(),
            ),
            "bs.bound",
        ),
        (
            err_of(
                BsConfig {
                    run: recipe(f64::INFINITY),
                    ..Default::default()
                }
                .build(),
            ),
            "bs.lr",
        ),
    ];
    for (e, field) in cases.into_iter().chain(more) {
        assert!(e.contains(field), "{field}: {e}");
    }
    let unknown = [
        serde_json::from_str::<FfConfig>(r#"{"alpha": 1e-8, "bogus": 1}"#)
            .unwrap_err()
            .to_string(),
        serde_json::from_str::<IuConfig>(r#"{"bogus": 1}"#)
            .unwrap_err()
            .to_string(),
        serde_json::from_str::<BeConfig>(r#"{"epochs": 1, "lr": 0.1, "bogus": 1}"#)
            .unwrap_err()
            .to_string(),
        serde_json::from_str::<BsConfig>(r#"{"epochs": 1, "lr": 0.1, "bogus": 1}"#)
            .unwrap_err()
            .to_string(),
    ];
    for e in unknown {
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The classifier layer FF treats apart

#[test]
fn the_classifier_layer_is_found_in_every_architecture() {
    let _torch = torch_lock();
    single_threaded();
    for arch in Arch::ALL {
        tch::manual_seed(0);
        let m = Model::new(ModelSpec::cifar10(arch), Device::Cpu).unwrap();
        let (wn, bn) = head_param_names(&m).unwrap();
        let params: std::collections::BTreeMap<String, Tensor> =
            m.parameters().into_iter().collect();
        let (w, b) = (&params[&wn], &params[&bn]);
        let f = Tensor::randn([3, m.feature_dim()], (Kind::Float, Device::Cpu));
        let expect = f.matmul(&w.tr()) + b;
        let got = m.logits_from_features(&f);
        let diff = (got - expect).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{arch}: {wn}, {bn}: {diff}");
    }
}

//! The RED generator, denoisers and classifiers on a small synthetic task (28x28 images so the
//! LeNet victims apply), with resume and bad-input checks.

use rustworthy_data::synthetic::synthetic;
use rustworthy_data::Dataset;
use rustworthy_models::{Activation, Arch, Model, ModelSpec};
use rustworthy_red::classify::{self, ClassifyConfig, InputKind, Task};
use rustworthy_red::denoise::{self, DenoiseConfig, DenoiseMode};
use rustworthy_red::family::{
    AttackBudget, AttackFamily, AttackSetting, VictimFamily, VictimRecipe,
};
use rustworthy_red::generate::{self, load_split, read_shard, GenConfig, Manifest, Split};
use rustworthy_red::nets::{DenoiserConfig, HeadsConfig, MultiHead, LEVEL_STEPS, OFF_GRID_WIDTH};
use rustworthy_red::workflow::{self, Tool};
use rustworthy_robust::Norm;
use rustworthy_testkit::torch_lock;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn data() -> (Dataset, Dataset) {
    let all = synthetic(10, 40, 1, 28, 0.3, 7);
    let idx: Vec<usize> = (0..all.len()).collect();
    (
        all.subset(&idx[..300]).unwrap(),
        all.subset(&idx[300..]).unwrap(),
    )
}

fn config() -> GenConfig {
    GenConfig {
        family: VictimFamily {
            archs: vec![Arch::Mlp],
            activations: vec![Activation::Relu, Activation::Tanh],
            sparsities: vec![0, 50],
        },
        recipe: VictimRecipe {
            train_images: 120,
            epochs: 2,
            finetune_epochs: 1,
            lr: 1e-3,
            batch_size: 32,
            seed: 3,
        },
        budget: AttackBudget {
            pgd_steps: 3,
            apgd_steps: 3,
            cw_steps: 3,
            cw_search: 1,
            square_queries: 10,
            nes_iterations: 2,
            nes_samples: 4,
        },
        linf_families: vec![AttackFamily::Fgsm, AttackFamily::Pgd],
        l2_families: vec![AttackFamily::Cw],
        linf_eps: vec![0.05, 0.1],
        l2_eps: vec![],
        ood_linf_eps: vec![0.075],
        ood_l2_eps: vec![],
        transfer: vec![AttackSetting {
            family: AttackFamily::Fgsm,
            norm: Norm::Linf,
            eps: 0.1,
        }],
        train_per_shard: 12,
        test_per_shard: 6,
        seed: 1,
    }
}

fn shard_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for split in Split::ALL {
        let d = dir.join("shards").join(split.name());
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            out.push((
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            ));
        }
    }
    out
}

#[test]
fn generator_writes_labelled_shards_and_resumes_without_duplicates() {
    let _g = torch_lock();
    let (train, test) = data();
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    let s = generate::generate(&cfg, dir.path(), &train, &test, Device::Cpu, |_| {}).unwrap();
    // 4 seen victims x (2 families x 2 radii + C&W) shards in train and test.
    assert_eq!(s.written["train"], 4 * 5);
    assert_eq!(s.written["test"], 4 * 5);
    assert_eq!(s.written["ood-strength"], 4 * 2);
    assert_eq!(s.written["transfer"], 4);
    let m = Manifest::read(dir.path()).unwrap();
    assert_eq!(m.victims.len(), 8);
    let tr = load_split(dir.path(), Split::Train).unwrap();
    assert_eq!(tr.len(), 20 * 12);
    // Every l_inf perturbation respects its radius; labels agree with the settings.
    let delta = tr
        .perturbation()
        .abs()
        .flatten(1, -1)
        .amax(&[1i64][..], false);
    let linf = tr.labels["norm"].eq(0);
    let over = delta
        .masked_select(&linf)
        .gt_tensor(&(tr.eps.masked_select(&linf) + 1e-5))
        .any()
        .int64_value(&[]);
    assert_eq!(over, 0, "an l_inf example exceeds its radius");
    let cw = tr.labels["family"].eq(m
        .families
        .iter()
        .position(|f| *f == AttackFamily::Cw)
        .unwrap() as i64);
    assert_eq!(
        tr.labels["strength"]
            .masked_select(&cw)
            .max()
            .int64_value(&[]),
        -1,
        "C&W has no strength bucket"
    );
    assert!(tr.labels["success"].sum(Kind::Int64).int64_value(&[]) > 0);
    // The strength buckets follow the radii.
    let weak = tr.eps.eq(0.05).logical_and(&linf);
    assert_eq!(
        tr.labels["strength"]
            .masked_select(&weak)
            .max()
            .int64_value(&[]),
        0
    );
    // Transfer examples carry the seen sibling's prediction.
    let xf = load_split(dir.path(), Split::Transfer).unwrap();
    assert!(xf.labels["transfer_pred"].min().int64_value(&[]) >= 0);

    // Resume: delete one shard and truncate another; the rerun rewrites exactly those two and
    // leaves every other byte as it was.
    let before = shard_bytes(dir.path());
    let shards = dir.path().join("shards").join("test");
    let mut files: Vec<_> = std::fs::read_dir(&shards)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::remove_file(&files[0]).unwrap();
    let bytes = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &bytes[..bytes.len() / 2]).unwrap();
    let mut notes = Vec::new();
    let s2 = generate::generate(&cfg, dir.path(), &train, &test, Device::Cpu, |m| {
        notes.push(m.to_string())
    })
    .unwrap();
    assert_eq!(s2.written.get("test").copied().unwrap_or(0), 2);
    assert_eq!(s2.kept["test"], 18);
    assert_eq!(s2.kept["train"], 20);
    assert!(notes
        .iter()
        .any(|n| n.contains("rewriting unreadable shard")));
    assert_eq!(
        shard_bytes(dir.path()),
        before,
        "a resumed run must reproduce the shards"
    );

    // Another config in the same folder is refused.
    let mut other = cfg.clone();
    other.seed = 2;
    let e = generate::generate(&other, dir.path(), &train, &test, Device::Cpu, |_| {})
        .err()
        .unwrap();
    assert!(e.to_string().contains("another config"), "{e}");

    // Inference with shrinkage factors: factor 1 is the denoiser's estimate, factor 0 the
    // identity, and a grid rounds the result; factors of other groups are refused.
    let mut rb = rustworthy_red::bench::preset("fmnist-red-mini").unwrap();
    rb.denoise.epochs = 1;
    rb.attribution.epochs = 1;
    let den = dir.path().join("den");
    let attr = dir.path().join("attr");
    let train_tool = |tool, out: &Path, denoiser: Option<&Path>| {
        workflow::train_tool(
            &rb,
            tool,
            dir.path(),
            out,
            denoiser,
            None,
            Device::Cpu,
            |_| {},
        )
        .unwrap()
    };
    train_tool(Tool::DenoisePixel, &den, None);
    train_tool(Tool::Attribution, &attr, Some(&den));
    let groups = denoise::Shrinkage::group_names(&m.families);
    let infer_all = |factors: Option<denoise::Shrinkage>| {
        let file = dir.path().join("shrink.json");
        let with = factors.map(|f| {
            std::fs::write(&file, serde_json::to_vec(&f).unwrap()).unwrap();
            workflow::ShrinkWith {
                factors: &file,
                attribution: &attr,
            }
        });
        match workflow::infer(&rb, &den, dir.path(), Split::Test, None, with, Device::Cpu) {
            Ok(workflow::Inference::Denoiser(s)) => Ok(s["all"].psnr),
            Ok(_) => panic!("a denoiser gives estimate scores"),
            Err(e) => Err(e.to_string()),
        }
    };
    let flat = |v: f64, grid| denoise::Shrinkage {
        groups: groups.clone(),
        factors: vec![v; groups.len()],
        grid,
    };
    let te = rb.usable(load_split(dir.path(), Split::Test).unwrap());
    let mean_psnr = |x: &Tensor| {
        denoise::psnr(x, &te.x_clean)
            .mean(Kind::Double)
            .double_value(&[])
    };
    let raw = infer_all(None).unwrap();
    assert_eq!(infer_all(Some(flat(1.0, None))).unwrap(), raw);
    let identity = infer_all(Some(flat(0.0, None))).unwrap();
    assert!((identity - mean_psnr(&te.x_adv)).abs() < 1e-9, "{identity}");
    assert_ne!(identity, raw);
    let rounded = infer_all(Some(flat(0.0, Some(255)))).unwrap();
    let want = mean_psnr(&denoise::to_grid(&te.x_adv, 255).unwrap());
    assert!((rounded - want).abs() < 1e-9, "{rounded} vs {want}");
    let mut wrong = flat(0.5, None);
    wrong.groups.swap(0, 1);
    assert!(infer_all(Some(wrong)).unwrap_err().contains("groups"));
    assert!(infer_all(Some(flat(1.5, None)))
        .unwrap_err()
        .contains("in [0, 1]"));
    let e = workflow::infer(
        &rb,
        &attr,
        dir.path(),
        Split::Test,
        Some(&den),
        Some(workflow::ShrinkWith {
            factors: &dir.path().join("shrink.json"),
            attribution: &attr,
        }),
        Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("holds no denoiser"), "{e}");
    // An attribution folder whose input kind does not fit its network is refused by name.
    std::fs::write(attr.join("input.json"), "\"adv\"").unwrap();
    let e = infer_all(Some(flat(0.5, None))).unwrap_err();
    assert!(e.contains("reads 2 channels"), "{e}");
}

fn write_named(path: &Path, named: Vec<(&str, Tensor)>) {
    Tensor::write_safetensors(&named, path).unwrap();
}

#[test]
fn bad_shards_are_refused_by_name() {
    let _g = torch_lock();
    let (train, test) = data();
    let mut cfg = config();
    cfg.transfer.clear();
    cfg.family.activations = vec![Activation::Relu];
    cfg.family.sparsities = vec![0];
    let dir = tempfile::tempdir().unwrap();
    generate::generate(&cfg, dir.path(), &train, &test, Device::Cpu, |_| {}).unwrap();
    let m = Manifest::read(dir.path()).unwrap();
    let p = std::fs::read_dir(dir.path().join("shards/train"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let named = Tensor::read_safetensors(&p).unwrap();
    let edit = |f: &dyn Fn(&str, &Tensor) -> Option<Tensor>| -> Vec<(String, Tensor)> {
        named
            .iter()
            .filter_map(|(k, t)| f(k, t).map(|t| (k.clone(), t)))
            .collect()
    };
    let bad = dir.path().join("bad.safetensors");
    let check = |v: Vec<(String, Tensor)>, want: &str| {
        write_named(
            &bad,
            v.iter()
                .map(|(k, t)| (k.as_str(), t.shallow_clone()))
                .collect(),
        );
        let e = read_shard(&bad, &m)
            .err()
            .expect("a bad shard must be refused");
        assert!(e.to_string().contains(want), "{e} lacks {want}");
    };
    // No clean images.
    check(
        edit(&|k, t| (k != "x_clean").then(|| t.shallow_clone())),
        "x_clean",
    );
    // Mixed image sizes.
    check(
        edit(&|k, t| {
            Some(if k.starts_with("x_") {
                t.narrow(3, 0, 20).contiguous()
            } else {
                t.shallow_clone()
            })
        }),
        "mixed image sizes",
    );
    // An unknown attack family label.
    check(
        edit(&|k, t| {
            Some(if k == "family" {
                t.full_like(99)
            } else {
                t.shallow_clone()
            })
        }),
        "unknown `family` label",
    );
    // NaN pixels.
    check(
        edit(&|k, t| {
            Some(if k == "x_adv" {
                t.full_like(f64::NAN)
            } else {
                t.shallow_clone()
            })
        }),
        "NaN",
    );
    // Garbage bytes.
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    assert!(read_shard(&bad, &m).is_err());
    // A folder without a manifest.
    let e = load_split(&dir.path().join("shards"), Split::Train)
        .err()
        .unwrap();
    assert!(e.to_string().contains("red.json"), "{e}");
}

#[test]
fn configs_refuse_bad_values_by_name() {
    let mut c = config();
    c.linf_eps = vec![0.05, 0.05];
    assert!(c.validate().unwrap_err().to_string().contains("twice"));
    let mut c = config();
    c.ood_linf_eps = vec![0.05];
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("in-distribution"));
    let mut c = config();
    c.family.sparsities = vec![0, 100];
    assert!(c.validate().unwrap_err().to_string().contains("sparsities"));
    let mut c = config();
    c.budget.nes_samples = 3;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("nes_samples"));
    let mut c = config();
    c.linf_eps = vec![f64::NAN];
    assert!(c.validate().is_err());
    let bad = AttackSetting {
        family: AttackFamily::Square,
        norm: Norm::L2,
        eps: 0.5,
    };
    assert!(bad.validate().is_err());
    let mut c = config();
    c.family.archs = vec![Arch::Vgg16Bn];
    assert!(c.validate().unwrap_err().to_string().contains("activation"));
    // Model specs: the activation is refused where the network has none to swap.
    let s = ModelSpec::fashion_mnist(Arch::Vgg16Bn).with_activation(Activation::Tanh);
    assert!(s.validate().unwrap_err().to_string().contains("activation"));
    assert!("swish".parse::<Activation>().is_err());
    assert!("zoo".parse::<AttackFamily>().is_err());
}

#[test]
fn activations_change_the_network_and_old_specs_read_as_relu() {
    let _g = torch_lock();
    let spec = ModelSpec::fashion_mnist(Arch::Lenet);
    let json = serde_json::to_string(&spec).unwrap();
    assert!(
        !json.contains("activation"),
        "ReLU specs keep their old form"
    );
    let back: ModelSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back.activation, Activation::Relu);
    let x = Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu));
    for arch in [Arch::Mlp, Arch::Lenet, Arch::Resnet20] {
        let mut outs = Vec::new();
        for a in Activation::ALL {
            tch::manual_seed(5);
            let m = Model::new(
                ModelSpec::fashion_mnist(arch).with_activation(a),
                Device::Cpu,
            )
            .unwrap();
            let j = serde_json::to_string(m.spec()).unwrap();
            let r: ModelSpec = serde_json::from_str(&j).unwrap();
            assert_eq!(r.activation, a);
            assert_eq!(m.layout().is_some(), a == Activation::Relu);
            outs.push(m.forward_t(&x, false));
        }
        // Same weights (same seed), different nonlinearity: different outputs.
        assert!(outs[0].allclose(&outs[0], 0.0, 0.0, false));
        assert!(
            !outs[0].allclose(&outs[1], 1e-4, 1e-4, false),
            "{arch}: tanh = relu"
        );
        assert!(
            !outs[0].allclose(&outs[2], 1e-4, 1e-4, false),
            "{arch}: elu = relu"
        );
    }
}

#[test]
fn metrics_of_estimates() {
    let a = Tensor::rand([3, 1, 8, 8], (Kind::Float, Device::Cpu));
    let same = denoise::psnr(&a, &a);
    assert!(same.min().double_value(&[]) >= 99.9);
    let off = &a + 0.1;
    let p = denoise::psnr(&off, &a).mean(Kind::Double).double_value(&[]);
    assert!(
        (p - 20.0).abs() < 1e-3,
        "PSNR of a 0.1 shift is 20 dB, got {p}"
    );
    let d = &a - 0.5;
    assert!((denoise::cosine(&d, &d).min().double_value(&[]) - 1.0).abs() < 1e-9);
    assert!((denoise::cosine(&d, &(-&d)).max().double_value(&[]) + 1.0).abs() < 1e-9);
    assert_eq!(
        denoise::cosine(&d, &d.zeros_like())
            .abs()
            .max()
            .double_value(&[]),
        0.0
    );
}

/// The shrinkage factors recover a denoiser's known overshoot per group, and applying them is
/// checked for shapes and groups.
#[test]
fn shrinkage_fits_the_factor_that_undoes_an_overshoot() {
    let _g = torch_lock();
    tch::manual_seed(3);
    let clean = Tensor::rand([40, 1, 8, 8], (Kind::Float, Device::Cpu)) * 0.5 + 0.25;
    let sign = Tensor::rand([40, 1, 8, 8], (Kind::Float, Device::Cpu))
        .gt(0.5)
        .to_kind(Kind::Float)
        * 2.0
        - 1.0;
    let delta = sign * 0.05;
    let x_adv = &clean + &delta;
    // Group 0 (20 examples): the estimated perturbation is twice the true one; group 1: exact;
    // group 2: no example.
    let group = Tensor::arange(40, (Kind::Int64, Device::Cpu))
        .ge(20)
        .to_kind(Kind::Int64);
    let g0 = group.eq(0).to_kind(Kind::Float).view([-1, 1, 1, 1]);
    let est = &x_adv - &delta * (&g0 + 1.0);
    let f = denoise::fit_shrinkage(&x_adv, &est, &clean, &group, 3, None).unwrap();
    assert_eq!(f, vec![0.5, 1.0, 1.0]);
    let shrunk = denoise::shrink(&x_adv, &est, &group, &f).unwrap();
    let err = (&shrunk - &clean).abs().max().double_value(&[]);
    assert!(
        err < 1e-6,
        "shrunk estimates miss the clean images by {err}"
    );
    // An estimate worse than the identity in every group is shrunk to the identity (factor 0).
    let bad = &x_adv + &delta;
    let f0 = denoise::fit_shrinkage(&x_adv, &bad, &clean, &group, 2, None).unwrap();
    assert_eq!(f0, vec![0.0, 0.0]);
    // A group outside the factors and mismatched shapes are refused by name.
    let e = denoise::shrink(&x_adv, &est, &(&group + 2), &f).unwrap_err();
    assert!(e.to_string().contains("group 3"), "{e}");
    let e = denoise::shrink(&x_adv, &est.narrow(0, 0, 10), &group, &f).unwrap_err();
    assert!(e.to_string().contains("disagree"), "{e}");
    let e =
        denoise::fit_shrinkage(&x_adv, &est, &clean.narrow(0, 0, 5), &group, 3, None).unwrap_err();
    assert!(e.to_string().contains("clean images"), "{e}");
}

/// Projection onto the 8-bit grid recovers 8-bit clean images from small float perturbations,
/// leaves 8-bit images alone, and the shrinkage fitted through it prefers the projected
/// identity where the denoiser's estimate is worse.
#[test]
fn grid_projection_recovers_small_float_perturbations() {
    let _g = torch_lock();
    tch::manual_seed(5);
    let clean = (Tensor::rand([30, 1, 8, 8], (Kind::Float, Device::Cpu)) * 255.0).round() / 255.0;
    // Perturbations within 0.4 of a grid step: every pixel rounds back to its clean value.
    let small = (Tensor::rand([30, 1, 8, 8], (Kind::Float, Device::Cpu)) - 0.5) * (0.8 / 255.0);
    let x_adv = (&clean + &small).clamp(0.0, 1.0);
    let back = denoise::to_grid(&x_adv, 255).unwrap();
    assert_eq!(
        (&back - &clean).abs().max().double_value(&[]),
        0.0,
        "rounding to the grid must give back the clean images"
    );
    assert_eq!(
        (denoise::to_grid(&clean, 255).unwrap() - &clean)
            .abs()
            .max()
            .double_value(&[]),
        0.0
    );
    // A denoiser estimate off by 2 steps: unprojected, the identity (factor 0) wins, and
    // projected, factor 0 gives the clean image exactly.
    let est = &x_adv - 2.0 / 255.0;
    let group = Tensor::zeros([30], (Kind::Int64, Device::Cpu));
    let f = denoise::fit_shrinkage(&x_adv, &est, &clean, &group, 1, Some(255)).unwrap();
    assert_eq!(f, vec![0.0]);
    let p = denoise::psnr(
        &denoise::to_grid(&denoise::shrink(&x_adv, &est, &group, &f).unwrap(), 255).unwrap(),
        &clean,
    );
    assert!(p.min().double_value(&[]) >= 99.9, "{p}");
    for bad in [0, -1, 70_000] {
        let e = denoise::to_grid(&x_adv, bad).unwrap_err();
        assert!(e.to_string().contains("levels"), "{e}");
        let e = denoise::fit_shrinkage(&x_adv, &est, &clean, &group, 1, Some(bad)).unwrap_err();
        assert!(e.to_string().contains("levels"), "{e}");
    }
}

fn toy_set() -> generate::RedSet {
    // Clean images and two kinds of perturbation: +-eps signs everywhere (family 0) or a single
    // bright square patch (family 1); strength bucket 0 for eps 0.05, 1 for 0.1.
    tch::manual_seed(11);
    let n = 400;
    // Smooth clean images (a constant level plus a horizontal ramp), so a denoiser can tell
    // image from perturbation.
    let level = Tensor::rand([n, 1, 1, 1], (Kind::Float, Device::Cpu)) * 0.6 + 0.2;
    let ramp = Tensor::linspace(-0.1, 0.1, 16, (Kind::Float, Device::Cpu)).view([1, 1, 1, 16]);
    let clean = (level + ramp).expand([n, 1, 16, 16], false).contiguous();
    let fam = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(2);
    let strength = Tensor::arange(n, (Kind::Int64, Device::Cpu))
        .remainder(4)
        .ge(2)
        .to_kind(Kind::Int64);
    let eps = (strength.to_kind(Kind::Float) + 1.0) * 0.05;
    let signs = Tensor::rand([n, 1, 16, 16], (Kind::Float, Device::Cpu))
        .gt(0.5)
        .to_kind(Kind::Float)
        * 2.0
        - 1.0;
    let patch = Tensor::zeros([n, 1, 16, 16], (Kind::Float, Device::Cpu));
    let _ = patch.narrow(2, 4, 6).narrow(3, 4, 6).fill_(1.0);
    let e = eps.view([-1, 1, 1, 1]);
    let delta = (signs * &e).where_self(&fam.eq(0).view([-1, 1, 1, 1]), &(patch * &e));
    let adv = (&clean + delta).clamp(0.0, 1.0);
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("family".to_string(), fam);
    labels.insert(
        "norm".to_string(),
        Tensor::zeros([n], (Kind::Int64, Device::Cpu)),
    );
    labels.insert("strength".to_string(), strength);
    generate::RedSet {
        x_clean: clean,
        x_adv: adv,
        labels,
        eps,
    }
}

#[test]
fn attribution_learns_separable_attacks_and_skips_unknown_strengths() {
    let _g = torch_lock();
    let set = toy_set();
    let cfg = ClassifyConfig {
        width: 8,
        epochs: 6,
        batch_size: 32,
        lr: 3e-3,
        max_examples: 0,
        hist_bins: 16,
        levels: 40,
        off_grid: false,
        seed: 0,
    };
    let classes = std::collections::BTreeMap::from([("family", 2), ("norm", 2), ("strength", 2)]);
    let idx = Tensor::arange(300, (Kind::Int64, Device::Cpu));
    let tr = set.select(&idx);
    let te = set.select(&Tensor::arange_start(300, 400, (Kind::Int64, Device::Cpu)));
    let x = classify::inputs(InputKind::True, &tr, None).unwrap();
    let (net, hist) = classify::train_classifier(
        &cfg,
        Task::Attribution,
        &x,
        &tr,
        &classes,
        Device::Cpu,
        |_| {},
    )
    .unwrap();
    assert!(hist.loss.last().unwrap() < &hist.loss[0]);
    let xt = classify::inputs(InputKind::True, &te, None).unwrap();
    let s = classify::score(&net, &xt, &te).unwrap();
    assert!(
        s["family"].accuracy >= 95.0,
        "family {:?}",
        s["family"].accuracy
    );
    assert!(
        s["strength"].accuracy >= 80.0,
        "strength {:?}",
        s["strength"].accuracy
    );
    // Unknown strengths (-1) are skipped, not scored as a class.
    let mut te2 = te.select(&Tensor::arange(100, (Kind::Int64, Device::Cpu)));
    let st = te2.labels["strength"].full_like(-1);
    te2.labels.insert("strength".into(), st);
    let s2 = classify::score(&net, &xt, &te2).unwrap();
    assert!(!s2.contains_key("strength"));
    // A label outside the head's classes is an error naming it.
    let fam = te2.labels["family"].full_like(7);
    te2.labels.insert("family".into(), fam);
    let e = classify::score(&net, &xt, &te2).unwrap_err();
    assert!(e.to_string().contains("unknown label"), "{e}");
    // The estimated input needs estimates.
    assert!(classify::inputs(InputKind::Estimated, &te, None).is_err());
}

#[test]
fn level_features_count_exact_levels_relative_to_the_radius() {
    let _g = torch_lock();
    let cfg = HeadsConfig {
        width: 4,
        channels: 1,
        heads: vec![("family".into(), 2)],
        shift: 0.0,
        scale: 1.0,
        hist_bins: 0,
        hist_range: vec![],
        levels: 20,
        off_grid: false,
    };
    let net = MultiHead::new(&cfg, Device::Cpu).unwrap();
    let k = LEVEL_STEPS as usize;
    let width = 2 * (4 * k + 1) + 16;
    assert_eq!(cfg.level_width(), width as i64);
    // Levels [[0, 8, 3], [8, 0, 8]]: clean pixels at 0, the radius 8 (the most common level),
    // one in between.
    let q = Tensor::from_slice(&[0.0f32, 8.0, 3.0, 8.0, 0.0, 8.0]).view([1, 1, 2, 3]);
    let feats =
        |x: &Tensor| -> Vec<f32> { Vec::try_from(net.level_features(x).flatten(0, -1)).unwrap() };
    let f = feats(&(&q / 255.0));
    let mut want = vec![0f32; width];
    // Histogram of round(K q / 8) over [-2K, 2K], offset 2K: K q / 8 = q here.
    let at = |v: i64| (2 * k as i64 + v) as usize;
    want[at(0)] = 2.0;
    want[at(3)] = 1.0;
    want[at(8)] = 3.0;
    // Neighbour differences: horizontal 8, -5, -8, 8; vertical 8, -8, 5.
    let d0 = 4 * k + 1;
    for (d, c) in [(8, 3.0), (-8, 2.0), (-5, 1.0), (5, 1.0)] {
        want[d0 + at(d)] = c;
    }
    // Classes at the radius: 0 -> 0, 3 -> 1, 8 -> 2. Horizontal pairs (0,2), (2,1), (2,0),
    // (0,2); vertical (0,2), (2,0), (1,2).
    let p0 = 2 * d0;
    for (pair, c) in [(2, 3.0), (9, 1.0), (8, 2.0), (6, 1.0)] {
        want[p0 + pair] = c;
    }
    assert_eq!(f, want);
    // An image a hair off the 8-bit grid (as float attacks leave it) gives the same features,
    // and so does the same pattern at twice the radius: the statistics are relative to it.
    assert_eq!(feats(&((&q + 0.3) / 255.0)), want);
    assert_eq!(feats(&(&q * 2.0 / 255.0)), want);
    // A network with level statistics saves and loads, and gives the same logits.
    let dir = tempfile::tempdir().unwrap();
    net.save(dir.path(), "net").unwrap();
    let back = MultiHead::load(dir.path(), "net", Device::Cpu).unwrap();
    assert_eq!(back.config, cfg);
    let x = Tensor::rand([3, 1, 2, 3], (Kind::Float, Device::Cpu));
    assert!(net.forward(&x, false)[0].equal(&back.forward(&x, false)[0]));
    // Off-grid counts: the same levels with the pixel at level 3 moved 0.3 off the grid. The
    // level statistics stay as they were; 20 counts follow them.
    let og = HeadsConfig {
        off_grid: true,
        ..cfg.clone()
    };
    assert_eq!(og.level_width(), width as i64 + OFF_GRID_WIDTH);
    let net_og = MultiHead::new(&og, Device::Cpu).unwrap();
    let bump = Tensor::from_slice(&[0.0f32, 0.0, 0.3, 0.0, 0.0, 0.0]).view([1, 1, 2, 3]);
    let f_og: Vec<f32> =
        Vec::try_from(net_og.level_features(&((&q + bump) / 255.0)).flatten(0, -1)).unwrap();
    assert_eq!(&f_og[..width], &want[..]);
    let mut off = vec![0f32; OFF_GRID_WIDTH as usize];
    // Level class x on/off the grid: classes [[0, 2, 1], [2, 0, 2]], the class-1 pixel off it.
    off[0] = 2.0;
    off[2 + 1] = 1.0;
    off[2 * 2] = 3.0;
    // Neighbour pairs of off-grid flags [[0, 0, 1], [0, 0, 0]]: horizontal (0,0), (0,1),
    // (0,0), (0,0); vertical (0,0), (0,0), (1,0).
    off[8] = 5.0;
    off[8 + 1] = 1.0;
    off[8 + 2] = 1.0;
    // The offset 0.3 lies in bin floor((0.3 + 0.5) * 8) = 6.
    off[12 + 6] = 1.0;
    assert_eq!(&f_og[width..], &off[..]);
    // On the grid, nothing is counted off it.
    let f_on: Vec<f32> =
        Vec::try_from(net_og.level_features(&(&q / 255.0)).flatten(0, -1)).unwrap();
    assert_eq!(&f_on[width + 12..], &[0f32; 8][..]);
    assert_eq!(f_on[width + 8], 7.0);
    // Off-grid counts without level statistics are refused by name.
    let e = MultiHead::new(&HeadsConfig { levels: 0, ..og }, Device::Cpu)
        .err()
        .unwrap();
    assert!(e.to_string().contains("off_grid"), "{e}");
    // Out of range: refused by name.
    let bad = HeadsConfig { levels: 300, ..cfg };
    let e = MultiHead::new(&bad, Device::Cpu).err().unwrap();
    assert!(e.to_string().contains("levels"), "{e}");
}

#[test]
fn denoisers_beat_the_identity_and_cdd_needs_a_classifier() {
    let _g = torch_lock();
    let set = toy_set();
    let cfg = DenoiseConfig {
        net: DenoiserConfig {
            depth: 3,
            width: 8,
            channels: 1,
        },
        epochs: 10,
        batch_size: 32,
        lr: 3e-3,
        lambda: 0.1,
        shift: 1,
        max_examples: 0,
        balance_families: false,
        seed: 0,
    };
    let (d, hist) =
        denoise::train_denoiser(&cfg, DenoiseMode::Pixel, &set, None, Device::Cpu, |_| {}).unwrap();
    assert!(hist.pixel.last().unwrap() < &hist.pixel[0]);
    let est = denoise::estimate(Some(&d), &set.x_adv);
    let p_id = denoise::psnr(&set.x_adv, &set.x_clean)
        .mean(Kind::Double)
        .double_value(&[]);
    let p_d = denoise::psnr(&est, &set.x_clean)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(p_d > p_id + 1.0, "denoiser {p_d} dB vs identity {p_id} dB");
    let e = denoise::train_denoiser(
        &cfg,
        DenoiseMode::ClassDiscriminative,
        &set,
        None,
        Device::Cpu,
        |_| {},
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("classifier"), "{e}");
    // Saved and read back, it estimates the same images.
    let dir = tempfile::tempdir().unwrap();
    d.save(dir.path()).unwrap();
    let back = rustworthy_red::nets::Denoiser::load(dir.path(), Device::Cpu).unwrap();
    let est2 = denoise::estimate(Some(&back), &set.x_adv);
    assert!(est.equal(&est2));
    // A bad config is refused by name.
    let mut bad = cfg.clone();
    bad.net.depth = 1;
    assert!(
        denoise::train_denoiser(&bad, DenoiseMode::Pixel, &set, None, Device::Cpu, |_| {})
            .err()
            .expect("depth 1 must be refused")
            .to_string()
            .contains("depth")
    );
    // The class-discriminative objective trains with a classifier and records its term.
    let clf = rustworthy_testkit::seeded_model(rustworthy_testkit::tiny_spec(Arch::Mlp, 16), 1);
    let mut c2 = cfg.clone();
    c2.epochs = 2;
    let (_, h2) = denoise::train_denoiser(
        &c2,
        DenoiseMode::ClassDiscriminative,
        &set,
        Some(&denoise::Aligner::Surrogate(&clf)),
        Device::Cpu,
        |_| {},
    )
    .unwrap();
    assert_eq!(h2.align.len(), 2);
    assert!(h2.align.iter().all(|a| a.is_finite() && *a >= 0.0));
    assert!(clf.parameters().iter().all(|(_, p)| {
        let g = p.grad();
        !g.defined() || g.abs().max().double_value(&[]) == 0.0
    }));
}

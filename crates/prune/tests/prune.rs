//! Pruning: exact sparsity, pruned weights staying zero through training, unlearning and
//! checkpoint round trips, IMP rewinding, and clear errors for bad input.

use rustworthy_core::progress::ProgressMode;
use rustworthy_core::Error;
use rustworthy_data::Dataset;
use rustworthy_models::{Arch, Model};
use rustworthy_prune::methods::one_shot_masks;
use rustworthy_prune::scores::{self, masks_from_scores};
use rustworthy_prune::{prune, train_dense, PruneConfig, PruneData, PruneMethod, Scope};
use rustworthy_testkit::{seeded_model, sgd_recipe, synthetic_split, tiny_spec, torch_lock};
use rustworthy_train::mask::{
    apply_masks, check_masks, load_masks, mask_stats, prunable, save_masks, weight_sparsity, Masks,
};
use rustworthy_train::{evaluate, TrainConfig};
use tch::{Device, Kind, Tensor};

fn recipe(epochs: usize) -> TrainConfig {
    sgd_recipe(epochs, 32, 0.05, 3)
}

fn data() -> (Dataset, Dataset) {
    synthetic_split(80, 28, 0.3, 9, 240)
}

fn init(arch: Arch) -> Model {
    seeded_model(tiny_spec(arch, 28), 1)
}

fn kept(m: &Masks) -> i64 {
    m.values()
        .map(|t| t.sum(Kind::Int64).int64_value(&[]))
        .sum()
}

#[test]
fn masks_hit_the_requested_sparsity_exactly() {
    let _torch = torch_lock();
    let m = init(Arch::Lenet);
    let total: i64 = prunable(&m).iter().map(|(_, t)| t.numel() as i64).sum();
    for s in [0.0, 0.2, 0.5, 0.9, 0.95, 0.99] {
        let g = masks_from_scores(&scores::magnitude(&m), s, Scope::Global, None).unwrap();
        let want = (((1.0 - s) * total as f64).round() as i64).max(1);
        assert_eq!(kept(&g), want, "global {s}");
        let l =
            masks_from_scores(&scores::random(&m, 4).unwrap(), s, Scope::Layerwise, None).unwrap();
        for (name, t) in &l {
            let n = t.numel() as i64;
            let k = t.sum(Kind::Int64).int64_value(&[]);
            assert_eq!(
                k,
                (((1.0 - s) * n as f64).round() as i64).clamp(1, n),
                "{name} at {s}"
            );
        }
    }
    // Magnitude keeps exactly the largest weights.
    let g = masks_from_scores(&scores::magnitude(&m), 0.9, Scope::Global, None).unwrap();
    let mut min_kept = f64::INFINITY;
    let mut max_pruned = 0f64;
    for (name, w) in prunable(&m) {
        let a = w.abs();
        let mk = &g[&name];
        if mk.sum(Kind::Float).double_value(&[]) > 0.0 {
            min_kept = min_kept.min(a.masked_select(&mk.ne(0.0)).min().double_value(&[]));
        }
        if mk.eq(0.0).any().int64_value(&[]) != 0 {
            max_pruned = max_pruned.max(a.masked_select(&mk.eq(0.0)).max().double_value(&[]));
        }
    }
    assert!(min_kept >= max_pruned);
    // SynFlow and GraSP also hit it exactly.
    let (train, _) = data();
    let sf = scores::synflow_masks(&m, 0.9, Scope::Global, 20).unwrap();
    assert_eq!(kept(&sf), ((0.1 * total as f64).round()) as i64);
    let gr = masks_from_scores(
        &scores::grasp(&m, &train, 64).unwrap(),
        0.9,
        Scope::Global,
        None,
    )
    .unwrap();
    assert_eq!(kept(&gr), ((0.1 * total as f64).round()) as i64);
}

#[test]
fn pruned_weights_stay_zero_through_training_and_checkpoints() {
    let _torch = torch_lock();
    let (train, test) = data();
    let d = PruneData {
        train: &train,
        test: &test,
    };
    let dense = train_dense(&init(Arch::Lenet), &d, &recipe(2), 0).unwrap();
    for method in [
        PruneMethod::Omp,
        PruneMethod::Snip,
        PruneMethod::Synflow,
        PruneMethod::Hydra,
        PruneMethod::Bip,
    ] {
        let mut cfg = PruneConfig::new(method, 0.8);
        cfg.finetune_epochs = 1;
        cfg.score_epochs = 1;
        cfg.synflow_rounds = 10;
        let o = prune(&cfg, &dense, &d, &recipe(2)).unwrap();
        assert!(
            (o.sparsity - 0.8).abs() < 1e-3,
            "{method:?}: {}",
            o.sparsity
        );
        assert!(
            o.zero_fraction >= o.sparsity - 1e-9,
            "{method:?}: weights not zero where pruned"
        );
        // Checkpoint round trip keeps the zeros and the masks.
        let dir = tempfile::tempdir().unwrap();
        o.model.save(dir.path().join("m.safetensors")).unwrap();
        save_masks(&dir.path().join("k.safetensors"), &o.masks).unwrap();
        let mut back = Model::new(o.model.spec.clone(), Device::Cpu).unwrap();
        back.load(dir.path().join("m.safetensors")).unwrap();
        let mk = load_masks(&dir.path().join("k.safetensors"), Device::Cpu).unwrap();
        assert_eq!(mask_stats(&mk).1, o.sparsity);
        assert!(weight_sparsity(&back, &mk) >= o.sparsity - 1e-9);
    }
}

#[test]
fn imp_rounds_rewind_and_prune_twenty_percent() {
    let _torch = torch_lock();
    let (train, test) = data();
    let d = PruneData {
        train: &train,
        test: &test,
    };
    let dense = train_dense(&init(Arch::Mlp), &d, &recipe(2), 1).unwrap();
    // The rewind point is the weights after epoch 1, not the init nor the trained ones.
    let w = |m: &Model| m.parameters()[0].1.copy();
    assert!(!w(&dense.rewind).equal(&w(&dense.init)));
    assert!(!w(&dense.rewind).equal(&w(&dense.trained)));
    // Rewinding restores exactly the saved weights on the surviving entries and zero elsewhere.
    let masks =
        masks_from_scores(&scores::magnitude(&dense.trained), 0.2, Scope::Global, None).unwrap();
    let back = rustworthy_prune::methods::rewound(&dense, &masks).unwrap();
    for ((name, b), (_, r)) in back
        .parameters()
        .iter()
        .zip(dense.rewind.parameters().iter())
    {
        match masks.get(name) {
            Some(mk) => assert!(b.equal(&(r * mk))),
            None => assert!(b.equal(r)),
        }
    }
    // Training from the rewind point with the same recipe for 1 epoch is what epoch 2 did.
    let mut cfg = PruneConfig::new(PruneMethod::Imp, 0.5);
    cfg.rewind_epoch = 1;
    let o = prune(&cfg, &dense, &d, &recipe(2)).unwrap();
    let sp: Vec<f64> = o
        .rounds
        .iter()
        .map(|r| (r.sparsity * 1000.0).round() / 1000.0)
        .collect();
    assert_eq!(sp, vec![0.2, 0.36, 0.488, 0.5]);
    assert!(o.zero_fraction >= 0.5 - 1e-9);
    let acc = evaluate(&o.model, &test, 256).unwrap().accuracy;
    assert!(acc > 80.0, "IMP 50% on an easy task: {acc}");
}

#[test]
fn prune_then_unlearn_keeps_the_mask() {
    let _torch = torch_lock();
    use rustworthy_unlearn::methods::ff::FfConfig;
    use rustworthy_unlearn::methods::ft::FtConfig;
    use rustworthy_unlearn::{ForgetSpec, MethodConfig, Scenario, UnlearnCtx, UnlearnData};
    let (train, test) = data();
    let d = PruneData {
        train: &train,
        test: &test,
    };
    let dense = train_dense(&init(Arch::Lenet), &d, &recipe(2), 0).unwrap();
    let masks = one_shot_masks(
        PruneMethod::Omp,
        &dense.trained,
        Some(&train),
        0.9,
        Scope::Global,
        0,
    )
    .unwrap();
    let model = dense.trained;
    apply_masks(&model, &masks).unwrap();
    let idx: Vec<usize> = (0..train.len()).collect();
    let s = Scenario::resolve(
        &ForgetSpec::Random { fraction: 0.1 },
        &idx,
        &train.labels_vec(),
        4,
        1,
    )
    .unwrap();
    let ud = UnlearnData {
        forget: train.subset(&s.forget).unwrap(),
        retain: train.subset(&s.retain).unwrap(),
        test: test.shallow_clone(),
        scenario: s,
    };
    let r = recipe(2);
    let ctx = UnlearnCtx {
        data: &ud,
        seed: 0,
        progress: ProgressMode::Quiet,
        original: &r,
        masks: Some(&masks),
        dist: None,
    };
    for cfg in [
        MethodConfig::Ft(FtConfig::default()),
        MethodConfig::Ff(FfConfig::default()),
        MethodConfig::default_for("retrain").unwrap(),
        MethodConfig::default_for("salun").unwrap(),
        MethodConfig::default_for("be").unwrap(),
    ] {
        let (m, _, _) = rustworthy_unlearn::pipeline::run_method(&model, &cfg, &ctx).unwrap();
        let z = weight_sparsity(&m, &masks);
        let want = mask_stats(&masks).1;
        assert!(
            z >= want - 1e-12,
            "{}: only {z} of the weights are zero, the mask removes {want}",
            cfg.name()
        );
    }
}

#[test]
fn bad_input_is_named() {
    let _torch = torch_lock();
    let m = init(Arch::Lenet);
    let field = |e: Error| match e {
        Error::Config { field, .. } => field,
        o => panic!("{o}"),
    };
    for s in [1.0, -0.1, f64::NAN, 1.5] {
        assert_eq!(
            field(masks_from_scores(&scores::magnitude(&m), s, Scope::Global, None).unwrap_err()),
            "sparsity"
        );
    }
    assert_eq!(
        field("pruney".parse::<PruneMethod>().unwrap_err()),
        "method"
    );
    assert_eq!(field("per-neuron".parse::<Scope>().unwrap_err()), "scope");
    let mut bad = Masks::new();
    bad.insert(
        "features.9.weight".into(),
        Tensor::ones([3, 3], (Kind::Float, Device::Cpu)),
    );
    let e = check_masks(&m, &bad).unwrap_err().to_string();
    assert!(
        e.contains("unknown layer") && e.contains("features.9.weight"),
        "{e}"
    );
    let name = prunable(&m)[0].0.clone();
    let mut wrong = Masks::new();
    wrong.insert(name, Tensor::ones([2, 2], (Kind::Float, Device::Cpu)));
    assert!(matches!(check_masks(&m, &wrong), Err(Error::Shape { .. })));
    let mut cfg = PruneConfig::new(PruneMethod::Imp, 0.5);
    cfg.rewind_epoch = 5;
    assert_eq!(field(cfg.validate(&recipe(2)).unwrap_err()), "rewind_epoch");
    let mut cfg = PruneConfig::new(PruneMethod::Bip, 0.5);
    cfg.bip_gamma = 0.0;
    assert_eq!(field(cfg.validate(&recipe(2)).unwrap_err()), "bip_gamma");
    // A corrupt mask file is refused.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    std::fs::write(&p, b"not a mask").unwrap();
    assert!(load_masks(&p, Device::Cpu).is_err());
}

#[test]
fn structured_pruning_removes_whole_channels() {
    let _torch = torch_lock();
    let (train, test) = data();
    let d = PruneData {
        train: &train,
        test: &test,
    };
    let dense = train_dense(&init(Arch::Lenet), &d, &recipe(2), 0).unwrap();
    for method in [PruneMethod::Omp, PruneMethod::Bip] {
        let mut cfg = PruneConfig::new(method, 0.5);
        cfg.structured = true;
        cfg.scope = Scope::Layerwise;
        cfg.finetune_epochs = 4;
        cfg.finetune_lr = 0.05;
        cfg.score_epochs = 4;
        cfg.bip_weight_lr = 0.05;
        let o = prune(&cfg, &dense, &d, &recipe(2)).unwrap();
        // Every prunable layer but the classifier, each with half its channels removed whole.
        let layers = prunable(&o.model);
        assert_eq!(o.masks.len(), layers.len() - 1, "{method:?}");
        assert!(!o.masks.contains_key(&layers.last().unwrap().0));
        for (name, m) in &o.masks {
            let out = m.size()[0];
            let rows = m.reshape([out, -1]);
            let per = rows.sum_dim_intlist(1, false, Kind::Float);
            let width = rows.size()[1] as f64;
            let full = per.eq(width).sum(Kind::Int64).int64_value(&[]);
            let empty = per.eq(0.0).sum(Kind::Int64).int64_value(&[]);
            assert_eq!(
                full + empty,
                out,
                "{method:?} {name}: a channel is partly pruned"
            );
            assert_eq!(
                empty,
                ((0.5 * out as f64).round() as i64).min(out - 1),
                "{method:?} {name}"
            );
        }
        assert!(o.zero_fraction >= o.sparsity - 1e-12);
        eprintln!(
            "{method:?} structured 50%: test accuracy {}",
            o.test_accuracy
        );
        assert!(
            o.test_accuracy > 50.0,
            "{method:?} structured 50%: {}",
            o.test_accuracy
        );
    }
    let mut bad = PruneConfig::new(PruneMethod::Snip, 0.5);
    bad.structured = true;
    assert!(
        matches!(bad.validate(&recipe(2)), Err(Error::Config { field, .. }) if field == "structured")
    );
}

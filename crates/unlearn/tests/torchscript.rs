//! Unlearning a TorchScript model (the committed fixture tests/fixtures/torchscript/small-cnn.pt,
//! written by scripts/ref/export_torchscript.py --fixture): every method that needs only the
//! loss and the parameters runs on it, and BE, which needs the penultimate features and the
//! classifier layer, refuses it with a clear error before changing anything.

use rustworthy_core::progress::ProgressMode;
use rustworthy_data::Dataset;
use rustworthy_models::{Model, ScriptOptions};
use rustworthy_testkit::{quiet, sgd_recipe, small_cnn_fixture, synthetic_split, torch_lock};
use rustworthy_train::{evaluate, fit, TrainConfig};
use rustworthy_unlearn::methods::common::head_param_names;
use rustworthy_unlearn::pipeline::run_method;
use rustworthy_unlearn::{ForgetSpec, MethodConfig, Scenario, UnlearnCtx, UnlearnData};
use tch::Device;

fn script_model() -> Model {
    Model::from_torchscript(
        small_cnn_fixture(),
        ScriptOptions::new(1, (12, 12)),
        Device::Cpu,
    )
    .unwrap()
}

fn recipe() -> TrainConfig {
    sgd_recipe(12, 16, 0.05, 7)
}

fn data(train: &Dataset, test: &Dataset) -> UnlearnData {
    let labels = train.labels_vec();
    let idx: Vec<usize> = (0..train.len()).collect();
    let scenario =
        Scenario::resolve(&ForgetSpec::Random { fraction: 0.2 }, &idx, &labels, 4, 3).unwrap();
    UnlearnData {
        forget: train.subset(&scenario.forget).unwrap(),
        retain: train.subset(&scenario.retain).unwrap(),
        test: test.subset(&(0..test.len()).collect::<Vec<_>>()).unwrap(),
        scenario,
    }
}

#[test]
fn script_models_unlearn_except_with_feature_methods() {
    let _torch = torch_lock();
    tch::set_num_threads(1);
    let (train, test) = synthetic_split(50, 12, 0.35, 5, 140);
    tch::manual_seed(1);
    let mut model = script_model();
    let cfg = recipe();
    fit(&mut model, &train, None, &cfg, &quiet()).unwrap();
    let acc = evaluate(&model, &test, 256).unwrap().accuracy;
    assert!(acc > 40.0, "the script model did not train: {acc:.1}%");
    // The classifier layer of a script model is found by shape, as FF needs it.
    assert_eq!(
        head_param_names(&model).unwrap(),
        ("head.weight".to_string(), "head.bias".to_string())
    );

    let data = data(&train, &test);
    let ctx = UnlearnCtx {
        data: &data,
        seed: 3,
        progress: ProgressMode::Quiet,
        original: &cfg,
        masks: None,
        dist: None,
    };
    for name in MethodConfig::NAMES {
        let mut overrides = serde_json::Map::new();
        if !matches!(*name, "retrain" | "ff" | "iu" | "neggrad-plus" | "scrub") {
            overrides.insert("epochs".into(), 1.into());
        }
        let mcfg = MethodConfig::with_overrides(name, &overrides)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let before = model.try_clone().unwrap();
        match run_method(&model, &mcfg, &ctx) {
            Ok((m, _, _)) => {
                assert!(m.is_torchscript(), "{name}");
                assert_ne!(*name, "be", "be must refuse a TorchScript model");
                let a = evaluate(&m, &data.test, 256).unwrap().accuracy;
                eprintln!("{name}: test accuracy {a:.1}% (original {acc:.1}%)");
                assert!(a.is_finite(), "{name}");
                // The method worked through the module's parameters.
                let moved = m
                    .parameters()
                    .iter()
                    .zip(model.parameters())
                    .any(|((_, a), (_, b))| !a.equal(&b));
                assert!(moved, "{name} left every parameter unchanged");
            }
            Err(e) => {
                let msg = e.to_string();
                assert_eq!(*name, "be", "{name} failed on a TorchScript model: {msg}");
                assert!(msg.contains("be") && msg.contains("TorchScript"), "{msg}");
                // Refused before any work: the method's own copy is untouched too.
                let mut copy = model.try_clone().unwrap();
                let method = mcfg.build().unwrap();
                assert!(method.unlearn(&mut copy, &ctx).is_err());
                for ((n, a), (_, b)) in copy.state_dict().iter().zip(before.state_dict()) {
                    assert!(a.equal(&b), "be changed {n} before refusing");
                }
            }
        }
    }
}

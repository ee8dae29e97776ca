//! Attacks and adversarial training on a TorchScript model (the committed fixture
//! tests/fixtures/torchscript/small-cnn.pt, written by scripts/ref/export_torchscript.py
//! --fixture): PGD lowers its accuracy, and every adversarial-training method (GradAlign and
//! Fast-BAT backpropagate through input gradients) trains it.

use rustworthy_models::{Model, ScriptOptions};
use rustworthy_robust::ThreatModel;
use rustworthy_robust::{attack_dataset, AdvMethod, AdvTrainConfig, AdvTrainer, Pgd, RunOptions};
use rustworthy_testkit::task::{data, recipe, SIZE};
use rustworthy_testkit::{quiet, small_cnn_fixture, torch_lock};
use rustworthy_train::{evaluate, fit, fit_with};
use tch::Device;

fn script_model() -> Model {
    Model::from_torchscript(
        small_cnn_fixture(),
        ScriptOptions::new(1, (SIZE as i64, SIZE as i64)),
        Device::Cpu,
    )
    .unwrap()
}

fn pgd_accuracy(m: &Model, test: &rustworthy_data::Dataset, eps: f64) -> f64 {
    let opts = RunOptions {
        batch_size: 100,
        seed: 3,
        ..RunOptions::default()
    };
    attack_dataset(
        &Pgd::new(ThreatModel::linf(eps).unwrap(), 10),
        m,
        test,
        &opts,
    )
    .unwrap()
    .summary
    .robust_accuracy
}

#[test]
fn attacks_and_adversarial_training_work_on_script_models() {
    let _torch = torch_lock();
    let (train, test) = data();
    tch::manual_seed(2);
    let mut m = script_model();
    fit(&mut m, &train, None, &recipe(4), &quiet()).unwrap();
    let clean = evaluate(&m, &test, 256).unwrap().accuracy;
    assert!(clean > 50.0, "clean accuracy {clean:.1}%");
    let robust = pgd_accuracy(&m, &test, 0.2);
    assert!(robust < clean, "PGD {robust:.1}% vs clean {clean:.1}%");

    for method in [
        AdvMethod::Pgd,
        AdvMethod::Fast,
        AdvMethod::GradAlign,
        AdvMethod::FastBat,
        AdvMethod::Trades,
    ] {
        let mut cfg = AdvTrainConfig::new(method, 0.1);
        cfg.monitor.samples = 0;
        let mut hook = AdvTrainer::new(cfg, None, 1).unwrap();
        tch::manual_seed(2);
        let mut m = script_model();
        fit_with(&mut m, &train, None, &recipe(1), &quiet(), &mut hook)
            .unwrap_or_else(|e| panic!("{method:?}: {e}"));
        let acc = evaluate(&m, &test, 256).unwrap().accuracy;
        assert!(acc.is_finite(), "{method:?}");
    }
}

//! Attack and adversarial-training step loops never make the host wait for the device: the
//! number of synchronizing operators (counted on the CPU, where libtorch reports the same
//! operators it would run on a GPU) does not grow with the number of steps. Early stopping is
//! the one exception by design: dropping fooled samples needs to know which they are.

use rustworthy_accel::SyncWatch;
use rustworthy_robust::{
    AdvMethod, AdvTrainConfig, AdvTrainer, Apgd, AttackLoss, Pgd, ThreatModel,
};
use rustworthy_testkit::task::{data, fresh_model, recipe, trained};
use rustworthy_testkit::{quiet, torch_lock};
use rustworthy_train::fit_with;

fn syncs(f: impl FnOnce()) -> u64 {
    let w = SyncWatch::start();
    f();
    w.stop()
}

#[test]
fn attack_step_loops_do_not_synchronize() {
    let _torch = torch_lock();
    let (m, _, test) = trained();
    let x = test.images.narrow(0, 0, 64);
    let y = test.labels.narrow(0, 0, 64);
    let t = ThreatModel::linf(0.1).unwrap();
    let count = |steps: usize, apgd: bool| {
        syncs(|| {
            if apgd {
                let mut a = Apgd::new(t, steps, AttackLoss::Ce);
                a.early_stop = false;
                a.run(&m, &x, &y, None, rustworthy_robust::Criterion::Misclassify)
                    .unwrap();
            } else {
                let mut p = Pgd::new(t, steps);
                p.early_stop = false;
                p.run(&m, &x, &y, None, rustworthy_robust::Criterion::Misclassify)
                    .unwrap();
            }
        })
    };
    for apgd in [false, true] {
        let (few, many) = (count(5, apgd), count(40, apgd));
        assert_eq!(few, many, "apgd={apgd}: {few} vs {many}");
    }
    // With early stopping PGD reads the fooled set back after each step.
    let mut p = Pgd::new(t, 10);
    p.early_stop = true;
    let n = syncs(|| {
        p.run(&m, &x, &y, None, rustworthy_robust::Criterion::Misclassify)
            .unwrap();
    });
    assert!(n > 10, "{n}");
}

#[test]
fn adversarial_training_steps_do_not_synchronize() {
    let _torch = torch_lock();
    let (train, _) = data();
    for method in [
        AdvMethod::Pgd,
        AdvMethod::Fast,
        AdvMethod::GradAlign,
        AdvMethod::FastBat,
        AdvMethod::Trades,
    ] {
        let mut counts = Vec::new();
        for bs in [10usize, 100] {
            let mut cfg = AdvTrainConfig::new(method, 0.1);
            cfg.monitor.samples = 0;
            let mut hook = AdvTrainer::new(cfg, None, 1).unwrap();
            let mut r = recipe(1);
            r.batch_size = bs;
            let mut m = fresh_model(3);
            counts.push(syncs(|| {
                fit_with(&mut m, &train, None, &r, &quiet(), &mut hook).unwrap();
            }));
        }
        assert_eq!(counts[0], counts[1], "{method:?}: {counts:?}");
    }
}

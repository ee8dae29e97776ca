//! Zeroth-order black-box attacks on the shared attack interface: success close to white-box
//! PGD, exact per-sample query accounting within the budget, threat-model feasibility, and named
//! errors for bad settings.

use rustworthy_robust::attack::Attack;
use rustworthy_robust::{attack_dataset, Pgd, RunOptions, ThreatModel};
use rustworthy_testkit::{task, torch_lock};
use rustworthy_zo::{ZoAttack, ZoAttackKind};

fn opts() -> RunOptions {
    RunOptions {
        batch_size: 50,
        seed: 1,
        ..Default::default()
    }
}

#[test]
fn zo_attacks_come_close_to_pgd_with_exact_queries() {
    let _torch = torch_lock();
    let (model, _, test) = task::trained();
    let (model, test) = (&model, &test);
    let eps = 0.15;
    let threat = ThreatModel::linf(eps).unwrap();
    let pgd = attack_dataset(&Pgd::new(threat, 20), model, test, &opts())
        .unwrap()
        .summary;
    assert!(pgd.attacked > 50, "the model must classify most samples");
    for att in [
        ZoAttack::zoo(threat, 3000),
        ZoAttack::sign_sgd(threat, 3000),
        ZoAttack::nes(threat, 3000),
        ZoAttack {
            momentum: 0.9,
            ..ZoAttack::nes(threat, 3000)
        },
    ] {
        let run = attack_dataset(&att, model, test, &opts()).unwrap();
        let s = &run.summary;
        assert!(
            s.success_rate >= pgd.success_rate - 10.0,
            "{}: {:.1}% vs PGD {:.1}%",
            att.name(),
            s.success_rate,
            pgd.success_rate
        );
        assert_eq!(s.unverified_successes, 0);
        assert!(
            s.max_violation <= 1e-5,
            "{}: violation {}",
            att.name(),
            s.max_violation
        );
        // Every attacked sample paid 1 query for the start plus whole iterations, within the
        // budget.
        let cost = att.cost_per_iteration();
        let p = &run.per_sample;
        for i in 0..p.queries.len() {
            if !p.clean_correct[i] {
                continue;
            }
            let q = p.queries[i];
            assert!(q <= 3000, "{}: {q} queries over the budget", att.name());
            assert_eq!(
                (q - 1) % cost,
                0,
                "{}: {q} is not 1 + k * {cost}",
                att.name()
            );
            if !p.success[i] {
                assert!(
                    q + cost > 3000,
                    "{}: stopped early without success",
                    att.name()
                );
            }
        }
        assert!(s.median_queries_success.unwrap() < 3000.0);
    }
}

#[test]
fn zo_attacks_refuse_bad_settings_by_name() {
    let _torch = torch_lock();
    let (model, _, test) = task::trained();
    let (model, test) = (&model, &test);
    let threat = ThreatModel::linf(0.1).unwrap();
    let (x, y) = test.batch(&[0, 1, 2]);
    let msg = |a: ZoAttack| a.perturb(model, &x, &y, None).err().unwrap().to_string();
    let mut a = ZoAttack::nes(threat, 1000);
    a.kind = ZoAttackKind::Nes { q: 7, sigma: 1e-3 };
    assert!(msg(a).contains("even"));
    let mut a = ZoAttack::sign_sgd(threat, 1000);
    a.kind = ZoAttackKind::SignSgd { q: 10, mu: 0.0 };
    assert!(msg(a).contains("mu"));
    let mut a = ZoAttack::zoo(threat, 1000);
    a.kind = ZoAttackKind::Zoo { coords: 0, h: 1e-3 };
    assert!(msg(a).contains("coords"));
    // 128 coordinates cost 257 queries per iteration.
    assert!(msg(ZoAttack::zoo(threat, 200)).contains("queries"));
    let mut a = ZoAttack::nes(threat, 1000);
    a.lr = f64::NAN;
    assert!(msg(a).contains("lr"));
    let mut a = ZoAttack::nes(threat, 1000);
    a.momentum = 1.0;
    assert!(msg(a).contains("momentum"));
    // Out-of-box inputs are refused before any query.
    let bad = &x * 3.0 - 1.0;
    assert!(ZoAttack::nes(threat, 1000)
        .perturb(model, &bad, &y, None)
        .is_err());
}

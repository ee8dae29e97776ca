//! The tofu-synth generator (TOFU's split sizes and fields, determinism, disjoint splits, the
//! JSON round trip and TOFU's own JSON-lines files) and the benchmark procedure end to end on a
//! micro configuration.

use rustworthy_llm::bench::{self, ModelSource, TofuBenchConfig};
use rustworthy_llm::llama::LoraConfig;
use rustworthy_llm::relearn::{RelearnConfig, RelearnOptimizer, RelearnSource};
use rustworthy_llm::tofu::{generate, Benchmark, SynthConfig};
use rustworthy_llm::tune::FinetuneConfig;
use rustworthy_llm::unlearn::{LlmMethod, LlmUnlearnConfig};
use rustworthy_llm::workflow::{self, EvalRun, RelearnRun, ScoreRun, UnlearnRun};
use rustworthy_testkit::torch_lock;
use std::collections::HashSet;

#[test]
fn tofu_synth_has_tofus_splits_and_fields() {
    let b = generate(&SynthConfig::tofu()).unwrap();
    let sizes = [
        ("full", 4000),
        ("forget01", 40),
        ("forget05", 200),
        ("forget10", 400),
        ("retain99", 3960),
        ("retain95", 3800),
        ("retain90", 3600),
        ("holdout01", 40),
        ("holdout05", 200),
        ("holdout10", 400),
        ("retain_perturbed", 400),
        ("real_authors", 100),
        ("world_facts", 117),
    ];
    for (name, n) in sizes {
        assert_eq!(b.split(name).unwrap().len(), n, "{name}");
    }
    let q = |s: &str| -> HashSet<String> {
        b.split(s)
            .unwrap()
            .iter()
            .map(|x| x.question.clone())
            .collect()
    };
    assert!(q("forget10").is_disjoint(&q("retain90")));
    assert!(q("holdout10").is_disjoint(&q("full")));
    assert!(q("real_authors").is_disjoint(&q("full")));
    assert!(q("forget01").is_subset(&q("forget05")) && q("forget05").is_subset(&q("forget10")));
    assert!(q("retain_perturbed").is_subset(&q("retain90")));
    assert_eq!(q("full").len(), 4000, "every question is distinct");
    for item in b.splits.values().flatten() {
        assert_eq!(item.perturbed_answer.len(), 5);
        assert!(!item.paraphrased_answer.is_empty() && !item.paraphrased_question.is_empty());
        assert!(item.perturbed_answer.iter().all(|p| p != &item.answer));
        let distinct: HashSet<&String> = item.perturbed_answer.iter().collect();
        assert_eq!(distinct.len(), 5, "{:?}", item.perturbed_answer);
        // Perturbed answers are of near-equal length.
        for p in &item.perturbed_answer {
            let d = p.len() as i64 - item.answer.len() as i64;
            assert!(d.abs() <= 12, "{} vs {}", item.answer, p);
        }
    }
    // Deterministic: the same config gives the same items; another seed does not.
    let again = generate(&SynthConfig::tofu()).unwrap();
    assert_eq!(again.splits, b.splits);
    let other = generate(&SynthConfig {
        seed: 1,
        ..SynthConfig::tofu()
    })
    .unwrap();
    assert_ne!(other.splits["full"], b.splits["full"]);
}

#[test]
fn benchmarks_round_trip_and_tofu_json_lines_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let b = generate(&SynthConfig::mini()).unwrap();
    b.write(dir.path()).unwrap();
    let back = Benchmark::read(dir.path()).unwrap();
    assert_eq!(back.splits, b.splits);
    assert_eq!(back.config, b.config);
    // TOFU's files are JSON lines with the same field names.
    let tofu = tempfile::tempdir().unwrap();
    let line = r#"{"question": "Q?", "answer": "A.", "paraphrased_answer": "A!", "perturbed_answer": ["B.", "C."], "paraphrased_question": "Q again?"}"#;
    std::fs::write(
        tofu.path().join("forget10_perturbed.json"),
        format!("{line}\n{line}\n"),
    )
    .unwrap();
    let t = Benchmark::read(tofu.path()).unwrap();
    assert_eq!(t.split("forget10_perturbed").unwrap().len(), 2);
    assert_eq!(
        t.split("forget10_perturbed").unwrap()[0]
            .perturbed_answer
            .len(),
        2
    );
    // A damaged line is named.
    std::fs::write(
        tofu.path().join("bad.json"),
        format!("{line}\n{{\"question\": 3}}\n"),
    )
    .unwrap();
    let e = Benchmark::read(tofu.path()).err().unwrap().to_string();
    assert!(e.contains("bad.json") && e.contains("line 2"), "{e}");
    std::fs::remove_file(tofu.path().join("bad.json")).unwrap();
    std::fs::write(
        tofu.path().join("empty.json"),
        r#"[{"question": "", "answer": "x"}]"#,
    )
    .unwrap();
    let e = Benchmark::read(tofu.path()).err().unwrap().to_string();
    assert!(e.contains("empty question"), "{e}");
    let e = t.split("forget99").err().unwrap().to_string();
    assert!(e.contains("no split `forget99`"), "{e}");
    // Out-of-range sizes are refused.
    assert!(generate(&SynthConfig {
        authors: 5,
        ..SynthConfig::mini()
    })
    .is_err());
}

#[test]
fn the_benchmark_procedure_runs_end_to_end() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let layers = 2;
    let method = |m| {
        let mut c = LlmUnlearnConfig::defaults(m, layers);
        c.lr = 1e-3;
        c.epochs = 5;
        c.batch_size = 8;
        c
    };
    let cfg = TofuBenchConfig {
        preset: "micro".into(),
        synth: SynthConfig {
            authors: 10,
            holdout_authors: 1,
            utility_authors: 1,
            world_facts: 10,
            retain_perturbed: 20,
            seed: 0,
        },
        model: ModelSource::Scratch {
            hidden: 64,
            layers: layers as i64,
            heads: 4,
            kv_heads: 2,
            context: 64,
        },
        finetune: FinetuneConfig {
            epochs: 30,
            batch_size: 16,
            lr: 2e-3,
            weight_decay: 0.01,
            warmup: 0.05,
            clip: 1.0,
            seed: 0,
        },
        forget: "forget10".into(),
        train_paraphrases: true,
        seeds: vec![0],
        methods: vec![method(LlmMethod::Ga), method(LlmMethod::Npo)],
        lora: None,
        relearn: Some(RelearnConfig {
            items: 5,
            source: RelearnSource::Forget,
            steps: 20,
            batch_size: 5,
            optimizer: RelearnOptimizer::FirstOrder { lr: 1e-3 },
            seed: 0,
        }),
    };
    let r = bench::run(&cfg, Some(dir.path()), tch::Device::Cpu, &|_| {}).unwrap();
    let s = &r.seeds[0];
    assert!(
        s.target_full_exact >= 0.9,
        "the target answers {} of full",
        s.target_full_exact
    );
    assert!(s.target.forget.rouge_l_recall > 0.95);
    assert!(s.oracle.forget.rouge_l_recall < s.target.forget.rouge_l_recall);
    // Gradient ascent forgets: the forget answers are no longer reproduced.
    let ga = &s.methods[0];
    assert!(ga.eval.forget.rouge_l_recall < 0.5 * s.target.forget.rouge_l_recall);
    assert!(ga.eval.forget.prob < 0.1 * s.target.forget.prob);
    for f in [
        "report.json",
        "table.md",
        "table.csv",
        "data/full.json",
        "seed0/target/model.safetensors",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    // A rerun loads the fine-tuned models instead of training them again.
    let again = bench::run(&cfg, Some(dir.path()), tch::Device::Cpu, &|_| {}).unwrap();
    assert_eq!(again.seeds[0].target_full_exact, s.target_full_exact);
    assert_eq!(
        again.seeds[0].target.forget_truth_ratios,
        s.target.forget_truth_ratios
    );
    let md = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
    assert!(md.contains("| npo |") && md.contains("| target |"), "{md}");
    assert!(dir.path().join("plot.png").exists());
    // The relearning attack measures the same 15 held-out forget items on every model.
    let control = s.oracle_relearn.as_ref().unwrap();
    assert_eq!(control.measured.len(), 15);
    assert_eq!(control.steps, 20);
    for m in &s.methods {
        let r = m.relearn.as_ref().unwrap();
        assert_eq!(r.measured, control.measured);
        assert!(r.rouge_before.is_finite() && r.rouge_after.is_finite());
    }
    assert!(md.contains(" → "), "{md}");

    // The fine-tuned models are model folders the `llm` commands read.
    let data = dir.path().join("data");
    let target = dir.path().join("seed0/target");
    let eval = |model: &std::path::Path, oracle: Option<std::path::PathBuf>, out: &str| {
        workflow::eval_run(
            &EvalRun {
                model: model.to_path_buf(),
                data: data.clone(),
                forget: "forget10".into(),
                holdout: None,
                oracle,
            },
            &dir.path().join(out),
            false,
        )
        .unwrap()
    };
    let oracle_eval = eval(&dir.path().join("seed0/oracle"), None, "eval-oracle");
    assert_eq!(
        oracle_eval.eval.forget_truth_ratios,
        s.oracle.forget_truth_ratios
    );
    let target_eval = eval(
        &target,
        Some(dir.path().join("eval-oracle/report.json")),
        "eval-target",
    );
    assert_eq!(
        target_eval.eval.forget_truth_ratios,
        s.target.forget_truth_ratios
    );
    assert_eq!(target_eval.forget_quality, Some(s.target_forget_quality));
    // An output folder with a report is not replaced unless asked.
    let again = workflow::eval_run(
        &EvalRun {
            model: target.clone(),
            data: data.clone(),
            forget: "forget10".into(),
            holdout: None,
            oracle: None,
        },
        &dir.path().join("eval-target"),
        false,
    );
    assert!(again.err().unwrap().to_string().contains("finished run"));
    // Scoring: the target knows the forget answers better than the oracle.
    let score = |model: &std::path::Path, out: &str| {
        workflow::score_run(
            &ScoreRun {
                model: model.to_path_buf(),
                data: data.join("forget10.json"),
                split: None,
                batch_size: 7,
            },
            &dir.path().join(out),
            false,
        )
        .unwrap()
    };
    let ts = score(&target, "score-target");
    let os = score(&dir.path().join("seed0/oracle"), "score-oracle");
    assert_eq!(ts.items.len(), 20);
    assert!(
        ts.mean_nll < 0.5 * os.mean_nll,
        "{} vs {}",
        ts.mean_nll,
        os.mean_nll
    );
    let nll: f64 = -ts.items[3].logprobs.iter().sum::<f64>();
    assert!((nll - ts.items[3].nll).abs() < 1e-9);
    // A PEFT adapter on the target, merged into a model folder: the adapted model.
    let adapter = dir.path().join("target-adapter");
    let mut adapted = workflow::LmBundle::load(&target, tch::Device::Cpu).unwrap();
    tch::manual_seed(3);
    adapted
        .model
        .add_lora(LoraConfig {
            rank: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into(), "down_proj".into()],
        })
        .unwrap();
    tch::no_grad(|| {
        for (_, t) in adapted.model.trainable().variables() {
            let _ = t.shallow_clone().g_add_(&(t.randn_like() * 0.05));
        }
    });
    adapted.model.save_peft_adapter(&adapter).unwrap();
    let merged = workflow::merge_adapter_run(
        &workflow::MergeAdapterRun {
            model: target.clone(),
            adapter: adapter.clone(),
        },
        &dir.path().join("target-merged"),
        false,
    )
    .unwrap();
    assert_eq!(merged.lora.rank, 2);
    assert!(merged.adapter_parameters > 0);
    assert!(dir.path().join("target-merged/report.json").exists());
    let back =
        workflow::LmBundle::load(&dir.path().join("target-merged"), tch::Device::Cpu).unwrap();
    let ids = tch::Tensor::from_slice(&[1i64, 5, 9, 2, 7, 3]).view([1, 6]);
    let (a, b) = tch::no_grad(|| {
        (
            adapted.model.forward(&ids, None, None, None).unwrap(),
            back.model.forward(&ids, None, None, None).unwrap(),
        )
    });
    let err = (&a - &b).abs().max().double_value(&[]);
    assert!(
        err < 1e-4,
        "merged folder differs from the adapted model by {err}"
    );
    // Unlearning a model folder, then attacking the result.
    let mut ga = method(LlmMethod::Ga);
    ga.seed = 0;
    workflow::unlearn_run(
        &UnlearnRun {
            model: target.clone(),
            data: data.clone(),
            forget: "forget10".into(),
            retain: "retain90".into(),
            method: ga,
            lora: None,
        },
        &dir.path().join("ga"),
        false,
    )
    .unwrap();
    let ga_eval = eval(&dir.path().join("ga"), None, "eval-ga");
    // The same method, seed and data as the benchmark's GA row: the same model.
    assert_eq!(
        ga_eval.eval.forget_truth_ratios,
        s.methods[0].eval.forget_truth_ratios
    );
    let r = workflow::relearn_run(
        &RelearnRun {
            model: dir.path().join("ga"),
            data: data.clone(),
            forget: "forget10".into(),
            retain: "retain90".into(),
            attack: RelearnConfig {
                seed: 0,
                ..cfg.relearn.clone().unwrap()
            },
        },
        &dir.path().join("ga-relearned"),
        false,
    )
    .unwrap();
    let bench_ga = s.methods[0].relearn.as_ref().unwrap();
    assert_eq!(r.rouge_before, bench_ga.rouge_before);
    assert_eq!(r.rouge_after, bench_ga.rouge_after);
    assert!(dir.path().join("ga-relearned/tokenizer.json").exists());
}

//! Zeroth-order fine-tuning (MeZO and its variants) and LoRA adapters on a small random Llama:
//! MeZO's update against the same update computed by hand, bit-identical weights from one seed,
//! the loss going down, LoRA starting as the base model and training only its adapters.

use rustworthy_llm::llama::{Arch, CausalLm, LlamaConfig, LoraConfig};
use rustworthy_llm::score::{batch_logits, label_logprobs, pooled_nll, scored_logprobs, QaBatch};
use rustworthy_llm::zo_bench::{sentiment_task, weights_digest, yes_no_task};
use rustworthy_llm::zo_tune::{zo_tune, ZoOptimizer, ZoTuneConfig};
use rustworthy_testkit::torch_lock;
use tch::{Device, Tensor};

fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 40,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 32,
        tie_word_embeddings: false,
        qkv_bias: false,
        o_bias: false,
        arch: Default::default(),
    }
}

fn tiny(seed: i64) -> CausalLm {
    tch::manual_seed(seed);
    CausalLm::new(tiny_config(), Device::Cpu).unwrap()
}

/// A fixed task: after the prompt `[1, k]` the answer is `[k + 10, 2]`.
fn batch(step: usize) -> QaBatch {
    let items: Vec<(Vec<i64>, Vec<i64>)> = (0..8)
        .map(|i| {
            let k = 3 + ((step * 8 + i) % 20) as i64;
            (vec![1, k], vec![k + 10, 2])
        })
        .collect();
    QaBatch::new(&items, 0, 32, Device::Cpu).unwrap()
}

fn loss(m: &CausalLm, b: &QaBatch) -> f64 {
    tch::no_grad(|| pooled_nll(&batch_logits(m, b).unwrap(), &b.labels).double_value(&[]))
}

#[test]
fn one_mezo_step_is_the_projected_gradient_along_the_seeded_direction() {
    let _t = torch_lock();
    let mut m = tiny(0);
    let before: Vec<(String, Tensor)> = {
        let mut v: Vec<_> = m
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut cfg = ZoTuneConfig::mezo(1);
    cfg.lr = 1e-2;
    cfg.eps = 1e-2;
    let (logs, taken) = zo_tune(&mut m, &mut |s| Ok(batch(s)), &cfg, 1, None).unwrap();
    assert_eq!(taken, 1);
    let g = logs[0].projected_grad;
    // Rebuild the step by hand: the step seed is the first draw of the run's generator.
    use rand::{Rng, SeedableRng};
    let seed = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed).gen::<u64>() >> 1;
    let fresh = tiny(0);
    let mut plus = tiny(0);
    let mut minus = tiny(0);
    tch::manual_seed(seed as i64);
    let zs: Vec<Tensor> = before.iter().map(|(_, t)| t.randn_like()).collect();
    for (m2, sign) in [(&mut plus, 1.0), (&mut minus, -1.0)] {
        let p = m2.named_parameters();
        tch::no_grad(|| {
            for ((n, _), z) in before.iter().zip(&zs) {
                let _ = p[n].shallow_clone().g_add_(&(z * (sign * cfg.eps)));
            }
        });
    }
    let b = batch(1);
    let want_g = (loss(&plus, &b) - loss(&minus, &b)) / (2.0 * cfg.eps);
    assert!(
        (g - want_g).abs() < 1e-3 * want_g.abs().max(1.0),
        "{g} vs {want_g}"
    );
    let after = m.named_parameters();
    let f = fresh.named_parameters();
    for ((n, _), z) in before.iter().zip(&zs) {
        let want = &f[n] - z * (cfg.lr * g);
        let err = (&after[n] - want).abs().max().double_value(&[]);
        assert!(err < 1e-5, "{n}: {err}");
    }
}

#[test]
fn zeroth_order_runs_repeat_bit_for_bit_and_lower_the_loss() {
    let _t = torch_lock();
    let b0 = batch(0);
    for opt in [
        ZoOptimizer::Mezo,
        ZoOptimizer::Momentum,
        ZoOptimizer::Adam,
        ZoOptimizer::Sign,
    ] {
        let run = |two_sided: bool| {
            let mut m = tiny(1);
            let mut cfg = ZoTuneConfig::mezo(300);
            cfg.optimizer = opt;
            cfg.two_sided = two_sided;
            (cfg.lr, cfg.eps) = match opt {
                ZoOptimizer::Mezo | ZoOptimizer::Momentum => (2e-3, 1e-3),
                ZoOptimizer::Adam | ZoOptimizer::Sign => (1e-3, 1e-3),
            };
            if opt == ZoOptimizer::Momentum {
                cfg.lr = 2e-4;
            }
            cfg.weight_decay = 1e-4;
            zo_tune(&mut m, &mut |s| Ok(batch(s)), &cfg, 50, None).unwrap();
            m
        };
        let a = run(true);
        let b = run(true);
        assert_eq!(
            weights_digest(&a),
            weights_digest(&b),
            "{opt:?}: two runs differ"
        );
        let start = loss(&tiny(1), &b0);
        let end = loss(&a, &b0);
        assert!(end < 0.95 * start, "{opt:?}: loss {start} -> {end}");
        let one = run(false);
        assert!(loss(&one, &b0) < start, "{opt:?} one-sided");
    }
    // Out-of-range settings are refused.
    let mut m = tiny(1);
    let mut bad = ZoTuneConfig::mezo(1);
    bad.eps = 0.0;
    assert!(zo_tune(&mut m, &mut |s| Ok(batch(s)), &bad, 1, None).is_err());
}

/// Adam on the adapters for `steps` steps: the loss falls by 10% or more and no base weight
/// moves (compared with `base`).
fn train_adapters_only(m: &CausalLm, base: &CausalLm, b: &QaBatch, steps: usize) {
    let mut opt = {
        use tch::nn::OptimizerConfig;
        tch::nn::Adam::default().build(m.trainable(), 1e-2).unwrap()
    };
    let start = loss(m, b);
    for _ in 0..steps {
        let l = pooled_nll(&batch_logits(m, b).unwrap(), &b.labels);
        opt.zero_grad();
        l.backward();
        opt.step();
    }
    let end = loss(m, b);
    assert!(end < 0.9 * start, "LoRA training: {start} -> {end}");
    for (n, t) in m.named_parameters() {
        assert!(t.equal(&base.named_parameters()[&n]), "{n} moved");
    }
}

#[test]
fn lora_starts_as_the_base_model_and_trains_only_its_adapters() {
    let _t = torch_lock();
    let base = tiny(2);
    let mut m = tiny(2);
    let b = batch(0);
    tch::manual_seed(7);
    m.add_lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    })
    .unwrap();
    let l0 = tch::no_grad(|| batch_logits(&m, &b).unwrap());
    assert!(l0.equal(&tch::no_grad(|| batch_logits(&base, &b).unwrap())));
    // 2 blocks x 3 targets x (A, B).
    assert_eq!(m.trainable().trainable_variables().len(), 12);
    let frozen = m.frozen_copy().unwrap();
    train_adapters_only(&m, &base, &b, 100);
    // The frozen copy kept the adapters it was given.
    assert!(frozen
        .forward(&b.ids, Some(&b.mask), None, None)
        .unwrap()
        .equal(&l0));
    // Zeroth-order training through the adapters.
    let mut z = tiny(2);
    tch::manual_seed(7);
    z.add_lora(LoraConfig::default_qv()).unwrap();
    let mut cfg = ZoTuneConfig::mezo(200);
    cfg.lr = 2e-2;
    cfg.eps = 1e-3;
    zo_tune(&mut z, &mut |s| Ok(batch(s)), &cfg, 0, None).unwrap();
    for (n, t) in z.named_parameters() {
        assert!(
            t.equal(&base.named_parameters()[&n]),
            "{n} moved under LoRA"
        );
    }
    assert!(loss(&z, &b) < loss(&base, &b));
    let bad = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec!["qq_proj".into()],
    };
    let e = tiny(2).add_lora(bad).err().unwrap().to_string();
    assert!(e.contains("qq_proj"), "{e}");
}

fn tiny_gpt2(seed: i64) -> CausalLm {
    tch::manual_seed(seed);
    let cfg = LlamaConfig {
        arch: Arch::Gpt2,
        num_key_value_heads: 4,
        tie_word_embeddings: true,
        qkv_bias: true,
        o_bias: true,
        ..tiny_config()
    };
    CausalLm::new(cfg, Device::Cpu).unwrap()
}

/// GPT-2's Conv1D modules take LoRA adapters: PEFT's default (`c_attn`) when no target is named,
/// `c_proj` naming both projections, training only the adapters, and unknown names refused.
#[test]
fn gpt2_takes_lora_adapters_on_its_conv1d_modules() {
    let _t = torch_lock();
    let base = tiny_gpt2(5);
    let b = batch(0);
    let mut m = tiny_gpt2(5);
    tch::manual_seed(9);
    m.add_lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec![],
    })
    .unwrap();
    assert_eq!(m.lora_config().unwrap().targets, vec!["c_attn".to_string()]);
    assert_eq!(m.trainable().trainable_variables().len(), 4);
    let mut all = tiny_gpt2(5);
    all.add_lora(LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec!["c_proj".into(), "mlp.c_fc".into()],
    })
    .unwrap();
    let names: Vec<String> = all.trainable().variables().into_keys().collect();
    assert_eq!(names.len(), 12, "{names:?}");
    for part in ["attn.c_proj.lora_A", "mlp.c_proj.lora_B", "mlp.c_fc.lora_A"] {
        assert!(names.iter().any(|n| n.contains(part)), "{part}: {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("c_attn")), "{names:?}");
    let l0 = tch::no_grad(|| batch_logits(&m, &b).unwrap());
    assert!(l0.equal(&tch::no_grad(|| batch_logits(&base, &b).unwrap())));
    train_adapters_only(&m, &base, &b, 60);
    // Merged on save (Conv1D weights are [in, out]): the same logits.
    let adapted = tch::no_grad(|| batch_logits(&m, &b).unwrap());
    let dir = tempfile::tempdir().unwrap();
    m.save_hf_dir(dir.path()).unwrap();
    let merged = CausalLm::from_hf_dir(dir.path(), Device::Cpu, tch::Kind::Float).unwrap();
    let err = (tch::no_grad(|| batch_logits(&merged, &b).unwrap()) - adapted)
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 1e-4, "merged GPT-2 weights differ by {err}");
    let e = tiny_gpt2(5)
        .add_lora(LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: vec!["q_proj".into()],
        })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("q_proj") && e.contains("GPT-2"), "{e}");
}

#[test]
fn the_yes_no_task_is_balanced_and_disjoint() {
    let (train, test) = yes_no_task(200, 100, 0).unwrap();
    assert_eq!((train.len(), test.len()), (200, 100));
    assert_eq!(test.iter().filter(|q| q.answer == "Yes").count(), 50);
    assert_eq!(train.iter().filter(|q| q.answer == "Yes").count(), 100);
    let word = |q: &str| q.split('"').nth(1).unwrap().to_string();
    let tw: std::collections::HashSet<String> = train.iter().map(|q| word(&q.question)).collect();
    assert!(test.iter().all(|q| !tw.contains(&word(&q.question))));
    assert!(
        yes_no_task(300, 200, 0).is_err(),
        "more questions than words allow"
    );
    assert!(yes_no_task(3, 2, 0).is_err(), "odd sizes");
    // Sentiment: balanced, and no sentiment word of a test review is in a training review.
    let (train, test) = sentiment_task(240, 160, 0).unwrap();
    assert_eq!(test.iter().filter(|q| q.answer == "Yes").count(), 80);
    assert_eq!(train.iter().filter(|q| q.answer == "Yes").count(), 120);
    let words = |q: &str| -> Vec<String> {
        q.split(['.', '"', ' '])
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let seen: std::collections::HashSet<String> =
        train.iter().flat_map(|q| words(&q.question)).collect();
    for q in &test {
        // "The film was W1. The plot was W2." : the words after "was".
        let w = words(&q.question);
        for (i, x) in w.iter().enumerate() {
            if x == "was" {
                assert!(!seen.contains(&w[i + 1]), "{} is in training", w[i + 1]);
            }
        }
    }
    assert!(sentiment_task(3, 2, 0).is_err());
}

#[test]
fn scoring_only_answer_positions_gives_the_full_log_probabilities() {
    let _t = torch_lock();
    let m = tiny(3);
    let b = batch(2);
    let (a, ma) = tch::no_grad(|| label_logprobs(&batch_logits(&m, &b).unwrap(), &b.labels));
    let (c, mc) = tch::no_grad(|| scored_logprobs(&m, &b).unwrap());
    assert!(ma.equal(&mc));
    let err = (a - c).abs().max().double_value(&[]);
    assert!(err < 1e-5, "{err}");
}

#[test]
fn lora_adapters_are_merged_when_saved() {
    let _t = torch_lock();
    let mut m = tiny(4);
    tch::manual_seed(8);
    m.add_lora(LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec!["q_proj".into(), "o_proj".into(), "up_proj".into()],
    })
    .unwrap();
    // Move the adapters off zero so the merge matters.
    tch::no_grad(|| {
        for (_, t) in m.trainable().variables() {
            let _ = t.shallow_clone().g_add_(&(t.randn_like() * 0.1));
        }
    });
    let b = batch(1);
    let adapted = tch::no_grad(|| batch_logits(&m, &b).unwrap());
    let dir = tempfile::tempdir().unwrap();
    m.save_hf_dir(dir.path()).unwrap();
    let merged = CausalLm::from_hf_dir(dir.path(), Device::Cpu, tch::Kind::Float).unwrap();
    let back = tch::no_grad(|| batch_logits(&merged, &b).unwrap());
    let err = (back - adapted).abs().max().double_value(&[]);
    assert!(err < 1e-4, "merged weights differ by {err}");
}

#[test]
fn a_qwen2_gguf_keeps_its_qk_rows() {
    use rustworthy_llm::gguf::{write_f32, Gguf, Value};
    let _t = torch_lock();
    let mut cfg = tiny(5).config.clone();
    cfg.qkv_bias = true;
    // GGUF stores the epsilon as f32.
    cfg.rms_norm_eps = f64::from(1e-5f32);
    tch::manual_seed(5);
    let m = CausalLm::new(cfg.clone(), Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (n, t) in m.named_parameters() {
            if n.ends_with(".bias") {
                let _ = t.shallow_clone().g_add_(&(t.randn_like() * 0.1));
            }
        }
    });
    let p = m.named_parameters();
    let mut names: Vec<(String, Tensor)> = vec![
        (
            "token_embd.weight".into(),
            p["model.embed_tokens.weight"].shallow_clone(),
        ),
        (
            "output_norm.weight".into(),
            p["model.norm.weight"].shallow_clone(),
        ),
        ("output.weight".into(), p["lm_head.weight"].shallow_clone()),
    ];
    let map = [
        ("attn_norm.weight", "input_layernorm.weight"),
        ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"),
        ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_q.bias", "self_attn.q_proj.bias"),
        ("attn_k.bias", "self_attn.k_proj.bias"),
        ("attn_v.bias", "self_attn.v_proj.bias"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("ffn_norm.weight", "post_attention_layernorm.weight"),
        ("ffn_gate.weight", "mlp.gate_proj.weight"),
        ("ffn_up.weight", "mlp.up_proj.weight"),
        ("ffn_down.weight", "mlp.down_proj.weight"),
    ];
    for i in 0..cfg.num_hidden_layers {
        for (g, h) in map {
            names.push((
                format!("blk.{i}.{g}"),
                p[&format!("model.layers.{i}.{h}")].shallow_clone(),
            ));
        }
    }
    let meta = vec![
        ("general.architecture", Value::Str("qwen2".into())),
        (
            "qwen2.block_count",
            Value::U32(cfg.num_hidden_layers as u32),
        ),
        ("qwen2.embedding_length", Value::U32(cfg.hidden_size as u32)),
        (
            "qwen2.feed_forward_length",
            Value::U32(cfg.intermediate_size as u32),
        ),
        (
            "qwen2.attention.head_count",
            Value::U32(cfg.num_attention_heads as u32),
        ),
        (
            "qwen2.attention.head_count_kv",
            Value::U32(cfg.num_key_value_heads as u32),
        ),
        ("qwen2.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("qwen2.rope.freq_base", Value::F32(10000.0)),
        (
            "qwen2.context_length",
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        ("qwen2.vocab_size", Value::U32(cfg.vocab_size as u32)),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen2.gguf");
    let refs: Vec<(&str, &Tensor)> = names.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_f32(&path, &meta, &refs).unwrap();
    let loaded = CausalLm::from_gguf(&Gguf::open(&path).unwrap(), Device::Cpu).unwrap();
    assert_eq!(loaded.config, cfg);
    let b = batch(2);
    let a = tch::no_grad(|| batch_logits(&m, &b).unwrap());
    let c = tch::no_grad(|| batch_logits(&loaded, &b).unwrap());
    assert!(
        a.equal(&c),
        "a Qwen2 GGUF must load with its q/k rows as stored"
    );
}

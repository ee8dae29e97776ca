//! `rustworthy-fuzz`: structure-aware mutation fuzzing of every file reader rustworthy has.
//!
//! Each target starts from valid files (written here by the library's own writers, or committed
//! under `tests/fixtures/fuzz/` where only PyTorch or numpy writes the format) and mutates them
//! the way damaged or hostile files differ from good ones: flipped bits, header words replaced
//! by extreme values (lengths, shapes, offsets, dtype codes), truncation, trailing bytes, NaN
//! payloads, spliced chunks, and for text formats deep nesting, absurd numbers and deleted
//! characters. Every input must be either accepted or refused with an error that names the file;
//! a panic, a refusal that does not name the file, or a read slower than `--slow` seconds is a
//! finding. Findings are written to `--save DIR` (default `runs/fuzz-findings`) and the exit code
//! is 1.
//!
//! `rustworthy-fuzz --runs 4000` (seed 0: the same inputs every time, about 80 s on 2 cores) is the run of
//! the test command; `rustworthy-fuzz --runs 10000 --seed S` is the release check. TorchScript
//! archives get two targets: `torchscript` damages the file as a whole (the archive's CRCs
//! catch most of it), `torchscript-entry` damages one entry (code, pickles, tensor data) and
//! packs the archive again with valid CRCs, so libtorch's own parsers see the damage.

use rustworthy::config::{all_presets, RunConfig};
use rustworthy::core::{Result, SeedRng};
use rustworthy::data::cifar::{read_cifar_file, write_cifar_file, CifarKind, CifarRaw};
use rustworthy::data::idx::{read_idx, write_idx_u8};
use rustworthy::datasets::load_pair;
use rustworthy::models::{Arch, Model, ModelSpec};
use rustworthy::train::checkpoint::{Checkpoint, CheckpointMeta, FORMAT};
use rustworthy::train::optim::{OptimConfig, Optimizer};
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

type Reader = Box<dyn Fn(&Path) -> Result<()>>;

/// One reader under test.
struct Target {
    name: &'static str,
    /// The mutated file's name inside the target's folder.
    file: &'static str,
    /// Valid inputs the mutations start from.
    seeds: Vec<Vec<u8>>,
    /// Text formats also get text mutations.
    text: bool,
    /// A zip archive whose entries are mutated one at a time and packed again with valid CRCs,
    /// so the damage reaches the reader behind the archive's checksums.
    repack: bool,
    /// Reads the file at the given path.
    read: Reader,
}

fn fixture(name: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/fuzz");
    let p = root.join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fuzz seed {}: {e}", p.display()))
}

/// Bytes of a file written by `write` into `dir/name`.
fn written(dir: &Path, name: &str, write: impl FnOnce(&Path) -> Result<()>) -> Vec<u8> {
    let p = dir.join(name);
    write(&p).unwrap_or_else(|e| panic!("writing fuzz seed {name}: {e}"));
    std::fs::read(&p).unwrap()
}

/// The model and optimizer of the checkpoint targets (a 3-class MLP, SGD with momentum).
fn checkpointed() -> Result<(Model, Optimizer)> {
    let m = Model::new(
        ModelSpec::fashion_mnist(Arch::Mlp).with_num_classes(3),
        tch::Device::Cpu,
    )?;
    let cfg = OptimConfig::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 5e-4,
    };
    let o = Optimizer::new(cfg, m.parameters())?;
    Ok((m, o))
}

/// The manifest the RED targets read against (the mini preset's dataset).
fn red_manifest() -> rustworthy::red::generate::Manifest {
    let cfg = rustworthy::red::bench::preset("fmnist-red-mini").expect("a known preset");
    rustworthy::red::generate::Manifest::new(&cfg.data, [1, 28, 28], 10)
}

fn targets(work: &Path) -> Vec<(Target, PathBuf)> {
    let seeds_dir = work.join("seeds");
    std::fs::create_dir_all(&seeds_dir).unwrap();
    let d = seeds_dir.as_path();
    let pixels: Vec<u8> = (0..48).map(|i| (i * 37 % 256) as u8).collect();
    let idx_raw = written(d, "a-idx3-ubyte", |p| {
        write_idx_u8(p, &[3, 4, 4], &pixels, false)
    });
    let idx_gz = written(d, "b-idx3-ubyte.gz", |p| {
        write_idx_u8(p, &[3, 4, 4], &pixels, true)
    });
    let gguf = written(d, "m.gguf", |p| {
        use rustworthy::llm::gguf::{write_f32, Value};
        let w = tch::Tensor::arange(64, (tch::Kind::Float, tch::Device::Cpu)).reshape([2, 32]);
        let b = tch::Tensor::ones([32], (tch::Kind::Float, tch::Device::Cpu));
        write_f32(
            p,
            &[
                ("general.architecture", Value::Str("llama".into())),
                ("llama.block_count", Value::U32(1)),
                ("llama.rope.freq_base", Value::F32(1e5)),
                (
                    "tokenizer.ggml.tokens",
                    Value::Array(vec![Value::Str("a".into()), Value::Str("b".into())]),
                ),
                ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
            ],
            &[("blk.0.attn_q.weight", &w), ("blk.0.attn_norm.weight", &b)],
        )
    });
    let idx_labels = written(d, "c-idx1-ubyte", |p| {
        write_idx_u8(p, &[3], &[1, 0, 2], false)
    });
    let cifar_px: Vec<u8> = (0..2 * 3072).map(|i| (i % 251) as u8).collect();
    let cifar = written(d, "data_batch_1.bin", |p| {
        write_cifar_file(p, CifarKind::Cifar10, &cifar_px, &[3, 7])
    });
    let st_data = written(d, "data.safetensors", |p| {
        let x = tch::Tensor::from_slice(&(0..96).map(|i| (i * 5 % 256) as u8).collect::<Vec<u8>>())
            .reshape([6, 1, 4, 4]);
        let y = tch::Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2]);
        tch::Tensor::write_safetensors(&[("x", &x), ("y", &y)], p)?;
        Ok(())
    });
    tch::manual_seed(0);
    let spec = ModelSpec::fashion_mnist(Arch::Lenet);
    let weights = written(d, "model.safetensors", |p| {
        Model::new(spec.clone(), tch::Device::Cpu)?.save(p)
    });
    let sidecar = fixture("model.json");
    // A tiny GPT-2 and a tiny Llama in Hugging Face folders, a tokenizer.json and QA items.
    let lm_dir = d.join("lm");
    let lm_config = {
        use rustworthy::llm::llama::{Arch, CausalLm, LlamaConfig};
        let cfg = |arch| LlamaConfig {
            arch,
            vocab_size: 11,
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: if arch == Arch::Gpt2 { 2 } else { 1 },
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 16,
            tie_word_embeddings: arch == Arch::Gpt2,
            qkv_bias: arch == Arch::Gpt2,
            o_bias: arch == Arch::Gpt2,
        };
        let mut configs = Vec::new();
        let mut weights = Vec::new();
        for (i, arch) in [Arch::Llama, Arch::Gpt2].into_iter().enumerate() {
            let dir = lm_dir.join(i.to_string());
            CausalLm::new(cfg(arch), tch::Device::Cpu)
                .and_then(|m| m.save_hf_dir(&dir))
                .unwrap_or_else(|e| panic!("writing the LM fuzz seed: {e}"));
            configs.push(std::fs::read(dir.join("config.json")).unwrap());
            weights.push(std::fs::read(dir.join("model.safetensors")).unwrap());
        }
        (configs, weights)
    };
    // A PEFT LoRA adapter on the GPT-2 seed (its config and factors), read onto that model.
    let peft_base = lm_dir.join("1");
    let peft = {
        use rustworthy::llm::llama::{CausalLm, LoraConfig};
        let a = lm_dir.join("adapter");
        CausalLm::from_hf_dir(&peft_base, tch::Device::Cpu, tch::Kind::Float)
            .and_then(|mut m| {
                m.add_lora(LoraConfig {
                    rank: 2,
                    alpha: 4.0,
                    targets: vec!["c_attn".into(), "c_proj".into()],
                })?;
                m.save_peft_adapter(&a)
            })
            .unwrap_or_else(|e| panic!("writing the PEFT fuzz seed: {e}"));
        (
            std::fs::read(a.join("adapter_config.json")).unwrap(),
            std::fs::read(a.join("adapter_model.safetensors")).unwrap(),
        )
    };
    let read_peft = move |p: &Path| -> Result<()> {
        let mut m = rustworthy::llm::llama::CausalLm::from_hf_dir(
            &peft_base,
            tch::Device::Cpu,
            tch::Kind::Float,
        )?;
        m.load_peft_adapter(p.parent().unwrap_or(Path::new(".")))
    };
    let tokenizer = written(d, "tokenizer.json", |p| {
        rustworthy::llm::tokenizer::Tokenizer::word_level(["Who wrote it ? Jane did ."])?.save(p)
    });
    let qa_items = br#"[{"question": "Who?", "answer": "Jane.", "paraphrased_answer": "It was Jane.", "perturbed_answer": ["Tom.", "Ann."]}]"#.to_vec();
    let presets: Vec<Vec<u8>> = all_presets()
        .into_iter()
        .filter(|p| !p.toml.is_empty())
        .map(|p| p.toml.as_bytes().to_vec())
        .collect();
    let (run_presets, bench_presets): (Vec<Vec<u8>>, Vec<Vec<u8>>) = presets
        .into_iter()
        .partition(|t| RunConfig::from_toml(std::str::from_utf8(t).unwrap(), "seed").is_ok());

    // A checkpoint of a small MLP: the optimizer-state file is fuzzed under a sidecar without
    // checksums (so its parser is reached), the sidecar itself with checksums.
    tch::manual_seed(0);
    let (mlp, opt) = checkpointed().unwrap();
    let ck_dir = d.join("checkpoint");
    let ck = Checkpoint::new(&ck_dir);
    let meta = CheckpointMeta {
        format: FORMAT,
        model_spec: mlp.spec.clone(),
        config: serde_json::json!({}),
        epoch: 1,
        optimizer_steps: 3,
        seeds: Default::default(),
        metrics: serde_json::json!({}),
        history: Vec::new(),
        model_file: String::new(),
        optim_file: None,
        checksums: Default::default(),
    };
    ck.save(&mlp, &opt, meta).unwrap();
    let ck_sidecar = std::fs::read(ck_dir.join("checkpoint.json")).unwrap();
    let ck_optim = std::fs::read(ck_dir.join("optim-e0001.safetensors")).unwrap();
    let ck_model = std::fs::read(ck_dir.join("model-e0001.safetensors")).unwrap();
    let mut unsummed: serde_json::Value = serde_json::from_slice(&ck_sidecar).unwrap();
    unsummed["checksums"] = serde_json::json!({});
    let ck_sidecar_unsummed = serde_json::to_vec_pretty(&unsummed).unwrap();
    let restore = |p: &Path| -> Result<()> {
        let (mut m, mut o) = checkpointed()?;
        Checkpoint::new(p.parent().unwrap())
            .restore(&mut m, &mut o)
            .map(|_| ())
    };

    // A tiny DDPM folder (unet.json + model.safetensors) and a saliency mask for it.
    let ddpm_cfg = rustworthy::diffusion::unet::UNetConfig {
        in_channels: 1,
        resolution: 4,
        ch: 4,
        ch_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![2],
        dropout: 0.1,
        num_classes: 3,
        groups: 2,
    };
    let ddpm_dir = d.join("ddpm");
    tch::manual_seed(0);
    let ddpm = rustworthy::diffusion::unet::CondUNet::new(&ddpm_cfg, tch::Device::Cpu).unwrap();
    rustworthy::diffusion::io::save_unet(&ddpm_dir, &ddpm).unwrap();
    let ddpm_json = std::fs::read(ddpm_dir.join("unet.json")).unwrap();
    let ddpm_weights = std::fs::read(ddpm_dir.join("model.safetensors")).unwrap();
    let ddpm_mask = written(d, "mask.safetensors", |p| {
        let mask: rustworthy::train::UpdateMasks = ddpm
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.ge(0.0).to_kind(tch::Kind::Float)))
            .collect();
        rustworthy::diffusion::unlearn::save_mask(p, &mask)
    });
    let read_ddpm = |p: &Path| -> Result<()> {
        rustworthy::diffusion::io::load_unet(p.parent().unwrap(), tch::Device::Cpu).map(|_| ())
    };

    let data_reader = |p: &Path| -> Result<()> {
        load_pair(&format!("file:{}", p.display()), None, Some(0.5), 0).map(|_| ())
    };
    // Hugging Face folders, Llama and GPT-2: the config mutated beside intact weights, and the
    // weights beside an intact config.
    let red_json = serde_json::to_vec_pretty(&red_manifest()).unwrap();
    let red_shard = written(&seeds_dir, "shard.safetensors", |p| {
        let n = 2;
        let img = Tensor::linspace(0.0, 1.0, n * 784, (Kind::Float, tch::Device::Cpu))
            .view([n, 1, 28, 28]);
        let lab = |v: i64| Tensor::full([n], v, (Kind::Int64, tch::Device::Cpu));
        let named: Vec<(&str, Tensor)> = vec![
            ("x_clean", img.shallow_clone()),
            ("x_adv", (&img + 0.01).clamp(0.0, 1.0)),
            (
                "eps",
                Tensor::full([n], 0.03, (Kind::Float, tch::Device::Cpu)),
            ),
            ("y", lab(3)),
            ("pred_clean", lab(3)),
            ("pred_adv", lab(4)),
            ("success", lab(1)),
            ("family", lab(1)),
            ("norm", lab(0)),
            ("strength", lab(1)),
            ("arch", lab(1)),
            ("activation", lab(2)),
            ("sparsity", lab(0)),
            ("victim", lab(5)),
            ("index", lab(17)),
            ("transfer_pred", lab(-1)),
        ];
        Tensor::write_safetensors(&named, p).map_err(Into::into)
    });
    let mut list: Vec<Target> = Vec::new();
    // Model folders: Hugging Face (config beside weights) and PEFT adapters on the GPT-2 seed.
    for (name, file, seeds, text, peft_dir) in [
        (
            "hf-llama-config",
            "config.json",
            &lm_config.0[0],
            true,
            false,
        ),
        (
            "hf-llama-weights",
            "model.safetensors",
            &lm_config.1[0],
            false,
            false,
        ),
        (
            "hf-gpt2-config",
            "config.json",
            &lm_config.0[1],
            true,
            false,
        ),
        (
            "hf-gpt2-weights",
            "model.safetensors",
            &lm_config.1[1],
            false,
            false,
        ),
        (
            "peft-adapter-config",
            "adapter_config.json",
            &peft.0,
            true,
            true,
        ),
        (
            "peft-adapter-weights",
            "adapter_model.safetensors",
            &peft.1,
            false,
            true,
        ),
    ] {
        let read: Reader = if peft_dir {
            Box::new(read_peft.clone())
        } else {
            Box::new(read_hf_dir)
        };
        list.push(Target {
            name,
            file,
            seeds: vec![seeds.clone()],
            text,
            repack: false,
            read,
        });
    }
    list.extend(vec![
        Target {
            name: "ddpm-config",
            file: "unet.json",
            seeds: vec![ddpm_json.clone()],
            text: true,
            repack: false,
            read: Box::new(read_ddpm),
        },
        Target {
            name: "ddpm-weights",
            file: "model.safetensors",
            seeds: vec![ddpm_weights.clone()],
            text: false,
            repack: false,
            read: Box::new(read_ddpm),
        },
        Target {
            name: "ddpm-mask",
            file: "mask.safetensors",
            seeds: vec![ddpm_mask],
            text: false,
            repack: false,
            read: Box::new(move |p| {
                tch::manual_seed(0);
                let m = rustworthy::diffusion::unet::CondUNet::new(&ddpm_cfg, tch::Device::Cpu)?;
                rustworthy::diffusion::unlearn::load_mask(p, &m).map(|_| ())
            }),
        },
        Target {
            name: "red-shard",
            file: "shard.safetensors",
            seeds: vec![red_shard.clone()],
            text: false,
            repack: false,
            read: Box::new(move |p| {
                rustworthy::red::generate::read_shard(p, &red_manifest()).map(|_| ())
            }),
        },
        Target {
            name: "red-manifest",
            file: "red.json",
            seeds: vec![red_json.clone()],
            text: true,
            repack: false,
            read: Box::new(|p| {
                let dir = p.parent().expect("a file in a folder");
                rustworthy::red::generate::Manifest::read(dir).map(|_| ())
            }),
        },
        Target {
            name: "idx",
            file: "images-idx3-ubyte",
            seeds: vec![idx_raw, idx_labels],
            text: false,
            repack: false,
            read: Box::new(|p| read_idx(p).map(|_| ())),
        },
        Target {
            name: "idx-gzip",
            file: "images-idx3-ubyte.gz",
            seeds: vec![idx_gz],
            text: false,
            repack: false,
            read: Box::new(|p| read_idx(p).map(|_| ())),
        },
        Target {
            name: "cifar",
            file: "data_batch_1.bin",
            seeds: vec![cifar],
            text: false,
            repack: false,
            read: Box::new(|p| read_cifar_file(p, CifarKind::Cifar10, &mut CifarRaw::default())),
        },
        Target {
            name: "data-safetensors",
            file: "data.safetensors",
            seeds: vec![st_data],
            text: false,
            repack: false,
            read: Box::new(data_reader),
        },
        Target {
            name: "data-npz",
            file: "data.npz",
            seeds: vec![fixture("data.npz")],
            text: false,
            repack: false,
            read: Box::new(data_reader),
        },
        Target {
            name: "pth",
            file: "state.pth",
            seeds: vec![fixture("state.pth"), fixture("state-legacy.pth")],
            text: false,
            repack: false,
            read: Box::new(|p| rustworthy::models::pth::read_pth_state_dict(p).map(|_| ())),
        },
        Target {
            name: "model-weights",
            file: "model.safetensors",
            seeds: vec![weights.clone()],
            text: false,
            repack: false,
            read: Box::new(|p| {
                rustworthy::train::checkpoint::load_model(p, None, tch::Device::Cpu).map(|_| ())
            }),
        },
        Target {
            name: "model-sidecar",
            file: "model.json",
            seeds: vec![sidecar.clone()],
            text: true,
            repack: false,
            read: Box::new(|p| {
                rustworthy::train::checkpoint::load_model(
                    &p.with_file_name("model.safetensors"),
                    None,
                    tch::Device::Cpu,
                )
                .map(|_| ())
            }),
        },
        Target {
            name: "checkpoint-sidecar",
            file: "checkpoint.json",
            seeds: vec![ck_sidecar.clone()],
            text: true,
            repack: false,
            read: Box::new(restore),
        },
        Target {
            name: "checkpoint-optim",
            file: "optim-e0001.safetensors",
            seeds: vec![ck_optim.clone()],
            text: false,
            repack: false,
            read: Box::new(restore),
        },
        Target {
            name: "torchscript",
            file: "module.pt",
            seeds: vec![script_seed()],
            text: false,
            repack: false,
            read: Box::new(read_script),
        },
        Target {
            name: "torchscript-entry",
            file: "module.pt",
            seeds: vec![script_seed()],
            text: false,
            repack: true,
            read: Box::new(read_script),
        },
        Target {
            name: "gguf",
            file: "model.gguf",
            seeds: vec![gguf],
            text: false,
            repack: false,
            read: Box::new(|p| {
                let g = rustworthy::llm::gguf::Gguf::open(p)?;
                for t in &g.tensors {
                    let _ = g.tensor(&t.name)?;
                }
                Ok(())
            }),
        },
        Target {
            name: "tokenizer-json",
            file: "tokenizer.json",
            seeds: vec![tokenizer],
            text: true,
            repack: false,
            read: Box::new(|p| {
                let t = rustworthy::llm::tokenizer::Tokenizer::from_file(p)?;
                let ids = t.encode("Who wrote it? Jane did. Ünïcode 123", true)?;
                t.decode(&ids, true).map(|_| ())
            }),
        },
        Target {
            name: "qa-items",
            file: "forget10.json",
            seeds: vec![
                qa_items.clone(),
                b"{\"question\": \"Who?\", \"answer\": \"Jane.\"}\n{\"question\": \"When?\", \"answer\": \"1990.\", \"perturbed_answer\": [\"1991.\"]}\n".to_vec(),
            ],
            text: true,
            repack: false,
            read: Box::new(|p| rustworthy::llm::tofu::read_items(p).map(|_| ())),
        },
        Target {
            name: "image-folder",
            file: "x.png",
            seeds: vec![fixture("img.png"), fixture("img.jpg")],
            text: false,
            repack: false,
            read: Box::new(|p| {
                let root = p.parent().unwrap().parent().unwrap();
                rustworthy::data::load_image_folder(root, "fuzz").map(|_| ())
            }),
        },
        Target {
            name: "run-config",
            file: "run.toml",
            seeds: run_presets,
            text: true,
            repack: false,
            read: Box::new(|p| RunConfig::from_file(p)?.validate()),
        },
        Target {
            name: "bench-config",
            file: "bench.toml",
            seeds: bench_presets,
            text: true,
            repack: false,
            read: Box::new(|p| rustworthy::bench_unlearn::BenchConfig::from_file(p)?.validate()),
        },
        Target {
            name: "method-config",
            file: "salun.toml",
            seeds: vec![
                b"epochs = 4\nlr = 0.013\nmask_ratio = 0.5\nforget_first = true\n".to_vec(),
                b"batch_size = 128\nsaliency_batch_size = 64\n".to_vec(),
            ],
            text: true,
            repack: false,
            read: Box::new(|p| {
                rustworthy::unlearn_run::method_config("salun", Some(p), None, None).map(|_| ())
            }),
        },
        Target {
            name: "index-file",
            file: "forget.json",
            seeds: vec![
                b"[1, 5, 9, 200]".to_vec(),
                b"3\n7\n11\n".to_vec(),
                br#"{"spec": {"kind": "random", "fraction": 0.1}, "seed": 1, "forget_classes": [], "forget": [4, 8], "retain": [0, 1, 2]}"#
                    .to_vec(),
            ],
            text: true,
            repack: false,
            read: Box::new(|p| rustworthy::unlearn::scenario::read_index_file(p).map(|_| ())),
        },
    ]);
    list.into_iter()
        .map(|t| {
            let dir = work.join(t.name);
            std::fs::create_dir_all(&dir).unwrap();
            // Companions: a weights file's sidecar, a sidecar's weights file.
            if t.name == "model-weights" {
                std::fs::write(dir.join("model.json"), &sidecar).unwrap();
            }
            if t.name == "model-sidecar" {
                std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
            }
            if t.name.starts_with("checkpoint-") {
                std::fs::write(dir.join("model-e0001.safetensors"), &ck_model).unwrap();
                std::fs::write(dir.join("optim-e0001.safetensors"), &ck_optim).unwrap();
                std::fs::write(dir.join("checkpoint.json"), &ck_sidecar_unsummed).unwrap();
            }
            if t.name == "peft-adapter-config" {
                std::fs::write(dir.join("adapter_model.safetensors"), &peft.1).unwrap();
            }
            if t.name == "peft-adapter-weights" {
                std::fs::write(dir.join("adapter_config.json"), &peft.0).unwrap();
            }
            if t.name == "ddpm-config" {
                std::fs::write(dir.join("model.safetensors"), &ddpm_weights).unwrap();
            }
            if t.name == "ddpm-weights" {
                std::fs::write(dir.join("unet.json"), &ddpm_json).unwrap();
            }
            // A folder's other file, of the same architecture.
            if let Some(rest) = t.name.strip_prefix("hf-") {
                let i = usize::from(rest.starts_with("gpt2"));
                if rest.ends_with("config") {
                    std::fs::write(dir.join("model.safetensors"), &lm_config.1[i]).unwrap();
                } else {
                    std::fs::write(dir.join("config.json"), &lm_config.0[i]).unwrap();
                }
            }
            if t.name == "image-folder" {
                // Two classes; the fuzzed image is class `a`'s only one.
                for class in ["a", "b"] {
                    std::fs::create_dir_all(dir.join(class)).unwrap();
                }
                std::fs::write(dir.join("b").join("y.png"), fixture("img.png")).unwrap();
                let dir = dir.join("a");
                return (t, dir);
            }
            (t, dir)
        })
        .collect()
}

/// Reads the Hugging Face model folder the file is in.
fn read_hf_dir(p: &Path) -> Result<()> {
    let dir = p.parent().unwrap_or(Path::new("."));
    rustworthy::llm::llama::CausalLm::from_hf_dir(dir, tch::Device::Cpu, tch::Kind::Float)
        .map(|_| ())
}

/// The committed TorchScript module (1x12x12 inputs, 4 classes, batch norm and dropout).
fn script_seed() -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/torchscript/small-cnn.pt"),
    )
    .unwrap()
}

fn read_script(p: &Path) -> Result<()> {
    rustworthy::model_source::open_model(
        &rustworthy::model_source::ModelSource::new(p),
        (1, (12, 12)),
        tch::Device::Cpu,
    )
    .map(|_| ())
}

/// One entry of the archive `seed` mutated (code files as text), the archive packed again with
/// valid CRCs. Every entry is as likely as any other.
fn mutate_entry(seed: &[u8], rng: &mut SeedRng) -> Vec<u8> {
    let mut count = 0usize;
    rustworthy::models::script::rewrite_archive_entries(seed, |_, d| {
        count += 1;
        d
    })
    .expect("the seed archive is readable");
    let pick = rng.below(count);
    let mut i = 0usize;
    rustworthy::models::script::rewrite_archive_entries(seed, |name, d| {
        let out = if i == pick {
            mutate(&d, name.ends_with(".py"), rng)
        } else {
            d
        };
        i += 1;
        out
    })
    .expect("the seed archive is readable")
}

/// Values that break length, count, shape and offset fields.
const EXTREME_U64: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    0x8000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    1 << 40,
];

fn mutate(seed: &[u8], text: bool, rng: &mut SeedRng) -> Vec<u8> {
    let mut b = seed.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let n = b.len().max(1);
        match rng.below(if text { 11 } else { 8 }) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    if !b.is_empty() {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                }
            }
            1 | 2 => {
                // A header word (in the first 64 bytes more often) replaced by an extreme value.
                let width = [2usize, 4, 8][rng.below(3)];
                let span = if rng.below(2) == 0 { n.min(64) } else { n };
                let at = rng.below(span);
                let v = EXTREME_U64[rng.below(EXTREME_U64.len())];
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                for k in 0..width {
                    if at + k < b.len() {
                        b[at + k] = bytes[k];
                    }
                }
            }
            3 => b.truncate(rng.below(n)),
            4 => {
                let extra: Vec<u8> = (0..1 + rng.below(64))
                    .map(|_| rng.below(256) as u8)
                    .collect();
                b.extend(extra);
            }
            5 => {
                // A float NaN or infinity payload.
                let payload = [
                    f32::NAN.to_le_bytes(),
                    f32::INFINITY.to_le_bytes(),
                    f32::NEG_INFINITY.to_le_bytes(),
                ][rng.below(3)];
                let at = rng.below(n) & !3;
                for (k, byte) in payload.iter().enumerate() {
                    if at + k < b.len() {
                        b[at + k] = *byte;
                    }
                }
            }
            6 => {
                // Splice: a chunk repeated elsewhere.
                if !b.is_empty() {
                    let from = rng.below(b.len());
                    let len = 1 + rng.below((b.len() - from).min(256));
                    let chunk = b[from..from + len].to_vec();
                    let at = rng.below(b.len());
                    b.splice(at..at, chunk);
                }
            }
            7 => {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] = rng.below(256) as u8;
                }
            }
            8 => {
                // Deep nesting.
                let depth = 1 + rng.below(100_000);
                let (open, close) = if rng.below(2) == 0 {
                    ("[", "]")
                } else {
                    ("{\"a\":", "}")
                };
                let at = rng.below(n);
                let mut nest = open.repeat(depth).into_bytes();
                if rng.below(2) == 0 {
                    nest.extend(close.repeat(depth).into_bytes());
                }
                b.splice(at.min(b.len())..at.min(b.len()), nest);
            }
            9 => {
                // A number replaced by an absurd one.
                let absurd: [&[u8]; 8] = [
                    b"1e999",
                    b"-1",
                    b"nan",
                    b"NaN",
                    b"18446744073709551616",
                    b"-0",
                    b"1e-400",
                    b"9999999999999",
                ];
                if let Some(at) = (0..b.len()).find(|&i| b[i].is_ascii_digit() && rng.below(8) == 0)
                {
                    let end = (at..b.len())
                        .find(|&i| !(b[i].is_ascii_digit() || b[i] == b'.'))
                        .unwrap_or(b.len());
                    b.splice(at..end, absurd[rng.below(absurd.len())].to_vec());
                }
            }
            _ => {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    let len = 1 + rng.below((b.len() - i).min(16));
                    b.drain(i..i + len);
                }
            }
        }
    }
    b
}

#[derive(Default)]
struct Tally {
    runs: u64,
    accepted: u64,
    refused: u64,
    panics: u64,
    unnamed: u64,
    slow: u64,
    slowest_s: f64,
}

thread_local! {
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

struct Args {
    seconds: f64,
    runs: Option<u64>,
    seed: u64,
    slow: f64,
    only: Option<String>,
    save: PathBuf,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut a = Args {
        seconds: 60.0,
        runs: None,
        seed: 0,
        slow: 10.0,
        only: None,
        save: PathBuf::from("runs/fuzz-findings"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--runs" => a.runs = Some(value()?.parse().map_err(|e| format!("--runs: {e}"))?),
            "--seed" => a.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--slow" => a.slow = value()?.parse().map_err(|e| format!("--slow: {e}"))?,
            "--target" => a.only = Some(value()?),
            "--save" => a.save = value()?.into(),
            "-h" | "--help" => {
                return Err(
                    "usage: rustworthy-fuzz [--seconds S | --runs N] [--seed S] \
                            [--target NAME] [--slow SECONDS] [--save DIR]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    if !(a.seconds.is_finite() && a.seconds > 0.0 && a.slow.is_finite() && a.slow > 0.0) {
        return Err("--seconds and --slow must be > 0".into());
    }
    Ok(a)
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    tch::set_num_threads(1);
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string();
        PANIC.with(|p| *p.borrow_mut() = Some(msg));
    }));
    let work = tempfile::tempdir().expect("a temporary folder");
    let mut all = targets(work.path());
    if let Some(o) = &args.only {
        all.retain(|(t, _)| t.name == o);
        if all.is_empty() {
            eprintln!("unknown target `{o}`");
            std::process::exit(2);
        }
    }
    // Every seed must be accepted as it is, or the target tests nothing.
    for (t, dir) in &all {
        for (i, s) in t.seeds.iter().enumerate() {
            let p = dir.join(t.file);
            std::fs::write(&p, s).unwrap();
            if let Err(e) = (t.read)(&p) {
                eprintln!(
                    "{}: seed {i} is refused ({e}); the target is broken",
                    t.name
                );
                std::process::exit(2);
            }
        }
    }
    let per_target = Duration::from_secs_f64(args.seconds / all.len() as f64);
    let mut rng = SeedRng::new(args.seed);
    let mut findings = 0u64;
    println!("target            runs  accepted  refused  panics  unnamed  slow  slowest (s)");
    for (t, dir) in &all {
        let mut tally = Tally::default();
        let started = Instant::now();
        let path = dir.join(t.file);
        let file_name = t.file.to_string();
        loop {
            match args.runs {
                Some(n) if tally.runs >= n => break,
                None if started.elapsed() >= per_target => break,
                _ => {}
            }
            let seed = &t.seeds[rng.below(t.seeds.len())];
            let input = if t.repack {
                mutate_entry(seed, &mut rng)
            } else {
                mutate(seed, t.text, &mut rng)
            };
            std::fs::write(&path, &input).unwrap();
            let t0 = Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| (t.read)(&path)));
            let secs = t0.elapsed().as_secs_f64();
            tally.runs += 1;
            tally.slowest_s = tally.slowest_s.max(secs);
            let finding = match outcome {
                Ok(Ok(())) => {
                    tally.accepted += 1;
                    None
                }
                Ok(Err(e)) => {
                    tally.refused += 1;
                    let msg = e.to_string();
                    if msg.contains(&file_name) || msg.contains(&dir.display().to_string()) {
                        None
                    } else {
                        tally.unnamed += 1;
                        Some(format!("refusal without the file's name: {msg}"))
                    }
                }
                Err(_) => {
                    tally.panics += 1;
                    let msg = PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default();
                    Some(format!("panic: {msg}"))
                }
            };
            let finding = finding.or_else(|| {
                (secs > args.slow).then(|| {
                    tally.slow += 1;
                    format!("slow: {secs:.1} s")
                })
            });
            if let Some(f) = finding {
                findings += 1;
                if findings <= 200 {
                    let _ = std::fs::create_dir_all(&args.save);
                    let stem = format!("{}-{}", t.name, tally.runs);
                    let _ = std::fs::write(args.save.join(format!("{stem}.input")), &input);
                    let _ = std::fs::write(args.save.join(format!("{stem}.txt")), &f);
                }
                if findings <= 20 {
                    let short: String = f.chars().take(300).collect();
                    eprintln!("{}: {short}", t.name);
                }
            }
        }
        println!(
            "{:<16} {:>6}  {:>8}  {:>7}  {:>6}  {:>7}  {:>4}  {:>11.3}",
            t.name,
            tally.runs,
            tally.accepted,
            tally.refused,
            tally.panics,
            tally.unnamed,
            tally.slow,
            tally.slowest_s
        );
    }
    if let Some(m) = peak_rss_mib() {
        println!("peak memory: {m:.0} MiB");
    }
    if findings > 0 {
        eprintln!(
            "{findings} finding(s); inputs written to {}",
            args.save.display()
        );
        std::process::exit(1);
    }
    println!("no findings (seed {})", args.seed);
}

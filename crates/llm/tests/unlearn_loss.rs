//! Each unlearning loss and its gradient against the same formula written in PyTorch
//! (scripts/ref/llm_loss_ref.py) on a random Llama from `transformers`, with a second random
//! model as the reference.

use rustworthy_llm::llama::CausalLm;
use rustworthy_llm::score::QaBatch;
use rustworthy_llm::unlearn::{method_loss, Batches, LlmMethod, LlmUnlearnConfig, RetainLoss};
use rustworthy_testkit::{python_or_skip, torch_lock, workspace_root};
use std::collections::HashMap;
use std::process::Command;
use tch::{Device, Kind, Tensor};

#[test]
fn losses_and_gradients_match_pytorch() {
    let _torch = torch_lock();
    let Some(py) = python_or_skip("losses_and_gradients_match_pytorch") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(py)
        .arg(workspace_root().join("scripts/ref/llm_loss_ref.py"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("losses.json")).unwrap()).unwrap();
    let model = CausalLm::from_hf_dir(&dir.path().join("model"), Device::Cpu, Kind::Float).unwrap();
    let reference =
        CausalLm::from_hf_dir(&dir.path().join("ref_model"), Device::Cpu, Kind::Float).unwrap();
    let t: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("batches.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let batch = |n: &str| QaBatch {
        ids: t[&format!("{n}.ids")].shallow_clone(),
        mask: t[&format!("{n}.mask")].shallow_clone(),
        labels: t[&format!("{n}.labels")].shallow_clone(),
    };
    let (f, rt, idk) = (batch("forget"), batch("retain"), batch("idk"));
    let grads: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("grads.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let params = model.named_parameters();
    let cases = [
        ("ga", LlmMethod::Ga, RetainLoss::Nll),
        ("grad-diff", LlmMethod::GradDiff, RetainLoss::Nll),
        ("grad-diff-kl", LlmMethod::GradDiff, RetainLoss::Kl),
        ("npo", LlmMethod::Npo, RetainLoss::Nll),
        ("sim-npo", LlmMethod::SimNpo, RetainLoss::Nll),
        ("idk-dpo", LlmMethod::IdkDpo, RetainLoss::Nll),
        ("rmu", LlmMethod::Rmu, RetainLoss::Nll),
        ("rmu-wmdp", LlmMethod::RmuWmdp, RetainLoss::Nll),
    ];
    for (name, method, retain) in cases {
        let mut cfg = LlmUnlearnConfig::defaults(method, 2);
        cfg.retain_loss = retain;
        cfg.rmu_layer = 0;
        let b = Batches {
            forget: &f,
            retain: &rt,
            idk: Some(&idk),
        };
        for p in params.values() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let (loss, _, _) = method_loss(&cfg, &model, Some(&reference), Some(&t["u"]), &b).unwrap();
        let want = r["losses"][name].as_f64().unwrap();
        let got = loss.double_value(&[]);
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{name}: loss {got} vs {want}"
        );
        loss.backward();
        for p in r["grad_params"].as_array().unwrap() {
            let p = p.as_str().unwrap();
            let want = &grads[&format!("{name}/{p}")];
            let g = params[p].grad();
            let got = if g.defined() { g } else { want.zeros_like() };
            let err = (&got - want).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]).max(1e-3);
            assert!(
                err <= 1e-5 * scale.max(1.0),
                "{name}: gradient of {p} off by {err} (scale {scale})"
            );
        }
    }
}

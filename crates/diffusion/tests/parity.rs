//! The U-Net, loss, samplers and metrics against the PyTorch/numpy/scipy reference in
//! scripts/ref/ddpm_ref.py, on a small random model of the same layout.

use rustworthy_diffusion::metrics::{frechet_distance, kid};
use rustworthy_diffusion::sample::{sample, Noise, Sampler};
use rustworthy_diffusion::schedule::{sum_mse, Schedule};
use rustworthy_diffusion::unet::{CondUNet, UNetConfig};
use rustworthy_testkit::{python_or_skip, torch_lock, workspace_root};
use std::path::Path;
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn reference(mode: &str, dir: &Path) -> bool {
    let Some(py) = python_or_skip(mode) else {
        return false;
    };
    let o = Command::new(py)
        .arg(workspace_root().join("scripts/ref/ddpm_ref.py"))
        .arg(mode)
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    true
}

fn small() -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        resolution: 8,
        ch: 16,
        ch_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.1,
        num_classes: 3,
        groups: 4,
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn unet_loss_and_samplers_match_pytorch() {
    let _t = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = small();
    tch::manual_seed(11);
    let m = CondUNet::new(&cfg, Device::Cpu).unwrap();
    // Perturb every parameter so biases and norms are not at their initial constants.
    tch::no_grad(|| {
        for (_, mut p) in m.vs.variables() {
            let _ = p.f_add_(&(p.randn_like() * 0.05));
        }
    });
    let named = m.named_parameters();
    Tensor::write_safetensors(&named, d.join("weights.safetensors")).unwrap();
    let b = 5;
    let x0 = Tensor::rand([b, 1, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let t = Tensor::from_slice(&[0i64, 17, 400, 999, 731]);
    let labels = Tensor::from_slice(&[0i64, 1, 2, 1, 0]);
    let keep = Tensor::from_slice(&[true, false, true, true, false]);
    let e = x0.randn_like();
    let (w, steps, eta) = (2.0, 10i64, 0.5);
    let x_t = x0.randn_like();
    let ddim_noise: Vec<Tensor> = (0..steps).map(|_| x0.randn_like()).collect();
    let ddpm_noise: Vec<Tensor> = (0..steps).map(|_| x0.randn_like()).collect();
    let mut inputs = vec![
        ("x0".to_string(), x0.shallow_clone()),
        ("t".to_string(), t.shallow_clone()),
        ("labels".to_string(), labels.shallow_clone()),
        ("keep".to_string(), keep.to_kind(Kind::Uint8)),
        ("e".to_string(), e.shallow_clone()),
        ("x_T".to_string(), x_t.shallow_clone()),
    ];
    for k in 0..steps as usize {
        inputs.push((format!("ddim_noise_{k}"), ddim_noise[k].shallow_clone()));
        inputs.push((format!("ddpm_noise_{k}"), ddpm_noise[k].shallow_clone()));
    }
    Tensor::write_safetensors(&inputs, d.join("inputs.safetensors")).unwrap();
    std::fs::write(
        d.join("config.json"),
        serde_json::json!({"unet": cfg, "guidance": w, "steps": steps, "eta": eta}).to_string(),
    )
    .unwrap();
    if !reference("unet", d) {
        return;
    }
    let r: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(d.join("ref.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let sched = Schedule::reference(Device::Cpu);
    let xt = sched.q_sample(&x0, &t, &e);
    let tf = t.to_kind(Kind::Float);
    let eps = tch::no_grad(|| m.forward(&xt, &tf, &labels, Some(&keep), false).unwrap());
    let dd = max_diff(&eps, &r["eps"]);
    assert!(dd < 1e-4, "U-Net output differs by {dd}");
    let loss = sum_mse(&e, &eps).double_value(&[]);
    let want = r["loss"].double_value(&[0]);
    assert!(
        (loss - want).abs() < 1e-4 * want.abs().max(1.0),
        "loss {loss} vs {want}"
    );
    let g = tch::no_grad(|| m.guided(&xt, &tf, &labels, w, false).unwrap());
    let dg = max_diff(&g, &r["guided"]);
    assert!(dg < 1e-4, "guided output differs by {dg}");
    let run = |s: Sampler, noise: &[Tensor]| {
        sample(&sched, &s, &x_t, Noise::Given(noise), |x, tt| {
            m.guided(x, tt, &labels, w, false)
        })
        .unwrap()
    };
    let ddim = run(Sampler::Ddim { steps, eta }, &ddim_noise);
    // A random model's DDIM path reaches values in the hundreds (x0 is not clipped), so the
    // bound is relative to the path's largest value.
    let scale = r["ddim"].abs().max().double_value(&[]).max(1.0);
    let d1 = max_diff(&ddim, &r["ddim"]) / scale;
    assert!(d1 < 1e-4, "DDIM trajectory differs by {d1}");
    let ddpm = run(Sampler::Ddpm { steps }, &ddpm_noise);
    // The same relative bound as DDIM's: a random model's DDPM path is unclipped too.
    let scale = r["ddpm"].abs().max().double_value(&[]).max(1.0);
    let d2 = max_diff(&ddpm, &r["ddpm"]) / scale;
    assert!(d2 < 1e-4, "DDPM trajectory differs by {d2} (relative)");
    // The samplers moved far from their start: the comparison is not of two copies of x_T.
    assert!(max_diff(&ddim, &x_t) > 0.5 && max_diff(&ddpm, &ddim) > 1e-2);
}

#[test]
fn fd_and_kid_match_numpy_and_scipy() {
    let _t = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tch::manual_seed(3);
    let a = Tensor::randn([300, 12], (Kind::Double, Device::Cpu));
    let mix = Tensor::randn([12, 12], (Kind::Double, Device::Cpu)) * 0.3;
    let b = Tensor::randn([250, 12], (Kind::Double, Device::Cpu))
        .matmul(&(mix + Tensor::eye(12, (Kind::Double, Device::Cpu))))
        + 0.4;
    Tensor::write_safetensors(&[("a", &a), ("b", &b)], d.join("features.safetensors")).unwrap();
    if !reference("metrics", d) {
        return;
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("metrics.json")).unwrap()).unwrap();
    let fd = frechet_distance(&a, &b).unwrap();
    let want = r["fd"].as_f64().unwrap();
    assert!((fd - want).abs() < 1e-6, "FD {fd} vs scipy {want}");
    let (k, _) = kid(&a, &b, 1, 10_000, 0).unwrap();
    let want = r["kid"].as_f64().unwrap();
    assert!((k - want).abs() < 1e-6, "KID {k} vs numpy {want}");
    assert!(fd > 1.0 && k > 0.0, "the two sets differ: FD {fd}, KID {k}");
}

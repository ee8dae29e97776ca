//! PGD on a TorchScript model. A module scripted in PyTorch (`torch.jit.script(model).save(..)`)
//! loads as a rustworthy model with its parameters trainable: it is fine-tuned on Fashion-MNIST
//! with rustworthy's trainer, saved back as TorchScript, then attacked with FGSM and PGD-10
//! (l_inf, eps 0.1) by the library's attack run, which writes a report per attack.
//!
//! `cargo run --release -p rustworthy --example pgd_torchscript` uses the committed, untrained
//! small CNN `tests/fixtures/torchscript/fmnist-cnn.pt` (it takes [0, 1] images of 1x28x28);
//! `-- --model my.pt --no-train` attacks your own scripted Fashion-MNIST classifier as it is;
//! `-- --small` trains on 6000 images and attacks 200.
use rustworthy::datasets::load_pair;
use rustworthy::model_source::{open_model, ModelSource};
use rustworthy::prelude::*;
use rustworthy::train::{evaluate, fit, FitOptions};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let small = flag("--small");
    let model_file: PathBuf = match args.iter().position(|a| a == "--model") {
        Some(i) => args.get(i + 1).expect("--model needs a file").into(),
        None => "tests/fixtures/torchscript/fmnist-cnn.pt".into(),
    };
    let out = PathBuf::from("runs/example-pgd-torchscript");
    std::fs::create_dir_all(&out).map_err(|e| rustworthy::core::Error::io(&out, e))?;
    tch::manual_seed(0);
    let mut model = open_model(
        &ModelSource::new(&model_file),
        (1, (28, 28)),
        tch::Device::Cpu,
    )?
    .model;
    let (train_set, test_set) = load_pair("fashion-mnist", None, None, 0)?;
    if !flag("--no-train") {
        let train_set = if small {
            train_set.subset(&(0..6000).collect::<Vec<_>>())?
        } else {
            train_set
        };
        // The LeNet preset's recipe (SGD, Nesterov momentum, cosine schedule), 3 epochs.
        let mut recipe = preset("fmnist-lenet")?.train;
        recipe.epochs = 3;
        fit(
            &mut model,
            &train_set,
            None,
            &recipe,
            &FitOptions::default(),
        )?;
    }
    let clean = evaluate(&model, &test_set, 1000)?;
    println!(
        "{}: test accuracy {:.2}% on {} images",
        model_file.display(),
        clean.accuracy,
        test_set.len()
    );
    let saved = out.join("model.pt");
    model.save_torchscript(&saved)?;
    println!(
        "attacks on the first {} test images, l_inf eps 0.1:",
        if small { 200 } else { 1000 }
    );
    for kind in [AttackKind::Fgsm, AttackKind::Pgd] {
        let mut md = ModelData::new(&saved);
        md.dataset = Some("fashion-mnist".into());
        md.n = if small { 200 } else { 1000 };
        md.device = DeviceSpec::Cpu;
        md.out = Some(out.join(kind.name()));
        let done = attack(&AttackRequest {
            md,
            spec: AttackSpec::new(kind, Some(0.1)),
            target: None,
            save_images: false,
            attack_all: false,
            warmup: false,
        })?;
        let s = &done.run.summary;
        println!(
            "  {:<6} clean {:6.2}%  robust {:6.2}%  ({:.1} s, report in {})",
            s.attack,
            s.clean_accuracy,
            s.robust_accuracy,
            s.seconds,
            done.out.display()
        );
    }
    Ok(())
}

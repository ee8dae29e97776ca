//! SalUn on a saved training run: forget a random 10% of its training set and print the
//! unlearning metrics (UA, RA, TA, MIA-Efficacy, run time).
//!
//! `cargo run --release -p rustworthy --example salun_on_saved_run -- runs/fmnist-lenet`
//! unlearns from a run folder written by `rustworthy train`; `-- --small` first trains a
//! 3-epoch LeNet-5 on 6000 Fashion-MNIST images.
use rustworthy::prelude::*;

fn main() -> Result<()> {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "runs/fmnist-lenet".into());
    let run = if arg == "--small" {
        let mut c = preset("fmnist-lenet")?;
        c = apply_sets(
            &c,
            &["train.epochs=3".into(), "data.train_subset=6000".into()],
        )?;
        c.run.out = "runs/example-small-lenet".into();
        train(&c, &TrainOptions::default())?;
        c.run.out
    } else {
        arg.into()
    };
    // The run's split is reproduced from its config and checked against its split.json.
    let opened = TrainedRun::open(&run, None, tch::Device::Cpu)?;
    println!(
        "{}: {} training samples, test accuracy {}",
        run.display(),
        opened.splits.train.len(),
        opened.meta.metrics["test_accuracy"]
    );
    // SalUn's reference settings, with 2 epochs.
    let method = unlearn_run::method_config("salun", None, None, Some(2))?;
    let mut req = UnlearnRequest::new(run.join("model.safetensors"), method, "random:0.1".parse()?);
    req.device = DeviceSpec::Cpu;
    req.out = run.join("salun");
    let done = unlearn_run::unlearn(&req)?;
    let (b, m) = (&done.before, &done.result.metrics);
    println!("          UA      RA      TA      MIA-Eff  RTE");
    println!(
        "original  {:6.2}  {:6.2}  {:6.2}  {:6.2}",
        b.ua, b.ra, b.ta, b.mia_efficacy
    );
    println!(
        "salun     {:6.2}  {:6.2}  {:6.2}  {:6.2}   {:.1} s",
        m.ua, m.ra, m.ta, m.mia_efficacy, m.rte_s
    );
    Ok(())
}

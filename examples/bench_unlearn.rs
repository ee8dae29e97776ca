//! The whole unlearning benchmark (Retrain and eleven methods on a random 10% of Fashion-MNIST,
//! the paper-style table) in a few lines. `-- --small` runs a 1-epoch version with Retrain and GA
//! on a seeded subset of 10,000 training images.
use rustworthy::prelude::*;

fn main() -> Result<()> {
    let mut cfg = bench_preset("fmnist-lenet-random10")?;
    if std::env::args().any(|a| a == "--small") {
        let sets = [
            "original_epochs=1",
            "original_sets=[\"data.train_subset=10000\"]",
            "methods=[\"retrain\", \"ga\"]",
            "method.retrain.epochs=1",
        ];
        cfg = apply_sets(&cfg, &sets.map(String::from))?;
        (cfg.out, cfg.original_out) = ("runs/example-bench-small".into(), None);
    }
    let done = bench_unlearn(&cfg, &BenchOptions::default())?;
    println!("{}", done.markdown);
    Ok(())
}

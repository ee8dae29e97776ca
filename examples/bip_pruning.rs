//! BiP (bi-level pruning) of LeNet-5 on Fashion-MNIST to 90% sparsity, against the dense model.
//! `-- --small` uses 6000 training images, 3 epochs of training and 2 of BiP.
use rustworthy::prelude::*;

fn main() -> Result<()> {
    let mut common = PruneCommon {
        device: Some(DeviceSpec::Cpu),
        out: Some("runs/example-bip".into()),
        ..PruneCommon::default()
    };
    if std::env::args().any(|a| a == "--small") {
        common.train_subset = Some(6000);
        common.epochs = Some(3);
        common.score_epochs = Some(2);
    }
    let done = prune_run(PruneMethod::Bip, 0.9, &common)?;
    let r = &done.row;
    println!(
        "BiP: sparsity {:.4} ({:.4} of the prunable weights are zero), test accuracy {:.2}% (dense {:.2}%)",
        r.sparsity, r.zero_fraction, r.test_accuracy, done.dense_test_accuracy
    );
    for (layer, s) in &r.layers {
        println!("  {layer:<16} {s:.3}");
    }
    Ok(())
}

//! Pruning a TorchScript model (the committed fixture tests/fixtures/torchscript/small-cnn.pt,
//! written by scripts/ref/export_torchscript.py --fixture): the prunable layers are its weights
//! of rank >= 2 under their TorchScript names, every method hits the sparsity, and pruned
//! weights stay zero through fine-tuning.

use rustworthy_data::Dataset;
use rustworthy_models::{Model, ScriptOptions};
use rustworthy_prune::scores::{self, masks_from_scores};
use rustworthy_prune::{prune, train_dense, PruneConfig, PruneData, PruneMethod, Scope};
use rustworthy_testkit::{sgd_recipe, small_cnn_fixture, synthetic_split, torch_lock};
use rustworthy_train::mask::{prunable, weight_sparsity};
use rustworthy_train::TrainConfig;
use tch::{Device, Kind};

fn script_model() -> Model {
    tch::manual_seed(1);
    Model::from_torchscript(
        small_cnn_fixture(),
        ScriptOptions::new(1, (12, 12)),
        Device::Cpu,
    )
    .unwrap()
}

fn recipe(epochs: usize) -> TrainConfig {
    sgd_recipe(epochs, 32, 0.05, 3)
}

fn data() -> (Dataset, Dataset) {
    synthetic_split(60, 12, 0.3, 9, 180)
}

#[test]
fn script_models_prune_like_zoo_models() {
    let _torch = torch_lock();
    tch::set_num_threads(1);
    let init = script_model();
    let names: Vec<String> = prunable(&init).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["conv1.weight", "conv2.weight", "head.weight"]);
    let total: i64 = prunable(&init).iter().map(|(_, t)| t.numel() as i64).sum();
    let g = masks_from_scores(&scores::magnitude(&init), 0.9, Scope::Global, None).unwrap();
    let kept: i64 = g
        .values()
        .map(|t| t.sum(Kind::Int64).int64_value(&[]))
        .sum();
    assert_eq!(kept, (0.1 * total as f64).round() as i64);

    let (train, test) = data();
    let d = PruneData {
        train: &train,
        test: &test,
    };
    let dense = train_dense(&init, &d, &recipe(2), 0).unwrap();
    assert!(dense.trained.is_torchscript());
    for (method, structured) in [
        (PruneMethod::Omp, false),
        (PruneMethod::Omp, true),
        (PruneMethod::Snip, false),
        (PruneMethod::Synflow, false),
        (PruneMethod::Hydra, false),
        (PruneMethod::Bip, false),
    ] {
        let mut cfg = PruneConfig::new(method, 0.8);
        cfg.structured = structured;
        cfg.finetune_epochs = 1;
        cfg.score_epochs = 1;
        cfg.synflow_rounds = 5;
        let o = prune(&cfg, &dense, &d, &recipe(2))
            .unwrap_or_else(|e| panic!("{method:?} (structured {structured}): {e}"));
        assert!(o.model.is_torchscript());
        if structured {
            // Whole channels of every prunable layer but the classifier.
            let layers: Vec<&String> = o.masks.keys().collect();
            assert_eq!(layers, ["conv1.weight", "conv2.weight"]);
        } else {
            assert!(
                (o.sparsity - 0.8).abs() < 1e-3,
                "{method:?}: sparsity {}",
                o.sparsity
            );
        }
        assert!(
            weight_sparsity(&o.model, &o.masks) >= o.sparsity - 1e-9,
            "{method:?}: pruned weights are not zero"
        );
    }
}

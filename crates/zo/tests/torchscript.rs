//! DeepZero training needs a zoo architecture it can rebuild layer by layer: a TorchScript model
//! (the committed fixture tests/fixtures/torchscript/small-cnn.pt) is refused with a clear error.

use rustworthy_core::Error;
use rustworthy_models::{Model, ScriptOptions};
use rustworthy_testkit::small_cnn_fixture;
use rustworthy_zo::ZoNet;
use tch::Device;

#[test]
fn deepzero_refuses_script_models() {
    let model = Model::from_torchscript(
        small_cnn_fixture(),
        ScriptOptions::new(1, (12, 12)),
        Device::Cpu,
    )
    .unwrap();
    let e = ZoNet::new(&model)
        .err()
        .expect("a TorchScript model must be refused");
    assert!(matches!(e, Error::Config { .. }), "{e}");
    assert!(e.to_string().contains("TorchScript"), "{e}");
}

//! Helpers shared by the end-to-end tests of the `rustworthy` binary.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rustworthy"));
    c.env_remove("RUSTWORTHY_DATA");
    c
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn fashion_mnist_present() -> bool {
    let here = Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file();
    if !here {
        if std::env::var("RUSTWORTHY_REQUIRE_DATA").as_deref() == Ok("1") {
            panic!("Fashion-MNIST is required (RUSTWORTHY_REQUIRE_DATA=1) but not installed");
        }
        eprintln!("skipped: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)");
    }
    here
}

//! Compiles the C++ bridge to libtorch's fused optimizer kernels, autocast state, memory
//! formats and record-function callbacks, against the headers of the linked libtorch.

use std::path::PathBuf;

fn main() {
    rustworthy_build::link_libtorch();
    println!("cargo:rerun-if-changed=cpp/accel.cpp");
    let Some(root) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        return;
    };
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .file("cpp/accel.cpp")
        .std("c++17")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .opt_level(2)
        .compile("rustworthy_accel_bridge");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

//! Compiles the C++ bridge to libtorch's c10d against the headers of the linked libtorch. Gloo's
//! own headers are not in the torch wheel; Debian's libgloo-dev provides the declarations the
//! c10d headers need (the implementation is the one inside libtorch). Without them the bridge
//! builds without Gloo and every process group reports that clearly at run time.

use std::path::PathBuf;

fn main() {
    rustworthy_build::link_libtorch();
    println!("cargo:rerun-if-changed=cpp/bridge.cpp");
    println!("cargo:rerun-if-env-changed=RUSTWORTHY_GLOO_INCLUDE");
    let Some(root) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        return;
    };
    let include = root.join("include");
    let gloo = std::env::var_os("RUSTWORTHY_GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let have_gloo = gloo.join("gloo/rendezvous/store.h").exists();
    if !have_gloo {
        println!(
            "cargo:warning=no Gloo headers under {}: distributed training is disabled in this build (install libgloo-dev)",
            gloo.display()
        );
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("cpp/bridge.cpp")
        .std("c++17")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .opt_level(2);
    if have_gloo {
        build
            .define("RW_HAVE_GLOO", None)
            .define("USE_C10D_GLOO", None)
            .include(&gloo);
    }
    build.compile("rustworthy_dist_bridge");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

//! Compiles the C++ bridge to libtorch's c10d against the headers of the linked libtorch. Gloo's
//! own headers are not in the torch wheel; Debian's libgloo-dev provides the declarations the
//! c10d headers need (the implementation is the one inside libtorch). Without them the bridge
//! builds without Gloo and every process group reports that clearly at run time.

use std::path::PathBuf;

fn main() {
    rustworthy_build::link_libtorch();
    println!("cargo:rerun-if-env-changed=RUSTWORTHY_GLOO_INCLUDE");
    let Some(mut build) = rustworthy_build::bridge_build("cpp/bridge.cpp") else {
        return;
    };
    let gloo = std::env::var_os("RUSTWORTHY_GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let have_gloo = gloo.join("gloo/rendezvous/store.h").exists();
    if !have_gloo {
        println!(
            "cargo:warning=no Gloo headers under {}: distributed training is disabled in this build (install libgloo-dev)",
            gloo.display()
        );
    } else {
        build
            .define("RW_HAVE_GLOO", None)
            .define("USE_C10D_GLOO", None)
            .include(&gloo);
    }
    build.compile("rustworthy_dist_bridge");
    rustworthy_build::link_bridge();
}

//! Build-script helper shared by every crate whose binaries or tests link libtorch.
//!
//! Two things go wrong when linking libtorch from a Rust binary:
//! * rustc links with `--as-needed`, which drops `libtorch_cuda.so` because no symbol of it is
//!   referenced directly; CUDA then never registers and `cuda` devices silently vanish. We link it
//!   explicitly inside a `--no-as-needed` section.
//! * the binary must find libtorch at run time without `LD_LIBRARY_PATH`; we add a RUNPATH (not an
//!   RPATH, so that `LD_LIBRARY_PATH` still wins, e.g. on a GPU machine with its own torch).

#![warn(missing_docs)]

use std::path::PathBuf;

/// Emits the link arguments. Call from `build.rs` of a crate with binaries or tests.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(root) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        println!("cargo:warning=LIBTORCH is not set; run scripts/setup.sh first");
        return;
    };
    let lib = root.join("lib");
    // Resolve the symlink so the RUNPATH survives a moved checkout link.
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--pop-state");
    }
}

/// Exposes the libtorch version (read from the wheel's `version.py`) to the crate as the
/// compile-time variable `RUSTWORTHY_LIBTORCH_VERSION`.
pub fn export_libtorch_version() {
    let version = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .and_then(|root| std::fs::read_to_string(root.join("version.py")).ok())
        .and_then(|text| {
            text.lines().find_map(|l| {
                let l = l.trim();
                let rest = l.strip_prefix("__version__")?;
                let v = rest.split(['\'', '"']).nth(1)?;
                Some(v.to_string())
            })
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=RUSTWORTHY_LIBTORCH_VERSION={version}");
}

/// A C++17 build of the bridge source `file` against the linked libtorch's headers (and the
/// shared `rw_bridge.h`), or `None` when `LIBTORCH` is not set. Compile it with
/// `.compile(name)`, then call [`link_bridge`].
pub fn bridge_build(file: &str) -> Option<cc::Build> {
    let header = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    println!("cargo:rerun-if-changed={file}");
    println!("cargo:rerun-if-changed={header}/rw_bridge.h");
    let root = PathBuf::from(std::env::var_os("LIBTORCH")?);
    let include = root.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file(file)
        .std("c++17")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(header)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .opt_level(2);
    Some(build)
}

/// Links the libtorch libraries a compiled bridge calls into.
pub fn link_bridge() {
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

//! Compiles the C++ bridge to libtorch's fused optimizer kernels, autocast state, memory
//! formats and record-function callbacks, against the headers of the linked libtorch.

fn main() {
    rustworthy_build::link_libtorch();
    if let Some(build) = rustworthy_build::bridge_build("cpp/accel.cpp") {
        build.compile("rustworthy_accel_bridge");
        rustworthy_build::link_bridge();
    }
}

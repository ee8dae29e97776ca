fn main() {
    rustworthy_build::link_libtorch();
    rustworthy_build::export_libtorch_version();
}

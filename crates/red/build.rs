fn main() {
    rustworthy_build::link_libtorch();
}

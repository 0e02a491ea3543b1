//! Gives the shared library the soname `libshmkit.so`, the name it is
//! installed under (see examples/c/Makefile).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libshmkit.so");
}

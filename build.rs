//! Link libtorch so that CUDA is found at run time, and remember where it is.
//!
//! Without `--no-as-needed` the linker drops `libtorch.so` (nothing references
//! it directly) and with it `libtorch_cuda.so`, so `tch::Cuda::is_available()`
//! is silently false on a GPU machine (tch-rs issue 980). The rpath lets the
//! binary start without `LD_LIBRARY_PATH` on the machine that built it.
fn main() {
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rerun-if-changed=build.rs");
}

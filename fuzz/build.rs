//! Lets the fuzz binaries start without `LD_LIBRARY_PATH`: they link
//! libtorch through pixpro, whose own build.rs rpath reaches only pixpro's
//! binaries. torch-sys tells its direct dependents where libtorch is.
fn main() {
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

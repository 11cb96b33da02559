//! Link libtorch so that CUDA is found at run time, remember where it is, and
//! compile the C++ parts against it: the collective engines of
//! `src/collective.rs`, the CPU/CUDA autocast of `src/precision.rs`, the
//! `torch.save` files of `pixpro export` and the libtorch version `pixpro
//! doctor` prints; and the C shim over libjpeg-turbo (`src/data/jpeg.rs`),
//! linked statically so that the binary runs on machines without it.
//!
//! Without `--no-as-needed` the linker drops `libtorch.so` (nothing references
//! it directly) and with it `libtorch_cuda.so`, so `tch::Cuda::is_available()`
//! is silently false on a GPU machine (tch-rs issue 980). The rpath lets the
//! binary start without `LD_LIBRARY_PATH` on the machine that built it.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/collective.cpp");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/version.cpp");
    println!("cargo:rerun-if-changed=csrc/torch_save.cpp");
    println!("cargo:rerun-if-changed=csrc/jpeg.c");
    let lib_dir = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys names libtorch's lib folder in DEP_TCH_LIBTORCH_LIB"),
    );
    // Canonical: `.libtorch` is a link into site-packages, beside `nvidia/`.
    let root = lib_dir.parent().expect("libtorch's lib folder has a parent");
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    compile_csrc(&root);
    compile_jpeg();
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}

/// `csrc/`: autocast, the version string, `torch.save` files, and libtorch's c10d process groups: Gloo always (its
/// headers come from Debian's libgloo-dev; the library is inside
/// libtorch_cpu), NCCL when the CUDA and NCCL headers of the torch wheel's
/// `nvidia` packages are there.
fn compile_csrc(root: &Path) {
    if !Path::new("/usr/include/gloo/context.h").exists() {
        panic!(
            "the Gloo headers are missing (/usr/include/gloo/context.h): run scripts/setup, or \
             `sudo apt-get install libgloo-dev`"
        );
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/collective.cpp")
        .file("csrc/autocast.cpp")
        .file("csrc/version.cpp")
        .file("csrc/torch_save.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .define("USE_C10D_GLOO", None)
        .define("GLOG_USE_GLOG_EXPORT", None)
        .warnings(false)
        .extra_warnings(false)
        .flag_if_supported("-w");
    match nccl_includes(root) {
        Some(dirs) => {
            build
                .define("PIXPRO_NCCL", None)
                .define("USE_C10D_NCCL", None)
                .define("USE_CUDA", None);
            build.includes(dirs);
            println!("cargo:rustc-link-lib=dylib=torch_cuda");
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
        }
        None => println!(
            "cargo:warning=no NCCL or CUDA headers beside {}: building without the NCCL engine \
             (scripts/setup installs them)",
            root.display()
        ),
    }
    build.compile("pixpro_csrc");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// `csrc/jpeg.c` against the system's libjpeg-turbo, whose static archive
/// Debian's `libjpeg-dev` ships beside the shared one.
fn compile_jpeg() {
    let lib_dir =
        pkg_config_var("libjpeg", "libdir").unwrap_or_else(|| "/usr/lib/x86_64-linux-gnu".into());
    let include_dir =
        pkg_config_var("libjpeg", "includedir").unwrap_or_else(|| "/usr/include".into());
    if !Path::new(&include_dir).join("jpeglib.h").exists()
        || !Path::new(&lib_dir).join("libjpeg.a").exists()
    {
        panic!(
            "libjpeg-turbo's headers or static library are missing ({include_dir}/jpeglib.h, \
             {lib_dir}/libjpeg.a): run scripts/setup, or `sudo apt-get install libjpeg-dev`"
        );
    }
    cc::Build::new().file("csrc/jpeg.c").include(&include_dir).compile("pixpro_jpeg");
    println!("cargo:rustc-link-search=native={lib_dir}");
    println!("cargo:rustc-link-lib=static=jpeg");
}

fn pkg_config_var(package: &str, variable: &str) -> Option<String> {
    let out = std::process::Command::new("pkg-config")
        .arg(format!("--variable={variable}"))
        .arg(package)
        .output()
        .ok()?;
    let value = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !value.is_empty()).then_some(value)
}

/// The include folders of the pip `nvidia-*` packages next to torch: NCCL's,
/// and the CUDA runtime's with the `crt/` and `nv/` headers it needs.
fn nccl_includes(root: &Path) -> Option<Vec<PathBuf>> {
    let nvidia = root.parent()?.join("nvidia");
    let nccl = nvidia.join("nccl/include");
    let cuda = std::fs::read_dir(&nvidia)
        .ok()?
        .flatten()
        .map(|e| e.path().join("include"))
        .find(|d| d.join("cuda_runtime.h").exists() && d.join("crt/host_config.h").exists())?;
    (nccl.join("nccl.h").exists() && cuda.join("nv/target").exists()).then(|| vec![nccl, cuda])
}

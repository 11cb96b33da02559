//! `pixpro doctor`: what this binary was built with and what it finds on
//! this machine.
use pixpro::distributed::collective;
use pixpro::model::precision::cpu_bf16_units;

extern "C" {
    fn pixpro_torch_version() -> *const std::os::raw::c_char;
}

/// The libtorch version this binary was compiled against.
fn libtorch_version() -> String {
    // SAFETY: a pointer to a static NUL-terminated string literal.
    unsafe { std::ffi::CStr::from_ptr(pixpro_torch_version()) }.to_string_lossy().into_owned()
}

pub(super) fn run() {
    println!("pixpro {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch: {}", libtorch_version());
    println!("libtorch threads: {}", tch::get_num_threads());
    println!(
        "cpu bfloat16 units: {}",
        cpu_bf16_units().unwrap_or("none (--precision bf16 would be emulated, slower than fp32)")
    );
    println!("cuda available: {}", tch::Cuda::is_available());
    println!("cuda devices: {}", tch::Cuda::device_count());
    println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
    println!(
        "collective engines: gloo{}",
        if collective::nccl_compiled() { ", nccl" } else { " (built without nccl)" }
    );
}

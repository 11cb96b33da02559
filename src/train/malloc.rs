//! glibc malloc settings for a process that allocates and frees
//! tensor-sized blocks every step.
//!
//! By default glibc serves every block above a dynamic threshold (128 KiB,
//! rising to at most 32 MiB) with a fresh `mmap` and unmaps it on `free`,
//! so each training step faults its activations in page by page again: 21
//! million minor page faults in a 6-step ResNet-50 benchmark at 224 px. With
//! the threshold fixed at its 32 MiB maximum, and freed memory kept (trim
//! threshold and top pad raised), blocks below 32 MiB are reused from the
//! heap: 2.6 million faults and 1.5 to 1.9x the images/s on 2 cores, with
//! the same peak memory (docs/performance.md).
//!
//! A user's own settings win: nothing is changed when any `MALLOC_*`
//! variable or `GLIBC_TUNABLES` is set.

/// Applies the settings above, once, before the first tensor.
pub fn tune_for_tensors() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_TOP_PAD: c_int = -2;
        const M_MMAP_THRESHOLD: c_int = -3;
        if std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k.starts_with("MALLOC_") || k == "GLIBC_TUNABLES"
        }) {
            return;
        }
        // SAFETY: mallopt only changes allocator parameters; it is safe to
        // call at any time, and these values are within glibc's limits.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, c_int::MAX);
            mallopt(M_TOP_PAD, 512 << 20);
        }
    }
}

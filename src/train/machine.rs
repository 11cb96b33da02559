//! What a run takes from the machine before its first step: the device, the
//! loader and its threads, and the flag a signal sets.
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use tch::Device;

use crate::data::dataset::Dataset;
use crate::data::loader::{Loader, LoaderConfig};
use crate::train::config::{Config, DeviceChoice};
use crate::{Error, Result};

/// The device `choice` names, or an error when it is CUDA and libtorch sees
/// none. Picking CUDA also turns on cuDNN's benchmark mode.
pub fn pick_device(choice: DeviceChoice) -> Result<Device> {
    if choice == DeviceChoice::Cuda && !tch::Cuda::is_available() {
        return Err(Error::config(
            "train.device",
            "cuda was asked for but libtorch sees no CUDA device (use --device cpu, or check the \
             driver)",
        ));
    }
    let device = match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cuda => Device::Cuda(0),
    };
    if device.is_cuda() {
        // Every step has the same shapes, so cuDNN's one-off search for the
        // fastest convolution algorithms pays for itself.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    Ok(device)
}

/// Loader threads. On the CPU, what libtorch's intra-op threads leave of
/// the cores, at least one; with a GPU doing the model's work, all cores but
/// the one that drives it.
pub fn auto_workers(torch_threads: usize, device: Device) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let busy = if device.is_cuda() { 1 } else { torch_threads };
    cores.saturating_sub(busy).max(1)
}

/// Opens `data` (any input [`Dataset::open`] takes) and a one-process loader for `cfg`, reporting
/// unreadable files once.
pub fn open_loader(
    cfg: &Config,
    data: &std::path::Path,
    torch_threads: usize,
    device: Device,
) -> Result<Loader> {
    open_sharded_loader(cfg, data, torch_threads, device, 0, 1)
}

/// [`open_loader`] for rank `rank` of `world` processes: the global batch is
/// `world` times the config's batch, and this rank gets its `rank`-th slice.
pub fn open_sharded_loader(
    cfg: &Config,
    data: &std::path::Path,
    torch_threads: usize,
    device: Device,
    rank: usize,
    world: usize,
) -> Result<Loader> {
    let workers =
        if cfg.train.workers > 0 { cfg.train.workers } else { auto_workers(torch_threads, device) };
    let (dataset, report) = Dataset::open(data)?;
    if let Some(first) = report.empty.first() {
        tracing::warn!("{} shards hold no images, first: {}", report.empty.len(), first.display());
    }
    if !report.bad.is_empty() {
        tracing::warn!(
            "{} of {} image files cannot be read and are skipped; first: {}: {}",
            report.bad.len(),
            report.bad.len() + dataset.len(),
            report.bad[0].0.display(),
            report.bad[0].1
        );
    }
    Loader::new(
        Arc::new(dataset),
        cfg.augment.clone(),
        LoaderConfig {
            batch_size: cfg.train.batch_size * world,
            workers,
            prefetch: cfg.train.prefetch,
            seed: cfg.train.seed,
            rank,
            world_size: world,
        },
    )
}

/// The process's SIGINT/SIGTERM flag, its handlers installed on first use
/// only (a grid of runs in one process must not stack them): the first
/// signal sets it, so that work stops at the end of the current step with a
/// checkpoint; a second one, while it is set, exits at once.
pub fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(flag) = FLAG.get() {
        return Ok(flag.clone());
    }
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())
            .and_then(|_| signal_hook::flag::register(sig, flag.clone()))
            .map_err(|e| Error::io("(signal handler)", e))?;
    }
    Ok(FLAG.get_or_init(|| flag).clone())
}

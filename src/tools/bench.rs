//! `pixpro bench`: times the data pipeline alone and the full PixPro training
//! step (two views, online forward and backward, target forward, PPM, loss,
//! LARS, momentum update) on real images, in one process.
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::data::loader::Loader;
use crate::model::precision::Precision;
use crate::train::config::Config;
use crate::train::precision_trial;
use crate::train::steal::{steal_since, CpuTimes};
use crate::train::{open_loader, pick_device, Trainer};
use crate::{Error, Result};

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub arch: String,
    pub image_size: u32,
    pub batch_size: usize,
    pub output_stride: u32,
    /// `fp32` or `bf16` (the forward passes' arithmetic; under `auto`, what
    /// its trial chose).
    pub precision: Precision,
    pub device: String,
    pub torch_threads: i32,
    pub workers: usize,
    pub steps: usize,
    /// Training throughput from the median step time.
    pub images_per_sec: f64,
    pub step_ms_median: f64,
    pub step_ms_min: f64,
    pub step_ms_max: f64,
    /// Share of the timed steps spent waiting for the loader.
    pub data_wait_fraction: f64,
    /// Share of the machine's CPU time a hypervisor took during the timed
    /// steps ([`crate::train::steal`]); None where it cannot be read.
    pub cpu_steal_fraction: Option<f64>,
    /// Two-view samples per second of the loader alone, and per worker thread.
    pub data_images_per_sec: f64,
    pub data_images_per_sec_per_worker: f64,
    pub peak_rss_mb: f64,
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// What `pixpro bench --data-only` measures: the loader alone, no model.
#[derive(Debug, Serialize)]
pub struct DataReport {
    pub image_size: u32,
    pub batch_size: usize,
    pub workers: usize,
    /// JPEGs decoded at a reduced size where the crops allow (the config's
    /// `augment.reduced_decode`).
    pub reduced_decode: bool,
    pub images: usize,
    /// Seconds to find and check every image (the scan `--data` starts
    /// with) and start the loader.
    pub scan_s: f64,
    /// Seconds from then to the first batch.
    pub first_batch_s: f64,
    /// Timed batches (after the first, which includes the threads' start).
    pub batches: usize,
    /// Two-view samples per second, and per worker thread: with one worker,
    /// the throughput of one core.
    pub data_images_per_sec: f64,
    pub data_images_per_sec_per_worker: f64,
    pub peak_rss_mb: f64,
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Seconds to the first batch of `loader`, and two-view samples per second
/// over the `batches` batches after it.
fn time_loader(loader: &Loader, data: &Path, batches: usize) -> Result<(f64, f64)> {
    let start = Instant::now();
    let mut it = loader.iter_from(0, 0);
    let first = it.next().ok_or_else(|| Error::data(data, "the loader stopped"))??;
    let first_s = start.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..batches {
        it.next().ok_or_else(|| Error::data(data, "the loader stopped"))??;
    }
    Ok((first_s, (batches * first.indices.len()) as f64 / t0.elapsed().as_secs_f64()))
}

/// Times the loader of `cfg` alone over `batches` batches: no model is
/// built, so it runs in seconds and its memory is the loader's.
pub fn data_only(cfg: &Config, data: &Path, batches: usize) -> Result<DataReport> {
    cfg.validate()?;
    if batches == 0 {
        return Err(Error::config("--steps", "must be at least 1"));
    }
    let start = Instant::now();
    let loader = open_loader(cfg, data, tch::get_num_threads().max(1) as usize, tch::Device::Cpu)?;
    let scan_s = start.elapsed().as_secs_f64();
    let workers = loader.workers();
    let (first_batch_s, data_images_per_sec) = time_loader(&loader, data, batches)?;
    Ok(DataReport {
        image_size: cfg.augment.image_size,
        batch_size: cfg.train.batch_size,
        workers,
        reduced_decode: cfg.augment.reduced_decode,
        images: loader.images(),
        scan_s,
        first_batch_s,
        batches,
        data_images_per_sec,
        data_images_per_sec_per_worker: data_images_per_sec / workers as f64,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// Runs `warmup` untimed and `steps` timed training steps of `cfg` on `data`,
/// after timing the loader alone over the same number of batches.
pub fn run(cfg: &Config, data: &Path, warmup: usize, steps: usize) -> Result<BenchReport> {
    cfg.validate()?;
    if steps == 0 {
        return Err(Error::config("--steps", "must be at least 1"));
    }
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    let device = pick_device(cfg.train.device)?;
    let torch_threads = tch::get_num_threads();
    let loader = open_loader(cfg, data, torch_threads.max(1) as usize, device)?;
    let workers = loader.workers();

    let (_, data_images_per_sec) = time_loader(&loader, data, steps)?;

    // What a run of `cfg` would compute in here, `auto` by the same trial.
    let (precision, why) = precision_trial::resolve(cfg, device, &loader)?;
    tracing::info!("precision {why}");
    let mut resolved = cfg.clone();
    resolved.train.precision = precision;
    let cfg = &resolved;
    let mut trainer = Trainer::new(cfg, loader.batches_per_epoch(), device)?;
    let mut batches = loader.iter_from(0, 0);
    let mut times = Vec::with_capacity(steps);
    let (mut waited, mut total) = (0.0, 0.0);
    let mut cpu = None;
    for i in 0..warmup + steps {
        if i == warmup {
            cpu = CpuTimes::now();
        }
        let t = Instant::now();
        let batch = batches.next().ok_or_else(|| Error::data(data, "the loader stopped"))??;
        let w = t.elapsed().as_secs_f64();
        trainer.train_step(&batch)?;
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        let dt = t.elapsed().as_secs_f64();
        if i >= warmup {
            times.push(dt * 1e3);
            waited += w;
            total += dt;
        }
    }
    let cpu_steal_fraction = steal_since(cpu);
    let step_ms_median = median(&mut times.clone());
    Ok(BenchReport {
        arch: cfg.model.arch.to_string(),
        image_size: cfg.augment.image_size,
        batch_size: cfg.train.batch_size,
        output_stride: cfg.model.output_stride,
        precision,
        device: format!("{device:?}"),
        torch_threads,
        workers,
        steps,
        images_per_sec: cfg.train.batch_size as f64 / (step_ms_median / 1e3),
        step_ms_median,
        step_ms_min: times.iter().copied().fold(f64::INFINITY, f64::min),
        step_ms_max: times.iter().copied().fold(0.0, f64::max),
        data_wait_fraction: waited / total,
        cpu_steal_fraction,
        data_images_per_sec,
        data_images_per_sec_per_worker: data_images_per_sec / workers as f64,
        peak_rss_mb: peak_rss_mb(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn data_only_times_the_loader_with_the_workers_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..6u32 {
            let img = image::RgbImage::from_fn(48 + k, 40, |x, y| {
                image::Rgb([(x * 5) as u8, (y * 6) as u8, (k * 40) as u8])
            });
            img.save(dir.path().join(format!("{k}.png"))).unwrap();
        }
        let mut cfg = crate::train::config::Preset::Cpu.config();
        cfg.augment.image_size = 32;
        cfg.train.batch_size = 2;
        cfg.train.workers = 1;
        let r = data_only(&cfg, dir.path(), 4).unwrap();
        assert_eq!((r.workers, r.batches, r.batch_size, r.image_size), (1, 4, 2, 32));
        assert!(r.data_images_per_sec.is_finite() && r.data_images_per_sec > 0.0, "{r:?}");
        assert_eq!(r.data_images_per_sec_per_worker, r.data_images_per_sec);
        assert!(data_only(&cfg, dir.path(), 0).is_err());
    }

    #[test]
    fn peak_rss_is_read() {
        let mb = peak_rss_mb();
        assert!(mb > 1.0 && mb < 1e6, "{mb}");
    }
}

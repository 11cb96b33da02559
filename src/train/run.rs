//! The pretraining loop: batches -> model -> loss -> LARS + momentum update
//! -> checkpoints and metrics, in a run directory that can be resumed.
//!
//! A run directory holds `config.toml` (the full resolved config),
//! `metrics.jsonl` (one JSON object per logged step), `checkpoints/`
//! (`last.safetensors` plus numbered copies), `plots/loss.png` (redrawn at
//! every checkpoint) and `summary.json` at the end.
use std::fs::{self, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::data::dataset::Dataset;
use crate::data::loader::{Batch, Loader, LoaderConfig};
use crate::distributed::collective::{Group, Launch};
use crate::distributed::data_parallel;
use crate::distributed::syncbn;
use crate::method::momentum::momentum_at;
use crate::method::PixPro;
use crate::model::precision::{self, Precision};
use crate::optim::lars::Lars;
use crate::optim::schedule::LrSchedule;
use crate::train::checkpoint::{self, Checkpoint, Meta, FORMAT_VERSION};
use crate::train::config::{Config, DeviceChoice};
use crate::{Error, Result};

/// The files of one run.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn last_checkpoint(&self) -> PathBuf {
        self.checkpoints().join("last.safetensors")
    }
    pub fn plots(&self) -> PathBuf {
        self.root.join("plots")
    }
    pub fn loss_plot(&self) -> PathBuf {
        self.plots().join("loss.png")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    pub fn numbered_checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints().join(format!("step-{step:07}.safetensors"))
    }
    /// The checkpoints to resume from, best first: `last.safetensors`, then
    /// the numbered copies, newest first.
    pub fn checkpoint_files(&self) -> Vec<PathBuf> {
        let mut numbered: Vec<(u64, PathBuf)> = fs::read_dir(self.checkpoints())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let step = name.to_str()?.strip_prefix("step-")?.strip_suffix(".safetensors")?;
                Some((step.parse().ok()?, entry.path()))
            })
            .collect();
        numbered.sort_by_key(|n| std::cmp::Reverse(n.0));
        let last = self.last_checkpoint();
        last.exists().then_some(last).into_iter().chain(numbered.into_iter().map(|n| n.1)).collect()
    }
    /// A run with a checkpoint to continue from.
    pub fn can_resume(&self) -> bool {
        !self.checkpoint_files().is_empty()
    }
}

/// What the caller decides beyond the config.
pub struct RunOptions {
    pub data: PathBuf,
    pub run: RunDir,
    /// Stop (with a checkpoint) once this many steps are done in total,
    /// before the configured end: for time-sliced machines and tests.
    pub stop_at: Option<u64>,
    /// No progress bar or per-step lines.
    pub quiet: bool,
}

#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub steps_done: u64,
    pub total_steps: u64,
    pub finished: bool,
    /// Why the run stopped early, if it did.
    pub stopped_by: Option<String>,
    pub final_loss: Option<f64>,
    /// Steps skipped for a non-finite loss or gradient, over the whole run.
    pub skipped_steps: u64,
    pub wall_s: f64,
    pub images_per_sec: f64,
    pub data_wait_fraction: f64,
    pub replaced_images: usize,
    pub device: String,
    pub run_dir: PathBuf,
}

#[derive(Serialize)]
struct MetricsLine {
    step: u64,
    epoch: u64,
    loss: f64,
    loss_avg: f64,
    lr: f64,
    momentum: f64,
    images_per_sec: f64,
    data_wait_fraction: f64,
    target_std: f64,
    positive_fraction: f64,
    replaced_images: usize,
    /// Steps skipped so far for a non-finite loss or gradient.
    skipped_steps: u64,
}

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

fn batch_tensors(b: &Batch, device: Device) -> (Tensor, Tensor, Tensor, Tensor) {
    let n = b.indices.len() as i64;
    let s = b.image_size as i64;
    // To a GPU through pinned memory and an asynchronous copy, so that the
    // host goes on queueing the step's kernels while the batch crosses.
    let upload = |t: Tensor| {
        if device.is_cuda() {
            t.pin_memory(device).to_device_(device, Kind::Float, true, false)
        } else {
            t
        }
    };
    let pixels = |v: &[f32]| upload(Tensor::from_slice(v).view([n, 3, s, s]));
    let coords = |c: &[[f32; 4]]| {
        let flat: Vec<f32> = c.iter().flatten().copied().collect();
        upload(Tensor::from_slice(&flat).view([n, 4]))
    };
    (pixels(&b.view1), pixels(&b.view2), coords(&b.coords1), coords(&b.coords2))
}

/// Total steps of the run for a data set of `batches_per_epoch`.
pub fn total_steps(cfg: &Config, batches_per_epoch: usize) -> u64 {
    if cfg.train.steps > 0 {
        cfg.train.steps
    } else {
        cfg.train.epochs * batches_per_epoch as u64
    }
}

pub fn lr_schedule(cfg: &Config, batches_per_epoch: usize, world_size: usize) -> LrSchedule {
    let global_batch = (cfg.train.batch_size * world_size) as f64;
    LrSchedule {
        peak: cfg.optim.lr_per_256 * global_batch / 256.0,
        warmup_steps: (cfg.optim.warmup_epochs * batches_per_epoch as f64).round() as u64,
        total_steps: total_steps(cfg, batches_per_epoch),
        warmup_start_factor: cfg.optim.warmup_start_factor,
        final_lr: cfg.optim.final_lr,
    }
}

/// What one optimiser step did.
pub struct StepStats {
    /// NaN or infinite when the step was skipped for it.
    pub loss: f64,
    /// Norm of all online gradients together, before LARS.
    pub grad_norm: f64,
    /// The loss or the gradient was not finite, so nothing was applied.
    pub skipped: bool,
    pub lr: f64,
    pub momentum: f64,
    pub target_std: f64,
    pub positive_fraction: f64,
    /// Some rank asked to stop ([`Trainer::request_stop`]) before this step
    /// ended: every rank sees it at the same step.
    pub stop: bool,
}

/// The model, its optimiser and schedules: one PixPro step at a time.
pub struct Trainer {
    pub model: PixPro,
    opt: Lars,
    schedule: LrSchedule,
    momentum_base: f64,
    device: Device,
    /// Every tensor a forward pass or the momentum update changes before we
    /// know whether the step is good (target parameters and buffers, online
    /// BN buffers), each with a buffer of its own shape to restore it from.
    undo: Vec<(Tensor, Tensor)>,
    /// The trainable online parameters in name order, whose gradients are
    /// checked (and averaged over the ranks in that order).
    params: Vec<Tensor>,
    /// The ranks of a data-parallel run, if this is one.
    group: Option<Arc<Group>>,
    stop_requested: bool,
    /// Steps taken so far, skipped ones included.
    pub step: u64,
    pub total_steps: u64,
}

impl Trainer {
    pub fn new(cfg: &Config, batches_per_epoch: usize, device: Device) -> Result<Trainer> {
        Trainer::with_group(cfg, batches_per_epoch, device, None)
    }

    /// A trainer for one rank of a data-parallel run over `group` (one
    /// process when `None`): the learning rate follows the global batch.
    /// Call [`Trainer::sync_from_rank0`] once the state is loaded.
    pub fn with_group(
        cfg: &Config,
        batches_per_epoch: usize,
        device: Device,
        group: Option<Arc<Group>>,
    ) -> Result<Trainer> {
        tch::manual_seed(cfg.train.seed as i64);
        let mut model = PixPro::new(cfg.model.clone(), device)?;
        model.precision = cfg.train.precision;
        if cfg.train.precision == Precision::Bf16
            && !device.is_cuda()
            && precision::cpu_bf16_units().is_none()
        {
            tracing::warn!(
                "train.precision = \"bf16\" on a CPU without bfloat16 units (neither avx512_bf16 \
                 nor amx_bf16 in /proc/cpuinfo): libtorch emulates bf16 there, which is likely \
                 slower than fp32"
            );
        }
        let opt = Lars::new(&model.online, cfg.optim.lars());
        let world = group.as_ref().map_or(1, |g| g.world_size());
        let schedule = lr_schedule(cfg, batches_per_epoch, world);
        let undo = checkpoint::named(&model.target)
            .into_iter()
            .chain(checkpoint::named(&model.online).into_iter().filter(|(_, t)| !t.requires_grad()))
            .map(|(_, t)| {
                let saved = t.detach().empty_like();
                (t, saved)
            })
            .collect();
        let params = checkpoint::named(&model.online)
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(_, t)| t)
            .collect();
        Ok(Trainer {
            model,
            opt,
            schedule,
            momentum_base: cfg.model.momentum_base,
            device,
            undo,
            params,
            group,
            stop_requested: false,
            step: 0,
            total_steps: schedule.total_steps,
        })
    }

    /// Spec sections 4-6 for one batch: momentum update of the target, loss
    /// of both directions, backward, LARS.
    ///
    /// A step whose loss or global gradient norm is not finite is skipped:
    /// the target, the BN statistics, the online weights and the optimiser
    /// are left as they were before it, and `skipped` is set. It still counts
    /// as a step (the step counter, the schedules and the data position move
    /// on), so a run neither loops on a bad batch nor drifts from the loader
    /// position a checkpoint records.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats> {
        let (v1, v2, c1, c2) = batch_tensors(batch, self.device);
        let tau = momentum_at(self.step, self.total_steps, self.momentum_base);
        let lr = self.schedule.at(self.step);
        // A device-side copy of the target and the BN buffers: cheap next to
        // a forward pass, and the only way to undo the momentum update
        // exactly (the reference applies it before the forward).
        tch::no_grad(|| {
            for (live, saved) in &mut self.undo {
                saved.copy_(live);
            }
        });
        self.model.momentum_update(tau);
        let out = self.model.forward_loss(&v1, &v2, &c1, &c2)?;
        self.opt.zero_grad();
        let backward = out.loss.f_backward();
        if let Some(reason) = syncbn::take_failure() {
            return Err(Error::distributed(reason));
        }
        let mut loss = out.loss.detach().to_kind(Kind::Float).reshape([1]);
        let mut stop = Tensor::from_slice(&[f32::from(u8::from(self.stop_requested))]);
        if let Some(group) = &self.group {
            backward.map_err(|e| {
                Error::distributed(format!(
                    "rank {} of {}: the backward pass failed, most likely because another rank \
                     stopped: {e}",
                    group.rank(),
                    group.world_size()
                ))
            })?;
            // The ranks' losses and stop votes ride with the gradients.
            let extras = Tensor::cat(&[loss, stop.to_device(self.device)], 0);
            let sums = data_parallel::average_gradients(group, &self.params, &extras)?;
            loss = sums.narrow(0, 0, 1) / group.world_size() as f64;
            stop = sums.narrow(0, 1, 1);
        } else {
            backward?;
        }
        // One host sync for all checks.
        let checks = Tensor::cat(
            &[
                loss.to_kind(Kind::Double),
                grad_norm(&self.params).to_kind(Kind::Double).reshape([1]),
                stop.to_device(self.device).to_kind(Kind::Double),
            ],
            0,
        );
        let checks = Vec::<f64>::try_from(&checks)?;
        let (loss, grad_norm, stop) = (checks[0], checks[1], checks[2] > 0.0);
        let skipped = !(loss.is_finite() && grad_norm.is_finite());
        if skipped {
            tch::no_grad(|| {
                for (live, saved) in &mut self.undo {
                    live.copy_(saved);
                }
            });
            self.opt.zero_grad();
        } else {
            self.opt.step(lr);
        }
        self.step += 1;
        Ok(StepStats {
            loss,
            grad_norm,
            skipped,
            lr,
            momentum: tau,
            target_std: out.target_std,
            positive_fraction: out.positive_fraction,
            stop,
        })
    }

    /// Asks every rank to stop after the next step (see [`StepStats::stop`]).
    pub fn request_stop(&mut self) {
        self.stop_requested = true;
    }

    /// Makes every rank's state rank 0's: the networks, the optimiser, the
    /// step counter and `skipped`. Nothing to do in a run of one process.
    pub fn sync_from_rank0(&mut self, skipped: &mut u64) -> Result<()> {
        let Some(group) = self.group.clone() else { return Ok(()) };
        let counters =
            Tensor::from_slice(&[self.step as i64, *skipped as i64]).to_device(self.device);
        let state: Vec<Tensor> = checkpoint::named(&self.model.online)
            .into_iter()
            .chain(checkpoint::named(&self.model.target))
            .chain(self.opt.state())
            .map(|(_, t)| t)
            .chain([counters.shallow_clone()])
            .collect();
        data_parallel::broadcast_from_rank0(&group, &state)?;
        let counters = Vec::<i64>::try_from(&counters.to_device(Device::Cpu))?;
        self.step = counters[0] as u64;
        *skipped = counters[1] as u64;
        Ok(())
    }

    /// Writes the state to `path`; refuses, keeping the file there, when a
    /// weight or momentum buffer is not finite (an update that overflowed
    /// with finite gradients), so that a checkpoint is always a good state.
    pub fn save(&self, path: &std::path::Path, mut meta: Meta) -> Result<()> {
        meta.step = self.step;
        meta.total_steps = self.total_steps;
        let state = checkpoint::named(&self.model.online)
            .into_iter()
            .chain(checkpoint::named(&self.model.target))
            .chain(self.opt.state())
            .filter(|(_, t)| t.is_floating_point())
            .map(|(_, t)| t.isfinite().all())
            .collect::<Vec<_>>();
        if !state.is_empty() && !bool::try_from(Tensor::stack(&state, 0).all())? {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!(
                    "not written: the weights are not finite after step {}; the file there is \
                     kept as the last good state",
                    self.step
                ),
            });
        }
        Checkpoint::save(
            path,
            &meta,
            &[
                ("online", checkpoint::named(&self.model.online)),
                ("target", checkpoint::named(&self.model.target)),
                ("optim", self.opt.state()),
            ],
        )
    }

    pub fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        ck.restore("online", &mut self.model.online)?;
        ck.restore("target", &mut self.model.target)?;
        let optim = ck.group("optim");
        let device = self.device;
        self.opt
            .load_state(|n| optim.get(n).map(|t| t.to_device(device)))
            .map_err(|reason| Error::Checkpoint { path: ck.path.clone(), reason })?;
        self.step = ck.meta.step;
        Ok(())
    }
}

/// Norm of all gradients of `params` together: per-tensor norms on the
/// device and one reduction over them, so checking it costs one host sync.
fn grad_norm(params: &[Tensor]) -> Tensor {
    let norms: Vec<Tensor> = params
        .iter()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .map(|g| g.norm().to_kind(Kind::Float))
        .collect();
    match norms.first() {
        Some(_) => Tensor::stack(&norms, 0).norm(),
        None => Tensor::zeros([], (Kind::Float, Device::Cpu)),
    }
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

/// Trains `cfg` on the images under `opts.data`, continuing from the run's
/// newest loadable checkpoint when there is one.
pub fn pretrain(cfg: &Config, opts: &RunOptions) -> Result<RunSummary> {
    pretrain_with_nan_batches(cfg, opts, &|_| false)
}

/// [`pretrain`], with a NaN put into the batch of every step `nan_batch`
/// picks (1-based): how the tests reach the divergence guard without a
/// diverging recipe.
#[doc(hidden)]
pub fn pretrain_with_nan_batches(
    cfg: &Config,
    opts: &RunOptions,
    nan_batch: &dyn Fn(u64) -> bool,
) -> Result<RunSummary> {
    cfg.validate()?;
    let run = &opts.run;
    let started = Instant::now();
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    let launch = Launch::from_env()?;
    let device = match (pick_device(cfg.train.device)?, &launch) {
        (Device::Cuda(_), Some(l)) => Device::Cuda(l.local_rank),
        (device, _) => device,
    };
    let group = match &launch {
        Some(l) => {
            let timeout = Duration::from_secs_f64(cfg.distributed.timeout_s);
            Some(Arc::new(Group::connect(l, cfg.distributed.engine, device, timeout)?))
        }
        None => None,
    };
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()));
    // Only rank 0 writes: the run directory, the progress and the log lines.
    let main = rank == 0;
    let threads = tch::get_num_threads().max(1) as usize;
    let loader = open_sharded_loader(cfg, &opts.data, threads, device, rank, world)?;
    let per_epoch = loader.batches_per_epoch() as u64;
    let mut trainer = Trainer::with_group(cfg, per_epoch as usize, device, group.clone())?;
    let total = trainer.total_steps;
    let _sync_bn =
        group.as_ref().filter(|_| cfg.distributed.sync_bn).map(|g| syncbn::install(g.clone()));
    if let Some(g) = &group {
        if main {
            tracing::info!(
                "data-parallel run: {world} ranks on {}, global batch {} ({} per rank), SyncBN {}",
                cfg.distributed.engine.resolve(device).name(),
                cfg.train.batch_size * world,
                cfg.train.batch_size,
                if cfg.distributed.sync_bn { "on" } else { "off" },
            );
        }
        tracing::debug!("rank {} of {} on {device:?}", g.rank(), g.world_size());
    }

    let mut skipped = 0u64;
    if main {
        for dir in [run.checkpoints(), run.plots()] {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        if run.can_resume() {
            let meta = restore_newest(&mut trainer, run)?;
            skipped = meta.skipped_steps;
            // A run killed after its last checkpoint logged steps that will
            // now run again; drop their lines so each step appears once.
            truncate_metrics(&run.metrics(), trainer.step)?;
            tracing::info!("resuming {} at step {} of {total}", run.root.display(), trainer.step);
        }
    }
    trainer.sync_from_rank0(&mut skipped)?;
    let config_text = cfg.to_toml();
    let mut metrics = if main {
        checkpoint::write_atomically(&run.config(), config_text.as_bytes())?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.metrics())
            .map_err(|e| Error::io(run.metrics(), e))?;
        Some(file)
    } else {
        None
    };

    let stop_at = opts.stop_at.unwrap_or(total).min(total);
    let interrupted = interrupt_flag()?;

    let save = |trainer: &Trainer, skipped: u64| -> Result<()> {
        let step = trainer.step;
        let meta = Meta {
            version: FORMAT_VERSION,
            step,
            total_steps: total,
            epoch: step / per_epoch,
            index_in_epoch: (step % per_epoch) as usize,
            config: config_text.clone(),
            skipped_steps: skipped,
        };
        let last = run.last_checkpoint();
        trainer.save(&last, meta)?;
        draw_loss_plot(run);
        if step.is_multiple_of(cfg.train.checkpoint_every) || step == total {
            let numbered = run.numbered_checkpoint(step);
            let _ = fs::remove_file(&numbered);
            fs::hard_link(&last, &numbered)
                .or_else(|_| fs::copy(&last, &numbered).map(|_| ()))
                .map_err(|e| Error::io(&numbered, e))?;
        }
        Ok(())
    };

    let bar = progress_bar(opts.quiet || !main, trainer.step, stop_at);
    let start = trainer.step;
    let mut batches = loader.iter_from(start / per_epoch, (start % per_epoch) as usize);
    let mut window = Window::default();
    let mut totals = Window::default();
    let mut replaced = 0usize;
    let mut last_loss = None;
    let mut stopped_by = None;
    // Consecutive skipped steps, and the step of the last checkpoint written.
    let mut streak = 0u64;
    let mut saved_step = trainer.step;
    let mut diverged = false;
    while trainer.step < stop_at {
        let t0 = Instant::now();
        let mut batch =
            batches.next().ok_or_else(|| Error::data(&opts.data, "the loader stopped"))??;
        let waited = t0.elapsed().as_secs_f64();
        for (path, reason) in &batch.replaced {
            tracing::warn!("{}: {reason}; replaced by another image", path.display());
        }
        replaced += batch.replaced.len();
        if nan_batch(trainer.step + 1) {
            batch.view1.iter_mut().for_each(|p| *p = f32::NAN);
        }
        let stats = trainer.train_step(&batch)?;
        let step = trainer.step;
        let loss = if stats.skipped {
            skipped += 1;
            streak += 1;
            bar.suspend(|| {
                tracing::warn!(
                    "step {step}: loss {} and gradient norm {} are not both finite; step skipped \
                     ({streak} in a row, {skipped} in this run)",
                    stats.loss,
                    stats.grad_norm
                )
            });
            None
        } else {
            streak = 0;
            last_loss = Some(stats.loss);
            Some(stats.loss)
        };
        let elapsed = t0.elapsed().as_secs_f64();
        let images = batch.indices.len() * world;
        window.add(elapsed, waited, images, loss);
        totals.add(elapsed, waited, images, loss);
        if step % cfg.train.log_every == 0 || step == stop_at {
            let line = MetricsLine {
                step,
                epoch: batch.epoch,
                loss: stats.loss,
                loss_avg: window.mean_loss(),
                lr: stats.lr,
                momentum: stats.momentum,
                images_per_sec: window.images_per_sec(),
                data_wait_fraction: window.wait_fraction(),
                target_std: stats.target_std,
                positive_fraction: stats.positive_fraction,
                replaced_images: replaced,
                skipped_steps: skipped,
            };
            if let Some(metrics) = metrics.as_mut() {
                let json = serde_json::to_string(&line).unwrap_or_default();
                writeln!(metrics, "{json}").map_err(|e| Error::io(run.metrics(), e))?;
            }
            if bar.is_hidden() && !opts.quiet && main {
                eprintln!(
                    "step {step}/{stop_at}  loss {:.4}  lr {:.4}  {:.1} img/s  data wait {:.0}%  target std {:.4}",
                    line.loss_avg,
                    stats.lr,
                    line.images_per_sec,
                    100.0 * line.data_wait_fraction,
                    stats.target_std,
                );
            }
            window = Window::default();
        }
        bar.set_position(step);
        bar.set_message(format!(
            "loss {:.4} lr {:.4} {:.1} img/s",
            stats.loss,
            stats.lr,
            totals.images_per_sec()
        ));
        if streak >= cfg.train.max_bad_steps {
            diverged = true;
            break;
        }
        // No periodic checkpoint inside a streak of skipped steps: the
        // weights are those from before it, but a streak can also mean the
        // last applied update already broke them.
        if step % cfg.train.checkpoint_every == 0 && streak == 0 {
            if main {
                save(&trainer, skipped)?;
            }
            saved_step = step;
        }
        // Every rank stops at the same step: a signal is a vote that the
        // next step's all-reduce carries to the others.
        if interrupted.load(Ordering::Relaxed) {
            trainer.request_stop();
        }
        if stats.stop || (group.is_none() && interrupted.load(Ordering::Relaxed)) {
            stopped_by = Some("interrupted by a signal".to_string());
            break;
        }
    }
    drop(batches);
    if main && !diverged && saved_step != trainer.step {
        save(&trainer, skipped)?;
    }
    if main {
        draw_loss_plot(run);
    }
    bar.finish_and_clear();
    if diverged {
        stopped_by = Some(format!(
            "diverged: {streak} consecutive steps skipped to step {}; last checkpoint at step \
             {saved_step}",
            trainer.step
        ));
    } else if stopped_by.is_none() && trainer.step < total {
        stopped_by = Some(format!("--stop-at {stop_at}"));
    }
    let summary = RunSummary {
        steps_done: trainer.step,
        total_steps: total,
        finished: trainer.step == total && !diverged,
        stopped_by,
        final_loss: last_loss,
        skipped_steps: skipped,
        wall_s: started.elapsed().as_secs_f64(),
        images_per_sec: totals.images_per_sec(),
        data_wait_fraction: totals.wait_fraction(),
        replaced_images: replaced,
        device: format!("{device:?}"),
        run_dir: run.root.clone(),
    };
    if main {
        let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
        checkpoint::write_atomically(&run.summary(), json.as_bytes())?;
    }
    if diverged {
        let kept = if run.last_checkpoint().exists() {
            format!(
                "{} (step {saved_step}) is kept as the last good state",
                run.last_checkpoint().display()
            )
        } else {
            "no checkpoint had been written yet".to_string()
        };
        return Err(Error::Diverged { step: trainer.step, bad_steps: streak, kept });
    }
    Ok(summary)
}

/// Restores `trainer` from the newest checkpoint of `run` that loads and fits,
/// saying why each newer one was passed over.
fn restore_newest(trainer: &mut Trainer, run: &RunDir) -> Result<Meta> {
    let mut tried = Vec::new();
    for path in run.checkpoint_files() {
        match Checkpoint::load(&path).and_then(|ck| trainer.restore(&ck).map(|_| ck.meta)) {
            Ok(meta) => {
                if !tried.is_empty() {
                    tracing::warn!("falling back to {} (step {})", path.display(), meta.step);
                }
                return Ok(meta);
            }
            Err(e) => {
                tracing::warn!("cannot resume from {e}");
                tried.push(format!("{} ({e})", path.display()));
            }
        }
    }
    Err(Error::Checkpoint {
        path: run.checkpoints(),
        reason: format!(
            "no checkpoint to resume from loads; tried: {}. Move the folder away to start again",
            tried.join("; ")
        ),
    })
}

/// Drops the lines of `path` (metrics.jsonl) past `step`, and a torn last
/// line, atomically; a missing file is left missing.
pub fn truncate_metrics(path: &std::path::Path, step: u64) -> Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let keep = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
            .is_some_and(|s| s <= step)
    };
    let kept: String = text.lines().filter(|l| keep(l)).map(|l| format!("{l}\n")).collect();
    if kept.len() != text.len() {
        checkpoint::write_atomically(path, kept.as_bytes())?;
    }
    Ok(())
}

/// Scans `data` and opens a one-process loader for `cfg`, reporting
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
    let (dataset, report) = Dataset::scan(data)?;
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

fn progress_bar(quiet: bool, pos: u64, len: u64) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_position(pos);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Sums over a stretch of steps, for rates and averages.
#[derive(Default)]
struct Window {
    seconds: f64,
    waited: f64,
    images: usize,
    loss_sum: f64,
    steps: usize,
}

impl Window {
    /// `loss` is None for a skipped step, which counts in the rates only.
    fn add(&mut self, seconds: f64, waited: f64, images: usize, loss: Option<f64>) {
        self.seconds += seconds;
        self.waited += waited;
        self.images += images;
        if let Some(loss) = loss {
            self.loss_sum += loss;
            self.steps += 1;
        }
    }
    fn images_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.images as f64 / self.seconds
        } else {
            0.0
        }
    }
    fn wait_fraction(&self) -> f64 {
        if self.seconds > 0.0 {
            self.waited / self.seconds
        } else {
            0.0
        }
    }
    /// NaN (null in metrics.jsonl) when every step of the window was skipped.
    fn mean_loss(&self) -> f64 {
        if self.steps == 0 {
            f64::NAN
        } else {
            self.loss_sum / self.steps as f64
        }
    }
}

/// The online and target networks of a checkpoint, with the config saved in
/// it: for looking at what a run learned.
pub fn load_pixpro(path: &std::path::Path, device: Device) -> Result<(Config, PixPro)> {
    let ck = Checkpoint::load(path)?;
    let cfg = ck.config()?;
    let mut model = PixPro::new(cfg.model.clone(), device)?;
    ck.restore("online", &mut model.online)?;
    ck.restore("target", &mut model.target)?;
    Ok((cfg, model))
}

/// Redraws `plots/loss.png` from `metrics.jsonl`. A picture is a
/// convenience: failing to draw it only warns.
fn draw_loss_plot(run: &RunDir) {
    if let Err(e) = crate::plots::plot_training(&run.metrics(), &run.loss_plot()) {
        tracing::warn!("could not draw {}: {e}", run.loss_plot().display());
    }
}

/// Reads a run's resolved config, for resuming.
pub fn saved_config(run: &RunDir) -> Result<Config> {
    Config::from_toml_file(&run.config(), &Config::default())
}

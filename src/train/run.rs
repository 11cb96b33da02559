//! The pretraining loop: batches -> model -> loss -> LARS + momentum update
//! -> checkpoints and metrics, in a run directory that can be resumed.
//!
//! [`pretrain`] goes through the phases of one run, each a method of `Run`:
//! `connect` (the device and the ranks of a launch); then, in `pretrain`
//! itself, the loader and the precision (`auto`'s trial, on rank 0); `open`
//! and `resume` (the trainer, its newest checkpoint, the run's files), then
//! per step `step` (one training step and its non-finite guard), `log`
//! (metrics line and its TensorBoard event, progress) and `checkpoint` (the
//! periodic save), and at the end `finish` (final save, plot, summary).
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tch::{Device, Tensor};

use crate::data::loader::{BatchIter, Loader};
use crate::distributed::collective::{Group, Launch};
use crate::distributed::syncbn;
use crate::files::{copy_atomically, write_atomically};
use crate::model::precision::Precision;
use crate::train::checkpoint::{Checkpoint, Meta, FORMAT_VERSION};
use crate::train::config::Config;
use crate::train::events;
use crate::train::lock::DirLock;
use crate::train::machine::{interrupt_flag, open_sharded_loader, pick_device};
use crate::train::precision_trial;
use crate::train::report::{progress_bar, MetricsLine, RunSummary, Window};
use crate::train::run_dir::{draw_loss_plot, saved_config, truncate_metrics, RunDir};
use crate::train::steal::{self, steal_since, CpuTimes};
use crate::train::trainer::{StepStats, Trainer};
use crate::{Error, Result};

/// What the caller decides beyond the config.
pub struct RunOptions {
    pub data: PathBuf,
    pub run: RunDir,
    /// Weights to start a new run's encoders from (`--init`); a resumed run
    /// continues from its own checkpoint instead.
    pub init: Option<InitWeights>,
    /// Stop (with a checkpoint) once this many steps are done in total,
    /// before the configured end: for time-sliced machines and tests.
    pub stop_at: Option<u64>,
    /// No progress bar or per-step lines.
    pub quiet: bool,
    /// Test hook, empty outside tests: the steps (1-based) whose batch gets
    /// NaN pixels, so that tests reach the non-finite guard and the
    /// divergence stop without a diverging recipe.
    pub nan_steps: Vec<u64>,
}

impl RunOptions {
    /// Trains the images under `data` into `run` to the configured end,
    /// with progress shown; set the other fields by struct update.
    pub fn new(data: impl Into<PathBuf>, run: RunDir) -> RunOptions {
        RunOptions {
            data: data.into(),
            run,
            init: None,
            stop_at: None,
            quiet: false,
            nan_steps: Vec::new(),
        }
    }
}

/// An encoder to start from, with where it came from for `init.json`.
pub struct InitWeights {
    /// The encoder's torchvision-named tensors.
    pub tensors: Vec<(String, Tensor)>,
    /// The file, and what was read from it.
    pub source: String,
}

/// Trains `cfg` on the images under `opts.data`, continuing from the run's
/// newest loadable checkpoint when there is one.
pub fn pretrain(cfg: &Config, opts: &RunOptions) -> Result<RunSummary> {
    cfg.validate()?;
    let started = Instant::now();
    let (device, group) = Run::connect(cfg)?;
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()));
    // Rank 0 owns the run directory; the other ranks never write it.
    let _owner = match rank {
        0 => Some(DirLock::acquire(&opts.run.root)?),
        _ => None,
    };
    let threads = tch::get_num_threads().max(1) as usize;
    let loader = open_sharded_loader(cfg, &opts.data, threads, device, rank, world)?;
    // config.toml and the checkpoints keep the precision `auto` chose, so
    // that a resume, even on other hardware, computes as the run began.
    let mut precision = match (rank, cfg.train.precision) {
        (0, Precision::Auto) if opts.run.can_resume() => {
            let saved = saved_config(&opts.run)?.train.precision;
            tracing::info!("precision auto: {}, as the run began", saved.name());
            saved
        }
        (0, _) => {
            let (precision, why) = precision_trial::resolve(cfg, device, &loader)?;
            tracing::info!("precision {why}");
            precision
        }
        (_, asked) => asked,
    };
    if let Some(g) = &group {
        precision = precision_trial::from_rank0(g, device, precision)?;
    }
    let mut resolved = cfg.clone();
    resolved.train.precision = precision;
    let cfg = &resolved;
    let mut run = Run::open(cfg, opts, loader, device, group, started)?;
    let ending = run.train()?;
    run.finish(ending)
}

/// One pretraining run between its first and its last step.
struct Run<'a> {
    cfg: &'a Config,
    opts: &'a RunOptions,
    started: Instant,
    device: Device,
    /// Only rank 0 writes: the run directory, the progress and the log lines.
    main: bool,
    world: usize,
    /// Open for appending on rank 0.
    logs: Option<Logs>,
    bar: ProgressBar,
    _sync_bn: Option<syncbn::Installed>,
    trainer: Trainer,
    loader: Loader,
    /// The ranks of a data-parallel run, if this is one.
    group: Option<Arc<Group>>,
    per_epoch: u64,
    /// The resolved config, as config.toml and every checkpoint hold it.
    config_text: String,
    stop_at: u64,
    interrupted: Arc<AtomicBool>,
    /// Steps skipped over the whole run, and in a row up to now.
    skipped: u64,
    streak: u64,
    /// The step of the last checkpoint written.
    saved_step: u64,
    replaced: usize,
    last_loss: Option<f64>,
    /// The steps since the last metrics line, and all of this process's.
    window: Window,
    totals: Window,
    /// The CPU counters when the window and this process's steps began.
    window_cpu: Option<CpuTimes>,
    run_cpu: Option<CpuTimes>,
}

/// metrics.jsonl and the TensorBoard file that mirrors it.
struct Logs {
    metrics: File,
    events: File,
}

/// Why the steps stopped.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    /// `stop_at`: the end of the run or `--stop-at`.
    StopAt,
    /// A signal, on any rank.
    Signal,
    /// `max_bad_steps` skipped steps in a row.
    Diverged,
}

/// One step as the log sees it.
struct Stepped {
    stats: StepStats,
    /// The epoch of its batch.
    epoch: u64,
    /// Over all ranks.
    images: usize,
    /// Its whole time, and the part of it spent waiting for the batch.
    seconds: f64,
    waited: f64,
}

impl<'a> Run<'a> {
    /// The device and, when a launcher started this process as one rank of
    /// several, the group of ranks.
    fn connect(cfg: &Config) -> Result<(Device, Option<Arc<Group>>)> {
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
                if l.restart > 0 && l.rank == 0 {
                    tracing::info!("torchrun's agent restarted the group (restart {})", l.restart);
                }
                let timeout = Duration::from_secs_f64(cfg.distributed.timeout_s);
                Some(Arc::new(Group::connect(l, cfg.distributed.engine, device, timeout)?))
            }
            None => None,
        };
        Ok((device, group))
    }

    /// The trainer of this rank on its `loader`, resumed where the run's
    /// newest checkpoint left off and the same on every rank, with the
    /// run's files open for what comes.
    fn open(
        cfg: &'a Config,
        opts: &'a RunOptions,
        loader: Loader,
        device: Device,
        group: Option<Arc<Group>>,
        started: Instant,
    ) -> Result<Run<'a>> {
        let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()));
        let main = rank == 0;
        let per_epoch = loader.batches_per_epoch() as u64;
        let mut trainer = Trainer::with_group(cfg, per_epoch as usize, device, group.clone())?;
        let sync_bn =
            group.as_ref().filter(|_| cfg.distributed.sync_bn).map(|g| syncbn::install(g.clone()));
        if let Some(g) = &group {
            if main {
                tracing::info!(
                    "data-parallel run: {world} ranks on {}, global batch {} ({} per rank), \
                     SyncBN {}",
                    cfg.distributed.engine.resolve(device).name(),
                    cfg.train.batch_size * world,
                    cfg.train.batch_size,
                    if cfg.distributed.sync_bn { "on" } else { "off" },
                );
            }
            tracing::debug!("rank {} of {} on {device:?}", g.rank(), g.world_size());
        }
        let fresh = !opts.run.can_resume();
        let mut skipped = if main { Run::resume(&mut trainer, &opts.run)? } else { 0 };
        if let (true, true, Some(init)) = (main, fresh, &opts.init) {
            Run::start_from(&mut trainer, &opts.run, init)?;
        }
        trainer.sync_from_rank0(&mut skipped)?;
        let config_text = cfg.to_toml();
        let logs = if main { Some(Run::open_outputs(&opts.run, &config_text)?) } else { None };
        let stop_at = opts.stop_at.unwrap_or(trainer.total_steps).min(trainer.total_steps);
        let interrupted = interrupt_flag()?;
        let bar = progress_bar(opts.quiet || !main, trainer.step, stop_at);
        Ok(Run {
            cfg,
            opts,
            started,
            device,
            main,
            world,
            logs,
            bar,
            _sync_bn: sync_bn,
            saved_step: trainer.step,
            trainer,
            loader,
            group,
            per_epoch,
            config_text,
            stop_at,
            interrupted,
            skipped,
            streak: 0,
            replaced: 0,
            last_loss: None,
            window: Window::default(),
            totals: Window::default(),
            window_cpu: CpuTimes::now(),
            run_cpu: CpuTimes::now(),
        })
    }

    /// Makes the run's folders and, when it has a checkpoint, restores
    /// `trainer` from the newest one that loads: the steps skipped so far.
    fn resume(trainer: &mut Trainer, run: &RunDir) -> Result<u64> {
        for dir in [run.checkpoints(), run.plots()] {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let skipped = if run.can_resume() {
            let meta = restore_newest(trainer, run)?;
            tracing::info!(
                "resuming {} at step {} of {}",
                run.root.display(),
                trainer.step,
                trainer.total_steps
            );
            meta.skipped_steps
        } else {
            0
        };
        // A run killed after its last checkpoint (or before its first)
        // logged steps that will now run again; drop their lines so each
        // step appears once.
        truncate_metrics(&run.metrics(), trainer.step)?;
        Ok(skipped)
    }

    /// Both encoders from `init`, recorded in `init.json`: a run's weights
    /// are not its own from step 0 on, and whoever reads it later should
    /// know from where.
    fn start_from(trainer: &mut Trainer, run: &RunDir, init: &InitWeights) -> Result<()> {
        trainer.model.init_encoders(&init.tensors)?;
        let record = serde_json::json!({
            "weights": init.source,
            "tensors": init.tensors.len(),
            "into": "online and target encoders; heads start fresh",
        });
        let text = serde_json::to_string_pretty(&record).unwrap_or_default();
        write_atomically(&run.init_record(), text.as_bytes())?;
        tracing::info!("both encoders start from {}", init.source);
        Ok(())
    }

    /// Writes config.toml, rebuilds the TensorBoard file from the lines of
    /// metrics.jsonl that resume kept, and opens both for appending.
    fn open_outputs(run: &RunDir, config_text: &str) -> Result<Logs> {
        write_atomically(&run.config(), config_text.as_bytes())?;
        events::rebuild_from_metrics(&run.metrics(), &run.events())?;
        let append = |path: PathBuf| {
            OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(path, e))
        };
        Ok(Logs { metrics: append(run.metrics())?, events: append(run.events())? })
    }

    /// Steps from where the trainer stands until `stop_at`, a streak of
    /// skipped steps or a signal.
    fn train(&mut self) -> Result<Ending> {
        let start = self.trainer.step;
        let mut batches =
            self.loader.iter_from(start / self.per_epoch, (start % self.per_epoch) as usize);
        while self.trainer.step < self.stop_at {
            let stepped = self.step(&mut batches)?;
            self.log(&stepped)?;
            if self.streak >= self.cfg.train.max_bad_steps {
                return Ok(Ending::Diverged);
            }
            self.checkpoint()?;
            if self.signalled(&stepped.stats) {
                return Ok(Ending::Signal);
            }
        }
        Ok(Ending::StopAt)
    }

    /// One training step on the next batch. The trainer's non-finite guard
    /// may skip it ([`Trainer::train_step`]); a skipped step is warned about
    /// and counted here.
    fn step(&mut self, batches: &mut BatchIter) -> Result<Stepped> {
        let t0 = Instant::now();
        let mut batch =
            batches.next().ok_or_else(|| Error::data(&self.opts.data, "the loader stopped"))??;
        let waited = t0.elapsed().as_secs_f64();
        for (path, reason) in &batch.replaced {
            tracing::warn!("{}: {reason}; replaced by another image", path.display());
        }
        self.replaced += batch.replaced.len();
        if self.opts.nan_steps.contains(&(self.trainer.step + 1)) {
            batch.view1.iter_mut().for_each(|p| *p = f32::NAN);
        }
        let stats = self.trainer.train_step(&batch)?;
        if stats.skipped {
            self.skipped += 1;
            self.streak += 1;
            let (step, streak, skipped) = (self.trainer.step, self.streak, self.skipped);
            self.bar.suspend(|| {
                tracing::warn!(
                    "step {step}: loss {} and gradient norm {} are not both finite; step skipped \
                     ({streak} in a row, {skipped} in this run)",
                    stats.loss,
                    stats.grad_norm
                )
            });
        } else {
            self.streak = 0;
            self.last_loss = Some(stats.loss);
        }
        Ok(Stepped {
            epoch: batch.epoch,
            seconds: t0.elapsed().as_secs_f64(),
            waited,
            images: batch.indices.len() * self.world,
            stats,
        })
    }

    /// Counts the step in the rates, writes a metrics line every `log_every`
    /// steps and at `stop_at`, and moves the progress bar.
    fn log(&mut self, s: &Stepped) -> Result<()> {
        let step = self.trainer.step;
        let loss = (!s.stats.skipped).then_some(s.stats.loss);
        self.window.add(s.seconds, s.waited, s.images, loss);
        self.totals.add(s.seconds, s.waited, s.images, loss);
        if step.is_multiple_of(self.cfg.train.log_every) || step == self.stop_at {
            self.write_metrics_line(s)?;
            self.window = Window::default();
            self.window_cpu = CpuTimes::now();
        }
        self.bar.set_position(step);
        self.bar.set_message(format!(
            "loss {:.4} lr {:.4} {:.1} img/s",
            s.stats.loss,
            s.stats.lr,
            self.totals.images_per_sec()
        ));
        Ok(())
    }

    /// The step's line of metrics.jsonl and its event in the TensorBoard
    /// file, and its line of stderr when there is no progress bar to show it.
    fn write_metrics_line(&mut self, s: &Stepped) -> Result<()> {
        let (step, stats) = (self.trainer.step, &s.stats);
        let line = MetricsLine {
            step,
            wall_time: events::unix_seconds(),
            epoch: s.epoch,
            loss: stats.loss,
            loss_avg: self.window.mean_loss(),
            lr: stats.lr,
            momentum: stats.momentum,
            images_per_sec: self.window.images_per_sec(),
            data_wait_fraction: self.window.wait_fraction(),
            cpu_steal_fraction: steal_since(self.window_cpu),
            target_std: stats.target_std,
            positive_fraction: stats.positive_fraction,
            replaced_images: self.replaced,
            skipped_steps: self.skipped,
        };
        if let Some(logs) = self.logs.as_mut() {
            let json = serde_json::to_string(&line).unwrap_or_default() + "\n";
            append_whole(&mut logs.metrics, &self.opts.run.metrics(), json.as_bytes())?;
            if let Some(record) = events::metrics_record(&json) {
                append_whole(&mut logs.events, &self.opts.run.events(), &record)?;
            }
        }
        if self.bar.is_hidden() && !self.opts.quiet && self.main {
            eprintln!(
                "step {step}/{}  loss {:.4}  lr {:.4}  {:.1} img/s  data wait {:.0}%  target std {:.4}{}",
                self.stop_at,
                line.loss_avg,
                stats.lr,
                line.images_per_sec,
                100.0 * line.data_wait_fraction,
                stats.target_std,
                steal::shown(line.cpu_steal_fraction).map(|s| format!("  {s}")).unwrap_or_default(),
            );
        }
        Ok(())
    }

    /// The periodic checkpoint, every `checkpoint_every` steps.
    fn checkpoint(&mut self) -> Result<()> {
        let step = self.trainer.step;
        // None inside a streak of skipped steps: the weights are those from
        // before it, but a streak can also mean the last applied update
        // already broke them.
        if step.is_multiple_of(self.cfg.train.checkpoint_every) && self.streak == 0 {
            if self.main {
                self.save()?;
            }
            self.saved_step = step;
        }
        Ok(())
    }

    /// Writes last.safetensors and redraws the loss plot; every
    /// `checkpoint_every` steps and at the end, a numbered copy too.
    fn save(&self) -> Result<()> {
        let (run, step, total) = (&self.opts.run, self.trainer.step, self.trainer.total_steps);
        let meta = Meta {
            version: FORMAT_VERSION,
            step,
            total_steps: total,
            epoch: step / self.per_epoch,
            index_in_epoch: (step % self.per_epoch) as usize,
            config: self.config_text.clone(),
            skipped_steps: self.skipped,
        };
        let last = run.last_checkpoint();
        self.trainer.save(&last, meta)?;
        draw_loss_plot(run)?;
        if step.is_multiple_of(self.cfg.train.checkpoint_every) || step == total {
            copy_atomically(&last, &run.numbered_checkpoint(step))?;
        }
        Ok(())
    }

    /// Whether a signal stops the run after this step. Every rank stops at
    /// the same step: a signal is a vote that the next step's all-reduce
    /// carries to the others.
    fn signalled(&mut self, stats: &StepStats) -> bool {
        if self.interrupted.load(Ordering::Relaxed) {
            self.trainer.request_stop();
        }
        stats.stop || (self.group.is_none() && self.interrupted.load(Ordering::Relaxed))
    }

    /// The final checkpoint (none after a divergence: the last one written
    /// is the last good state), the loss plot and summary.json. A diverged
    /// run ends in [`Error::Diverged`].
    fn finish(self, ending: Ending) -> Result<RunSummary> {
        let diverged = ending == Ending::Diverged;
        if self.main {
            // save() redraws the loss plot itself.
            // A run stopped at step 0 (`--stop-at 0`) still leaves its
            // starting point, e.g. to export what `--init` read.
            let unsaved = self.saved_step != self.trainer.step || !self.opts.run.can_resume();
            if !diverged && unsaved {
                self.save()?;
            } else {
                draw_loss_plot(&self.opts.run)?;
            }
        }
        self.bar.finish_and_clear();
        let summary = self.summary(ending);
        if self.main {
            let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
            write_atomically(&self.opts.run.summary(), json.as_bytes())?;
        }
        if diverged {
            return Err(self.diverged());
        }
        Ok(summary)
    }

    fn summary(&self, ending: Ending) -> RunSummary {
        let (step, total) = (self.trainer.step, self.trainer.total_steps);
        let stopped_by = match ending {
            Ending::Diverged => Some(format!(
                "diverged: {} consecutive steps skipped to step {step}; last checkpoint at step \
                 {}",
                self.streak, self.saved_step
            )),
            Ending::Signal => Some("interrupted by a signal".to_string()),
            Ending::StopAt if step < total => Some(format!("--stop-at {}", self.stop_at)),
            Ending::StopAt => None,
        };
        RunSummary {
            steps_done: step,
            total_steps: total,
            finished: step == total && ending != Ending::Diverged,
            stopped_by,
            final_loss: self.last_loss,
            skipped_steps: self.skipped,
            wall_s: self.started.elapsed().as_secs_f64(),
            images_per_sec: self.totals.images_per_sec(),
            data_wait_fraction: self.totals.wait_fraction(),
            cpu_steal_fraction: steal_since(self.run_cpu),
            replaced_images: self.replaced,
            device: format!("{:?}", self.device),
            precision: self.cfg.train.precision.name().to_string(),
            run_dir: self.opts.run.root.clone(),
        }
    }

    fn diverged(&self) -> Error {
        let last = self.opts.run.last_checkpoint();
        let kept = if last.exists() {
            format!("{} (step {}) is kept as the last good state", last.display(), self.saved_step)
        } else {
            "no checkpoint had been written yet".to_string()
        };
        Error::Diverged { step: self.trainer.step, bad_steps: self.streak, kept }
    }
}

/// Appends `bytes` to `file` (at `path`) whole: no torn line or record is
/// left behind where the disk ran out.
fn append_whole(file: &mut File, path: &Path, bytes: &[u8]) -> Result<()> {
    let end = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if let Err(e) = file.write_all(bytes) {
        let _ = file.set_len(end);
        return Err(Error::io(path, e));
    }
    Ok(())
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

//! One PixPro step at a time: the model, LARS and the schedules, with the
//! guard that skips a step whose loss or gradient is not finite.
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::data::loader::Batch;
use crate::distributed::collective::Group;
use crate::distributed::data_parallel;
use crate::distributed::syncbn;
use crate::method::momentum::momentum_at;
use crate::method::PixPro;
use crate::model::precision::{self, Precision};
use crate::optim::lars::Lars;
use crate::optim::schedule::LrSchedule;
use crate::train::checkpoint::{self, Checkpoint, Meta};
use crate::train::config::Config;
use crate::{Error, Result};

/// Total steps of the run for a data set of `batches_per_epoch`.
pub fn total_steps(cfg: &Config, batches_per_epoch: usize) -> u64 {
    if cfg.train.steps > 0 {
        cfg.train.steps
    } else {
        cfg.train.epochs * batches_per_epoch as u64
    }
}

pub fn lr_schedule(cfg: &Config, batches_per_epoch: usize, world_size: usize) -> LrSchedule {
    LrSchedule {
        peak: cfg.optim.peak_lr(cfg.train.batch_size * world_size),
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
    ///
    /// `train.precision` must be fp32 or bf16: `auto` is a run's to decide
    /// ([`crate::train::precision_trial::resolve`], which `pretrain` and
    /// `bench` call), and a trainer that read the CPU's flags instead could
    /// compute in a precision the trial would not have chosen.
    pub fn with_group(
        cfg: &Config,
        batches_per_epoch: usize,
        device: Device,
        group: Option<Arc<Group>>,
    ) -> Result<Trainer> {
        if cfg.train.precision == Precision::Auto {
            return Err(Error::config(
                "train.precision",
                "a Trainer computes in fp32 or bf16; resolve `auto` first with \
                 train::precision_trial::resolve, as `pretrain` does",
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::Preset;

    #[test]
    fn a_trainer_asked_for_auto_refuses_and_says_how_to_resolve_it() {
        let mut cfg = Preset::Cpu.config();
        assert_eq!(cfg.train.precision, Precision::Auto);
        let Err(e) = Trainer::new(&cfg, 4, Device::Cpu) else {
            panic!("a Trainer took `auto` without a trial");
        };
        let e = e.to_string();
        assert!(e.contains("train.precision") && e.contains("precision_trial::resolve"), "{e}");
        cfg.train.precision = Precision::Bf16;
        assert_eq!(Trainer::new(&cfg, 4, Device::Cpu).unwrap().model.precision, Precision::Bf16);
    }
}

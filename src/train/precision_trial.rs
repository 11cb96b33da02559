//! `precision = "auto"` on a CPU with bfloat16 units: a short timed trial
//! of both precisions decides, because the CPU's flags do not say whether
//! bf16 pays. On an AMD EPYC with AVX-512 BF16 the `cpu` preset trained
//! 1.7x faster in bf16; on an Intel Xeon under KVM listing the same flag
//! it trained at 0.75x fp32's speed (docs/results.md). A CUDA device of
//! compute capability 8.0 or later has no such doubt and takes bf16 by the
//! rule in [`Precision::resolve`].
//!
//! The trial trains a throwaway model on the first batch, before the run's
//! own trainer is made and seeded, so the run's numbers do not depend on
//! it; only its outcome, saved in config.toml, does. In a data-parallel run
//! rank 0 alone tries and decides, and tells the other ranks
//! ([`from_rank0`]).
use std::time::Instant;

use tch::{Device, Tensor};

use crate::data::loader::{Batch, Loader};
use crate::distributed::collective::Group;
use crate::model::precision::{self, Precision};
use crate::train::config::Config;
use crate::train::trainer::Trainer;
use crate::{Error, Result};

/// Samples per trial step: enough for the step time to be the convolutions',
/// few enough that a ResNet-50 at 224 px on a CPU tries both in a minute.
const TRIAL_SAMPLES: usize = 16;

/// Timed steps per precision, after one untimed step each; interleaved, so
/// that a slow patch of the machine hits both.
const TIMED_STEPS: usize = 3;

/// bf16 is kept only when its step takes at most this share of fp32's:
/// bf16 rounds the forward pass, which a tie does not pay for.
const BF16_AT_MOST: f64 = 0.9;

/// The precision a run of `cfg` computes in on `device`, with why in words
/// (for the start of the run). fp32 and bf16 stay as asked; `auto` follows
/// [`Precision::resolve`], except on a CPU with bfloat16 units, where the
/// trial decides.
pub fn resolve(cfg: &Config, device: Device, loader: &Loader) -> Result<(Precision, String)> {
    let asked = cfg.train.precision;
    let unit = precision::cpu_bf16_units();
    let (Precision::Auto, false, Some(unit)) = (asked, device.is_cuda(), unit) else {
        return Ok(asked.resolve(device));
    };
    let [fp32, bf16] = time_both(cfg, device, loader)?;
    Ok(decide(fp32, bf16, unit))
}

/// The precision whose trial step took `fp32` and `bf16` seconds, with why.
fn decide(fp32: f64, bf16: f64, unit: &str) -> (Precision, String) {
    let speed = fp32 / bf16;
    if bf16 <= BF16_AT_MOST * fp32 {
        (
            Precision::Bf16,
            format!("auto: bf16, which trained {speed:.2}x as fast as fp32 in a trial on this CPU ({unit})"),
        )
    } else {
        (
            Precision::Fp32,
            format!(
                "auto: fp32, bf16 trained only {speed:.2}x as fast in a trial on this CPU, though \
                 it lists {unit} (bf16 must reach {:.2}x to be kept)",
                1.0 / BF16_AT_MOST
            ),
        )
    }
}

/// Rank 0's `precision` on every rank of `group`: rank 0 alone decides, as
/// it alone reads the run's saved config when resuming, and the ranks of
/// one run must compute alike. Every rank calls this at the same point.
pub fn from_rank0(group: &Group, device: Device, precision: Precision) -> Result<Precision> {
    let mut code = Tensor::from_slice(&[i64::from(precision == Precision::Bf16)]).to_device(device);
    group.broadcast(std::slice::from_mut(&mut code), 0)?;
    Ok(if i64::try_from(&code)? == 1 { Precision::Bf16 } else { Precision::Fp32 })
}

/// The fastest of [`TIMED_STEPS`] training steps in fp32 and in bf16, in
/// seconds, on up to [`TRIAL_SAMPLES`] samples of the loader's first batch.
fn time_both(cfg: &Config, device: Device, loader: &Loader) -> Result<[f64; 2]> {
    let batch = loader
        .iter_from(0, 0)
        .next()
        .ok_or_else(|| Error::config("train.precision", "the loader gave no batch to time"))??;
    let batch = head(&batch, TRIAL_SAMPLES);
    // A Trainer takes no `auto`; the loop below sets each step's precision.
    let mut trial = cfg.clone();
    trial.train.precision = Precision::Fp32;
    let mut trainer = Trainer::new(&trial, loader.batches_per_epoch(), device)?;
    let order = [Precision::Fp32, Precision::Bf16];
    let mut best = [f64::INFINITY; 2];
    for round in 0..=TIMED_STEPS {
        for (k, p) in order.into_iter().enumerate() {
            trainer.model.precision = p;
            let t = Instant::now();
            trainer.train_step(&batch)?;
            if round > 0 {
                best[k] = best[k].min(t.elapsed().as_secs_f64());
            }
        }
    }
    tracing::debug!("precision trial: fp32 {:.3} s, bf16 {:.3} s a step", best[0], best[1]);
    Ok(best)
}

/// The first `n` samples of `batch` (all of them if it has fewer).
fn head(batch: &Batch, n: usize) -> Batch {
    let n = n.min(batch.indices.len());
    let per_sample = 3 * batch.image_size * batch.image_size;
    Batch {
        view1: batch.view1[..n * per_sample].to_vec(),
        view2: batch.view2[..n * per_sample].to_vec(),
        coords1: batch.coords1[..n].to_vec(),
        coords2: batch.coords2[..n].to_vec(),
        indices: batch.indices[..n].to_vec(),
        epoch: batch.epoch,
        index_in_epoch: batch.index_in_epoch,
        image_size: batch.image_size,
        replaced: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_is_kept_only_when_clearly_faster() {
        // The EPYC of issue #4 and this repository's Xeon, then the margin.
        assert_eq!(decide(1.7, 1.0, "avx512_bf16").0, Precision::Bf16);
        let (p, why) = decide(0.618, 0.882, "avx512_bf16");
        assert_eq!(p, Precision::Fp32);
        assert!(why.contains("0.70x") && why.contains("avx512_bf16"), "{why}");
        assert_eq!(decide(1.0, 0.9, "amx_bf16").0, Precision::Bf16);
        assert_eq!(decide(1.0, 0.95, "amx_bf16").0, Precision::Fp32);
    }

    #[test]
    fn head_keeps_the_first_samples_whole() {
        let s = 2;
        let per = 3 * s * s;
        let batch = Batch {
            view1: (0..3 * per).map(|v| v as f32).collect(),
            view2: (0..3 * per).map(|v| -(v as f32)).collect(),
            coords1: vec![[0.0; 4], [1.0; 4], [2.0; 4]],
            coords2: vec![[3.0; 4], [4.0; 4], [5.0; 4]],
            indices: vec![7, 8, 9],
            epoch: 0,
            index_in_epoch: 0,
            image_size: s,
            replaced: Vec::new(),
        };
        let h = head(&batch, 2);
        assert_eq!(h.view1, batch.view1[..2 * per]);
        assert_eq!(h.view2.last(), Some(&-((2 * per - 1) as f32)));
        assert_eq!(
            (h.coords1[1], h.coords2[1], h.indices.clone()),
            ([1.0; 4], [4.0; 4], vec![7, 8])
        );
        assert_eq!(head(&batch, 16).indices, [7, 8, 9]);
    }
}

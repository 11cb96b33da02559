//! Synchronised BatchNorm: in a data-parallel run, training-mode BatchNorm
//! normalises with the statistics of the global batch, as the reference does
//! (it converts every BatchNorm of both networks to `SyncBatchNorm`).
//!
//! The statistics are combined as PyTorch's `SyncBatchNorm` combines them
//! (`batch_norm_gather_stats_with_counts`): per channel, each rank computes
//! its count `n_r`, mean `m_r` and sum of squared deviations from it `M_r`
//! (two passes, so nothing cancels); one differentiable all-reduce over a
//! `[world, 2C + 1]` buffer in which each rank fills only its own row
//! gathers every rank's triple; then, with Chan's parallel formula,
//! `n = sum n_r`, `mean = sum n_r m_r / n` and
//! `var = sum (M_r + n_r (m_r - mean)^2) / n` (biased, for normalising), and
//! `y = (x - mean) / sqrt(var + eps) * weight + bias`. The one-pass
//! `E[x^2] - E[x]^2` this replaces lost most of its digits in float32 when a
//! channel's mean was large against its spread (post-ReLU activations, the
//! wide projector), enough for 2 ranks x 8 to drift from 1 process x 16.
//! The backward pass of the all-reduce sums the ranks' gradients of the
//! gathered statistics, so each rank's input gradient includes what its
//! cells did to every other rank's output, as one process with the whole
//! batch would compute. The running averages move by `momentum` towards
//! `mean` and the unbiased `var * n / (n - 1)`, the same on every rank.
//!
//! The training loop installs its process group here for the length of a
//! run ([`install`]); with none installed, BatchNorm is libtorch's own.
use std::sync::{Arc, Mutex, RwLock};

use tch::{Kind, Tensor};

use crate::distributed::collective::Group;

static GROUP: RwLock<Option<Arc<Group>>> = RwLock::new(None);
static FAILURE: Mutex<Option<String>> = Mutex::new(None);

/// Uninstalls the group when dropped.
#[must_use = "SyncBN stays on only while the guard lives"]
pub struct Installed(());

impl Drop for Installed {
    fn drop(&mut self) {
        if let Ok(mut g) = GROUP.write() {
            *g = None;
        }
    }
}

/// Makes every training-mode BatchNorm of this process synchronise over
/// `group` until the guard is dropped.
pub fn install(group: Arc<Group>) -> Installed {
    if let Ok(mut g) = GROUP.write() {
        *g = Some(group);
    }
    Installed(())
}

/// The installed group, if any.
pub fn group() -> Option<Arc<Group>> {
    GROUP.read().ok().and_then(|g| g.clone())
}

/// The first all-reduce that failed inside a forward pass since the last
/// call, which [`batch_norm`] cannot return (it sits behind `ModuleT`).
pub fn take_failure() -> Option<String> {
    FAILURE.lock().ok().and_then(|mut f| f.take())
}

/// The running statistics and affine parameters of one BatchNorm.
pub struct BnState<'a> {
    pub weight: Option<&'a Tensor>,
    pub bias: Option<&'a Tensor>,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    pub momentum: f64,
    pub eps: f64,
}

/// Training-mode BatchNorm of `x` (`[N, C, ...]`) with the statistics of
/// all ranks of `group`. If the all-reduce fails, the failure is kept for
/// [`take_failure`] and this rank's own statistics are used, so that the
/// step can finish and the caller report the error.
pub fn batch_norm(x: &Tensor, bn: &BnState, group: &Group) -> Tensor {
    let c = x.size()[1];
    let xf = x.to_kind(Kind::Float);
    let own = rank_stats(&xf); // [2C + 1]
    let (world, rank) = (group.world_size() as i64, group.rank() as i64);
    let width = 2 * c + 1;
    let zeros = |rows: i64| Tensor::zeros([rows * width], (Kind::Float, x.device()));
    let padded = Tensor::cat(&[zeros(rank), own.shallow_clone(), zeros(world - rank - 1)], 0);
    let per_rank = match group.all_reduce_sum_autograd(&padded) {
        Ok(s) => s.view([world, width]),
        Err(e) => {
            if let Ok(mut f) = FAILURE.lock() {
                // Kept as the reason alone: the caller makes it an
                // `Error::Distributed` again, which says "distributed run".
                f.get_or_insert(match e {
                    crate::Error::Distributed(reason) => reason,
                    other => other.to_string(),
                });
            }
            own.view([1, width])
        }
    };
    let (mean, var, n) = combine(&per_rank, c);
    normalise(x, &xf, bn, (&mean, &var, &n))
}

/// This rank's statistics per channel of a float32 `[N, C, ...]`:
/// `[means (C), sums of squared deviations from them (C), cells per
/// channel (1)]`.
fn rank_stats(xf: &Tensor) -> Tensor {
    let c = xf.size()[1];
    let dims: Vec<i64> = (0..xf.dim() as i64).filter(|&d| d != 1).collect();
    let mean = xf.mean_dim(dims.as_slice(), true, Kind::Float); // [1, C, 1, ...]
    let m2 = (xf - &mean).square().sum_dim_intlist(dims.as_slice(), false, Kind::Float); // [C]
    let n = Tensor::full([1], (xf.numel() as i64 / c) as f64, (Kind::Float, xf.device()));
    Tensor::cat(&[mean.view([c]), m2, n], 0)
}

/// Chan's parallel combination of per-rank rows of [`rank_stats`]
/// (`[world, 2C + 1]`) into the global mean `[C]`, biased variance `[C]` and
/// count `[1]`.
fn combine(per_rank: &Tensor, c: i64) -> (Tensor, Tensor, Tensor) {
    let means = per_rank.narrow(1, 0, c); // [world, C]
    let m2s = per_rank.narrow(1, c, c); // [world, C]
    let ns = per_rank.narrow(1, 2 * c, 1); // [world, 1]
    let n = ns.sum_dim_intlist([0i64].as_slice(), false, Kind::Float); // [1]
    let mean = (&means * &ns).sum_dim_intlist([0i64].as_slice(), false, Kind::Float) / &n;
    let spread = (m2s + &ns * (&means - &mean).square()).sum_dim_intlist(
        [0i64].as_slice(),
        false,
        Kind::Float,
    ); // [C]
    let var = (spread / &n).clamp_min(0.0);
    (mean, var, n)
}

/// Moves the running statistics and normalises `xf` (float32 `x`) with the
/// global `mean`, `var` and count `n`; returns `x`'s kind.
fn normalise(
    x: &Tensor,
    xf: &Tensor,
    bn: &BnState,
    (mean, var, n): (&Tensor, &Tensor, &Tensor),
) -> Tensor {
    let c = x.size()[1];
    tch::no_grad(|| {
        let m = bn.momentum;
        let unbiased = var * n / (n - 1.0).clamp_min(1.0);
        let _ = bn.running_mean.shallow_clone().g_mul_scalar_(1.0 - m).g_add_(&(mean * m));
        let _ = bn.running_var.shallow_clone().g_mul_scalar_(1.0 - m).g_add_(&(unbiased * m));
    });
    let mut shape = vec![1i64; x.dim()];
    shape[1] = c;
    let y = (xf - mean.view(shape.as_slice())) * (var + bn.eps).rsqrt().view(shape.as_slice());
    // Not in place: the product's backward pass needs `y` as it was.
    let y = match bn.weight {
        Some(w) => y * w.view(shape.as_slice()),
        None => y,
    };
    let y = match bn.bias {
        Some(b) => y + b.view(shape.as_slice()),
        None => y,
    };
    y.to_kind(x.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::collective::tests::{group_of_one, two_rank_group};
    use tch::Device;

    /// Activations whose mean is 1000 times their spread, as after a ReLU
    /// with a large bias: `[16, 3, 8, 8]`.
    fn offset_activations() -> Tensor {
        tch::manual_seed(3);
        Tensor::randn([16, 3, 8, 8], (Kind::Float, Device::Cpu)) + 1000.0
    }

    /// The biased variance per channel, in float64.
    fn var_f64(x: &Tensor) -> Vec<f64> {
        let x = x.to_kind(Kind::Double);
        let v = x.var_correction([0i64, 2, 3].as_slice(), tch::Scalar::int(0), false);
        Vec::<f64>::try_from(v).unwrap()
    }

    fn relative_errors(got: &Tensor, want: &[f64]) -> Vec<f64> {
        let got = Vec::<f32>::try_from(got).unwrap();
        got.iter().zip(want).map(|(g, w)| (f64::from(*g) - w).abs() / w).collect()
    }

    #[test]
    fn variance_of_offset_activations_is_exact_to_float32_precision() {
        let x = offset_activations();
        let want = var_f64(&x);
        let (_, var, _) = combine(&rank_stats(&x).view([1, -1]), 3);
        let err = relative_errors(&var, &want);
        assert!(err.iter().all(|e| *e < 1e-4), "{err:?}");
        // The one-pass formula this replaced, for contrast.
        let dims = [0i64, 2, 3];
        let n = (16 * 8 * 8) as f64;
        let s1 = x.sum_dim_intlist(dims.as_slice(), false, Kind::Float) / n;
        let s2 = (&x * &x).sum_dim_intlist(dims.as_slice(), false, Kind::Float) / n;
        let one_pass = (s2 - &s1 * &s1).clamp_min(0.0);
        let err = relative_errors(&one_pass, &want);
        assert!(err.iter().any(|e| *e > 1e-2), "the one-pass formula should fail: {err:?}");
    }

    #[test]
    fn ranks_combine_to_the_statistics_of_the_whole_batch() {
        // Three ranks with unequal batches, as a last shard can be.
        let x = offset_activations() * Tensor::from_slice(&[1f32, 0.5, 2.0]).view([1, 3, 1, 1]);
        let parts = [x.narrow(0, 0, 3), x.narrow(0, 3, 8), x.narrow(0, 11, 5)];
        let rows = Tensor::stack(&parts.iter().map(rank_stats).collect::<Vec<_>>(), 0);
        let (mean, var, n) = combine(&rows, 3);
        assert_eq!(Vec::<f32>::try_from(&n).unwrap(), vec![16.0 * 64.0]);
        let err = relative_errors(&var, &var_f64(&x));
        assert!(err.iter().all(|e| *e < 1e-4), "{err:?}");
        let want_mean = x.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Double);
        let diff = (mean.to_kind(Kind::Double) - want_mean).abs().max().double_value(&[]);
        assert!(diff < 1e-3, "{diff}");
    }

    #[test]
    fn one_rank_equals_libtorch_batch_norm_with_its_gradients_and_running_statistics() {
        let g = group_of_one();
        tch::manual_seed(5);
        let x = (Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu)) * 3.0 + 2.0)
            .set_requires_grad(true);
        let w = Tensor::from_slice(&[1.5f32, -0.5, 2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.1f32, 0.2, -0.3]).set_requires_grad(true);
        let (rm, rv) =
            (Tensor::zeros([3], tch::kind::FLOAT_CPU), Tensor::ones([3], tch::kind::FLOAT_CPU));
        let (rm_ref, rv_ref) = (rm.copy(), rv.copy());
        let state = BnState {
            weight: Some(&w),
            bias: Some(&b),
            running_mean: &rm,
            running_var: &rv,
            momentum: 0.1,
            eps: 1e-5,
        };
        let y = batch_norm(&x, &state, &g);
        let probe = Tensor::randn([4, 3, 5, 5], tch::kind::FLOAT_CPU);
        (&y * &probe).sum(Kind::Float).backward();
        let grads = [x.grad().copy(), w.grad().copy(), b.grad().copy()];
        for t in [&x, &w, &b] {
            let _ = t.grad().zero_();
        }
        let y_ref =
            x.batch_norm(Some(&w), Some(&b), Some(&rm_ref), Some(&rv_ref), true, 0.1, 1e-5, false);
        (&y_ref * &probe).sum(Kind::Float).backward();
        let close = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) < 1e-4;
        assert!(close(&y, &y_ref));
        assert!(close(&rm, &rm_ref) && close(&rv, &rv_ref));
        for (got, want) in grads.iter().zip([x.grad(), w.grad(), b.grad()]) {
            assert!(close(got, &want), "{got:?} {want:?}");
        }
        assert!(take_failure().is_none());
    }

    /// A training-mode BatchNorm of `x` by `norm`, with weights (1.5, -0.5,
    /// 2), biases (0.1, 0.2, -0.3) and running statistics from 0 and 1, and
    /// the backward pass of `sum(y * probe)`, all in `x`'s kind: `[y, dx,
    /// dweight, dbias, running mean, running var]`.
    fn bn_pass(
        x: &Tensor,
        probe: &Tensor,
        norm: impl Fn(&Tensor, &BnState) -> Tensor,
    ) -> [Tensor; 6] {
        let kind = x.kind();
        let x = x.copy().set_requires_grad(true);
        let param = |v: [f64; 3]| Tensor::from_slice(&v).to_kind(kind).set_requires_grad(true);
        let (w, b) = (param([1.5, -0.5, 2.0]), param([0.1, 0.2, -0.3]));
        let (rm, rv) =
            (Tensor::zeros([3], (kind, Device::Cpu)), Tensor::ones([3], (kind, Device::Cpu)));
        let state = BnState {
            weight: Some(&w),
            bias: Some(&b),
            running_mean: &rm,
            running_var: &rv,
            momentum: 0.1,
            eps: 1e-5,
        };
        let y = norm(&x, &state);
        (&y * probe).sum(kind).backward();
        [y.detach(), x.grad(), w.grad(), b.grad(), rm, rv]
    }

    /// libtorch's own BatchNorm, PyTorch's CPU kernel.
    fn libtorch(x: &Tensor, bn: &BnState) -> Tensor {
        x.batch_norm(
            bn.weight,
            bn.bias,
            Some(bn.running_mean),
            Some(bn.running_var),
            true,
            bn.momentum,
            bn.eps,
            false,
        )
    }

    /// `max|got - want| / max|want|`.
    fn relative(got: &Tensor, want: &Tensor) -> f64 {
        let (got, want) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
        (got - &want).abs().max().double_value(&[]) / want.abs().max().double_value(&[])
    }

    /// PyTorch's own `SyncBatchNorm` runs on GPUs only (the module refuses
    /// CPU tensors, and `batch_norm_stats` and the other kernels it calls
    /// have no CPU implementation), so the reference here is what it is
    /// defined to equal, as PyTorch's own tests of it check: PyTorch's
    /// BatchNorm of the whole batch, libtorch's CPU kernel, in float64. The
    /// bound is float32's resolution at the activations' offset (1000
    /// spreads times its epsilon, 1.2e-4), twice over: each rank's mean is
    /// a float32 near 1000 spreads, and the term between the ranks' means
    /// sees its rounding. Measured here: 2.0e-5 in y, 9.9e-6 in dx, 4.8e-5 in
    /// dweight, 1.5e-5 in the running variance; libtorch's float32 kernel on
    /// one process, which accumulates in float64, 2.3e-6, 2.8e-7, 1.1e-5 and
    /// 3.6e-8.
    #[test]
    fn two_ranks_match_a_float64_batch_norm_of_the_whole_batch() {
        // Rank 1's half sits 3 spreads above rank 0's, so that the ranks'
        // means differ and the variance needs the term between them.
        let shift = Tensor::cat(
            &[
                Tensor::zeros([8, 1, 1, 1], tch::kind::FLOAT_CPU),
                Tensor::full([8, 1, 1, 1], 3.0, tch::kind::FLOAT_CPU),
            ],
            0,
        );
        let x = (offset_activations() + shift)
            * Tensor::from_slice(&[1f32, 0.5, 2.0]).view([1, 3, 1, 1]);
        let probe = Tensor::randn([16, 3, 8, 8], tch::kind::FLOAT_CPU);
        let exact = bn_pass(&x.to_kind(Kind::Double), &probe.to_kind(Kind::Double), libtorch);
        let halves = |r: usize| (x.narrow(0, 8 * r as i64, 8), probe.narrow(0, 8 * r as i64, 8));
        let groups = two_rank_group();
        let ranks: Vec<[Tensor; 6]> = std::thread::scope(|s| {
            let spawned: Vec<_> = groups
                .iter()
                .enumerate()
                .map(|(r, g)| {
                    let (x, probe) = halves(r);
                    let (x, probe) = (x.copy(), probe.copy());
                    s.spawn(move || bn_pass(&x, &probe, |x, bn| batch_norm(x, bn, g)))
                })
                .collect();
            spawned.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(take_failure().is_none());
        let [r0, r1] = [&ranks[0], &ranks[1]];
        for (a, b) in r0[4..].iter().zip(&r1[4..]) {
            assert!(a.equal(b), "the ranks' running statistics differ");
        }
        // Each rank's weight and bias gradients are its cells' share.
        let two_ranks = [
            Tensor::cat(&[&r0[0], &r1[0]], 0),
            Tensor::cat(&[&r0[1], &r1[1]], 0),
            &r0[2] + &r1[2],
            &r0[3] + &r1[3],
            r0[4].shallow_clone(),
            r0[5].shallow_clone(),
        ];
        let bound = 2.0 * 1000.0 * f64::from(f32::EPSILON);
        let names = ["y", "dx", "dweight", "dbias", "running mean", "running var"];
        for ((name, got), want) in names.iter().zip(&two_ranks).zip(&exact) {
            let err = relative(got, want);
            assert!(err < bound, "{name}: {err:.2e} from float64");
        }
        // The comparison can fail: each half normalised on its own.
        let apart: Vec<Tensor> = (0..2)
            .map(|r| bn_pass(&halves(r).0, &halves(r).1, libtorch)[0].shallow_clone())
            .collect();
        let err = relative(&Tensor::cat(&apart, 0), &exact[0]);
        assert!(err > 0.1, "unsynchronised halves came within {err:.2e}");
    }
}

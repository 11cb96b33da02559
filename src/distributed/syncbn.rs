//! Synchronised BatchNorm: in a data-parallel run, training-mode BatchNorm
//! normalises with the statistics of the global batch, as the reference does
//! (it converts every BatchNorm of both networks to `SyncBatchNorm`).
//!
//! Per channel, each rank sums `x` and `x^2` over its own cells; one
//! differentiable all-reduce gives the global sums `S1`, `S2` and count
//! `n`; then `mean = S1 / n`, `var = S2 / n - mean^2` (biased, for
//! normalising) and `y = (x - mean) / sqrt(var + eps) * weight + bias`. The
//! backward pass of the all-reduce sums the ranks' gradients of `S1` and
//! `S2`, so each rank's input gradient includes what its cells did to every
//! other rank's output, as one process with the whole batch would compute.
//! The running averages move by `momentum` towards `mean` and the unbiased
//! `var * n / (n - 1)`, the same on every rank.
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
    let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
    let xf = x.to_kind(Kind::Float);
    let local = Tensor::cat(
        &[
            xf.sum_dim_intlist(dims.as_slice(), false, Kind::Float),
            (&xf * &xf).sum_dim_intlist(dims.as_slice(), false, Kind::Float),
            Tensor::full([1], (x.numel() as i64 / c) as f64, (Kind::Float, x.device())),
        ],
        0,
    );
    let stats = match group.all_reduce_sum_autograd(&local) {
        Ok(s) => s,
        Err(e) => {
            if let Ok(mut f) = FAILURE.lock() {
                f.get_or_insert(e.to_string());
            }
            local
        }
    };
    let n = stats.narrow(0, 2 * c, 1);
    let mean = stats.narrow(0, 0, c) / &n;
    let var = (stats.narrow(0, c, c) / &n - &mean * &mean).clamp_min(0.0);
    tch::no_grad(|| {
        let m = bn.momentum;
        let unbiased = &var * &n / (&n - 1.0).clamp_min(1.0);
        let _ = bn.running_mean.shallow_clone().g_mul_scalar_(1.0 - m).g_add_(&(&mean * m));
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

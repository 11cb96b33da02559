//! The momentum (EMA) target: its cosine schedule and the parameter
//! average (spec section 5).
use tch::nn;

/// `tau = 1 - (1 - base) * (cos(pi * k / K) + 1) / 2`: `base` at step 0,
/// rising to 1 at step K. `k` past `total` stays at 1, and `total = 0`
/// (no steps) gives 1, i.e. a frozen target.
pub fn momentum_at(k: u64, total: u64, base: f64) -> f64 {
    if total == 0 {
        return 1.0;
    }
    let progress = k.min(total) as f64 / total as f64;
    1.0 - (1.0 - base) * ((std::f64::consts::PI * progress).cos() + 1.0) / 2.0
}

/// `theta_t = tau * theta_t + (1 - tau) * theta_online`, by name, under
/// no_grad.
///
/// Only parameters are averaged: the tensors of `online` that require grad.
/// BN buffers (running_mean, running_var, num_batches_tracked) are the
/// target's own and stay untouched. Names the target lacks (the PPM) are
/// skipped. As a consequence a frozen online store averages nothing.
///
/// Panics, naming the tensor, if a shared name has two different shapes.
pub fn ema_update(target: &nn::VarStore, online: &nn::VarStore, tau: f64) {
    let online_vars = online.variables();
    tch::no_grad(|| {
        for (name, mut t) in target.variables() {
            let Some(o) = online_vars.get(&name) else { continue };
            if !o.requires_grad() {
                continue;
            }
            assert_eq!(t.size(), o.size(), "ema_update: shapes of `{name}` differ");
            t *= tau;
            t += o * (1.0 - tau);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn schedule_ends() {
        assert!((momentum_at(0, 1000, 0.99) - 0.99).abs() < 1e-12);
        assert!((momentum_at(500, 1000, 0.99) - 0.995).abs() < 1e-12);
        assert!((momentum_at(1000, 1000, 0.99) - 1.0).abs() < 1e-12);
        assert_eq!(momentum_at(2000, 1000, 0.99), 1.0);
        assert_eq!(momentum_at(0, 0, 0.99), 1.0);
    }

    fn store(value: f64, with_extra: bool) -> nn::VarStore {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = (&root / "layer").var("weight", &[3], nn::Init::Const(value));
        let _ = (&root / "layer").add(
            "running_mean",
            Tensor::full([3], value, tch::kind::FLOAT_CPU),
            false,
        );
        if with_extra {
            let _ = (&root / "ppm").var("weight", &[3], nn::Init::Const(value));
        }
        vs
    }

    #[test]
    fn parameters_move_by_tau_buffers_stay() {
        let mut target = store(1.0, false);
        target.freeze();
        let online = store(3.0, true);
        ema_update(&target, &online, 0.75);
        let v = target.variables();
        let w = Vec::<f32>::try_from(&v["layer.weight"]).unwrap();
        assert_eq!(w, vec![0.75 * 1.0 + 0.25 * 3.0; 3]);
        let rm = &v["layer.running_mean"];
        assert_eq!(rm.sum(Kind::Float).double_value(&[]), 3.0, "buffer must be untouched");
        assert!(!v.contains_key("ppm.weight"));
        assert!(!v["layer.weight"].requires_grad(), "the target stays frozen");
        // tau = 1 leaves the target as it is.
        ema_update(&target, &online, 1.0);
        assert_eq!(Vec::<f32>::try_from(&target.variables()["layer.weight"]).unwrap(), w);
    }
}

//! LARS (layer-wise adaptive rate scaling) with SGD momentum, spec section 6.
//!
//! Parameters with more than one dimension (conv and linear weights) get
//! weight decay and the trust ratio `eta * |p| / (|g| + eps)`; 1-D parameters
//! (biases, BatchNorm weight and bias) get neither, as in the reference.
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Tensor};

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LarsConfig {
    pub momentum: f64,
    pub weight_decay: f64,
    pub eta: f64,
    pub eps: f64,
}

impl Default for LarsConfig {
    fn default() -> Self {
        LarsConfig { momentum: 0.9, weight_decay: 1e-5, eta: 0.001, eps: 1e-8 }
    }
}

impl LarsConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::config(
                "optim.momentum",
                format!("must be in [0, 1), got {}", self.momentum),
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::config(
                "optim.weight_decay",
                format!("must be >= 0, got {}", self.weight_decay),
            ));
        }
        if !(self.eta > 0.0 && self.eta.is_finite()) {
            return Err(Error::config("optim.eta", format!("must be > 0, got {}", self.eta)));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::config("optim.eps", format!("must be > 0, got {}", self.eps)));
        }
        Ok(())
    }
}

struct Slot {
    name: String,
    param: Tensor,
    velocity: Tensor,
    adapted: bool,
}

pub struct Lars {
    cfg: LarsConfig,
    slots: Vec<Slot>,
}

impl Lars {
    /// Every trainable variable of `vs`, in name order so that the optimiser
    /// state lines up across runs and checkpoints.
    pub fn new(vs: &VarStore, cfg: LarsConfig) -> Lars {
        let mut named: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = named
            .into_iter()
            .map(|(name, param)| Slot {
                velocity: param.zeros_like(),
                adapted: param.dim() > 1,
                name,
                param,
            })
            .collect();
        Lars { cfg, slots }
    }

    /// Names of the parameters that get weight decay and the trust ratio.
    pub fn adapted(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().filter(|s| s.adapted).map(|s| s.name.as_str())
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// One update with learning rate `lr` from the gradients in place.
    pub fn step(&mut self, lr: f64) {
        let c = self.cfg;
        tch::no_grad(|| {
            for s in &mut self.slots {
                let grad = s.param.grad();
                if !grad.defined() {
                    continue;
                }
                let update = if s.adapted {
                    let g = &grad + &s.param * c.weight_decay;
                    let p_norm = s.param.norm();
                    let g_norm = g.norm();
                    // A zero norm on either side means no scaling (ratio 1).
                    let ratio = (&p_norm * c.eta / (&g_norm + c.eps)).where_self(
                        &p_norm.gt(0.0).logical_and(&g_norm.gt(0.0)),
                        &p_norm.ones_like(),
                    );
                    g * ratio
                } else {
                    grad
                };
                let _ = s.velocity.g_mul_scalar_(c.momentum).g_add_(&update);
                let _ = s.param.g_sub_(&(&s.velocity * lr));
            }
        });
    }

    /// The momentum buffers, by parameter name, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.slots.iter().map(|s| (s.name.clone(), s.velocity.shallow_clone())).collect()
    }

    /// Restores buffers saved by [`Lars::state`]; every parameter must be there.
    pub fn load_state(
        &mut self,
        mut get: impl FnMut(&str) -> Option<Tensor>,
    ) -> Result<(), String> {
        for s in &mut self.slots {
            let saved =
                get(&s.name).ok_or_else(|| format!("no optimiser state for `{}`", s.name))?;
            if saved.size() != s.velocity.size() {
                return Err(format!(
                    "optimiser state for `{}` has shape {:?}, the model needs {:?}",
                    s.name,
                    saved.size(),
                    s.velocity.size()
                ));
            }
            tch::no_grad(|| s.velocity.copy_(&saved));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    #[test]
    fn matches_a_hand_computed_step() {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let w = root.var_copy("w", &Tensor::from_slice(&[3.0f32, 4.0]).view([1, 2]));
        let b = root.var_copy("b", &Tensor::from_slice(&[1.0f32]));
        let cfg = LarsConfig { momentum: 0.9, weight_decay: 0.1, eta: 0.001, eps: 0.0 };
        let mut opt = Lars::new(&vs, cfg);
        assert_eq!(opt.adapted().collect::<Vec<_>>(), vec!["w"]);

        // loss = 2*w0 + 0*w1 + 5*b  ->  grad w = [2, 0], grad b = 5
        let loss =
            (&w * Tensor::from_slice(&[2.0f32, 0.0]).view([1, 2])).sum(Kind::Float) + &b * 5.0;
        loss.sum(Kind::Float).backward();
        opt.step(0.5);
        // w: g = [2,0] + 0.1*[3,4] = [2.3, 0.4]; |p| = 5, |g| = sqrt(5.45)
        // ratio = 0.001*5/sqrt(5.45); v = g*ratio; w -= 0.5*v
        let ratio = 0.001 * 5.0 / 5.45f64.sqrt();
        let expect_w = [3.0 - 0.5 * 2.3 * ratio, 4.0 - 0.5 * 0.4 * ratio];
        let got_w = Vec::<f32>::try_from(&w.view([-1])).unwrap();
        for (g, e) in got_w.iter().zip(expect_w) {
            assert!((*g as f64 - e).abs() < 1e-6, "w: got {g}, want {e}");
        }
        // b: 1-D, plain SGD: b = 1 - 0.5*5
        assert!((b.double_value(&[0]) - (1.0 - 2.5)).abs() < 1e-6);

        // A second step with the same gradient accumulates momentum: v = 0.9 v + g.
        opt.zero_grad();
        let loss = &b * 5.0;
        loss.sum(Kind::Float).backward();
        opt.step(0.5);
        assert!((b.double_value(&[0]) - (-1.5 - 0.5 * (0.9 * 5.0 + 5.0))).abs() < 1e-5);
    }

    #[test]
    fn zero_weight_gets_unscaled_gradient() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var_copy("w", &Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)));
        let mut opt = Lars::new(&vs, LarsConfig { weight_decay: 0.0, ..Default::default() });
        w.sum(Kind::Float).backward();
        opt.step(1.0);
        let got = Vec::<f32>::try_from(&w.view([-1])).unwrap();
        assert!(got.iter().all(|v| (*v + 1.0).abs() < 1e-6), "{got:?}");
    }

    #[test]
    fn state_round_trips_and_rejects_wrong_shapes() {
        let vs = VarStore::new(Device::Cpu);
        let _ = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        let opt = Lars::new(&vs, LarsConfig::default());
        let state = opt.state();
        assert_eq!(
            state.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
            vec!["fc.bias", "fc.weight"]
        );
        let mut other = Lars::new(&vs, LarsConfig::default());
        let filled: Vec<(String, Tensor)> =
            state.iter().map(|(n, t)| (n.clone(), t.ones_like())).collect();
        other
            .load_state(|n| filled.iter().find(|s| s.0 == n).map(|s| s.1.shallow_clone()))
            .unwrap();
        assert_eq!(other.state()[1].1.sum(Kind::Float).double_value(&[]), 6.0);
        let err =
            other.load_state(|_| Some(Tensor::zeros([7], (Kind::Float, Device::Cpu)))).unwrap_err();
        assert!(err.contains("fc.bias") && err.contains("[7]"), "{err}");
        let err = other.load_state(|_| None).unwrap_err();
        assert!(err.contains("no optimiser state"), "{err}");
    }

    #[test]
    fn validate_names_the_key() {
        let err = LarsConfig { momentum: 1.5, ..Default::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("optim.momentum"), "{err}");
    }
}

//! The PixPro network pair: online encoder, projector and PPM, and the
//! momentum target encoder and projector, with the step's loss (spec
//! sections 3-5).
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Kind, TchError, Tensor};

use crate::heads::{projector, ConvMlp};
use crate::loss::{f_consistency_loss, normalize_cells};
use crate::matching::positive_mask;
use crate::momentum::ema_update;
use crate::ppm::{ppm, Ppm};
use crate::resnet::{resnet, Arch, ResNet};
use crate::{Error, Result};

/// The `[model]` section of the configuration; every default is the spec's
/// value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Encoder architecture (`"resnet50"`).
    pub arch: Arch,
    /// C5 stride: 32, 16 or 8 (32).
    pub output_stride: u32,
    /// Projector hidden width (4096).
    pub proj_hidden: i64,
    /// Projector output width, the feature dimension of the loss (256).
    pub proj_dim: i64,
    /// PPM sharpness gamma (2).
    pub ppm_gamma: f64,
    /// Layers of the PPM value transform: 0, 1 or 2 (1).
    pub ppm_layers: u8,
    /// Positive-pair threshold T, in units of the larger bin diagonal (0.7).
    pub threshold: f64,
    /// Momentum tau at step 0 (0.99).
    pub momentum_base: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: Arch::ResNet50,
            output_stride: 32,
            proj_hidden: 4096,
            proj_dim: 256,
            ppm_gamma: 2.0,
            ppm_layers: 1,
            threshold: 0.7,
            momentum_base: 0.99,
        }
    }
}

impl ModelConfig {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Err(Error::config(format!("model.{key}"), reason));
        if ![32, 16, 8].contains(&self.output_stride) {
            return bad("output_stride", format!("{} is not one of 32, 16, 8", self.output_stride));
        }
        if self.proj_hidden < 1 {
            return bad("proj_hidden", format!("{} must be at least 1", self.proj_hidden));
        }
        if self.proj_dim < 1 {
            return bad("proj_dim", format!("{} must be at least 1", self.proj_dim));
        }
        if !(self.ppm_gamma.is_finite() && self.ppm_gamma > 0.0) {
            return bad("ppm_gamma", format!("{} must be finite and > 0", self.ppm_gamma));
        }
        if self.ppm_layers > 2 {
            return bad("ppm_layers", format!("{} is not one of 0, 1, 2", self.ppm_layers));
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return bad("threshold", format!("{} must be finite and > 0", self.threshold));
        }
        if !(0.0..=1.0).contains(&self.momentum_base) {
            return bad("momentum_base", format!("{} must be in [0, 1]", self.momentum_base));
        }
        Ok(())
    }
}

/// What one training step computes.
#[derive(Debug)]
pub struct StepOutput {
    /// `L(1->2) + L(2->1)`, a scalar with its graph; in [-4, 4], -4 best.
    pub loss: Tensor,
    /// Collapse monitor: the unit-normalised target features of both views,
    /// `z` `[2B, D, H, W]`; for each channel d the standard deviation
    /// (unbiased) of `z[:, d]` over all `2B*H*W` cells; then the mean over
    /// the D channels. About `1/sqrt(D)` (0.0625 for D = 256) when the
    /// features spread over the sphere, 0 when every cell maps to the same
    /// vector.
    pub target_std: f64,
    /// Mean over images of the fraction of view-1 cells with at least one
    /// positive in view 2.
    pub positive_fraction: f64,
}

/// The online and target networks. Variable names: online `encoder.*`
/// (torchvision ResNet names), `projector.*`, `ppm.*`; target `encoder.*`,
/// `projector.*`.
#[derive(Debug)]
pub struct PixPro {
    pub cfg: ModelConfig,
    /// Trainable: give this store's variables to the optimiser.
    pub online: nn::VarStore,
    /// Frozen (no variable requires grad); moved only by
    /// [`PixPro::momentum_update`].
    pub target: nn::VarStore,
    encoder: ResNet,
    projector: ConvMlp,
    ppm: Ppm,
    target_encoder: ResNet,
    target_projector: ConvMlp,
}

fn check_views(view1: &Tensor, view2: &Tensor, coords1: &Tensor, coords2: &Tensor) -> Result<()> {
    let (s1, s2) = (view1.size(), view2.size());
    if s1.len() != 4 || s1[1] != 3 || s1 != s2 {
        return Err(TchError::Shape(format!(
            "forward_loss: views must both be [B, 3, H, W], got {s1:?} and {s2:?}"
        ))
        .into());
    }
    let (c1, c2) = (coords1.size(), coords2.size());
    if c1 != [s1[0], 4] || c2 != [s1[0], 4] {
        return Err(TchError::Shape(format!(
            "forward_loss: coordinates must both be [{}, 4], got {c1:?} and {c2:?}",
            s1[0]
        ))
        .into());
    }
    Ok(())
}

/// The networks the online and target branches share in shape.
fn encoder_and_projector(root: &nn::Path, cfg: &ModelConfig) -> Result<(ResNet, ConvMlp)> {
    let encoder = resnet(&(root / "encoder"), cfg.arch, cfg.output_stride)?;
    let c5 = cfg.arch.out_channels();
    let projector = projector(&(root / "projector"), c5, cfg.proj_hidden, cfg.proj_dim);
    Ok((encoder, projector))
}

impl PixPro {
    /// Builds both networks on `device`; the target starts as an exact copy
    /// of the online encoder and projector (buffers included) and is frozen.
    pub fn new(cfg: ModelConfig, device: Device) -> Result<PixPro> {
        cfg.validate()?;
        let online = nn::VarStore::new(device);
        let (encoder, projector) = encoder_and_projector(&online.root(), &cfg)?;
        let ppm = ppm(&(online.root() / "ppm"), cfg.proj_dim, cfg.ppm_gamma, cfg.ppm_layers)?;
        let mut target = nn::VarStore::new(device);
        let (target_encoder, target_projector) = encoder_and_projector(&target.root(), &cfg)?;
        target.copy(&online)?;
        target.freeze();
        Ok(PixPro {
            cfg,
            online,
            target,
            encoder,
            projector,
            ppm,
            target_encoder,
            target_projector,
        })
    }

    /// The online encoder (what transfer keeps).
    pub fn encoder(&self) -> &ResNet {
        &self.encoder
    }

    /// Online prediction of one view, before normalisation:
    /// `PPM(proj(enc(view)))`, `[B, 3, H, W]` -> `[B, D, h, w]`.
    pub fn online_forward(&self, view: &Tensor, train: bool) -> Tensor {
        view.apply_t(&self.encoder, train).apply_t(&self.projector, train).apply_t(&self.ppm, train)
    }

    /// Target features of one view, unit-normalised per cell, computed in
    /// train mode (batch statistics, running averages updated) under no_grad:
    /// `[B, 3, H, W]` -> `[B, D, h, w]`.
    pub fn target_forward(&self, view: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let z = view.apply_t(&self.target_encoder, true).apply_t(&self.target_projector, true);
            normalize_cells(&z)
        })
    }

    /// One step's loss: each view goes separately through the online and
    /// target networks (BN statistics per view), then
    /// `L = L(1->2) + L(2->1)` with the positive mask from the coordinates.
    /// `view1`, `view2`: `[B, 3, H, W]`; `coords1`, `coords2`: `[B, 4]`.
    pub fn forward_loss(
        &self,
        view1: &Tensor,
        view2: &Tensor,
        coords1: &Tensor,
        coords2: &Tensor,
    ) -> Result<StepOutput> {
        check_views(view1, view2, coords1, coords2)?;
        let p1 = self.online_forward(view1, true); // [B, D, h, w]
        let p2 = self.online_forward(view2, true); // [B, D, h, w]
        let z1 = self.target_forward(view1); // [B, D, h, w]
        let z2 = self.target_forward(view2); // [B, D, h, w]
        let (_, _, h, w) = p1.size4()?;
        let device = p1.device();
        let m12 = positive_mask(
            &coords1.to_device(device),
            &coords2.to_device(device),
            h,
            w,
            self.cfg.threshold,
        ); // [B, hw, hw]
           // Distances are symmetric, so the mask from view 2 to view 1 is the
           // transpose.
        let m21 = m12.transpose(1, 2); // [B, hw, hw]
        let loss = f_consistency_loss(&p1, &z2, &m12)? + f_consistency_loss(&p2, &z1, &m21)?;

        let (target_std, positive_fraction) = tch::no_grad(|| {
            let d = z1.size()[1];
            let cells = Tensor::cat(&[&z1, &z2], 0).transpose(0, 1).reshape([d, -1]); // [D, 2B*hw]
            let std = cells.std_dim(1, true, false).mean(Kind::Double).double_value(&[]);
            let frac = m12.amax(2, false).mean(Kind::Double).double_value(&[]);
            (std, frac)
        });
        Ok(StepOutput { loss, target_std, positive_fraction })
    }

    /// `theta_t = tau * theta_t + (1 - tau) * theta_online` for the encoder
    /// and projector parameters (not the BN buffers, not the PPM).
    pub fn momentum_update(&mut self, tau: f64) {
        ema_update(&self.target, &self.online, tau);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(ppm_layers: u8) -> PixPro {
        tch::manual_seed(7);
        let cfg = ModelConfig {
            arch: Arch::ResNet18,
            output_stride: 16,
            proj_hidden: 32,
            proj_dim: 16,
            ppm_layers,
            ..Default::default()
        };
        PixPro::new(cfg, Device::Cpu).unwrap()
    }

    fn batch() -> (Tensor, Tensor, Tensor, Tensor) {
        let v1 = Tensor::randn([2, 3, 64, 64], tch::kind::FLOAT_CPU);
        let v2 = Tensor::randn([2, 3, 64, 64], tch::kind::FLOAT_CPU);
        let c1 = Tensor::from_slice(&[0f32, 0., 0.8, 0.8, 0.1, 0.1, 1., 1.]).view([2, 4]);
        let c2 = Tensor::from_slice(&[0.2f32, 0.2, 1., 1., 1., 0., 0.2, 0.9]).view([2, 4]);
        (v1, v2, c1, c2)
    }

    fn loss_value(m: &PixPro, b: &(Tensor, Tensor, Tensor, Tensor)) -> f64 {
        m.forward_loss(&b.0, &b.1, &b.2, &b.3).unwrap().loss.double_value(&[])
    }

    #[test]
    fn every_online_parameter_gets_a_gradient_and_the_target_none() {
        let m = small(1);
        let b = batch();
        let out = m.forward_loss(&b.0, &b.1, &b.2, &b.3).unwrap();
        out.loss.backward();
        let mut missing: Vec<String> = m
            .online
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .filter(|(_, t)| {
                let g = t.grad();
                !g.defined() || g.isfinite().all().int64_value(&[]) == 0
            })
            .map(|(k, _)| k)
            .collect();
        missing.sort();
        assert!(missing.is_empty(), "no finite gradient for {missing:?}");
        let n_trainable = m.online.trainable_variables().len();
        assert_eq!(
            m.online.variables().values().filter(|t| t.requires_grad()).count(),
            n_trainable
        );
        let with_grad: Vec<String> = m
            .target
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad() || t.grad().defined())
            .map(|(k, _)| k)
            .collect();
        assert!(with_grad.is_empty(), "target tensors with grad: {with_grad:?}");
        assert!(out.positive_fraction > 0.0 && out.positive_fraction <= 1.0);
        assert!(out.target_std > 0.0 && out.target_std < 1.0, "{}", out.target_std);
    }

    #[test]
    fn target_starts_as_a_copy_of_online() {
        let m = small(1);
        let online = m.online.variables();
        let target = m.target.variables();
        assert!(target.keys().all(|k| k.starts_with("encoder.") || k.starts_with("projector.")));
        assert_eq!(
            target.len(),
            online.len() - 2,
            "the online store adds ppm.transform.{{weight,bias}}"
        );
        for (k, t) in &target {
            assert!(t.equal(&online[k]), "{k} differs");
        }
    }

    #[test]
    fn target_branch_uses_the_target_weights() {
        let m = small(1);
        let b = batch();
        let before = loss_value(&m, &b);
        let z_before = m.target_forward(&b.1);
        // Perturbing only the online encoder leaves the target features as
        // they were.
        tch::no_grad(|| {
            let mut w = m.online.variables()["encoder.layer4.1.conv2.weight"].shallow_clone();
            let noise = w.randn_like() * 0.5;
            w += noise;
            let mut g = m.online.variables()["encoder.layer4.1.bn2.weight"].shallow_clone();
            let _ = g.fill_(1.0);
        });
        assert!(m.target_forward(&b.1).equal(&z_before), "target features moved with online");
        // Perturbing only the target projector changes the loss.
        let after_online = loss_value(&m, &b);
        tch::no_grad(|| {
            let mut w = m.target.variables()["projector.linear2.weight"].shallow_clone();
            let noise = w.randn_like() * 0.5;
            w += noise;
        });
        assert_ne!(loss_value(&m, &b), after_online, "target weights not used");
        assert_ne!(before, after_online, "online encoder not used");
    }

    #[test]
    fn identical_views_give_a_finite_loss_in_range() {
        let m = small(1);
        let v = Tensor::randn([2, 3, 64, 64], tch::kind::FLOAT_CPU);
        let c = Tensor::from_slice(&[0f32, 0., 1., 1., 0., 0., 1., 1.]).view([2, 4]);
        let out = m.forward_loss(&v, &v, &c, &c).unwrap();
        let l = out.loss.double_value(&[]);
        assert!(l.is_finite() && (-4.0..=4.0).contains(&l), "{l}");
        assert_eq!(out.positive_fraction, 1.0);
        // With the identity value transform p_i = sum_j A_ij zn_j has a
        // non-negative dot product with zn_i, and identical square views
        // pair each cell with itself only, so the loss is in [-4, 0].
        let m0 = small(0);
        let l0 = m0.forward_loss(&v, &v, &c, &c).unwrap().loss.double_value(&[]);
        assert!(l0.is_finite() && (-4.0..=0.0).contains(&l0), "{l0}");
    }

    #[test]
    fn momentum_update_moves_the_target_towards_online() {
        let mut m = small(1);
        let name = "projector.linear1.weight";
        tch::no_grad(|| {
            let mut w = m.online.variables()[name].shallow_clone();
            w += 1.0;
        });
        let t0 = m.target.variables()[name].copy();
        m.momentum_update(0.9);
        let t1 = &m.target.variables()[name];
        let moved = (t1 - &t0).mean(Kind::Double).double_value(&[]);
        assert!((moved - 0.1).abs() < 1e-5, "{moved}");
    }

    #[test]
    fn config_defaults_and_validation() {
        let cfg: ModelConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, ModelConfig::default());
        assert_eq!(cfg.arch, Arch::ResNet50);
        assert!(toml::from_str::<ModelConfig>("tresh = 0.7").is_err());
        for (text, key) in [
            ("output_stride = 4", "model.output_stride"),
            ("ppm_layers = 3", "model.ppm_layers"),
            ("ppm_gamma = -1.0", "model.ppm_gamma"),
            ("threshold = 0.0", "model.threshold"),
            ("momentum_base = 1.5", "model.momentum_base"),
            ("proj_dim = 0", "model.proj_dim"),
        ] {
            let cfg: ModelConfig = toml::from_str(text).unwrap();
            match cfg.validate() {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors_naming_both_sizes() {
        let m = small(1);
        let b = batch();
        let v = Tensor::zeros([3, 3, 64, 64], tch::kind::FLOAT_CPU);
        let err = m.forward_loss(&b.0, &v, &b.2, &b.3).unwrap_err().to_string();
        assert!(err.contains("[2, 3, 64, 64] and [3, 3, 64, 64]"), "{err}");
    }
}

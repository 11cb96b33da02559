//! The network pair of every method: online encoder and heads, and the
//! momentum target encoder and heads, with the step's loss (spec sections
//! 3-5). PixPro is the default; the paper's baselines share everything but
//! the heads and the loss.
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, TchError, Tensor};

use super::config::{Method, ModelConfig};
use super::momentum::ema_update;
use crate::model::heads::{normalize_cells, projector, ConvMlp};
use crate::model::instance::{instance_loss, InstanceHeads};
use crate::model::ppm::{ppm, Ppm};
use crate::model::precision::{self, Precision};
use crate::model::resnet::{resnet, ResNet};
use crate::objective::loss::f_consistency_loss;
use crate::objective::matching::positive_mask;
use crate::objective::pixcontrast::pixcontrast_loss;
use crate::Result;

/// What one training step computes.
#[derive(Debug)]
pub struct StepOutput {
    /// The method's loss, a scalar with its graph. PixPro: `L(1->2) +
    /// L(2->1)` in [-4, 4], -4 best; byol: the instance loss, also in
    /// [-4, 4]; pixpro+instance: the sum with the instance loss weighted;
    /// pixcontrast: InfoNCE, >= 0.
    pub loss: Tensor,
    /// Collapse monitor: the unit-normalised target features of both views
    /// (the pixel targets `[2B, D, H, W]`, or for byol the instance targets
    /// `[2B, D]`); for each channel d the standard deviation (unbiased) of
    /// `z[:, d]` over all cells (or images); then the mean over the D
    /// channels. About `1/sqrt(D)` (0.0625 for D = 256) when the features
    /// spread over the sphere, 0 when every cell maps to the same vector.
    pub target_std: f64,
    /// Mean over images of the fraction of view-1 cells with at least one
    /// positive in view 2.
    pub positive_fraction: f64,
}

/// The pixel-level heads: projector on both sides and, for PixPro, the PPM
/// on the online side.
#[derive(Debug)]
struct PixelHeads {
    projector: ConvMlp,
    ppm: Option<Ppm>,
    target_projector: ConvMlp,
}

/// The online and target networks. Variable names: online `encoder.*`
/// (torchvision ResNet names), `projector.*`, `ppm.*`, `projector_instance.*`,
/// `predictor.*`; target `encoder.*`, `projector.*`, `projector_instance.*`
/// (each head only where the method has it).
#[derive(Debug)]
pub struct PixPro {
    pub cfg: ModelConfig,
    /// Trainable: give this store's variables to the optimiser.
    pub online: nn::VarStore,
    /// Frozen (no variable requires grad); moved only by
    /// [`PixPro::momentum_update`].
    pub target: nn::VarStore,
    encoder: ResNet,
    target_encoder: ResNet,
    pixel: Option<PixelHeads>,
    instance: Option<(InstanceHeads, InstanceHeads)>,
    /// The arithmetic of the encoders' and projectors' forward passes in
    /// [`PixPro::forward_loss`] (float32 unless set).
    pub precision: Precision,
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

/// Mean over channels of each channel's standard deviation over the other
/// axes of a `[N, D, ...]` tensor (the collapse monitor of [`StepOutput`]).
fn channel_std(z: &Tensor) -> f64 {
    let d = z.size()[1];
    let cells = z.transpose(0, 1).reshape([d, -1]); // [D, N*...]
    cells.std_dim(1, true, false).mean(Kind::Double).double_value(&[])
}

impl PixPro {
    /// Builds both networks for `cfg.method` on `device`; the target starts
    /// as an exact copy of the online encoder and heads (buffers included)
    /// and is frozen.
    pub fn new(cfg: ModelConfig, device: Device) -> Result<PixPro> {
        cfg.validate()?;
        let online = nn::VarStore::new(device);
        let mut target = nn::VarStore::new(device);
        let (o, t) = (online.root(), target.root());
        let encoder = resnet(&(&o / "encoder"), cfg.arch, cfg.output_stride)?;
        let target_encoder = resnet(&(&t / "encoder"), cfg.arch, cfg.output_stride)?;
        let c5 = cfg.arch.out_channels();
        let (hidden, dim) = (cfg.proj_hidden, cfg.proj_dim);
        let pixel = if cfg.method.pixel_level() {
            let ppm = match cfg.method {
                Method::PixContrast => None,
                _ => Some(ppm(&(&o / "ppm"), dim, cfg.ppm_gamma, cfg.ppm_layers)?),
            };
            Some(PixelHeads {
                projector: projector(&(&o / "projector"), c5, hidden, dim),
                ppm,
                target_projector: projector(&(&t / "projector"), c5, hidden, dim),
            })
        } else {
            None
        };
        let instance = cfg.method.instance_level().then(|| {
            (InstanceHeads::online(&o, c5, hidden, dim), InstanceHeads::target(&t, c5, hidden, dim))
        });
        target.copy(&online)?;
        target.freeze();
        Ok(PixPro {
            cfg,
            online,
            target,
            encoder,
            target_encoder,
            pixel,
            instance,
            precision: Precision::Fp32,
        })
    }

    /// The online encoder (what transfer keeps).
    pub fn encoder(&self) -> &ResNet {
        &self.encoder
    }

    /// Starts both encoders, online and target, from `weights` (the
    /// encoder's torchvision-named tensors, BatchNorm statistics included,
    /// as a backbone read from any weight file gives them); the heads keep
    /// their fresh initialisation. Every encoder tensor must be given, with
    /// its shape.
    pub fn init_encoders(&mut self, weights: &[(String, Tensor)]) -> Result<()> {
        let given: std::collections::BTreeMap<&str, &Tensor> =
            weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for store in [&self.online, &self.target] {
            let mut copied = 0;
            for (name, mut var) in store.variables() {
                let Some(name) = name.strip_prefix("encoder.") else { continue };
                let src = given.get(name).ok_or_else(|| {
                    TchError::Kind(format!("initial weights lack encoder tensor `{name}`"))
                })?;
                if src.size() != var.size() {
                    return Err(TchError::Shape(format!(
                        "initial weights: `{name}` has shape {:?}, the encoder needs {:?}",
                        src.size(),
                        var.size()
                    ))
                    .into());
                }
                tch::no_grad(|| var.copy_(src));
                copied += 1;
            }
            if copied != given.len() {
                return Err(TchError::Kind(format!(
                    "initial weights hold {} tensors, the encoder {copied}",
                    given.len()
                ))
                .into());
            }
        }
        Ok(())
    }

    /// The online pixel projector; byol has none.
    pub fn projector(&self) -> Option<&ConvMlp> {
        self.pixel.as_ref().map(|p| &p.projector)
    }

    /// One step's loss: each view goes separately through the online and
    /// target networks (BN statistics per view; the target in train mode
    /// under no_grad), then the method's loss with the positive mask from the
    /// coordinates. `view1`, `view2`: `[B, 3, H, W]`; `coords1`, `coords2`:
    /// `[B, 4]`.
    pub fn forward_loss(
        &self,
        view1: &Tensor,
        view2: &Tensor,
        coords1: &Tensor,
        coords2: &Tensor,
    ) -> Result<StepOutput> {
        check_views(view1, view2, coords1, coords2)?;
        let device = view1.device();
        let net = |x: &Tensor, layer: &dyn ModuleT| {
            precision::run(self.precision, device, || layer.forward_t(x, true))
        };
        let f1 = net(view1, &self.encoder); // [B, C, h, w]
        let f2 = net(view2, &self.encoder); // [B, C, h, w]
        let target = |x: &Tensor| tch::no_grad(|| net(x, &self.target_encoder));
        let (t1, t2) = (target(view1), target(view2)); // [B, C, h, w] each
        let (_, _, h, w) = f1.size4()?;
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
        let positive_fraction =
            tch::no_grad(|| m12.amax(2, false).mean(Kind::Double).double_value(&[]));

        let mut terms: Vec<Tensor> = Vec::with_capacity(2);
        let mut target_std = None;
        if let Some(px) = &self.pixel {
            let p1 = net(&f1, &px.projector); // [B, D, h, w]
            let p2 = net(&f2, &px.projector); // [B, D, h, w]
            let (z1, z2) = tch::no_grad(|| {
                let z = |t: &Tensor| normalize_cells(&net(t, &px.target_projector));
                (z(&t1), z(&t2))
            }); // [B, D, h, w] each
            terms.push(match &px.ppm {
                Some(ppm) => {
                    let y1 = p1.apply_t(ppm, true); // [B, D, h, w]
                    let y2 = p2.apply_t(ppm, true); // [B, D, h, w]
                    f_consistency_loss(&y1, &z2, &m12)? + f_consistency_loss(&y2, &z1, &m21)?
                }
                None => {
                    let t = self.cfg.temperature;
                    pixcontrast_loss(&p1, &z2, &m12, t)? + pixcontrast_loss(&p2, &z1, &m21, t)?
                }
            });
            target_std = Some(tch::no_grad(|| channel_std(&Tensor::cat(&[&z1, &z2], 0))));
        }
        if let Some((online, target)) = &self.instance {
            let q1 = online.forward_t(&f1, true); // [B, D]
            let q2 = online.forward_t(&f2, true); // [B, D]
            let (z1, z2) =
                tch::no_grad(|| (target.forward_t(&t1, true), target.forward_t(&t2, true))); // [B, D]
            let weight = match self.cfg.method {
                Method::Byol => 1.0,
                _ => self.cfg.instance_weight,
            };
            terms.push((instance_loss(&q1, &z2)? + instance_loss(&q2, &z1)?) * weight);
            if target_std.is_none() {
                target_std = Some(tch::no_grad(|| channel_std(&Tensor::cat(&[&z1, &z2], 0))));
            }
        }
        // Every method has a pixel or an instance branch (or both).
        let loss = terms
            .into_iter()
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([], (Kind::Float, device)));
        Ok(StepOutput { loss, target_std: target_std.unwrap_or(0.0), positive_fraction })
    }

    /// `theta_t = tau * theta_t + (1 - tau) * theta_online` for the encoder,
    /// projector and instance projector parameters (not the BN buffers, not
    /// the PPM, not the predictor).
    pub fn momentum_update(&mut self, tau: f64) {
        ema_update(&self.target, &self.online, tau);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resnet::Arch;

    fn small(ppm_layers: u8) -> PixPro {
        small_method(Method::PixPro, ppm_layers)
    }

    fn small_method(method: Method, ppm_layers: u8) -> PixPro {
        tch::manual_seed(7);
        let cfg = ModelConfig {
            method,
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
    fn bf16_loss_and_gradients_are_float32_and_near_fp32() {
        let b = batch();
        // One model for both: building a second from the same seed would
        // draw from libtorch's global generator, which tests running in
        // parallel draw from too.
        let mut m = small(1);
        let mut grads = |precision: Precision| {
            for (_, t) in m.online.variables() {
                t.shallow_clone().zero_grad();
            }
            m.precision = precision;
            let out = m.forward_loss(&b.0, &b.1, &b.2, &b.3).unwrap();
            assert_eq!(out.loss.kind(), Kind::Float);
            out.loss.backward();
            let mut g: Vec<(String, Tensor)> = m
                .online
                .variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
                .map(|(k, t)| (k, t.grad()))
                .collect();
            g.sort_by(|a, b| a.0.cmp(&b.0));
            (out.loss.double_value(&[]), g)
        };
        let (l32, g32) = grads(Precision::Fp32);
        let (l16, g16) = grads(Precision::Bf16);
        assert!(l16 != l32, "bf16 gave fp32's loss exactly: autocast had no effect");
        assert!((l16 - l32).abs() < 0.02 * l32.abs().max(1.0), "loss {l16} vs fp32 {l32}");
        // Parameters whose gradient is zero or nearly so in fp32 (residual
        // branches behind a zero-initialised BN, a bias feeding a BN) carry
        // only rounding noise; the rest must point the same way.
        let norm = |t: &Tensor| t.norm().double_value(&[]);
        let largest = g32.iter().map(|(_, t)| norm(t)).fold(0.0, f64::max);
        let mut checked = 0;
        for ((k, a), (_, b)) in g32.iter().zip(&g16) {
            assert_eq!(b.kind(), Kind::Float, "{k}");
            if norm(a) < 1e-2 * largest {
                continue;
            }
            let cos = (a * b).sum(Kind::Double).double_value(&[]) / (norm(a) * norm(b));
            assert!(cos > 0.95, "{k}: bf16 gradient at cosine {cos} to fp32's");
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} parameters with a sizeable gradient");
    }

    #[test]
    fn every_online_parameter_gets_a_gradient_and_the_target_none() {
        for method in Method::ALL {
            gradients_reach_every_online_parameter(method);
        }
    }

    fn gradients_reach_every_online_parameter(method: Method) {
        let m = small_method(method, 1);
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
        assert!(missing.is_empty(), "{method}: no finite gradient for {missing:?}");
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
        assert!(with_grad.is_empty(), "{method}: target tensors with grad: {with_grad:?}");
        assert!(out.positive_fraction > 0.0 && out.positive_fraction <= 1.0);
        assert!(out.target_std > 0.0 && out.target_std < 1.0, "{}", out.target_std);
    }

    #[test]
    fn each_method_has_its_heads_and_the_target_mirrors_the_momentum_ones() {
        let heads = |vs: &nn::VarStore| {
            let mut h: Vec<String> = vs
                .variables()
                .keys()
                .filter(|k| !k.starts_with("encoder."))
                .filter_map(|k| k.split('.').next().map(str::to_string))
                .collect();
            h.sort();
            h.dedup();
            h
        };
        for (method, online, target) in [
            (Method::PixPro, vec!["ppm", "projector"], vec!["projector"]),
            (
                Method::PixProInstance,
                vec!["ppm", "predictor", "projector", "projector_instance"],
                vec!["projector", "projector_instance"],
            ),
            (Method::Byol, vec!["predictor", "projector_instance"], vec!["projector_instance"]),
            (Method::PixContrast, vec!["projector"], vec!["projector"]),
        ] {
            let m = small_method(method, 1);
            assert_eq!(heads(&m.online), online, "{method}");
            assert_eq!(heads(&m.target), target, "{method}");
            assert_eq!(m.projector().is_some(), method != Method::Byol);
        }
    }

    #[test]
    fn instance_weight_scales_the_instance_loss_only() {
        let b = batch();
        let mut m = small_method(Method::PixProInstance, 1);
        let mut loss_at = |alpha: f64| {
            m.cfg.instance_weight = alpha;
            loss_value(&m, &b)
        };
        // Batch statistics make each loss a function of the weights alone,
        // so the three values differ only by alpha times the instance loss.
        let (l0, l1, l3) = (loss_at(0.0), loss_at(1.0), loss_at(3.0));
        let instance = l1 - l0;
        assert!(((l3 - l0) - 3.0 * instance).abs() < 1e-4, "{l0} {l1} {l3}");
        assert!(instance.abs() > 1e-6 && (-4.0..=4.0).contains(&instance), "{instance}");
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
        let target_c5 = |m: &PixPro| tch::no_grad(|| b.1.apply_t(&m.target_encoder, true));
        let z_before = target_c5(&m);
        // Perturbing only the online encoder leaves the target features as
        // they were.
        tch::no_grad(|| {
            let mut w = m.online.variables()["encoder.layer4.1.conv2.weight"].shallow_clone();
            let noise = w.randn_like() * 0.5;
            w += noise;
            let mut g = m.online.variables()["encoder.layer4.1.bn2.weight"].shallow_clone();
            let _ = g.fill_(1.0);
        });
        assert!(target_c5(&m).equal(&z_before), "target features moved with online");
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
    fn bad_shapes_are_errors_naming_both_sizes() {
        let m = small(1);
        let b = batch();
        let v = Tensor::zeros([3, 3, 64, 64], tch::kind::FLOAT_CPU);
        let err = m.forward_loss(&b.0, &v, &b.2, &b.3).unwrap_err().to_string();
        assert!(err.contains("[2, 3, 64, 64] and [3, 3, 64, 64]"), "{err}");
    }
}

//! Parity of matching, projector, PPM and loss (spec sections 2-4) with the
//! reference PixPro's own modules run in float64 by
//! scripts/make_parity_fixtures.py --ref: the loss and every online
//! gradient agree to 1e-5 relative, the mask exactly (with the spec's, from
//! which the reference's loss may not stray).
use std::collections::HashMap;

use pixpro::model::heads::projector;
use pixpro::model::ppm::ppm;
use pixpro::objective::loss::consistency_loss;
use pixpro::objective::matching::positive_mask;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;
/// A gradient whose largest value is below this fraction of the largest of
/// all gradients is zero in exact arithmetic and holds rounding noise (the
/// projector's first bias, which feeds a training-mode BatchNorm: about
/// 5e-17, and the reference's float32 mask arithmetic moves it by as
/// much): it is held to the scale of all the gradients instead of its own.
const ZERO_GRADIENT: f64 = 1e-9;
const BUFFERS: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

fn fixtures() -> HashMap<String, Tensor> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/parity.safetensors");
    Tensor::read_safetensors(path).expect(path).into_iter().collect()
}

/// Sets every parameter of `vs` from `fx[prefix + name]` and checks that the
/// fixture holds no parameter the store lacks. Buffers (running statistics)
/// are left alone: in train mode BN uses the batch statistics.
fn load(vs: &nn::VarStore, fx: &HashMap<String, Tensor>, prefix: &str) {
    let vars = vs.variables();
    for (name, t) in &vars {
        if BUFFERS.iter().any(|b| name.ends_with(b)) {
            continue;
        }
        let src = fx.get(&format!("{prefix}{name}")).unwrap_or_else(|| panic!("no {prefix}{name}"));
        assert_eq!(t.size(), src.size(), "{prefix}{name}");
        tch::no_grad(|| t.shallow_clone().copy_(src));
    }
    for key in fx.keys().filter_map(|k| k.strip_prefix(prefix)) {
        assert!(vars.contains_key(key), "fixture has {prefix}{key}, the model does not");
    }
}

fn largest(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// max |ours - theirs| / max(max |theirs|, `floor`).
fn rel_err(ours: &Tensor, theirs: &Tensor, floor: f64) -> f64 {
    largest(&(ours - theirs)) / largest(theirs).max(floor).max(1e-300)
}

#[test]
fn loss_gradients_and_mask_match_pytorch() {
    let fx = fixtures();
    let (dim, hidden, gamma, threshold) = (8, 16, 2.0, 0.7);
    let mut online = nn::VarStore::new(Device::Cpu);
    let proj = projector(&(online.root() / "projector"), dim, hidden, dim);
    let prop = ppm(&(online.root() / "ppm"), dim, gamma, 1).unwrap();
    let mut target = nn::VarStore::new(Device::Cpu);
    let target_proj = projector(&(target.root() / "projector"), dim, hidden, dim);
    online.double();
    target.double();
    target.freeze();
    load(&online, &fx, "online.");
    load(&target, &fx, "target.");

    let (f1, f2) = (&fx["input.feat1"], &fx["input.feat2"]); // [2, 8, 4, 4]
    let (_, _, h, w) = f1.size4().unwrap();
    let mask = positive_mask(&fx["input.coords1"], &fx["input.coords2"], h, w, threshold); // [2, 16, 16]
    assert!(mask.equal(&fx["mask12"]), "mask12 differs");

    let p1 = prop.forward_t(&proj.forward_t(f1, true), true); // [2, 8, 4, 4]
    let p2 = prop.forward_t(&proj.forward_t(f2, true), true); // [2, 8, 4, 4]
    let z1 = tch::no_grad(|| target_proj.forward_t(f1, true)); // [2, 8, 4, 4]
    let z2 = tch::no_grad(|| target_proj.forward_t(f2, true)); // [2, 8, 4, 4]
    let loss =
        consistency_loss(&p1, &z2, &mask) + consistency_loss(&p2, &z1, &mask.transpose(1, 2));
    assert_eq!(loss.kind(), Kind::Double);
    let err = rel_err(&loss, &fx["loss"], 0.0);
    eprintln!("loss {:.9}: relative error {err:.2e}", loss.double_value(&[]));
    assert!(err <= TOLERANCE, "loss: relative error {err:e}");
    loss.backward();

    let scale = fx.iter().filter(|(k, _)| k.starts_with("grad.")).map(|(_, t)| largest(t));
    let floor = ZERO_GRADIENT * scale.fold(0.0, f64::max);
    let mut checked = 0;
    for (name, t) in online.variables() {
        if !t.requires_grad() {
            continue;
        }
        let want = &fx[&format!("grad.{name}")];
        let got = t.grad();
        assert!(got.defined(), "grad.{name}: no gradient");
        let err = rel_err(&got, want, floor);
        let held = if largest(want) < floor { " (zero in exact arithmetic)" } else { "" };
        eprintln!("grad.{name}: relative error {err:.2e}{held}");
        assert!(err <= TOLERANCE, "grad.{name}: relative error {err:e}");
        checked += 1;
    }
    assert_eq!(checked, fx.keys().filter(|k| k.starts_with("grad.")).count());
    for (name, t) in target.variables() {
        assert!(!t.grad().defined(), "target {name} got a gradient");
    }
}

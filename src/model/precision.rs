//! Mixed precision: the encoders and projectors run their forward passes in
//! bfloat16 under libtorch's autocast, while weights, gradients, the
//! optimiser and the momentum target stay float32, and the PPM, matching and
//! loss see float32 inputs.
//!
//! bfloat16 keeps float32's exponent range, so unlike float16 it needs no
//! loss scaling. tch only switches CUDA's autocast, so the switch for both
//! devices is a small C++ function (`csrc/autocast.cpp`).
use std::os::raw::c_int;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

extern "C" {
    fn pixpro_autocast_enter(cuda: c_int, prev_enabled: *mut c_int, prev_dtype: *mut c_int);
    fn pixpro_autocast_exit(cuda: c_int, prev_enabled: c_int, prev_dtype: c_int);
}

/// The arithmetic of the networks' forward passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout (the default, and what the parity tests check).
    #[default]
    Fp32,
    /// bfloat16 autocast for the encoders and projectors.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The CPU's bfloat16 units as `/proc/cpuinfo` names them (`amx_bf16`,
/// `avx512_bf16`), or `None` when it lists neither or cannot be read:
/// without them libtorch emulates bf16, which is slower than fp32.
pub fn cpu_bf16_units() -> Option<&'static str> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = info.lines().find(|l| l.starts_with("flags"))?;
    let has = |name: &str| flags.split_whitespace().any(|f| f == name);
    ["amx_bf16", "avx512_bf16"].into_iter().find(|name| has(name))
}

/// Autocast switched on for one device until dropped, so that an early
/// return or a panic inside the forward pass cannot leave it on.
struct Autocast {
    cuda: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl Autocast {
    fn enter(device: Device) -> Autocast {
        let cuda = c_int::from(device.is_cuda());
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: plain integers in and out; the C++ side does not throw.
        unsafe { pixpro_autocast_enter(cuda, &mut prev_enabled, &mut prev_dtype) };
        Autocast { cuda, prev_enabled, prev_dtype }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: as in `enter`, with the values it returned.
        unsafe { pixpro_autocast_exit(self.cuda, self.prev_enabled, self.prev_dtype) };
    }
}

/// Runs `forward` (a network applied to its input) in `precision` on
/// `device` and returns its output as float32, so that whatever comes next
/// computes in float32 whichever precision the network ran in.
pub fn run(precision: Precision, device: Device, forward: impl FnOnce() -> Tensor) -> Tensor {
    match precision {
        Precision::Fp32 => forward(),
        Precision::Bf16 => {
            let out = {
                let _on = Autocast::enter(device);
                forward()
            };
            out.to_kind(Kind::Float)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    fn conv() -> nn::Conv2D {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        nn::conv2d(vs.root(), 8, 16, 3, Default::default())
    }

    #[test]
    fn bf16_runs_the_convolution_in_bf16_and_returns_float32() {
        let conv = conv();
        let x = Tensor::randn([2, 8, 10, 10], (Kind::Float, Device::Cpu));
        let exact = x.apply(&conv);
        let inside = std::cell::Cell::new(Kind::Float);
        let out = run(Precision::Bf16, Device::Cpu, || {
            let y = x.apply(&conv);
            inside.set(y.kind());
            y
        });
        assert_eq!(inside.get(), Kind::BFloat16, "autocast did not lower the convolution");
        assert_eq!(out.kind(), Kind::Float);
        let rel =
            (&out - &exact).abs().max().double_value(&[]) / exact.abs().max().double_value(&[]);
        assert!(rel > 0.0, "bf16 gave float32's result exactly: autocast had no effect");
        assert!(rel < 2e-2, "bf16 result far from float32's: relative error {rel}");
    }

    #[test]
    fn autocast_is_off_again_afterwards_and_fp32_is_exact() {
        let conv = conv();
        let x = Tensor::randn([2, 8, 10, 10], (Kind::Float, Device::Cpu));
        let exact = x.apply(&conv);
        let _ = run(Precision::Bf16, Device::Cpu, || x.apply(&conv));
        let after = x.apply(&conv);
        assert_eq!(after.kind(), Kind::Float);
        assert!(after.equal(&exact), "autocast stayed on after run returned");
        let fp32 = run(Precision::Fp32, Device::Cpu, || x.apply(&conv));
        assert!(fp32.equal(&exact));
    }

    #[test]
    fn gradients_reach_float32_weights_through_bf16() {
        let conv = conv();
        let x = Tensor::randn([2, 8, 10, 10], (Kind::Float, Device::Cpu));
        let y = run(Precision::Bf16, Device::Cpu, || x.apply(&conv));
        y.square().sum(Kind::Float).backward();
        let g = conv.ws.grad();
        assert_eq!(g.kind(), Kind::Float);
        assert!(g.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    }
}

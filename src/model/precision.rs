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
    fn pixpro_cuda_capability(index: c_int, major: *mut c_int, minor: *mut c_int) -> c_int;
}

/// The arithmetic of the networks' forward passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout (what the parity tests check).
    #[default]
    Fp32,
    /// bfloat16 autocast for the encoders and projectors.
    Bf16,
    /// bf16 where it pays: on a CUDA device of compute capability 8.0 or
    /// later, and on a CPU with AVX-512 BF16 or AMX where a timed trial
    /// finds it clearly faster (`train::precision_trial`); fp32 elsewhere.
    /// Resolved once when a run starts; the run's config keeps the result,
    /// so a resumed run computes as it began. The presets' default.
    Auto,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Auto => "auto",
        }
    }

    /// fp32 or bf16 on `device` by the hardware alone, with why in words;
    /// fp32 and bf16 stay as asked. A run refines `auto` on a CPU with
    /// bfloat16 units by timing both (`train::precision_trial`), as the
    /// units alone do not make bf16 faster there.
    pub fn resolve(self, device: Device) -> (Precision, String) {
        match self {
            Precision::Fp32 | Precision::Bf16 => (self, format!("{} as asked", self.name())),
            Precision::Auto => match device {
                Device::Cuda(index) => match cuda_capability(index) {
                    Some((major, minor)) if major >= 8 => (
                        Precision::Bf16,
                        format!("auto: bf16, CUDA compute capability {major}.{minor} computes it natively"),
                    ),
                    Some((major, minor)) => (
                        Precision::Fp32,
                        format!("auto: fp32, CUDA compute capability {major}.{minor} is below 8.0, where bf16 is emulated"),
                    ),
                    None => (
                        Precision::Fp32,
                        "auto: fp32, this build cannot read the CUDA device's compute capability".into(),
                    ),
                },
                _ => match cpu_bf16_units() {
                    Some(unit) => (Precision::Bf16, format!("auto: bf16, the CPU has {unit}")),
                    None => (
                        Precision::Fp32,
                        "auto: fp32, the CPU has neither avx512_bf16 nor amx_bf16 (bf16 would be emulated)"
                            .into(),
                    ),
                },
            },
        }
    }
}

/// The compute capability (major, minor) of CUDA device `index`, or `None`
/// where this build has no CUDA headers (`csrc/autocast.cpp`) or the device
/// cannot be asked.
pub fn cuda_capability(index: usize) -> Option<(i32, i32)> {
    let index = c_int::try_from(index).ok()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain integers in and out; the C++ side catches what it throws.
    let known = unsafe { pixpro_cuda_capability(index, &mut major, &mut minor) };
    (known != 0).then_some((major, minor))
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
        Precision::Auto => run(precision.resolve(device).0, device, forward),
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
    fn auto_is_bf16_only_where_the_hardware_has_it() {
        for p in [Precision::Fp32, Precision::Bf16] {
            assert_eq!(p.resolve(Device::Cpu).0, p);
        }
        let (cpu, why) = Precision::Auto.resolve(Device::Cpu);
        let native = cpu_bf16_units().is_some();
        assert_eq!(cpu, if native { Precision::Bf16 } else { Precision::Fp32 }, "{why}");
        if !tch::Cuda::is_available() {
            assert_eq!(cuda_capability(0), None);
            assert_eq!(Precision::Auto.resolve(Device::Cuda(0)).0, Precision::Fp32);
        } else if let Some((major, _)) = cuda_capability(0) {
            let want = if major >= 8 { Precision::Bf16 } else { Precision::Fp32 };
            assert_eq!(Precision::Auto.resolve(Device::Cuda(0)).0, want);
        }
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

//! What `--method` picks and the `[model]` section that configures it.
use serde::{Deserialize, Serialize};

use crate::model::resnet::{unsupported_output_stride, Arch};
use crate::objective::pixcontrast::TEMPERATURE;
use crate::{Error, Result};

/// What is learned: the pixel-level method of the paper, its instance-level
/// and contrastive baselines, or both levels together.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Pixel propagation to the momentum target's pixels (the paper's method).
    #[serde(rename = "pixpro")]
    #[value(name = "pixpro")]
    PixPro,
    /// PixPro plus the BYOL-style instance branch, weighted by
    /// `instance_weight` (the paper's best detection recipe).
    #[serde(rename = "pixpro+instance")]
    #[value(name = "pixpro+instance")]
    PixProInstance,
    /// The instance branch alone: the instance-level baseline.
    #[serde(rename = "byol")]
    #[value(name = "byol")]
    Byol,
    /// InfoNCE over pixels (the paper's contrastive baseline).
    #[serde(rename = "pixcontrast")]
    #[value(name = "pixcontrast")]
    PixContrast,
}

impl Method {
    pub const ALL: [Method; 4] =
        [Method::PixPro, Method::PixProInstance, Method::Byol, Method::PixContrast];

    pub fn name(self) -> &'static str {
        match self {
            Method::PixPro => "pixpro",
            Method::PixProInstance => "pixpro+instance",
            Method::Byol => "byol",
            Method::PixContrast => "pixcontrast",
        }
    }

    pub(crate) fn pixel_level(self) -> bool {
        self != Method::Byol
    }

    pub(crate) fn instance_level(self) -> bool {
        matches!(self, Method::Byol | Method::PixProInstance)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The `[model]` section of the configuration; every default is the spec's
/// value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// `"pixpro"`, `"pixpro+instance"`, `"byol"` or `"pixcontrast"` (pixpro).
    pub method: Method,
    /// Encoder architecture (`"resnet50"`).
    pub arch: Arch,
    /// C5 stride: 32, 16 or 8 (32).
    pub output_stride: u32,
    /// Projector hidden width (4096); also the instance heads'.
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
    /// Weight alpha of the instance loss in `pixpro+instance` (1).
    pub instance_weight: f64,
    /// PixContrast's InfoNCE temperature (0.3).
    pub temperature: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            method: Method::PixPro,
            arch: Arch::ResNet50,
            output_stride: 32,
            proj_hidden: 4096,
            proj_dim: 256,
            ppm_gamma: 2.0,
            ppm_layers: 1,
            threshold: 0.7,
            momentum_base: 0.99,
            instance_weight: 1.0,
            temperature: TEMPERATURE,
        }
    }
}
impl ModelConfig {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Err(Error::config(format!("model.{key}"), reason));
        if let Some(reason) = unsupported_output_stride(self.output_stride) {
            return bad("output_stride", reason);
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
        if !(self.instance_weight.is_finite() && self.instance_weight >= 0.0) {
            return bad(
                "instance_weight",
                format!("{} must be finite and >= 0", self.instance_weight),
            );
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("temperature", format!("{} must be finite and > 0", self.temperature));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_round_trip_through_toml() {
        for method in Method::ALL {
            let cfg: ModelConfig = toml::from_str(&format!("method = \"{method}\"")).unwrap();
            assert_eq!(cfg.method, method);
        }
        assert!(toml::from_str::<ModelConfig>("method = \"simclr\"").is_err());
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
            ("instance_weight = -1.0", "model.instance_weight"),
            ("temperature = 0.0", "model.temperature"),
        ] {
            let cfg: ModelConfig = toml::from_str(text).unwrap();
            match cfg.validate() {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: expected a config error, got {other:?}"),
            }
        }
    }
}

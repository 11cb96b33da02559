//! Learning-rate schedule of spec section 6: linear warm-up from lr/100 to lr,
//! then cosine decay to a floor, evaluated at every step.
use serde::{Deserialize, Serialize};

/// Half a cosine from `start` (at `progress` 0) to `end` (at 1). The one
/// curve behind both the learning rate and the momentum schedule.
pub fn cosine(progress: f64, start: f64, end: f64) -> f64 {
    let p = progress.clamp(0.0, 1.0);
    end + (start - end) * (1.0 + (std::f64::consts::PI * p).cos()) / 2.0
}

/// The learning rate of every step of a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate, already scaled to the global batch
    /// (`OptimConfig::peak_lr`).
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// The learning rate at the first step is `peak * warmup_start_factor`.
    pub warmup_start_factor: f64,
    pub final_lr: f64,
}

impl LrSchedule {
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let f = self.warmup_start_factor;
            self.peak * (f + (1.0 - f) * step as f64 / self.warmup_steps as f64)
        } else {
            let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
            let progress = (step - self.warmup_steps) as f64 / decay_steps as f64;
            cosine(progress, self.peak, self.final_lr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paper() -> LrSchedule {
        // Batch 1024 (lr 4.0), 1251 steps per epoch, 5 warm-up epochs of 100.
        LrSchedule {
            peak: 4.0,
            warmup_steps: 5 * 1251,
            total_steps: 100 * 1251,
            warmup_start_factor: 0.01,
            final_lr: 1e-6,
        }
    }

    #[test]
    fn warmup_starts_at_a_hundredth_and_reaches_the_peak() {
        let s = paper();
        assert!((s.at(0) - 0.04).abs() < 1e-12);
        let mid = s.at(s.warmup_steps / 2);
        assert!(mid > 1.9 && mid < 2.1, "{mid}");
        assert!((s.at(s.warmup_steps) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn cosine_decays_to_the_floor() {
        let s = paper();
        let half = s.warmup_steps + (s.total_steps - s.warmup_steps) / 2;
        assert!((s.at(half) - (4.0 + 1e-6) / 2.0).abs() < 1e-3);
        assert!((s.at(s.total_steps) - 1e-6).abs() < 1e-12);
        let lrs: Vec<f64> = (s.warmup_steps..=s.total_steps).step_by(97).map(|k| s.at(k)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "not monotone after warm-up");
    }

    #[test]
    fn no_warmup_is_pure_cosine() {
        let s = LrSchedule { warmup_steps: 0, total_steps: 10, ..paper() };
        assert_eq!(s.at(0), 4.0);
        assert!((s.at(10) - 1e-6).abs() < 1e-12);
    }
}

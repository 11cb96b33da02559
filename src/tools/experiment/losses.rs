//! The pretraining loss of the Methods rows side by side: `loss.png` (mean
//! and min-max band over seeds per row, against steps) and the final loss
//! per row in results.md, for the methods' own runs and for `[[weights]]`
//! that come with their loss per step (the reference PixPro's, from
//! scripts/reference-train).
//!
//! Both are compared as pixpro logs them: the mean loss of each window of
//! `log_every` steps ending at a logged step (metrics.jsonl's `loss_avg`);
//! a per-step file is averaged into the same windows, so that neither side
//! is smoother than the other.
use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::plan::{Group, Job, Plan};
use super::results::{mean_std, JobResult};
use crate::plots::{plot_bands, Band};
use crate::{Error, Result};

/// (step, mean loss of the window ending there), in step order.
type Curve = Vec<(u64, f64)>;

#[derive(Deserialize)]
struct Logged {
    step: u64,
    loss_avg: Option<f64>,
}

#[derive(Deserialize)]
struct PerStep {
    step: u64,
    loss: Option<f64>,
}

fn lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::data(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// A per-step loss averaged into windows of `every` steps ending at each
/// multiple of `every` and at the last step, as pixpro's metrics lines are;
/// steps without a finite loss are left out of their window's mean.
fn windows(steps: &[PerStep], every: u64) -> Curve {
    let last = steps.iter().map(|s| s.step).max().unwrap_or(0);
    let mut sums: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    for s in steps {
        let end = s.step.div_ceil(every.max(1)) * every.max(1);
        let sum = sums.entry(end.min(last)).or_default();
        if let Some(loss) = s.loss.filter(|l| l.is_finite()) {
            *sum = (sum.0 + loss, sum.1 + 1);
        }
    }
    sums.into_iter()
        .filter(|(_, (_, n))| *n > 0)
        .map(|(end, (sum, n))| (end, sum / n as f64))
        .collect()
}

/// The job's loss curve: its metrics.jsonl, or its `[[weights]]` losses;
/// None for random init and weights that came without losses.
pub(super) fn curve(plan: &Plan, job: &Job, out: &Path) -> Result<Option<Curve>> {
    match &job.weights {
        Some(w) => match &w.losses {
            Some(path) => Ok(Some(windows(&lines(path)?, plan.base.train.log_every))),
            None => Ok(None),
        },
        None if job.method == "random" => Ok(None),
        None => {
            let path = out.join("jobs").join(&job.id).join("metrics.jsonl");
            // A grid finished elsewhere has the job's result but not its
            // folder: its scores are reported, without a loss curve.
            if !path.is_file() {
                return Ok(None);
            }
            let logged: Vec<Logged> = lines(&path)?;
            Ok(Some(
                logged
                    .into_iter()
                    .filter_map(|l| Some((l.step, l.loss_avg.filter(|x| x.is_finite())?)))
                    .collect(),
            ))
        }
    }
}

/// A row's curves over its finished jobs, as a band: at the steps every
/// seed logged, the mean, min and max; and each seed's final loss.
fn band(label: &str, curves: &[Curve]) -> (Band, Vec<f64>) {
    let mut at: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for c in curves {
        for &(step, loss) in c {
            at.entry(step).or_default().push(loss);
        }
    }
    let points = at
        .into_iter()
        .filter(|(_, v)| v.len() == curves.len())
        .map(|(step, v)| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (step as f64, mean, lo, hi)
        })
        .collect();
    let finals = curves.iter().filter_map(|c| c.last().map(|&(_, l)| l)).collect();
    let band = Band { label: format!("{label} (n={})", curves.len()), points, measured: true };
    (band, finals)
}

/// Draws `out/loss.png` for the Methods group's rows that have loss curves
/// among their finished jobs, and returns the results.md section with their
/// final losses; empty (and no picture) when no row has one.
pub(super) fn loss_section(plan: &Plan, results: &[JobResult], out: &Path) -> Result<String> {
    let Some(group) = plan.groups.iter().find(|g| g.title == "Methods") else {
        return Ok(String::new());
    };
    let rows = row_curves(plan, group, results, out)?;
    if rows.is_empty() {
        return Ok(String::new());
    }
    let mut bands = Vec::new();
    let mut md = format!(
        "\n## Pretraining loss\n\nMean loss of the last {}-step window, mean ± sample std over \
         seeds; the curves (mean and min-max band over seeds) in loss.png.\n\n\
         | method | n | final loss |\n|---|---:|---:|\n",
        plan.base.train.log_every
    );
    for (label, curves) in &rows {
        let (b, finals) = band(label, curves);
        let (m, sd) = mean_std(&finals);
        let shown = match (m, sd) {
            (Some(m), Some(sd)) => format!("{m:.4} ± {sd:.4}"),
            (Some(m), None) => format!("{m:.4}"),
            _ => "-".into(),
        };
        md.push_str(&format!("| {label} | {} | {shown} |\n", curves.len()));
        bands.push(b);
    }
    let title = format!("pretraining loss, mean of {}-step windows", plan.base.train.log_every);
    plot_bands(&title, &bands, &out.join("loss.png"))?;
    Ok(md)
}

/// (row label, the curves of its finished jobs) for rows with any.
fn row_curves(
    plan: &Plan,
    group: &Group,
    results: &[JobResult],
    out: &Path,
) -> Result<Vec<(String, Vec<Curve>)>> {
    let mut rows = Vec::new();
    for row in &group.rows {
        let mut curves = Vec::new();
        for r in row.ids.iter().filter_map(|id| results.iter().find(|r| &r.id == id)) {
            let Some(job) = plan.jobs.iter().find(|j| j.id == r.id) else { continue };
            // Results recorded before curves were kept in them still have
            // theirs in the job's folder, if it is on this machine.
            let c = if r.loss_curve.is_empty() {
                curve(plan, job, out)?
            } else {
                Some(r.loss_curve.clone())
            };
            if let Some(c) = c.filter(|c| !c.is_empty()) {
                curves.push(c);
            }
        }
        if !curves.is_empty() {
            rows.push((row.label.clone(), curves));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_step(losses: &[f64]) -> Vec<PerStep> {
        losses
            .iter()
            .enumerate()
            .map(|(i, &l)| PerStep { step: i as u64 + 1, loss: Some(l) })
            .collect()
    }

    #[test]
    fn per_step_losses_average_into_the_windows_pixpro_logs() {
        // Windows (0, 3], (3, 6] and the last, (6, 7].
        let c = windows(&per_step(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]), 3);
        assert_eq!(c, [(3, 2.0), (6, 5.0), (7, 7.0)]);
        let mut gap = per_step(&[1.0, 2.0, 3.0]);
        gap[1].loss = None;
        assert_eq!(windows(&gap, 3), [(3, 2.0)]);
    }

    #[test]
    fn a_band_spans_the_seeds_at_the_steps_all_of_them_logged() {
        let curves = vec![vec![(10, 1.0), (20, 0.5)], vec![(10, 3.0), (20, 1.5), (30, 0.0)]];
        let (b, finals) = band("pixpro", &curves);
        assert_eq!(b.label, "pixpro (n=2)");
        assert_eq!(b.points, [(10.0, 2.0, 1.0, 3.0), (20.0, 1.0, 0.5, 1.5)]);
        assert_eq!(finals, [0.5, 0.0]);
    }
}

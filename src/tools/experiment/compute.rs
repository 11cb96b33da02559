//! Quality against compute: the plan's ablations of `train.steps`, one per
//! method, read as curves. `compute.png` has a panel per protocol, a line
//! per method through its step counts (mean, with a mean ± std band over
//! seeds) against the images pretraining saw, and random init and the
//! plan's variants drawn flat across; results.md gets the differences
//! paired by seed at each step count, against random init, between pixpro
//! and byol and against each variant, so a reader sees where (if anywhere)
//! pretraining pulls away and how fast.
//!
//! A variant is a single configuration, not a curve: in a compute plan it
//! is a control (the BatchNorm-statistics one: weights left at their
//! initialisation), a level the curves must clear to show learning, as
//! random init is.
use std::collections::BTreeMap;
use std::path::Path;

use super::plan::{Group, Plan};
use super::report::{mean_pm, paired};
use super::results::{mean_std, JobResult};
use crate::plots::{plot_band_panels, Band, BandPanel, XAxis};
use crate::transfer::evaluate::Protocol;
use crate::Result;

/// The knob whose ablations make the curves.
pub const STEPS_KEY: &str = "train.steps";

/// A method's job ids by pretraining steps: its `train.steps` ablation's
/// rows and its row of the Methods table (at the plan's steps).
type Curve = BTreeMap<u64, Vec<String>>;

fn method_of(plan: &Plan, group: &Group) -> Option<String> {
    let id = group.rows.iter().flat_map(|r| r.ids.first()).next()?;
    plan.jobs.iter().find(|j| &j.id == id).map(|j| j.method.clone())
}

/// (method, its curve) for every method with a `train.steps` ablation, in
/// plan order.
fn curves(plan: &Plan) -> Vec<(String, Curve)> {
    let methods_table = plan.groups.iter().find(|g| g.title == "Methods");
    let mut out: Vec<(String, Curve)> = Vec::new();
    for group in plan.groups.iter().filter(|g| g.row_name == STEPS_KEY) {
        let Some(method) = method_of(plan, group) else { continue };
        let own = methods_table.and_then(|g| g.rows.iter().find(|r| r.label == method));
        let mut curve = Curve::new();
        for id in group.rows.iter().chain(own).flat_map(|r| &r.ids) {
            let Some(job) = plan.jobs.iter().find(|j| &j.id == id) else { continue };
            let ids = curve.entry(job.config.train.steps).or_default();
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        out.push((method, curve));
    }
    out
}

/// Mean ± std over the finished jobs of `ids` under `protocol`, as
/// (mean, lo, hi); `None` before any has finished.
fn spread(results: &[JobResult], ids: &[String], protocol: Protocol) -> Option<(f64, f64, f64)> {
    let scores: Vec<f64> =
        results.iter().filter(|r| ids.contains(&r.id)).filter_map(|r| r.score(protocol)).collect();
    let (mean, std) = mean_std(&scores);
    let (mean, std) = (mean?, std.unwrap_or(0.0));
    Some((mean, mean - std, mean + std))
}

/// Draws `out/compute.png` and returns the results.md section; empty (and
/// no picture) when the plan varies no `train.steps` or nothing on a curve
/// has finished.
pub(super) fn compute_section(plan: &Plan, results: &[JobResult], out: &Path) -> Result<String> {
    let curves = curves(plan);
    let batch = plan.base.train.batch_size as f64;
    let finished = |ids: &[String]| results.iter().filter(|r| ids.contains(&r.id)).count();
    if curves.iter().all(|(_, c)| c.values().all(|ids| finished(ids) == 0)) {
        return Ok(String::new());
    }
    let random = plan
        .groups
        .iter()
        .find(|g| g.title == "Methods")
        .and_then(|g| g.rows.iter().find(|r| r.label == "random"));
    let controls: Vec<(String, &[String])> = plan
        .groups
        .iter()
        .filter(|g| g.title == "Variants")
        .flat_map(|g| &g.rows)
        .map(|r| {
            let steps =
                plan.jobs.iter().find(|j| r.ids.contains(&j.id)).map(|j| j.config.train.steps);
            let label = match steps {
                Some(s) => format!("{} ({s} steps)", r.label),
                None => r.label.clone(),
            };
            (label, r.ids.as_slice())
        })
        .collect();
    let protocols: Vec<Protocol> =
        std::iter::once(Protocol::Probe).chain(plan.protocols.iter().copied()).collect();
    let all_steps: Vec<u64> = {
        let mut s: Vec<u64> = curves.iter().flat_map(|(_, c)| c.keys().copied()).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    let (x_lo, x_hi) = match (all_steps.first(), all_steps.last()) {
        (Some(&lo), Some(&hi)) => (lo as f64 * batch, hi as f64 * batch),
        _ => return Ok(String::new()),
    };

    let mut panels = Vec::new();
    for &p in &protocols {
        let mut bands: Vec<Band> = curves
            .iter()
            .map(|(method, curve)| {
                let points = curve
                    .iter()
                    .filter_map(|(&steps, ids)| {
                        let (m, lo, hi) = spread(results, ids, p)?;
                        Some((steps as f64 * batch, m, lo, hi))
                    })
                    .collect();
                Band { label: method.clone(), points, measured: true }
            })
            .collect();
        let random_level = random.map(|r| ("random init".to_string(), r.ids.as_slice()));
        for (label, ids) in random_level.iter().chain(&controls) {
            if let Some((m, lo, hi)) = spread(results, ids, p) {
                let points = vec![(x_lo, m, lo, hi), (x_hi, m, lo, hi)];
                bands.push(Band { label: label.clone(), points, measured: false });
            }
        }
        bands.retain(|b| !b.points.is_empty());
        if !bands.is_empty() {
            let title = format!("{} {}, mean ± std over seeds", p.heading(), p.score_name());
            panels.push(BandPanel { title, bands });
        }
    }
    let axis = XAxis { label: "images seen in pretraining (steps x batch)", log: true };
    plot_band_panels(&panels, axis, &out.join("compute.png"))?;

    let mut md = format!(
        "\n## Quality against compute\n\nEvery score against the images pretraining saw \
         (steps x batch {batch}) in compute.png: a line per method, mean ± std over seeds, \
         random init and each variant flat across. Differences paired by seed at each step \
         count (mean ± sample std; n seeds):\n\n| steps | pair | n |{}\n|---:|---|---:|{}\n",
        protocols.iter().map(|p| format!(" {} |", p.heading())).collect::<String>(),
        "---:|".repeat(protocols.len())
    );
    let at = |method: &str, steps: u64| {
        curves.iter().find(|(m, _)| m == method).and_then(|(_, c)| c.get(&steps))
    };
    for &steps in &all_steps {
        let mut pairs: Vec<(String, &[String], &[String])> = Vec::new();
        for (method, curve) in &curves {
            if let (Some(ids), Some(r)) = (curve.get(&steps), random) {
                pairs.push((format!("{method} − random"), ids, &r.ids));
            }
        }
        if let (Some(p), Some(b)) = (at("pixpro", steps), at("byol", steps)) {
            pairs.push(("pixpro − byol".into(), p, b));
        }
        for (method, curve) in &curves {
            let Some(ids) = curve.get(&steps) else { continue };
            for (label, control) in &controls {
                pairs.push((format!("{method} − {label}"), ids, control));
            }
        }
        for (label, a, b) in pairs {
            let n = paired(results, a, b, Protocol::Probe).len();
            if n == 0 {
                continue;
            }
            md.push_str(&format!("| {steps} | {label} | {n} |"));
            for &p in &protocols {
                let (m, sd) = mean_std(&paired(results, a, b, p));
                md.push_str(&format!(" {} |", mean_pm(m, sd, true)));
            }
            md.push('\n');
        }
    }
    Ok(md)
}

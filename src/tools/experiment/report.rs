//! The report, redrawn after every job: results.md (a table per group of
//! the plan, mean ± sample std of mIoU over the seeds finished so far) and
//! results.png (the same as bars).
use std::path::Path;

use super::plan::{Group, Plan};
use super::results::JobResult;
use crate::plots::{plot_bars, Bar, BarPanel};
use crate::train::checkpoint::write_atomically;
use crate::Result;

/// Mean and sample standard deviation (`None` below two values).
pub fn mean_std(xs: &[f64]) -> (Option<f64>, Option<f64>) {
    if xs.is_empty() {
        return (None, None);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let std = (xs.len() > 1)
        .then(|| (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (Some(mean), std)
}

/// A row of a report table, over the seeds finished so far.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSummary {
    pub label: String,
    pub n: usize,
    pub miou_mean: Option<f64>,
    pub miou_std: Option<f64>,
    pub images_per_sec: Option<f64>,
    pub wall_s: Option<f64>,
}

pub fn summarize(group: &Group, results: &[JobResult]) -> Vec<RowSummary> {
    group
        .rows
        .iter()
        .map(|row| {
            let done: Vec<&JobResult> =
                results.iter().filter(|r| row.ids.contains(&r.id)).collect();
            let of = |f: fn(&JobResult) -> Option<f64>| -> Vec<f64> {
                done.iter().filter_map(|r| f(r)).collect()
            };
            let (miou_mean, miou_std) = mean_std(&of(|r| Some(r.miou)));
            RowSummary {
                label: row.label.clone(),
                n: done.len(),
                miou_mean,
                miou_std,
                images_per_sec: mean_std(&of(|r| r.images_per_sec)).0,
                wall_s: mean_std(&of(|r| Some(r.wall_s))).0,
            }
        })
        .collect()
}

pub(super) fn minutes(s: f64) -> String {
    if s >= 3600.0 {
        format!("{}h {:02}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0).round() as u64)
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

/// The report: one table per group (mean ± sample std of mIoU over seeds),
/// headed by what was run where.
pub fn markdown(plan: &Plan, results: &[JobResult]) -> String {
    let done = plan.jobs.iter().filter(|j| results.iter().any(|r| r.id == j.id)).count();
    let mut machines: Vec<String> = results
        .iter()
        .filter(|r| plan.jobs.iter().any(|j| j.id == r.id))
        .map(|r| {
            let h = &r.hardware;
            format!("{} ({} cores, {} threads, {})", h.cpu, h.cores, h.threads, h.device)
        })
        .collect();
    machines.sort();
    machines.dedup();
    let mut commits: Vec<String> = results
        .iter()
        .filter(|r| plan.jobs.iter().any(|j| j.id == r.id))
        .map(|r| format!("{} {}", r.version, r.commit.as_deref().unwrap_or("(no git)")))
        .collect();
    commits.sort();
    commits.dedup();
    let p = &plan.probe;
    let mut md = format!(
        "# Experiment: {}\n\n\
         {done} of {} jobs finished. Pretraining: {} steps per job ({} preset, batch {}, {} px). \
         Probe: {} px, {} epochs, lr {}, batch {}, seeded by the job's seed. \
         mIoU is mean ± sample standard deviation over seeds (n); images/s is pretraining \
         throughput; wall time is pretraining plus probe, per job.\n\n\
         Hardware: {}.\n\nCode: pixpro {}.\n\n\
         Rerun or finish: `pixpro experiment --plan {} --out OUT`.\n",
        plan.path.display(),
        plan.jobs.len(),
        plan.steps,
        plan.preset,
        plan.base.train.batch_size,
        plan.base.augment.image_size,
        p.image_size,
        p.epochs,
        p.lr,
        p.batch_size,
        if machines.is_empty() { "-".to_string() } else { machines.join("; ") },
        if commits.is_empty() { "-".to_string() } else { commits.join("; ") },
        plan.path.display(),
    );
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
    for group in &plan.groups {
        md.push_str(&format!(
            "\n## {}\n\n| {} | n | probe mIoU | images/s | wall time |\n|---|---:|---:|---:|---:|\n",
            group.title, group.row_name
        ));
        for s in summarize(group, results) {
            let miou = match (s.miou_mean, s.miou_std) {
                (Some(m), Some(sd)) => format!("{m:.4} ± {sd:.4}"),
                (Some(m), None) => format!("{m:.4}"),
                _ => "-".into(),
            };
            md.push_str(&format!(
                "| {} | {} | {miou} | {} | {} |\n",
                s.label,
                s.n,
                opt(s.images_per_sec, &|v| format!("{v:.1}")),
                opt(s.wall_s, &|v| minutes(v)),
            ));
        }
    }
    md
}

/// The bar chart of the report: a panel per group, mean mIoU ± std per row.
fn chart(plan: &Plan, results: &[JobResult], out_png: &Path) -> Result<()> {
    let panels: Vec<BarPanel> = plan
        .groups
        .iter()
        .map(|g| BarPanel {
            title: format!("{}: probe mIoU, mean ± std over seeds", g.title),
            bars: summarize(g, results)
                .into_iter()
                .filter_map(|s| {
                    Some(Bar {
                        label: format!("{} (n={})", s.label, s.n),
                        mean: s.miou_mean?,
                        std: s.miou_std,
                    })
                })
                .collect(),
        })
        .filter(|p| !p.bars.is_empty())
        .collect();
    if panels.is_empty() {
        return Ok(());
    }
    plot_bars(&panels, out_png)
}

/// Writes results.md and results.png into `out`.
pub(super) fn write_report(plan: &Plan, results: &[JobResult], out: &Path) -> Result<()> {
    let md = out.join("results.md");
    write_atomically(&md, markdown(plan, results).as_bytes())?;
    chart(plan, results, &out.join("results.png"))
}

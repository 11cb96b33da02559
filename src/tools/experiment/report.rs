//! The report, redrawn after every job: results.md (a table per group of
//! the plan, mean ± sample std over the seeds finished so far of every
//! protocol's score, one column each; differences paired by seed against
//! random init and between pixpro and byol) and results.png (the same as
//! bars, a panel per group and protocol).
use std::path::Path;

use super::compute::compute_section;
use super::losses::loss_section;
use super::plan::{Group, Plan, Row};
use super::results::{mean_std, JobResult};
use super::selection::selection_section;
use crate::files::write_atomically;
use crate::plots::{plot_bars, Bar, BarPanel};
use crate::transfer::evaluate::Protocol;
use crate::Result;

/// A row of a report table, over the seeds finished so far.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSummary {
    pub label: String,
    pub n: usize,
    pub miou_mean: Option<f64>,
    pub miou_std: Option<f64>,
    /// Mean and std of each of the plan's other protocols, in plan order.
    pub scores: Vec<(Option<f64>, Option<f64>)>,
    pub images_per_sec: Option<f64>,
    pub wall_s: Option<f64>,
}

pub fn summarize(plan: &Plan, group: &Group, results: &[JobResult]) -> Vec<RowSummary> {
    group
        .rows
        .iter()
        .map(|row| {
            let done: Vec<&JobResult> =
                results.iter().filter(|r| row.ids.contains(&r.id)).collect();
            let of = |f: &dyn Fn(&JobResult) -> Option<f64>| -> Vec<f64> {
                done.iter().filter_map(|r| f(r)).collect()
            };
            let (miou_mean, miou_std) = mean_std(&of(&|r| Some(r.miou)));
            RowSummary {
                label: row.label.clone(),
                n: done.len(),
                miou_mean,
                miou_std,
                scores: plan.protocols.iter().map(|&p| mean_std(&of(&|r| r.score(p)))).collect(),
                images_per_sec: mean_std(&of(&|r| r.images_per_sec)).0,
                wall_s: mean_std(&of(&|r| Some(r.wall_s))).0,
            }
        })
        .collect()
}

/// `a - b` per seed where both rows have the seed, under `protocol`.
pub(super) fn paired(
    results: &[JobResult],
    a: &[String],
    b: &[String],
    protocol: Protocol,
) -> Vec<f64> {
    let by_id = |id: &String| results.iter().find(|r| &r.id == id);
    a.iter()
        .filter_map(|ia| {
            let ra = by_id(ia)?;
            let rb = b.iter().filter_map(by_id).find(|r| r.seed == ra.seed)?;
            Some(ra.score(protocol)? - rb.score(protocol)?)
        })
        .collect()
}

pub(super) fn mean_pm(m: Option<f64>, sd: Option<f64>, sign: bool) -> String {
    match (m, sd) {
        (Some(m), Some(sd)) if sign => format!("{m:+.4} ± {sd:.4}"),
        (Some(m), Some(sd)) => format!("{m:.4} ± {sd:.4}"),
        (Some(m), None) if sign => format!("{m:+.4}"),
        (Some(m), None) => format!("{m:.4}"),
        _ => "-".into(),
    }
}

/// The paired differences of a group: in the Methods group each method
/// against random init, pixpro against byol and against each `[[weights]]`
/// row; in the Variants group each variant against random init and against
/// its method's row of the Methods group; per protocol (mean ± std over
/// seeds).
fn differences(plan: &Plan, group: &Group, results: &[JobResult]) -> String {
    let methods = plan.groups.iter().find(|g| g.title == "Methods");
    let row = |label: &str| methods.and_then(|g| g.rows.iter().find(|r| r.label == label));
    let mut pairs: Vec<(String, &[String], &[String])> = Vec::new();
    if group.row_name == "variant" {
        for r in &group.rows {
            if let Some(random) = row("random") {
                pairs.push((format!("{} − random", r.label), &r.ids, &random.ids));
            }
            let method = r.label.split(' ').next().unwrap_or_default();
            if let Some(m) = row(method) {
                pairs.push((format!("{} − {method}", r.label), &r.ids, &m.ids));
            }
        }
    }
    if group.row_name == "method" {
        if let Some(random) = row("random") {
            for r in group.rows.iter().filter(|r| r.label != "random") {
                pairs.push((format!("{} − random", r.label), &r.ids, &random.ids));
            }
        }
        if let (Some(p), Some(b)) = (row("pixpro"), row("byol")) {
            pairs.push(("pixpro − byol".into(), &p.ids, &b.ids));
        }
        // Weights trained elsewhere (the reference, say) against pixpro's own.
        let measured = |r: &&Row| {
            r.ids
                .first()
                .is_some_and(|id| plan.jobs.iter().any(|j| &j.id == id && j.weights.is_some()))
        };
        if let Some(p) = row("pixpro") {
            for r in group.rows.iter().filter(measured) {
                pairs.push((format!("pixpro − {}", r.label), &p.ids, &r.ids));
            }
        }
    }
    if pairs.is_empty() {
        return String::new();
    }
    let protocols: Vec<Protocol> =
        std::iter::once(Protocol::Probe).chain(plan.protocols.iter().copied()).collect();
    let mut md = format!(
        "\nPaired by seed (mean ± sample std of the per-seed difference; n seeds):\n\n| pair | n |{}\n|---|---:|{}\n",
        protocols.iter().map(|p| format!(" {} |", p.heading())).collect::<String>(),
        "---:|".repeat(protocols.len())
    );
    for (label, a, b) in pairs {
        let n = paired(results, a, b, Protocol::Probe).len();
        md.push_str(&format!("| {label} | {n} |"));
        for &p in &protocols {
            let (m, sd) = mean_std(&paired(results, a, b, p));
            md.push_str(&format!(" {} |", mean_pm(m, sd, true)));
        }
        md.push('\n');
    }
    md
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
    // What the plan's rows ran on, each distinct value once, sorted; "-" for none.
    let distinct = |of: &dyn Fn(&JobResult) -> Option<String>, sep: &str| {
        let mut values: Vec<String> = results
            .iter()
            .filter(|r| plan.jobs.iter().any(|j| j.id == r.id))
            .filter_map(of)
            .collect();
        values.sort();
        values.dedup();
        if values.is_empty() {
            "-".to_string()
        } else {
            values.join(sep)
        }
    };
    let machines = distinct(
        &|r| {
            let h = &r.hardware;
            Some(format!("{} ({} cores, {} threads, {})", h.cpu, h.cores, h.threads, h.device))
        },
        "; ",
    );
    let commits = distinct(
        &|r| Some(format!("{} {}", r.version, r.commit.as_deref().unwrap_or("(no git)"))),
        "; ",
    );
    let precisions = distinct(&|r| r.precision.clone(), ", ");
    let p = &plan.probe;
    let mut md = format!(
        "# Experiment: {}\n\n\
         {done} of {} jobs finished. Pretraining: {} steps per job ({} preset, batch {}, {} px) \
         where a table does not vary them. \
         Probe: {} px, {} epochs, lr {}, batch {}, seeded by the job's seed. \
         mIoU is mean ± sample standard deviation over seeds (n); images/s is pretraining \
         throughput; wall time is pretraining (over every session) plus every evaluation, per job, \
         the evaluations alone for `[[weights]]` trained elsewhere.\n\n\
         Hardware: {}. Pretraining precision: {}.\n\nCode: pixpro {}.\n\n\
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
        machines,
        precisions,
        commits,
        plan.path.display(),
    );
    if !plan.protocols.is_empty() {
        let r = &plan.recipes;
        md.push_str(&format!(
            "\nOther protocols, seeded by the job's seed: {}. Recipes: retrieval {}; \
             correspondence {}; finetune {}.\n",
            plan.protocols
                .iter()
                .map(|p| format!("{} ({})", p.heading(), p.score_name()))
                .collect::<Vec<_>>()
                .join(", "),
            serde_json::to_string(&r.retrieval).unwrap_or_default(),
            serde_json::to_string(&r.correspondence).unwrap_or_default(),
            serde_json::to_string(&r.finetune).unwrap_or_default(),
        ));
    }
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
    let extra_heads: String =
        plan.protocols.iter().map(|p| format!(" {} |", p.heading())).collect();
    let extra_rule = "---:|".repeat(plan.protocols.len());
    for group in &plan.groups {
        md.push_str(&format!(
            "\n## {}\n\n| {} | n | probe mIoU |{extra_heads} images/s | wall time |\n|---|---:|---:|{extra_rule}---:|---:|\n",
            group.title, group.row_name
        ));
        for s in summarize(plan, group, results) {
            let extra: String =
                s.scores.iter().map(|&(m, sd)| format!(" {} |", mean_pm(m, sd, false))).collect();
            md.push_str(&format!(
                "| {} | {} | {} |{extra} {} | {} |\n",
                s.label,
                s.n,
                mean_pm(s.miou_mean, s.miou_std, false),
                opt(s.images_per_sec, &|v| format!("{v:.1}")),
                opt(s.wall_s, &|v| minutes(v)),
            ));
        }
        md.push_str(&differences(plan, group, results));
    }
    md + &selection_section(plan, results)
}

/// The bar chart of the report: a panel per group and protocol, mean ± std
/// per row.
fn chart(plan: &Plan, results: &[JobResult], out_png: &Path) -> Result<()> {
    let mut panels: Vec<BarPanel> = Vec::new();
    for g in &plan.groups {
        let rows = summarize(plan, g, results);
        let columns = std::iter::once((Protocol::Probe, None))
            .chain(plan.protocols.iter().enumerate().map(|(i, &p)| (p, Some(i))));
        for (protocol, column) in columns {
            let bars = rows
                .iter()
                .filter_map(|s| {
                    let (mean, std) = match column {
                        None => (s.miou_mean, s.miou_std),
                        Some(i) => s.scores[i],
                    };
                    Some(Bar { label: format!("{} (n={})", s.label, s.n), mean: mean?, std })
                })
                .collect::<Vec<_>>();
            if !bars.is_empty() {
                panels.push(BarPanel {
                    title: format!(
                        "{}: {} {}, mean ± std over seeds",
                        g.title,
                        protocol.heading(),
                        protocol.score_name()
                    ),
                    bars,
                });
            }
        }
    }
    if panels.is_empty() {
        return Ok(());
    }
    plot_bars(&panels, out_png)
}

/// Writes results.md, results.png, loss.png and compute.png into `out`.
pub fn write_report(plan: &Plan, results: &[JobResult], out: &Path) -> Result<()> {
    let md = out.join("results.md");
    let text = markdown(plan, results)
        + &loss_section(plan, results, out)?
        + &compute_section(plan, results, out)?;
    write_atomically(&md, text.as_bytes())?;
    chart(plan, results, &out.join("results.png"))
}

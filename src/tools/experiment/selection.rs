//! The plan's `[selection]` applied to the results so far: which recipe the
//! rule written before any job ran picks, and how every candidate placed.
//!
//! The candidates are the rows of the selection's method in every table
//! (the Methods row, its variants, its ablations' values), each once. Each
//! is ranked on every protocol of the selection by its mean over the seeds
//! finished so far, 1 the best, equal means sharing the mean of their
//! places; the chosen row has the lowest mean rank over the protocols, ties
//! going to the better mean on the first. A row is ranked once every one of
//! those protocols has a score for it; the others are listed, unranked.
use super::plan::{Plan, Row, Selection};
use super::report::mean_pm;
use super::results::{mean_std, JobResult};
use crate::transfer::evaluate::Protocol;

/// A candidate with a mean on every protocol of the selection.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub label: String,
    /// Seeds finished.
    pub n: usize,
    /// Per protocol of the selection, in its order.
    pub means: Vec<f64>,
    pub stds: Vec<Option<f64>>,
    pub ranks: Vec<f64>,
    pub mean_rank: f64,
}

/// A row's name as the candidate list shows it: a Methods or Variants row
/// by its label, an ablation's value with its key.
fn candidate_label(row_name: &str, row: &Row) -> String {
    match row_name {
        "method" | "variant" => row.label.clone(),
        key => format!("{key} = {}", row.label),
    }
}

/// The candidates in rank order (chosen first), then the labels of those
/// not yet measured on every protocol of the selection.
pub fn rank(
    plan: &Plan,
    selection: &Selection,
    results: &[JobResult],
) -> (Vec<Ranked>, Vec<String>) {
    let of_method = |row: &Row| {
        row.ids.first().is_some_and(|id| {
            plan.jobs
                .iter()
                .any(|j| &j.id == id && j.method == selection.method && j.weights.is_none())
        })
    };
    let mut seen: Vec<&String> = Vec::new();
    let mut ranked = Vec::new();
    let mut waiting = Vec::new();
    for group in &plan.groups {
        for row in group.rows.iter().filter(|r| of_method(r)) {
            // An ablation's default value is the Methods row's jobs again,
            // perhaps at fewer seeds.
            if row.ids.iter().all(|id| seen.contains(&id)) {
                continue;
            }
            seen.extend(&row.ids);
            let label = candidate_label(&group.row_name, row);
            let done: Vec<&JobResult> =
                results.iter().filter(|r| row.ids.contains(&r.id)).collect();
            let scores: Vec<(Option<f64>, Option<f64>)> = selection
                .protocols
                .iter()
                .map(|&p| mean_std(&done.iter().filter_map(|r| r.score(p)).collect::<Vec<_>>()))
                .collect();
            match scores.iter().map(|s| s.0).collect::<Option<Vec<f64>>>() {
                Some(means) => ranked.push(Ranked {
                    label,
                    n: done.len(),
                    means,
                    stds: scores.iter().map(|s| s.1).collect(),
                    ranks: Vec::new(),
                    mean_rank: 0.0,
                }),
                None => waiting.push(label),
            }
        }
    }
    for i in 0..selection.protocols.len() {
        let column: Vec<f64> = ranked.iter().map(|r| r.means[i]).collect();
        for r in ranked.iter_mut() {
            let better = column.iter().filter(|&&m| m > r.means[i]).count() as f64;
            let equal = column.iter().filter(|&&m| m == r.means[i]).count() as f64;
            r.ranks.push(better + (equal + 1.0) / 2.0);
        }
    }
    for r in ranked.iter_mut() {
        r.mean_rank = r.ranks.iter().sum::<f64>() / r.ranks.len().max(1) as f64;
    }
    ranked.sort_by(|a, b| {
        a.mean_rank.total_cmp(&b.mean_rank).then_with(|| b.means[0].total_cmp(&a.means[0]))
    });
    (ranked, waiting)
}

/// The report's Selection section; empty for a plan without `[selection]`.
pub(super) fn selection_section(plan: &Plan, results: &[JobResult]) -> String {
    let Some(selection) = &plan.selection else {
        return String::new();
    };
    let (ranked, waiting) = rank(plan, selection, results);
    let names: Vec<String> = selection.protocols.iter().map(Protocol::to_string).collect();
    let chosen = ranked.first().map_or("none yet".to_string(), |r| {
        format!("**{}** (mean rank {:.2})", r.label, r.mean_rank)
    });
    let mut md = format!(
        "\n## Selection\n\n\
         The plan's rule: every {} row ranked on {} by its mean over the seeds finished so \
         far (1 = best; equal means share their places), the chosen one of lowest mean rank, \
         ties going to the better {}. Rows with fewer seeds are ranked on what they have. \
         {} of {} candidates ranked; chosen so far: {chosen}.\n\n\
         | place | row | n |{} mean rank |\n|---:|---|---:|{}---:|\n",
        selection.method,
        names.join(", "),
        names[0],
        ranked.len(),
        ranked.len() + waiting.len(),
        selection
            .protocols
            .iter()
            .map(|p| format!(" {} (rank) |", p.heading()))
            .collect::<String>(),
        "---:|".repeat(selection.protocols.len()),
    );
    for (place, r) in ranked.iter().enumerate() {
        let cells: String = (0..r.means.len())
            .map(|i| format!(" {} ({}) |", mean_pm(Some(r.means[i]), r.stds[i], false), r.ranks[i]))
            .collect();
        md.push_str(&format!(
            "| {} | {} | {} |{cells} {:.2} |\n",
            place + 1,
            r.label,
            r.n,
            r.mean_rank
        ));
    }
    for label in waiting {
        md.push_str(&format!(
            "| - | {label} | - |{} - |\n",
            " - |".repeat(selection.protocols.len())
        ));
    }
    md
}

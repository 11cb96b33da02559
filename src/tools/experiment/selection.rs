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
//! Below the ranking, the rows whose place one seed cannot settle: within
//! a seed spread of the chosen row, at fewer seeds than the best-measured.
use super::plan::{Plan, Row, Selection};
use super::report::mean_pm;
use super::results::{mean_std, JobResult};
use crate::transfer::evaluate::Protocol;

/// A candidate with a mean on every protocol of the selection.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub label: String,
    /// Seeds behind the mean of the protocol measured on fewest.
    pub n: usize,
    /// Per protocol of the selection, in its order: mean over seeds, sample
    /// std (none for one seed), and rank among the candidates.
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

/// The recipes among the plan's rows, each once with all of its jobs: an
/// ablation's default value is the Methods row's recipe again, at fewer
/// seeds or more, so rows that share a job are one candidate, named by the
/// first.
fn candidates(plan: &Plan, selection: &Selection) -> Vec<(String, Vec<String>)> {
    let of_method = |row: &Row| {
        row.ids.first().is_some_and(|id| {
            plan.jobs
                .iter()
                .any(|j| &j.id == id && j.method == selection.method && j.weights.is_none())
        })
    };
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for group in &plan.groups {
        for row in group.rows.iter().filter(|r| of_method(r)) {
            match out.iter_mut().find(|(_, ids)| row.ids.iter().any(|id| ids.contains(id))) {
                Some((_, ids)) => {
                    for id in &row.ids {
                        if !ids.contains(id) {
                            ids.push(id.clone());
                        }
                    }
                }
                None => out.push((candidate_label(&group.row_name, row), row.ids.clone())),
            }
        }
    }
    out
}

/// The candidates in rank order (chosen first; equal on mean rank and on
/// the first protocol, in plan order), then the labels of those not yet
/// measured on every protocol of the selection.
pub fn rank(
    plan: &Plan,
    selection: &Selection,
    results: &[JobResult],
) -> (Vec<Ranked>, Vec<String>) {
    let mut ranked = Vec::new();
    let mut waiting = Vec::new();
    for (label, ids) in candidates(plan, selection) {
        let done: Vec<&JobResult> = results.iter().filter(|r| ids.contains(&r.id)).collect();
        let per_protocol: Vec<Vec<f64>> = selection
            .protocols
            .iter()
            .map(|&p| done.iter().filter_map(|r| r.score(p)).collect())
            .collect();
        if per_protocol.iter().any(Vec::is_empty) {
            waiting.push(label);
            continue;
        }
        let stats: Vec<(Option<f64>, Option<f64>)> =
            per_protocol.iter().map(|xs| mean_std(xs)).collect();
        ranked.push(Ranked {
            label,
            n: per_protocol.iter().map(Vec::len).min().unwrap_or(0),
            means: stats.iter().map(|s| s.0.expect("a score was measured")).collect(),
            stds: stats.iter().map(|s| s.1).collect(),
            ranks: Vec::new(),
            mean_rank: 0.0,
        });
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
        r.mean_rank = r.ranks.iter().sum::<f64>() / r.ranks.len() as f64;
    }
    ranked.sort_by(|a, b| {
        a.mean_rank.total_cmp(&b.mean_rank).then_with(|| b.means[0].total_cmp(&a.means[0]))
    });
    (ranked, waiting)
}

/// The rows a second stage should give more seeds: those at fewer seeds than
/// the most-seeded row that are within one of its seed spreads (sample std)
/// of the chosen row on every protocol, the chosen row included when it has
/// fewer. Their lead or lag is inside seed noise, so one seed cannot settle
/// the choice; for rows further behind on some protocol it can. Returns the
/// most-seeded row (the spread's source) and the contenders in rank order;
/// none while no row has two seeds on every protocol.
pub fn contenders(ranked: &[Ranked]) -> Option<(&Ranked, Vec<&Ranked>)> {
    let chosen = ranked.first()?;
    let widest =
        ranked.iter().filter(|r| r.n >= 2).fold(None, |best: Option<&Ranked>, r| match best {
            Some(b) if b.n >= r.n => Some(b),
            _ => Some(r),
        })?;
    let spreads: Vec<f64> = widest.stds.iter().map(|s| s.unwrap_or(0.0)).collect();
    let near = ranked
        .iter()
        .filter(|r| r.n < widest.n)
        .filter(|r| (0..r.means.len()).all(|i| r.means[i] >= chosen.means[i] - spreads[i]))
        .collect();
    Some((widest, near))
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
         ties going to the better {}. Rows with fewer seeds are ranked on what they have; n is \
         the seeds behind the protocol measured on fewest. \
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
    if let Some((widest, near)) = contenders(&ranked) {
        let spreads: Vec<String> = names
            .iter()
            .zip(&widest.stds)
            .map(|(name, s)| format!("{name} {:.4}", s.unwrap_or(0.0)))
            .collect();
        let spreads = spreads.join(", ");
        let (label, n) = (&widest.label, widest.n);
        md.push_str(&if near.is_empty() {
            format!(
                "\nNo row at fewer seeds than {label} (n {n}) is within one of its seed spreads \
                 ({spreads}) of the chosen row on every protocol.\n"
            )
        } else {
            let list: Vec<String> =
                near.iter().map(|r| format!("**{}** (n {})", r.label, r.n)).collect();
            format!(
                "\nRows one seed cannot settle, at fewer seeds than {label} (n {n}) and within \
                 one of its seed spreads ({spreads}) of the chosen row on every protocol: {}. \
                 More seeds of these say whether the choice stands.\n",
                list.join(", ")
            )
        });
    }
    md
}

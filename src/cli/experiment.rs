//! `pixpro experiment`: a plan's grid of pretrain + probe jobs, continued
//! from its results list, or listed with `--dry-run`.
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use pixpro::tools::experiment::{self as exp, Plan, RunnerOptions};

use super::args::Quiet;
use super::pretrain::outcome;

#[derive(Args)]
pub(super) struct ExperimentArgs {
    /// The grid: data, preset, steps, seeds, methods, [probe], [[ablation]], [overrides].
    #[arg(long)]
    plan: PathBuf,
    /// Jobs' run folders (jobs/ID), results.md and results.png.
    #[arg(long)]
    out: PathBuf,
    /// The results list to continue and add to [default: OUT/results.json].
    #[arg(long)]
    results: Option<PathBuf>,
    /// Stop after running this many jobs.
    #[arg(long)]
    max_jobs: Option<usize>,
    /// Run only these jobs (ids as `--dry-run` lists them, comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// List the jobs and which are finished; run nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    progress: Quiet,
}

pub(super) fn run(args: &ExperimentArgs) -> Result<()> {
    let plan = Plan::load(&args.plan)?;
    let results_path = args.results.clone().unwrap_or_else(|| args.out.join("results.json"));
    if args.dry_run {
        return list_jobs(&plan, &args.out, &results_path);
    }
    let quiet = args.progress.quiet;
    let report = exp::run(
        &plan,
        &RunnerOptions {
            out: args.out.clone(),
            results: results_path.clone(),
            max_jobs: args.max_jobs,
            only: args.only.clone(),
            quiet,
        },
    )?;
    if !quiet {
        let how = outcome(&report.stopped_by);
        eprintln!(
            "{how}: ran {} jobs, {} were done before, {} left; {} and {}",
            report.ran,
            report.skipped,
            report.remaining,
            results_path.display(),
            args.out.join("results.md").display()
        );
    }
    Ok(())
}

/// `--dry-run`: each job with its state (done, started or to run), then the
/// count finished.
fn list_jobs(plan: &Plan, out: &Path, results_path: &Path) -> Result<()> {
    let results = exp::read_results(results_path)?;
    for (i, job) in plan.jobs.iter().enumerate() {
        let status = match results.iter().find(|r| r.id == job.id) {
            Some(r) => {
                let missing = exp::missing_protocols(plan, r);
                let mut s = format!("done, mIoU {:.4}", r.miou);
                if !missing.is_empty() {
                    let names: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
                    s.push_str(&format!("; to evaluate: {}", names.join(", ")));
                }
                s
            }
            None if out.join("jobs").join(&job.id).exists() => "started".to_string(),
            None => "to run".to_string(),
        };
        println!("{:>3}  {:<32} {status}", i + 1, job.id);
    }
    let done = exp::finished_ids(plan, &results).len();
    println!("{done} of {} jobs finished (in {})", plan.jobs.len(), results_path.display());
    Ok(())
}

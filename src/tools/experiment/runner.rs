//! The grid's loop: the jobs not yet recorded, in plan order, each recorded
//! and the report redrawn as it finishes, with progress lines and an ETA;
//! then the recorded jobs that lack one of the plan's protocols, measured
//! on their kept checkpoints. It stops at `--max-jobs`, at a signal, or
//! when pretraining is stopped.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::job::{evaluate_missing, run_job, Outcome};
use super::plan::{Job, Plan};
use super::report::{minutes, write_report};
use super::results::{
    check_recorded, finished_ids, missing_protocols, read_results, record, JobResult,
};
use crate::train::DirLock;
use crate::{Error, Result};

/// How a run of the grid goes.
pub struct RunnerOptions {
    /// Jobs' folders, results.md and results.png go here.
    pub out: PathBuf,
    /// The results list read at start and rewritten after every job.
    pub results: PathBuf,
    /// Stop after running this many jobs (finished ones skipped do not count).
    pub max_jobs: Option<usize>,
    /// Run (and evaluate) only these jobs by id; empty for all. A grid split
    /// over sessions or machines, or one whose `[[weights]]` are not all
    /// made yet, runs the part it can.
    pub only: Vec<String>,
    /// No progress lines and no pretraining progress.
    pub quiet: bool,
}

/// What one call of [`run`] did.
#[derive(Debug)]
pub struct RunReport {
    pub ran: usize,
    pub skipped: usize,
    pub remaining: usize,
    /// Why it stopped before the end, if it did.
    pub stopped_by: Option<String>,
}

/// Seconds spent and jobs run in this session, apart for measure-only
/// (`random`, `[[weights]]`) and pretraining jobs: the first take a minute, the second
/// many, so one mean over both would mislead the ETA.
#[derive(Default)]
struct Clock {
    spent: [f64; 2],
    ran: [usize; 2],
}

fn kind(job: &Job) -> usize {
    usize::from(job.method != "random" && job.weights.is_none())
}

impl Clock {
    fn add(&mut self, job: &Job, seconds: f64) {
        self.spent[kind(job)] += seconds;
        self.ran[kind(job)] += 1;
    }

    /// Time left for `left` at the mean time of the jobs of their kind.
    fn eta(&self, left: &[&Job]) -> String {
        let mut total = 0.0;
        for job in left {
            let k = kind(job);
            if self.ran[k] == 0 {
                let first = if k == 0 { "probe-only" } else { "pretraining" };
                return format!("ETA after the first {first} job");
            }
            total += self.spent[k] / self.ran[k] as f64;
        }
        format!("ETA {}", minutes(total))
    }
}

/// Runs the plan's jobs that `opts.results` does not hold yet, in order,
/// recording each as it finishes. A SIGINT or SIGTERM stops after the
/// current job (pretraining stops at the next step, with a checkpoint), and
/// says so at once; a second one exits at once.
pub fn run(plan: &Plan, opts: &RunnerOptions) -> Result<RunReport> {
    // Before the results are read: a second runner would record jobs twice.
    let _owner = DirLock::acquire(&opts.out)?;
    let mut results = read_results(&opts.results)?;
    check_recorded(plan, &results, &opts.results)?;
    if plan.base.train.threads > 0 {
        tch::set_num_threads(plan.base.train.threads as i32);
    }
    if let Some(id) = opts.only.iter().find(|id| !plan.jobs.iter().any(|j| &j.id == *id)) {
        return Err(Error::data(
            &plan.path,
            format!("the plan has no job {id} (`--only`); `--dry-run` lists its jobs"),
        ));
    }
    let interrupted = crate::train::interrupt_flag()?;
    if !opts.quiet {
        announce_stopping(interrupted.clone());
    }
    let done_before = finished_ids(plan, &results);
    let unfinished = plan.jobs.iter().filter(|j| !done_before.contains(&j.id)).count();
    let todo: Vec<&Job> =
        plan.jobs.iter().filter(|j| !done_before.contains(&j.id) && chosen(opts, j)).collect();
    let total = plan.jobs.len();
    let say = |line: String| {
        if !opts.quiet {
            eprintln!("{line}");
        }
    };
    say(format!(
        "experiment {}: {total} jobs, {} finished before, {} to run; results in {}",
        plan.path.display(),
        done_before.len(),
        todo.len(),
        opts.results.display()
    ));
    write_report(plan, &results, &opts.out)?;
    let mut report =
        RunReport { ran: 0, skipped: done_before.len(), remaining: unfinished, stopped_by: None };
    let mut clock = Clock::default();
    for (k, job) in todo.iter().enumerate() {
        if let Some(why) = stop_reason(opts, report.ran, &interrupted) {
            report.stopped_by = Some(why);
            break;
        }
        let position = done_before.len() + k + 1;
        say(format!("[{position}/{total}] start {} ({})", job.id, clock.eta(&todo[k..])));
        let started = Instant::now();
        let outcome = run_job(plan, job, &opts.out, opts.quiet)?;
        clock.add(job, started.elapsed().as_secs_f64());
        report.ran += 1;
        match outcome {
            Outcome::Stopped(why) => {
                report.stopped_by = Some(format!("{}: {why}", job.id));
                break;
            }
            Outcome::Done(r) => {
                say(format!(
                    "[{position}/{total}] done {}: mIoU {:.4}, {}, {} left ({})",
                    job.id,
                    r.miou,
                    minutes(r.wall_s),
                    todo.len() - k - 1,
                    clock.eta(&todo[k + 1..])
                ));
                results = record(&opts.results, &r)?;
                write_report(plan, &results, &opts.out)?;
                report.remaining -= 1;
            }
        }
    }
    if report.stopped_by.is_none() {
        evaluate_recorded(plan, opts, &mut results, &mut report, &interrupted)?;
    }
    Ok(report)
}

/// Says, as soon as the first signal comes, what it does: pretraining
/// stops at its next step, but an evaluation under way (minutes, with
/// fine-tuning) is finished and recorded first, and a runner that said
/// nothing meanwhile looked hung. Once a process: the flag is the
/// process's, and so is the thread that watches it.
fn announce_stopping(interrupted: Arc<AtomicBool>) {
    static WATCHING: OnceLock<()> = OnceLock::new();
    WATCHING.get_or_init(|| {
        std::thread::spawn(move || {
            while !interrupted.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!(
                "stopping: a pretraining stops at its next step with a checkpoint, an \
                 evaluation under way is finished and recorded first; signal again to exit at \
                 once (that evaluation is then lost, the checkpoint is not)"
            );
        });
    });
}

fn chosen(opts: &RunnerOptions, job: &Job) -> bool {
    opts.only.is_empty() || opts.only.contains(&job.id)
}

/// Why the loop stops before the next job, if it does: `--max-jobs`
/// reached, or a signal.
fn stop_reason(opts: &RunnerOptions, ran: usize, interrupted: &AtomicBool) -> Option<String> {
    if opts.max_jobs.is_some_and(|m| ran >= m) {
        return Some(format!("--max-jobs {ran}"));
    }
    interrupted.load(Ordering::Relaxed).then(|| "interrupted by a signal".into())
}

/// The recorded jobs that lack a protocol of the plan, measured on their
/// kept checkpoints, in plan order; each recorded as it finishes.
fn evaluate_recorded(
    plan: &Plan,
    opts: &RunnerOptions,
    results: &mut [JobResult],
    report: &mut RunReport,
    interrupted: &AtomicBool,
) -> Result<()> {
    let todo: Vec<(usize, &Job)> = plan
        .jobs
        .iter()
        .filter(|j| chosen(opts, j))
        .filter_map(|j| {
            let i = results.iter().position(|r| r.id == j.id)?;
            (!missing_protocols(plan, &results[i]).is_empty()).then_some((i, j))
        })
        .collect();
    for (k, (i, job)) in todo.iter().enumerate() {
        if let Some(why) = stop_reason(opts, report.ran, interrupted) {
            report.stopped_by = Some(why);
            break;
        }
        let missing = missing_protocols(plan, &results[*i]);
        let names: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
        if !opts.quiet {
            eprintln!(
                "[evaluate {}/{}] {}: {} on its kept backbone",
                k + 1,
                todo.len(),
                job.id,
                names.join(", ")
            );
        }
        evaluate_missing(plan, job, &mut results[*i], &opts.out, opts.quiet)?;
        report.ran += 1;
        let rows = record(&opts.results, &results[*i])?;
        write_report(plan, &rows, &opts.out)?;
    }
    Ok(())
}

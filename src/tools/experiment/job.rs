//! One job: pretraining (none for `random` and `[[weights]]`) into the job's folder, then the
//! probe of its backbone and the plan's other protocols, measured and
//! stamped with where and from which code it ran; and the protocols a
//! finished job lacks, run on its kept checkpoint. The job's folder is a
//! TensorBoard run: its scores are written there beside the pretraining's
//! scalars.
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::losses;
use super::plan::{Job, Plan};
use super::results::{missing_protocols, recorded_config, Hardware, JobResult};
use crate::train::config::Config;
use crate::train::{self, events, RunDir, RunOptions};
use crate::transfer::backbone::Weights;
use crate::transfer::evaluate::{Evaluation, Evaluator, Protocol};
use crate::transfer::probe::{probe_into, ProbeConfig, ProbeResult};
use crate::{Error, Result};

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The commit of the checkout this binary was built from, `-dirty` with
/// local changes: asking git in the working directory instead recorded
/// whatever repository the runner was started in, or none outside one.
/// `None` when the source folder is gone or is not a git checkout.
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

/// Pretraining over the whole run, resumed sessions included, as
/// metrics.jsonl logged it.
struct Pretrained {
    /// Time spent in steps (loading, forward, backward, update).
    seconds: f64,
    /// All images over `seconds`.
    images_per_sec: f64,
    /// The windows' steal shares weighed by their seconds, over those that
    /// logged one.
    cpu_steal_fraction: Option<f64>,
    /// From the run's summary: metrics.jsonl does not log it.
    precision: String,
}

/// Each metrics line closes a window of steps since the line before; its
/// images (those steps times `batch_size`: the runner trains in one
/// process) over its `images_per_sec` are its step time. A session's own
/// summary covers only that session, so a job resumed after its pretraining
/// (or during it) would otherwise report the last session's time as the
/// whole. Left out: start-up and the saves between steps, and steps
/// computed again after a resume from an earlier checkpoint.
fn pretrained(metrics: &Path, batch_size: usize, precision: String) -> Result<Pretrained> {
    #[derive(Deserialize)]
    struct Line {
        step: u64,
        images_per_sec: f64,
        #[serde(default)]
        cpu_steal_fraction: Option<f64>,
    }
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let lines = text
        .lines()
        .map(serde_json::from_str::<Line>)
        .collect::<std::result::Result<Vec<Line>, _>>()
        .map_err(|e| Error::data(metrics, e.to_string()))?;
    if lines.is_empty() || lines.iter().any(|l| l.images_per_sec <= 0.0) {
        return Err(Error::data(metrics, "no positive images_per_sec lines"));
    }
    let (mut previous, mut images, mut seconds) = (0, 0.0, 0.0);
    let (mut stolen, mut steal_seconds) = (0.0, 0.0);
    for l in &lines {
        let window = l.step.saturating_sub(previous) as f64 * batch_size as f64;
        let s = window / l.images_per_sec;
        images += window;
        seconds += s;
        if let Some(f) = l.cpu_steal_fraction {
            stolen += f * s;
            steal_seconds += s;
        }
        previous = l.step;
    }
    Ok(Pretrained {
        seconds,
        images_per_sec: images / seconds,
        cpu_steal_fraction: (steal_seconds > 0.0).then(|| stolen / steal_seconds),
        precision,
    })
}

/// How a job ended.
pub(super) enum Outcome {
    Done(Box<JobResult>),
    /// Pretraining stopped before the end (a signal); it resumes next time.
    Stopped(String),
}

/// The job's backbone: its kept checkpoint, its `[[weights]]` file, or
/// random init at the job's architecture; with the stride to ask for.
fn weights_of(plan: &Plan, job: &Job, dir: &Path) -> (Weights, Option<u32>) {
    let weights = if let Some(w) = &job.weights {
        Weights::File(w.file.clone())
    } else if job.method == "random" {
        Weights::Random { arch: job.config.model.arch, seed: job.seed }
    } else {
        Weights::Checkpoint(RunDir::new(dir).last_checkpoint())
    };
    (weights, plan.measuring_stride(job))
}

/// The plan's probe of the job's backbone, into `dir/probe/`; with the
/// output stride it was measured at.
fn probe_job(
    plan: &Plan,
    job: &Job,
    dir: &Path,
    device: tch::Device,
) -> Result<(ProbeConfig, ProbeResult, u32)> {
    let (weights, stride) = weights_of(plan, job, dir);
    let backbone = weights.load(stride, device)?;
    let probe = ProbeConfig { seed: job.seed, ..plan.probe.clone() };
    let r = probe_into(&backbone, &plan.data.join("voc"), &dir.join("probe"), &probe)?;
    Ok((probe, r, backbone.output_stride))
}

/// Runs `protocols` on the job's backbone, each into `dir/PROTOCOL/`.
fn evaluate_all(
    plan: &Plan,
    job: &Job,
    dir: &Path,
    protocols: &[Protocol],
    quiet: bool,
) -> Result<Vec<(String, Evaluation)>> {
    let device = train::pick_device(job.config.train.device)?;
    let (weights, stride) = weights_of(plan, job, dir);
    if let Weights::Checkpoint(ck) = &weights {
        if !ck.is_file() {
            return Err(Error::data(
                ck,
                format!(
                    "job {}'s checkpoint is gone, so {} cannot be measured on it; remove the \
                     job from the results file to pretrain it again",
                    job.id,
                    protocols.iter().map(Protocol::to_string).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let evaluator =
        Evaluator { recipes: plan.recipes.with_seed(job.seed), device, progress: !quiet };
    let voc = plan.data.join("voc");
    protocols
        .iter()
        .map(|&p| {
            let e = evaluator.evaluate(&weights, stride, p, &voc, &dir.join(p.folder()))?;
            Ok((p.to_string(), e))
        })
        .collect()
}

/// Measures a finished job with the plan's protocols it lacks or measured
/// at another output stride, on its kept checkpoint (or random init); the
/// result gains them, replacing the old.
pub(super) fn evaluate_missing(
    plan: &Plan,
    job: &Job,
    result: &mut JobResult,
    out: &Path,
    quiet: bool,
) -> Result<()> {
    let dir = out.join("jobs").join(&job.id);
    let mut missing = missing_protocols(plan, result);
    let clock = Instant::now();
    if missing.first() == Some(&Protocol::Probe) {
        missing.remove(0);
        let device = train::pick_device(job.config.train.device)?;
        let (_, r, stride) = probe_job(plan, job, &dir, device)?;
        result.miou = r.miou;
        result.per_class_iou = r.per_class_iou;
        result.pixel_accuracy = r.pixel_accuracy;
        result.output_stride = Some(stride);
    }
    result.evaluations.extend(evaluate_all(plan, job, &dir, &missing, quiet)?);
    result.wall_s += clock.elapsed().as_secs_f64();
    write_scores(result, &dir)
}

/// Every score of `result` for TensorBoard, `eval/probe` and `eval/PROTOCOL`
/// at the job's pretraining steps, in `dir`, the file rewritten whole so
/// that a score measured again replaces the old one.
fn write_scores(result: &JobResult, dir: &Path) -> Result<()> {
    let mut scores = vec![("eval/probe".to_string(), result.miou)];
    scores.extend(result.evaluations.iter().map(|(name, e)| (format!("eval/{name}"), e.score)));
    events::write_scores(dir, result.steps, &scores)
}

/// The config to pretrain `job` with in `run`: the plan's, and where the
/// folder holds a checkpoint to continue, with the precision `auto` chose
/// when the run began; the saved run must be the same recipe as the plan's
/// job. Without the check a job begun under one recipe (a preset since
/// changed, a plan since edited, a job folder copied in from another grid)
/// would finish under another and be reported as the plan's.
fn continued(plan: &Plan, job: &Job, run: &RunDir) -> Result<Config> {
    let mut config = job.config.clone();
    if !run.can_resume() {
        return Ok(config);
    }
    let saved = train::saved_config(run)?;
    let asked = job.config.continuing(&saved);
    if asked != saved {
        return Err(Error::data(
            run.config(),
            format!(
                "job {} was begun with another recipe than {} asks for now (differs in {}); set \
                 the old values in the plan to continue it, or move its folder away to pretrain \
                 it again",
                job.id,
                plan.path.display(),
                saved.differing_keys(&asked).join(", ")
            ),
        ));
    }
    config.train.precision = asked.train.precision;
    Ok(config)
}

pub(super) fn run_job(plan: &Plan, job: &Job, out: &Path, quiet: bool) -> Result<Outcome> {
    let clock = Instant::now();
    let started_at = unix_now();
    let dir = out.join("jobs").join(&job.id);
    let device = train::pick_device(job.config.train.device)?;
    let (pretraining, steps, config) = if let Some(w) = &job.weights {
        if !w.file.is_file() {
            return Err(Error::data(
                &w.file,
                format!(
                    "job {}'s weights are not there (`[[weights]]` of {}): make them first, or \
                     fix its `file`, relative to the plan",
                    job.id,
                    plan.path.display()
                ),
            ));
        }
        (None, w.steps, None)
    } else if job.method == "random" {
        (None, 0, None)
    } else {
        let run = RunDir::new(&dir);
        let config = continued(plan, job, &run)?;
        let images = job.pretrain.clone().unwrap_or_else(|| plan.data.join("pretrain"));
        let opts = RunOptions { quiet, ..RunOptions::new(images, RunDir::new(&dir)) };
        let summary = train::pretrain(&config, &opts)?;
        if !summary.finished {
            let why = summary.stopped_by.unwrap_or_else(|| "stopped".into());
            return Ok(Outcome::Stopped(format!("{} at step {}", why, summary.steps_done)));
        }
        let pretrained =
            pretrained(&run.metrics(), job.config.train.batch_size, summary.precision)?;
        let saved = train::saved_config(&run)?;
        (Some(pretrained), summary.steps_done, Some(recorded_config(&saved, &run.config())?))
    };
    let evaluating = Instant::now();
    let (probe, r, output_stride) = probe_job(plan, job, &dir, device)?;
    let evaluations = evaluate_all(plan, job, &dir, &job.protocols, quiet)?.into_iter().collect();
    let result = JobResult {
        id: job.id.clone(),
        method: job.method.clone(),
        seed: job.seed,
        knobs: job
            .knobs
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
            .collect(),
        miou: r.miou,
        per_class_iou: r.per_class_iou,
        pixel_accuracy: r.pixel_accuracy,
        output_stride: Some(output_stride),
        images_per_sec: pretraining.as_ref().map(|p| p.images_per_sec),
        cpu_steal_fraction: pretraining.as_ref().and_then(|p| p.cpu_steal_fraction),
        // The evaluations are this session's; the pretraining, every session's.
        wall_s: match &pretraining {
            Some(p) => p.seconds + evaluating.elapsed().as_secs_f64(),
            None => clock.elapsed().as_secs_f64(),
        },
        steps,
        config,
        precision: pretraining.as_ref().map(|p| p.precision.clone()),
        probe,
        started_at,
        finished_at: unix_now(),
        hardware: Hardware::this_machine(device),
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit: git_commit(),
        evaluations,
        loss_curve: losses::curve(plan, job, out)?.unwrap_or_default(),
    };
    write_scores(&result, &dir)?;
    Ok(Outcome::Done(Box::new(result)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretraining_time_adds_every_window_of_every_session() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        // Batch 4: windows of 10, 10 and (a resumed session's first) 5 steps,
        // 40, 40 and 20 images, at 20, 10 and 5 images/s: 2 + 4 + 4 seconds.
        // The first window was logged by a pixpro that did not read steal.
        std::fs::write(
            &metrics,
            "{\"step\":10,\"images_per_sec\":20.0}\n\
             {\"step\":20,\"images_per_sec\":10.0,\"cpu_steal_fraction\":0.5}\n\
             {\"step\":25,\"images_per_sec\":5.0,\"cpu_steal_fraction\":0.0}\n",
        )
        .unwrap();
        let p = pretrained(&metrics, 4, "fp32".into()).unwrap();
        assert!((p.seconds - 10.0).abs() < 1e-9, "{}", p.seconds);
        assert!((p.images_per_sec - 10.0).abs() < 1e-9, "{}", p.images_per_sec);
        // Over the 8 seconds of the windows that logged it: 4 at half, 4 at none.
        assert_eq!(p.cpu_steal_fraction, Some(0.25));
    }

    #[test]
    fn a_log_without_rates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        std::fs::write(&metrics, "{\"step\":10,\"images_per_sec\":0.0}\n").unwrap();
        let e = pretrained(&metrics, 4, "fp32".into()).err().unwrap().to_string();
        assert!(e.contains("metrics.jsonl"), "{e}");
    }
}

//! `pixpro experiment`: a grid of pretrain + probe jobs from a plan file
//! (methods x seeds, then one-knob ablations x values x seeds, both
//! seed-major), run one job at a time, each recorded in `results.json` the
//! moment it finishes, with a Markdown table and a bar chart redrawn after
//! every job.
//!
//! A job is identified by its id (`pixpro-threshold=1.4-s0`), built from what
//! makes it differ from the grid's base config, so the same job asked for
//! twice (an ablation value equal to the default is the plain method's job)
//! runs once, and a job whose id is already in the results file is never run
//! again: a stopped grid is finished by the same command, on any machine
//! that has the results file.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::method::Method;
use crate::plots::{plot_bars, Bar, BarPanel};
use crate::train::checkpoint::write_atomically;
use crate::train::config::{toml_error, Config, Preset};
use crate::train::{self, RunDir, RunOptions};
use crate::transfer::backbone::Backbone;
use crate::transfer::probe::{probe_into, ProbeConfig};
use crate::{Error, Result};

/// Every method a plan may name: `random` probes a randomly initialised
/// backbone without pretraining; the others are the `model.method` values.
pub fn method_names() -> Vec<&'static str> {
    std::iter::once("random").chain(Method::ALL.iter().map(|m| m.name())).collect()
}

/// The method whose knobs the ablations vary.
const ABLATED_METHOD: &str = "pixpro";

/// The plan file as written; [`Plan::load`] checks it and expands the jobs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    /// A folder made by `pixpro data tuxseg`, relative to the plan file.
    data: PathBuf,
    #[serde(default = "default_preset")]
    preset: String,
    steps: u64,
    seeds: Vec<u64>,
    #[serde(default)]
    methods: Vec<String>,
    /// [`ProbeConfig`] keys; a table first, to refuse `seed` (each job's).
    #[serde(default)]
    probe: toml::Table,
    #[serde(default)]
    ablation: Vec<AblationFile>,
    #[serde(default)]
    overrides: toml::Table,
}

fn default_preset() -> String {
    "cpu".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AblationFile {
    key: String,
    values: Vec<toml::Value>,
    seeds: Option<Vec<u64>>,
}

/// One pretrain + probe job of the grid.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub method: String,
    pub seed: u64,
    /// Config keys whose value differs from the grid's base config.
    pub knobs: BTreeMap<String, toml::Value>,
    /// The full pretraining config (unused for `random` but its backbone's
    /// architecture and output stride).
    pub config: Config,
}

/// A table of the report: rows of jobs that differ only in their seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub title: String,
    /// What the row label names: "method" or the ablated key.
    pub row_name: String,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub label: String,
    /// The ids of the row's jobs, one per seed.
    pub ids: Vec<String>,
}

/// A checked plan: where the data is, the jobs in run order, the groups of
/// the report.
#[derive(Debug)]
pub struct Plan {
    pub path: PathBuf,
    pub data: PathBuf,
    pub preset: String,
    pub steps: u64,
    pub base: Config,
    pub probe: ProbeConfig,
    pub jobs: Vec<Job>,
    pub groups: Vec<Group>,
}

/// Error of a plan key, naming the plan file.
fn plan_error(path: &Path, key: &str, reason: impl std::fmt::Display) -> Error {
    Error::config(key, format!("{reason} (in {})", path.display()))
}

/// `key` (dotted) as nested tables holding `value`.
fn nested(key: &str, value: toml::Value) -> toml::Table {
    let mut parts = key.rsplit('.');
    let last = parts.next().unwrap_or(key).to_string();
    let mut table = toml::Table::from_iter([(last, value)]);
    for part in parts {
        table = toml::Table::from_iter([(part.to_string(), toml::Value::Table(table))]);
    }
    table
}

/// The value at dotted `key` of a table, if there is one.
fn value_at<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let (first, rest) = match key.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (key, None),
    };
    match (table.get(first)?, rest) {
        (toml::Value::Table(t), Some(rest)) => value_at(t, rest),
        (v, None) => Some(v),
        _ => None,
    }
}

/// A value as it reads in ids and tables: strings without quotes.
fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn job_id(method: &str, knobs: &BTreeMap<String, toml::Value>, seed: u64) -> String {
    let mut parts = vec![method.to_string()];
    for (key, value) in knobs {
        let short = key.rsplit('.').next().unwrap_or(key);
        parts.push(format!("{short}={}", value_text(value)));
    }
    parts.push(format!("s{seed}"));
    parts.join("-")
}

impl Plan {
    /// Reads and checks a plan file: every error names the file and the key.
    pub fn load(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let file: PlanFile = toml::from_str(&text).map_err(|e| match toml_error(e) {
            Error::Config { key, reason } => plan_error(path, &key, reason),
            other => other,
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let data = dir.join(&file.data);
        for part in ["pretrain", "voc"] {
            if !data.join(part).is_dir() {
                return Err(Error::data(
                    data.join(part),
                    format!(
                        "not a folder: `data` in {} must name a folder made by `pixpro data \
                         tuxseg` (with pretrain/ and voc/), relative to the plan file",
                        path.display()
                    ),
                ));
            }
        }
        let preset = <Preset as clap::ValueEnum>::from_str(&file.preset, false).map_err(|_| {
            plan_error(path, "preset", format!("`{}` is not cpu or paper-r50", file.preset))
        })?;
        if file.steps == 0 {
            return Err(plan_error(path, "steps", "must be at least 1"));
        }
        if file.seeds.is_empty() {
            return Err(plan_error(path, "seeds", "needs at least one seed"));
        }
        if file.probe.contains_key("seed") {
            return Err(plan_error(path, "probe.seed", "the probe uses each job's seed"));
        }
        let probe: ProbeConfig = toml::Value::Table(file.probe)
            .try_into()
            .map_err(|e: toml::de::Error| plan_error(path, "probe", e.message().trim()))?;
        probe.validate().map_err(|e| plan_error(path, "probe", e))?;

        let mut base = preset
            .config()
            .with_overlay(file.overrides)
            .map_err(|e| plan_error(path, "overrides", e))?;
        base.train.steps = file.steps;
        base.validate().map_err(|e| plan_error(path, "overrides", e))?;
        let base_table = base.to_table()?;

        // A job's config and the knobs that set it apart from the base.
        let job = |method: &str, knob: Option<(&str, &toml::Value)>, seed: u64| -> Result<Job> {
            let mut config = base.clone();
            // Set for every method, so that an `[overrides]` method cannot
            // turn the plan's pixpro jobs into something else.
            if method != "random" {
                config = config.with_overlay(nested("model.method", method.into()))?;
            }
            if let Some((key, value)) = knob {
                config = config.with_overlay(nested(key, value.clone()))?;
            }
            config.train.seed = seed;
            config.validate()?;
            let table = config.to_table()?;
            let knobs = knob
                .and_then(|(key, _)| {
                    let v = value_at(&table, key)?;
                    (value_at(&base_table, key) != Some(v)).then(|| (key.to_string(), v.clone()))
                })
                .into_iter()
                .collect();
            Ok(Job {
                id: job_id(method, &knobs, seed),
                method: method.to_string(),
                seed,
                knobs,
                config,
            })
        };

        let mut jobs: Vec<Job> = Vec::new();
        let mut groups = Vec::new();
        let add = |j: Job, jobs: &mut Vec<Job>| -> String {
            if !jobs.iter().any(|k| k.id == j.id) {
                jobs.push(j.clone());
            }
            j.id
        };
        let mut methods_seen = BTreeSet::new();
        let known = method_names();
        for m in &file.methods {
            if !known.contains(&m.as_str()) {
                return Err(plan_error(
                    path,
                    "methods",
                    format!("unknown method `{m}`; one of {}", known.join(", ")),
                ));
            }
            if !methods_seen.insert(m.as_str()) {
                return Err(plan_error(path, "methods", format!("`{m}` is named twice")));
            }
        }
        // Seed-major: a grid stopped after any seed compares all methods fairly.
        let mut rows: Vec<Row> =
            file.methods.iter().map(|m| Row { label: m.clone(), ids: Vec::new() }).collect();
        for &seed in &file.seeds {
            for (m, row) in file.methods.iter().zip(&mut rows) {
                let j = job(m, None, seed).map_err(|e| {
                    plan_error(path, "methods", format!("method `{m}` cannot be configured: {e}"))
                })?;
                row.ids.push(add(j, &mut jobs));
            }
        }
        if !rows.is_empty() {
            groups.push(Group { title: "Methods".into(), row_name: "method".into(), rows });
        }

        let compared = jobs.len();
        for (i, ab) in file.ablation.iter().enumerate() {
            let at = format!("ablation[{i}]");
            // The runner sets these itself: from `methods`, `seeds` and `steps`.
            if ["model.method", "train.seed", "train.steps"].contains(&ab.key.as_str()) {
                return Err(plan_error(
                    path,
                    &format!("{at}.key"),
                    format!("`{}` is set by the plan's methods, seeds or steps", ab.key),
                ));
            }
            if ab.values.is_empty() {
                return Err(plan_error(path, &format!("{at}.values"), "needs at least one value"));
            }
            let seeds = ab.seeds.as_ref().unwrap_or(&file.seeds);
            if seeds.is_empty() {
                return Err(plan_error(path, &format!("{at}.seeds"), "needs at least one seed"));
            }
            let mut rows: Vec<Row> = Vec::new();
            for &seed in seeds {
                for (v, value) in ab.values.iter().enumerate() {
                    let j = job(ABLATED_METHOD, Some((&ab.key, value)), seed).map_err(|e| {
                        plan_error(
                            path,
                            &format!("{at}.key"),
                            format!("`{}` = {value} does not make a valid config: {e}", ab.key),
                        )
                    })?;
                    if rows.len() == v {
                        let shown = value_at(&j.config.to_table()?, &ab.key).map(value_text);
                        let mut label = shown.unwrap_or_else(|| value_text(value));
                        if j.knobs.is_empty() {
                            label.push_str(" (default)");
                        }
                        rows.push(Row { label, ids: Vec::new() });
                    }
                    rows[v].ids.push(add(j, &mut jobs));
                }
            }
            groups.push(Group {
                title: format!("Ablation of {} ({ABLATED_METHOD})", ab.key),
                row_name: ab.key.clone(),
                rows,
            });
        }
        // Seed-major across all ablations too (a stable sort keeps the
        // plan's order within a seed): a grid stopped part-way has every
        // knob value at the first seeds, not one knob at every seed.
        jobs[compared..].sort_by_key(|j| j.seed);
        if jobs.is_empty() {
            return Err(plan_error(
                path,
                "methods",
                "the plan has no jobs: name methods or ablations",
            ));
        }
        Ok(Plan {
            path: path.to_path_buf(),
            data,
            preset: file.preset,
            steps: file.steps,
            base,
            probe,
            jobs,
            groups,
        })
    }
}

/// The machine a job ran on, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hardware {
    /// `model name` of /proc/cpuinfo.
    pub cpu: String,
    /// Logical CPUs this process may use.
    pub cores: usize,
    /// libtorch intra-op threads.
    pub threads: usize,
    /// Where the job ran (`Cpu`, `Cuda(0)`).
    pub device: String,
}

impl Hardware {
    fn this_machine(device: tch::Device) -> Hardware {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("model name"))?;
                Some(line.split_once(':')?.1.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        Hardware {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            threads: tch::get_num_threads().max(0) as usize,
            device: format!("{device:?}"),
        }
    }
}

/// One finished job: a line of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub id: String,
    pub method: String,
    pub seed: u64,
    /// Config keys that differ from the grid's base config; empty for defaults.
    pub knobs: BTreeMap<String, serde_json::Value>,
    pub miou: f64,
    pub per_class_iou: BTreeMap<String, Option<f64>>,
    pub pixel_accuracy: f64,
    /// Pretraining images per second over the whole run; `None` for random.
    pub images_per_sec: Option<f64>,
    /// Pretraining (the part run in the session that finished it) plus probe.
    pub wall_s: f64,
    /// Pretraining steps; 0 for random.
    pub steps: u64,
    pub probe: ProbeConfig,
    /// Unix seconds when the session that finished the job started it.
    pub started_at: u64,
    pub finished_at: u64,
    pub hardware: Hardware,
    pub version: String,
    /// The commit of the source checkout the runner was built from,
    /// `-dirty` with local changes.
    pub commit: Option<String>,
}

/// The jobs of `results` (a missing file holds none).
pub fn read_results(path: &Path) -> Result<Vec<JobResult>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| Error::data(path, format!("not a results list: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn write_results(path: &Path, results: &[JobResult]) -> Result<()> {
    let json =
        serde_json::to_string_pretty(results).map_err(|e| Error::data(path, e.to_string()))?;
    write_atomically(path, json.as_bytes())
}

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

fn minutes(s: f64) -> String {
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

/// How a run of the grid goes.
pub struct RunnerOptions {
    /// Jobs' folders, results.md and results.png go here.
    pub out: PathBuf,
    /// The results list read at start and rewritten after every job.
    pub results: PathBuf,
    /// Stop after running this many jobs (finished ones skipped do not count).
    pub max_jobs: Option<usize>,
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

/// Seconds spent and jobs run in this session, apart for probe-only
/// (`random`) and pretraining jobs: the first take a minute, the second
/// many, so one mean over both would mislead the ETA.
#[derive(Default)]
struct Clock {
    spent: [f64; 2],
    ran: [usize; 2],
}

fn kind(job: &Job) -> usize {
    usize::from(job.method != "random")
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

/// Pretraining throughput over the whole run, resumed sessions included:
/// the harmonic mean of the `images_per_sec` of metrics.jsonl's windows
/// (equal numbers of images each, so this is total images over step time).
fn run_throughput(metrics: &Path) -> Result<f64> {
    #[derive(Deserialize)]
    struct Line {
        images_per_sec: f64,
    }
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let rates = text
        .lines()
        .map(|l| serde_json::from_str::<Line>(l).map(|l| l.images_per_sec))
        .collect::<std::result::Result<Vec<f64>, _>>()
        .map_err(|e| Error::data(metrics, e.to_string()))?;
    if rates.is_empty() || rates.iter().any(|r| *r <= 0.0) {
        return Err(Error::data(metrics, "no positive images_per_sec lines"));
    }
    Ok(rates.len() as f64 / rates.iter().map(|r| 1.0 / r).sum::<f64>())
}

/// How a job ended.
enum Outcome {
    Done(Box<JobResult>),
    /// Pretraining stopped before the end (a signal); it resumes next time.
    Stopped(String),
}

fn run_job(plan: &Plan, job: &Job, out: &Path, quiet: bool) -> Result<Outcome> {
    let clock = Instant::now();
    let started_at = unix_now();
    let dir = out.join("jobs").join(&job.id);
    let device = train::pick_device(job.config.train.device)?;
    let (backbone, images_per_sec, steps) = if job.method == "random" {
        let m = &job.config.model;
        (Backbone::random(m.arch, m.output_stride, job.seed, device)?, None, 0)
    } else {
        let run = RunDir::new(&dir);
        let opts = RunOptions {
            data: plan.data.join("pretrain"),
            run: RunDir::new(&dir),
            stop_at: None,
            quiet,
        };
        let summary = train::pretrain(&job.config, &opts)?;
        if !summary.finished {
            let why = summary.stopped_by.unwrap_or_else(|| "stopped".into());
            return Ok(Outcome::Stopped(format!("{} at step {}", why, summary.steps_done)));
        }
        let backbone = Backbone::from_checkpoint(&run.last_checkpoint(), device)?;
        (backbone, Some(run_throughput(&run.metrics())?), summary.steps_done)
    };
    let probe = ProbeConfig { seed: job.seed, ..plan.probe.clone() };
    let r = probe_into(&backbone, &plan.data.join("voc"), &dir.join("probe"), &probe)?;
    Ok(Outcome::Done(Box::new(JobResult {
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
        images_per_sec,
        wall_s: clock.elapsed().as_secs_f64(),
        steps,
        probe,
        started_at,
        finished_at: unix_now(),
        hardware: Hardware::this_machine(device),
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit: git_commit(),
    })))
}

/// The recorded results of the plan's jobs must come from the same budget
/// and probe recipe, or the tables would mix them.
fn check_recorded(plan: &Plan, results: &[JobResult], path: &Path) -> Result<()> {
    for r in results {
        let Some(job) = plan.jobs.iter().find(|j| j.id == r.id) else { continue };
        let steps = if job.method == "random" { 0 } else { plan.steps };
        let probe = ProbeConfig { seed: r.seed, ..plan.probe.clone() };
        if r.steps != steps || r.probe != probe {
            return Err(Error::data(
                path,
                format!(
                    "job {} was run with {} steps and probe {:?}; the plan {} asks for {steps} \
                     and {probe:?}. Give another --results file to start a new grid",
                    r.id,
                    r.steps,
                    r.probe,
                    plan.path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Writes results.md and results.png into `out`.
fn write_report(plan: &Plan, results: &[JobResult], out: &Path) -> Result<()> {
    let md = out.join("results.md");
    write_atomically(&md, markdown(plan, results).as_bytes())?;
    chart(plan, results, &out.join("results.png"))
}

/// The ids of the plan's jobs already in `results`.
pub fn finished_ids(plan: &Plan, results: &[JobResult]) -> BTreeSet<String> {
    plan.jobs
        .iter()
        .filter(|j| results.iter().any(|r| r.id == j.id))
        .map(|j| j.id.clone())
        .collect()
}

/// Runs the plan's jobs that `opts.results` does not hold yet, in order,
/// recording each as it finishes. A SIGINT or SIGTERM stops after the
/// current job (pretraining stops at the next step, with a checkpoint); a
/// second one exits at once.
pub fn run(plan: &Plan, opts: &RunnerOptions) -> Result<RunReport> {
    let mut results = read_results(&opts.results)?;
    check_recorded(plan, &results, &opts.results)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    if plan.base.train.threads > 0 {
        tch::set_num_threads(plan.base.train.threads as i32);
    }
    let interrupted = crate::train::interrupt_flag()?;
    let done_before = finished_ids(plan, &results);
    let todo: Vec<&Job> = plan.jobs.iter().filter(|j| !done_before.contains(&j.id)).collect();
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
        RunReport { ran: 0, skipped: done_before.len(), remaining: todo.len(), stopped_by: None };
    let mut clock = Clock::default();
    for (k, job) in todo.iter().enumerate() {
        if opts.max_jobs.is_some_and(|m| report.ran >= m) {
            report.stopped_by = Some(format!("--max-jobs {}", report.ran));
            break;
        }
        if interrupted.load(Ordering::Relaxed) {
            report.stopped_by = Some("interrupted by a signal".into());
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
                results.push(*r);
                write_results(&opts.results, &results)?;
                write_report(plan, &results, &opts.out)?;
                report.remaining -= 1;
            }
        }
    }
    Ok(report)
}

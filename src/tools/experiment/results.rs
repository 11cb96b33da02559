//! What the grid records: one [`JobResult`] per finished job in
//! `results.json`, rewritten whole (atomically) after every job or
//! evaluation, the check that recorded jobs were run with the plan's
//! budget and recipes, and the mean and spread over seeds that the report
//! and its loss section both show.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::plan::Plan;
use crate::files::write_atomically;
use crate::train::config::Config;
use crate::transfer::evaluate::{Evaluation, Protocol};
use crate::transfer::probe::ProbeConfig;
use crate::{Error, Result};

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
    pub(super) fn this_machine(device: tch::Device) -> Hardware {
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
    /// The output stride the probe above was measured at; `None` in rows of
    /// an older pixpro, which measured at the stride of the job's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_stride: Option<u32>,
    /// Pretraining images per second over the whole run; `None` for random.
    pub images_per_sec: Option<f64>,
    /// Pretraining (its steps in every session) plus every evaluation,
    /// those run later on the kept checkpoint included; for `[[weights]]`,
    /// the evaluations alone.
    pub wall_s: f64,
    /// Share of the CPU time a hypervisor took during the pretraining steps
    /// ([`crate::train::steal`]): near 0, `images_per_sec` measures the
    /// code; None where it was not read (not Linux, or an older pixpro).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_steal_fraction: Option<f64>,
    /// Pretraining steps; 0 for random.
    pub steps: u64,
    /// The resolved pretraining config, as the job's config.toml holds it
    /// (its TOML tables as JSON objects); None for random init and
    /// `[[weights]]`, and in rows of an older pixpro. [`check_recorded`]
    /// holds it against the plan's, so that a row cannot stand for a recipe
    /// the plan no longer asks for (a preset changed since, an edited plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// What pretraining computed in (fp32 or bf16, as `auto` resolved it on
    /// the machine that began the run); None for random init and
    /// `[[weights]]`, and in rows of an older pixpro.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    pub probe: ProbeConfig,
    /// Unix seconds when the session that finished the job started it.
    pub started_at: u64,
    pub finished_at: u64,
    pub hardware: Hardware,
    pub version: String,
    /// The commit of the source checkout the runner was built from,
    /// `-dirty` with local changes.
    pub commit: Option<String>,
    /// The plan's other protocols by name (the probe's numbers are above),
    /// as far as they were run: a protocol added to the plan later is run
    /// on the job's kept checkpoint without pretraining again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub evaluations: BTreeMap<String, Evaluation>,
    /// The pretraining loss as (step, mean loss of the window ending there),
    /// kept with the scores so that loss.png can still be drawn when the
    /// job's folder is gone (a grid finished on another machine); empty for
    /// random init and for weights that came without losses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_curve: Vec<(u64, f64)>,
}

impl JobResult {
    /// The job's score under `protocol`, if it was measured.
    pub fn score(&self, protocol: Protocol) -> Option<f64> {
        match protocol {
            Protocol::Probe => Some(self.miou),
            other => self.evaluations.get(&other.to_string()).map(|e| e.score),
        }
    }
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

pub(super) fn write_results(path: &Path, results: &[JobResult]) -> Result<()> {
    let json =
        serde_json::to_string_pretty(results).map_err(|e| Error::data(path, e.to_string()))?;
    write_atomically(path, json.as_bytes())
}

/// Records `row` in the results file at `path` and returns the file's rows
/// as now written: the file is read again first and `row` replaces the row
/// of its id or is appended, so rows that another process wrote since this
/// one read the file (a runner of another plan sharing the file, rows
/// copied in by hand while a grid runs for hours) are kept, not overwritten
/// by this process's older copy. Two writers can still collide in the
/// milliseconds between the read and the rename.
pub(super) fn record(path: &Path, row: &JobResult) -> Result<Vec<JobResult>> {
    let mut rows = read_results(path)?;
    match rows.iter_mut().find(|r| r.id == row.id) {
        Some(old) => *old = row.clone(),
        None => rows.push(row.clone()),
    }
    write_results(path, &rows)?;
    Ok(rows)
}

/// `config` as a row of `results.json` records it; `file` is where it was
/// read from, for the error.
pub(super) fn recorded_config(config: &Config, file: &Path) -> Result<serde_json::Value> {
    config
        .to_table()
        .and_then(|t| serde_json::to_value(t).map_err(|e| Error::config("(base)", e.to_string())))
        .map_err(|e| Error::data(file, format!("cannot record the config: {e}")))
}

/// The pretraining config a row records, if it records one.
fn config_of(r: &JobResult, path: &Path) -> Result<Option<Config>> {
    let Some(value) = &r.config else { return Ok(None) };
    let unreadable = |e: String| {
        Error::data(path, format!("job {}'s recorded config cannot be read: {e}", r.id))
    };
    let table: toml::Table =
        serde_json::from_value(value.clone()).map_err(|e| unreadable(e.to_string()))?;
    Config::default().with_overlay(table).map(Some).map_err(|e| unreadable(e.to_string()))
}

/// The recorded results of the plan's jobs must come from the same budget,
/// pretraining recipe and probe recipe, or the tables would mix them.
pub(super) fn check_recorded(plan: &Plan, results: &[JobResult], path: &Path) -> Result<()> {
    for r in results {
        let Some(job) = plan.jobs.iter().find(|j| j.id == r.id) else { continue };
        let steps = match &job.weights {
            Some(w) => w.steps,
            None if job.method == "random" => 0,
            None => job.config.train.steps,
        };
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
        if let Some(recorded) = config_of(r, path)? {
            let asked = job.config.continuing(&recorded);
            if asked != recorded {
                return Err(Error::data(
                    path,
                    format!(
                        "job {} was pretrained with another recipe than the plan {} asks for \
                         (differs in {}). Set the old values in the plan, or give another \
                         --results file to start a new grid",
                        r.id,
                        plan.path.display(),
                        recorded.differing_keys(&asked).join(", ")
                    ),
                ));
            }
        }
        for (name, e) in &r.evaluations {
            let Some(&p) = plan.protocols.iter().find(|p| p.to_string() == *name) else { continue };
            let want = plan.recipes.with_seed(r.seed).of(p);
            if e.recipe != want {
                return Err(Error::data(
                    path,
                    format!(
                        "job {}'s {name} was run with recipe {}; the plan {} asks for {want}. \
                         Give another --results file to start a new grid",
                        r.id,
                        e.recipe,
                        plan.path.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The protocols the plan asks of `r`'s job (all of the plan's, or its
/// variant's part of them) that `r` has not been evaluated with yet, or
/// was at another output stride than the plan's `eval_output_stride`:
/// `probe` first when the job's probe was, then the rest in plan order.
pub fn missing_protocols(plan: &Plan, r: &JobResult) -> Vec<Protocol> {
    let job = plan.jobs.iter().find(|j| j.id == r.id);
    let asked = job.map_or(&plan.protocols, |j| &j.protocols);
    let elsewhere = |measured: u32| plan.eval_output_stride.is_some_and(|s| s != measured);
    let probe =
        job.is_some_and(|j| elsewhere(r.output_stride.unwrap_or(j.config.model.output_stride)));
    let rest = asked.iter().copied().filter(|p| match r.evaluations.get(&p.to_string()) {
        Some(e) => elsewhere(e.output_stride),
        None => true,
    });
    probe.then_some(Protocol::Probe).into_iter().chain(rest).collect()
}

/// The ids of the plan's jobs already in `results`.
pub fn finished_ids(plan: &Plan, results: &[JobResult]) -> BTreeSet<String> {
    plan.jobs
        .iter()
        .filter(|j| results.iter().any(|r| r.id == j.id))
        .map(|j| j.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, miou: f64) -> JobResult {
        JobResult {
            id: id.into(),
            method: "pixpro".into(),
            seed: 0,
            knobs: BTreeMap::new(),
            miou,
            per_class_iou: BTreeMap::new(),
            pixel_accuracy: 0.9,
            output_stride: Some(16),
            images_per_sec: Some(10.0),
            wall_s: 60.0,
            cpu_steal_fraction: None,
            steps: 3,
            config: None,
            precision: Some("fp32".into()),
            probe: ProbeConfig::default(),
            started_at: 0,
            finished_at: 60,
            hardware: Hardware {
                cpu: "test cpu".into(),
                cores: 2,
                threads: 2,
                device: "Cpu".into(),
            },
            version: "0.0.0".into(),
            commit: None,
            evaluations: BTreeMap::new(),
            loss_curve: Vec::new(),
        }
    }

    #[test]
    fn recording_a_row_keeps_the_rows_another_process_wrote_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        // A runner read one row when it started; since, another process
        // added its own row to the file.
        write_results(&path, &[row("pixpro-s0", 0.1), row("byol-s0", 0.2)]).unwrap();
        let rows = record(&path, &row("pixpro-s1", 0.3)).unwrap();
        let ids = |rows: &[JobResult]| rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&rows), ["pixpro-s0", "byol-s0", "pixpro-s1"]);
        assert_eq!(read_results(&path).unwrap(), rows);
        // A row of the same id (a protocol measured later) replaces it in place.
        let rows = record(&path, &row("pixpro-s0", 0.4)).unwrap();
        assert_eq!(ids(&rows), ["pixpro-s0", "byol-s0", "pixpro-s1"]);
        assert_eq!(rows[0].miou, 0.4);
    }
}

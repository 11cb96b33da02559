//! The plan file: read, checked key by key (every error names the file and
//! the key), expanded into the grid's jobs in run order and the groups of
//! the report.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::method::Method;
use crate::model::resnet::unsupported_output_stride;
use crate::train::config::{from_table, toml_error, Config, Preset};
use crate::transfer::evaluate::{Protocol, Recipes};
use crate::transfer::probe::ProbeConfig;
use crate::{Error, Result};

/// Every method a plan may name: `random` probes a randomly initialised
/// backbone without pretraining; the others are the `model.method` values.
pub fn method_names() -> Vec<&'static str> {
    std::iter::once("random").chain(Method::ALL.iter().map(|m| m.name())).collect()
}

/// The method whose knobs an ablation varies unless it names its own.
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
    /// Protocols every job is evaluated with besides the probe, which always
    /// runs (`probe` may be named too).
    #[serde(default)]
    protocols: Vec<String>,
    /// [`ProbeConfig`] keys; a table first, to refuse `seed` (each job's).
    #[serde(default)]
    probe: toml::Table,
    /// The other protocols' recipes, the same way.
    #[serde(default)]
    retrieval: toml::Table,
    #[serde(default)]
    correspondence: toml::Table,
    #[serde(default)]
    finetune: toml::Table,
    /// The output stride every backbone is measured at, whatever it was
    /// pretrained at; unset, each at its own.
    eval_output_stride: Option<u32>,
    #[serde(default)]
    ablation: Vec<AblationFile>,
    #[serde(default)]
    variant: Vec<VariantFile>,
    /// Backbones trained elsewhere, measured beside the methods.
    #[serde(default)]
    weights: Vec<WeightsFile>,
    #[serde(default)]
    overrides: toml::Table,
    selection: Option<SelectionFile>,
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
    /// The methods it varies the knob of, a table each [default: pixpro].
    methods: Option<Vec<String>>,
}

/// A `[[variant]]` entry: a named recipe that sets several keys at once (a
/// batch size with the step count that keeps a wall-clock budget, say), of
/// one method, at the plan's seeds or its own, pretrained on the plan's
/// images or on another folder: a row `label` of the Variants table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantFile {
    label: String,
    #[serde(default = "default_variant_method")]
    method: String,
    /// Config keys, dotted (`"train.batch_size" = 64`) or as tables.
    set: toml::Table,
    seeds: Option<Vec<u64>>,
    /// A folder of pretraining images instead of the plan's `data/pretrain`,
    /// relative to the plan file; evaluation stays on the plan's `data/voc`.
    pretrain: Option<PathBuf>,
    /// Some of the plan's protocols instead of all of them, for a variant
    /// that one of them cannot tell anything about (a control that learns
    /// no weights is not worth fine-tuning); the probe always runs.
    protocols: Option<Vec<String>>,
}

fn default_variant_method() -> String {
    ABLATED_METHOD.to_string()
}

/// A `[[weights]]` entry: a weight file that `--weights` reads (the
/// reference PixPro's checkpoint, torchvision's, a user's), measured with
/// the plan's protocols as a row `label` of the Methods table, paired by
/// `seed` with the methods' jobs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsFile {
    label: String,
    seed: u64,
    /// Relative to the plan file.
    file: PathBuf,
    /// The pretraining steps behind the weights, for the tables and
    /// TensorBoard [default: the plan's `steps`].
    steps: Option<u64>,
    /// Their pretraining loss, a JSON object with `step` and `loss` per
    /// line and step (what scripts/reference-train writes as loss.jsonl),
    /// relative to the plan file: drawn beside the methods' in loss.png.
    losses: Option<PathBuf>,
}

/// `[selection]`: the rule that picks one recipe out of the plan's rows,
/// written into the plan before any job runs so that the choice is made by
/// the rule, not by eye.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectionFile {
    /// The protocols the rows are ranked on; `probe` may be one of them.
    protocols: Vec<String>,
    /// Whose rows are the candidates [default: pixpro].
    #[serde(default = "default_variant_method")]
    method: String,
}

/// A checked `[selection]`: the rows of `method`, in every table, ranked on
/// each of `protocols` by their mean over seeds; the chosen one has the
/// lowest mean rank, ties going to the better mean on the first protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub method: String,
    /// Never empty, each once, each measured on every job of `method`.
    pub protocols: Vec<Protocol>,
}

/// What a `[[weights]]` job measures.
#[derive(Debug, Clone)]
pub struct Measured {
    pub file: PathBuf,
    /// The pretraining steps behind them.
    pub steps: u64,
    /// Their loss per step, if given.
    pub losses: Option<PathBuf>,
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
    /// A `[[weights]]` job's: measured, not trained, at the config's
    /// output stride.
    pub weights: Option<Measured>,
    /// Where a `[[variant]]` job pretrains, if not on the plan's images.
    pub pretrain: Option<PathBuf>,
    /// What the job is measured with after the probe: the plan's
    /// protocols, or the part of them its `[[variant]]` names.
    pub protocols: Vec<Protocol>,
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
    /// Every protocol's recipe (`recipes.probe` is `probe`), seeded per job.
    pub recipes: Recipes,
    /// What every job is evaluated with after the probe, in column order.
    pub protocols: Vec<Protocol>,
    /// The output stride every job is measured at (`eval_output_stride`);
    /// `None`: each at the one it was pretrained at.
    pub eval_output_stride: Option<u32>,
    pub jobs: Vec<Job>,
    pub groups: Vec<Group>,
    pub selection: Option<Selection>,
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
        let file = parse(path)?;
        let data = path.parent().unwrap_or(Path::new("")).join(&file.data);
        check_data(path, &data)?;
        let preset = <Preset as clap::ValueEnum>::from_str(&file.preset, false).map_err(|_| {
            plan_error(path, "preset", format!("`{}` is not cpu or paper-r50", file.preset))
        })?;
        if file.steps == 0 {
            return Err(plan_error(path, "steps", "must be at least 1"));
        }
        if file.seeds.is_empty() {
            return Err(plan_error(path, "seeds", "needs at least one seed"));
        }
        let recipes = Recipes {
            probe: recipe(path, "probe", &file.probe)?,
            retrieval: recipe(path, "retrieval", &file.retrieval)?,
            correspondence: recipe(path, "correspondence", &file.correspondence)?,
            finetune: recipe(path, "finetune", &file.finetune)?,
        };
        recipes.validate().map_err(|e| match e {
            Error::Config { key, reason } => plan_error(path, &key, reason),
            other => other,
        })?;
        let protocols = protocols(path, "protocols", &file.protocols)?;
        if let Some(reason) = file.eval_output_stride.and_then(unsupported_output_stride) {
            return Err(plan_error(path, "eval_output_stride", reason));
        }
        let base = base_config(path, preset, &file)?;

        let mut grid = Grid::new(base, protocols.clone())?;
        check_methods(path, &file.methods)?;
        grid.expand_methods(path, &file.methods, &file.seeds)?;
        // Before the ablations: measuring weights takes minutes, and their
        // rows belong to the Methods table, which should fill first.
        grid.add_weights(path, &file.weights, file.steps)?;
        let compared = grid.jobs.len();
        for (i, v) in file.variant.iter().enumerate() {
            grid.add_variant(path, i, v, &file.seeds)?;
        }
        for (i, ab) in file.ablation.iter().enumerate() {
            grid.expand_ablation(path, i, ab, &file.seeds)?;
        }
        // Shorter pretraining first, then seed-major across all ablations
        // (a stable sort keeps the plan's order within a seed): a grid
        // stopped part-way has every knob value at the first seeds, not one
        // knob at every seed, and its cheap points before its long runs.
        grid.jobs[compared..].sort_by_key(|j| (j.config.train.steps, j.seed));
        if grid.jobs.is_empty() {
            return Err(plan_error(
                path,
                "methods",
                "the plan has no jobs: name methods, ablations, variants or weights",
            ));
        }
        let selection = match &file.selection {
            Some(s) => Some(selection(path, s, &protocols, &grid.jobs)?),
            None => None,
        };
        Ok(Plan {
            path: path.to_path_buf(),
            data,
            preset: file.preset,
            steps: file.steps,
            base: grid.base,
            probe: recipes.probe.clone(),
            recipes,
            protocols,
            eval_output_stride: file.eval_output_stride,
            jobs: grid.jobs,
            groups: grid.groups,
            selection,
        })
    }

    /// The output stride `job`'s backbone is measured at, when the plan
    /// fixes one; else the backbone's own (a checkpoint's, its pretraining
    /// stride; random init's and a `[[weights]]` file's, the job's model).
    pub fn measuring_stride(&self, job: &Job) -> Option<u32> {
        self.eval_output_stride.or_else(|| {
            (job.weights.is_some() || job.method == "random")
                .then_some(job.config.model.output_stride)
        })
    }
}

/// The plan file's text as typed keys; a parse error names the plan file.
fn parse(path: &Path) -> Result<PlanFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(toml_error).and_then(|t| from_table(t, "")).map_err(|e| match e {
        Error::Config { key, reason } => plan_error(path, &key, reason),
        other => other,
    })
}

/// `data` must be the layout `pixpro data tuxseg` makes.
fn check_data(path: &Path, data: &Path) -> Result<()> {
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
    Ok(())
}

/// A protocol's table of the plan (`[probe]`, `[retrieval]`, ...), checked;
/// its seed is each job's.
fn recipe<T: serde::de::DeserializeOwned>(
    path: &Path,
    name: &str,
    table: &toml::Table,
) -> Result<T> {
    if table.contains_key("seed") {
        return Err(plan_error(path, &format!("{name}.seed"), "each job's seed is used"));
    }
    from_table(table.clone(), name).map_err(|e| match e {
        Error::Config { key, reason } => plan_error(path, &key, reason),
        other => other,
    })
}

/// A list of protocol names at plan key `key`, parsed, each once, in order.
fn protocol_list(path: &Path, key: &str, names: &[String]) -> Result<Vec<Protocol>> {
    let mut out: Vec<Protocol> = Vec::new();
    for name in names {
        let p: Protocol = name.parse().map_err(|e| plan_error(path, key, e))?;
        if out.contains(&p) {
            return Err(plan_error(path, key, format!("`{name}` is named twice")));
        }
        out.push(p);
    }
    Ok(out)
}

/// Protocols at `key`, parsed, each once, without the probe (it always runs).
fn protocols(path: &Path, key: &str, names: &[String]) -> Result<Vec<Protocol>> {
    let mut out = protocol_list(path, key, names)?;
    out.retain(|&p| p != Protocol::Probe);
    Ok(out)
}

/// `[selection]` checked against the plan: protocols it measures, each
/// once, and a method some trained job of the plan has.
fn selection(
    path: &Path,
    file: &SelectionFile,
    measured: &[Protocol],
    jobs: &[Job],
) -> Result<Selection> {
    if file.method == "random" {
        return Err(plan_error(
            path,
            "selection.method",
            "`random` is not pretrained: there are no recipes of it to choose between",
        ));
    }
    check_pretraining(path, "selection.method", &file.method)?;
    let candidates: Vec<&Job> =
        jobs.iter().filter(|j| j.method == file.method && j.weights.is_none()).collect();
    if candidates.is_empty() {
        return Err(plan_error(
            path,
            "selection.method",
            format!("no job of the plan pretrains `{}`: nothing to choose from", file.method),
        ));
    }
    if file.protocols.is_empty() {
        return Err(plan_error(path, "selection.protocols", "needs at least one protocol"));
    }
    let chosen = protocol_list(path, "selection.protocols", &file.protocols)?;
    for (&p, name) in chosen.iter().zip(&file.protocols) {
        if p != Protocol::Probe && !measured.contains(&p) {
            return Err(plan_error(
                path,
                "selection.protocols",
                format!("`{name}` is not one of the plan's `protocols`, so no job measures it"),
            ));
        }
        // A variant measured with part of the plan's protocols would wait
        // for this score for ever, never ranked.
        if let Some(j) =
            candidates.iter().find(|j| p != Protocol::Probe && !j.protocols.contains(&p))
        {
            return Err(plan_error(
                path,
                "selection.protocols",
                format!(
                    "ranks on `{name}`, which job `{}` does not measure (its variant's \
                     `protocols` leave it out)",
                    j.id
                ),
            ));
        }
    }
    Ok(Selection { method: file.method.clone(), protocols: chosen })
}

/// The preset with the plan's `[overrides]` and `steps`: what every job
/// starts from.
fn base_config(path: &Path, preset: Preset, file: &PlanFile) -> Result<Config> {
    let mut base = preset
        .config()
        .with_overlay(file.overrides.clone())
        .map_err(|e| plan_error(path, "overrides", e))?;
    base.train.steps = file.steps;
    base.validate().map_err(|e| plan_error(path, "overrides", e))?;
    Ok(base)
}

/// Every name of `methods` is known, and named once.
fn check_methods(path: &Path, methods: &[String]) -> Result<()> {
    let mut methods_seen = BTreeSet::new();
    let known = method_names();
    for m in methods {
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
    Ok(())
}

/// The jobs and report groups as the plan's parts are expanded.
struct Grid {
    base: Config,
    /// The plan's protocols, every job's unless its variant names fewer.
    protocols: Vec<Protocol>,
    /// `base` as a table, to tell which knobs of a job differ from it.
    base_table: toml::Table,
    jobs: Vec<Job>,
    groups: Vec<Group>,
}

impl Grid {
    fn new(base: Config, protocols: Vec<Protocol>) -> Result<Grid> {
        let base_table = base.to_table()?;
        Ok(Grid { base, protocols, base_table, jobs: Vec::new(), groups: Vec::new() })
    }

    /// A job's config and the knobs that set it apart from the base.
    fn job(&self, method: &str, knob: Option<(&str, &toml::Value)>, seed: u64) -> Result<Job> {
        let mut config = self.base.clone();
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
                (value_at(&self.base_table, key) != Some(v)).then(|| (key.to_string(), v.clone()))
            })
            .into_iter()
            .collect();
        Ok(Job {
            id: job_id(method, &knobs, seed),
            method: method.to_string(),
            seed,
            knobs,
            config,
            weights: None,
            pretrain: None,
            protocols: self.protocols.clone(),
        })
    }

    /// Adds `job` unless a job of its id is there already; its id either way.
    fn add(&mut self, job: Job) -> String {
        if !self.jobs.iter().any(|k| k.id == job.id) {
            self.jobs.push(job.clone());
        }
        job.id
    }

    /// The `methods` x `seeds` jobs and their group.
    fn expand_methods(&mut self, path: &Path, methods: &[String], seeds: &[u64]) -> Result<()> {
        // Seed-major: a grid stopped after any seed compares all methods fairly.
        let mut rows: Vec<Row> =
            methods.iter().map(|m| Row { label: m.clone(), ids: Vec::new() }).collect();
        for &seed in seeds {
            for (m, row) in methods.iter().zip(&mut rows) {
                let j = self.job(m, None, seed).map_err(|e| {
                    plan_error(path, "methods", format!("method `{m}` cannot be configured: {e}"))
                })?;
                row.ids.push(self.add(j));
            }
        }
        if !rows.is_empty() {
            self.groups.push(Group { title: "Methods".into(), row_name: "method".into(), rows });
        }
        Ok(())
    }

    /// The `[[weights]]` jobs, each `LABEL-sSEED`, as rows of the Methods
    /// group (made if the plan names no methods).
    fn add_weights(&mut self, path: &Path, entries: &[WeightsFile], steps: u64) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new(""));
        for (i, w) in entries.iter().enumerate() {
            let at = format!("weights[{i}]");
            check_label(path, &at, &w.label, "weights")?;
            let mut job = self.job("random", None, w.seed)?;
            job.id = format!("{}-s{}", w.label, w.seed);
            job.method = w.label.clone();
            job.weights = Some(Measured {
                file: dir.join(&w.file),
                steps: w.steps.unwrap_or(steps),
                losses: w.losses.as_ref().map(|l| dir.join(l)),
            });
            if self.jobs.iter().any(|j| j.id == job.id) {
                return Err(plan_error(
                    path,
                    &format!("{at}.seed"),
                    format!("`{}` with seed {} is given twice", w.label, w.seed),
                ));
            }
            let row = Row { label: w.label.clone(), ids: vec![self.add(job)] };
            self.add_row("Methods", "method", true, row);
        }
        Ok(())
    }

    /// Adds `row` to the group `title` (made, first or last, if it is not
    /// there): a row of the same label gains the ids it lacks, so that
    /// entries of one label at different seeds make one row.
    fn add_row(&mut self, title: &str, row_name: &str, first: bool, row: Row) {
        let g = match self.groups.iter().position(|g| g.title == title) {
            Some(g) => g,
            None => {
                let group =
                    Group { title: title.into(), row_name: row_name.into(), rows: Vec::new() };
                let at = if first { 0 } else { self.groups.len() };
                self.groups.insert(at, group);
                at
            }
        };
        let rows = &mut self.groups[g].rows;
        match rows.iter_mut().find(|r| r.label == row.label) {
            Some(same) => {
                let new: Vec<String> =
                    row.ids.into_iter().filter(|id| !same.ids.contains(id)).collect();
                same.ids.extend(new);
            }
            None => rows.push(row),
        }
    }

    /// The jobs of `variant[i]`, one per seed, as a row of the Variants
    /// group (made when the first variant comes).
    fn add_variant(
        &mut self,
        path: &Path,
        i: usize,
        v: &VariantFile,
        plan_seeds: &[u64],
    ) -> Result<()> {
        let at = format!("variant[{i}]");
        check_label(path, &at, &v.label, "variants")?;
        check_pretraining(path, &format!("{at}.method"), &v.method)?;
        let mut keys = Vec::new();
        flatten("", &v.set, &mut keys);
        if keys.is_empty() {
            return Err(plan_error(path, &format!("{at}.set"), "sets no key"));
        }
        if let Some((key, _)) =
            keys.iter().find(|(k, _)| ["model.method", "train.seed"].contains(&k.as_str()))
        {
            return Err(plan_error(
                path,
                &format!("{at}.set"),
                format!("`{key}` is set by the variant's method and the plan's seeds"),
            ));
        }
        let pretrain = match &v.pretrain {
            Some(p) => {
                let dir = path.parent().unwrap_or(Path::new("")).join(p);
                if !dir.is_dir() {
                    return Err(Error::data(
                        &dir,
                        format!("not a folder (`{at}.pretrain` in {})", path.display()),
                    ));
                }
                Some(dir)
            }
            None => None,
        };
        let seeds = v.seeds.as_deref().unwrap_or(plan_seeds);
        if seeds.is_empty() {
            return Err(plan_error(path, &format!("{at}.seeds"), "needs at least one seed"));
        }
        let measured = match &v.protocols {
            Some(names) => {
                let key = format!("{at}.protocols");
                let chosen = protocols(path, &key, names)?;
                if let Some(p) = chosen.iter().find(|p| !self.protocols.contains(p)) {
                    return Err(plan_error(
                        path,
                        &key,
                        format!(
                            "`{p}` is not one of the plan's `protocols`, which are the report's \
                             columns; add it there"
                        ),
                    ));
                }
                chosen
            }
            None => self.protocols.clone(),
        };
        let mut ids = Vec::new();
        for &seed in seeds {
            let mut job = self.job(&v.method, None, seed)?;
            for (key, value) in &keys {
                job.config = job.config.with_overlay(nested(key, value.clone())).map_err(|e| {
                    plan_error(path, &format!("{at}.set"), format!("`{key}` = {value}: {e}"))
                })?;
            }
            job.config.validate().map_err(|e| plan_error(path, &format!("{at}.set"), e))?;
            let table = job.config.to_table()?;
            for (key, _) in &keys {
                if let Some(value) = value_at(&table, key) {
                    if value_at(&self.base_table, key) != Some(value) {
                        job.knobs.insert(key.clone(), value.clone());
                    }
                }
            }
            if let Some(dir) = &pretrain {
                let shown = dir.display().to_string();
                job.knobs.insert("data.pretrain".into(), toml::Value::String(shown));
            }
            job.pretrain = pretrain.clone();
            job.protocols = measured.clone();
            job.id = format!("{}-{}-s{seed}", v.method, v.label);
            if self.jobs.iter().any(|j| j.id == job.id) {
                return Err(plan_error(
                    path,
                    &format!("{at}.label"),
                    format!("`{}` of {} is given twice", v.label, v.method),
                ));
            }
            ids.push(self.add(job));
        }
        let label = format!("{} {}", v.method, v.label);
        self.add_row("Variants", "variant", false, Row { label, ids });
        Ok(())
    }

    /// The jobs of `ablation[i]`, values x seeds (the plan's seeds unless it
    /// names its own) for each of its methods, and a group per method.
    /// Ablations of one key and method share a group: values measured at
    /// different seeds (a long run at fewer seeds) make one table.
    fn expand_ablation(
        &mut self,
        path: &Path,
        i: usize,
        ab: &AblationFile,
        plan_seeds: &[u64],
    ) -> Result<()> {
        let at = format!("ablation[{i}]");
        let (seeds, methods) = check_ablation(path, &at, ab, plan_seeds)?;
        for method in methods {
            let mut rows: Vec<Row> = Vec::new();
            for &seed in seeds {
                for (v, value) in ab.values.iter().enumerate() {
                    let j = self.job(method, Some((&ab.key, value)), seed).map_err(|e| {
                        plan_error(
                            path,
                            &format!("{at}.key"),
                            format!("`{}` = {value} does not make a valid config: {e}", ab.key),
                        )
                    })?;
                    // The same id may only be the same job (a default value
                    // is the Methods row's); a variant labelled like a knob
                    // value would otherwise be measured in its place.
                    if let Some(k) = self.jobs.iter().find(|k| k.id == j.id) {
                        if k.config != j.config || k.pretrain.is_some() {
                            return Err(plan_error(
                                path,
                                &format!("{at}.values"),
                                format!(
                                    "`{}` = {value} makes job `{}`, which is another recipe of \
                                     the plan too (a variant's label?); rename that",
                                    ab.key, j.id
                                ),
                            ));
                        }
                    }
                    if rows.len() == v {
                        let shown = value_at(&j.config.to_table()?, &ab.key).map(value_text);
                        let mut label = shown.unwrap_or_else(|| value_text(value));
                        if j.knobs.is_empty() {
                            label.push_str(" (default)");
                        }
                        rows.push(Row { label, ids: Vec::new() });
                    }
                    rows[v].ids.push(self.add(j));
                }
            }
            let title = format!("Ablation of {} ({method})", ab.key);
            for row in rows {
                self.add_row(&title, &ab.key, false, row);
            }
        }
        Ok(())
    }
}

/// A `[[weights]]` or `[[variant]]` label: it goes into job ids and
/// folder names, and must not pass for a method.
fn check_label(path: &Path, at: &str, label: &str, what: &str) -> Result<()> {
    let ok =
        !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || "_+.=".contains(c));
    if !ok {
        return Err(plan_error(
            path,
            &format!("{at}.label"),
            format!("`{label}`: letters, digits, `_`, `+`, `=` and `.` only"),
        ));
    }
    if method_names().contains(&label) {
        return Err(plan_error(
            path,
            &format!("{at}.label"),
            format!("`{label}` is a method's name; {what} need a label of their own"),
        ));
    }
    Ok(())
}

/// `method`, named at plan key `key`, is one that pretrains.
fn check_pretraining(path: &Path, key: &str, method: &str) -> Result<()> {
    if method == "random" {
        return Err(plan_error(path, key, "`random` is not pretrained: nothing to vary"));
    }
    if !method_names().contains(&method) {
        let known = Method::ALL.map(|m| m.name()).join(", ");
        return Err(plan_error(path, key, format!("unknown method `{method}`; one of {known}")));
    }
    Ok(())
}

/// `table` as (dotted key, value) pairs down to its non-table values.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => out.push((key, other.clone())),
        }
    }
}

/// The ablation `at` varies a knob the runner leaves to it, over some
/// values and seeds, of methods that pretrain; its seeds and methods.
fn check_ablation<'a>(
    path: &Path,
    at: &str,
    ab: &'a AblationFile,
    plan_seeds: &'a [u64],
) -> Result<(&'a [u64], Vec<&'a str>)> {
    // The runner sets these itself, from `methods` and `seeds`; `train.steps`
    // may be varied (quality against compute).
    if ["model.method", "train.seed"].contains(&ab.key.as_str()) {
        return Err(plan_error(
            path,
            &format!("{at}.key"),
            format!("`{}` is set by the plan's methods or seeds", ab.key),
        ));
    }
    if ab.values.is_empty() {
        return Err(plan_error(path, &format!("{at}.values"), "needs at least one value"));
    }
    let seeds = ab.seeds.as_deref().unwrap_or(plan_seeds);
    if seeds.is_empty() {
        return Err(plan_error(path, &format!("{at}.seeds"), "needs at least one seed"));
    }
    let methods: Vec<&str> = match &ab.methods {
        Some(m) => m.iter().map(String::as_str).collect(),
        None => vec![ABLATED_METHOD],
    };
    let key = format!("{at}.methods");
    if methods.is_empty() {
        return Err(plan_error(path, &key, "needs at least one method"));
    }
    for (k, m) in methods.iter().enumerate() {
        check_pretraining(path, &key, m)?;
        if methods[..k].contains(m) {
            return Err(plan_error(path, &key, format!("`{m}` is named twice")));
        }
    }
    Ok((seeds, methods))
}

//! `pixpro experiment`: a grid of pretrain + probe jobs from a plan file
//! (methods x seeds, then one-knob ablations x values x seeds of one or
//! more methods, both seed-major), run one job at a time, each recorded in `results.json` the
//! moment it finishes, with a Markdown table and a bar chart redrawn after
//! every job.
//!
//! A job is identified by its id (`pixpro-threshold=1.4-s0`), built from what
//! makes it differ from the grid's base config, so the same job asked for
//! twice (an ablation value equal to the default is the plain method's job)
//! runs once, and a job whose id is already in the results file is never run
//! again: a stopped grid is finished by the same command, on any machine
//! that has the results file.
//!
//! - [`plan`]: the plan file, checked key by key and expanded into jobs and
//!   the report's groups.
//! - [`job`]: one job run: pretraining, then the probe and the plan's
//!   other protocols, measured; or the protocols a finished job lacks.
//! - [`results`]: `results.json`, one record per finished job.
//! - [`report`]: results.md and results.png, redrawn after every job.
//! - [`losses`]: the Methods rows' pretraining losses side by side
//!   (loss.png, and their final losses in results.md).
//! - [`compute`]: the `train.steps` ablations as quality against compute
//!   (compute.png, and paired differences at each step count).
//! - [`selection`]: the plan's `[selection]` rule applied: every candidate
//!   recipe ranked, and the one it picks.
//! - [`runner`]: the loop over the jobs not yet recorded, then over the
//!   recorded ones a protocol of the plan has not measured yet.
pub mod plan;
pub mod job;
pub mod results;
pub mod report;
pub mod losses;
pub mod compute;
pub mod selection;
pub mod runner;

pub use plan::{method_names, Group, Job, Plan, Row, Selection};
pub use report::{markdown, summarize, write_report, RowSummary};
pub use results::{finished_ids, missing_protocols, read_results, Hardware, JobResult};
pub use runner::{run, RunReport, RunnerOptions};
pub use selection::{contenders, rank, Ranked};

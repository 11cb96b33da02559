//! Trains pixpro for a few steps on views from a file, from given weights,
//! and prints each step's loss as a JSON line: one half of the trajectory
//! comparison of `scripts/reference-trajectory`, which runs the reference on
//! the same views from the same weights.
//!
//! `cargo run --release --example views_trajectory -- CONFIG.toml VIEWS.safetensors INIT.safetensors STEPS BATCHES_PER_EPOCH`
//!
//! VIEWS as the dump_views example writes them; INIT is a pixpro checkpoint
//! whose `online/` and `target/` tensors are restored (its optimiser state,
//! if any, is not: it starts at zero, as a new run's does). BATCHES_PER_EPOCH sets the
//! schedules' length, as the loader of the run being matched has it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use pixpro::data::loader::Batch;
use pixpro::train::checkpoint::Checkpoint;
use pixpro::train::config::Config;
use pixpro::train::trainer::Trainer;
use tch::{Device, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, views, init, steps, per_epoch] = args.as_slice() else {
        bail!("usage: views_trajectory CONFIG.toml VIEWS.safetensors INIT.safetensors STEPS BATCHES_PER_EPOCH");
    };
    let steps: usize = steps.parse().with_context(|| format!("STEPS {steps}"))?;
    let per_epoch: usize =
        per_epoch.parse().with_context(|| format!("BATCHES_PER_EPOCH {per_epoch}"))?;
    let cfg = Config::from_toml_file(&PathBuf::from(config), &Config::default())?;
    let views: BTreeMap<String, Tensor> = Tensor::read_safetensors(views)?.into_iter().collect();
    let mut trainer = Trainer::new(&cfg, per_epoch, Device::Cpu)?;
    let init = Checkpoint::load(Path::new(init))?;
    init.restore("online", &mut trainer.model.online)?;
    init.restore("target", &mut trainer.model.target)?;
    let b = cfg.train.batch_size as i64;
    let size = views["view1"].size()[3] as usize;
    for step in 0..steps as i64 {
        let part = |name: &str| views[name].narrow(0, step * b, b).contiguous();
        let flat = |t: Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).context("views are float32");
        let coords = |t: Tensor| -> anyhow::Result<Vec<[f32; 4]>> {
            Ok(flat(t)?.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
        };
        let batch = Batch {
            view1: flat(part("view1"))?,
            view2: flat(part("view2"))?,
            coords1: coords(part("coords1"))?,
            coords2: coords(part("coords2"))?,
            indices: (0..b as usize).collect(),
            epoch: 0,
            index_in_epoch: step as usize,
            image_size: size,
            replaced: Vec::new(),
        };
        let s = trainer.train_step(&batch)?;
        println!(
            "{{\"step\": {}, \"loss\": {}, \"lr\": {}, \"momentum\": {}}}",
            step + 1,
            s.loss,
            s.lr,
            s.momentum
        );
    }
    Ok(())
}

//! Writes the first batches pixpro's loader makes for a run's recipe to a
//! safetensors file (`view1`, `view2`: `[N, 3, S, S]` normalised; `coords1`,
//! `coords2`: `[N, 4]`), for `scripts/reference-loss` and
//! `scripts/reference-trajectory`, which feed them to the reference.
//!
//! `cargo run --release --example dump_views -- CONFIG.toml IMAGES OUT.safetensors BATCHES`
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use pixpro::data::dataset::Dataset;
use pixpro::data::loader::{Loader, LoaderConfig};
use pixpro::train::config::Config;
use tch::Tensor;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, images, out, batches] = args.as_slice() else {
        bail!("usage: dump_views CONFIG.toml IMAGES OUT.safetensors BATCHES");
    };
    let batches: usize = batches.parse().with_context(|| format!("BATCHES {batches}"))?;
    let cfg = Config::from_toml_file(&PathBuf::from(config), &Config::default())?;
    let (data, _) = Dataset::open(&PathBuf::from(images))?;
    let loader = Loader::new(
        Arc::new(data),
        cfg.augment.clone(),
        LoaderConfig {
            batch_size: cfg.train.batch_size,
            workers: 1,
            prefetch: 1,
            seed: cfg.train.seed,
            rank: 0,
            world_size: 1,
        },
    )?;
    let (mut v1, mut v2, mut c1, mut c2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut size = 0;
    for batch in loader.iter_from(0, 0).take(batches) {
        let b = batch?;
        size = b.image_size as i64;
        v1.extend_from_slice(&b.view1);
        v2.extend_from_slice(&b.view2);
        c1.extend(b.coords1.iter().flatten());
        c2.extend(b.coords2.iter().flatten());
    }
    let n = c1.len() as i64 / 4;
    let views = |v: &[f32]| Tensor::from_slice(v).view([n, 3, size, size]);
    let coords = |c: &[f32]| Tensor::from_slice(c).view([n, 4]);
    Tensor::write_safetensors(
        &[
            ("view1", views(&v1)),
            ("view2", views(&v2)),
            ("coords1", coords(&c1)),
            ("coords2", coords(&c2)),
        ],
        out,
    )?;
    println!("{n} pairs of {size} px views in {out}");
    Ok(())
}

//! `pixpro data pack`: any `--data` input written once as tar shards.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use pixpro::tools::pack::{pack, parse_size, PackOptions};

use super::args::Quiet;

#[derive(Args)]
pub(super) struct PackArgs {
    /// Any input --data takes: a folder tree, tar shards, a .zip or a .txt list.
    #[arg(long)]
    from: PathBuf,
    /// Folder for the shards, index.jsonl and pack.json; run again to continue a pack.
    #[arg(long)]
    out: PathBuf,
    /// Largest shard, in bytes or with a unit: 500MB, 1GB, 1GiB.
    #[arg(long, default_value = "1GB", value_parser = parse_size)]
    shard_size: u64,
    /// Shrink images whose longer side is over N pixels to N (re-encoded as JPEG, quality 95);
    /// other images keep their bytes [default: every image keeps its bytes].
    #[arg(long, value_name = "N")]
    max_side: Option<u32>,
    #[command(flatten)]
    quiet: Quiet,
}

pub(super) fn run(args: &PackArgs) -> Result<()> {
    let started = Instant::now();
    let opts = PackOptions {
        from: args.from.clone(),
        out: args.out.clone(),
        shard_size: args.shard_size,
        max_side: args.max_side,
        quiet: args.quiet.quiet,
    };
    let s = pack(&opts)?;
    for (path, why) in &s.skipped {
        eprintln!("left out {}: {why}", path.display());
    }
    let kept = match s.kept_shards {
        0 => String::new(),
        k => format!(" ({k} kept from an earlier run)"),
    };
    eprintln!(
        "{} images in {} shards{kept} in {} ({:.0} s); {} shrunk, {} left out; index in {}",
        s.images,
        s.shards,
        args.out.display(),
        started.elapsed().as_secs_f64(),
        s.resized,
        s.skipped.len(),
        args.out.join("index.jsonl").display()
    );
    Ok(())
}

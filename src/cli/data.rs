//! `pixpro data`: evaluation data sets built from installed packages
//! (`tuxseg`), a held-out part of one to choose recipes on (`holdout`), and
//! any input packed into tar shards (`pack`, in `pack.rs`).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use pixpro::tools::tuxseg::{self, TuxsegOptions};
use pixpro::transfer::holdout;

#[derive(Subcommand)]
pub(super) enum DataCommand {
    /// Cut-and-paste segmentation on real photos (Debian wallpapers + Tux Paint stamps).
    #[command(after_help = "Example:\n  pixpro data tuxseg --out data/tuxseg --seed 0")]
    Tuxseg(TuxsegArgs),
    /// Write any --data input as tar shards, optionally shrinking large images once.
    #[command(after_help = "Examples:\n  \
        pixpro data pack --from ~/photos --out data/photos-shards --max-side 1024\n  \
        pixpro data pack --from /imagenet/train --out /data/in1k --shard-size 1GB\n  \
        pixpro pretrain --data data/photos-shards --out runs/mine --preset cpu\n\n\
        Writes OUT/shard-000000.tar, ... and OUT/index.jsonl (source, index, shard, member, bytes,\n\
        resized size); a shard appears only when complete, and running the same command again\n\
        continues after the last complete one.")]
    Pack(super::pack::PackArgs),
    /// A held-out part of a train split as a VOC folder of its own: choose recipes on it, not on val.
    #[command(after_help = "Example:\n  \
        pixpro data holdout --from runs/tuxseg --out runs/tuxseg-select --fraction 0.2\n\n\
        OUT's train split is the rest of FROM's train split, its val split the held-out part;\n\
        images, masks (and a tuxseg folder's pretrain/) are linked, not copied. FROM's val\n\
        split is left out: score the chosen recipe on it once, at the end.")]
    Holdout(HoldoutArgs),
}

#[derive(Args)]
pub(super) struct HoldoutArgs {
    /// A VOC folder, or a folder made by `pixpro data tuxseg` (pretrain/ and voc/).
    #[arg(long)]
    from: PathBuf,
    /// Output folder (must be missing or empty), in the layout of --from.
    #[arg(long)]
    out: PathBuf,
    /// Part of the train split held out, in (0, 1).
    #[arg(long, default_value_t = 0.2)]
    fraction: f64,
    /// Seeds which images are held out.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub(super) struct TuxsegArgs {
    /// Output folder (must be missing or empty): pretrain/, voc/, classes.txt, README.md.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Unlabelled pretraining scenes.
    #[arg(long)]
    pretrain_images: Option<usize>,
    /// Labelled probe train scenes.
    #[arg(long)]
    train_images: Option<usize>,
    /// Labelled probe val scenes.
    #[arg(long)]
    val_images: Option<usize>,
    /// Side of the square scenes, in pixels.
    #[arg(long)]
    image_size: Option<u32>,
}

pub(super) fn run(command: &DataCommand) -> Result<()> {
    match command {
        DataCommand::Tuxseg(a) => build_tuxseg(a),
        DataCommand::Pack(a) => super::pack::run(a),
        DataCommand::Holdout(a) => {
            let h = holdout::write_holdout(&a.from, &a.out, a.fraction, a.seed)?;
            eprintln!(
                "held out {} of {} train images of {} (seed {}) as the val split of {}; {} left \
                 to train on (holdout.json lists them)",
                h.val,
                h.train + h.val,
                h.source.display(),
                h.seed,
                a.out.display(),
                h.train
            );
            Ok(())
        }
    }
}

fn build_tuxseg(args: &TuxsegArgs) -> Result<()> {
    let mut opts = TuxsegOptions { out: args.out.clone(), seed: args.seed, ..Default::default() };
    if let Some(n) = args.pretrain_images {
        opts.pretrain_images = n;
    }
    if let Some(n) = args.train_images {
        opts.train_images = n;
    }
    if let Some(n) = args.val_images {
        opts.val_images = n;
    }
    if let Some(s) = args.image_size {
        opts.image_size = s;
    }
    let started = Instant::now();
    let s = tuxseg::build(&opts)?;
    eprintln!(
        "TuxSeg in {} ({:.0} s): {} pretrain / {} train / {} val scenes, {} classes, from {} + {} photos and {} + {} objects",
        args.out.display(),
        started.elapsed().as_secs_f64(),
        s.pretrain_images,
        s.train_images,
        s.val_images,
        s.classes.len(),
        s.pretrain_photos,
        s.heldout_photos,
        s.stamps_a.iter().sum::<usize>(),
        s.stamps_b.iter().sum::<usize>()
    );
    Ok(())
}

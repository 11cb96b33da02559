//! `pixpro`: the command line. Parsing and printing live here; the work is
//! done by the library.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use pixpro::distributed::collective::{self, Launch};
use pixpro::method::Method;
use pixpro::model::precision::Precision;
use pixpro::train::config::{Config, DeviceChoice, Preset};
use pixpro::train::{self, RunDir, RunOptions};

#[derive(Parser)]
#[command(
    name = "pixpro",
    version,
    about = "PixPro: pixel-level self-supervised pretraining of ResNet backbones",
    long_about = "PixPro: pixel-level self-supervised pretraining of ResNet backbones \
                  (Xie et al., CVPR 2021), on libtorch.\n\n\
                  Start with `pixpro pretrain --data DIR --out RUN --preset cpu`."
)]
struct Cli {
    /// Logs through tracing; RUST_LOG=debug shows more.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain a backbone on a folder of unlabelled images.
    #[command(after_help = "Examples:\n  \
        pixpro pretrain --data ~/photos --out runs/cpu --preset cpu\n  \
        pixpro pretrain --data /imagenet/train --out runs/r50 --preset paper-r50 --device cuda\n  \
        pixpro pretrain --data ~/photos --out runs/cpu          # continue an interrupted run")]
    Pretrain(PretrainArgs),
    /// Time the data pipeline and the training step (images/s, data wait, memory).
    #[command(after_help = "Examples:\n  \
        pixpro bench --data ~/photos --preset cpu\n  \
        pixpro bench --data ~/photos --arch resnet50 --image-size 224 --batch-size 16 --json\n  \
        pixpro bench --data ~/photos --data-only --workers 1 --steps 20")]
    Bench(BenchArgs),
    /// Build evaluation data sets from installed packages.
    #[command(subcommand)]
    Data(DataCommand),
    /// Dense linear probe: mIoU of a frozen backbone on a Pascal VOC-layout folder.
    #[command(after_help = "Examples:\n  \
        pixpro probe --checkpoint runs/cpu/checkpoints/last.safetensors --voc data/tuxseg/voc --out runs/cpu/probe\n  \
        pixpro probe --random-init --arch resnet18 --output-stride 16 --voc data/tuxseg/voc --out runs/random-probe\n  \
        pixpro probe --checkpoint CKPT --voc ~/VOCdevkit/VOC2012 --out probe-voc")]
    Probe(ProbeArgs),
    /// Write the backbone's dense feature map of an image (or of every image in a folder).
    #[command(after_help = "Examples:\n  \
        pixpro embed --checkpoint CKPT --image photo.jpg --out photo.safetensors\n  \
        pixpro embed --checkpoint CKPT --image ~/photos --out ~/photo-features")]
    Embed(EmbedArgs),
    /// Export the pretrained encoder for torchvision or Detectron2.
    #[command(after_help = "Examples:\n  \
        pixpro export --checkpoint CKPT --format torchvision --out resnet.safetensors\n  \
        pixpro export --checkpoint CKPT --format detectron2 --out pixpro_d2.pkl")]
    Export(ExportArgs),
    /// The whole loop on real photos: build TuxSeg, pretrain (cpu preset), probe against random init.
    #[command(after_help = "Examples:\n  \
        pixpro demo                               # runs/demo; run again to continue\n  \
        pixpro demo --out runs/demo-s1 --data runs/demo/tuxseg --seed 1")]
    Demo(DemoArgs),
    /// Run a grid of pretrain + probe jobs from a plan; run again to continue it.
    #[command(after_help = "Examples:\n  \
        pixpro experiment --plan docs/experiments/tuxseg-cpu.toml --out runs/grid --dry-run\n  \
        pixpro experiment --plan docs/experiments/tuxseg-cpu.toml --out runs/grid --results docs/results.json\n  \
        pixpro experiment --plan PLAN.toml --out runs/grid --max-jobs 1   # one job, then stop")]
    Experiment(ExperimentArgs),
    /// Pictures: the two views and their positive pairs, or what a checkpoint's features show.
    #[command(subcommand)]
    Inspect(InspectCommand),
    /// Print libtorch, CUDA and thread facts for this machine.
    #[command(after_help = "Example:\n  pixpro doctor    # is CUDA visible to this binary?")]
    Doctor,
}

#[derive(Args)]
struct ExperimentArgs {
    /// The grid: data, preset, steps, seeds, methods, [probe], [[ablation]], [overrides].
    #[arg(long)]
    plan: PathBuf,
    /// Jobs' run folders (jobs/ID), results.md and results.png.
    #[arg(long)]
    out: PathBuf,
    /// The results list to continue and add to [default: OUT/results.json].
    #[arg(long)]
    results: Option<PathBuf>,
    /// Stop after running this many jobs.
    #[arg(long)]
    max_jobs: Option<usize>,
    /// List the jobs and which are finished; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

fn experiment(args: &ExperimentArgs) -> Result<()> {
    use pixpro::tools::experiment as exp;
    let plan = exp::Plan::load(&args.plan)?;
    let results_path = args.results.clone().unwrap_or_else(|| args.out.join("results.json"));
    if args.dry_run {
        let results = exp::read_results(&results_path)?;
        for (i, job) in plan.jobs.iter().enumerate() {
            let status = match results.iter().find(|r| r.id == job.id) {
                Some(r) => format!("done, mIoU {:.4}", r.miou),
                None if args.out.join("jobs").join(&job.id).exists() => "started".to_string(),
                None => "to run".to_string(),
            };
            println!("{:>3}  {:<32} {status}", i + 1, job.id);
        }
        let done = exp::finished_ids(&plan, &results).len();
        println!("{done} of {} jobs finished (in {})", plan.jobs.len(), results_path.display());
        return Ok(());
    }
    let report = exp::run(
        &plan,
        &exp::RunnerOptions {
            out: args.out.clone(),
            results: results_path.clone(),
            max_jobs: args.max_jobs,
            quiet: args.quiet,
        },
    )?;
    if !args.quiet {
        let how = outcome(&report.stopped_by);
        eprintln!(
            "{how}: ran {} jobs, {} were done before, {} left; {} and {}",
            report.ran,
            report.skipped,
            report.remaining,
            results_path.display(),
            args.out.join("results.md").display()
        );
    }
    Ok(())
}

#[derive(Subcommand)]
enum InspectCommand {
    /// Original with both crop boxes, the two augmented views, lines joining positive cells.
    #[command(
        after_help = "Example:\n  pixpro inspect views --data ~/photos --out pics --preset paper-r50"
    )]
    Views(InspectViewsArgs),
    /// PCA of the dense features, PPM similarity of query cells, nearest-neighbour matches.
    #[command(
        after_help = "Example:\n  pixpro inspect features --checkpoint runs/cpu/checkpoints/last.safetensors --images ~/photos --out pics"
    )]
    Features(InspectFeaturesArgs),
}

#[derive(Args)]
struct InspectViewsArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Recipe whose augmentation, output stride and threshold are shown.
    #[arg(long, value_enum, default_value = "paper-r50")]
    preset: Preset,
    /// TOML file whose keys override the preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Pictures to draw (the first images of the folder, sorted).
    #[arg(long, default_value_t = 4)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct InspectFeaturesArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    images: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 4)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Network input size for the pictures [default: the checkpoint's, at
    /// least 224]: the encoder is fully convolutional, and a small training
    /// size gives cells too coarse to see.
    #[arg(long)]
    image_size: Option<u32>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
}

fn inspect_views(args: &InspectViewsArgs) -> Result<()> {
    let mut cfg = args.preset.config();
    if let Some(path) = &args.config {
        cfg = Config::from_toml_file(path, &cfg)?;
    }
    cfg.validate()?;
    let grid =
        pixpro::tools::inspect::feature_grid(cfg.augment.image_size, cfg.model.output_stride);
    let written = pixpro::tools::inspect::inspect_views(
        &args.data,
        &args.out,
        args.count,
        &cfg.augment,
        grid,
        cfg.model.threshold,
        args.seed,
    )?;
    eprintln!("wrote {} pictures to {}", written.len(), args.out.display());
    Ok(())
}

fn inspect_features(args: &InspectFeaturesArgs) -> Result<()> {
    let (cfg, model) = train::load_pixpro(&args.checkpoint, device_of(args.device)?)?;
    let mut augment = cfg.augment.clone();
    augment.image_size = args.image_size.unwrap_or(augment.image_size.max(224));
    augment.validate()?;
    let written = pixpro::tools::inspect::inspect_features(
        &model,
        &args.images,
        &args.out,
        args.count,
        &augment,
        args.seed,
    )?;
    eprintln!("wrote {} pictures to {}", written.len(), args.out.display());
    Ok(())
}

#[derive(Subcommand)]
enum DataCommand {
    /// Cut-and-paste segmentation on real photos (Debian wallpapers + Tux Paint stamps).
    #[command(after_help = "Example:\n  pixpro data tuxseg --out data/tuxseg --seed 0")]
    Tuxseg(TuxsegArgs),
}

#[derive(Args)]
struct TuxsegArgs {
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

#[derive(Args)]
struct ProbeArgs {
    /// Pretraining checkpoint whose online encoder is probed.
    #[arg(long, required_unless_present = "random_init", conflicts_with = "random_init")]
    checkpoint: Option<PathBuf>,
    /// Probe a randomly initialised backbone instead (the baseline).
    #[arg(long)]
    random_init: bool,
    /// Architecture for --random-init.
    #[arg(long, default_value = "resnet18")]
    arch: pixpro::model::resnet::Arch,
    /// Output stride for --random-init (32, 16 or 8).
    #[arg(long, default_value_t = 16)]
    output_stride: u32,
    /// Folder in the Pascal VOC 2012 layout (JPEGImages, SegmentationClass, ImageSets/Segmentation).
    #[arg(long)]
    voc: PathBuf,
    /// Output folder for probe.json.
    #[arg(long)]
    out: PathBuf,
    /// TOML with the probe recipe (image_size, epochs, lr, batch_size, seed).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    image_size: Option<u32>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Print probe.json to stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EmbedArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// An image, or a folder of images (searched recursively).
    #[arg(long)]
    image: PathBuf,
    /// A .safetensors file for one image; a folder for a folder of images.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// safetensors with torchvision ResNet names (load_state_dict, strict, without fc).
    Torchvision,
    /// The pickle Detectron2 reads (res2..res5, stem, *.norm, shortcut).
    Detectron2,
}

#[derive(Args)]
struct ExportArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, value_enum)]
    format: ExportFormat,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct DemoArgs {
    /// Folder for the data, the run and the probes.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Where TuxSeg is (or is built, with seed 0) [default: OUT/tuxseg].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Pretraining steps [default: the cpu preset's].
    #[arg(long)]
    steps: Option<u64>,
    /// Seed of pretraining and of the probes; the data set stays the same.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
}

fn device_of(d: DeviceArg) -> Result<tch::Device> {
    Ok(train::pick_device(d.into())?)
}

fn data_tuxseg(args: &TuxsegArgs) -> Result<()> {
    let mut opts = pixpro::tools::tuxseg::TuxsegOptions {
        out: args.out.clone(),
        seed: args.seed,
        ..Default::default()
    };
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
    let s = pixpro::tools::tuxseg::build(&opts)?;
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

fn probe_config(args: &ProbeArgs) -> Result<pixpro::transfer::probe::ProbeConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?
        }
        None => pixpro::transfer::probe::ProbeConfig::default(),
    };
    if let Some(s) = args.image_size {
        cfg.image_size = s;
    }
    if let Some(e) = args.epochs {
        cfg.epochs = e;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn print_probe(label: &str, r: &pixpro::transfer::probe::ProbeResult) {
    println!(
        "{label}: mIoU {:.4}, pixel accuracy {:.4} ({} train / {} val images, {:.0} s)",
        r.miou, r.pixel_accuracy, r.train_images, r.val_images, r.seconds
    );
    for (class, iou) in &r.per_class_iou {
        match iou {
            Some(v) => println!("  {class:<14} {v:.4}"),
            None => println!("  {class:<14} -"),
        }
    }
}

fn probe(args: &ProbeArgs) -> Result<()> {
    let cfg = probe_config(args)?;
    let device = device_of(args.device)?;
    let backbone = match &args.checkpoint {
        Some(ck) => pixpro::transfer::backbone::Backbone::from_checkpoint(ck, device)?,
        None => pixpro::transfer::backbone::Backbone::random(
            args.arch,
            args.output_stride,
            cfg.seed,
            device,
        )?,
    };
    let r = pixpro::transfer::probe::probe_into(&backbone, &args.voc, &args.out, &cfg)?;
    if args.json {
        print!("{}", std::fs::read_to_string(args.out.join("probe.json"))?);
        return Ok(());
    }
    print_probe(&backbone.source, &r);
    eprintln!("wrote probe.json, confusion.png and prediction pictures in {}", args.out.display());
    Ok(())
}

fn embed(args: &EmbedArgs) -> Result<()> {
    let device = device_of(args.device)?;
    let backbone = pixpro::transfer::backbone::Backbone::from_checkpoint(&args.checkpoint, device)?;
    let write = |img_path: &std::path::Path, out: &std::path::Path| -> Result<()> {
        let img = pixpro::data::dataset::load_rgb(img_path)?;
        let f = backbone.image_features(&img).to_device(tch::Device::Cpu);
        let meta = std::collections::BTreeMap::from([
            ("image".to_string(), img_path.display().to_string()),
            ("checkpoint".to_string(), args.checkpoint.display().to_string()),
            ("arch".to_string(), backbone.arch.to_string()),
            ("output_stride".to_string(), backbone.output_stride.to_string()),
        ]);
        pixpro::transfer::export::write_features(out, &f, &meta)?;
        Ok(())
    };
    if args.image.is_dir() {
        let (ds, report) = pixpro::data::dataset::Dataset::scan(&args.image)?;
        for (path, why) in &report.bad {
            eprintln!("skipped {}: {why}", path.display());
        }
        for i in 0..ds.len() {
            let rel = ds.path(i).strip_prefix(&args.image).unwrap_or(ds.path(i));
            let out = args.out.join(rel).with_extension("safetensors");
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("{}", parent.display()))?;
            }
            write(ds.path(i), &out)?;
        }
        eprintln!("wrote {} feature files under {}", ds.len(), args.out.display());
    } else {
        write(&args.image, &args.out)?;
        eprintln!("wrote {}", args.out.display());
    }
    Ok(())
}

fn export(args: &ExportArgs) -> Result<()> {
    let backbone =
        pixpro::transfer::backbone::Backbone::from_checkpoint(&args.checkpoint, tch::Device::Cpu)?;
    let named = backbone.named_tensors();
    match args.format {
        ExportFormat::Torchvision => {
            pixpro::transfer::export::write_torchvision(&args.out, &named)?
        }
        ExportFormat::Detectron2 => pixpro::transfer::export::write_detectron2(&args.out, &named)?,
    }
    eprintln!("wrote {} ({} encoder, {} tensors)", args.out.display(), backbone.arch, named.len());
    Ok(())
}

fn demo(args: &DemoArgs) -> Result<()> {
    let started = Instant::now();
    let data = args.data.clone().unwrap_or_else(|| args.out.join("tuxseg"));
    let run = args.out.join("pretrain");
    let mut cfg = Preset::Cpu.config();
    cfg.train.seed = args.seed;
    cfg.train.device = args.device.into();
    if let Some(s) = args.steps {
        cfg.train.steps = s;
    }
    eprintln!(
        "pixpro demo: build TuxSeg (real photos with pasted real-object cutouts), pretrain {} at {} px \
         for {} steps (cpu preset), then probe it and a random-init backbone. \
         About {} minutes for the preset's {} steps on 2 idle CPU cores, longer on a busy or \
         slower machine (the progress bar shows its own estimate); re-running continues where \
         it stopped.",
        cfg.model.arch,
        cfg.augment.image_size,
        cfg.train.steps,
        DEMO_MINUTES,
        Preset::Cpu.config().train.steps
    );
    if !data.join("voc").join("ImageSets").exists() {
        let opts = pixpro::tools::tuxseg::TuxsegOptions {
            out: data.clone(),
            seed: args.seed,
            ..Default::default()
        };
        let s = pixpro::tools::tuxseg::build(&opts)?;
        eprintln!(
            "[1/3] TuxSeg: {} pretrain / {} train / {} val scenes in {}",
            s.pretrain_images,
            s.train_images,
            s.val_images,
            data.display()
        );
    } else {
        eprintln!("[1/3] TuxSeg already in {}", data.display());
    }
    eprintln!("[2/3] pretraining into {}", run.display());
    let summary = train::pretrain(
        &cfg,
        &RunOptions {
            data: data.join("pretrain"),
            run: RunDir::new(&run),
            stop_at: None,
            quiet: false,
        },
    )?;
    if !summary.finished {
        eprintln!("stopped at step {}; run the same command to continue", summary.steps_done);
        return Ok(());
    }
    eprintln!("[3/3] probing (frozen backbone, per-pixel linear classifier)");
    let probe_cfg = pixpro::transfer::probe::ProbeConfig {
        image_size: 160,
        seed: args.seed,
        ..Default::default()
    };
    let device = train::pick_device(cfg.train.device)?;
    let ours = pixpro::transfer::backbone::Backbone::from_checkpoint(
        &RunDir::new(&run).last_checkpoint(),
        device,
    )?;
    let random = pixpro::transfer::backbone::Backbone::random(
        cfg.model.arch,
        cfg.model.output_stride,
        args.seed,
        device,
    )?;
    let voc = data.join("voc");
    let r_ours = pixpro::transfer::probe::probe_into(
        &ours,
        &voc,
        &args.out.join("probe-pixpro"),
        &probe_cfg,
    )?;
    let r_rand = pixpro::transfer::probe::probe_into(
        &random,
        &voc,
        &args.out.join("probe-random"),
        &probe_cfg,
    )?;
    print_probe("pixpro", &r_ours);
    print_probe("random init", &r_rand);
    println!(
        "TuxSeg val mIoU: pixpro {:.4} vs random init {:.4} ({:+.4}); pretrained {} steps; {:.0} min in all",
        r_ours.miou,
        r_rand.miou,
        r_ours.miou - r_rand.miou,
        summary.steps_done,
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// Measured for the cpu preset on a 2-core machine; see README.
const DEMO_MINUTES: u32 = 16;

#[derive(Args)]
struct BenchArgs {
    /// Folder of images (JPEG, PNG, WebP), searched recursively.
    #[arg(long)]
    data: PathBuf,
    /// Starting recipe [default: cpu].
    #[arg(long, value_enum, default_value = "cpu")]
    preset: Preset,
    /// TOML file whose keys override the preset.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    arch: Option<pixpro::model::resnet::Arch>,
    #[arg(long)]
    image_size: Option<u32>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// 32, 16 or 8: dilate the last stage(s) instead of striding.
    #[arg(long)]
    output_stride: Option<u32>,
    /// Timed steps (after --warmup untimed ones).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long)]
    workers: Option<usize>,
    /// libtorch intra-op threads [default: libtorch's choice].
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Arithmetic of the networks' forward passes [default: the config's, fp32].
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// End with one JSON line (images_per_sec, peak_rss_mb, data_wait_fraction, ...).
    #[arg(long)]
    json: bool,
    /// Time the data pipeline alone over --steps batches, without building
    /// the model; with --workers 1 it measures one core.
    #[arg(long)]
    data_only: bool,
}

fn bench(args: &BenchArgs) -> Result<()> {
    let mut cfg = args.preset.config();
    if let Some(path) = &args.config {
        cfg = Config::from_toml_file(path, &cfg)?;
    }
    if let Some(a) = args.arch {
        cfg.model.arch = a;
    }
    if let Some(s) = args.image_size {
        cfg.augment.image_size = s;
    }
    if let Some(b) = args.batch_size {
        cfg.train.batch_size = b;
    }
    if let Some(o) = args.output_stride {
        cfg.model.output_stride = o;
    }
    if let Some(w) = args.workers {
        cfg.train.workers = w;
    }
    if let Some(t) = args.threads {
        cfg.train.threads = t;
    }
    if let Some(d) = args.device {
        cfg.train.device = d.into();
    }
    if let Some(p) = args.precision {
        cfg.train.precision = p;
    }
    if args.data_only {
        let r = pixpro::tools::bench::data_only(&cfg, &args.data, args.steps)?;
        println!(
            "data alone, {} px, batch {}: {:.1} two-view img/s with {} loader workers ({:.1} per worker); peak memory {:.0} MiB",
            r.image_size,
            r.batch_size,
            r.data_images_per_sec,
            r.workers,
            r.data_images_per_sec_per_worker,
            r.peak_rss_mb
        );
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        }
        return Ok(());
    }
    let r = pixpro::tools::bench::run(&cfg, &args.data, args.warmup, args.steps)?;
    println!(
        "{} {} px, batch {}, output stride {}, {}, {} ({} torch threads, {} loader workers)",
        r.arch,
        r.image_size,
        r.batch_size,
        r.output_stride,
        r.precision,
        r.device,
        r.torch_threads,
        r.workers
    );
    println!(
        "train: {:.2} img/s (median step {:.1} ms, min {:.1}, max {:.1}, {} steps); data wait {:.1}% of step time",
        r.images_per_sec,
        r.step_ms_median,
        r.step_ms_min,
        r.step_ms_max,
        r.steps,
        100.0 * r.data_wait_fraction
    );
    println!(
        "data alone: {:.1} two-view img/s ({:.1} per worker); peak memory {:.0} MiB",
        r.data_images_per_sec, r.data_images_per_sec_per_worker, r.peak_rss_mb
    );
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

#[derive(Args)]
struct PretrainArgs {
    /// Folder of images (JPEG, PNG, WebP), searched recursively.
    #[arg(long)]
    data: PathBuf,
    /// Run directory: config.toml, metrics.jsonl, checkpoints/.
    #[arg(long)]
    out: PathBuf,
    /// Starting recipe [default: paper-r50 with a CUDA device, else cpu].
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// TOML file whose keys override the preset ([model], [augment], [optim], [train]).
    #[arg(long)]
    config: Option<PathBuf>,
    /// What to learn: pixpro, pixpro+instance (adds the BYOL-style instance
    /// branch), or the baselines byol and pixcontrast [default: pixpro].
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Total optimiser steps (overrides --epochs).
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<u64>,
    /// Total epochs over the data.
    #[arg(long)]
    epochs: Option<u64>,
    /// Images per step in this process (two views each).
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Arithmetic of the networks' forward passes: fp32, or bf16 autocast
    /// (faster where the CPU or GPU has bfloat16 units) [default: fp32].
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Loader threads [default: the cores libtorch leaves free, at least 1].
    #[arg(long)]
    workers: Option<usize>,
    /// Save a checkpoint every N steps.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Continue RUN from its last checkpoint (also the default when RUN has one).
    #[arg(long)]
    resume: bool,
    /// Stop with a checkpoint once this many steps are done, before the end.
    #[arg(long)]
    stop_at: Option<u64>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

impl From<DeviceArg> for DeviceChoice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        }
    }
}

impl PretrainArgs {
    /// Applies the flags that change what is trained.
    fn apply_recipe_flags(&self, cfg: &mut Config) {
        if let Some(m) = self.method {
            cfg.model.method = m;
        }
        if let Some(s) = self.steps {
            cfg.train.steps = s;
        }
        if let Some(e) = self.epochs {
            cfg.train.epochs = e;
            cfg.train.steps = 0;
        }
        if let Some(b) = self.batch_size {
            cfg.train.batch_size = b;
        }
        if let Some(s) = self.seed {
            cfg.train.seed = s;
        }
        if let Some(p) = self.precision {
            cfg.train.precision = p;
        }
    }

    /// Applies the flags that change only how it runs; allowed on resume.
    fn apply_runtime_flags(&self, cfg: &mut Config) {
        if let Some(w) = self.workers {
            cfg.train.workers = w;
        }
        if let Some(c) = self.checkpoint_every {
            cfg.train.checkpoint_every = c;
        }
        if let Some(d) = self.device {
            cfg.train.device = d.into();
        }
    }

    fn requested_config(&self) -> Result<Config> {
        let preset = self.preset.unwrap_or(if tch::Cuda::is_available() {
            Preset::PaperR50
        } else {
            Preset::Cpu
        });
        let mut cfg = preset.config();
        if let Some(path) = &self.config {
            cfg = Config::from_toml_file(path, &cfg)?;
        }
        self.apply_recipe_flags(&mut cfg);
        self.apply_runtime_flags(&mut cfg);
        Ok(cfg)
    }

    /// On resume the run's saved config wins; flags and files given again
    /// must describe the same recipe (so the same command continues a run),
    /// and only how it runs may change.
    fn resumed_config(&self, run: &RunDir) -> Result<Config> {
        let saved = train::saved_config(run)
            .with_context(|| format!("cannot resume {}", run.root.display()))?;
        let mut cfg = match self.preset {
            Some(p) => p.config(),
            None => saved.clone(),
        };
        if let Some(path) = &self.config {
            cfg = Config::from_toml_file(path, &cfg)?;
        }
        self.apply_recipe_flags(&mut cfg);
        let t = &saved.train;
        cfg.train.workers = t.workers;
        cfg.train.prefetch = t.prefetch;
        cfg.train.threads = t.threads;
        cfg.train.checkpoint_every = t.checkpoint_every;
        cfg.train.log_every = t.log_every;
        cfg.train.device = t.device;
        if cfg != saved {
            let changed = diff_keys(&saved.to_toml(), &cfg.to_toml());
            bail!(
                "{} was started with another recipe (differs in {}); continue it without \
                 those options, or give a new --out to start a new run",
                run.root.display(),
                changed.join(", ")
            );
        }
        self.apply_runtime_flags(&mut cfg);
        Ok(cfg)
    }
}

/// Keys whose values differ between two TOML documents, as `table.key`.
fn diff_keys(a: &str, b: &str) -> Vec<String> {
    fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, String)>) {
        for (k, v) in t {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(inner) => flatten(&key, inner, out),
                other => out.push((key, other.to_string())),
            }
        }
    }
    let parse = |s: &str| {
        let mut out = Vec::new();
        if let Ok(t) = s.parse::<toml::Table>() {
            flatten("", &t, &mut out);
        }
        out
    };
    let (a, b) = (parse(a), parse(b));
    let mut keys: Vec<String> =
        b.iter().filter(|kv| !a.contains(kv)).map(|kv| kv.0.clone()).collect();
    keys.extend(a.iter().filter(|(k, _)| !b.iter().any(|kv| &kv.0 == k)).map(|kv| kv.0.clone()));
    keys.sort();
    keys.dedup();
    keys
}

/// The first words of a resumable command's last line: why it stopped
/// early, and that the same command continues, or "finished".
fn outcome(stopped_by: &Option<String>) -> String {
    match stopped_by {
        Some(why) => format!("stopped ({why}); run the same command to continue"),
        None => "finished".to_string(),
    }
}

fn pretrain(args: &PretrainArgs) -> Result<()> {
    let run = RunDir::new(&args.out);
    let resuming = run.can_resume();
    if args.resume && !resuming {
        bail!(
            "--resume: {} has no checkpoints/last.safetensors to continue from",
            run.root.display()
        );
    }
    let cfg = if resuming { args.resumed_config(&run)? } else { args.requested_config()? };
    cfg.validate()?;
    // In a data-parallel run only rank 0 reports; the others train quietly.
    let quiet = args.quiet || Launch::from_env()?.is_some_and(|l| l.rank != 0);
    if !quiet {
        eprintln!(
            "pixpro pretrain: {} {} px, batch {}, {} -> {}{}",
            cfg.model.arch,
            cfg.augment.image_size,
            cfg.train.batch_size,
            args.data.display(),
            run.root.display(),
            if resuming { " (resuming)" } else { "" }
        );
    }
    let started = Instant::now();
    let summary = train::pretrain(
        &cfg,
        &RunOptions { data: args.data.clone(), run, stop_at: args.stop_at, quiet },
    )?;
    if !quiet {
        let how = outcome(&summary.stopped_by);
        eprintln!(
            "{how}: step {}/{}, loss {}, {:.1} img/s, data wait {:.1}%, {:.0} s; outputs in {}",
            summary.steps_done,
            summary.total_steps,
            summary.final_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
            summary.images_per_sec,
            100.0 * summary.data_wait_fraction,
            started.elapsed().as_secs_f64(),
            summary.run_dir.display()
        );
    }
    Ok(())
}

extern "C" {
    fn pixpro_torch_version() -> *const std::os::raw::c_char;
}

/// The libtorch version this binary was compiled against.
fn libtorch_version() -> String {
    // SAFETY: a pointer to a static NUL-terminated string literal.
    unsafe { std::ffi::CStr::from_ptr(pixpro_torch_version()) }.to_string_lossy().into_owned()
}

fn doctor() {
    println!("pixpro {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch: {}", libtorch_version());
    println!("libtorch threads: {}", tch::get_num_threads());
    println!(
        "cpu bfloat16 units: {}",
        pixpro::model::precision::cpu_bf16_units()
            .unwrap_or("none (--precision bf16 would be emulated, slower than fp32)")
    );
    println!("cuda available: {}", tch::Cuda::is_available());
    println!("cuda devices: {}", tch::Cuda::device_count());
    println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
    println!(
        "collective engines: gloo{}",
        if collective::nccl_compiled() { ", nccl" } else { " (built without nccl)" }
    );
}

fn main() -> ExitCode {
    pixpro::train::malloc::tune_for_tensors();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Pretrain(a)) => pretrain(a),
        Some(Command::Bench(a)) => bench(a),
        Some(Command::Data(DataCommand::Tuxseg(a))) => data_tuxseg(a),
        Some(Command::Probe(a)) => probe(a),
        Some(Command::Embed(a)) => embed(a),
        Some(Command::Export(a)) => export(a),
        Some(Command::Demo(a)) => demo(a),
        Some(Command::Experiment(a)) => experiment(a),
        Some(Command::Inspect(InspectCommand::Views(a))) => inspect_views(a),
        Some(Command::Inspect(InspectCommand::Features(a))) => inspect_features(a),
        Some(Command::Doctor) => {
            doctor();
            Ok(())
        }
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

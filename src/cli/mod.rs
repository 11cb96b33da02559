//! The commands, in the order `pixpro --help` lists them: `pretrain`,
//! `bench`, `data` (tuxseg, pack), `eval`, `probe`, `finetune`, `embed`, `export`, `demo`,
//! `experiment`, `inspect` (views, features) and `doctor`, one module each
//! with its flags and a `run` that calls the library and prints what it did;
//! `args` holds the flags several commands share.
use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

mod args;
mod pretrain;
mod bench;
mod data;
mod pack;
mod eval;
mod probe;
mod finetune;
mod embed;
mod export;
mod demo;
mod experiment;
mod inspect;
mod doctor;

#[derive(Parser)]
#[command(
    name = "pixpro",
    version,
    about = "PixPro: pixel-level self-supervised pretraining of ResNet backbones",
    long_about = "PixPro: pixel-level self-supervised pretraining of ResNet backbones \
                  (Xie et al., CVPR 2021), on libtorch.\n\n\
                  Start with `pixpro pretrain --data DIR --out RUN --preset cpu`."
)]
pub struct Cli {
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
    Pretrain(pretrain::PretrainArgs),
    /// Time the data pipeline and the training step (images/s, data wait, memory).
    #[command(after_help = "Examples:\n  \
        pixpro bench --data ~/photos --preset cpu\n  \
        pixpro bench --data ~/photos --arch resnet50 --image-size 224 --batch-size 16 --json\n  \
        pixpro bench --data ~/photos --data-only --workers 1 --steps 20")]
    Bench(bench::BenchArgs),
    /// Build evaluation data sets from installed packages; pack images into tar shards.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Measure a backbone on a VOC-layout folder: probe, retrieval, correspondence, fine-tuning.
    #[command(after_help = "Examples:\n  \
        pixpro eval --checkpoint CKPT --protocol probe,retrieval,correspondence --voc data/tuxseg/voc --out runs/cpu/eval\n  \
        pixpro eval --weights resnet18.pth --protocol finetune,finetune:0.1 --voc data/tuxseg/voc --out runs/tv/eval\n  \
        pixpro eval --random-init --output-stride 16 --protocol retrieval --voc data/tuxseg/voc --out runs/random/eval\n\n\
        Each protocol writes OUT/PROTOCOL/eval.json: protocol, weights, arch, output_stride, data, recipe,\n\
        score_name, score, per_class_iou, wall_s and the protocol's details. `pixpro probe` and\n\
        `pixpro finetune` run one protocol each, with its flags.")]
    Eval(eval::EvalArgs),
    /// Dense linear probe: mIoU of a frozen backbone on a Pascal VOC-layout folder.
    #[command(after_help = "Examples:\n  \
        pixpro probe --checkpoint runs/cpu/checkpoints/last.safetensors --voc data/tuxseg/voc --out runs/cpu/probe\n  \
        pixpro probe --random-init --arch resnet18 --output-stride 16 --voc data/tuxseg/voc --out runs/random-probe\n  \
        pixpro probe --checkpoint CKPT --voc ~/VOCdevkit/VOC2012 --out probe-voc")]
    Probe(probe::ProbeArgs),
    /// Fine-tune the whole backbone with an FCN head on a VOC-layout folder; mIoU on its val split.
    #[command(after_help = "Examples:\n  \
        pixpro finetune --checkpoint CKPT --voc data/tuxseg/voc --out runs/cpu/finetune\n  \
        pixpro finetune --weights resnet18.pth --voc data/tuxseg/voc --out runs/tv/ft10 --train-fraction 0.1\n  \
        pixpro finetune --random-init --arch resnet18 --voc data/tuxseg/voc --out runs/random/finetune")]
    Finetune(finetune::FinetuneArgs),
    /// Write the backbone's dense feature map of an image (or of every image in a folder).
    #[command(after_help = "Examples:\n  \
        pixpro embed --checkpoint CKPT --image photo.jpg --out photo.safetensors\n  \
        pixpro embed --checkpoint CKPT --image ~/photos --out ~/photo-features")]
    Embed(embed::EmbedArgs),
    /// Export the pretrained encoder for torchvision, timm, mmdet/mmseg or Detectron2.
    #[command(after_help = "Examples:\n  \
        pixpro export --checkpoint CKPT --format torchvision --out resnet.safetensors\n  \
        pixpro export --checkpoint CKPT --format pth --out resnet.pth\n  \
        pixpro export --checkpoint CKPT --format mmdet --out resnet-mmdet.pth\n  \
        pixpro export --checkpoint CKPT --format detectron2 --out pixpro_d2.pkl")]
    Export(export::ExportArgs),
    /// The whole loop on real photos: build TuxSeg, pretrain (cpu preset), probe against random init.
    #[command(after_help = "Examples:\n  \
        pixpro demo                               # runs/demo; run again to continue\n  \
        pixpro demo --out runs/demo-s1 --data runs/demo/tuxseg --seed 1")]
    Demo(demo::DemoArgs),
    /// Run a grid of pretrain + probe jobs from a plan; run again to continue it.
    #[command(after_help = "Examples:\n  \
        pixpro experiment --plan docs/experiments/tuxseg-cpu.toml --out runs/grid --dry-run\n  \
        pixpro experiment --plan docs/experiments/tuxseg-cpu.toml --out runs/grid --results docs/results.json\n  \
        pixpro experiment --plan PLAN.toml --out runs/grid --max-jobs 1   # one job, then stop")]
    Experiment(experiment::ExperimentArgs),
    /// Pictures: the two views and their positive pairs, or what a checkpoint's features show.
    #[command(subcommand)]
    Inspect(inspect::InspectCommand),
    /// Print libtorch, CUDA and thread facts for this machine.
    #[command(after_help = "Example:\n  pixpro doctor    # is CUDA visible to this binary?")]
    Doctor,
}

impl Cli {
    /// Runs the command; with none, prints the help.
    pub fn run(&self) -> Result<()> {
        let Some(command) = &self.command else {
            let _ = Cli::command().print_help();
            return Ok(());
        };
        match command {
            Command::Pretrain(a) => pretrain::run(a),
            Command::Bench(a) => bench::run(a),
            Command::Data(c) => data::run(c),
            Command::Eval(a) => eval::run(a),
            Command::Probe(a) => probe::run(a),
            Command::Finetune(a) => finetune::run(a),
            Command::Embed(a) => embed::run(a),
            Command::Export(a) => export::run(a),
            Command::Demo(a) => demo::run(a),
            Command::Experiment(a) => experiment::run(a),
            Command::Inspect(c) => inspect::run(c),
            Command::Doctor => {
                doctor::run();
                Ok(())
            }
        }
    }
}

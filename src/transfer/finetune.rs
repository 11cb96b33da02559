//! Fine-tuning evaluation, the paper's own transfer protocol scaled down to
//! a CPU: the whole backbone trained with a small FCN head on the VOC-layout
//! train split, scored on val as the probe is.
//!
//! The recipe follows the FCN that MoCo and PixPro fine-tune on Cityscapes
//! (mmsegmentation's `fcn-d6_r50-d16`). The backbone runs at output stride
//! 16 (layer4 dilated; the caller builds it so). The head: two 3x3
//! conv-BN-ReLU of `head_channels` (dilation `head_dilation`), then a 1x1
//! classifier; convs He-initialised, classifier N(0, 0.01) with bias 0, all
//! seeded. SGD with momentum and weight decay over every parameter, the
//! learning rate poly-decayed: lr * (1 - step / steps)^0.9.
//!
//! Each step takes `batch_size` images from seeded shuffled passes over the
//! train subset. Each image is resized to a square of side image_size * s, s
//! uniform in [scale_min, scale_max] (bilinear; masks nearest), cropped to
//! crop_size at a random place (where it is smaller, the crop is padded at
//! the bottom and right with the mean colour and label 255), mirrored with
//! probability 1/2 and normalised with the ImageNet mean/std. The loss is
//! cross-entropy (255 ignored) on logits upsampled bilinearly to the crop;
//! BatchNorm of backbone and head is in train mode.
//!
//! Val: BatchNorm in eval mode, each image resized to image_size x
//! image_size, logits upsampled bilinearly to the mask's original size,
//! argmax; mIoU over the classes with a non-empty union, background included.
//!
//! `train_fraction` picks a seeded subset of the train split
//! ([`seeded_subset`]). The run is `steps` steps whatever the fraction, so
//! fractions compare amounts of labelled data, not of compute.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::data::views::{IMAGENET_MEAN, IMAGENET_STD};
use crate::model::resnet::{batch_norm2d, BatchNorm2d, ResNet};
use crate::transfer::backbone::Backbone;
use crate::transfer::probe::{self, miou_from_confusion};
use crate::transfer::voc::{seeded_subset, train_val, VocSample, VocSplit, IGNORE};
use crate::{Error, Result};

/// The knobs of the recipe above.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Side of the square val images are resized to, and the base size the
    /// training scales multiply.
    pub image_size: u32,
    /// Side of the square training crops.
    pub crop_size: u32,
    /// Training images are resized to image_size * s, s uniform in
    /// [scale_min, scale_max].
    pub scale_min: f64,
    pub scale_max: f64,
    /// SGD steps, the same for every `train_fraction`.
    pub steps: usize,
    pub batch_size: usize,
    /// Learning rate at step 0, poly-decayed to 0 at `steps`.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Width of the head's two 3x3 convs.
    pub head_channels: usize,
    /// Dilation of the head's two 3x3 convs.
    pub head_dilation: usize,
    /// Share of the train split trained on, in (0, 1].
    pub train_fraction: f64,
    /// Seeds the train subset, the batch order, the augmentation and the
    /// head's initialisation.
    pub seed: u64,
}

impl Default for FinetuneConfig {
    /// mmsegmentation's Cityscapes FCN schedule (SGD lr 0.01, momentum 0.9,
    /// weight decay 5e-4, scales 0.5-2, crops about 3/4 of the base size)
    /// shrunk to a CPU: 160-px TuxSeg scenes, 128-px crops, batch 8, 300
    /// steps (8 passes over 300 train scenes; with ResNet-18, 5 CPU-minutes,
    /// 7.5 minutes on one thread of a busy 2-core machine). The head is half
    /// MoCo's 256 channels, as ResNet-18's C5 has a quarter of ResNet-50's;
    /// its dilation is 1, not 6: 6 spans 13x13 cells, more than the 8x8 C5
    /// map of a 128-px crop, where on Cityscapes' 769-px crops it spans a
    /// quarter of a 49x49 map.
    fn default() -> Self {
        FinetuneConfig {
            image_size: 160,
            crop_size: 128,
            scale_min: 0.5,
            scale_max: 2.0,
            steps: 300,
            batch_size: 8,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            head_channels: 128,
            head_dilation: 1,
            train_fraction: 1.0,
            seed: 0,
        }
    }
}

impl FinetuneConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Err(Error::config(format!("finetune.{key}"), reason));
        // 16 px is one cell of the stride-16 C5 map.
        for (key, side) in [("image_size", self.image_size), ("crop_size", self.crop_size)] {
            if !(16..=4096).contains(&side) {
                return bad(key, format!("{side} not in 16..=4096"));
            }
        }
        if !(self.scale_min.is_finite() && self.scale_min > 0.0) {
            return bad("scale_min", format!("{} is not a positive number", self.scale_min));
        }
        if !(self.scale_max.is_finite() && self.scale_max >= self.scale_min) {
            return bad(
                "scale_max",
                format!("{} is not a number at least scale_min {}", self.scale_max, self.scale_min),
            );
        }
        let largest = f64::from(self.image_size) * self.scale_max;
        if largest > 8192.0 {
            return bad(
                "scale_max",
                format!("{} resizes training images to {largest} px, over 8192", self.scale_max),
            );
        }
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad(
                "batch_size",
                format!(
                    "{} is below 2: BatchNorm in train mode needs more than one value per channel",
                    self.batch_size
                ),
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("{} is not a positive number", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", format!("{} not in [0, 1)", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", format!("{} is not a number >= 0", self.weight_decay));
        }
        if !(1..=4096).contains(&self.head_channels) {
            return bad("head_channels", format!("{} not in 1..=4096", self.head_channels));
        }
        if !(1..=64).contains(&self.head_dilation) {
            return bad("head_dilation", format!("{} not in 1..=64", self.head_dilation));
        }
        if !(self.train_fraction > 0.0 && self.train_fraction <= 1.0) {
            return bad("train_fraction", format!("{} not in (0, 1]", self.train_fraction));
        }
        Ok(())
    }
}

/// What a fine-tuning run reports; `confusion[truth][prediction]` counts
/// val pixels.
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneResult {
    /// Mean IoU over the classes with a non-empty union (background included).
    pub miou: f64,
    /// IoU by class name; `None` for a class neither labelled nor predicted in val.
    pub per_class_iou: BTreeMap<String, Option<f64>>,
    pub pixel_accuracy: f64,
    /// The recipe in words, so a reported number carries its method.
    pub recipe: String,
    pub config: FinetuneConfig,
    /// Class names in id order (the confusion matrix's order).
    pub classes: Vec<String>,
    pub confusion: Vec<Vec<u64>>,
    /// Train images trained on: [`seeded_subset`]'s count.
    pub train_images: usize,
    pub val_images: usize,
    pub steps: usize,
    /// Mean training loss over the last tenth of the steps (at least one).
    pub final_loss: f64,
    pub seconds: f64,
    /// Predicted masks of the first [`probe::EXAMPLES`] val images, `(id,
    /// classes at the mask's size)`, for pictures.
    #[serde(skip)]
    pub examples: Vec<(String, Vec<u8>)>,
}

/// Fine-tunes `backbone` with the FCN head on the VOC-layout folder `voc`
/// (splits `train` and `val`, classes from [`class_names`]) and scores it on
/// val. With `progress`, a line to stderr every tenth of the steps.
pub fn finetune(
    backbone: Backbone,
    voc: &Path,
    cfg: &FinetuneConfig,
    progress: bool,
) -> Result<FinetuneResult> {
    cfg.validate()?;
    let start = Instant::now();
    let (classes, train, val) = train_val(voc)?;
    let k = classes.len();
    let subset = seeded_subset(train.len(), cfg.train_fraction, cfg.seed);
    let (device, c5, os) =
        (backbone.device(), backbone.arch.out_channels(), backbone.output_stride);
    let (vs, net) = backbone.into_trainable();
    tch::manual_seed(cfg.seed as i64);
    let head = Head::new(&(vs.root() / "head"), c5, k as i64, cfg);
    let model = Segmenter { net, head };
    let final_loss = model.train(&vs, &train, &subset, cfg, progress)?;

    let (logits, masks) = probe::extract(
        &|x| model.logits(x, false),
        &val,
        cfg.image_size,
        cfg.batch_size,
        device,
        false,
    )?;
    let (confusion, examples) = probe::score(&logits, &masks, val.ids(), k)?;
    if confusion.iter().flatten().sum::<u64>() == 0 {
        return Err(Error::data(voc, "split `val` has no labelled pixel"));
    }
    let scores = miou_from_confusion(&confusion);
    Ok(FinetuneResult {
        miou: scores.miou,
        per_class_iou: classes.iter().cloned().zip(scores.per_class_iou).collect(),
        pixel_accuracy: scores.pixel_accuracy,
        recipe: recipe(cfg, os),
        config: cfg.clone(),
        classes,
        confusion,
        train_images: subset.len(),
        val_images: val.len(),
        steps: cfg.steps,
        final_loss,
        seconds: start.elapsed().as_secs_f64(),
        examples,
    })
}

/// Fine-tunes as [`finetune`] and writes what a user looks at into `out`
/// (created first, so a bad folder fails before minutes of training):
/// finetune.json (the result, its recipe and which backbone it was),
/// confusion.png and `prediction-ID.png` overlays of the first val images.
pub fn finetune_into(
    backbone: Backbone,
    voc: &Path,
    out: &Path,
    cfg: &FinetuneConfig,
    progress: bool,
) -> Result<FinetuneResult> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let described = probe::backbone_json(&backbone);
    let result = finetune(backbone, voc, cfg, progress)?;
    probe::write_json(&out.join("finetune.json"), &result, described)?;
    probe::write_pictures(voc, out, &result.classes, &result.confusion, &result.examples)?;
    Ok(result)
}

/// The poly schedule: `lr` at step 0, lr * (1 - step / total)^0.9, 0 at `total`.
pub fn poly_lr(lr: f64, step: usize, total: usize) -> f64 {
    let progress = (step as f64 / total.max(1) as f64).min(1.0);
    lr * (1.0 - progress).powf(0.9)
}

/// The FCN head on C5: two 3x3 conv-BN-ReLU and a 1x1 classifier.
#[derive(Debug)]
struct Head {
    convs: Vec<(nn::Conv2D, BatchNorm2d)>,
    classifier: nn::Conv2D,
}

impl Head {
    fn new(p: &nn::Path, c_in: i64, k: i64, cfg: &FinetuneConfig) -> Head {
        let (width, dilation) = (cfg.head_channels as i64, cfg.head_dilation as i64);
        // He (fan-out) as the backbone's convs; no bias, BatchNorm follows.
        let conv_cfg = nn::ConvConfig {
            padding: dilation,
            dilation,
            bias: false,
            ws_init: nn::Init::Randn { mean: 0.0, stdev: (2.0 / (9 * width) as f64).sqrt() },
            ..Default::default()
        };
        let convs = [c_in, width]
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let conv = nn::conv2d(p / format!("conv{i}"), c, width, 3, conv_cfg);
                (conv, batch_norm2d(&(p / format!("bn{i}")), width, 1.0))
            })
            .collect();
        let classifier_cfg = nn::ConvConfig {
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 },
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let classifier = nn::conv2d(p / "classifier", width, k, 1, classifier_cfg);
        Head { convs, classifier }
    }
}

impl ModuleT for Head {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        for (conv, bn) in &self.convs {
            ys = ys.apply(conv).apply_t(bn, train).relu();
        }
        ys.apply(&self.classifier)
    }
}

/// Backbone and head: a normalised [B, 3, H, W] batch to [B, K, H/16, W/16]
/// logits.
struct Segmenter {
    net: ResNet,
    head: Head,
}

impl Segmenter {
    fn logits(&self, x: &Tensor, train: bool) -> Tensor {
        self.head.forward_t(&self.net.forward_t(x, train), train)
    }

    /// `cfg.steps` SGD steps on `subset` of `split`; returns the mean loss of
    /// the last tenth of them.
    fn train(
        &self,
        vs: &nn::VarStore,
        split: &VocSplit,
        subset: &[usize],
        cfg: &FinetuneConfig,
        progress: bool,
    ) -> Result<f64> {
        let sgd = nn::Sgd {
            momentum: cfg.momentum,
            dampening: 0.0,
            wd: cfg.weight_decay,
            nesterov: false,
        };
        let mut opt = sgd.build(vs, cfg.lr)?;
        // Stream 1: the batches must not replay the shuffle that chose the subset.
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(1);
        let start = Instant::now();
        let window = (cfg.steps / 10).max(1);
        let c = i64::from(cfg.crop_size);
        let mut queue: Vec<usize> = Vec::new();
        let mut loss_sum = 0.0;
        for step in 0..cfg.steps {
            let mut ids = Vec::with_capacity(cfg.batch_size);
            while ids.len() < cfg.batch_size {
                if queue.is_empty() {
                    queue = subset.to_vec();
                    queue.shuffle(&mut rng);
                }
                ids.extend(queue.pop());
            }
            let crops: Vec<Crop> = ids.iter().map(|_| Crop::draw(&mut rng, cfg)).collect();
            let (x, y) = batch(split, &ids, &crops, cfg.crop_size, vs.device())?;
            let lr = poly_lr(cfg.lr, step, cfg.steps);
            opt.set_lr(lr);
            let logits = self.logits(&x, true).f_upsample_bilinear2d([c, c], false, None, None)?;
            let loss = probe::masked_cross_entropy(&logits, &y)?;
            opt.backward_step(&loss);
            let value = f64::try_from(&loss)?;
            if !value.is_finite() {
                return Err(Error::config(
                    "finetune.lr",
                    format!("the loss was {value} at step {step}; try a lower learning rate"),
                ));
            }
            if step + window >= cfg.steps {
                loss_sum += value;
            }
            if progress && ((step + 1) % window == 0 || step + 1 == cfg.steps) {
                eprintln!(
                    "finetune step {}/{}  loss {value:.4}  lr {lr:.5}  {:.0} s",
                    step + 1,
                    cfg.steps,
                    start.elapsed().as_secs_f64()
                );
            }
        }
        Ok(loss_sum / window as f64)
    }
}

/// Where one training crop comes from: the side its image is resized to,
/// the crop's top-left corner there, and whether it is mirrored.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Crop {
    side: u32,
    x0: u32,
    y0: u32,
    flip: bool,
}

impl Crop {
    fn draw(rng: &mut ChaCha8Rng, cfg: &FinetuneConfig) -> Crop {
        let scale = rng.random_range(cfg.scale_min..=cfg.scale_max);
        let side = ((f64::from(cfg.image_size) * scale).round() as u32).max(1);
        let slack = side.saturating_sub(cfg.crop_size);
        let (x0, y0) = (rng.random_range(0..=slack), rng.random_range(0..=slack));
        Crop { side, x0, y0, flip: rng.random_bool(0.5) }
    }
}

/// A `c` x `c` crop of `sample`: normalised pixels channel-major [3, c, c]
/// and labels [c, c]. Past the resized image's edge, pixels are 0 (the mean
/// colour, once normalised) and labels [`IGNORE`].
fn augment(sample: &VocSample, crop: &Crop, c: u32) -> (Vec<f32>, Vec<u8>) {
    let (w, h) = sample.image.dimensions();
    let image = probe::resize_image(&sample.image, crop.side);
    let mask = probe::resize_mask_nearest(&sample.mask, w, h, crop.side);
    let (raw, side, c) = (image.as_raw(), crop.side as usize, c as usize);
    // Rows and columns of the crop that fall inside the resized image; the
    // mirror flips them only, so padding stays at the bottom and right.
    let valid = side.min(c);
    let mut pixels = vec![0f32; 3 * c * c];
    let mut labels = vec![IGNORE; c * c];
    for y in 0..valid {
        let row = (crop.y0 as usize + y) * side;
        for x in 0..valid {
            let sx = crop.x0 as usize + if crop.flip { valid - 1 - x } else { x };
            let src = row + sx;
            labels[y * c + x] = mask[src];
            for ch in 0..3 {
                let v = f32::from(raw[3 * src + ch]) / 255.0;
                pixels[(ch * c + y) * c + x] = (v - IMAGENET_MEAN[ch]) / IMAGENET_STD[ch];
            }
        }
    }
    (pixels, labels)
}

/// Images `ids` of `split` cropped as `crops`: [B, 3, c, c] floats and
/// [B, c, c] int64 labels on `device`.
fn batch(
    split: &VocSplit,
    ids: &[usize],
    crops: &[Crop],
    c: u32,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    // Decoding and resizing are per image, so parallel; the crops were drawn
    // beforehand, so the order of the work does not change them.
    let parts: Vec<(Vec<f32>, Vec<u8>)> = ids
        .par_iter()
        .zip(crops)
        .map(|(&i, crop)| Ok(augment(&split.get(i)?, crop, c)))
        .collect::<Result<_>>()?;
    let (b, c) = (ids.len() as i64, i64::from(c));
    let pixels: Vec<f32> = parts.iter().flat_map(|(p, _)| p.iter().copied()).collect();
    let labels: Vec<u8> = parts.iter().flat_map(|(_, l)| l.iter().copied()).collect();
    let x = Tensor::from_slice(&pixels).view([b, 3, c, c]).to_device(device);
    let y = Tensor::from_slice(&labels).view([b, c, c]).to_kind(Kind::Int64).to_device(device);
    Ok((x, y))
}

fn recipe(cfg: &FinetuneConfig, output_stride: u32) -> String {
    let (s, c) = (cfg.image_size, cfg.crop_size);
    format!(
        "whole backbone (output stride {output_stride}) fine-tuned with an FCN head: two 3x3 \
         conv-BN-ReLU of {} channels (dilation {}) and a 1x1 classifier, seed {}; SGD momentum {}, \
         weight decay {}, lr {} poly (power 0.9) to 0 over {} steps of batch {}; train images: \
         {} of the train split (seed {}), each resized to {s} x [{}, {}] (bilinear, masks nearest), \
         random {c}x{c} crop (padding: mean colour, label 255), horizontal flip, ImageNet \
         mean/std; cross-entropy (ignore 255) on logits upsampled bilinearly to the crop; \
         BatchNorm in train mode; val: images resized to {s}x{s}, BatchNorm in eval mode, logits \
         upsampled bilinearly to each mask's original size; mIoU over classes with non-empty \
         union, background included",
        cfg.head_channels,
        cfg.head_dilation,
        cfg.seed,
        cfg.momentum,
        cfg.weight_decay,
        cfg.lr,
        cfg.steps,
        cfg.batch_size,
        cfg.train_fraction,
        cfg.seed,
        cfg.scale_min,
        cfg.scale_max,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resnet::Arch;
    use crate::transfer::voc::tests::write_voc;

    const SIDE: u32 = 32;
    const COLOURS: [[u8; 3]; 3] = [[128, 128, 128], [220, 30, 30], [30, 200, 40]];

    /// Images of 2x2 cells of 16 px, each cell one class in its own solid
    /// colour: one cell of the stride-16 map each, so a perfect score is
    /// within reach of a network that has learnt the colours. Every C5 cell
    /// sees the whole image, so with 16 train images the network learnt
    /// them by heart (val mIoU 0.71); 64 make it learn the colours.
    fn grid_voc(root: &Path, n_train: usize, n_val: usize, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ids: Vec<String> = (0..n_train + n_val).map(|i| format!("img{i:03}")).collect();
        let samples: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let cells: [u8; 4] = std::array::from_fn(|_| rng.random_range(0..3));
                // Pixel p = (row, column) = (p / SIDE, p % SIDE) lies in cell
                // (row / 16, column / 16).
                let cell = |p: u32| cells[(p / SIDE / 16 * 2 + p % SIDE / 16) as usize];
                let mask: Vec<u8> = (0..SIDE * SIDE).map(cell).collect();
                let rgb = mask.iter().map(|&c| COLOURS[usize::from(c)]).collect();
                (id.as_str(), if i < n_train { "train" } else { "val" }, rgb, mask)
            })
            .collect();
        write_voc(root, SIDE, SIDE, &samples);
        std::fs::write(root.join("classes.txt"), "background\nred\ngreen\n").unwrap();
    }

    fn tiny() -> FinetuneConfig {
        FinetuneConfig {
            image_size: SIDE,
            crop_size: SIDE,
            scale_min: 0.75,
            scale_max: 1.5,
            steps: 60,
            batch_size: 8,
            lr: 0.1,
            head_channels: 32,
            ..Default::default()
        }
    }

    fn random_backbone() -> Backbone {
        Backbone::random(Arch::ResNet18, 16, 0, Device::Cpu).unwrap()
    }

    /// Runs `f` on one libtorch thread, then restores the count: with two
    /// threads on a 2-core machine that runs anything else, they wait on
    /// each other at every one of the many small ops (the learning test took
    /// 114 s on two threads, 13 s on one).
    fn on_one_thread<T>(f: impl FnOnce() -> T) -> T {
        struct Restore(i32);
        impl Drop for Restore {
            fn drop(&mut self) {
                tch::set_num_threads(self.0);
            }
        }
        let _restore = Restore(tch::get_num_threads());
        tch::set_num_threads(1);
        f()
    }

    #[test]
    fn finetuning_learns_colour_coded_cells() {
        let dir = tempfile::tempdir().unwrap();
        grid_voc(dir.path(), 64, 8, 1);
        let result = on_one_thread(|| finetune(random_backbone(), dir.path(), &tiny(), false));
        let result = result.unwrap();
        assert!(result.miou > 0.8, "mIoU {} {:?}", result.miou, result.per_class_iou);
        assert_eq!((result.train_images, result.val_images, result.steps), (64, 8, 60));
        assert_eq!(result.confusion.iter().flatten().sum::<u64>(), 8 * u64::from(SIDE * SIDE));
        assert!(result.final_loss < 0.5, "final loss {}", result.final_loss);
    }

    #[test]
    fn a_seed_gives_the_same_run_and_report() {
        let dir = tempfile::tempdir().unwrap();
        grid_voc(dir.path(), 6, 2, 2);
        let out = dir.path().join("out");
        let cfg = FinetuneConfig { steps: 3, train_fraction: 0.5, ..tiny() };
        let (a, b) = on_one_thread(|| {
            let a = finetune_into(random_backbone(), dir.path(), &out, &cfg, false).unwrap();
            (a, finetune(random_backbone(), dir.path(), &cfg, false).unwrap())
        });
        assert_eq!((a.confusion, a.final_loss), (b.confusion, b.final_loss));
        assert_eq!(a.train_images, 3);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("finetune.json")).unwrap())
                .unwrap();
        assert_eq!(json["train_images"], 3);
        assert_eq!(json["backbone"]["output_stride"], 16);
        assert!(json["recipe"].as_str().unwrap().contains("poly"), "{json}");
        assert!(out.join("confusion.png").is_file());
        for id in ["img006", "img007"] {
            assert!(out.join(format!("prediction-{id}.png")).is_file(), "{id}");
        }
    }

    #[test]
    fn the_backbone_is_handed_over_trainable() {
        let frozen = random_backbone();
        assert!(frozen.named_tensors().iter().all(|(_, t)| !t.requires_grad()));
        let (vs, _) = frozen.into_trainable();
        let trainable = vs.trainable_variables();
        // conv1 and bn1's weight and bias; each of 8 blocks: 2 convs, 2 BNs'
        // weight and bias; 3 downsamples: a conv, a BN's weight and bias.
        assert_eq!(trainable.len(), 3 + 8 * 6 + 3 * 3);
        assert!(trainable.iter().all(Tensor::requires_grad));
    }

    #[test]
    fn bad_config_values_are_named() {
        assert!(FinetuneConfig::default().validate().is_ok());
        let cases = [
            ("finetune.crop_size", FinetuneConfig { crop_size: 8, ..Default::default() }),
            ("finetune.scale_min", FinetuneConfig { scale_min: 0.0, ..Default::default() }),
            ("finetune.scale_max", FinetuneConfig { scale_max: 0.4, ..Default::default() }),
            ("finetune.steps", FinetuneConfig { steps: 0, ..Default::default() }),
            ("finetune.batch_size", FinetuneConfig { batch_size: 1, ..Default::default() }),
            ("finetune.lr", FinetuneConfig { lr: f64::NAN, ..Default::default() }),
            ("finetune.momentum", FinetuneConfig { momentum: 1.0, ..Default::default() }),
            ("finetune.weight_decay", FinetuneConfig { weight_decay: -1.0, ..Default::default() }),
            ("finetune.head_channels", FinetuneConfig { head_channels: 0, ..Default::default() }),
            (
                "finetune.train_fraction",
                FinetuneConfig { train_fraction: 0.0, ..Default::default() },
            ),
            (
                "finetune.train_fraction",
                FinetuneConfig { train_fraction: 1.5, ..Default::default() },
            ),
        ];
        for (key, cfg) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let parsed: FinetuneConfig = serde_json::from_str(r#"{"steps": 3}"#).unwrap();
        assert_eq!(parsed, FinetuneConfig { steps: 3, ..Default::default() });
        assert!(serde_json::from_str::<FinetuneConfig>(r#"{"step": 3}"#).is_err());
    }

    #[test]
    fn poly_schedule_starts_at_lr_and_ends_at_zero() {
        assert_eq!(poly_lr(0.01, 0, 100), 0.01);
        let mid = poly_lr(0.01, 50, 100);
        assert!((mid - 0.01 * 0.5f64.powf(0.9)).abs() < 1e-15, "{mid}");
        assert!(mid > 0.005, "power 0.9 decays slower than linear: {mid}");
        assert_eq!(poly_lr(0.01, 100, 100), 0.0);
        assert!(poly_lr(0.01, 99, 100) > 0.0);
    }

    #[test]
    fn crops_keep_pixels_and_labels_aligned() {
        // A 4x4 image whose red channel and label both hold the column index.
        let image = image::RgbImage::from_fn(4, 4, |x, _| image::Rgb([x as u8 * 60, 0, 0]));
        let mask: Vec<u8> = (0..16).map(|p| (p % 4) as u8).collect();
        let sample = VocSample { id: "a".into(), image, mask };
        let red = |pixels: &[f32], i: usize| {
            ((pixels[i] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255.0).round() as u8
        };
        let mirrored = Crop { side: 4, x0: 1, y0: 2, flip: true };
        let (pixels, labels) = augment(&sample, &mirrored, 2);
        assert_eq!(labels, [2, 1, 2, 1]);
        assert_eq!((0..4).map(|i| red(&pixels, i)).collect::<Vec<_>>(), [120, 60, 120, 60]);
        // Smaller than the crop: the image sits at the top left, mirrored
        // within itself, and the rest is padding.
        let padded = Crop { side: 4, x0: 0, y0: 0, flip: true };
        let (pixels, labels) = augment(&sample, &padded, 6);
        assert_eq!(&labels[..6], [3, 2, 1, 0, IGNORE, IGNORE]);
        assert!(labels[24..].iter().all(|&l| l == IGNORE));
        assert_eq!(red(&pixels, 0), 180);
        assert_eq!(pixels[4], 0.0);
    }
}

//! The dense linear probe (data.md, "The measure"): a frozen backbone's
//! feature map, a 1x1 convolution trained on the VOC-layout train split,
//! mIoU / per-class IoU / pixel accuracy on the val split.
//!
//! The recipe is fixed so that numbers from different backbones compare:
//! every image is resized to `image_size` x `image_size` (bilinear; masks
//! nearest), normalised with the ImageNet mean/std, passed once through the
//! backbone (features are cached: the backbone is frozen); features are
//! standardised per channel with train-split statistics (an affine map, so
//! the classifier stays linear in the raw features, but one learning rate
//! then suits every backbone); the 1x1 conv starts at zero and is trained
//! with Adam, cosine-decayed learning rate, cross-entropy on logits upsampled
//! bilinearly to the resized label (255 ignored). Val logits are upsampled to
//! each mask's original size, so val is scored at full label resolution.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use image::imageops::FilterType;
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::data::views::{IMAGENET_MEAN, IMAGENET_STD};
use crate::files::write_atomically;
use crate::transfer::voc::{class_names, VocSample, VocSplit, IGNORE};
use crate::{Error, Result};

/// The few knobs of the probe; everything else is the fixed recipe above.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Side of the square every image is resized to before the backbone.
    pub image_size: u32,
    pub epochs: usize,
    /// Peak Adam learning rate, cosine-decayed to 0 over all steps.
    pub lr: f64,
    /// Images per step, for both feature extraction and training.
    pub batch_size: usize,
    /// Seeds the order of training batches (the classifier starts at zero).
    pub seed: u64,
}

impl Default for ProbeConfig {
    /// Small enough for a CPU: 224 px gives a 7x7 C5 map at stride 32.
    fn default() -> Self {
        ProbeConfig { image_size: 224, epochs: 30, lr: 1e-2, batch_size: 16, seed: 0 }
    }
}

impl ProbeConfig {
    pub fn validate(&self) -> Result<()> {
        if !(8..=4096).contains(&self.image_size) {
            return Err(Error::config(
                "probe.image_size",
                format!("{} not in 8..=4096", self.image_size),
            ));
        }
        if self.epochs == 0 {
            return Err(Error::config("probe.epochs", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config("probe.lr", format!("{} is not a positive number", self.lr)));
        }
        if self.batch_size == 0 {
            return Err(Error::config("probe.batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

/// What a probe run reports; `confusion[truth][prediction]` counts val pixels.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// Mean IoU over the classes with a non-empty union (background included).
    pub miou: f64,
    /// IoU by class name; `None` for a class neither labelled nor predicted in val.
    pub per_class_iou: BTreeMap<String, Option<f64>>,
    pub pixel_accuracy: f64,
    /// The fixed recipe in words, so a reported number carries its method.
    pub recipe: String,
    pub config: ProbeConfig,
    /// Class names in id order (the confusion matrix's order).
    pub classes: Vec<String>,
    pub confusion: Vec<Vec<u64>>,
    pub train_images: usize,
    pub val_images: usize,
    /// Backbone output per image, [C, h, w].
    pub feature_shape: [i64; 3],
    pub seconds: f64,
    /// Predicted masks of the first [`EXAMPLES`] val images, `(id, classes
    /// at the mask's size)`, for pictures.
    #[serde(skip)]
    pub examples: Vec<(String, Vec<u8>)>,
}

/// Val predictions kept in a [`ProbeResult`] for pictures.
pub const EXAMPLES: usize = 4;

/// IoU scores read off a confusion matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub miou: f64,
    /// `None` where the class's union is empty (absent from truth and prediction).
    pub per_class_iou: Vec<Option<f64>>,
    pub pixel_accuracy: f64,
}

/// Adds `labels` / `preds` pixel pairs to `confusion[label][pred]`; pixels
/// whose label is not a class id (255 = ignore) count nowhere.
pub fn accumulate_confusion(confusion: &mut [Vec<u64>], labels: &[u8], preds: &[u8]) {
    let k = confusion.len();
    for (&l, &p) in labels.iter().zip(preds) {
        let (l, p) = (usize::from(l), usize::from(p));
        if l < k && p < k {
            confusion[l][p] += 1;
        }
    }
}

/// The `num_classes` x `num_classes` confusion matrix of one label/prediction pair.
pub fn confusion_matrix(labels: &[u8], preds: &[u8], num_classes: usize) -> Vec<Vec<u64>> {
    let mut confusion = vec![vec![0; num_classes]; num_classes];
    accumulate_confusion(&mut confusion, labels, preds);
    confusion
}

/// IoU_c = tp / (truth_c + predicted_c - tp); mIoU averages the classes with
/// a non-empty union. NaN throughout for a matrix that counts no pixel.
pub fn miou_from_confusion(confusion: &[Vec<u64>]) -> Scores {
    let k = confusion.len();
    let truth: Vec<u64> = confusion.iter().map(|row| row.iter().sum()).collect();
    let predicted: Vec<u64> = (0..k).map(|c| confusion.iter().map(|row| row[c]).sum()).collect();
    let per_class_iou: Vec<Option<f64>> = (0..k)
        .map(|c| {
            let tp = confusion[c][c];
            let union = truth[c] + predicted[c] - tp;
            (union > 0).then(|| tp as f64 / union as f64)
        })
        .collect();
    let present: Vec<f64> = per_class_iou.iter().flatten().copied().collect();
    let miou = present.iter().sum::<f64>() / present.len() as f64;
    let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
    let pixel_accuracy = correct as f64 / truth.iter().sum::<u64>() as f64;
    Scores { miou, per_class_iou, pixel_accuracy }
}

/// Probes the VOC-layout folder `root` (splits `train` and `val`, classes
/// from [`class_names`]).
pub fn run_probe(
    backbone: &dyn Fn(&Tensor) -> Tensor,
    root: &Path,
    config: &ProbeConfig,
    device: Device,
) -> Result<ProbeResult> {
    let classes = class_names(root)?;
    let train = VocSplit::open(root, "train", classes.len())?;
    let val = VocSplit::open(root, "val", classes.len())?;
    run_probe_on(backbone, &train, &val, &classes, config, device)
}

/// Probes `backbone` on `voc` (as [`run_probe`]) and writes what a user
/// looks at into `out`: probe.json (the result and which backbone it was),
/// confusion.png and `prediction-ID.png` overlays of the first val images.
pub fn probe_into(
    backbone: &crate::transfer::backbone::Backbone,
    voc: &Path,
    out: &Path,
    cfg: &ProbeConfig,
) -> Result<ProbeResult> {
    let result = run_probe(&|x| backbone.features(x), voc, cfg, backbone.device())?;
    write_json(&out.join("probe.json"), &result, backbone_json(backbone))?;
    write_pictures(voc, out, &result.classes, &result.confusion, &result.examples)?;
    Ok(result)
}

/// Which backbone a report measured, for its JSON.
pub(crate) fn backbone_json(backbone: &crate::transfer::backbone::Backbone) -> serde_json::Value {
    serde_json::json!({
        "source": backbone.source,
        "arch": backbone.arch.to_string(),
        "output_stride": backbone.output_stride,
    })
}

/// `result` as pretty JSON at `path` (its folder created), with the
/// backbone's description added under `backbone`.
pub(crate) fn write_json(
    path: &Path,
    result: &impl Serialize,
    backbone: serde_json::Value,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut json = serde_json::to_value(result).map_err(|e| Error::data(path, e.to_string()))?;
    json["backbone"] = backbone;
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::data(path, e.to_string()))?;
    write_atomically(path, text.as_bytes())
}

/// confusion.png and `prediction-ID.png` overlays of `examples` (val images
/// of `voc`) into `out`.
pub(crate) fn write_pictures(
    voc: &Path,
    out: &Path,
    classes: &[String],
    confusion: &[Vec<u64>],
    examples: &[Prediction],
) -> Result<()> {
    crate::plots::plot_confusion(confusion, classes, &out.join("confusion.png"))?;
    let split = VocSplit::open(voc, "val", classes.len())?;
    let palette = crate::plots::voc_palette(classes.len());
    for (id, pred) in examples {
        let index = split.ids().iter().position(|i| i == id).unwrap_or(0);
        let sample = split.get(index)?;
        let picture =
            crate::plots::overlay_prediction(&sample.image, &sample.mask, pred, &palette, IGNORE)?;
        crate::plots::save_png(&picture, &out.join(format!("prediction-{id}.png")))?;
    }
    Ok(())
}

/// Trains the 1x1 conv on `train` and scores it on `val`. `backbone` maps a
/// normalised [B, 3, S, S] batch on `device` to a [B, C, h, w] feature map;
/// it is called under `no_grad`, once per image.
pub fn run_probe_on(
    backbone: &dyn Fn(&Tensor) -> Tensor,
    train: &VocSplit,
    val: &VocSplit,
    classes: &[String],
    config: &ProbeConfig,
    device: Device,
) -> Result<ProbeResult> {
    config.validate()?;
    let start = Instant::now();
    let k = classes.len();
    for split in [train, val] {
        if split.num_classes() != k {
            return Err(Error::data(
                split.root(),
                format!(
                    "split `{}` opened for {} classes, {k} names given",
                    split.split(),
                    split.num_classes()
                ),
            ));
        }
    }
    let features = Features::extract(backbone, train, val, config, device)?;
    let classifier = Classifier::train(&features, k, config, device)?;
    let (confusion, examples) = classifier.evaluate(&features, val, k)?;
    let scores = miou_from_confusion(&confusion);
    if confusion.iter().flatten().sum::<u64>() == 0 {
        return Err(Error::data(
            val.root(),
            format!("split `{}` has no labelled pixel", val.split()),
        ));
    }
    Ok(ProbeResult {
        miou: scores.miou,
        per_class_iou: classes.iter().cloned().zip(scores.per_class_iou).collect(),
        pixel_accuracy: scores.pixel_accuracy,
        recipe: recipe(config),
        config: config.clone(),
        classes: classes.to_vec(),
        confusion,
        train_images: train.len(),
        val_images: val.len(),
        feature_shape: features.shape,
        seconds: start.elapsed().as_secs_f64(),
        examples,
    })
}

/// Both splits through the frozen backbone once, standardised per channel
/// with train statistics.
struct Features {
    /// [N_train, C, h, w].
    train: Tensor,
    /// Train masks resized to S x S, [N_train, S, S] (uint8) on the device.
    train_masks: Tensor,
    /// [N_val, C, h, w].
    val: Tensor,
    /// Val masks at their own size, for scoring at full label resolution.
    val_masks: Vec<Mask>,
    /// [C, h, w] of one image.
    shape: [i64; 3],
}

impl Features {
    fn extract(
        backbone: &dyn Fn(&Tensor) -> Tensor,
        train: &VocSplit,
        val: &VocSplit,
        config: &ProbeConfig,
        device: Device,
    ) -> Result<Features> {
        let s = config.image_size;
        let b = config.batch_size;
        let (train_feats, train_masks) = extract(backbone, train, s, b, device, true)?;
        let train_masks: Vec<u8> = train_masks.into_iter().flat_map(|(m, _, _)| m).collect();
        let train_masks = Tensor::from_slice(&train_masks)
            .view([train.len() as i64, s as i64, s as i64])
            .to_device(device);
        let (val_feats, val_masks) = extract(backbone, val, s, b, device, false)?;
        let (_, c, h, w) = train_feats.size4()?;

        // Per-channel standardisation with train statistics: [1, C, 1, 1].
        let mean = train_feats.f_mean_dim(&[0i64, 2, 3][..], true, Kind::Float)?;
        let std = train_feats.f_std_correction(&[0i64, 2, 3][..], 0, true)?.f_clamp_min(1e-6)?;
        Ok(Features {
            train: (train_feats - &mean) / &std,
            train_masks,
            val: (val_feats - &mean) / &std,
            val_masks,
            shape: [c, h, w],
        })
    }
}

/// The probe's 1x1 convolution, K classes over C channels.
struct Classifier {
    weight: Tensor,
    bias: Tensor,
}

impl Classifier {
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv2d(&self.weight, Some(&self.bias), [1, 1], [0, 0], [1, 1], 1)?)
    }

    /// From zero, Adam with a cosine-decayed learning rate over `epochs`
    /// passes of seeded batch orders.
    fn train(features: &Features, k: usize, config: &ProbeConfig, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let weight = vs.root().zeros("weight", &[k as i64, features.shape[0], 1, 1]);
        let bias = vs.root().zeros("bias", &[k as i64]);
        let classifier = Classifier { weight, bias };
        let mut opt = nn::OptimizerConfig::build(nn::Adam::default(), &vs, config.lr)?;

        let s = config.image_size as i64;
        let n = features.train.size()[0] as usize;
        let steps_per_epoch = n.div_ceil(config.batch_size);
        let total_steps = (steps_per_epoch * config.epochs) as f64;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut order: Vec<i64> = (0..n as i64).collect();
        let mut step = 0usize;
        for _ in 0..config.epochs {
            order.shuffle(&mut rng);
            for chunk in order.chunks(config.batch_size) {
                opt.set_lr(cosine_lr(config.lr, step, total_steps));
                let idx = Tensor::from_slice(chunk).to_device(device);
                // x: [B, C, h, w], y: [B, S, S].
                let x = features.train.f_index_select(0, &idx)?;
                let y = features.train_masks.f_index_select(0, &idx)?.f_to_kind(Kind::Int64)?;
                let logits =
                    classifier.logits(&x)?.f_upsample_bilinear2d([s, s], false, None, None)?;
                opt.backward_step(&masked_cross_entropy(&logits, &y)?);
                step += 1;
            }
        }
        Ok(classifier)
    }

    /// The val confusion matrix and example predictions, as [`score`].
    fn evaluate(
        &self,
        features: &Features,
        val: &VocSplit,
        k: usize,
    ) -> Result<(Vec<Vec<u64>>, Vec<Prediction>)> {
        let logits = tch::no_grad(|| self.logits(&features.val))?;
        score(&logits, &features.val_masks, val.ids(), k)
    }
}

/// The confusion matrix of val `logits` [N, K, h, w], each image's upsampled
/// bilinearly to its mask's own size, and the predictions of the first
/// [`EXAMPLES`] images (`ids` names them).
pub(crate) fn score(
    logits: &Tensor,
    masks: &[Mask],
    ids: &[String],
    k: usize,
) -> Result<(Vec<Vec<u64>>, Vec<Prediction>)> {
    let mut confusion = vec![vec![0u64; k]; k];
    let mut examples = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (i, ((mask, mh, mw), id)) in masks.iter().zip(ids).enumerate() {
            let x = logits.f_narrow(0, i as i64, 1)?;
            let size = [i64::from(*mh), i64::from(*mw)];
            let x = x.f_upsample_bilinear2d(size, false, None, None)?;
            let pred = x.f_argmax(1, false)?.f_to_kind(Kind::Uint8)?.f_flatten(0, -1)?;
            let pred: Vec<u8> = Vec::<u8>::try_from(&pred.f_to_device(Device::Cpu)?)?;
            accumulate_confusion(&mut confusion, mask, &pred);
            if i < EXAMPLES {
                examples.push((id.clone(), pred));
            }
        }
        Ok(())
    })?;
    Ok((confusion, examples))
}

/// `lr` at step 0, cosine-decayed towards 0 at `total_steps`.
fn cosine_lr(lr: f64, step: usize, total_steps: f64) -> f64 {
    lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total_steps).cos())
}

/// Cross-entropy summed over labelled pixels / their count: a batch of only
/// ignore pixels then gives 0, not the NaN that a plain mean would.
pub(crate) fn masked_cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let loss_sum =
        logits.f_cross_entropy_loss::<Tensor>(y, None, Reduction::Sum, IGNORE as i64, 0.0)?;
    let labelled = y.f_ne(IGNORE as i64)?.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
    Ok(loss_sum / labelled)
}

fn recipe(config: &ProbeConfig) -> String {
    let s = config.image_size;
    format!(
        "frozen backbone; images resized to {s}x{s} (bilinear, masks nearest), ImageNet mean/std; \
         features standardised per channel with train statistics; 1x1 conv from zero, Adam lr {} \
         cosine to 0, {} epochs, batch {}, seed {}; cross-entropy (ignore 255) on logits upsampled \
         bilinearly to {s}x{s} labels; val logits upsampled to each mask's original size; mIoU over \
         classes with non-empty union, background included",
        config.lr, config.epochs, config.batch_size, config.seed
    )
}

/// A row-major mask with its height and width.
pub(crate) type Mask = (Vec<u8>, u32, u32);

/// A val image's id and its predicted classes at the mask's size.
pub(crate) type Prediction = (String, Vec<u8>);

/// A split's features on `device`, [N, C, h, w], computed `batch_size`
/// images at a time from images resized to `s` x `s`, with its masks
/// (row-major, height, width): resized to S x S when `resize_masks`
/// (training), else at their own size (scoring).
pub(crate) fn extract(
    backbone: &dyn Fn(&Tensor) -> Tensor,
    split: &VocSplit,
    s: u32,
    batch_size: usize,
    device: Device,
    resize_masks: bool,
) -> Result<(Tensor, Vec<Mask>)> {
    let mean = Tensor::from_slice(&IMAGENET_MEAN).view([1, 3, 1, 1]).to_device(device);
    let std = Tensor::from_slice(&IMAGENET_STD).view([1, 3, 1, 1]).to_device(device);
    let mut feats = Vec::new();
    let mut masks = Vec::with_capacity(split.len());
    let indices: Vec<usize> = (0..split.len()).collect();
    for chunk in indices.chunks(batch_size) {
        // Decoding and resizing dominate on CPU; they are per image, so parallel.
        let samples: Vec<VocSample> =
            chunk.par_iter().map(|&i| split.get(i)).collect::<Result<_>>()?;
        let mut pixels = Vec::with_capacity(chunk.len() * (s * s * 3) as usize);
        for sample in &samples {
            pixels.extend_from_slice(resize_image(&sample.image, s).as_raw());
        }
        let b = samples.len() as i64;
        let x = Tensor::from_slice(&pixels)
            .view([b, s as i64, s as i64, 3])
            .permute([0, 3, 1, 2])
            .to_device(device)
            .to_kind(Kind::Float)
            / 255.0;
        let x = (x - &mean) / &std; // [B, 3, S, S]
        let f = tch::no_grad(|| backbone(&x)).to_device(device).to_kind(Kind::Float);
        let size = f.size();
        if size.len() != 4 || size[0] != b {
            return Err(Error::config(
                "backbone",
                format!("returned shape {size:?} for a batch of {b}; expected [{b}, C, h, w]"),
            ));
        }
        feats.push(f);
        for sample in samples {
            let (w, h) = sample.image.dimensions();
            masks.push(if resize_masks {
                (resize_mask_nearest(&sample.mask, w, h, s), s, s)
            } else {
                (sample.mask, h, w)
            });
        }
    }
    Ok((Tensor::f_cat(&feats, 0)?, masks))
}

pub(crate) fn resize_image(image: &RgbImage, s: u32) -> RgbImage {
    if image.dimensions() == (s, s) {
        return image.clone();
    }
    image::imageops::resize(image, s, s, FilterType::Triangle)
}

/// Nearest-neighbour resize of a row-major `w` x `h` mask to `s` x `s`,
/// sampling each output pixel's centre (labels must never be blended).
pub(crate) fn resize_mask_nearest(mask: &[u8], w: u32, h: u32, s: u32) -> Vec<u8> {
    let (w, h, s) = (w as usize, h as usize, s as usize);
    let src = |o: usize, n: usize| ((2 * o + 1) * n / (2 * s)).min(n - 1);
    (0..s).flat_map(|y| (0..s).map(move |x| mask[src(y, h) * w + src(x, w)])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::voc::tests::write_voc;
    use rand::Rng;

    #[test]
    fn metric_on_hand_made_voc() {
        // 3 classes; "dog" (2) appears in neither val masks nor predictions.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("classes.txt"), "background\ncat\ndog\n").unwrap();
        #[rustfmt::skip]
        let mask_a = vec![
            0, 0, 0, 0,
            0, 1, 1, 0,
            0, 1, 1, 0,
            0, 0, 0, 255,
        ];
        #[rustfmt::skip]
        let pred_a = vec![
            0, 0, 0, 0,
            0, 1, 1, 1,
            0, 0, 1, 0,
            0, 0, 0, 1, // under the ignore pixel: must count nowhere
        ];
        let mut mask_b = vec![0u8; 16];
        mask_b[..2].copy_from_slice(&[1, 1]);
        let pred_b = vec![0u8; 16];
        let grey = vec![[128u8; 3]; 16];
        write_voc(
            dir.path(),
            4,
            4,
            &[("a", "val", grey.clone(), mask_a), ("b", "val", grey.clone(), mask_b)],
        );
        let names = class_names(dir.path()).unwrap();
        let val = VocSplit::open(dir.path(), "val", names.len()).unwrap();
        let mut confusion = vec![vec![0; 3]; 3];
        for (sample, pred) in val.iter().zip([pred_a, pred_b]) {
            accumulate_confusion(&mut confusion, &sample.unwrap().mask, &pred);
        }
        // By hand: a has 11 bg (10 right, 1 called cat), 4 cat (3 right);
        // b has 14 bg (right) and 2 cat (called bg).
        assert_eq!(confusion, vec![vec![24, 1, 0], vec![3, 3, 0], vec![0, 0, 0]]);
        let scores = miou_from_confusion(&confusion);
        let iou_bg = 24.0 / (25.0 + 27.0 - 24.0);
        let iou_cat = 3.0 / (6.0 + 4.0 - 3.0);
        assert_eq!(scores.per_class_iou, vec![Some(iou_bg), Some(iou_cat), None]);
        assert!((scores.miou - 9.0 / 14.0).abs() < 1e-12, "{}", scores.miou);
        assert!((scores.pixel_accuracy - 27.0 / 31.0).abs() < 1e-12);
        assert_eq!(confusion_matrix(&[0, 1, 255], &[1, 1, 0], 2), vec![vec![0, 1], vec![0, 1]]);
    }

    /// Classes are colour-coded rectangles on a noisy grey background.
    fn colour_coded_voc(root: &Path, n_train: usize, n_val: usize, seed: u64) {
        const SIDE: u32 = 32;
        let colours = [[220u8, 30, 30], [30, 200, 40]];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut samples = Vec::new();
        let ids: Vec<String> = (0..n_train + n_val).map(|i| format!("img{i:03}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let n = (SIDE * SIDE) as usize;
            let mut rgb: Vec<[u8; 3]> = (0..n).map(|_| [rng.random_range(90..160u8); 3]).collect();
            let mut mask = vec![0u8; n];
            for (class, colour) in colours.iter().enumerate() {
                let (w, h) = (rng.random_range(8..16), rng.random_range(8..16));
                let (x0, y0) = (rng.random_range(0..SIDE - w), rng.random_range(0..SIDE - h));
                for y in y0..y0 + h {
                    for x in x0..x0 + w {
                        let p = (y * SIDE + x) as usize;
                        rgb[p] = *colour;
                        mask[p] = class as u8 + 1;
                    }
                }
            }
            let split = if i < n_train { "train" } else { "val" };
            samples.push((id.as_str(), split, rgb, mask));
        }
        write_voc(root, SIDE, SIDE, &samples);
        std::fs::write(root.join("classes.txt"), "background\nred\ngreen\n").unwrap();
    }

    /// A fixed random 3x3 stride-2 conv + ReLU, weights from a seeded RNG.
    fn random_conv_backbone() -> impl Fn(&Tensor) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let w: Vec<f32> = (0..16 * 3 * 3 * 3).map(|_| rng.random_range(-0.5..0.5)).collect();
        let w = Tensor::from_slice(&w).view([16, 3, 3, 3]);
        move |x: &Tensor| x.conv2d(&w, None::<Tensor>, [2, 2], [1, 1], [1, 1], 1).relu()
    }

    #[test]
    fn probe_learns_colour_coded_classes_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        colour_coded_voc(dir.path(), 24, 8, 1);
        let backbone = random_conv_backbone();
        let config = ProbeConfig { image_size: 32, epochs: 100, lr: 1e-1, batch_size: 8, seed: 3 };
        let result = run_probe(&backbone, dir.path(), &config, Device::Cpu).unwrap();
        assert!(result.miou > 0.9, "mIoU {} {:?}", result.miou, result.per_class_iou);
        assert_eq!(result.feature_shape, [16, 16, 16]);
        assert_eq!((result.train_images, result.val_images), (24, 8));
        assert_eq!(result.confusion.iter().flatten().sum::<u64>(), 8 * 32 * 32);
        let again = run_probe(&backbone, dir.path(), &config, Device::Cpu).unwrap();
        assert_eq!(again.confusion, result.confusion);
        assert!(serde_json::to_string(&result).unwrap().contains("\"miou\""));
    }

    #[test]
    fn bad_backbone_and_config_are_named() {
        let dir = tempfile::tempdir().unwrap();
        colour_coded_voc(dir.path(), 2, 1, 2);
        let config = ProbeConfig { image_size: 32, epochs: 1, batch_size: 2, ..Default::default() };
        let flat = |x: &Tensor| x.flatten(1, -1);
        let e = run_probe(&flat, dir.path(), &config, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("backbone") && e.contains("[2, 3072]"), "{e}");
        let bad = ProbeConfig { epochs: 0, ..config };
        let e = run_probe(&flat, dir.path(), &bad, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("probe.epochs"), "{e}");
        let parsed: ProbeConfig = serde_json::from_str(r#"{"epochs": 3}"#).unwrap();
        assert_eq!(parsed, ProbeConfig { epochs: 3, ..Default::default() });
        assert!(serde_json::from_str::<ProbeConfig>(r#"{"epoch": 3}"#).is_err());
    }

    #[test]
    fn nearest_mask_resize_keeps_labels() {
        let mask = [0, 1, 2, 255];
        assert_eq!(
            resize_mask_nearest(&mask, 2, 2, 4),
            [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 255, 255, 2, 2, 255, 255]
        );
        assert_eq!(resize_mask_nearest(&[0, 1, 2, 3], 4, 1, 2), [1, 3, 1, 3]);
    }
}

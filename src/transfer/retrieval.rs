//! Dense nearest-neighbour retrieval: the "Hummingbird" evaluation of
//! Balažević et al., "Towards In-context Scene Understanding" (NeurIPS
//! 2023), moved from ViT patches to the cells of a CNN's C5 map. A val image
//! is segmented by attending over the labelled train cells most like its
//! own; nothing is trained, so the score is the frozen features' alone.
//!
//! The memory: every train image resized to S x S (bilinear; masks nearest;
//! ImageNet mean/std: the probe's preprocessing) through the frozen
//! backbone; each C5 cell's feature L2-normalised, its label l the class
//! distribution of the non-ignore pixels it covers (pixel (y, x) of the
//! S x S mask falls in cell (⌊y h / S⌋, ⌊x w / S⌋) of the h x w grid); a cell
//! covering only ignore pixels is left out. When more cells are labelled
//! than `memory_size`, a uniform subsample drawn from the seed is kept.
//!
//! A val cell with normalised feature q, its k most similar memory cells j
//! (cosine s_j = q · m_j) and their labels l_j:
//!
//! ```text
//!     y = Σ_j a_j l_j,    a_j = exp(s_j / τ) / Σ_i exp(s_i / τ)   (i, j over the k)
//! ```
//!
//! The [K, h, w] map of y is upsampled bilinearly to the val mask's own size
//! and argmaxed; mIoU, per-class IoU and pixel accuracy are the probe's
//! ([`crate::transfer::probe::miou_from_confusion`]).
//!
//! Defaults: k = 30 and τ = 0.02 are those of the open re-implementation
//! (Pariza, Salehi and Asano 2024, github.com/vpariza/open-hummingbird-eval:
//! `n_neighbours=30`, the cross-attention's `beta=0.02`), whose PASCAL VOC
//! numbers match the paper's. The paper's memory, 1024 x 10^4 = 10 240 000
//! features (the size hbird's README reports the paper's number at), holds
//! about one feature per patch of a pass over its 10 582 train images; ours
//! is scaled the same way to our data: 65 536 holds every cell of TuxSeg's
//! 300 train images (30 000 at 160 px and stride 16, 58 800 at 224 px), and a
//! much larger set is subsampled. hbird fills its memory from augmented
//! passes, sampling cells that favour rare classes; we take the un-augmented
//! images' cells, all of them or a uniform subsample.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::model::heads::normalize_cells;
use crate::transfer::backbone::Backbone;
use crate::transfer::probe::{accumulate_confusion, extract, miou_from_confusion, Mask};
use crate::transfer::voc::train_val;
use crate::{Error, Result};

/// The knobs of the retrieval; the rest is the fixed recipe above.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrievalConfig {
    /// Side of the square every image is resized to before the backbone.
    pub image_size: u32,
    /// Neighbours each val cell attends over; capped at the memory's size.
    pub k: usize,
    /// Softmax temperature τ on cosine similarities.
    pub temperature: f64,
    /// Most train cells the memory holds.
    pub memory_size: usize,
    /// Images per pass through the backbone.
    pub batch_size: usize,
    /// Seeds the subsample when there are more labelled cells than `memory_size`.
    pub seed: u64,
}

impl Default for RetrievalConfig {
    /// 224 px as the probe's default, so both read the same inputs.
    fn default() -> Self {
        RetrievalConfig {
            image_size: 224,
            k: 30,
            temperature: 0.02,
            memory_size: 65_536,
            batch_size: 16,
            seed: 0,
        }
    }
}

impl RetrievalConfig {
    pub fn validate(&self) -> Result<()> {
        if !(8..=4096).contains(&self.image_size) {
            return Err(Error::config(
                "retrieval.image_size",
                format!("{} not in 8..=4096", self.image_size),
            ));
        }
        if self.k == 0 {
            return Err(Error::config("retrieval.k", "must be at least 1"));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::config(
                "retrieval.temperature",
                format!("{} is not a positive number", self.temperature),
            ));
        }
        if self.memory_size == 0 {
            return Err(Error::config("retrieval.memory_size", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("retrieval.batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

/// What a retrieval run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RetrievalResult {
    /// Mean IoU over the classes with a non-empty union (background included).
    pub miou: f64,
    /// IoU by class name; `None` for a class neither labelled nor predicted in val.
    pub per_class_iou: BTreeMap<String, Option<f64>>,
    pub pixel_accuracy: f64,
    pub config: RetrievalConfig,
    /// Cells in the memory (at most `config.memory_size`).
    pub memory_cells: usize,
    /// Train cells with a label, before any subsampling.
    pub labelled_cells: usize,
    pub train_images: usize,
    pub val_images: usize,
    /// Backbone output per image, [C, h, w].
    pub feature_shape: [i64; 3],
    pub seconds: f64,
}

/// Labelled train cells: what val cells are compared with.
#[derive(Debug)]
pub struct Memory {
    /// Unit-normalised features, [M, C].
    pub features: Tensor,
    /// Class distributions, [M, K] (float, rows summing to 1).
    pub labels: Tensor,
    /// Labelled cells there were before subsampling to at most M.
    pub labelled_cells: usize,
}

/// Retrieval mIoU of `backbone` on the VOC-layout folder `voc`: memory from
/// split `train`, scored on split `val` (classes from [`class_names`]).
pub fn retrieval(
    backbone: &Backbone,
    voc: &Path,
    cfg: &RetrievalConfig,
) -> Result<RetrievalResult> {
    cfg.validate()?;
    let start = Instant::now();
    let (classes, train, val) = train_val(voc)?;
    let k = classes.len();
    let (s, device) = (cfg.image_size, backbone.device());
    let net = |x: &Tensor| backbone.features(x);
    let (train_feats, train_masks) = extract(&net, &train, s, cfg.batch_size, device, true)?;
    let memory = build_memory(&train_feats, &train_masks, k, cfg.memory_size, cfg.seed)?;
    let memory_cells = memory.features.size()[0] as usize;
    if memory_cells == 0 {
        return Err(Error::data(voc, "split `train` has no labelled pixel to fill the memory"));
    }
    // The memory keeps what it needs; the train maps would only double the peak.
    drop(train_feats);
    let (val_feats, val_masks) = extract(&net, &val, s, cfg.batch_size, device, false)?;
    let confusion = val_confusion(&memory, &val_feats, &val_masks, k, cfg.k, cfg.temperature)?;
    if confusion.iter().flatten().sum::<u64>() == 0 {
        return Err(Error::data(voc, "split `val` has no labelled pixel"));
    }
    let scores = miou_from_confusion(&confusion);
    let (_, c, h, w) = val_feats.size4()?;
    Ok(RetrievalResult {
        miou: scores.miou,
        per_class_iou: classes.into_iter().zip(scores.per_class_iou).collect(),
        pixel_accuracy: scores.pixel_accuracy,
        config: cfg.clone(),
        memory_cells,
        labelled_cells: memory.labelled_cells,
        train_images: train.len(),
        val_images: val.len(),
        feature_shape: [c, h, w],
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The memory of `features` ([N, C, h, w]) labelled by `masks` (one per
/// image, any size, laid over the h x w grid): every labelled cell, or a
/// `seed`-drawn uniform subsample of `memory_size` of them, in image-then-
/// row-major order.
pub fn build_memory(
    features: &Tensor,
    masks: &[Mask],
    num_classes: usize,
    memory_size: usize,
    seed: u64,
) -> Result<Memory> {
    let (n, c, h, w) = features.size4()?;
    if masks.len() as i64 != n {
        return Err(Error::config(
            "retrieval",
            format!("{n} feature maps but {} masks to label them", masks.len()),
        ));
    }
    let cells_per_image = (h * w) as usize;
    let mut cells = Vec::new();
    let mut labels = Vec::new();
    for (i, mask) in masks.iter().enumerate() {
        let grid = cell_distributions(mask, h as usize, w as usize, num_classes);
        for (j, distribution) in grid.into_iter().enumerate() {
            if let Some(d) = distribution {
                cells.push((i * cells_per_image + j) as i64);
                labels.push(d);
            }
        }
    }
    let labelled_cells = cells.len();
    if labelled_cells > memory_size {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut keep = rand::seq::index::sample(&mut rng, labelled_cells, memory_size).into_vec();
        keep.sort_unstable();
        cells = keep.iter().map(|&i| cells[i]).collect();
        labels = keep.iter().map(|&i| std::mem::take(&mut labels[i])).collect();
    }
    let m = cells.len() as i64;
    let device = features.device();
    let index = Tensor::from_slice(&cells).to_device(device);
    let flat = features.f_permute([0, 2, 3, 1])?.f_reshape([n * h * w, c])?; // [N*h*w, C]
    let features = normalize_cells(&flat.f_index_select(0, &index)?.f_to_kind(Kind::Float)?);
    let labels = Tensor::from_slice(&labels.concat())
        .f_view([m, num_classes as i64])?
        .f_to_device(device)?;
    Ok(Memory { features, labels, labelled_cells })
}

/// Each cell's class distribution over the pixels of `mask` that fall in it,
/// row-major over the `h` x `w` grid; `None` for a cell without a pixel of
/// a class below `k` (all ignore).
fn cell_distributions(mask: &Mask, h: usize, w: usize, k: usize) -> Vec<Option<Vec<f32>>> {
    let (values, mh, mw) = mask;
    let (mh, mw) = (*mh as usize, *mw as usize);
    let mut counts = vec![0u32; h * w * k];
    for y in 0..mh {
        let row = (y * h / mh) * w;
        for x in 0..mw {
            let class = usize::from(values[y * mw + x]);
            if class < k {
                counts[(row + x * w / mw) * k + class] += 1;
            }
        }
    }
    counts
        .chunks(k)
        .map(|cell| {
            let total: u32 = cell.iter().sum();
            (total > 0).then(|| cell.iter().map(|&n| n as f32 / total as f32).collect())
        })
        .collect()
}

/// Similarities held at once, in elements of the [queries, M] matrix: 64 MB
/// of float32, whatever the memory's size.
const SIMILARITY_BUDGET: i64 = 1 << 24;

/// Class scores [Q, K] of `queries` [Q, C] (normalised here): attention
/// with temperature `temperature` over each query's `k` most similar memory
/// cells (all of them when the memory is smaller). Tied similarities are
/// broken as `topk` breaks them.
pub fn knn_scores(memory: &Memory, queries: &Tensor, k: usize, temperature: f64) -> Result<Tensor> {
    let m = memory.features.size()[0];
    let k = (k as i64).min(m);
    let queries = normalize_cells(&queries.f_to_kind(Kind::Float)?);
    let q = queries.size()[0];
    let rows = (SIMILARITY_BUDGET / m.max(1)).max(1);
    let keys = memory.features.f_transpose(0, 1)?; // [C, M]
    let num_classes = memory.labels.size()[1];
    let mut out = Vec::new();
    for start in (0..q).step_by(rows as usize) {
        let chunk = queries.f_narrow(0, start, rows.min(q - start))?; // [q, C]
        let (similarity, nearest) = chunk.f_matmul(&keys)?.f_topk(k, 1, true, true)?; // [q, k] x2
        let weights = (similarity / temperature).f_softmax(1, Kind::Float)?; // [q, k]
        let nearest = nearest.f_flatten(0, -1)?; // [q k]
        let labels = memory.labels.f_index_select(0, &nearest)?.f_view([-1, k, num_classes])?;
        out.push(weights.f_unsqueeze(1)?.f_bmm(&labels)?.f_squeeze_dim(1)?); // [q, K]
    }
    Ok(Tensor::f_cat(&out, 0)?)
}

/// The val confusion matrix: each image's [K, h, w] score map upsampled to
/// its mask's own size, argmaxed, counted against the mask.
fn val_confusion(
    memory: &Memory,
    features: &Tensor,
    masks: &[Mask],
    num_classes: usize,
    k: usize,
    temperature: f64,
) -> Result<Vec<Vec<u64>>> {
    let (_, c, h, w) = features.size4()?;
    let mut confusion = vec![vec![0u64; num_classes]; num_classes];
    for (i, (mask, mh, mw)) in masks.iter().enumerate() {
        let cells = features.f_select(0, i as i64)?.f_view([c, h * w])?; // [C, hw]
        let queries = cells.f_transpose(0, 1)?; // [hw, C]
        let scores = knn_scores(memory, &queries, k, temperature)?; // [hw, K]
        let size = [i64::from(*mh), i64::from(*mw)];
        let map = scores.f_transpose(0, 1)?.f_reshape([1, num_classes as i64, h, w])?;
        let map = map.f_upsample_bilinear2d(size, false, None, None)?; // [1, K, mh, mw]
        let pred = map.f_argmax(1, false)?.f_to_kind(Kind::Uint8)?.f_flatten(0, -1)?;
        let pred = Vec::<u8>::try_from(&pred.f_to_device(Device::Cpu)?)?;
        accumulate_confusion(&mut confusion, mask, &pred);
    }
    Ok(confusion)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resnet::Arch;
    use crate::transfer::voc::tests::write_voc;
    use rand::Rng;

    fn floats(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn hand_made_scores() {
        // One image on a 1 x 4 grid, a 1 x 8 mask: two pixels per cell.
        // Cells: half class 0 / half class 1, class 1, class 2, all ignore.
        let mask: Mask = (vec![0, 1, 1, 1, 2, 2, 255, 255], 1, 8);
        #[rustfmt::skip]
        let f = [
            2.0f32, 0.6, 0.0, 1.0, // channel 0 of cells 0..4
            0.0,    0.8, 1.0, 1.0, // channel 1
        ];
        let features = Tensor::from_slice(&f).view([1, 2, 1, 4]);
        let memory = build_memory(&features, &[mask], 3, 10, 0).unwrap();
        assert_eq!((memory.features.size(), memory.labelled_cells), (vec![3, 2], 3));
        assert_eq!(floats(&memory.labels), [0.5, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        let unit = [1.0, 0.0, 0.6, 0.8, 0.0, 1.0];
        assert!(floats(&memory.features).iter().zip(unit).all(|(a, b)| (a - b).abs() < 1e-6));

        // Query (3, 0): cosines 1, 0.6, 0; k = 2 keeps the first two.
        let t = 0.5f64;
        let scores = knn_scores(&memory, &Tensor::from_slice(&[3.0f32, 0.0]).view([1, 2]), 2, t);
        let (e1, e2) = ((1.0 / t).exp(), (0.6 / t).exp());
        let (a1, a2) = (e1 / (e1 + e2), e2 / (e1 + e2));
        let want = [0.5 * a1, 0.5 * a1 + a2, 0.0];
        for (got, want) in floats(&scores.unwrap()).into_iter().zip(want) {
            assert!((f64::from(got) - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    /// `n` images of vertical stripes: image i's cell column x is class
    /// (i + x) % 3 on a 3 x 3 grid, `px` mask pixels per cell side, with a
    /// band of ignore pixels along the top of the mask.
    fn striped(n: usize, px: usize) -> Vec<Mask> {
        let side = 3 * px;
        (0..n)
            .map(|i| {
                let mask = (0..side * side)
                    .map(|p| if p < side { 255 } else { ((i + p % side / px) % 3) as u8 })
                    .collect();
                (mask, side as u32, side as u32)
            })
            .collect()
    }

    /// One-hot features of the same stripes' classes: [n, 3, 3, 3].
    fn one_hot_features(n: usize) -> Tensor {
        let mut f = vec![0f32; n * 27];
        for i in 0..n {
            for y in 0..3 {
                for x in 0..3 {
                    f[i * 27 + ((i + x) % 3) * 9 + y * 3 + x] = 1.0;
                }
            }
        }
        Tensor::from_slice(&f).view([n as i64, 3, 3, 3])
    }

    #[test]
    fn features_that_encode_the_label_score_perfectly() {
        let memory = build_memory(&one_hot_features(4), &striped(4, 2), 3, 100, 0).unwrap();
        assert_eq!(memory.features.size(), vec![36, 3]);
        // Val masks at 5 pixels per cell: the upsampling must keep each stripe.
        let confusion =
            val_confusion(&memory, &one_hot_features(3), &striped(3, 5), 3, 30, 0.02).unwrap();
        let scores = miou_from_confusion(&confusion);
        assert_eq!(scores.miou, 1.0, "{confusion:?}");
        assert_eq!(confusion.iter().flatten().sum::<u64>(), 3 * 15 * 15 - 3 * 15);
    }

    #[test]
    fn constant_features_predict_the_majority_class() {
        // Classes 0/1/2 in proportion 5:3:1 over cells.
        let side = 6;
        let class_of = |x: usize| match x {
            0..=4 => 0u8,
            5..=7 => 1,
            _ => 2,
        };
        let masks: Vec<Mask> = (0..3)
            .map(|i| {
                let mask = (0..side * side).map(|p| class_of((i * 3 + p / 12) % 9)).collect();
                (mask, side as u32, side as u32)
            })
            .collect();
        let features = Tensor::ones([3, 4, 3, 1], tch::kind::FLOAT_CPU);
        let memory = build_memory(&features, &masks, 3, 100, 0).unwrap();
        let m = memory.features.size()[0] as usize;
        assert_eq!(m, 9);
        // All cells tie, so with k = M each votes equally: the memory's mean
        // label, whose argmax is the majority class, 0.
        let confusion = val_confusion(&memory, &features, &masks, 3, m, 0.02).unwrap();
        let labels: Vec<u8> = masks.iter().flat_map(|(m, _, _)| m.clone()).collect();
        let count = |c: u8| labels.iter().filter(|&&l| l == c).count() as u64;
        let want = [count(0), count(1), count(2)].map(|n| vec![n, 0, 0]).to_vec();
        assert_eq!(confusion, want);
        let expected_miou = (count(0) as f64 / labels.len() as f64) / 3.0;
        assert!((miou_from_confusion(&confusion).miou - expected_miou).abs() < 1e-12);
    }

    #[test]
    fn subsampling_is_seeded_and_bounded() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let f: Vec<f32> = (0..6 * 8 * 16).map(|_| rng.random_range(-1.0..1.0)).collect();
        let features = Tensor::from_slice(&f).view([6, 8, 4, 4]);
        // 16 cells per image; image 0's mask is all ignore: 80 labelled cells.
        let masks: Vec<Mask> = (0..6)
            .map(|i| ((0..64).map(|p| if i == 0 { 255 } else { (p % 3) as u8 }).collect(), 8, 8))
            .collect();
        let all = build_memory(&features, &masks, 3, 1000, 0).unwrap();
        assert_eq!((all.features.size()[0], all.labelled_cells), (80, 80));
        let a = build_memory(&features, &masks, 3, 25, 7).unwrap();
        let b = build_memory(&features, &masks, 3, 25, 7).unwrap();
        let c = build_memory(&features, &masks, 3, 25, 8).unwrap();
        assert_eq!((a.features.size(), a.labels.size()), (vec![25, 8], vec![25, 3]));
        assert_eq!(a.labelled_cells, 80);
        assert!(a.features.equal(&b.features) && a.labels.equal(&b.labels));
        assert!(!a.features.equal(&c.features));
        // Every kept row is a row of the full memory.
        let hits = a.features.matmul(&all.features.transpose(0, 1)).amax([1], false);
        assert!(floats(&hits).iter().all(|&s| (s - 1.0).abs() < 1e-5));
    }

    #[test]
    fn end_to_end_on_a_tiny_voc_folder() {
        let dir = tempfile::tempdir().unwrap();
        let side = 48u32;
        let n = (side * side) as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let ids: Vec<String> = (0..6).map(|i| format!("im{i}")).collect();
        let samples: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let rgb = (0..n).map(|_| [rng.random_range(0..255u8); 3]).collect();
                let mask = (0..n).map(|p| if p % 7 == 0 { 255 } else { (p % 2) as u8 }).collect();
                (id.as_str(), if i < 4 { "train" } else { "val" }, rgb, mask)
            })
            .collect();
        write_voc(dir.path(), side, side, &samples);
        std::fs::write(dir.path().join("classes.txt"), "background\nthing\n").unwrap();
        let backbone = Backbone::random(Arch::ResNet18, 16, 0, Device::Cpu).unwrap();
        let cfg = RetrievalConfig { image_size: 64, batch_size: 3, ..Default::default() };
        let r = retrieval(&backbone, dir.path(), &cfg).unwrap();
        assert!((0.0..=1.0).contains(&r.miou) && (0.0..=1.0).contains(&r.pixel_accuracy));
        assert_eq!((r.train_images, r.val_images), (4, 2));
        assert_eq!(r.feature_shape, [512, 4, 4]);
        assert_eq!((r.memory_cells, r.labelled_cells), (64, 64));
        assert_eq!(r.per_class_iou.len(), 2);
        let small = RetrievalConfig { memory_size: 10, ..cfg.clone() };
        assert_eq!(retrieval(&backbone, dir.path(), &small).unwrap().memory_cells, 10);
        let bad = RetrievalConfig { k: 0, ..cfg };
        let e = retrieval(&backbone, dir.path(), &bad).unwrap_err().to_string();
        assert!(e.contains("retrieval.k"), "{e}");
        assert!(serde_json::from_str::<RetrievalConfig>(r#"{"neighbours": 3}"#).is_err());
    }
}

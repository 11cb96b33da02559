//! Correspondence accuracy: what PixPro's loss asks of the encoder, measured
//! on held-out images. Two views of one image are drawn as pretraining draws
//! them; a view-1 cell should find, as its nearest view-2 cell in feature
//! space, a cell the loss would call its positive.
//!
//! For every val image (labels unused), `pairs_per_image` pairs of views at
//! `image_size` px with the `cpu` preset's augmentation (the paper's recipe:
//! random resized crops, flips, colour jitter, grayscale, blur, solarize);
//! each pair once as drawn and once with every photometric operation off
//! (jitter, grayscale, blur and solarize probabilities 0), same crops and
//! flips. Both views go through the frozen backbone; with M the positive
//! mask of [`positive_mask`] at `threshold` (spec section 2: cell centres
//! closer than T times the larger bin diagonal, in source-image coordinates
//! from the views' tracked crops) and P_i = { j : M_ij = 1 }, over the
//! view-1 cells i with P_i non-empty:
//!
//! ```text
//!     n(i)     = argmax_j cos(f1_i, f2_j)                   (j over view 2's h w cells)
//!     accuracy = #{ i : n(i) ∈ P_i } / #{ i }
//!     chance   = mean_i |P_i| / (h w)                       (a uniform guess's accuracy)
//! ```
//!
//! Every draw comes from a ChaCha8 stream seeded by (seed, image, pair,
//! view), so the result depends on neither batching nor thread scheduling.
use std::path::Path;
use std::time::Instant;

use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::loader::view_rng;
use crate::data::views::{make_view, AugmentConfig, View};
use crate::model::heads::normalize_cells;
use crate::objective::matching::positive_mask;
use crate::train::config::Preset;
use crate::transfer::backbone::Backbone;
use crate::transfer::voc::{class_names, VocSplit};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrespondenceConfig {
    /// Side of the square views.
    pub image_size: u32,
    pub pairs_per_image: usize,
    /// Positive-pair threshold T, in units of the larger bin diagonal.
    pub threshold: f64,
    pub seed: u64,
    /// View pairs per pass through the backbone.
    pub batch_size: usize,
}

impl Default for CorrespondenceConfig {
    /// The `cpu` preset's threshold (T = 0.7) and the view size it was
    /// defined at, 96 px. The size is written out, not read from the preset,
    /// so that a preset that pretrains at another size does not change the
    /// test every recorded score was measured with.
    fn default() -> Self {
        let preset = Preset::Cpu.config();
        CorrespondenceConfig {
            image_size: 96,
            pairs_per_image: 8,
            threshold: preset.model.threshold,
            seed: 0,
            batch_size: 32,
        }
    }
}

impl CorrespondenceConfig {
    pub fn validate(&self) -> Result<()> {
        // The view sampler's own bounds (augment.image_size).
        if !(32..=4096).contains(&self.image_size) {
            return Err(Error::config(
                "correspondence.image_size",
                format!("{} not in 32..=4096", self.image_size),
            ));
        }
        if self.pairs_per_image == 0 {
            return Err(Error::config("correspondence.pairs_per_image", "must be at least 1"));
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(Error::config(
                "correspondence.threshold",
                format!("{} is not a positive number", self.threshold),
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::config("correspondence.batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

/// What a correspondence run reports.
#[derive(Debug, Clone, Serialize)]
pub struct CorrespondenceResult {
    /// Top-1 accuracy with the pretraining's photometric augmentation.
    pub accuracy: f64,
    /// Top-1 accuracy of the same crops with photometric augmentation off.
    pub accuracy_no_colour: f64,
    /// The chance level of `accuracy`.
    pub chance: f64,
    /// The chance level of `accuracy_no_colour`; the crops are shared, so it
    /// equals `chance`.
    pub chance_no_colour: f64,
    /// View-1 cells with at least one partner (per condition).
    pub cells: u64,
    pub images: usize,
    /// View pairs per condition.
    pub pairs: usize,
    pub config: CorrespondenceConfig,
    /// Backbone output per view, [C, h, w].
    pub feature_shape: [i64; 3],
    pub seconds: f64,
}

/// Counts over the view-1 cells that have a partner.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Cells whose nearest view-2 cell is a partner.
    pub correct: u64,
    /// Cells with at least one partner.
    pub counted: u64,
    /// Sum over the counted cells of (partners / view-2 cells).
    pub chance_sum: f64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.correct += other.correct;
        self.counted += other.counted;
        self.chance_sum += other.chance_sum;
    }

    /// `correct / counted`, NaN when no cell counted.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.counted as f64
    }

    /// `chance_sum / counted`, NaN when no cell counted.
    pub fn chance(&self) -> f64 {
        self.chance_sum / self.counted as f64
    }
}

/// Correspondence accuracy of `backbone` on the val split of the
/// VOC-layout folder `voc`.
pub fn correspondence(
    backbone: &Backbone,
    voc: &Path,
    cfg: &CorrespondenceConfig,
) -> Result<CorrespondenceResult> {
    cfg.validate()?;
    let start = Instant::now();
    let val = VocSplit::open(voc, "val", class_names(voc)?.len())?;
    let conditions = [augment(cfg, true), augment(cfg, false)];
    let mut tallies = [Tally::default(); 2];
    let mut feature_shape = [0; 3];
    let images: Vec<usize> = (0..val.len()).collect();
    let images_per_chunk = (cfg.batch_size / cfg.pairs_per_image).max(1);
    for chunk in images.chunks(images_per_chunk) {
        // Decoding and augmenting dominate on CPU and are seeded per image:
        // parallel, and still the same draws.
        let pairs: Vec<[(View, View); 2]> = chunk
            .par_iter()
            .map(|&i| {
                let image = val.get(i)?.image;
                Ok((0..cfg.pairs_per_image)
                    .map(|p| {
                        conditions.each_ref().map(|aug| draw_pair(&image, aug, cfg.seed, i, p))
                    })
                    .collect::<Vec<_>>())
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        for batch in pairs.chunks(cfg.batch_size) {
            for (condition, tally) in tallies.iter_mut().enumerate() {
                let views: Vec<&(View, View)> = batch.iter().map(|p| &p[condition]).collect();
                let s = cfg.image_size;
                let (f1, f2) = (forward(backbone, &views, 0, s)?, forward(backbone, &views, 1, s)?);
                let (_, c, h, w) = f1.size4()?;
                feature_shape = [c, h, w];
                let coords1 = coords(&views, 0).to_device(f1.device());
                let coords2 = coords(&views, 1).to_device(f1.device());
                tally.add(score_batch(&f1, &f2, &coords1, &coords2, cfg.threshold)?);
            }
        }
    }
    let [with, without] = tallies;
    if with.counted == 0 {
        return Err(Error::data(
            voc,
            "no view-1 cell of any pair had a partner in view 2; draw more pairs_per_image",
        ));
    }
    Ok(CorrespondenceResult {
        accuracy: with.accuracy(),
        accuracy_no_colour: without.accuracy(),
        chance: with.chance(),
        chance_no_colour: without.chance(),
        cells: with.counted,
        images: val.len(),
        pairs: val.len() * cfg.pairs_per_image,
        config: cfg.clone(),
        feature_shape,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The views' augmentation: the `cpu` preset's at `cfg.image_size`, with
/// the photometric operations off unless `colour`.
fn augment(cfg: &CorrespondenceConfig, colour: bool) -> AugmentConfig {
    let mut aug = Preset::Cpu.config().augment;
    aug.image_size = cfg.image_size;
    if !colour {
        for view in [&mut aug.view1, &mut aug.view2] {
            view.jitter_p = 0.0;
            view.grayscale_p = 0.0;
            view.blur_p = 0.0;
            view.solarize_p = 0.0;
        }
    }
    aug
}

/// Pair `pair` of image `index`: each view from its own ChaCha stream of
/// the training's seeding ([`view_rng`], the pair in place of the epoch).
/// A view draws its crop and flip first, so switching the photometric
/// operations off changes its colours but not its geometry.
fn draw_pair(
    image: &RgbImage,
    aug: &AugmentConfig,
    seed: u64,
    index: usize,
    pair: usize,
) -> (View, View) {
    let rng = |view: u64| {
        let mut rng = view_rng(seed, pair as u64, index);
        rng.set_stream(view);
        rng
    };
    let v1 = make_view(image, &aug.view1, aug.image_size, &mut rng(1));
    let v2 = make_view(image, &aug.view2, aug.image_size, &mut rng(2));
    (v1, v2)
}

/// View `which` (0 or 1), `size` px a side, of every pair through the
/// backbone: [B, C, h, w].
fn forward(
    backbone: &Backbone,
    pairs: &[&(View, View)],
    which: usize,
    size: u32,
) -> Result<Tensor> {
    let pixels: Vec<f32> = pairs
        .iter()
        .flat_map(|p| if which == 0 { &p.0.pixels } else { &p.1.pixels })
        .copied()
        .collect();
    let s = i64::from(size);
    let x = Tensor::from_slice(&pixels).f_view([pairs.len() as i64, 3, s, s])?;
    Ok(backbone.features(&x.f_to_device(backbone.device())?).f_to_kind(Kind::Float)?)
}

/// The crop coordinates of view `which` of every pair: [B, 4].
fn coords(pairs: &[&(View, View)], which: usize) -> Tensor {
    let flat: Vec<f32> =
        pairs.iter().flat_map(|p| if which == 0 { p.0.coords } else { p.1.coords }).collect();
    Tensor::from_slice(&flat).view([pairs.len() as i64, 4])
}

/// [`score_pair`] summed over a batch: features [B, C, h, w] of both views,
/// their crop coordinates [B, 4] on the features' device.
pub fn score_batch(
    f1: &Tensor,
    f2: &Tensor,
    coords1: &Tensor,
    coords2: &Tensor,
    threshold: f64,
) -> Result<Tally> {
    let (b, _, h, w) = f1.size4()?;
    let mask = positive_mask(coords1, coords2, h, w, threshold); // [B, hw, hw]
    let mut tally = Tally::default();
    for i in 0..b {
        tally.add(score_pair(&f1.f_select(0, i)?, &f2.f_select(0, i)?, &mask.f_select(0, i)?)?);
    }
    Ok(tally)
}

/// One pair: features `f1`, `f2` [C, h, w] of view 1 and view 2, `mask`
/// [hw, hw] with `mask[i][j] = 1` when view-2 cell j is view-1 cell i's
/// partner (row-major cells). Ties in similarity go to the first view-2
/// cell, so featureless (constant) features always answer cell 0, a corner,
/// which is a partner less often than the average cell: they score at or
/// below chance, never above.
pub fn score_pair(f1: &Tensor, f2: &Tensor, mask: &Tensor) -> Result<Tally> {
    let (c, h, w) = f1.size3()?;
    if f2.size() != f1.size() || mask.size() != [h * w, h * w] {
        return Err(Error::config(
            "correspondence",
            format!(
                "features {:?} and {:?} with mask {:?}; expected two [C, h, w] and [hw, hw]",
                f1.size(),
                f2.size(),
                mask.size()
            ),
        ));
    }
    let cells = |f: &Tensor| -> Result<Tensor> {
        Ok(normalize_cells(&f.f_reshape([c, h * w])?.f_transpose(0, 1)?.f_to_kind(Kind::Float)?))
        // [hw, C]
    };
    let similarity = cells(f1)?.f_mm(&cells(f2)?.f_transpose(0, 1)?)?; // [hw, hw]
    let nearest = similarity.f_argmax(1, true)?; // [hw, 1]
    let mask = mask.f_to_kind(Kind::Float)?;
    let partners = mask.f_sum_dim_intlist(1, false, Kind::Float)?; // [hw]
    let counted = partners.f_gt(0.0)?; // [hw]
    let hit = mask.f_gather(1, &nearest, false)?.f_squeeze_dim(1)?.f_gt(0.5)?; // [hw]
    let count =
        |t: &Tensor| -> Result<u64> { Ok(t.f_sum(Kind::Int64)?.f_int64_value(&[])? as u64) };
    Ok(Tally {
        correct: count(&hit.f_logical_and(&counted)?)?,
        counted: count(&counted)?,
        chance_sum: partners.f_sum(Kind::Double)?.f_double_value(&[])? / (h * w) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resnet::Arch;
    use crate::transfer::voc::tests::write_voc;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use tch::Device;

    const GRID: i64 = 6;

    fn noise_image(w: u32, h: u32, seed: u64) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        RgbImage::from_fn(w, h, |_, _| image::Rgb([rng.random(), rng.random(), rng.random()]))
    }

    /// `n` pairs of one image at 32 px, with their coordinates [n, 4] x2.
    fn pairs(n: usize) -> (Vec<(View, View)>, Tensor, Tensor) {
        let image = noise_image(90, 70, 1);
        let cfg = CorrespondenceConfig { image_size: 32, ..Default::default() };
        let aug = augment(&cfg, true);
        let views: Vec<_> = (0..n).map(|p| draw_pair(&image, &aug, 0, 0, p)).collect();
        let refs: Vec<&(View, View)> = views.iter().collect();
        let (c1, c2) = (coords(&refs, 0), coords(&refs, 1));
        (views, c1, c2)
    }

    /// Features of a GRID x GRID map over a crop: each cell's centre in the
    /// source image, encoded by gaussian bumps on a 12 x 12 lattice: [C, h, w].
    fn position_features(coords: [f32; 4]) -> Tensor {
        let [x0, y0, x1, y1] = coords.map(f64::from);
        let (anchors, sigma) = (12usize, 0.08);
        let g = GRID as usize;
        let mut f = vec![0f32; anchors * anchors * g * g];
        for y in 0..g {
            for x in 0..g {
                let cx = x0 + (x as f64 + 0.5) * (x1 - x0) / g as f64;
                let cy = y0 + (y as f64 + 0.5) * (y1 - y0) / g as f64;
                for a in 0..anchors * anchors {
                    let ax = (a % anchors) as f64 / (anchors - 1) as f64;
                    let ay = (a / anchors) as f64 / (anchors - 1) as f64;
                    let d2 = (cx - ax).powi(2) + (cy - ay).powi(2);
                    f[(a * g + y) * g + x] = (-d2 / (2.0 * sigma * sigma)).exp() as f32;
                }
            }
        }
        Tensor::from_slice(&f).view([(anchors * anchors) as i64, GRID, GRID])
    }

    #[test]
    fn hand_made_pair() {
        // Two cells a side. View-1 cell 0 has partners {1}; cell 1 none.
        let mask = Tensor::from_slice(&[0f32, 1.0, 0.0, 0.0]).view([2, 2]);
        let f1 = Tensor::from_slice(&[1f32, 0.0, 0.0, 1.0]).view([2, 1, 2]); // cells (1,0), (0,1)
        let near = Tensor::from_slice(&[0f32, 1.0, 1.0, 0.1]).view([2, 1, 2]); // (0,1), (1,.1)
        let far = Tensor::from_slice(&[1f32, 0.0, 0.1, 1.0]).view([2, 1, 2]); // (1,.1), (0,1)
        let right = score_pair(&f1, &near, &mask).unwrap();
        assert_eq!(right, Tally { correct: 1, counted: 1, chance_sum: 0.5 });
        assert_eq!(score_pair(&f1, &far, &mask).unwrap().correct, 0);
        assert!(score_pair(&f1, &near, &mask.view([1, 4])).is_err());
    }

    #[test]
    fn features_that_encode_position_find_their_partners() {
        let (views, c1, c2) = pairs(60);
        let stack = |which: usize| {
            let maps: Vec<Tensor> = views
                .iter()
                .map(|v| position_features(if which == 0 { v.0.coords } else { v.1.coords }))
                .collect();
            Tensor::stack(&maps, 0)
        };
        let tally = score_batch(&stack(0), &stack(1), &c1, &c2, 0.7).unwrap();
        assert!(tally.counted > 300, "{tally:?}");
        assert!(tally.accuracy() > 0.9, "{tally:?}, chance {}", tally.chance());
        assert!(tally.chance() < 0.5, "{tally:?}");
    }

    #[test]
    fn constant_and_noise_features_score_at_chance() {
        let n = 300;
        let (_, c1, c2) = pairs(n);
        let constant = Tensor::ones([n as i64, 4, GRID, GRID], tch::kind::FLOAT_CPU);
        let tally = score_batch(&constant, &constant, &c1, &c2, 0.7).unwrap();
        assert!(tally.counted > 2000, "{tally:?}");
        assert!(tally.accuracy() <= tally.chance() + 0.02, "{tally:?} chance {}", tally.chance());

        tch::manual_seed(0);
        let noise = || Tensor::randn([n as i64, 16, GRID, GRID], tch::kind::FLOAT_CPU);
        let tally = score_batch(&noise(), &noise(), &c1, &c2, 0.7).unwrap();
        let (acc, chance) = (tally.accuracy(), tally.chance());
        assert!((acc - chance).abs() < 0.015, "accuracy {acc}, chance {chance}, {tally:?}");
    }

    #[test]
    fn pairs_are_seeded_and_share_crops_across_conditions() {
        let image = noise_image(90, 70, 2);
        let cfg = CorrespondenceConfig { image_size: 32, ..Default::default() };
        let (colour, plain) = (augment(&cfg, true), augment(&cfg, false));
        let a = draw_pair(&image, &colour, 3, 5, 1);
        assert_eq!(a, draw_pair(&image, &colour, 3, 5, 1));
        assert_ne!(a.0.coords, draw_pair(&image, &colour, 3, 5, 2).0.coords);
        assert_ne!(a.0.coords, draw_pair(&image, &colour, 3, 6, 1).0.coords);
        assert_ne!(a.0.coords, a.1.coords);
        // View 1 is always blurred with colour on: same crop, other pixels.
        let b = draw_pair(&image, &plain, 3, 5, 1);
        assert_eq!((a.0.coords, a.1.coords), (b.0.coords, b.1.coords));
        assert_ne!(a.0.pixels, b.0.pixels);
    }

    #[test]
    fn end_to_end_on_a_tiny_voc_folder_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let (w, h) = (80u32, 64u32);
        let ids = ["a", "b", "c", "d"];
        let samples: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let rgb = noise_image(w, h, i as u64).pixels().map(|p| p.0).collect();
                (*id, if i == 0 { "train" } else { "val" }, rgb, vec![0u8; (w * h) as usize])
            })
            .collect();
        write_voc(dir.path(), w, h, &samples);
        let backbone = Backbone::random(Arch::ResNet18, 16, 0, Device::Cpu).unwrap();
        let cfg = CorrespondenceConfig {
            image_size: 32,
            pairs_per_image: 4,
            batch_size: 12,
            ..Default::default()
        };
        let r = correspondence(&backbone, dir.path(), &cfg).unwrap();
        assert_eq!((r.images, r.pairs, r.feature_shape), (3, 12, [512, 2, 2]));
        assert!(r.cells > 0 && r.cells <= 12 * 4, "{r:?}");
        for v in [r.accuracy, r.accuracy_no_colour, r.chance] {
            assert!((0.0..=1.0).contains(&v), "{r:?}");
        }
        assert!(r.chance > 0.0 && r.chance == r.chance_no_colour, "{r:?}");
        let again = correspondence(&backbone, dir.path(), &cfg).unwrap();
        assert_eq!(
            (again.accuracy, again.accuracy_no_colour, again.chance, again.cells),
            (r.accuracy, r.accuracy_no_colour, r.chance, r.cells)
        );
        let bad = CorrespondenceConfig { pairs_per_image: 0, ..cfg };
        let e = correspondence(&backbone, dir.path(), &bad).unwrap_err().to_string();
        assert!(e.contains("correspondence.pairs_per_image"), "{e}");
    }
}

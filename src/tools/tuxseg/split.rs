//! The splits that keep val unseen: photos into pretraining and held-out backgrounds, each
//! class's stamps into A (pretraining and train) and B (val only), both by identity.
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;

use super::stamps::Stamp;
use super::{missing_sources, stream_rng, CLASSES, STREAM_PHOTO_SPLIT, STREAM_STAMP_SPLIT};
use crate::Result;

/// Share of photos held out for the probe splits (data.md: about 3:1).
const HELDOUT_SHARE: f64 = 0.25;
/// Share of each class's stamps that go to B, the val-only set (data.md: about 7:3).
const B_SHARE: f64 = 0.3;

/// Splits photo files about 3:1 into (pretraining, held-out), both sorted.
pub(super) fn split_photos(paths: &[PathBuf], seed: u64) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut shuffled = paths.to_vec();
    shuffled.shuffle(&mut stream_rng(seed, STREAM_PHOTO_SPLIT, 0));
    let heldout_n =
        ((paths.len() as f64 * HELDOUT_SHARE).round() as usize).clamp(1, paths.len() - 1);
    let mut heldout = shuffled.split_off(paths.len() - heldout_n);
    shuffled.sort();
    heldout.sort();
    (shuffled, heldout)
}

/// Stamp indices per class (index 0, background, stays empty).
pub(super) type ClassPools = Vec<Vec<usize>>;

/// Splits each class's stamps ~7:3 by identity into A and B.
pub(super) fn split_stamps(
    stamps: &[Stamp],
    seed: u64,
    root: &Path,
) -> Result<(ClassPools, ClassPools)> {
    let (mut a, mut b) = (vec![Vec::new(); CLASSES.len()], vec![Vec::new(); CLASSES.len()]);
    for class in 1..CLASSES.len() {
        let mut ids: Vec<usize> =
            (0..stamps.len()).filter(|&i| stamps[i].class as usize == class).collect();
        if ids.len() < 2 {
            return Err(missing_sources(
                root,
                format!(
                    "class `{}` has {} photo-like stamps, need at least 2 for the A/B split",
                    CLASSES[class],
                    ids.len()
                ),
            ));
        }
        ids.shuffle(&mut stream_rng(seed, STREAM_STAMP_SPLIT, class));
        let b_n = ((ids.len() as f64 * B_SHARE).round() as usize).clamp(1, ids.len() - 1);
        b[class] = ids.split_off(ids.len() - b_n);
        b[class].sort();
        ids.sort();
        a[class] = ids;
    }
    Ok((a, b))
}

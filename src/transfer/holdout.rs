//! A held-out part of a train split, to choose recipes on without looking
//! at val. [`write_holdout`] makes a VOC folder whose `train` split is the
//! rest of the source's train split and whose `val` split is the held-out
//! part, so every evaluation (and any other VOC reader) scores on images
//! the final report never uses. Images and masks are linked, not copied;
//! `holdout.json` says where they came from and what was held out.
//!
//! Given a folder made by `pixpro data tuxseg` (with `pretrain/` and
//! `voc/`), it writes the same layout, `pretrain/` linked, so that an
//! experiment plan's `data` can point at it unchanged.
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::files::write_atomically;
use crate::transfer::voc::{class_names, seeded_subset, VocSplit};
use crate::{Error, Result};

/// What [`write_holdout`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Holdout {
    /// The VOC folder the splits were taken from.
    pub source: PathBuf,
    pub fraction: f64,
    pub seed: u64,
    /// Images of the new `train` split, and of the new `val` split (the
    /// held-out ones).
    pub train: usize,
    pub val: usize,
    /// The held-out ids, in the source's order.
    pub held_out: Vec<String>,
}

fn link(target: &Path, at: &Path) -> Result<()> {
    let target = target.canonicalize().map_err(|e| Error::io(target, e))?;
    std::os::unix::fs::symlink(&target, at).map_err(|e| Error::io(at, e))
}

fn write_lines(path: &Path, ids: &[&String]) -> Result<()> {
    let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
    write_atomically(path, text.as_bytes())
}

/// Holds out `fraction` of `from`'s train split (a seeded choice, the one
/// fine-tuning's `train_fraction` makes for the same seed) as `out`'s val
/// split; the rest is `out`'s train split. `from` is a VOC folder or a
/// `pixpro data tuxseg` folder; `out` must be missing or empty.
pub fn write_holdout(from: &Path, out: &Path, fraction: f64, seed: u64) -> Result<Holdout> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::config("fraction", format!("{fraction} is not in (0, 1)")));
    }
    let tuxseg = from.join("voc").is_dir() && from.join("pretrain").is_dir();
    let voc = if tuxseg { from.join("voc") } else { from.to_path_buf() };
    let classes = class_names(&voc)?;
    let train = VocSplit::open(&voc, "train", classes.len())?;
    let picked = seeded_subset(train.len(), fraction, seed);
    if picked.len() == train.len() {
        return Err(Error::data(
            &voc,
            format!(
                "holding out {fraction} of {} train images leaves none to train on",
                train.len()
            ),
        ));
    }
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        if entries.next().is_some() {
            return Err(Error::data(out, "exists and is not empty: give a new folder"));
        }
    }
    let out_voc = if tuxseg { out.join("voc") } else { out.to_path_buf() };
    let lists = out_voc.join("ImageSets").join("Segmentation");
    std::fs::create_dir_all(&lists).map_err(|e| Error::io(&lists, e))?;
    for folder in ["JPEGImages", "SegmentationClass"] {
        link(&voc.join(folder), &out_voc.join(folder))?;
    }
    if tuxseg {
        link(&from.join("pretrain"), &out.join("pretrain"))?;
    }
    let names: String = classes.iter().map(|c| format!("{c}\n")).collect();
    write_atomically(&out_voc.join("classes.txt"), names.as_bytes())?;
    let ids = train.ids();
    let is_held = |i: usize| picked.binary_search(&i).is_ok();
    let kept: Vec<&String> =
        ids.iter().enumerate().filter(|(i, _)| !is_held(*i)).map(|(_, id)| id).collect();
    let held: Vec<&String> = picked.iter().map(|&i| &ids[i]).collect();
    write_lines(&lists.join("train.txt"), &kept)?;
    write_lines(&lists.join("val.txt"), &held)?;
    let summary = Holdout {
        source: voc.canonicalize().map_err(|e| Error::io(&voc, e))?,
        fraction,
        seed,
        train: kept.len(),
        val: held.len(),
        held_out: held.into_iter().cloned().collect(),
    };
    let json = serde_json::to_string_pretty(&summary)
        .map_err(|e| Error::data(out, format!("cannot write holdout.json: {e}")))?;
    write_atomically(&out.join("holdout.json"), json.as_bytes())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::voc::tests::{write_voc, Sample};

    fn source(root: &Path, n: usize) {
        let ids: Vec<String> = (0..n).map(|i| format!("im{i}")).collect();
        let samples: Vec<Sample> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let split = if i < n - 2 { "train" } else { "val" };
                (id.as_str(), split, vec![[20 * i as u8, 0, 0]; 4], vec![(i % 2) as u8; 4])
            })
            .collect();
        write_voc(root, 2, 2, &samples);
        std::fs::write(root.join("classes.txt"), "bg\nthing\n").unwrap();
    }

    #[test]
    fn the_held_out_part_becomes_val_and_the_rest_train() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        source(&src, 12);
        let out = dir.path().join("sel");
        let h = write_holdout(&src, &out, 0.2, 3).unwrap();
        assert_eq!((h.train, h.val), (8, 2));
        let classes = class_names(&out).unwrap();
        assert_eq!(classes, ["bg", "thing"]);
        let train = VocSplit::open(&out, "train", 2).unwrap();
        let val = VocSplit::open(&out, "val", 2).unwrap();
        // Together exactly the source's train split; none of its val.
        let mut all: Vec<&String> = train.ids().iter().chain(val.ids()).collect();
        all.sort();
        let mut want: Vec<String> = (0..10).map(|i| format!("im{i}")).collect();
        want.sort();
        assert_eq!(all, want.iter().collect::<Vec<_>>());
        assert_eq!(val.ids(), h.held_out.as_slice());
        // The images read through the links, the same pixels (JPEG: nearly).
        let s = val.get(0).unwrap();
        let i: i32 = s.id[2..].parse().unwrap();
        let red = i32::from(s.image.get_pixel(0, 0).0[0]);
        assert!((red - 20 * i).abs() <= 3, "{} reads red {red}", s.id);
        // The same seed holds out the same images; another seed others.
        let again = write_holdout(&src, &dir.path().join("again"), 0.2, 3).unwrap();
        assert_eq!(again.held_out, h.held_out);
        let other = write_holdout(&src, &dir.path().join("other"), 0.2, 4).unwrap();
        assert_ne!(other.held_out, h.held_out);
        assert!(out.join("holdout.json").is_file());
    }

    #[test]
    fn a_tuxseg_folder_keeps_its_layout_and_bad_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        source(&data.join("voc"), 6);
        std::fs::create_dir_all(data.join("pretrain")).unwrap();
        std::fs::write(data.join("pretrain/a.png"), b"x").unwrap();
        let out = dir.path().join("sel");
        let h = write_holdout(&data, &out, 0.5, 0).unwrap();
        assert_eq!((h.train, h.val), (2, 2));
        assert!(out.join("pretrain/a.png").is_file());
        assert!(VocSplit::open(out.join("voc"), "val", 2).is_ok());

        let e = write_holdout(&data, &out, 0.5, 0).unwrap_err().to_string();
        assert!(e.contains("sel") && e.contains("not empty"), "{e}");
        let e = write_holdout(&data, &dir.path().join("x"), 1.0, 0).unwrap_err().to_string();
        assert!(e.contains("fraction"), "{e}");
        let e = write_holdout(&data, &dir.path().join("y"), 0.99, 0).unwrap_err().to_string();
        assert!(e.contains("leaves none"), "{e}");
        let e = write_holdout(&dir.path().join("nowhere"), &dir.path().join("z"), 0.5, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nowhere"), "{e}");
    }
}

//! The build end to end on tiny synthetic photos and stamps: splits, masks, layout, determinism
//! and the errors a user meets.
use std::collections::{BTreeMap, BTreeSet};

use image::{Rgb, Rgba, RgbaImage};
use rand::Rng;
use serde_json::Value;

use super::compose::{placed_cutout, Placed};
use super::stamps::find_stamps;
use super::*;

/// One stamp folder per class, in class order.
const CLASS_DIRS: [&str; 7] = [
    "animals/mammals/cats",
    "animals/birds",
    "animals/fish",
    "food/fruit",
    "plants/flowers",
    "household/tools",
    "vehicles/auto",
];

/// An ellipse cutout with a ~2 px soft edge; noisy colour around `base` when `textured`,
/// one flat colour (clip-art) otherwise.
fn write_stamp(path: &Path, w: u32, h: u32, base: [u8; 3], textured: bool, rng: &mut ChaCha8Rng) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let (rx, ry) = (w as f64 / 2.0, h as f64 / 2.0);
    let img = RgbaImage::from_fn(w, h, |x, y| {
        let (dx, dy) = ((x as f64 + 0.5 - rx) / rx, (y as f64 + 0.5 - ry) / ry);
        let r = (dx * dx + dy * dy).sqrt();
        let alpha = ((1.0 - r) * rx.min(ry) / 2.0).clamp(0.0, 1.0);
        let mut c = base;
        if textured {
            for v in &mut c {
                *v = (*v as i32 + rng.random_range(-40..=40)).clamp(0, 255) as u8;
            }
        }
        Rgba([c[0], c[1], c[2], (alpha * 255.0).round() as u8])
    });
    img.save(path).unwrap();
}

/// 8 noise-and-gradient "photos" and 3 textured stamps per class, plus stamps the filters
/// must drop: a flat drawing, a mirror duplicate, a cartoon and one outside every class.
fn make_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let photos = dir.join("photos");
    fs::create_dir_all(&photos).unwrap();
    for i in 0..8u32 {
        let img = RgbImage::from_fn(120, 90, |x, y| {
            let n: u8 = rng.random_range(0..40);
            Rgb([(x * 2) as u8 / 2 + n, (y * 2) as u8 / 2 + n, (i * 25) as u8 + n])
        });
        img.save(photos.join(format!("photo{i}.jpg"))).unwrap();
    }
    let stamps = dir.join("stamps");
    for (c, sub) in CLASS_DIRS.iter().enumerate() {
        for k in 0..3u32 {
            let base = [(c * 35) as u8, (k * 80) as u8, 200 - (c * 25) as u8];
            let path = stamps.join(sub).join(format!("thing{k}.png"));
            write_stamp(&path, 50 + 6 * k, 40, base, true, &mut rng);
        }
    }
    let birds = stamps.join("animals/birds");
    write_stamp(&birds.join("flat.png"), 50, 40, [200, 30, 30], false, &mut rng);
    write_stamp(&birds.join("thing0_mirror.png"), 50, 40, [9, 9, 9], true, &mut rng);
    write_stamp(&birds.join("cartoon/toon.png"), 50, 40, [9, 9, 9], true, &mut rng);
    write_stamp(&stamps.join("symbols/star.png"), 50, 40, [9, 9, 9], true, &mut rng);
    (photos, stamps)
}

fn options(inputs: &(PathBuf, PathBuf), out: PathBuf, seed: u64) -> TuxsegOptions {
    TuxsegOptions {
        out,
        seed,
        photo_roots: vec![inputs.0.clone()],
        stamp_root: inputs.1.clone(),
        pretrain_images: 10,
        train_images: 8,
        val_images: 8,
        image_size: 64,
    }
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn stamp_ids(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

fn placed(o: &Value) -> Placed {
    let n = |k: &str| o[k].as_u64().unwrap() as u32;
    Placed {
        stamp: o["stamp"].as_str().unwrap().to_string(),
        class: n("class") as u8,
        x: n("x"),
        y: n("y"),
        w: n("w"),
        h: n("h"),
        flip: o["flip"].as_bool().unwrap(),
    }
}

/// The label a pixel must have: the topmost object whose hard mask or 1-px ring holds it.
fn expected_label(objects: &[(Placed, RgbaImage)], px: u32, py: u32) -> u8 {
    let solid = |o: &Placed, cut: &RgbaImage, x: i64, y: i64| {
        x >= 0
            && y >= 0
            && x < o.w as i64
            && y < o.h as i64
            && cut.get_pixel(x as u32, y as u32)[3] >= 128
    };
    for (o, cut) in objects.iter().rev() {
        let (x, y) = (px as i64 - o.x as i64, py as i64 - o.y as i64);
        if solid(o, cut, x, y) {
            return o.class;
        }
        if (-1..=1).any(|dy| (-1..=1).any(|dx| solid(o, cut, x + dx, y + dy))) {
            return IGNORE;
        }
    }
    0
}

#[test]
fn tiny_build_has_disjoint_splits_exact_masks_and_voc_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = make_inputs(tmp.path());
    let out = tmp.path().join("out");
    let summary = build(&options(&inputs, out.clone(), 3)).unwrap();
    assert_eq!((summary.pretrain_photos, summary.heldout_photos), (6, 2));
    assert_eq!(summary.stamps_a, vec![0, 2, 2, 2, 2, 2, 2, 2]);
    assert_eq!(summary.stamps_b, vec![0, 1, 1, 1, 1, 1, 1, 1]);

    let manifest: Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    check_split_sources(&manifest);
    check_top_level_files(&out);
    check_labels(&manifest, &out.join("voc"), &inputs.1);
}

/// Photos and stamp identities are disjoint across splits, the filters dropped what they must,
/// and every scene draws only on its own split's photos and stamps.
fn check_split_sources(manifest: &Value) {
    let (pre_photos, held_photos) =
        (strings(&manifest["pretrain_photos"]), strings(&manifest["heldout_photos"]));
    assert!(pre_photos.is_disjoint(&held_photos));
    let (a, b) = (stamp_ids(&manifest["stamps_a"]), stamp_ids(&manifest["stamps_b"]));
    assert!(a.is_disjoint(&b));
    let rejected: BTreeSet<String> = manifest["rejected_stamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    for id in ["animals/birds/flat", "animals/birds/thing0_mirror", "animals/birds/cartoon/toon"] {
        assert!(rejected.contains(id) && !a.contains(id) && !b.contains(id), "{id}");
    }
    assert!(!rejected.contains("symbols/star") && !a.contains("symbols/star"));
    for (split, photos, pool) in
        [("pretrain", &pre_photos, &a), ("train", &held_photos, &a), ("val", &held_photos, &b)]
    {
        for scene in manifest[split].as_array().unwrap() {
            assert!(photos.contains(scene["photo"].as_str().unwrap()), "{split} photo");
            for o in scene["objects"].as_array().unwrap() {
                assert!(pool.contains(o["stamp"].as_str().unwrap()), "{split} stamp");
            }
        }
    }
}

fn check_top_level_files(out: &Path) {
    let classes = fs::read_to_string(out.join("classes.txt")).unwrap();
    assert_eq!(classes.lines().collect::<Vec<_>>(), CLASSES.to_vec());
    let readme = fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("real photos with pasted real-object cutouts"));
    assert_eq!(fs::read_dir(out.join("pretrain")).unwrap().count(), 10);
}

/// Pixel counts over every labelled scene, judged once all are read.
#[derive(Default)]
struct Tally {
    class_px: usize,
    ignore_px: usize,
    interior_err: u64,
    interior_n: u64,
}

/// The VOC lists match the manifest, and every label pixel is what the manifest's objects make
/// it while the image shows the pasted stamps.
fn check_labels(manifest: &Value, voc: &Path, stamp_root: &Path) {
    let (stamps, _) = find_stamps(stamp_root, 64).unwrap();
    let by_id: BTreeMap<&str, &RgbaImage> =
        stamps.iter().map(|s| (s.id.as_str(), &s.rgba)).collect();
    let mut tally = Tally::default();
    for split in ["train", "val"] {
        let list =
            fs::read_to_string(voc.join(format!("ImageSets/Segmentation/{split}.txt"))).unwrap();
        let scenes = manifest[split].as_array().unwrap();
        assert_eq!(
            list.lines().collect::<Vec<_>>(),
            scenes.iter().map(|s| s["name"].as_str().unwrap()).collect::<Vec<_>>()
        );
        for scene in scenes {
            check_scene(voc, scene, &by_id, &mut tally);
        }
    }
    let Tally { class_px, ignore_px, interior_err, interior_n } = tally;
    assert!(class_px > 0 && ignore_px > 0 && ignore_px < class_px, "{class_px} {ignore_px}");
    // Noisy stamps through JPEG: a pasted pixel stays close to the stamp, a missed paste
    // would be ~100 levels off.
    let mean_err = interior_err as f64 / (3 * interior_n) as f64;
    assert!(mean_err < 25.0, "mean error {mean_err}");
}

fn check_scene(voc: &Path, scene: &Value, by_id: &BTreeMap<&str, &RgbaImage>, tally: &mut Tally) {
    let name = scene["name"].as_str().unwrap();
    let image = image::open(voc.join(format!("JPEGImages/{name}.jpg"))).unwrap().to_rgb8();
    let label = image::open(voc.join(format!("SegmentationClass/{name}.png"))).unwrap();
    assert_eq!(label.color(), image::ColorType::L8);
    let label = label.to_luma8();
    assert_eq!((image.dimensions(), label.dimensions()), ((64, 64), (64, 64)));
    let objects: Vec<(Placed, RgbaImage)> = scene["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let p = placed(o);
            let cut = placed_cutout(by_id[p.stamp.as_str()], &p);
            (p, cut)
        })
        .collect();
    assert!((1..=3).contains(&objects.len()));
    for (x, y, v) in label.enumerate_pixels() {
        let v = v[0];
        assert!((v as usize) < CLASSES.len() || v == IGNORE, "value {v}");
        assert_eq!(v, expected_label(&objects, x, y), "{name} at ({x}, {y})");
        tally.class_px += (v != 0 && v != IGNORE) as usize;
        tally.ignore_px += (v == IGNORE) as usize;
        tally_interior(&objects, &image, x, y, tally);
    }
}

/// Where the top object is fully opaque the image shows the stamp (up to JPEG): adds that
/// pixel's error to the tally.
fn tally_interior(
    objects: &[(Placed, RgbaImage)],
    image: &RgbImage,
    x: u32,
    y: u32,
    tally: &mut Tally,
) {
    if let Some((o, cut)) =
        objects.iter().rev().find(|(o, _)| x >= o.x && y >= o.y && x < o.x + o.w && y < o.y + o.h)
    {
        let c = cut.get_pixel(x - o.x, y - o.y);
        if c[3] == 255 {
            tally.interior_n += 1;
            tally.interior_err += (0..3)
                .map(|k| (c[k] as i64 - image.get_pixel(x, y)[k] as i64).unsigned_abs())
                .sum::<u64>();
        }
    }
}

fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap())
        // The lock says when its build ran, to the second.
        .filter(|e| e.file_type().is_file() && e.file_name() != crate::train::lock::LOCK_FILE)
        .map(|e| (e.path().strip_prefix(root).unwrap().to_path_buf(), fs::read(e.path()).unwrap()))
        .collect()
}

#[test]
fn same_seed_gives_identical_bytes_and_another_seed_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = make_inputs(tmp.path());
    for (dir, seed) in [("a", 5), ("b", 5), ("c", 6)] {
        build(&options(&inputs, tmp.path().join(dir), seed)).unwrap();
    }
    let (a, b, c) =
        (files(&tmp.path().join("a")), files(&tmp.path().join("b")), files(&tmp.path().join("c")));
    assert!(a.len() > 30);
    assert!(a == b, "same seed, different output");
    let differing = a.iter().zip(&c).filter(|(x, y)| x.1 != y.1).count();
    assert!(differing > a.len() / 2, "only {differing} files differ across seeds");
}

#[test]
fn missing_sources_name_the_install_line() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = make_inputs(tmp.path());
    let mut opts = options(&inputs, tmp.path().join("out"), 0);
    opts.photo_roots = vec![tmp.path().join("no-photos"), tmp.path().join("nor-here.jpg")];
    let err = build(&opts).unwrap_err().to_string();
    assert!(err.contains(INSTALL_LINE), "{err}");

    let mut opts = options(&inputs, tmp.path().join("out"), 0);
    opts.stamp_root = tmp.path().join("no-stamps");
    let err = build(&opts).unwrap_err().to_string();
    assert!(err.contains(INSTALL_LINE), "{err}");
}

#[test]
fn refuses_a_non_empty_output_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = make_inputs(tmp.path());
    let err = build(&options(&inputs, tmp.path().to_path_buf(), 0)).unwrap_err();
    assert!(matches!(err, Error::Config { ref key, .. } if key == "out"), "{err}");
}

#[test]
fn a_folder_another_build_holds_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = make_inputs(tmp.path());
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let other = fs::File::create(out.join(crate::train::lock::LOCK_FILE)).unwrap();
    other.try_lock().unwrap();
    let err = build(&options(&inputs, out.clone(), 0)).unwrap_err();
    assert!(matches!(err, Error::Busy { ref dir, .. } if *dir == out), "{err}");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 1);
}

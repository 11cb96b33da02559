//! Helpers shared by the end-to-end tests: a tiny recipe, generated images,
//! checkpoint comparison and reading event files with TensorBoard.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::Command;

use pixpro::train::checkpoint::Checkpoint;
use pixpro::train::{RunDir, RunOptions};

/// Runs the pixpro binary: whether it succeeded, its stdout and stderr. A
/// panic fails the test whatever the exit status.
pub fn pixpro(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixpro")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "pixpro {args:?} panicked:\n{stderr}");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), stderr)
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny network and data set so that a step takes milliseconds.
pub const TINY: &str = r#"
[model]
arch = "resnet18"
output_stride = 8
proj_hidden = 32
proj_dim = 16
[augment]
image_size = 32
[optim]
warmup_epochs = 0.5
[train]
batch_size = 4
steps = 6
workers = 2
log_every = 1
checkpoint_every = 3
device = "cpu"
"#;

/// Writes `n` small photos-like images: smooth gradients with a few blocks,
/// different per image, some PNG and some JPEG in nested folders.
pub fn make_images(dir: &Path, n: u32) {
    for i in 0..n {
        let sub = dir.join(format!("group{}", i % 3));
        std::fs::create_dir_all(&sub).unwrap();
        let img = image::RgbImage::from_fn(64 + 8 * (i % 4), 48 + 4 * (i % 5), |x, y| {
            let block = ((x / 12 + y / 12 + i) % 3) as u8;
            image::Rgb([
                (x * 4 + i * 20) as u8,
                (y * 5 + block as u32 * 60) as u8,
                ((x + y) * 2 + i * 7) as u8,
            ])
        });
        let ext = if i % 2 == 0 { "png" } else { "jpg" };
        img.save(sub.join(format!("img{i}.{ext}"))).unwrap();
    }
}

pub fn options(data: &Path, run: &Path, stop_at: Option<u64>) -> RunOptions {
    RunOptions { stop_at, quiet: true, ..RunOptions::new(data, RunDir::new(run)) }
}

/// Every tensor of a checkpoint (online, target, optim), by full name.
pub fn tensors(path: &Path) -> Vec<(String, tch::Tensor)> {
    let ck = Checkpoint::load(path).unwrap();
    let mut out = Vec::new();
    for group in ["online", "target", "optim"] {
        for (name, t) in ck.group(group) {
            out.push((format!("{group}/{name}"), t.shallow_clone()));
        }
    }
    assert!(!out.is_empty());
    out
}

/// Every tensor of two checkpoints equal, bit for bit.
pub fn assert_same_tensors(a: &Path, b: &Path) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs");
    }
}

/// A VOC-layout folder whose classes are two colours on a dark background.
pub fn tiny_voc(root: &Path) {
    for d in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("classes.txt"), "background\nred\nblue\n").unwrap();
    let mut lists = (String::new(), String::new());
    for i in 0..8u32 {
        let (w, h) = (48, 40);
        let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([20, 20, 20]));
        let mut mask = image::GrayImage::new(w, h);
        let class = 1 + (i % 2) as u8;
        let colour = if class == 1 { [220, 30, 30] } else { [30, 30, 220] };
        for y in 8..28 {
            for x in (4 + i)..(24 + i) {
                img.put_pixel(x, y, image::Rgb(colour));
                mask.put_pixel(x, y, image::Luma([class]));
            }
        }
        let id = format!("s{i}");
        img.save(root.join("JPEGImages").join(format!("{id}.jpg"))).unwrap();
        mask.save(root.join("SegmentationClass").join(format!("{id}.png"))).unwrap();
        let list = if i < 6 { &mut lists.0 } else { &mut lists.1 };
        list.push_str(&id);
        list.push('\n');
    }
    std::fs::write(root.join("ImageSets/Segmentation/train.txt"), lists.0).unwrap();
    std::fs::write(root.join("ImageSets/Segmentation/val.txt"), lists.1).unwrap();
}

/// The scalars of a metrics line: the host's CPU steal share is one of
/// them only where Linux reports it.
pub const TRAIN_SCALARS: usize = if cfg!(target_os = "linux") { 12 } else { 11 };

/// Reads the TensorBoard event files of `dir` with the `tensorboard` Python
/// package (tests/tensorboard_events.py) and checks that they hold every
/// number of its metrics.jsonl at every logged step once, and each of
/// `scores` (tag, value, step) once; what the script said.
pub fn check_events(dir: &Path, scores: &[(&str, f64, u64)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let out = Command::new(&python)
        .arg(root.join("tests/tensorboard_events.py"))
        .arg(dir)
        .args(scores.iter().map(|(tag, value, step)| format!("--score={tag}={value}@{step}")))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", python.display()));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "TensorBoard's reading of {}:\n{text}", dir.display());
    text
}

//! Transfer end to end through the binary: every export format checked
//! from Python (torchvision, timm, mmdet, Detectron2), embed, probe
//! (pretrained and random init) on a tiny VOC-layout folder, and the errors
//! for bad checkpoints.
use std::path::{Path, PathBuf};
use std::process::Command;

use pixpro::train::config::Config;
use pixpro::train::{pretrain, RunDir, RunOptions};

mod common;
use common::{pixpro, s, tiny_voc};

/// Output stride 32 so that the Python side can run torchvision's ResNet
/// (which has no dilated ResNet-18) on the exported weights.
const TINY: &str = r#"
[model]
arch = "resnet18"
output_stride = 32
proj_hidden = 32
proj_dim = 16
[augment]
image_size = 64
[train]
batch_size = 4
steps = 2
workers = 1
checkpoint_every = 2
device = "cpu"
"#;

fn scene(i: u32, w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 3 + i * 30) as u8, (y * 4) as u8, ((x ^ y) + i * 11) as u8])
    })
}

/// A trained checkpoint of the tiny recipe, and the folder of its images.
fn checkpoint(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("images");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..6 {
        scene(i, 96, 80).save(data.join(format!("{i}.png"))).unwrap();
    }
    let cfg = Config::from_toml_str(TINY, &Config::default()).unwrap();
    let run = dir.join("run");
    let opts = RunOptions { quiet: true, ..RunOptions::new(&data, RunDir::new(&run)) };
    pretrain(&cfg, &opts).unwrap();
    (run.join("checkpoints/last.safetensors"), data)
}

#[test]
fn exports_load_in_python_and_match_embed() {
    let tmp = tempfile::tempdir().unwrap();
    let (ckpt, data) = checkpoint(tmp.path());
    let out = |name: &str| tmp.path().join(name);
    let files = [
        ("torchvision", out("r18.safetensors")),
        ("pth", out("r18.pth")),
        ("mmdet", out("r18-mmdet.pth")),
        ("detectron2", out("r18.pkl")),
    ];
    for (format, file) in &files {
        let (ok, _, err) =
            pixpro(&["export", "--checkpoint", s(&ckpt), "--format", format, "--out", s(file)]);
        assert!(ok, "{format}: {err}");
        assert!(err.contains("output stride 32"), "{format}: {err}");
    }
    // timm's ResNet has torchvision's names: `--format timm` is the pth file.
    let timm = out("r18-timm.pth");
    let (ok, _, err) =
        pixpro(&["export", "--checkpoint", s(&ckpt), "--format", "timm", "--out", s(&timm)]);
    assert!(ok, "{err}");
    for (a, b) in [(timm, out("r18.pth")), (out("r18-timm.pth.json"), out("r18.pth.json"))] {
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{}", a.display());
    }

    let image = data.join("3.png");
    let feats = tmp.path().join("f.safetensors");
    let (ok, _, err) = pixpro(&[
        "embed",
        "--checkpoint",
        s(&ckpt),
        "--image",
        s(&image),
        "--out",
        s(&feats),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let raw = pixpro::data::dataset::load_rgb(&image).unwrap();
    let (w, h) = raw.dimensions();
    let rgb = tch::Tensor::from_slice(raw.as_raw()).view([h as i64, w as i64, 3]);
    let rgb_path = tmp.path().join("rgb.safetensors");
    tch::Tensor::write_safetensors(&[("rgb", rgb)], &rgb_path).unwrap();

    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/export_roundtrip.py");
    let mut cmd = Command::new(&python);
    cmd.args([s(&script), "--arch", "resnet18", "--source", s(&ckpt)]);
    for (format, file) in &files {
        cmd.args([&format!("--{format}"), s(file)]);
    }
    let out = cmd
        .args(["--features", s(&feats), "--image", s(&image), "--rgb", s(&rgb_path)])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", python.display()));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "Python round trip failed:\n{text}");
    for model in ["torchvision", "timm"] {
        assert!(text.contains(&format!("features equal the {model} model's")), "{text}");
    }
    assert!(text.contains("names and shapes those of mmdet's ResNet"), "{text}");

    let dir_out = tmp.path().join("feats");
    let (ok, _, err) = pixpro(&[
        "embed",
        "--checkpoint",
        s(&ckpt),
        "--image",
        s(&data),
        "--out",
        s(&dir_out),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    assert!(dir_out.join("0.safetensors").exists() && dir_out.join("5.safetensors").exists());
}

#[test]
fn probe_scores_pretrained_and_random_backbones() {
    let tmp = tempfile::tempdir().unwrap();
    let (ckpt, _) = checkpoint(tmp.path());
    let voc = tmp.path().join("voc");
    tiny_voc(&voc);
    let out = tmp.path().join("probe");
    let common = ["--voc", s(&voc), "--image-size", "64", "--epochs", "5", "--device", "cpu"];
    let (ok, stdout, err) =
        pixpro(&[&["probe", "--checkpoint", s(&ckpt), "--out", s(&out)], &common[..]].concat());
    assert!(ok, "{err}");
    assert!(stdout.contains("mIoU"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("probe.json")).unwrap()).unwrap();
    let miou = json["miou"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&miou), "{miou}");
    assert_eq!(json["backbone"]["arch"], "resnet18");
    assert!(json["per_class_iou"].get("blue").is_some());
    assert!(out.join("confusion.png").exists());
    assert!(out.join("prediction-s6.png").exists() && out.join("prediction-s7.png").exists());

    let (ok, stdout, err) = pixpro(
        &[&["probe", "--checkpoint", s(&ckpt), "--out", s(&out), "--json"], &common[..]].concat(),
    );
    assert!(ok, "{err}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert_eq!(printed["miou"].as_f64(), Some(miou), "same recipe, same seed, same mIoU");

    let out_r = tmp.path().join("probe-random");
    let (ok, _, err) = pixpro(
        &[&["probe", "--random-init", "--output-stride", "32", "--out", s(&out_r)], &common[..]]
            .concat(),
    );
    assert!(ok, "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_r.join("probe.json")).unwrap()).unwrap();
    assert!(json["backbone"]["source"].as_str().unwrap().contains("random init"));
}

#[test]
fn bad_checkpoints_and_voc_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (ckpt, _) = checkpoint(tmp.path());
    let cut = tmp.path().join("cut.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = tmp.path().join("x.safetensors");
    let (ok, _, err) =
        pixpro(&["export", "--checkpoint", s(&cut), "--format", "torchvision", "--out", s(&out)]);
    assert!(!ok && err.contains("cut.safetensors") && err.contains("truncated"), "{err}");

    let plain = tmp.path().join("plain.safetensors");
    tch::Tensor::write_safetensors(&[("w", tch::Tensor::ones([2], tch::kind::FLOAT_CPU))], &plain)
        .unwrap();
    let (ok, _, err) =
        pixpro(&["embed", "--checkpoint", s(&plain), "--image", "x.png", "--out", s(&out)]);
    assert!(!ok && err.contains("plain.safetensors"), "{err}");

    let voc = tmp.path().join("voc");
    tiny_voc(&voc);
    std::fs::remove_file(voc.join("SegmentationClass/s7.png")).unwrap();
    let (ok, _, err) = pixpro(&[
        "probe",
        "--checkpoint",
        s(&ckpt),
        "--voc",
        s(&voc),
        "--out",
        s(&tmp.path().join("p")),
        "--device",
        "cpu",
    ]);
    assert!(!ok && err.contains("s7.png"), "{err}");
}

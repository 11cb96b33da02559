//! `--weights`: ResNet files written by PyTorch (tests/weight_files.py, run
//! with the `.venv`'s torch) load to exactly the tensors that were saved,
//! whatever the format and prefix; files that do not fit are errors that
//! name the file and the key.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use pixpro::model::resnet::Arch;
use pixpro::transfer::backbone::{Backbone, Weights};
use pixpro::transfer::export::{write_detectron2, write_mmdet, write_pth, ExportInfo};
use pixpro::transfer::weights::read_state_dict;
use tch::{Device, Kind, Tensor};

/// The fixtures, written once per test run.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weight-files");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".venv/bin/python");
        let out = Command::new(&python)
            .arg(root.join("tests/weight_files.py"))
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", python.display()));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

fn expected() -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("expected.safetensors")).unwrap().into_iter().collect()
}

/// The backbone's tensors equal the saved ones, bit for bit, every one;
/// BatchNorm's counters too, or 0 from a file that has none (Detectron2).
fn assert_same(backbone: &Backbone, want: &BTreeMap<String, Tensor>, counters: bool, what: &str) {
    let got = backbone.named_tensors();
    assert_eq!(got.len(), want.len(), "{what}");
    for (name, t) in got {
        if name.ends_with("num_batches_tracked") && !counters {
            assert_eq!(i64::try_from(&t).unwrap(), 0, "{what}: {name}");
        } else {
            assert!(t.equal(&want[&name]), "{what}: {name}");
        }
    }
}

fn load(name: &str) -> Backbone {
    Backbone::from_file(&fixtures().join(name), None, Device::Cpu)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn torch_save_files_load_exactly() {
    let want = expected();
    for (file, format, prefix, loaded) in [
        ("expected.safetensors", "safetensors", "no prefix", 120),
        ("zip.pth", "torch.save (zip)", "prefix `state_dict.module.`", 120),
        ("legacy.pth", "torch.save (legacy)", "no prefix", 120),
        ("reference.pth", "torch.save (zip)", "prefix `model.module.encoder.`", 120),
        ("d2.pkl", "pickle", "prefix `model.`", 100),
    ] {
        let b = load(file);
        assert_same(&b, &want, loaded == 120, file);
        assert_eq!((b.arch, b.output_stride), (Arch::ResNet18, 32), "{file}");
        assert!(b.note.contains(format) && b.note.contains(prefix), "{file}: {}", b.note);
        assert!(b.note.contains(&format!("{loaded} tensors loaded")), "{file}: {}", b.note);
    }
    // The raw reader keeps integers too: BatchNorm's counters as saved.
    let legacy = read_state_dict(&fixtures().join("legacy.pth")).unwrap();
    let counter = &legacy.tensors["layer3.1.bn2.num_batches_tracked"];
    assert_eq!((counter.kind(), i64::try_from(counter).unwrap()), (Kind::Int64, 7));
    assert_eq!(legacy.tensors.len(), want.len());
    // The reference's momentum encoder is there, and is not what was read.
    let reference = read_state_dict(&fixtures().join("reference.pth")).unwrap();
    let k = &reference.tensors["model.module.encoder_k.conv1.weight"];
    assert!(k.equal(&(&want["conv1.weight"] + 1)));
}

#[test]
fn stride_and_our_exports_round_trip() {
    let b = Weights::File(fixtures().join("zip.pth")).load(Some(16), Device::Cpu).unwrap();
    assert_eq!(b.output_stride, 16);
    let dir = tempfile::tempdir().unwrap();
    let d2 = dir.path().join("ours.pkl");
    let info = ExportInfo::of(&b);
    write_detectron2(&d2, &b.named_tensors(), &info).unwrap();
    let back = Backbone::from_file(&d2, None, Device::Cpu).unwrap();
    assert_same(&back, &expected(), false, "our Detectron2 export");
    assert!(back.note.contains("Detectron2 names"), "{}", back.note);
    let pth = dir.path().join("ours.pth");
    write_pth(&pth, &b.named_tensors(), &info).unwrap();
    let mmdet = dir.path().join("ours-mmdet.pth");
    write_mmdet(&mmdet, &b.named_tensors(), &info).unwrap();
    for (path, prefix) in [(&pth, "no prefix"), (&mmdet, "prefix `state_dict.`")] {
        let back = Backbone::from_file(path, None, Device::Cpu).unwrap();
        assert_same(&back, &expected(), true, &path.display().to_string());
        assert!(
            back.note.contains("torch.save (zip)") && back.note.contains(prefix),
            "{}",
            back.note
        );
    }
}

fn error_of(path: &Path) -> String {
    match Backbone::from_file(path, None, Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn files_that_do_not_fit_name_the_file_and_key() {
    let e = error_of(&fixtures().join("missing.pth"));
    assert!(
        e.contains("missing.pth") && e.contains("`layer4.1.bn2.running_var` is missing"),
        "{e}"
    );
    let e = error_of(&fixtures().join("shape.pth"));
    assert!(
        e.contains("shape.pth")
            && e.contains("`layer2.0.conv1.weight`")
            && e.contains("[128, 64, 5, 5]")
            && e.contains("[128, 64, 3, 3]"),
        "{e}"
    );
    let e = error_of(&fixtures().join("vit.pth"));
    assert!(e.contains("vit.pth") && e.contains("no ResNet") && e.contains("cls_token"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    for (file, keep) in
        [("zip.pth", 0.5), ("legacy.pth", 0.5), ("legacy.pth", 0.999), ("d2.pkl", 0.7)]
    {
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        let cut = dir.path().join(format!("cut-{keep}-{file}"));
        std::fs::write(&cut, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
        let e = error_of(&cut);
        assert!(e.contains(&*cut.to_string_lossy()), "{e}");
        assert!(e.contains("truncated") || e.contains("zip"), "{file} cut at {keep}: {e}");
    }

    // A second network under another known prefix is ambiguous.
    let mut two: Vec<(String, Tensor)> = expected().into_iter().collect();
    let copies: Vec<(String, Tensor)> =
        two.iter().map(|(k, v)| (format!("backbone.{k}"), v.shallow_clone())).collect();
    two = two.into_iter().map(|(k, v)| (format!("encoder.{k}"), v)).chain(copies).collect();
    let path = dir.path().join("two.safetensors");
    Tensor::write_safetensors(&two, &path).unwrap();
    let e = error_of(&path);
    assert!(e.contains("two.safetensors") && e.contains("2 candidate prefixes"), "{e}");
}

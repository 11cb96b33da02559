//! Transfer files (spec section 7): a torchvision-named ResNet state written
//! as torchvision safetensors or as the Detectron2 pickle that the reference
//! writes, and dense features of one image (`pixpro embed`) as safetensors.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, View};
use tch::{Device, Kind, Tensor};

use crate::files::write_atomically;
use crate::{Error, Result};

/// The Detectron2 name of a torchvision ResNet tensor, by the reference's
/// rules: `layerN -> res{N+1}`, `bnK -> convK.norm`, `downsample.0 ->
/// shortcut`, `downsample.1 -> shortcut.norm`, stem keys under `stem.`.
/// `None` for what Detectron2's backbone has no place for (`fc.*`,
/// `num_batches_tracked`) and for names that are not ResNet names.
pub fn detectron2_name(name: &str) -> Option<String> {
    if name.starts_with("fc.") || name.ends_with(".num_batches_tracked") {
        return None;
    }
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["conv1", "weight"] => Some("stem.conv1.weight".into()),
        ["bn1", param] => Some(format!("stem.conv1.norm.{param}")),
        [layer, block, rest @ ..] => {
            let stage: u32 = layer.strip_prefix("layer")?.parse().ok()?;
            block.parse::<u32>().ok()?;
            let rest = match rest {
                [conv, "weight"] if conv.starts_with("conv") => format!("{conv}.weight"),
                [bn, param] => format!("conv{}.norm.{param}", bn.strip_prefix("bn")?),
                ["downsample", "0", "weight"] => "shortcut.weight".into(),
                ["downsample", "1", param] => format!("shortcut.norm.{param}"),
                _ => return None,
            };
            Some(format!("res{}.{block}.{rest}", stage + 1))
        }
        _ => None,
    }
}

/// Names that are dropped on purpose from a Detectron2 export.
fn skipped_for_detectron2(name: &str) -> bool {
    name.starts_with("fc.") || name.ends_with(".num_batches_tracked")
}

/// A tensor's bytes, ready for safetensors: f32 for floating tensors, i64
/// for integer ones (BatchNorm's `num_batches_tracked`).
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Raw {
    fn new(name: &str, tensor: &Tensor, path: &Path) -> Result<Raw> {
        let (kind, dtype) = match tensor.kind() {
            _ if tensor.is_floating_point() => (Kind::Float, Dtype::F32),
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => {
                (Kind::Int64, Dtype::I64)
            }
            other => {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!("tensor `{name}` has kind {other:?}, not a number type"),
                })
            }
        };
        let t = tensor.f_to_device(Device::Cpu)?.f_to_kind(kind)?.f_contiguous()?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        Ok(Raw { dtype, shape, bytes })
    }
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Raw>,
    meta: HashMap<String, String>,
) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter(), Some(meta)).map_err(|e| {
        Error::Checkpoint { path: path.to_path_buf(), reason: format!("writing safetensors: {e}") }
    })?;
    write_atomically(path, &bytes)
}

/// Writes a torchvision-named ResNet state as safetensors that
/// `torchvision.models.resnetXX().load_state_dict` takes strictly once the
/// model's `fc` is removed: names unchanged, float tensors as contiguous f32,
/// `fc.*` dropped, and a zero `num_batches_tracked` (int64 scalar) added for
/// every BatchNorm that lacks one (tch's BatchNorm keeps no such counter,
/// torchvision's state_dict has it).
pub fn write_torchvision(path: impl AsRef<Path>, named: &[(String, Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let mut out = BTreeMap::new();
    for (name, tensor) in named {
        if name.starts_with("fc.") {
            continue;
        }
        if out.insert(name.clone(), Raw::new(name, tensor, path)?).is_some() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` given twice"),
            });
        }
    }
    let norms: Vec<String> =
        out.keys().filter_map(|n| n.strip_suffix(".running_mean")).map(String::from).collect();
    for norm in norms {
        out.entry(format!("{norm}.num_batches_tracked")).or_insert_with(|| Raw {
            dtype: Dtype::I64,
            shape: vec![],
            bytes: vec![0; 8],
        });
    }
    write_safetensors(path, &out, HashMap::from([("format".to_string(), "pt".to_string())]))
}

/// Writes the Detectron2 pickle of the reference: `{"model": {detectron2
/// name: numpy float32 array}, "__author__": "pixpro", "matching_heuristics":
/// True}`, pickle protocol 2, arrays pickled the way numpy pickles them (so
/// `pickle.load` needs numpy, 1.x or 2.x, and nothing of ours).
pub fn write_detectron2(path: impl AsRef<Path>, named: &[(String, Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let mut model = BTreeMap::new();
    for (name, tensor) in named {
        if skipped_for_detectron2(name) {
            continue;
        }
        let d2 = detectron2_name(name).ok_or_else(|| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("tensor `{name}` is not a torchvision ResNet name"),
        })?;
        if !tensor.is_floating_point() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` has kind {:?}, expected floating", tensor.kind()),
            });
        }
        let raw = Raw::new(name, tensor, path)?;
        if model.insert(d2.clone(), raw).is_some() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("two tensors map to Detectron2 name `{d2}`"),
            });
        }
    }
    let mut p = Pickler::default();
    p.bytes.extend([0x80, 2]); // PROTO 2
    p.bytes.push(b'}'); // EMPTY_DICT: the outer dict
    p.string("model");
    p.bytes.push(b'}');
    for (name, raw) in &model {
        p.string(name);
        p.f32_array(&raw.shape, &raw.bytes);
        p.bytes.push(b's'); // SETITEM
    }
    p.bytes.push(b's');
    p.string("__author__");
    p.string("pixpro");
    p.bytes.push(b's');
    p.string("matching_heuristics");
    p.bytes.push(0x88); // NEWTRUE
    p.bytes.push(b's');
    p.bytes.push(b'.'); // STOP
    write_atomically(path, &p.bytes)
}

/// Writes dense features of one image, [C, H, W], as safetensors tensor
/// `features` (f32) with `meta` as the file's metadata.
pub fn write_features(
    path: impl AsRef<Path>,
    features: &Tensor,
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    if features.dim() != 3 {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("features must be [C, H, W], got {:?}", features.size()),
        });
    }
    let raw = Raw::new("features", features, path)?;
    let tensors = BTreeMap::from([("features".to_string(), raw)]);
    let mut all_meta: HashMap<String, String> =
        meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all_meta.entry("format".into()).or_insert_with(|| "pt".into());
    write_safetensors(path, &tensors, all_meta)
}

/// Just the pickle opcodes (protocol 2) that a dict of numpy arrays needs.
#[derive(Default)]
struct Pickler {
    bytes: Vec<u8>,
}

impl Pickler {
    /// BINUNICODE: u32 length, UTF-8.
    fn string(&mut self, s: &str) {
        self.bytes.push(b'X');
        self.bytes.extend((s.len() as u32).to_le_bytes());
        self.bytes.extend(s.as_bytes());
    }

    fn global(&mut self, module: &str, name: &str) {
        self.bytes.push(b'c');
        self.bytes.extend(format!("{module}\n{name}\n").as_bytes());
    }

    fn int(&mut self, v: i64) {
        match v {
            0..=0xff => self.bytes.extend([b'K', v as u8]),
            0x100..=0xffff => {
                self.bytes.push(b'M');
                self.bytes.extend((v as u16).to_le_bytes());
            }
            _ => {
                // BININT: numpy shapes and the -1 in dtype states fit in i32.
                self.bytes.push(b'J');
                self.bytes.extend((v as i32).to_le_bytes());
            }
        }
    }

    /// Tuple of the items pushed by `items`, `n` of them.
    fn tuple(&mut self, n: usize, items: impl FnOnce(&mut Self)) {
        if n > 3 {
            self.bytes.push(b'('); // MARK
        }
        items(self);
        self.bytes.push(match n {
            0 => b')',
            1 => 0x85,
            2 => 0x86,
            3 => 0x87,
            _ => b't',
        });
    }

    /// Protocol 2 has no bytes opcode: Python 2-compatible pickles (numpy's
    /// among them) write `_codecs.encode(<bytes as latin-1 text>, "latin1")`.
    fn py_bytes(&mut self, data: &[u8]) {
        self.global("_codecs", "encode");
        let text: String = data.iter().map(|&b| char::from(b)).collect();
        self.tuple(2, |p| {
            p.string(&text);
            p.string("latin1");
        });
        self.bytes.push(b'R'); // REDUCE
    }

    /// A C-order little-endian float32 array, as `ndarray.__reduce__` gives:
    /// `_reconstruct(ndarray, (0,), b"b")` then BUILD with `(1, shape,
    /// dtype("f4"), False, data)`. `numpy.core` (not `numpy._core`) so that
    /// both numpy 1.x and 2.x resolve it.
    fn f32_array(&mut self, shape: &[usize], data: &[u8]) {
        self.global("numpy.core.multiarray", "_reconstruct");
        self.tuple(3, |p| {
            p.global("numpy", "ndarray");
            p.tuple(1, |p| p.int(0));
            p.py_bytes(b"b");
        });
        self.bytes.push(b'R');
        self.tuple(5, |p| {
            p.int(1);
            p.tuple(shape.len(), |p| shape.iter().for_each(|&d| p.int(d as i64)));
            p.global("numpy", "dtype");
            p.tuple(3, |p| {
                p.string("f4");
                p.bytes.extend([0x89, 0x88]); // False, True
            });
            p.bytes.push(b'R');
            // dtype state: (version 3, little-endian, no subarray, names,
            // fields, itemsize and alignment from the type, no flags).
            p.tuple(8, |p| {
                p.int(3);
                p.string("<");
                p.bytes.extend(b"NNN");
                p.int(-1);
                p.int(-1);
                p.int(0);
            });
            p.bytes.push(b'b'); // BUILD
            p.bytes.push(0x89); // not Fortran order
            p.py_bytes(data);
        });
        self.bytes.push(b'b');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detectron2_names_follow_each_rule() {
        let cases = [
            ("conv1.weight", Some("stem.conv1.weight")),
            ("bn1.weight", Some("stem.conv1.norm.weight")),
            ("bn1.running_var", Some("stem.conv1.norm.running_var")),
            ("layer1.0.conv1.weight", Some("res2.0.conv1.weight")),
            ("layer4.2.conv3.weight", Some("res5.2.conv3.weight")),
            ("layer2.1.bn2.bias", Some("res3.1.conv2.norm.bias")),
            ("layer3.0.bn3.running_mean", Some("res4.0.conv3.norm.running_mean")),
            ("layer1.0.downsample.0.weight", Some("res2.0.shortcut.weight")),
            ("layer2.0.downsample.1.running_var", Some("res3.0.shortcut.norm.running_var")),
            ("bn1.num_batches_tracked", None),
            ("layer1.0.downsample.1.num_batches_tracked", None),
            ("fc.weight", None),
            ("fc.bias", None),
            ("layer1.x.conv1.weight", None),
            ("head.weight", None),
        ];
        for (tv, d2) in cases {
            assert_eq!(detectron2_name(tv).as_deref(), d2, "{tv}");
        }
    }

    /// Torchvision-named ResNet-18 state with real shapes, values i / numel.
    fn resnet18_state() -> Vec<(String, Tensor)> {
        let mut shapes: Vec<(String, Vec<i64>)> = vec![("conv1.weight".into(), vec![64, 3, 7, 7])];
        let bn = |shapes: &mut Vec<(String, Vec<i64>)>, name: &str, c: i64| {
            for p in ["weight", "bias", "running_mean", "running_var"] {
                shapes.push((format!("{name}.{p}"), vec![c]));
            }
            shapes.push((format!("{name}.num_batches_tracked"), vec![]));
        };
        bn(&mut shapes, "bn1", 64);
        let mut cin = 64;
        for (stage, cout) in [64i64, 128, 256, 512].into_iter().enumerate() {
            for block in 0..2 {
                let pre = format!("layer{}.{block}", stage + 1);
                let inp = if block == 0 { cin } else { cout };
                shapes.push((format!("{pre}.conv1.weight"), vec![cout, inp, 3, 3]));
                bn(&mut shapes, &format!("{pre}.bn1"), cout);
                shapes.push((format!("{pre}.conv2.weight"), vec![cout, cout, 3, 3]));
                bn(&mut shapes, &format!("{pre}.bn2"), cout);
                if block == 0 && stage > 0 {
                    shapes.push((format!("{pre}.downsample.0.weight"), vec![cout, inp, 1, 1]));
                    bn(&mut shapes, &format!("{pre}.downsample.1"), cout);
                }
            }
            cin = cout;
        }
        shapes.push(("fc.weight".into(), vec![1000, 512]));
        shapes.push(("fc.bias".into(), vec![1000]));
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let t = if name.ends_with("num_batches_tracked") {
                    Tensor::from(7i64)
                } else {
                    let n: i64 = shape.iter().product();
                    (Tensor::arange(n, (Kind::Float, Device::Cpu)) / n as f64).view(&shape[..])
                };
                (name, t)
            })
            .collect()
    }

    /// `PIXPRO_EXPORT_DIR` keeps the files for `tests/export_roundtrip.py`.
    fn out_dir() -> (Option<tempfile::TempDir>, std::path::PathBuf) {
        match std::env::var_os("PIXPRO_EXPORT_DIR") {
            Some(dir) => (None, dir.into()),
            None => {
                let tmp = tempfile::tempdir().unwrap();
                let path = tmp.path().to_path_buf();
                (Some(tmp), path)
            }
        }
    }

    #[test]
    fn torchvision_safetensors_keep_names_and_values() {
        let (_keep, dir) = out_dir();
        let mut state = resnet18_state();
        // A state from tch has no BatchNorm counters; one must be added back.
        state.retain(|(n, _)| n != "layer3.1.bn2.num_batches_tracked");
        let path = dir.join("resnet18_tv.safetensors");
        write_torchvision(&path, &state).unwrap();
        let back: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(&path).unwrap().into_iter().collect();
        let kept: Vec<&(String, Tensor)> =
            state.iter().filter(|(n, _)| !n.starts_with("fc.")).collect();
        assert_eq!(back.len(), kept.len() + 1);
        for (name, t) in kept {
            assert!(back[name].equal(t), "{name}");
        }
        let added = &back["layer3.1.bn2.num_batches_tracked"];
        assert_eq!((added.kind(), added.dim(), i64::try_from(added).unwrap()), (Kind::Int64, 0, 0));
    }

    #[test]
    fn detectron2_pickle_is_well_formed() {
        let (_keep, dir) = out_dir();
        let path = dir.join("resnet18_d2.pkl");
        write_detectron2(&path, &resnet18_state()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!((&bytes[..2], bytes.last()), (&[0x80u8, 2][..], Some(&b'.')));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("res5.1.conv2.norm.running_var") && !text.contains("fc."));

        let bad = [(
            "layer1.0.mystery.weight".to_string(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        )];
        let e = write_detectron2(dir.join("bad.pkl"), &bad).unwrap_err().to_string();
        assert!(e.contains("bad.pkl") && e.contains("layer1.0.mystery.weight"), "{e}");
    }

    #[test]
    fn features_file_holds_tensor_and_meta() {
        let (_keep, dir) = out_dir();
        let path = dir.join("features.safetensors");
        let f = Tensor::arange(24, (Kind::Float, Device::Cpu)).view([2, 3, 4]);
        let meta = BTreeMap::from([("image".to_string(), "cat.jpg".to_string())]);
        write_features(&path, &f, &meta).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(header.metadata().as_ref().unwrap()["image"], "cat.jpg");
        let back = Tensor::read_safetensors(&path).unwrap();
        assert_eq!(back[0].0, "features");
        assert!(back[0].1.equal(&f));
        let e = write_features(&path, &f.view([24]), &meta).unwrap_err().to_string();
        assert!(e.contains("[C, H, W]"), "{e}");
    }
}

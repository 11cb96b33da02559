//! Transfer files (spec section 7): a torchvision-named ResNet state written
//! as torchvision safetensors, as the `torch.save` file that torchvision,
//! timm and OpenMMLab load, or as the Detectron2 pickle that the reference
//! writes, and dense features of one image (`pixpro embed`) as safetensors.
//! Every export says what it holds and what input it expects
//! ([`ExportInfo`]): in the file's own metadata where the format has some,
//! in a JSON file beside it ([`sidecar_path`]) where it has none.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

use crate::data::views::{IMAGENET_MEAN, IMAGENET_STD};
use crate::files::write_atomically;
use crate::model::resnet::Arch;
use crate::transfer::backbone::Backbone;
use crate::{Error, Result};

extern "C" {
    fn pixpro_torch_save(
        names: *const *const c_char,
        tensors: *const *const C_tensor,
        n: c_int,
        state_key: *const c_char,
        meta_keys: *const *const c_char,
        meta_values: *const *const c_char,
        n_meta: c_int,
        out: *mut *mut c_char,
        out_len: *mut usize,
        err: *mut *mut c_char,
    ) -> c_int;
    fn pixpro_free(p: *mut c_void);
}

/// What an export records beside its tensors, so that whoever loads it
/// feeds the network what it was trained on (a Detectron2 config whose
/// `PIXEL_MEAN` does not match the weights fails silently,
/// facebookresearch/detectron2 #1477).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportInfo {
    pub arch: Arch,
    pub output_stride: u32,
    /// The weights exported: a checkpoint or weight file, or random init.
    pub source: String,
}

impl ExportInfo {
    pub fn of(backbone: &Backbone) -> ExportInfo {
        ExportInfo {
            arch: backbone.arch,
            output_stride: backbone.output_stride,
            source: backbone.source.clone(),
        }
    }

    /// The fields every export carries. The input is RGB scaled to [0, 1],
    /// then `(x - mean) / std` per channel: what `Backbone::image_features`
    /// and pretraining's views feed the network.
    fn fields(&self) -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("arch".into(), json!(self.arch.to_string())),
            ("output_stride".into(), json!(self.output_stride)),
            ("input_order".into(), json!("RGB")),
            ("input_range".into(), json!([0, 1])),
            ("input_mean".into(), json!(IMAGENET_MEAN.map(decimal))),
            ("input_std".into(), json!(IMAGENET_STD.map(decimal))),
            ("pixpro_version".into(), json!(env!("CARGO_PKG_VERSION"))),
            ("source".into(), json!(self.source)),
        ])
    }
}

/// An f32 constant as the decimal it was written as: 0.485, not
/// 0.48500001430511475, the same f32 widened to f64 as JSON numbers are.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().expect("an f32 prints as a number")
}

/// Mean and std for pixels in [0, 255], as Detectron2 and OpenMMLab take
/// them: 255 times ours, rounded off the f32 noise (123.675, not
/// 123.67500364780426).
fn mean_std_255() -> ([f64; 3], [f64; 3]) {
    let scale = |v: [f32; 3]| v.map(|x| (f64::from(x) * 255.0 * 1e3).round() / 1e3);
    (scale(IMAGENET_MEAN), scale(IMAGENET_STD))
}

/// String metadata (safetensors', OpenMMLab's `meta`): strings as they
/// are, other values as JSON text.
fn as_strings(fields: BTreeMap<String, Value>) -> BTreeMap<String, String> {
    fields
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

/// The JSON file beside an export whose format holds no metadata:
/// `r50.pth` -> `r50.pth.json`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

fn write_sidecar(path: &Path, fields: BTreeMap<String, Value>) -> Result<PathBuf> {
    let sidecar = sidecar_path(path);
    let mut text = serde_json::to_string_pretty(&fields).expect("JSON values serialise");
    text.push('\n');
    write_atomically(&sidecar, text.as_bytes())?;
    Ok(sidecar)
}

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

/// `tensor` on the CPU, contiguous, as f32 if floating and i64 if integer
/// (BatchNorm's `num_batches_tracked`): the kinds torchvision's state dicts
/// hold.
fn cpu_tensor(name: &str, tensor: &Tensor, path: &Path) -> Result<Tensor> {
    let kind = match tensor.kind() {
        _ if tensor.is_floating_point() => Kind::Float,
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => Kind::Int64,
        other => {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` has kind {other:?}, not a number type"),
            })
        }
    };
    Ok(tensor.f_to_device(Device::Cpu)?.f_to_kind(kind)?.f_contiguous()?)
}

impl Raw {
    fn new(name: &str, tensor: &Tensor, path: &Path) -> Result<Raw> {
        let t = cpu_tensor(name, tensor, path)?;
        let dtype = if t.kind() == Kind::Float { Dtype::F32 } else { Dtype::I64 };
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
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

/// A torchvision-named ResNet state as torchvision's own `state_dict()`
/// has it, less `fc`: names unchanged, tensors as [`cpu_tensor`] makes
/// them, `fc.*` dropped, and a zero `num_batches_tracked` (int64 scalar)
/// added for every BatchNorm that lacks one (tch's BatchNorm keeps no such
/// counter, torchvision's state_dict has it).
fn torchvision_state(path: &Path, named: &[(String, Tensor)]) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, tensor) in named {
        if name.starts_with("fc.") {
            continue;
        }
        if out.insert(name.clone(), cpu_tensor(name, tensor, path)?).is_some() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` given twice"),
            });
        }
    }
    let norms: Vec<String> =
        out.keys().filter_map(|n| n.strip_suffix(".running_mean")).map(String::from).collect();
    for norm in norms {
        out.entry(format!("{norm}.num_batches_tracked")).or_insert_with(|| Tensor::from(0i64));
    }
    Ok(out)
}

/// Writes a torchvision-named ResNet state as safetensors that
/// `torchvision.models.resnetXX().load_state_dict` takes strictly once the
/// model's `fc` is removed ([`torchvision_state`]), with `info` as the
/// file's metadata.
pub fn write_torchvision(
    path: impl AsRef<Path>,
    named: &[(String, Tensor)],
    info: &ExportInfo,
) -> Result<()> {
    let path = path.as_ref();
    let mut out = BTreeMap::new();
    for (name, tensor) in torchvision_state(path, named)? {
        out.insert(name.clone(), Raw::new(&name, &tensor, path)?);
    }
    let mut meta: HashMap<String, String> = as_strings(info.fields()).into_iter().collect();
    meta.insert("format".into(), "pt".into());
    write_safetensors(path, &out, meta)
}

/// `torch.save`'s zip format, written by libtorch (csrc/torch_save.cpp):
/// `state` as a dict, or with `mmdet_meta` OpenMMLab's `{"state_dict":
/// state, "meta": mmdet_meta}`.
fn torch_save(
    path: &Path,
    state: &BTreeMap<String, Tensor>,
    mmdet_meta: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let bad = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    let c_string =
        |s: &str| CString::new(s).map_err(|_| bad(format!("`{s}` holds a NUL character")));
    let names = state.keys().map(|k| c_string(k)).collect::<Result<Vec<_>>>()?;
    let name_ptrs: Vec<*const c_char> = names.iter().map(|c| c.as_ptr()).collect();
    let tensor_ptrs: Vec<*const C_tensor> = state.values().map(Tensor::as_ptr).collect();
    let meta = mmdet_meta.into_iter().flatten();
    let meta_keys = meta.clone().map(|(k, _)| c_string(k)).collect::<Result<Vec<_>>>()?;
    let meta_values = meta.map(|(_, v)| c_string(v)).collect::<Result<Vec<_>>>()?;
    let key_ptrs: Vec<*const c_char> = meta_keys.iter().map(|c| c.as_ptr()).collect();
    let value_ptrs: Vec<*const c_char> = meta_values.iter().map(|c| c.as_ptr()).collect();
    let state_key = c"state_dict";
    let (mut out, mut out_len, mut err) = (std::ptr::null_mut(), 0usize, std::ptr::null_mut());
    // SAFETY: every pointer lives to the end of the call: the CStrings and
    // tensors above and the out-parameters; the counts are the lengths of
    // the arrays they go with.
    let rc = unsafe {
        pixpro_torch_save(
            name_ptrs.as_ptr(),
            tensor_ptrs.as_ptr(),
            name_ptrs.len() as c_int,
            if mmdet_meta.is_some() { state_key.as_ptr() } else { std::ptr::null() },
            key_ptrs.as_ptr(),
            value_ptrs.as_ptr(),
            key_ptrs.len() as c_int,
            &mut out,
            &mut out_len,
            &mut err,
        )
    };
    if rc != 0 {
        // SAFETY: on failure `err` is a NUL-terminated string from strdup.
        let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { pixpro_free(err.cast()) };
        return Err(bad(format!("libtorch could not write the archive: {msg}")));
    }
    // SAFETY: on success `out` holds `out_len` bytes from malloc.
    let bytes = unsafe { std::slice::from_raw_parts(out.cast::<u8>(), out_len) }.to_vec();
    unsafe { pixpro_free(out.cast()) };
    write_atomically(path, &bytes)
}

/// Writes the torchvision-named ResNet state ([`torchvision_state`]) as a
/// `torch.save` file, a plain dict that `torch.load(path,
/// weights_only=True)` returns and that torchvision's and timm's ResNets
/// (the same names) load strictly once their `fc` is removed; `info` goes
/// to the sidecar, whose path is returned.
pub fn write_pth(
    path: impl AsRef<Path>,
    named: &[(String, Tensor)],
    info: &ExportInfo,
) -> Result<PathBuf> {
    let path = path.as_ref();
    torch_save(path, &torchvision_state(path, named)?, None)?;
    write_sidecar(path, info.fields())
}

/// Writes the state as an OpenMMLab checkpoint, `{"state_dict": ...,
/// "meta": ...}`, for mmdet's and mmseg's `ResNet` backbone with
/// `init_cfg=dict(type="Pretrained", checkpoint=path)`: mmengine takes the
/// `state_dict` entry and loads it into the backbone module itself, whose
/// names are torchvision's less `fc` (tests/fixtures/mmdet_resnet*_keys.json).
/// `info` goes to `meta`, with the `data_preprocessor` mean and std (0-255)
/// that mmdet configs take; OpenMMLab reads images as BGR, hence
/// `bgr_to_rgb`.
pub fn write_mmdet(
    path: impl AsRef<Path>,
    named: &[(String, Tensor)],
    info: &ExportInfo,
) -> Result<()> {
    let path = path.as_ref();
    let (mean, std) = mean_std_255();
    let mut fields = info.fields();
    fields.insert(
        "mmdet_data_preprocessor".into(),
        json!({"mean": mean, "std": std, "bgr_to_rgb": true}),
    );
    torch_save(path, &torchvision_state(path, named)?, Some(&as_strings(fields)))
}

/// Writes the Detectron2 pickle of the reference: `{"model": {detectron2
/// name: numpy float32 array}, "__author__": "pixpro", "matching_heuristics":
/// True}`, pickle protocol 2, arrays pickled the way numpy pickles them (so
/// `pickle.load` needs numpy, 1.x or 2.x, and nothing of ours). `info`
/// goes to the sidecar (returned), with the Detectron2 config values that
/// match it: `INPUT.FORMAT` RGB and `MODEL.PIXEL_MEAN`/`PIXEL_STD` for
/// pixels in [0, 255].
pub fn write_detectron2(
    path: impl AsRef<Path>,
    named: &[(String, Tensor)],
    info: &ExportInfo,
) -> Result<PathBuf> {
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
    write_atomically(path, &p.bytes)?;
    let (mean, std) = mean_std_255();
    let mut fields = info.fields();
    fields.insert(
        "detectron2".into(),
        json!({"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": mean, "MODEL.PIXEL_STD": std}),
    );
    write_sidecar(path, fields)
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

    fn info() -> ExportInfo {
        ExportInfo {
            arch: Arch::ResNet18,
            output_stride: 32,
            source: "runs/a/last.safetensors".into(),
        }
    }

    /// What `info()` must read back as, whatever the format carries it in.
    fn assert_info(fields: &BTreeMap<String, Value>, what: &str) {
        assert_eq!(fields["arch"], "resnet18", "{what}");
        assert_eq!(fields["output_stride"], 32, "{what}");
        assert_eq!(fields["input_order"], "RGB", "{what}");
        assert_eq!(fields["input_range"], json!([0, 1]), "{what}");
        assert_eq!(fields["input_mean"], json!([0.485, 0.456, 0.406]), "{what}");
        assert_eq!(fields["input_std"], json!([0.229, 0.224, 0.225]), "{what}");
        assert_eq!(fields["pixpro_version"], env!("CARGO_PKG_VERSION"), "{what}");
        assert_eq!(fields["source"], "runs/a/last.safetensors", "{what}");
    }

    /// String metadata with its JSON-text values parsed back.
    fn parsed(meta: &HashMap<String, String>) -> BTreeMap<String, Value> {
        meta.iter().map(|(k, v)| (k.clone(), serde_json::from_str(v).unwrap_or(json!(v)))).collect()
    }

    fn sidecar(path: &Path) -> BTreeMap<String, Value> {
        serde_json::from_str(&std::fs::read_to_string(sidecar_path(path)).unwrap()).unwrap()
    }

    /// A state from tch has no BatchNorm counters; one must be added back.
    fn state_without_a_counter() -> Vec<(String, Tensor)> {
        let mut state = resnet18_state();
        state.retain(|(n, _)| n != "layer3.1.bn2.num_batches_tracked");
        state
    }

    /// `back` is the torchvision state of [`state_without_a_counter`]: every
    /// tensor but `fc`, and the missing counter as a zero int64 scalar.
    fn assert_torchvision_state(back: &BTreeMap<String, Tensor>, what: &str) {
        let state = state_without_a_counter();
        let kept: Vec<&(String, Tensor)> =
            state.iter().filter(|(n, _)| !n.starts_with("fc.")).collect();
        assert_eq!(back.len(), kept.len() + 1, "{what}");
        for (name, t) in kept {
            assert!(back[name].equal(t), "{what}: {name}");
        }
        let added = &back["layer3.1.bn2.num_batches_tracked"];
        let added = (added.kind(), added.dim(), i64::try_from(added).unwrap());
        assert_eq!(added, (Kind::Int64, 0, 0), "{what}");
    }

    #[test]
    fn torchvision_safetensors_keep_names_values_and_info() {
        let (_keep, dir) = out_dir();
        let path = dir.join("resnet18_tv.safetensors");
        write_torchvision(&path, &state_without_a_counter(), &info()).unwrap();
        let back: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(&path).unwrap().into_iter().collect();
        assert_torchvision_state(&back, "safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().as_ref().unwrap();
        assert_eq!(meta["format"], "pt");
        assert_info(&parsed(meta), "safetensors metadata");
        assert!(!sidecar_path(&path).exists(), "safetensors carry their own metadata");
    }

    #[test]
    fn pth_is_a_torch_save_zip_of_the_torchvision_state() {
        let (_keep, dir) = out_dir();
        let path = dir.join("resnet18.pth");
        let side = write_pth(&path, &state_without_a_counter(), &info()).unwrap();
        assert_eq!(side, dir.join("resnet18.pth.json"));
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"PK\x03\x04"), "a zip archive");
        let back = crate::transfer::weights::read_state_dict(&path).unwrap();
        assert_eq!(back.format, "torch.save (zip)");
        assert_torchvision_state(&back.tensors, "pth");
        assert_info(&sidecar(&path), "pth sidecar");
    }

    /// The `meta` entry of an OpenMMLab file, all strings, read with our
    /// own unpickler.
    fn mmdet_meta(path: &Path) -> HashMap<String, String> {
        use crate::transfer::pickle::{load, Value as Py};
        let mut archive = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
        let mut bytes = Vec::new();
        let mut entry = archive.by_name("archive/data.pkl").unwrap();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        let Py::Dict(top) = load(&bytes).unwrap().0 else { panic!("not a dict") };
        let Some((_, Py::Dict(meta))) = top.iter().find(|(k, _)| k.as_str() == Some("meta")) else {
            panic!("no meta dict")
        };
        meta.iter().map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into())).collect()
    }

    #[test]
    fn mmdet_file_nests_the_state_with_its_meta() {
        let (_keep, dir) = out_dir();
        let path = dir.join("resnet18_mmdet.pth");
        write_mmdet(&path, &state_without_a_counter(), &info()).unwrap();
        let back = crate::transfer::weights::read_state_dict(&path).unwrap();
        let state: BTreeMap<String, Tensor> = back
            .tensors
            .into_iter()
            .map(|(k, t)| (k.strip_prefix("state_dict.").expect(&k).to_string(), t))
            .collect();
        assert_torchvision_state(&state, "mmdet");
        let fixture =
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mmdet_resnet18_keys.json");
        let mmdet: BTreeMap<String, Vec<i64>> =
            serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        let ours: BTreeMap<String, Vec<i64>> =
            state.iter().map(|(k, t)| (k.clone(), t.size())).collect();
        assert_eq!(ours, mmdet, "mmdet's ResNet-18 names and shapes");

        let meta = parsed(&mmdet_meta(&path));
        assert_info(&meta, "mmdet meta");
        let pre = json!({"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                         "bgr_to_rgb": true});
        assert_eq!(meta["mmdet_data_preprocessor"], pre);
        assert!(!sidecar_path(&path).exists(), "the meta entry is its metadata");
    }

    #[test]
    fn detectron2_pickle_is_well_formed_and_its_sidecar_matches_its_input() {
        let (_keep, dir) = out_dir();
        let path = dir.join("resnet18_d2.pkl");
        write_detectron2(&path, &resnet18_state(), &info()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!((&bytes[..2], bytes.last()), (&[0x80u8, 2][..], Some(&b'.')));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("res5.1.conv2.norm.running_var") && !text.contains("fc."));
        let side = sidecar(&path);
        assert_info(&side, "detectron2 sidecar");
        let d2 = json!({"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
                        "MODEL.PIXEL_STD": [58.395, 57.12, 57.375]});
        assert_eq!(side["detectron2"], d2);

        let bad = [(
            "layer1.0.mystery.weight".to_string(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        )];
        let e = write_detectron2(dir.join("bad.pkl"), &bad, &info()).unwrap_err().to_string();
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

//! ResNet weights that pixpro did not write: a torchvision-named
//! safetensors file, a `torch.save` file in either format (zip, or the
//! legacy pickle followed by raw storages), or a pickle of numpy arrays such
//! as Detectron2's, read without Python.
//!
//! Files hold a state dict at any depth (`state_dict`, `model`, ...) and
//! under any prefix (`module.`, `encoder.`, `backbone.`): every tensor is
//! named by its dotted path from the top (`model.module.encoder.conv1.weight`
//! in the reference PixPro's checkpoint) and the ResNet is looked for under
//! every prefix that has a stem convolution. Torchvision names
//! (`layer1.0.bn2.weight`) and Detectron2's (`res2.0.conv2.norm.weight`)
//! are both recognised; the architecture comes from the blocks found.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read};
use std::path::Path;

use tch::{Kind, Tensor};

use crate::model::resnet::Arch;
use crate::transfer::export::detectron2_name;
use crate::transfer::pickle::{self, Value};
use crate::{Error, Result};

/// Every tensor of a weight file by its dotted path, with what the file was.
pub struct StateDict {
    pub tensors: BTreeMap<String, Tensor>,
    pub format: &'static str,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Weights { path: path.to_path_buf(), reason: reason.into() }
}

/// `torch.save`'s legacy files begin with this number, pickled.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Reads every tensor of a weight file, whatever its format (told apart by
/// its first bytes, not its name).
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(b"PK\x03\x04") {
        return read_torch_zip(path, bytes);
    }
    if is_safetensors(&bytes) {
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| bad(path, format!("reading safetensors: {e}")))?;
        return Ok(StateDict { tensors: tensors.into_iter().collect(), format: "safetensors" });
    }
    if bytes.first() == Some(&0x80) {
        let (first, used) = pickle::load(&bytes).map_err(|e| bad(path, e.to_string()))?;
        if first == Value::BigInt(LEGACY_MAGIC.to_vec()) {
            return read_torch_legacy(path, &bytes[used..]);
        }
        let mut tensors = BTreeMap::new();
        let mut no_storages = |_: &Value, _: Kind| -> Result<Vec<u8>> {
            Err(bad(path, "a tensor storage in a plain pickle (not written by torch.save)"))
        };
        flatten(path, &first, String::new(), &mut no_storages, &mut tensors)?;
        return Ok(StateDict { tensors, format: "pickle" });
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(bad(
        path,
        format!(
            "not a safetensors, torch.save or pickle file (it starts with bytes {})",
            head.join(" ")
        ),
    ))
}

/// A safetensors file starts with its JSON header's length, then the header.
fn is_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 9 && {
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        n < bytes.len() as u64 && bytes[8] == b'{'
    }
}

/// The zip format (`torch.save` since PyTorch 1.6): `ARCHIVE/data.pkl`
/// whose persistent ids name entries `ARCHIVE/data/KEY`.
fn read_torch_zip(path: &Path, bytes: Vec<u8>) -> Result<StateDict> {
    let zip_err = |e: zip::result::ZipError| bad(path, format!("reading the zip archive: {e}"));
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zip_err)?;
    let pkl = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .filter(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(String::len)
        .ok_or_else(|| bad(path, "a zip archive without data.pkl: not a torch.save file"))?;
    let root = pkl.trim_end_matches("data.pkl").to_string();
    let mut entry = |name: &str| -> Result<Vec<u8>> {
        let mut f = archive.by_name(name).map_err(|e| bad(path, format!("entry {name}: {e}")))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(|e| bad(path, format!("entry {name}: {e}")))?;
        Ok(out)
    };
    if let Ok(order) = entry(&format!("{root}byteorder")) {
        if order != b"little" {
            return Err(bad(path, "tensors saved big-endian; only little-endian is read"));
        }
    }
    let data = entry(&pkl)?;
    let (value, _) = pickle::load(&data).map_err(|e| bad(path, format!("{pkl}: {e}")))?;
    let mut storage = |pid: &Value, _: Kind| -> Result<Vec<u8>> {
        let key = storage_key(path, pid)?;
        entry(&format!("{root}data/{key}"))
    };
    let mut tensors = BTreeMap::new();
    flatten(path, &value, String::new(), &mut storage, &mut tensors)?;
    Ok(StateDict { tensors, format: "torch.save (zip)" })
}

/// The legacy format (`_use_new_zipfile_serialization=False`): after the
/// magic number, pickles of the protocol version, the system info, the
/// object and the sorted storage keys, then each storage as an int64
/// element count and its raw bytes, in key order.
fn read_torch_legacy(path: &Path, mut rest: &[u8]) -> Result<StateDict> {
    let mut next = |what: &str| -> Result<Value> {
        let (v, used) = pickle::load(rest).map_err(|e| bad(path, format!("{what}: {e}")))?;
        rest = &rest[used..];
        Ok(v)
    };
    next("the protocol version")?;
    let info = next("the system info")?;
    if info.get("little_endian") == Some(&Value::Bool(false)) {
        return Err(bad(path, "tensors saved big-endian; only little-endian is read"));
    }
    let value = next("the saved object")?;
    let keys = next("the storage keys")?;
    let keys: Vec<String> = keys
        .as_seq()
        .ok_or_else(|| bad(path, "the storage keys are not a list"))?
        .iter()
        .map(|k| {
            k.as_str().map(String::from).ok_or_else(|| bad(path, "a storage key is not a str"))
        })
        .collect::<Result<_>>()?;
    // The element sizes come from the storage types the object names.
    let mut kinds = BTreeMap::new();
    collect_storage_kinds(&value, &mut kinds);
    let mut storages = BTreeMap::new();
    for key in keys {
        let kind =
            *kinds.get(&key).ok_or_else(|| bad(path, format!("storage {key} is never used")))?;
        let truncated = || bad(path, format!("storage {key}: the file is truncated"));
        let count = rest.get(..8).ok_or_else(truncated)?;
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes")) as usize;
        let n = count.checked_mul(kind.elt_size_in_bytes()).ok_or_else(truncated)?;
        let data = rest.get(8..8 + n).ok_or_else(truncated)?;
        storages.insert(key, data.to_vec());
        rest = &rest[8 + n..];
    }
    let mut storage = |pid: &Value, _: Kind| -> Result<Vec<u8>> {
        let key = storage_key(path, pid)?;
        storages.get(&key).cloned().ok_or_else(|| bad(path, format!("storage {key} is missing")))
    };
    let mut tensors = BTreeMap::new();
    flatten(path, &value, String::new(), &mut storage, &mut tensors)?;
    Ok(StateDict { tensors, format: "torch.save (legacy)" })
}

/// `('storage', FloatStorage, key, location, numel[, view])`: the key.
fn storage_key(path: &Path, pid: &Value) -> Result<String> {
    match pid.as_seq() {
        Some([tag, _, key, ..]) if tag.as_str() == Some("storage") => match key {
            Value::Str(k) => Ok(k.clone()),
            Value::Int(k) => Ok(k.to_string()),
            _ => Err(bad(path, "a storage key that is not a str")),
        },
        _ => Err(bad(path, format!("persistent id {pid:?} is not a torch storage"))),
    }
}

fn collect_storage_kinds(v: &Value, out: &mut BTreeMap<String, Kind>) {
    match v {
        Value::Persistent(pid) => {
            if let Some([_, ty, Value::Str(key), ..]) = pid.as_seq() {
                if let Some(kind) = ty.class_name().as_deref().and_then(storage_kind) {
                    out.insert(key.clone(), kind);
                }
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            items.iter().for_each(|i| collect_storage_kinds(i, out))
        }
        Value::Dict(items) => items.iter().for_each(|(_, i)| collect_storage_kinds(i, out)),
        Value::Object { args, state, .. } => {
            collect_storage_kinds(args, out);
            if let Some(s) = state {
                collect_storage_kinds(s, out);
            }
        }
        _ => {}
    }
}

fn storage_kind(class: &str) -> Option<Kind> {
    Some(match class.strip_prefix("torch.")? {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" | "UntypedStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// Walks dicts (string or integer keys) to their tensors, naming each by its
/// dotted path. Values that are neither are skipped: checkpoints also hold
/// epochs, argument namespaces, optimiser settings.
fn flatten(
    path: &Path,
    v: &Value,
    name: String,
    storage: &mut dyn FnMut(&Value, Kind) -> Result<Vec<u8>>,
    out: &mut BTreeMap<String, Tensor>,
) -> Result<()> {
    if let Value::Dict(items) = v {
        for (k, item) in items {
            let key = match k {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => continue,
            };
            let child = if name.is_empty() { key } else { format!("{name}.{key}") };
            flatten(path, item, child, storage, out)?;
        }
        return Ok(());
    }
    if let Some(t) = to_tensor(path, &name, v, storage)? {
        out.insert(name, t);
    }
    Ok(())
}

/// A torch tensor (`_rebuild_tensor_v2` and its kin) or a numpy array
/// (`_reconstruct` + BUILD, or protocol 5's `_frombuffer`) as a contiguous
/// tensor; `None` for anything else.
fn to_tensor(
    path: &Path,
    name: &str,
    v: &Value,
    storage: &mut dyn FnMut(&Value, Kind) -> Result<Vec<u8>>,
) -> Result<Option<Tensor>> {
    let Value::Object { callable, args, state } = v else { return Ok(None) };
    let class = callable.class_name().unwrap_or_default();
    let args = args.as_seq().unwrap_or_default();
    let err = |what: &str| bad(path, format!("tensor `{name}`: {what}"));
    match class.as_str() {
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let [Value::Persistent(pid), offset, size, stride, ..] = args else {
                return Err(err("unexpected arguments to _rebuild_tensor"));
            };
            let kind = pid
                .as_seq()
                .and_then(|p| p.get(1))
                .and_then(Value::class_name)
                .as_deref()
                .and_then(storage_kind)
                .ok_or_else(|| err("its storage has an unknown type"))?;
            let ints = |v| int_tuple(v).ok_or_else(|| err("size or stride is not ints"));
            let (size, stride) = (ints(size)?, ints(stride)?);
            let offset = offset.as_int().ok_or_else(|| err("offset is not an int"))?;
            let data = storage(pid, kind)?;
            let numel = (data.len() / kind.elt_size_in_bytes()) as i64;
            let needed = offset
                + size.iter().zip(&stride).map(|(s, st)| (s - 1).max(0) * st).sum::<i64>()
                + 1;
            if size.iter().all(|&s| s > 0) && needed > numel {
                return Err(err(&format!(
                    "needs {needed} elements, its storage has {numel}: the file is truncated or damaged"
                )));
            }
            let flat = Tensor::f_from_data_size(&data, &[numel], kind)?;
            Ok(Some(flat.f_as_strided(&size, &stride, offset)?.f_contiguous()?))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match args.first() {
                Some(data) => to_tensor(path, name, data, storage),
                None => Err(err("a parameter without data")),
            }
        }
        "torch._tensor._rebuild_from_type_v2" => match args {
            [func, _, inner, ..] => {
                let call = Value::Object {
                    callable: Box::new(func.clone()),
                    args: Box::new(inner.clone()),
                    state: None,
                };
                to_tensor(path, name, &call, storage)
            }
            _ => Err(err("unexpected arguments to _rebuild_from_type_v2")),
        },
        "numpy.core.multiarray._reconstruct" | "numpy._core.multiarray._reconstruct" => {
            let Some(state) = state else { return Err(err("a numpy array without its data")) };
            match state.as_seq() {
                Some([_, shape, dtype, fortran, Value::Bytes(data)]) => {
                    let kind = numpy_kind(dtype).map_err(|e| err(&e))?;
                    let shape = int_tuple(shape).ok_or_else(|| err("numpy shape is not ints"))?;
                    if *fortran == Value::Bool(true) {
                        return Err(err("a Fortran-order numpy array"));
                    }
                    numpy_tensor(data, &shape, kind).map_err(|e| err(&e)).map(Some)
                }
                _ => Err(err(
                    "a numpy array whose state is not (version, shape, dtype, order, bytes)",
                )),
            }
        }
        "numpy.core.numeric._frombuffer" | "numpy._core.numeric._frombuffer" => match args {
            [Value::Bytes(data), dtype, shape, order] => {
                if order.as_str() == Some("F") {
                    return Err(err("a Fortran-order numpy array"));
                }
                let kind = numpy_kind(dtype).map_err(|e| err(&e))?;
                let shape = int_tuple(shape).ok_or_else(|| err("numpy shape is not ints"))?;
                numpy_tensor(data, &shape, kind).map_err(|e| err(&e)).map(Some)
            }
            _ => Err(err("unexpected arguments to numpy's _frombuffer")),
        },
        _ => Ok(None),
    }
}

/// A tuple (or list) of ints, as shapes and strides are pickled.
fn int_tuple(v: &Value) -> Option<Vec<i64>> {
    v.as_seq()?.iter().map(Value::as_int).collect()
}

fn numpy_tensor(data: &[u8], shape: &[i64], kind: Kind) -> std::result::Result<Tensor, String> {
    let numel: i64 = shape.iter().product();
    if data.len() as i64 != numel * kind.elt_size_in_bytes() as i64 {
        return Err(format!(
            "{} bytes of data for shape {shape:?}: the file is truncated or damaged",
            data.len()
        ));
    }
    Tensor::f_from_data_size(data, shape, kind).map_err(|e| e.to_string())
}

/// A `numpy.dtype('f4', False, True)` object with its BUILD state.
fn numpy_kind(dtype: &Value) -> std::result::Result<Kind, String> {
    let Value::Object { args, state, .. } = dtype else {
        return Err("numpy dtype is not an object".into());
    };
    let code = args.as_seq().and_then(|a| a.first()).and_then(Value::as_str).unwrap_or("");
    let order = state.as_ref().and_then(|s| s.as_seq().and_then(|s| s.get(1)).cloned());
    if order.as_ref().and_then(Value::as_str) == Some(">") {
        return Err("a big-endian numpy array".into());
    }
    Ok(match code {
        "f4" => Kind::Float,
        "f8" => Kind::Double,
        "f2" => Kind::Half,
        "i8" => Kind::Int64,
        "i4" => Kind::Int,
        "i2" => Kind::Int16,
        "i1" => Kind::Int8,
        "u1" => Kind::Uint8,
        "b1" => Kind::Bool,
        other => return Err(format!("numpy dtype {other:?} is not read")),
    })
}

/// How a file names a ResNet's tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Naming {
    Torchvision,
    Detectron2,
}

/// Where in a file the ResNet is, and which one it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub prefix: String,
    pub naming: Naming,
    pub arch: Arch,
}

/// Prefix parts that hold the network a user means: wrappers (`module.` of
/// DataParallel), the usual checkpoint keys, and the online encoder of
/// self-supervised methods, not their momentum copies (`encoder_k`,
/// `target`), which share its stem.
const KNOWN_PARTS: [&str; 10] = [
    "state_dict",
    "model",
    "module",
    "encoder",
    "encoder_q",
    "backbone",
    "bottom_up",
    "body",
    "online",
    "net",
];

/// Finds the one ResNet in `names` (dotted paths): a prefix with a stem,
/// and the architecture its blocks make.
pub fn find_resnet<'a>(path: &Path, names: impl IntoIterator<Item = &'a str>) -> Result<Found> {
    let names: BTreeSet<&str> = names.into_iter().collect();
    let mut candidates: Vec<(String, Naming)> = Vec::new();
    for n in &names {
        if let Some(p) = n.strip_suffix("stem.conv1.weight") {
            candidates.push((p.to_string(), Naming::Detectron2));
        } else if let Some(p) = n.strip_suffix("conv1.weight") {
            let is_root = p.is_empty() || p.ends_with('.');
            if is_root && names.contains(format!("{p}layer1.0.conv1.weight").as_str()) {
                candidates.push((p.to_string(), Naming::Torchvision));
            }
        }
    }
    if candidates.len() > 1 {
        let known =
            |p: &str| p.split('.').filter(|s| !s.is_empty()).all(|s| KNOWN_PARTS.contains(&s));
        let preferred: Vec<_> = candidates.iter().filter(|(p, _)| known(p)).cloned().collect();
        if preferred.len() == 1 {
            candidates = preferred;
        }
    }
    let (prefix, naming) = match candidates.as_slice() {
        [one] => one.clone(),
        [] => {
            let first: Vec<&str> = names.iter().take(3).copied().collect();
            return Err(bad(
                path,
                format!(
                    "no ResNet in it: no tensor is named like a torchvision or Detectron2 \
                     ResNet stem (`conv1.weight` with `layer1.0.conv1.weight`, or \
                     `stem.conv1.weight`); its first tensors: {}",
                    if first.is_empty() { "none".to_string() } else { first.join(", ") }
                ),
            ));
        }
        many => {
            let list: Vec<String> = many.iter().map(|(p, _)| format!("`{p}`")).collect();
            return Err(bad(
                path,
                format!(
                    "{} candidate prefixes hold a ResNet: {}; keep one network in the file",
                    many.len(),
                    list.join(", ")
                ),
            ));
        }
    };
    let block = |stage: usize, b: usize, conv: &str| match naming {
        Naming::Torchvision => format!("{prefix}layer{stage}.{b}.{conv}.weight"),
        Naming::Detectron2 => format!("{prefix}res{}.{b}.{conv}.weight", stage + 1),
    };
    let blocks: Vec<usize> = (1..=4)
        .map(|s| (0..).take_while(|&b| names.contains(block(s, b, "conv1").as_str())).count())
        .collect();
    let bottleneck = names.contains(block(1, 0, "conv3").as_str());
    let arch = Arch::ALL
        .into_iter()
        .find(|a| a.blocks()[..] == blocks[..] && a.bottleneck() == bottleneck)
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "the network under prefix `{prefix}` is not a ResNet-18, 34 or 50: \
                     {} blocks with {} per stage",
                    if bottleneck { "bottleneck" } else { "basic" },
                    blocks.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
    Ok(Found { prefix, naming, arch })
}

/// What a model's tensor is called in a file of `naming` under `prefix`;
/// `None` for tensors such a file does not carry.
pub fn file_name(found: &Found, model_name: &str) -> Option<String> {
    match found.naming {
        Naming::Torchvision => Some(format!("{}{model_name}", found.prefix)),
        Naming::Detectron2 => detectron2_name(model_name).map(|n| format!("{}{n}", found.prefix)),
    }
}

/// Whether a file's tensor under the prefix is one a backbone leaves out on
/// purpose: the classifier.
fn ignorable(rest: &str) -> bool {
    rest.starts_with("fc.")
}

/// Copies the file's ResNet into `model` (torchvision name -> variable),
/// checking that every tensor is there with its shape and that nothing of
/// the network is left over. Returns how many tensors were copied.
pub fn copy_into(
    path: &Path,
    state: &StateDict,
    found: &Found,
    model: &mut [(String, Tensor)],
) -> Result<usize> {
    let mut used = BTreeSet::new();
    tch::no_grad(|| -> Result<()> {
        for (name, var) in model.iter_mut() {
            let counter = name.ends_with("num_batches_tracked");
            let key = match file_name(found, name) {
                Some(key) => key,
                None if counter => continue,
                None => return Err(bad(path, format!("model tensor `{name}` has no file name"))),
            };
            // BatchNorm's step counter is bookkeeping that files written
            // before PyTorch 0.4.1 lack; it stays 0 then.
            if counter && !state.tensors.contains_key(&key) {
                continue;
            }
            let src = state.tensors.get(&key).ok_or_else(|| {
                bad(
                    path,
                    format!("tensor `{key}` is missing (the model needs shape {:?})", var.size()),
                )
            })?;
            if src.size() != var.size() {
                return Err(bad(
                    path,
                    format!(
                        "tensor `{key}` has shape {:?}, the {} needs {:?}",
                        src.size(),
                        found.arch,
                        var.size()
                    ),
                ));
            }
            var.f_copy_(&src.f_to_kind(var.kind())?.f_to_device(var.device())?)?;
            used.insert(key);
        }
        Ok(())
    })?;
    let extra = state.tensors.keys().find(|k| {
        k.strip_prefix(found.prefix.as_str())
            .is_some_and(|rest| !used.contains(*k) && !ignorable(rest))
    });
    if let Some(extra) = extra {
        return Err(bad(
            path,
            format!(
                "tensor `{extra}` is not part of a {} (shape {:?}): another network is \
                 mixed into the file, or it is not a plain ResNet",
                found.arch,
                state.tensors[extra].size()
            ),
        ));
    }
    Ok(used.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn resnet_names(prefix: &str, blocks: [usize; 4], conv3: bool) -> Vec<String> {
        let mut out = vec![format!("{prefix}conv1.weight")];
        for (s, &n) in blocks.iter().enumerate() {
            for b in 0..n {
                out.push(format!("{prefix}layer{}.{b}.conv1.weight", s + 1));
                if conv3 {
                    out.push(format!("{prefix}layer{}.{b}.conv3.weight", s + 1));
                }
            }
        }
        out
    }

    #[test]
    fn finds_prefix_and_architecture() {
        let p = Path::new("w.pth");
        let n = resnet_names("", [2, 2, 2, 2], false);
        let f = find_resnet(p, n.iter().map(String::as_str)).unwrap();
        assert_eq!(
            (f.prefix.as_str(), f.arch, f.naming),
            ("", Arch::ResNet18, Naming::Torchvision)
        );
        let n = resnet_names("module.", [3, 4, 6, 3], true);
        let f = find_resnet(p, n.iter().map(String::as_str)).unwrap();
        assert_eq!((f.prefix.as_str(), f.arch), ("module.", Arch::ResNet50));
        let n = resnet_names("", [3, 4, 6, 3], false);
        assert_eq!(find_resnet(p, n.iter().map(String::as_str)).unwrap().arch, Arch::ResNet34);
    }

    #[test]
    fn the_online_encoder_wins_over_its_momentum_copy() {
        let p = Path::new("ckpt.pth");
        let mut n = resnet_names("model.module.encoder.", [2, 2, 2, 2], false);
        n.extend(resnet_names("model.module.encoder_k.", [2, 2, 2, 2], false));
        let f = find_resnet(p, n.iter().map(String::as_str)).unwrap();
        assert_eq!(f.prefix, "model.module.encoder.");
        let mut n = resnet_names("backbone.", [2, 2, 2, 2], false);
        n.extend(resnet_names("encoder.", [2, 2, 2, 2], false));
        let e = find_resnet(p, n.iter().map(String::as_str)).unwrap_err().to_string();
        assert!(
            e.contains("ckpt.pth") && e.contains("`backbone.`") && e.contains("`encoder.`"),
            "{e}"
        );
    }

    #[test]
    fn not_a_resnet() {
        let p = Path::new("vit.pth");
        let n = names(&["cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"]);
        let e = find_resnet(p, n.iter().map(String::as_str)).unwrap_err().to_string();
        assert!(e.contains("vit.pth") && e.contains("no ResNet") && e.contains("cls_token"), "{e}");
        let n = resnet_names("", [2, 2, 3, 2], false);
        let e = find_resnet(p, n.iter().map(String::as_str)).unwrap_err().to_string();
        assert!(e.contains("2, 2, 3, 2") && e.contains("not a ResNet-18"), "{e}");
    }

    #[test]
    fn detectron2_names_are_recognised() {
        let p = Path::new("d2.pkl");
        let mut n = vec!["stem.conv1.weight".to_string()];
        for (s, k) in [(2, 2), (3, 2), (4, 2), (5, 2)] {
            for b in 0..k {
                n.push(format!("res{s}.{b}.conv1.weight"));
            }
        }
        let f = find_resnet(p, n.iter().map(String::as_str)).unwrap();
        assert_eq!((f.naming, f.arch), (Naming::Detectron2, Arch::ResNet18));
        assert_eq!(file_name(&f, "layer1.0.bn2.bias").as_deref(), Some("res2.0.conv2.norm.bias"));
        assert_eq!(file_name(&f, "bn1.num_batches_tracked"), None);
    }

    #[test]
    fn garbage_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.pth");
        std::fs::write(&path, b"hello world, not weights").unwrap();
        let e = read_state_dict(&path).err().unwrap().to_string();
        assert!(e.contains("notes.pth") && e.contains("not a safetensors"), "{e}");
    }
}

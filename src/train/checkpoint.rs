//! Training checkpoints (spec section 7): everything needed to resume a run
//! exactly, in one safetensors file with JSON metadata in its header.
//!
//! Tensors are stored as `<group>/<name>`, e.g. `online/encoder.conv1.weight`,
//! `target/projector.bn1.running_mean`, `optim/ppm.transform.0.weight`.
//! Files are written to a temporary name, fsynced, then renamed over the old
//! one, so a crash at any moment leaves either the old or the new checkpoint.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::files::write_atomically;
use crate::train::config::Config;
use crate::{Error, Result};

/// Written in every checkpoint's header; bumped when the layout changes.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "pixpro-checkpoint";

/// Where a run stands, saved beside the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub version: u32,
    /// Optimiser steps taken; the next step to run.
    pub step: u64,
    pub total_steps: u64,
    /// The loader position of the next batch.
    pub epoch: u64,
    pub index_in_epoch: usize,
    /// The full resolved configuration, as TOML.
    pub config: String,
    /// Steps skipped so far for a non-finite loss or gradient; absent (0) in
    /// checkpoints written before skipping existed, which keeps them readable.
    #[serde(default)]
    pub skipped_steps: u64,
}

pub struct Checkpoint {
    pub path: PathBuf,
    pub meta: Meta,
    tensors: BTreeMap<String, Tensor>,
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Bytes of a tensor in safetensors' little-endian row-major layout.
pub(crate) fn tensor_bytes(t: &Tensor) -> Result<(Dtype, Vec<usize>, Vec<u8>), String> {
    let dtype = dtype_of(t.kind()).ok_or_else(|| format!("unsupported kind {:?}", t.kind()))?;
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut bytes, numel).map_err(|e| e.to_string())?;
    Ok((dtype, t.size().iter().map(|&d| d as usize).collect(), bytes))
}

/// The `__metadata__` of the safetensors header of `path`, reading the
/// header and nothing else.
fn header_metadata(path: &Path) -> Option<serde_json::Value> {
    use std::io::Read;
    let mut f = fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // safetensors caps its header at 100 MB.
    if len > 100_000_000 {
        return None;
    }
    let mut text = vec![0u8; len as usize];
    f.read_exact(&mut text).ok()?;
    let mut header: serde_json::Value = serde_json::from_slice(&text).ok()?;
    header.as_object_mut()?.remove("__metadata__")
}

impl Checkpoint {
    /// Saves `groups` of named tensors with `meta` to `path`, atomically.
    pub fn save(path: &Path, meta: &Meta, groups: &[(&str, Vec<(String, Tensor)>)]) -> Result<()> {
        let ckpt_err = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
        let mut owned = Vec::new();
        for (group, named) in groups {
            for (name, t) in named {
                let (dtype, shape, bytes) =
                    tensor_bytes(t).map_err(|e| ckpt_err(format!("tensor {group}/{name}: {e}")))?;
                owned.push((format!("{group}/{name}"), dtype, shape, bytes));
            }
        }
        let views = owned
            .iter()
            .map(|(n, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| ckpt_err(format!("tensor {n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta_json = serde_json::to_string(meta).map_err(|e| ckpt_err(e.to_string()))?;
        let header = HashMap::from([
            ("format".to_string(), FORMAT_NAME.to_string()),
            ("version".to_string(), FORMAT_VERSION.to_string()),
            ("meta".to_string(), meta_json),
        ]);
        let bytes =
            safetensors::serialize(views, Some(header)).map_err(|e| ckpt_err(e.to_string()))?;
        write_atomically(path, &bytes)
    }

    /// Whether `path` is a safetensors file whose header says it is a pixpro
    /// checkpoint; only the header is read.
    pub fn is_checkpoint(path: &Path) -> bool {
        header_metadata(path).is_some_and(|m| m["format"] == FORMAT_NAME)
    }

    /// Where the checkpoint at `path` stands, from its header alone: cheap
    /// where a caller needs the step and not the tensors. None when `path`
    /// is missing or not a pixpro checkpoint of this format version
    /// ([`Checkpoint::load`] says why); its tensors are not checked.
    pub fn read_meta(path: &Path) -> Option<Meta> {
        let metadata = header_metadata(path)?;
        let version = FORMAT_VERSION.to_string();
        if metadata["format"] != FORMAT_NAME || metadata["version"] != version.as_str() {
            return None;
        }
        serde_json::from_str(metadata["meta"].as_str()?).ok()
    }

    pub fn load(path: &Path) -> Result<Checkpoint> {
        let ckpt_err = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            ckpt_err(format!("not a complete safetensors file ({e}); it may be truncated"))
        })?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| ckpt_err(e.to_string()))?;
        let info = header.metadata().clone().unwrap_or_default();
        if info.get("format").map(String::as_str) != Some(FORMAT_NAME) {
            return Err(ckpt_err(
                "not a pixpro training checkpoint (no `format: pixpro-checkpoint` in its header)"
                    .into(),
            ));
        }
        let version: u32 = info.get("version").and_then(|v| v.parse().ok()).unwrap_or(0);
        if version != FORMAT_VERSION {
            return Err(ckpt_err(format!(
                "format version {version}, this pixpro reads version {FORMAT_VERSION}"
            )));
        }
        let meta: Meta =
            info.get("meta").ok_or_else(|| ckpt_err("header has no `meta`".into())).and_then(
                |m| serde_json::from_str(m).map_err(|e| ckpt_err(format!("bad `meta`: {e}"))),
            )?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let kind = kind_of(view.dtype()).ok_or_else(|| {
                ckpt_err(format!("tensor {name}: unsupported dtype {:?}", view.dtype()))
            })?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)
                .map_err(|e| ckpt_err(format!("tensor {name}: {e}")))?;
            tensors.insert(name, t);
        }
        Ok(Checkpoint { path: path.to_path_buf(), meta, tensors })
    }

    /// The run's configuration saved with the tensors.
    pub fn config(&self) -> Result<Config> {
        Config::from_toml_str(&self.meta.config, &Config::default()).map_err(|e| {
            Error::Checkpoint { path: self.path.clone(), reason: format!("its saved config: {e}") }
        })
    }

    /// The tensors of one group, by name within the group.
    pub fn group(&self, group: &str) -> BTreeMap<&str, &Tensor> {
        let prefix = format!("{group}/");
        self.tensors.iter().filter_map(|(n, t)| n.strip_prefix(&prefix).map(|s| (s, t))).collect()
    }

    /// Copies group `group` into every variable of `vs`: names and shapes must
    /// match exactly, so a checkpoint of another architecture is refused.
    pub fn restore(&self, group: &str, vs: &mut VarStore) -> Result<()> {
        self.restore_part(group, "", vs)
    }

    /// Like [`Checkpoint::restore`] for the tensors of `group` whose names
    /// start with `prefix` (e.g. `encoder.`), the prefix stripped.
    pub fn restore_part(&self, group: &str, prefix: &str, vs: &mut VarStore) -> Result<()> {
        let ckpt_err = |reason: String| Error::Checkpoint { path: self.path.clone(), reason };
        let scope = format!("{group}/{prefix}");
        let saved: BTreeMap<&str, &Tensor> = self
            .group(group)
            .into_iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|s| (s, t)))
            .collect();
        let vars = vs.variables();
        let missing: Vec<&String> =
            vars.keys().filter(|n| !saved.contains_key(n.as_str())).collect();
        if !missing.is_empty() {
            let mut missing: Vec<_> = missing.into_iter().cloned().collect();
            missing.sort();
            return Err(ckpt_err(format!(
                "{} tensors of the model are missing from `{scope}` (first: {}); \
                 was it written for another architecture or configuration?",
                missing.len(),
                missing[0]
            )));
        }
        if let Some(extra) = saved.keys().find(|n| !vars.contains_key(**n)) {
            return Err(ckpt_err(format!(
                "`{scope}{extra}` is not part of this model; was it written for another architecture?"
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for (name, mut var) in vars {
                let src = saved[name.as_str()];
                if src.size() != var.size() {
                    return Err(ckpt_err(format!(
                        "`{scope}{name}` has shape {:?}, the model needs {:?}",
                        src.size(),
                        var.size()
                    )));
                }
                var.f_copy_(src)?;
            }
            Ok(())
        })
    }
}

/// Named tensors of a store, sorted by name.
pub fn named(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    fn meta() -> Meta {
        Meta {
            version: FORMAT_VERSION,
            step: 7,
            total_steps: 10,
            epoch: 1,
            index_in_epoch: 2,
            config: "x = 1".into(),
            skipped_steps: 0,
        }
    }

    fn store(seed: i64) -> VarStore {
        tch::manual_seed(seed);
        let vs = VarStore::new(Device::Cpu);
        let _ = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        let _ = nn::batch_norm1d(vs.root() / "bn", 2, Default::default());
        vs
    }

    #[test]
    fn round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let vs = store(1);
        Checkpoint::save(&path, &meta(), &[("online", named(&vs))]).unwrap();
        let ck = Checkpoint::load(&path).unwrap();
        assert_eq!(ck.meta, meta());
        let mut other = store(2);
        ck.restore("online", &mut other).unwrap();
        for (name, t) in named(&vs) {
            let o = &other.variables()[&name];
            assert!(t.equal(o), "{name} differs after restore");
        }
        assert!(!dir.path().join("c.safetensors.tmp").exists());
    }

    #[test]
    fn meta_is_read_from_the_header_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        assert_eq!(Checkpoint::read_meta(&path), None);
        Checkpoint::save(&path, &meta(), &[("online", named(&store(1)))]).unwrap();
        assert_eq!(Checkpoint::read_meta(&path), Some(meta()));
        assert!(Checkpoint::is_checkpoint(&path));
        // Another safetensors file (weights without our header) has no meta.
        let other = dir.path().join("w.safetensors");
        let t = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let (dtype, shape, bytes) = tensor_bytes(&t).unwrap();
        let view = TensorView::new(dtype, shape, &bytes).unwrap();
        fs::write(&other, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
        assert_eq!(Checkpoint::read_meta(&other), None);
        assert!(!Checkpoint::is_checkpoint(&other));
        // A header that is JSON but not an object, and one that is not JSON.
        for header in [&b"[]"[..], b"{no"] {
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header);
            fs::write(&other, bytes).unwrap();
            assert_eq!(Checkpoint::read_meta(&other), None);
            assert!(!Checkpoint::is_checkpoint(&other));
        }
    }

    #[test]
    fn truncated_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        Checkpoint::save(&path, &meta(), &[("online", named(&store(1)))]).unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 9]).unwrap();
        let err = Checkpoint::load(&path).err().unwrap().to_string();
        assert!(err.contains("c.safetensors") && err.contains("truncated"), "{err}");
    }

    #[test]
    fn other_architecture_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        Checkpoint::save(&path, &meta(), &[("online", named(&store(1)))]).unwrap();
        let mut wider = VarStore::new(Device::Cpu);
        let _ = nn::linear(wider.root() / "fc", 4, 2, Default::default());
        let _ = nn::batch_norm1d(wider.root() / "bn", 2, Default::default());
        let err =
            Checkpoint::load(&path).unwrap().restore("online", &mut wider).unwrap_err().to_string();
        assert!(err.contains("fc.weight") && err.contains("[2, 4]"), "{err}");
        let mut fewer = VarStore::new(Device::Cpu);
        let _ = nn::linear(fewer.root() / "fc", 3, 2, Default::default());
        let err =
            Checkpoint::load(&path).unwrap().restore("online", &mut fewer).unwrap_err().to_string();
        assert!(err.contains("bn."), "{err}");
    }

    #[test]
    fn a_part_restores_under_its_prefix_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let whole = VarStore::new(Device::Cpu);
        let _ = nn::linear(whole.root() / "enc" / "fc", 3, 2, Default::default());
        let _ = nn::linear(whole.root() / "head", 2, 2, Default::default());
        Checkpoint::save(&path, &meta(), &[("online", named(&whole))]).unwrap();
        let ck = Checkpoint::load(&path).unwrap();

        let mut part = VarStore::new(Device::Cpu);
        let _ = nn::linear(part.root() / "fc", 3, 2, Default::default());
        ck.restore_part("online", "enc.", &mut part).unwrap();
        assert!(part.variables()["fc.weight"].equal(&whole.variables()["enc.fc.weight"]));

        let mut wider = VarStore::new(Device::Cpu);
        let _ = nn::linear(wider.root() / "fc", 4, 2, Default::default());
        let err = ck.restore_part("online", "enc.", &mut wider).unwrap_err().to_string();
        assert!(err.contains("online/enc.fc.weight") && err.contains("[2, 4]"), "{err}");
    }

    #[test]
    fn plain_safetensors_is_not_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        Tensor::write_safetensors(&[("a", Tensor::ones([2], (Kind::Float, Device::Cpu)))], &path)
            .unwrap();
        let err = Checkpoint::load(&path).err().unwrap().to_string();
        assert!(err.contains("not a pixpro training checkpoint"), "{err}");
    }
}

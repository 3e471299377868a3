//! Crash-safe files: atomic writes, safetensors I/O, and checkpoint directories.
//!
//! A checkpoint is a directory:
//!
//! | file | content |
//! |---|---|
//! | `model.safetensors` | every parameter by dotted name (`model.*`, `loss.*`), f32; PyTorch-readable |
//! | `optimizer.safetensors` | AdamW moments `m.<name>`, `v.<name>` |
//! | `state.json` | step, per-parameter optimizer steps, loader position, RNG state, active objective, config |
//! | `tokenizer.json` | the run's tokenizer |
//!
//! It is written to `<dir>.tmp/` first; only when every file is complete and synced does it
//! replace `<dir>` (the old one is moved to `<dir>.prev/` for the instant of the swap and then
//! removed). A crash therefore leaves either the old or the new checkpoint, never a mix; if it
//! happens between the two renames, [`resolve_dir`] finds `<dir>.prev/`.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Version of the checkpoint layout written in `state.json`.
pub const FORMAT_VERSION: u32 = 1;

/// Writes `bytes` to `path` through a temporary sibling file and a rename, so a reader never sees
/// a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::io(path, std::io::Error::other("not a file path")))?;
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Serialises named tensors to safetensors bytes (tensors are copied to the CPU first).
pub fn tensors_to_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let cpu = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(cpu, None)
        .map_err(|e| Error::Data(format!("cannot serialise tensors: {e}")))
}

/// Writes named tensors to a safetensors file, atomically.
pub fn save_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    write_atomic(path, &tensors_to_bytes(tensors)?)
}

/// Reads a safetensors file; a missing or corrupt file is an error naming it (see
/// [`tensors_from_bytes`]).
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    tensors_from_bytes(&bytes, path, device)
}

/// Parses safetensors bytes (`path` names them in messages) into tensors on `device`.
///
/// Floating-point tensors (F32, and F16 / BF16 / F64, which callers convert) are accepted; a
/// file shorter than its 8-byte header length, a header length past the end of the file, a
/// header that is not JSON, offsets that do not cover the data, or a tensor of another dtype
/// is an [`Error::Checkpoint`] naming the file and, where there is one, the tensor. Never
/// panics, whatever the bytes.
pub fn tensors_from_bytes(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    use safetensors::{Dtype, SafeTensorError, SafeTensors};
    let bad = |msg: String| Error::checkpoint(path, msg);
    let invalid = |msg: String| bad(format!("not a valid safetensors file: {msg}"));
    let Some(head) = bytes.first_chunk::<8>() else {
        return Err(invalid(format!(
            "truncated: {} bytes; a safetensors file starts with an 8-byte header length",
            bytes.len()
        )));
    };
    let declared = u64::from_le_bytes(*head);
    let after = bytes.len() as u64 - 8;
    if declared > after {
        return Err(invalid(format!(
            "header length {declared} is larger than the {after} bytes after it: truncated, or \
             not a safetensors file"
        )));
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        invalid(match e {
            SafeTensorError::InvalidHeader(e) => format!("header is not UTF-8 text: {e}"),
            SafeTensorError::InvalidHeaderDeserialization(e) | SafeTensorError::JsonError(e) => {
                format!("header is not a safetensors JSON header: {e}")
            }
            SafeTensorError::InvalidOffset(name) => format!(
                "tensor `{name}`: its data offsets do not fit the file (truncated or corrupt)"
            ),
            SafeTensorError::MetadataIncompleteBuffer => {
                "the tensors' data does not cover the file exactly: truncated or padded".into()
            }
            SafeTensorError::TensorInvalidInfo | SafeTensorError::InvalidTensorView(..) => {
                match misfit_tensor(bytes) {
                    Some(name) => {
                        format!("tensor `{name}`: its shape and dtype do not match its byte range")
                    }
                    None => "a tensor's shape and dtype do not match its byte range".into(),
                }
            }
            other => other.to_string(),
        })
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let dtype = view.dtype();
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
            return Err(bad(format!(
                "tensor `{name}` has dtype {dtype:?}; expected F32 (F16, BF16 and F64 are \
                 converted)"
            )));
        }
        let t = candle_core::safetensors::Load::load(&view, device)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// The first tensor of a safetensors header whose byte range does not fit its shape and dtype
/// or the file (for messages; `None` when the header cannot be read or every tensor fits).
fn misfit_tensor(bytes: &[u8]) -> Option<String> {
    let len = usize::try_from(u64::from_le_bytes(*bytes.first_chunk::<8>()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    let data_len = (bytes.len() - 8 - len) as u64;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut named: Vec<_> = map.iter().filter(|(k, _)| *k != "__metadata__").collect();
    named.sort_by_key(|(k, _)| k.as_str());
    named.into_iter().find_map(|(name, info)| {
        let size: u64 = match info.get("dtype")?.as_str()? {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        let elems = info
            .get("shape")?
            .as_array()?
            .iter()
            .try_fold(1u64, |a, d| a.checked_mul(d.as_u64()?));
        let offsets = info.get("data_offsets")?.as_array()?;
        let (start, end) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
        let fits = elems
            .and_then(|n| n.checked_mul(size))
            .is_some_and(|b| start <= end && end - start == b && end <= data_len);
        (!fits).then(|| name.clone())
    })
}

/// The checkpoint to read for `dir`: `dir` itself, or `dir.prev` if a crash interrupted a swap.
pub fn resolve_dir(dir: &Path) -> Result<PathBuf> {
    if dir.join("state.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let prev = sibling(dir, "prev");
    if prev.join("state.json").is_file() {
        return Ok(prev);
    }
    if dir.is_dir() {
        return Err(Error::checkpoint(
            dir,
            "is not a checkpoint (no state.json); expected a run directory or its checkpoint/",
        ));
    }
    Err(Error::checkpoint(dir, "does not exist"))
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "checkpoint".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// Writes a checkpoint directory from `(file name, bytes)` pairs, replacing `dir` atomically.
pub fn write_dir(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for (name, bytes) in files {
        let path = tmp.join(name);
        let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&path, e))?;
        f.sync_all().map_err(|e| Error::io(&path, e))?;
    }
    let prev = sibling(dir, "prev");
    if dir.exists() {
        if prev.exists() {
            std::fs::remove_dir_all(&prev).map_err(|e| Error::io(&prev, e))?;
        }
        std::fs::rename(dir, &prev).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if prev.exists() {
        std::fs::remove_dir_all(&prev).map_err(|e| Error::io(&prev, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wb-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn write_dir_replaces_and_resolve_falls_back_to_prev() {
        let root = tmpdir("swap");
        let ck = root.join("checkpoint");
        write_dir(&ck, &[("state.json", b"{\"a\":1}".to_vec())]).unwrap();
        write_dir(&ck, &[("state.json", b"{\"a\":2}".to_vec())]).unwrap();
        assert_eq!(std::fs::read(ck.join("state.json")).unwrap(), b"{\"a\":2}");
        assert!(!root.join("checkpoint.prev").exists());
        assert!(!root.join("checkpoint.tmp").exists());
        // Simulate a crash between the two renames.
        std::fs::rename(&ck, root.join("checkpoint.prev")).unwrap();
        assert_eq!(resolve_dir(&ck).unwrap(), root.join("checkpoint.prev"));
        assert!(resolve_dir(&root.join("nothing")).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn corrupt_safetensors_is_named() {
        let root = tmpdir("corrupt");
        let p = root.join("model.safetensors");
        std::fs::write(&p, b"garbage").unwrap();
        let e = load_tensors(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("truncated: 7 bytes"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}

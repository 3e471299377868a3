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

/// Reads a safetensors file; a missing or corrupt file is an error naming it.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file: {e}")))
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
            e.contains("model.safetensors") && e.contains("not a valid"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}

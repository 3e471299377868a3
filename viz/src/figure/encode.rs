//! Getting a figure out: PNG bytes, files on disk, and inline display in evcxr notebooks.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::ImageEncoder;
use image::codecs::png::PngEncoder;

use super::{Figure, FigureError};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648, `+/` alphabet, `=` padding, no line breaks).
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * k)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Figure {
    /// The bitmap encoded as PNG (8-bit RGB).
    pub fn png(&self) -> Result<Vec<u8>, FigureError> {
        let mut out = Vec::new();
        PngEncoder::new(&mut out)
            .write_image(
                &self.rgb,
                self.width,
                self.height,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| FigureError::Encode(e.to_string()))?;
        Ok(out)
    }

    /// Writes `<dir>/<stem>.png` and `<dir>/<stem>.svg`, creating `dir`. Each file is written
    /// to a temporary file in `dir` and renamed into place, so a reader never sees half a file.
    /// Returns both paths, PNG first.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<[PathBuf; 2], FigureError> {
        if stem.is_empty() || stem.contains(['/', '\\']) || stem.starts_with('.') {
            return Err(FigureError::input(
                "stem",
                "a non-empty file name without separators or leading dot",
                format!("{stem:?}"),
            ));
        }
        fs::create_dir_all(dir).map_err(|source| FigureError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let png = self.png()?;
        let png_path = dir.join(format!("{stem}.png"));
        let svg_path = dir.join(format!("{stem}.svg"));
        write_atomic(dir, &png_path, &png)?;
        write_atomic(dir, &svg_path, self.svg.as_bytes())?;
        Ok([png_path, svg_path])
    }

    /// The evcxr rich-output blocks for this figure: the PNG (base64), then a plain-text
    /// description with the title and size.
    pub fn evcxr_blocks(&self) -> Result<String, FigureError> {
        let png = base64_encode(&self.png()?);
        Ok(format!(
            "EVCXR_BEGIN_CONTENT image/png\n{png}\nEVCXR_END_CONTENT\n{}",
            self.text_block()
        ))
    }

    fn text_block(&self) -> String {
        format!(
            "EVCXR_BEGIN_CONTENT text/plain\n{} ({}×{} px)\nEVCXR_END_CONTENT\n",
            self.title, self.width, self.height
        )
    }

    /// Shows the figure inline in a Jupyter notebook running the evcxr Rust kernel, by printing
    /// [`Figure::evcxr_blocks`] to stdout in one locked write. If the PNG cannot be encoded,
    /// prints a plain-text block with the error instead.
    pub fn evcxr_display(&self) {
        let blocks = self.evcxr_blocks().unwrap_or_else(|e| {
            format!("EVCXR_BEGIN_CONTENT text/plain\n{e}\nEVCXR_END_CONTENT\n")
        });
        let mut out = std::io::stdout().lock();
        // Nothing useful can be done in a notebook cell if stdout is gone.
        let _ = out.write_all(blocks.as_bytes()).and_then(|()| out.flush());
    }
}

/// Writes `bytes` to a temporary file in `dir`, then renames it to `path`.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), FigureError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FigureError::Io { path, source }
    };
    let written = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(io(&tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io(path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::base64_encode;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0xfd]), "//79");
    }
}

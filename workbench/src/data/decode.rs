//! Decoding image files (PNG, JPEG, WebP) into [`RgbImage`]s, with limits on absurd sizes.
//!
//! Every failure names the file and what was wrong: a zero-byte file, bytes that are no known
//! image format, a format other than the three supported, a corrupt or truncated stream, or
//! dimensions beyond [`DecodeLimits`] (checked from the header before any pixel memory is
//! allocated). Decoding runs under `catch_unwind`, so even a decoder bug surfaces as an error
//! for that file rather than ending the run.

use crate::data::RgbImage;
use crate::{Error, Result};
use std::io::Cursor;
use std::path::Path;

/// Largest inputs the decoder accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width or height, in pixels.
    pub max_side: u32,
    /// Largest number of pixels (width × height).
    pub max_pixels: u64,
    /// Largest file, in bytes.
    pub max_file_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_side: 16_384,
            max_pixels: 64 * 1024 * 1024,
            max_file_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The name of a supported format, for messages.
fn format_name(f: image::ImageFormat) -> &'static str {
    match f {
        image::ImageFormat::Png => "PNG",
        image::ImageFormat::Jpeg => "JPEG",
        image::ImageFormat::WebP => "WebP",
        image::ImageFormat::Gif => "GIF",
        image::ImageFormat::Bmp => "BMP",
        image::ImageFormat::Tiff => "TIFF",
        _ => "an unsupported format",
    }
}

/// Whether `ext` (without the dot, any case) names a supported image file.
pub fn is_image_extension(ext: &str) -> bool {
    matches!(
        ext.to_ascii_lowercase().as_str(),
        "png" | "jpg" | "jpeg" | "webp"
    )
}

/// Decodes `bytes` (PNG, JPEG or WebP, detected from the content) to RGB. `path` is only used
/// in messages.
pub fn decode_image(bytes: &[u8], path: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let err = |msg: String| Error::input(path, None, msg);
    if bytes.is_empty() {
        return Err(err(
            "zero-byte file; expected a PNG, JPEG or WebP image".into()
        ));
    }
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(err(format!(
            "{} bytes; image files larger than {} bytes are refused",
            bytes.len(),
            limits.max_file_bytes
        )));
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let Some(format) = reader.format() else {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(err(format!(
            "not a PNG, JPEG or WebP image (starts with bytes {})",
            head.join(" ")
        )));
    };
    let name = format_name(format);
    if !matches!(
        format,
        image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP
    ) {
        return Err(err(format!(
            "is {name}; only PNG, JPEG and WebP are supported"
        )));
    }
    let outcome = std::panic::catch_unwind(|| -> std::result::Result<image::RgbImage, String> {
        let (w, h) = image::ImageReader::with_format(Cursor::new(bytes), format)
            .into_dimensions()
            .map_err(|e| format!("corrupt or truncated {name} header: {e}"))?;
        if w == 0 || h == 0 {
            return Err(format!(
                "{name} header says {w} × {h} pixels; the image is empty"
            ));
        }
        if w > limits.max_side
            || h > limits.max_side
            || u64::from(w) * u64::from(h) > limits.max_pixels
        {
            return Err(format!(
                "{name} header says {w} × {h} pixels; at most {} per side and {} pixels are accepted",
                limits.max_side, limits.max_pixels
            ));
        }
        let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
        let mut l = image::Limits::default();
        l.max_image_width = Some(limits.max_side);
        l.max_image_height = Some(limits.max_side);
        l.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(1 << 20));
        reader.limits(l);
        let decoded = reader
            .decode()
            .map_err(|e| format!("corrupt or truncated {name} data: {e}"))?;
        Ok(decoded.into_rgb8())
    });
    let rgb = match outcome {
        Ok(Ok(rgb)) => rgb,
        Ok(Err(msg)) => return Err(err(msg)),
        Err(_) => return Err(err(format!("the {name} decoder failed on this file"))),
    };
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Ok(RgbImage {
        width,
        height,
        data: rgb.into_raw(),
    })
}

/// Reads and decodes the image file at `path`.
pub fn read_image(path: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::input(path, None, "is not a regular file"));
    }
    if meta.len() > limits.max_file_bytes {
        return Err(Error::input(
            path,
            None,
            format!(
                "{} bytes; image files larger than {} bytes are refused",
                meta.len(),
                limits.max_file_bytes
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, path, limits)
}

/// Encodes `im` as PNG (for fixtures, contact sheets and round trips).
pub fn encode_png(im: &RgbImage) -> Result<Vec<u8>> {
    let buf = image::RgbImage::from_raw(im.width as u32, im.height as u32, im.data.clone())
        .ok_or_else(|| {
            Error::Data(format!(
                "{} × {} image with wrong buffer size",
                im.width, im.height
            ))
        })?;
    let mut out = Vec::new();
    buf.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| Error::Data(format!("cannot encode PNG: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_and_truncation() {
        let mut im = RgbImage::new(5, 3);
        im.set_pixel(4, 2, [9, 8, 7]);
        let png = encode_png(&im).unwrap();
        let p = Path::new("x.png");
        assert_eq!(decode_image(&png, p, &DecodeLimits::default()).unwrap(), im);
        let e = decode_image(&png[..png.len() / 2], p, &DecodeLimits::default()).unwrap_err();
        assert!(
            e.to_string().starts_with("x.png: corrupt or truncated PNG"),
            "{e}"
        );
        let small = DecodeLimits {
            max_side: 4,
            ..DecodeLimits::default()
        };
        let e = decode_image(&png, p, &small).unwrap_err().to_string();
        assert!(e.contains("5 × 3 pixels"), "{e}");
    }
}

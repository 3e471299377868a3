//! A minimal owned RGB image, so that data stays plain and `Send` without an image library.

/// An 8-bit RGB image, row-major, interleaved (`[r, g, b, r, g, b, …]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// A black image.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    /// The pixel at `(x, y)`.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Sets the pixel at `(x, y)`.
    pub fn set_pixel(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        let i = (y * self.width + x) * 3;
        self.data[i..i + 3].copy_from_slice(&rgb);
    }

    /// Appends the image to `out` as planar `C × H × W` floats, `(v / 255 − mean[c]) / std[c]`.
    pub fn extend_chw_normalised(&self, mean: [f32; 3], std: [f32; 3], out: &mut Vec<f32>) {
        let n = self.width * self.height;
        out.reserve(3 * n);
        for c in 0..3 {
            let (m, s) = (mean[c], std[c]);
            out.extend(
                self.data[c..]
                    .iter()
                    .step_by(3)
                    .take(n)
                    .map(|&v| (f32::from(v) / 255.0 - m) / s),
            );
        }
    }
}

/// Per-channel mean used to normalise images (OpenAI CLIP's constants).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// Per-channel standard deviation used to normalise images (OpenAI CLIP's constants).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_layout_and_normalisation() {
        let mut im = RgbImage::new(2, 1);
        im.set_pixel(0, 0, [255, 0, 0]);
        im.set_pixel(1, 0, [0, 255, 51]);
        let mut out = Vec::new();
        im.extend_chw_normalised([0.0; 3], [1.0; 3], &mut out);
        assert_eq!(out, vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.2]);
        assert_eq!(im.pixel(1, 0), [0, 255, 51]);
    }
}

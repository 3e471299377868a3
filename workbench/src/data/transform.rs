//! Image transforms: resize, centre crop, random-resized crop and horizontal flip.
//!
//! The evaluation pipeline is CLIP's: resize so the shorter side is the model's size, then cut
//! the centre square ([`resize_and_center_crop`]). The training pipeline adds a random-resized
//! crop (a random area share and aspect ratio, resized to the model's size) and a horizontal
//! flip, drawn from the project's seeded [`Rng`], so the same seed gives the same crops.
//! Normalisation with CLIP's mean and standard deviation happens when images become a tensor
//! ([`crate::data::batch::images_tensor`]).

use crate::data::RgbImage;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Resizes `im` to `width × height` with a triangle (bilinear) filter whose support widens when
/// shrinking, so downscaled images do not alias.
pub fn resize(im: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (width, height) = (width.max(1), height.max(1));
    if (im.width, im.height) == (width, height) {
        return im.clone();
    }
    let Some(buf) = image::RgbImage::from_raw(im.width as u32, im.height as u32, im.data.clone())
    else {
        return RgbImage::new(width, height);
    };
    let out = image::imageops::resize(
        &buf,
        width as u32,
        height as u32,
        image::imageops::FilterType::Triangle,
    );
    RgbImage {
        width,
        height,
        data: out.into_raw(),
    }
}

/// The `width × height` window of `im` whose top-left corner is `(x, y)`, clipped to the image.
pub fn crop(im: &RgbImage, x: usize, y: usize, width: usize, height: usize) -> RgbImage {
    let x = x.min(im.width);
    let y = y.min(im.height);
    let width = width.min(im.width - x);
    let height = height.min(im.height - y);
    let mut data = Vec::with_capacity(width * height * 3);
    for row in y..y + height {
        let start = (row * im.width + x) * 3;
        data.extend_from_slice(&im.data[start..start + width * 3]);
    }
    RgbImage {
        width,
        height,
        data,
    }
}

/// The centred `width × height` window of `im` (clipped to the image).
pub fn center_crop(im: &RgbImage, width: usize, height: usize) -> RgbImage {
    let x = im.width.saturating_sub(width) / 2;
    let y = im.height.saturating_sub(height) / 2;
    crop(im, x, y, width, height)
}

/// CLIP's evaluation transform: shorter side to `size`, then the centre `size × size` square.
pub fn resize_and_center_crop(im: &RgbImage, size: usize) -> RgbImage {
    let short = im.width.min(im.height).max(1);
    let w = (im.width * size).div_ceil(short).max(size);
    let h = (im.height * size).div_ceil(short).max(size);
    center_crop(&resize(im, w, h), size, size)
}

/// Mirrors `im` left to right.
pub fn hflip(im: &RgbImage) -> RgbImage {
    let mut out = im.clone();
    for y in 0..im.height {
        for x in 0..im.width {
            out.set_pixel(x, y, im.pixel(im.width - 1 - x, y));
        }
    }
    out
}

/// Random-resized-crop settings (Inception / CLIP training style).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomCrop {
    /// Range of the crop's area as a share of the image's, e.g. `[0.9, 1.0]`.
    pub scale: [f64; 2],
    /// Range of the crop's aspect ratio (width / height), drawn log-uniformly.
    pub ratio: [f64; 2],
    /// Probability of a horizontal flip.
    pub flip: f64,
}

impl Default for RandomCrop {
    fn default() -> Self {
        Self {
            scale: [0.9, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip: 0.0,
        }
    }
}

/// A random crop of `im` with area share in `crop.scale` and aspect ratio in `crop.ratio`,
/// resized to `size × size`, flipped with probability `crop.flip`. After ten draws that do not
/// fit the image it falls back to [`resize_and_center_crop`].
pub fn random_resized_crop(
    im: &RgbImage,
    size: usize,
    crop: &RandomCrop,
    rng: &mut Rng,
) -> RgbImage {
    let area = (im.width * im.height) as f64;
    let (lo, hi) = (crop.ratio[0].max(1e-3).ln(), crop.ratio[1].max(1e-3).ln());
    let mut out = None;
    for _ in 0..10 {
        let target = area * rng.range(crop.scale[0], crop.scale[1].max(crop.scale[0]));
        let ratio = rng.range(lo, hi.max(lo)).exp();
        let w = (target * ratio).sqrt().round() as usize;
        let h = (target / ratio).sqrt().round() as usize;
        if w >= 1 && h >= 1 && w <= im.width && h <= im.height {
            let x = rng.below(im.width - w + 1);
            let y = rng.below(im.height - h + 1);
            out = Some(resize(&self::crop(im, x, y, w, h), size, size));
            break;
        }
    }
    let out = out.unwrap_or_else(|| resize_and_center_crop(im, size));
    if crop.flip > 0.0 && rng.bernoulli(crop.flip) {
        hflip(&out)
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let mut im = RgbImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                im.set_pixel(x, y, [(x * 10) as u8, (y * 10) as u8, 0]);
            }
        }
        im
    }

    #[test]
    fn shapes_of_every_transform() {
        let im = gradient(20, 10);
        let c = resize_and_center_crop(&im, 8);
        assert_eq!((c.width, c.height), (8, 8));
        let cc = center_crop(&im, 4, 4);
        assert_eq!(cc.pixel(0, 0), im.pixel(8, 3));
        let f = hflip(&im);
        assert_eq!(f.pixel(0, 0), im.pixel(19, 0));
        let crop = RandomCrop {
            flip: 0.5,
            ..RandomCrop::default()
        };
        let a = random_resized_crop(&im, 6, &crop, &mut Rng::new(3));
        let b = random_resized_crop(&im, 6, &crop, &mut Rng::new(3));
        assert_eq!((a.width, a.height), (6, 6));
        assert_eq!(a, b);
        let tiny = RandomCrop {
            scale: [5.0, 6.0],
            ..RandomCrop::default()
        };
        let fb = random_resized_crop(&im, 6, &tiny, &mut Rng::new(1));
        assert_eq!(fb, resize_and_center_crop(&im, 6));
    }
}

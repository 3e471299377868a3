//! Rasterising a scene: anti-aliased shapes (4×4 supersampling) over a lightly noisy background.

use super::scene::{Placed, Scene};
use crate::data::RgbImage;
use crate::rng::Rng;

/// The shapes the generator can draw, in palette order.
pub const SHAPE_NAMES: [&str; 8] = [
    "circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon",
];

/// The colours the generator can paint, in palette order.
pub const COLOUR_NAMES: [&str; 8] = [
    "red", "green", "blue", "yellow", "purple", "cyan", "orange", "white",
];

/// sRGB value of each colour in [`COLOUR_NAMES`], chosen to stay apart under the jitter below.
const COLOUR_RGB: [[u8; 3]; 8] = [
    [225, 45, 45],
    [45, 185, 65],
    [55, 95, 240],
    [235, 215, 45],
    [165, 75, 215],
    [45, 205, 215],
    [250, 135, 25],
    [235, 235, 235],
];

/// Whether the point `(u, v)` — coordinates relative to the object's box, both in `[-1, 1]`,
/// `v` pointing down — lies inside shape `shape` (an index into [`SHAPE_NAMES`]).
pub fn inside(shape: usize, u: f32, v: f32) -> bool {
    let (au, av) = (u.abs(), v.abs());
    match SHAPE_NAMES[shape] {
        "circle" => u * u + v * v <= 1.0,
        "square" => au.max(av) <= 0.82,
        // Apex up at v = -0.9, base at v = 0.85.
        "triangle" => (-0.9..=0.85).contains(&v) && au <= (v + 0.9) / 1.75 * 0.98,
        "diamond" => au + av <= 1.0,
        "cross" => (au <= 0.3 && av <= 0.95) || (av <= 0.3 && au <= 0.95),
        "ring" => {
            let r2 = u * u + v * v;
            (0.25..=1.0).contains(&r2)
        }
        "star" => inside_star(u, v),
        "hexagon" => {
            let s3 = 3f32.sqrt();
            av <= 0.5 * s3 && s3 * au + av <= s3
        }
        _ => false,
    }
}

/// Five-pointed star, outer radius 1, inner radius 0.45, one point straight up.
fn inside_star(u: f32, v: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    if r > 1.0 {
        return false;
    }
    if r < 0.38 {
        return true;
    }
    // Angle measured from "up", folded into one of the 10 half-sectors of the star.
    let a = u.atan2(-v).rem_euclid(std::f32::consts::TAU);
    let sector = std::f32::consts::TAU / 10.0;
    let k = (a / sector).floor();
    let t = a - k * sector;
    // Within a half-sector the edge runs from a tip (radius 1) to a notch (radius 0.45).
    let (r0, r1, t) = if (k as i32) % 2 == 0 {
        (1.0f32, 0.45f32, t)
    } else {
        (0.45f32, 1.0f32, t)
    };
    // Edge between the polar points (r0, 0) and (r1, sector): inside if on the origin side.
    let (x0, y0) = (r0, 0.0);
    let (x1, y1) = (r1 * sector.cos(), r1 * sector.sin());
    let (px, py) = (r * t.cos(), r * t.sin());
    let cross = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0);
    let origin_cross = (x1 - x0) * (-y0) - (y1 - y0) * (-x0);
    cross * origin_cross >= 0.0
}

/// Samples per pixel side for anti-aliasing.
const SUPER: usize = 4;

/// Draws `scene` and returns the image and each object's pixel mask (coverage ≥ 0.5).
pub fn render(scene: &Scene, size: usize, noise: f32, rng: &mut Rng) -> (RgbImage, Vec<Vec<bool>>) {
    let mut im = RgbImage::new(size, size);
    let base = scene.background as f32;
    for px in im.data.chunks_exact_mut(3) {
        let g = (base + rng.normal() as f32 * noise * 255.0).clamp(0.0, 255.0) as u8;
        px.copy_from_slice(&[g, g, g]);
    }
    let masks = scene
        .objects
        .iter()
        .map(|o| draw_object(&mut im, o, rng))
        .collect();
    (im, masks)
}

fn draw_object(im: &mut RgbImage, o: &Placed, rng: &mut Rng) -> Vec<bool> {
    let size = im.width;
    let mut mask = vec![false; size * size];
    let base = COLOUR_RGB[o.colour];
    // Slight per-object colour jitter so colour is a category, not one exact value.
    let rgb: [f32; 3] = std::array::from_fn(|c| {
        (f32::from(base[c]) + rng.range(-12.0, 12.0) as f32).clamp(0.0, 255.0)
    });
    let half = o.diameter as f32 / 2.0;
    let [x0, y0, x1, y1] = o.bbox();
    for y in y0..y1 {
        for x in x0..x1 {
            let mut hits = 0;
            for sy in 0..SUPER {
                for sx in 0..SUPER {
                    let fx = x as f32 + (sx as f32 + 0.5) / SUPER as f32;
                    let fy = y as f32 + (sy as f32 + 0.5) / SUPER as f32;
                    let u = (fx - o.cx) / half;
                    let v = (fy - o.cy) / half;
                    if inside(o.shape, u, v) {
                        hits += 1;
                    }
                }
            }
            if hits == 0 {
                continue;
            }
            let cov = hits as f32 / (SUPER * SUPER) as f32;
            mask[y * size + x] = cov >= 0.5;
            let old = im.pixel(x, y);
            let new: [u8; 3] = std::array::from_fn(|c| {
                (f32::from(old[c]) * (1.0 - cov) + rgb[c] * cov).round() as u8
            });
            im.set_pixel(x, y, new);
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Area of each shape on a fine grid, relative to the circle: every shape must cover a
    /// comparable area, or size words would be confounded with shape.
    #[test]
    fn shapes_have_comparable_areas_and_differ() {
        let n = 200;
        let grid = |s: usize| -> Vec<bool> {
            (0..n * n)
                .map(|i| {
                    let u = (i % n) as f32 / n as f32 * 2.0 - 1.0;
                    let v = (i / n) as f32 / n as f32 * 2.0 - 1.0;
                    inside(s, u, v)
                })
                .collect()
        };
        let masks: Vec<Vec<bool>> = (0..SHAPE_NAMES.len()).map(grid).collect();
        let area = |m: &Vec<bool>| m.iter().filter(|&&b| b).count() as f32 / (n * n) as f32;
        for (s, m) in masks.iter().enumerate() {
            let a = area(m);
            assert!((0.3..=0.8).contains(&a), "{} covers {a}", SHAPE_NAMES[s]);
        }
        for i in 0..masks.len() {
            for j in i + 1..masks.len() {
                let diff = masks[i]
                    .iter()
                    .zip(&masks[j])
                    .filter(|(a, b)| a != b)
                    .count();
                assert!(
                    diff as f32 / (n * n) as f32 > 0.05,
                    "{} vs {}",
                    SHAPE_NAMES[i],
                    SHAPE_NAMES[j]
                );
            }
        }
    }
}

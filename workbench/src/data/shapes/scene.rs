//! Scenes (which objects, where) and their captions, before any pixel is drawn.

use super::render::{COLOUR_NAMES, SHAPE_NAMES};
use crate::data::{Caption, Mention};
use crate::rng::Rng;

/// One object placed in a scene. Palette indices refer to [`SHAPE_NAMES`] / [`COLOUR_NAMES`].
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    /// Index into [`SHAPE_NAMES`].
    pub shape: usize,
    /// Index into [`COLOUR_NAMES`].
    pub colour: usize,
    /// Large or small.
    pub large: bool,
    /// Side of the object's square box, pixels.
    pub diameter: usize,
    /// Centre, pixels (x to the right).
    pub cx: f32,
    /// Centre, pixels (y downwards).
    pub cy: f32,
}

impl Placed {
    /// `[x0, y0, x1, y1)` of the object's box in pixels.
    pub fn bbox(&self) -> [usize; 4] {
        let h = self.diameter as f32 / 2.0;
        [
            (self.cx - h).floor().max(0.0) as usize,
            (self.cy - h).floor().max(0.0) as usize,
            (self.cx + h).ceil() as usize,
            (self.cy + h).ceil() as usize,
        ]
    }

    /// "large red circle".
    pub fn description(&self) -> String {
        format!(
            "{} {} {}",
            if self.large { "large" } else { "small" },
            COLOUR_NAMES[self.colour],
            SHAPE_NAMES[self.shape]
        )
    }
}

/// A scene: objects sorted left to right, and the background grey level.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    /// Objects, sorted by centre x (then y).
    pub objects: Vec<Placed>,
    /// Background grey level, 0–255.
    pub background: u8,
}

/// What an object may be: allowed (colour, shape) palette pairs, and the sizes to draw.
pub struct ObjectSpace<'a> {
    /// Allowed `(colour, shape)` palette index pairs.
    pub pairs: &'a [(usize, usize)],
    /// Image side, pixels.
    pub image_size: usize,
    /// Diameter of a large object as a fraction of the image side.
    pub large: f32,
    /// Diameter of a small object as a fraction of the image side.
    pub small: f32,
}

impl ObjectSpace<'_> {
    fn diameter(&self, large: bool) -> usize {
        let f = if large { self.large } else { self.small };
        ((f * self.image_size as f32).round() as usize).max(3)
    }

    /// Places up to `n` random objects without overlap (1 px gap). An object that finds no room
    /// after 64 tries is dropped, so crowded scenes hold fewer objects; captions follow the scene.
    pub fn sample_scene(&self, n: usize, rng: &mut Rng) -> Scene {
        let background = rng.range(20.0, 70.0) as u8;
        let mut objects: Vec<Placed> = Vec::with_capacity(n);
        for _ in 0..n {
            let (colour, shape) = self.pairs[rng.below(self.pairs.len())];
            let large = rng.bernoulli(0.5);
            if let Some(o) = self.place(shape, colour, large, &objects, rng) {
                objects.push(o);
            }
        }
        objects.sort_by(|a, b| a.cx.total_cmp(&b.cx).then(a.cy.total_cmp(&b.cy)));
        Scene {
            objects,
            background,
        }
    }

    /// One object of the given kind at a random free position.
    pub fn place(
        &self,
        shape: usize,
        colour: usize,
        large: bool,
        others: &[Placed],
        rng: &mut Rng,
    ) -> Option<Placed> {
        let d = self.diameter(large);
        let room = self.image_size.checked_sub(d + 2)?;
        for _ in 0..64 {
            let x0 = 1 + rng.below(room + 1);
            let y0 = 1 + rng.below(room + 1);
            let cand = Placed {
                shape,
                colour,
                large,
                diameter: d,
                cx: x0 as f32 + d as f32 / 2.0,
                cy: y0 as f32 + d as f32 / 2.0,
            };
            let [ax0, ay0, ax1, ay1] = cand.bbox();
            let free = others.iter().all(|o| {
                let [bx0, by0, bx1, by1] = o.bbox();
                ax1 < bx0 || bx1 < ax0 || ay1 < by0 || by1 < ay0
            });
            if free {
                return Some(cand);
            }
        }
        None
    }
}

/// Where `a` lies relative to `b`, along the axis of larger separation.
pub fn relation(a: &Placed, b: &Placed) -> &'static str {
    let (dx, dy) = (b.cx - a.cx, b.cy - a.cy);
    if dx.abs() >= dy.abs() {
        if dx > 0.0 { "left of" } else { "right of" }
    } else if dy > 0.0 {
        "above"
    } else {
        "below"
    }
}

/// Caption templates per object count. `{0}`, `{1}`, `{2}` are objects in left-to-right order;
/// `{r01}` is the relation of object 0 to object 1, `{r10}` the reverse.
pub const TEMPLATES: [&[&str]; 3] = [
    &[
        "a {0}",
        "there is a {0}",
        "a picture of a {0}",
        "a single {0}",
        "one {0} on a dark background",
    ],
    &[
        "a {0} {r01} a {1}",
        "a {1} {r10} a {0}",
        "a {0} and a {1}",
        "two shapes: a {0} and a {1}",
        "a picture of a {0} and a {1}",
    ],
    &[
        "a {0}, a {1} and a {2}",
        "from left to right: a {0}, a {1} and a {2}",
        "three shapes: a {0}, a {1} and a {2}",
        "a {1} between a {0} and a {2}",
        "a {0} {r01} a {1}, and a {2}",
    ],
];

/// Fills `template` for `scene`, recording which byte span names which object.
pub fn fill(template: &str, scene: &Scene) -> Caption {
    let objs = &scene.objects;
    let mut text = String::new();
    let mut mentions = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        text.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').unwrap_or(rest.len() - open - 1);
        let key = &rest[open + 1..close];
        match key {
            "r01" => text.push_str(relation(&objs[0], &objs[1])),
            "r10" => text.push_str(relation(&objs[1], &objs[0])),
            _ => {
                let object: usize = key.parse().unwrap_or(0);
                let start = text.len();
                text.push_str(&objs[object].description());
                mentions.push(Mention {
                    object,
                    start,
                    end: text.len(),
                });
            }
        }
        rest = &rest[(close + 1).min(rest.len())..];
    }
    text.push_str(rest);
    Caption { text, mentions }
}

/// `k` distinct paraphrases of `scene`, templates drawn without replacement.
pub fn captions(scene: &Scene, k: usize, rng: &mut Rng) -> Vec<Caption> {
    let n = scene.objects.len().clamp(1, TEMPLATES.len());
    let templates = TEMPLATES[n - 1];
    let mut order: Vec<usize> = (0..templates.len()).collect();
    rng.shuffle(&mut order);
    order
        .into_iter()
        .take(k)
        .map(|t| fill(templates[t], scene))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(shape: usize, colour: usize, cx: f32, cy: f32) -> Placed {
        Placed {
            shape,
            colour,
            large: true,
            diameter: 10,
            cx,
            cy,
        }
    }

    #[test]
    fn relations_follow_the_dominant_axis() {
        let a = obj(0, 0, 5.0, 5.0);
        assert_eq!(relation(&a, &obj(1, 1, 20.0, 8.0)), "left of");
        assert_eq!(relation(&a, &obj(1, 1, 1.0, 4.0)), "right of");
        assert_eq!(relation(&a, &obj(1, 1, 6.0, 20.0)), "above");
        assert_eq!(relation(&obj(1, 1, 6.0, 20.0), &a), "below");
    }

    #[test]
    fn fill_records_mentions_of_each_object() {
        let scene = Scene {
            objects: vec![obj(0, 0, 5.0, 5.0), obj(1, 2, 20.0, 6.0)],
            background: 30,
        };
        let c = fill("a {1} {r10} a {0}", &scene);
        assert_eq!(c.text, "a large blue square right of a large red circle");
        assert_eq!(c.mentions.len(), 2);
        assert_eq!(c.mentions[0].object, 1);
        assert_eq!(
            &c.text[c.mentions[0].start..c.mentions[0].end],
            "large blue square"
        );
        assert_eq!(
            &c.text[c.mentions[1].start..c.mentions[1].end],
            "large red circle"
        );
    }
}

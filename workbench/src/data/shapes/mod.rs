//! `shapes`: the embedded synthetic image–caption set. No files needed.
//!
//! Each image holds 1–3 objects drawn from shapes × colours × two sizes, at random non-overlapping
//! positions on a lightly noisy grey background. Captions come from templates with paraphrase
//! variety ("a large red circle left of a small blue square", "a small blue square right of a
//! large red circle", …); every sample keeps several paraphrases (like COCO's captions per image).
//!
//! Everything is a pure function of `(seed, split, index)`: the `i`-th image of a split is the
//! same on every machine and every run, and needs no storage. Ground truth comes with every
//! sample: per-object masks and boxes, and which caption words name which object.
//!
//! Zero-shot classification uses single-object images labelled colour × shape, with the
//! one-object caption templates (both sizes) as prompts. A compositional hold-out removes chosen
//! colour–shape pairs from the training split only, to test generalisation to unseen pairs.
//!
//! ```
//! use workbench::data::{PairDataset, Shapes, ShapesConfig, Split};
//! let shapes = Shapes::new(ShapesConfig::default()).unwrap();
//! let s = shapes.sample(Split::Val, 3).unwrap();
//! assert_eq!((s.image.width, s.image.height), (32, 32));
//! assert_eq!(s, shapes.sample(Split::Val, 3).unwrap()); // deterministic
//! ```

pub mod negatives;
pub mod render;
pub mod scene;

use crate::data::{Caption, ClassSet, ObjectTruth, PairDataset, Sample, SceneTruth, Split};
use crate::rng::Rng;
use crate::{Error, Result};
use render::{COLOUR_NAMES, SHAPE_NAMES};
use scene::{ObjectSpace, Scene, TEMPLATES};
use serde::{Deserialize, Serialize};

/// Configuration of the synthetic set (the `[data]` table of a run config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShapesConfig {
    /// Seed of the whole dataset (independent of the training seed).
    pub seed: u64,
    /// Image side in pixels, 16–128.
    pub image_size: usize,
    /// Colours in use (names from the palette: red, green, blue, yellow, purple, cyan, orange, white).
    pub colours: Vec<String>,
    /// Shapes in use (circle, square, triangle, diamond, cross, ring, star, hexagon).
    pub shapes: Vec<String>,
    /// Fewest objects per image.
    pub min_objects: usize,
    /// Most objects per image (at most 3).
    pub max_objects: usize,
    /// Diameter of a large object, as a fraction of the image side.
    pub large_size: f32,
    /// Diameter of a small object, as a fraction of the image side.
    pub small_size: f32,
    /// Standard deviation of the background noise, as a fraction of full scale.
    pub noise: f32,
    /// Paraphrases kept per image (1–5).
    pub captions_per_image: usize,
    /// Images in the training split.
    pub train_size: usize,
    /// Images in the validation split.
    pub val_size: usize,
    /// Images in the test split.
    pub test_size: usize,
    /// Single-object labelled images for zero-shot evaluation.
    pub zero_shot_size: usize,
    /// Colour–shape pairs never shown in training, e.g. `["red circle"]`.
    pub holdout: Vec<String>,
    /// Train on files instead (`[data.files]`); the synthetic set's settings other than
    /// `image_size` are then unused. See [`crate::data::source`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<crate::data::FilesConfig>,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            image_size: 32,
            colours: COLOUR_NAMES[..6].iter().map(ToString::to_string).collect(),
            shapes: SHAPE_NAMES[..6].iter().map(ToString::to_string).collect(),
            min_objects: 1,
            max_objects: 3,
            large_size: 0.45,
            small_size: 0.3,
            noise: 0.04,
            captions_per_image: 3,
            train_size: 100_000,
            val_size: 1_000,
            test_size: 1_000,
            zero_shot_size: 1_080,
            holdout: Vec::new(),
            files: None,
        }
    }
}

fn field(name: &str, msg: impl Into<String>) -> Error {
    Error::Config {
        field: format!("data.{name}"),
        msg: msg.into(),
    }
}

fn palette_index(palette: &[&str], name: &str, what: &str) -> Result<usize> {
    palette.iter().position(|p| *p == name).ok_or_else(|| {
        field(
            what,
            format!("unknown name {name:?}; expected one of {palette:?}"),
        )
    })
}

impl ShapesConfig {
    /// Checks every field; the error names the field and what was expected.
    pub fn validate(&self) -> Result<()> {
        if let Some(files) = &self.files {
            if !(8..=1024).contains(&self.image_size) {
                return Err(field(
                    "image_size",
                    format!("{} is outside 8..=1024", self.image_size),
                ));
            }
            return files.validate(self.image_size);
        }
        if !(16..=128).contains(&self.image_size) {
            return Err(field(
                "image_size",
                format!("{} is outside 16..=128", self.image_size),
            ));
        }
        if self.colours.is_empty() || self.shapes.is_empty() {
            return Err(field("colours", "need at least one colour and one shape"));
        }
        if !(1..=3).contains(&self.min_objects)
            || !(self.min_objects..=3).contains(&self.max_objects)
        {
            return Err(field(
                "max_objects",
                format!(
                    "need 1 <= min_objects <= max_objects <= 3, got {}..={}",
                    self.min_objects, self.max_objects
                ),
            ));
        }
        if !(0.1..=0.6).contains(&self.large_size)
            || !(0.1..=self.large_size).contains(&self.small_size)
        {
            return Err(field(
                "small_size",
                "need 0.1 <= small_size <= large_size <= 0.6 (fractions of the image side)",
            ));
        }
        if (self.small_size * self.image_size as f32) < 6.0 {
            return Err(field(
                "small_size",
                format!(
                    "small objects would be {:.1} px wide at image_size {}: shapes under 6 px cannot be told apart",
                    self.small_size * self.image_size as f32,
                    self.image_size
                ),
            ));
        }
        if !(0.0..=0.5).contains(&self.noise) {
            return Err(field("noise", format!("{} is outside 0..=0.5", self.noise)));
        }
        if !(1..=5).contains(&self.captions_per_image) {
            return Err(field(
                "captions_per_image",
                format!("{} is outside 1..=5", self.captions_per_image),
            ));
        }
        for (name, n) in [("train_size", self.train_size), ("val_size", self.val_size)] {
            if n == 0 {
                return Err(field(name, "must be at least 1"));
            }
        }
        let pairs = self.pairs()?;
        if pairs.0.is_empty() {
            return Err(field("holdout", "holds out every colour–shape pair"));
        }
        Ok(())
    }

    /// (pairs allowed in training, all pairs), as palette indices `(colour, shape)`.
    fn pairs(&self) -> Result<(Vec<Pair>, Vec<Pair>)> {
        let colours = self
            .colours
            .iter()
            .map(|c| palette_index(&COLOUR_NAMES, c, "colours"))
            .collect::<Result<Vec<_>>>()?;
        let shapes = self
            .shapes
            .iter()
            .map(|s| palette_index(&SHAPE_NAMES, s, "shapes"))
            .collect::<Result<Vec<_>>>()?;
        let mut held = Vec::new();
        for h in &self.holdout {
            let mut words = h.split_whitespace();
            let (Some(c), Some(s), None) = (words.next(), words.next(), words.next()) else {
                return Err(field(
                    "holdout",
                    format!("{h:?} is not \"<colour> <shape>\""),
                ));
            };
            let c = palette_index(&COLOUR_NAMES, c, "holdout")?;
            let s = palette_index(&SHAPE_NAMES, s, "holdout")?;
            if !colours.contains(&c) || !shapes.contains(&s) {
                return Err(field(
                    "holdout",
                    format!("{h:?} is not in colours × shapes"),
                ));
            }
            held.push((c, s));
        }
        let all: Vec<(usize, usize)> = colours
            .iter()
            .flat_map(|&c| shapes.iter().map(move |&s| (c, s)))
            .collect();
        let train = all.iter().copied().filter(|p| !held.contains(p)).collect();
        Ok((train, all))
    }
}

/// A `(colour, shape)` pair of palette indices.
type Pair = (usize, usize);

/// The synthetic dataset. Cheap to clone-free share: it holds only the configuration.
pub struct Shapes {
    cfg: ShapesConfig,
    train_pairs: Vec<Pair>,
    all_pairs: Vec<Pair>,
    held_out: Vec<usize>,
}

impl Shapes {
    /// Validates `cfg` and builds the dataset.
    pub fn new(cfg: ShapesConfig) -> Result<Self> {
        cfg.validate()?;
        let (train_pairs, all_pairs) = cfg.pairs()?;
        let held_out = all_pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| !train_pairs.contains(p))
            .map(|(i, _)| i)
            .collect();
        Ok(Self {
            cfg,
            train_pairs,
            all_pairs,
            held_out,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ShapesConfig {
        &self.cfg
    }

    fn space(&self, split: Split) -> ObjectSpace<'_> {
        ObjectSpace {
            pairs: if split == Split::Train {
                &self.train_pairs
            } else {
                &self.all_pairs
            },
            image_size: self.cfg.image_size,
            large: self.cfg.large_size,
            small: self.cfg.small_size,
        }
    }

    /// The scene of image `index` of `split`, without drawing it (cheap).
    pub fn scene(&self, split: Split, index: usize) -> (Scene, Rng) {
        let mut rng = Rng::derive(
            self.cfg.seed,
            &format!("shapes/{}", split.name()),
            index as u64,
        );
        let span = self.cfg.max_objects - self.cfg.min_objects + 1;
        let n = self.cfg.min_objects + rng.below(span);
        (self.space(split).sample_scene(n, &mut rng), rng)
    }

    fn finish(&self, scene: &Scene, mut rng: Rng, label: Option<usize>) -> Sample {
        let captions = scene::captions(scene, self.cfg.captions_per_image, &mut rng);
        let (image, masks) = render::render(scene, self.cfg.image_size, self.cfg.noise, &mut rng);
        let objects = scene
            .objects
            .iter()
            .zip(masks)
            .map(|(o, mask)| ObjectTruth {
                shape: SHAPE_NAMES[o.shape].to_string(),
                colour: COLOUR_NAMES[o.colour].to_string(),
                size: if o.large { "large" } else { "small" }.to_string(),
                bbox: o.bbox(),
                mask,
            })
            .collect();
        let label = label.or_else(|| match scene.objects.as_slice() {
            [o] => self
                .all_pairs
                .iter()
                .position(|&p| p == (o.colour, o.shape)),
            _ => None,
        });
        let n = scene.objects.len().clamp(1, TEMPLATES.len());
        let canonical = scene::fill(TEMPLATES[n - 1][0], scene).text;
        Sample {
            image,
            captions,
            label,
            truth: Some(SceneTruth { objects }),
            group: Some(crate::rng::hash_str(&canonical)),
        }
    }
}

impl PairDataset for Shapes {
    fn name(&self) -> &'static str {
        "shapes"
    }

    fn image_size(&self) -> usize {
        self.cfg.image_size
    }

    fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.cfg.train_size,
            Split::Val => self.cfg.val_size,
            Split::Test => self.cfg.test_size,
        }
    }

    fn sample(&self, split: Split, index: usize) -> Result<Sample> {
        if index >= self.len(split) {
            return Err(Error::Data(format!(
                "shapes: index {index} is out of range for the {split} split of {} images",
                self.len(split)
            )));
        }
        let (scene, rng) = self.scene(split, index);
        Ok(self.finish(&scene, rng, None))
    }

    fn hard_negatives(
        &self,
        sample: &Sample,
        caption: &Caption,
        k: usize,
        rng: &mut Rng,
    ) -> Result<Vec<String>> {
        let truth = sample
            .truth
            .as_ref()
            .ok_or_else(|| Error::Data("shapes: sample without ground truth".into()))?;
        negatives::generate(truth, caption, k, rng)
    }

    fn corpus(&self) -> Vec<String> {
        // Every prompt, plus the captions of enough training scenes to use every template.
        let mut texts: Vec<String> = self
            .classes()
            .into_iter()
            .flat_map(|c| c.prompts)
            .flatten()
            .flatten()
            .collect();
        let n = self.cfg.train_size.min(2_000);
        for i in 0..n {
            let (scene, mut rng) = self.scene(Split::Train, i);
            let k = TEMPLATES[scene.objects.len().clamp(1, 3) - 1].len();
            texts.extend(
                scene::captions(&scene, k, &mut rng)
                    .into_iter()
                    .map(|c| c.text),
            );
        }
        texts
    }

    fn classes(&self) -> Option<ClassSet> {
        let names = self
            .all_pairs
            .iter()
            .map(|&(c, s)| format!("{} {}", COLOUR_NAMES[c], SHAPE_NAMES[s]))
            .collect();
        let prompts = self
            .all_pairs
            .iter()
            .map(|&(c, s)| {
                let mut variants = Vec::new();
                for large in [false, true] {
                    let o = scene::Placed {
                        shape: s,
                        colour: c,
                        large,
                        diameter: 1,
                        cx: 0.0,
                        cy: 0.0,
                    };
                    let one = Scene {
                        objects: vec![o],
                        background: 0,
                    };
                    variants.push(
                        TEMPLATES[0]
                            .iter()
                            .map(|t| scene::fill(t, &one).text)
                            .collect(),
                    );
                }
                variants
            })
            .collect();
        Some(ClassSet {
            names,
            prompts,
            held_out: self.held_out.clone(),
        })
    }

    fn zero_shot_len(&self) -> usize {
        self.cfg.zero_shot_size
    }

    fn zero_shot_sample(&self, index: usize) -> Result<Sample> {
        if index >= self.cfg.zero_shot_size {
            return Err(Error::Data(format!(
                "shapes: zero-shot index {index} is out of range ({} images)",
                self.cfg.zero_shot_size
            )));
        }
        let mut rng = Rng::derive(self.cfg.seed, "shapes/zero-shot", index as u64);
        let label = index % self.all_pairs.len();
        let (colour, shape) = self.all_pairs[label];
        let space = self.space(Split::Val);
        let large = rng.bernoulli(0.5);
        let background = rng.range(20.0, 70.0) as u8;
        let objects = space
            .place(shape, colour, large, &[], &mut rng)
            .into_iter()
            .collect();
        let scene = Scene {
            objects,
            background,
        };
        Ok(self.finish(&scene, rng, Some(label)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_pairs_never_appear_in_training() {
        let cfg = ShapesConfig {
            holdout: vec!["red circle".into()],
            ..ShapesConfig::default()
        };
        let shapes = Shapes::new(cfg).unwrap();
        for i in 0..500 {
            let (scene, _) = shapes.scene(Split::Train, i);
            assert!(scene.objects.iter().all(|o| (o.colour, o.shape) != (0, 0)));
        }
        let classes = shapes.classes().unwrap();
        assert_eq!(classes.held_out, vec![0]);
        assert_eq!(classes.names[0], "red circle");
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |cfg: ShapesConfig| Shapes::new(cfg).err().unwrap().to_string();
        let e = bad(ShapesConfig {
            image_size: 8,
            ..ShapesConfig::default()
        });
        assert!(e.contains("data.image_size"), "{e}");
        let e = bad(ShapesConfig {
            colours: vec!["mauve".into()],
            ..ShapesConfig::default()
        });
        assert!(e.contains("data.colours") && e.contains("mauve"), "{e}");
        let e = bad(ShapesConfig {
            holdout: vec!["red".into()],
            ..ShapesConfig::default()
        });
        assert!(e.contains("data.holdout"), "{e}");
    }

    #[test]
    fn zero_shot_images_are_single_labelled_objects() {
        let shapes = Shapes::new(ShapesConfig::default()).unwrap();
        let classes = shapes.classes().unwrap();
        assert_eq!(classes.names.len(), 36);
        for i in 0..72 {
            let s = shapes.zero_shot_sample(i).unwrap();
            let truth = s.truth.unwrap();
            assert_eq!(truth.objects.len(), 1);
            let o = &truth.objects[0];
            assert_eq!(
                classes.names[s.label.unwrap()],
                format!("{} {}", o.colour, o.shape)
            );
        }
    }
}

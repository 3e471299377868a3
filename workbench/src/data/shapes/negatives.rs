//! Rule-made hard-negative captions for the synthetic set.
//!
//! SVLC (Doveh et al., 2023) and Structure-CLIP (Huang et al., 2024) teach structure by
//! contrasting a caption with near-misses made by rule. From a true caption and the scene's ground
//! truth, each negative changes exactly one thing:
//!
//! - **colour** / **shape** / **size** of one named object ("large red circle" → "large green
//!   circle");
//! - **binding**: two objects of different colours swap them ("red circle and blue square" →
//!   "blue circle and red square" — the same words, bound wrongly);
//! - **relation**: "left of" ↔ "right of", "above" ↔ "below".
//!
//! Each negative picks a kind uniformly among those the caption allows, then an instance. None
//! of them is true of the scene: an attribute change alters the set of objects described, a
//! binding swap needs two different colours, and a relation flip is only made when the objects'
//! descriptions differ (two identical objects would make the flipped caption true too).

use super::render::{COLOUR_NAMES, SHAPE_NAMES};
use crate::data::{Caption, ObjectTruth, SceneTruth};
use crate::rng::Rng;
use crate::{Error, Result};

const RELATIONS: [(&str, &str); 4] = [
    ("left of", "right of"),
    ("right of", "left of"),
    ("above", "below"),
    ("below", "above"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Colour,
    Shape,
    Size,
    Binding,
    Relation,
}

/// The caption with mention `i` described as `descriptions[i]`.
fn rewrite(caption: &Caption, descriptions: &[String]) -> String {
    let mut order: Vec<usize> = (0..caption.mentions.len()).collect();
    order.sort_by_key(|&i| caption.mentions[i].start);
    let mut out = String::new();
    let mut at = 0;
    for i in order {
        let m = &caption.mentions[i];
        out.push_str(&caption.text[at..m.start]);
        out.push_str(&descriptions[i]);
        at = m.end;
    }
    out.push_str(&caption.text[at..]);
    out
}

fn other<'a>(words: &[&'a str], not: &str, rng: &mut Rng) -> &'a str {
    let choices: Vec<&str> = words.iter().copied().filter(|w| *w != not).collect();
    choices[rng.below(choices.len())]
}

/// `k` hard negatives of `caption` (whose mentions refer to `truth.objects`).
pub fn generate(
    truth: &SceneTruth,
    caption: &Caption,
    k: usize,
    rng: &mut Rng,
) -> Result<Vec<String>> {
    let objects: Vec<&ObjectTruth> = caption
        .mentions
        .iter()
        .map(|m| {
            truth.objects.get(m.object).ok_or_else(|| {
                Error::Data(format!(
                    "caption {:?} mentions object {} of a scene with {}",
                    caption.text,
                    m.object,
                    truth.objects.len()
                ))
            })
        })
        .collect::<Result<_>>()?;
    if objects.is_empty() {
        return Err(Error::Data(format!(
            "caption {:?} names no object; cannot make hard negatives",
            caption.text
        )));
    }
    let descriptions: Vec<String> = objects.iter().map(|o| o.description()).collect();
    let colour_pairs: Vec<(usize, usize)> = (0..objects.len())
        .flat_map(|a| (a + 1..objects.len()).map(move |b| (a, b)))
        .filter(|&(a, b)| objects[a].colour != objects[b].colour)
        .collect();
    let distinct = (0..descriptions.len())
        .all(|a| (a + 1..descriptions.len()).all(|b| descriptions[a] != descriptions[b]));
    let relation = RELATIONS
        .iter()
        .find_map(|&(from, to)| caption.text.find(from).map(|at| (at, from, to)))
        .filter(|_| distinct);
    let mut kinds = vec![Kind::Colour, Kind::Shape, Kind::Size];
    if !colour_pairs.is_empty() {
        kinds.push(Kind::Binding);
    }
    if relation.is_some() {
        kinds.push(Kind::Relation);
    }
    let mut out = Vec::with_capacity(k);
    for _ in 0..k {
        let kind = kinds[rng.below(kinds.len())];
        let mut d = descriptions.clone();
        let i = rng.below(objects.len());
        let o = objects[i];
        let text = match kind {
            Kind::Colour => {
                let c = other(&COLOUR_NAMES, &o.colour, rng);
                d[i] = format!("{} {c} {}", o.size, o.shape);
                rewrite(caption, &d)
            }
            Kind::Shape => {
                let s = other(&SHAPE_NAMES, &o.shape, rng);
                d[i] = format!("{} {} {s}", o.size, o.colour);
                rewrite(caption, &d)
            }
            Kind::Size => {
                let size = if o.size == "large" { "small" } else { "large" };
                d[i] = format!("{size} {} {}", o.colour, o.shape);
                rewrite(caption, &d)
            }
            Kind::Binding => {
                let (a, b) = colour_pairs[rng.below(colour_pairs.len())];
                let (oa, ob) = (objects[a], objects[b]);
                d[a] = format!("{} {} {}", oa.size, ob.colour, oa.shape);
                d[b] = format!("{} {} {}", ob.size, oa.colour, ob.shape);
                rewrite(caption, &d)
            }
            Kind::Relation => {
                let Some((at, from, to)) = relation else {
                    unreachable!("relation kind is only offered when the caption has one")
                };
                format!(
                    "{}{to}{}",
                    &caption.text[..at],
                    &caption.text[at + from.len()..]
                )
            }
        };
        out.push(text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Mention;

    fn object(size: &str, colour: &str, shape: &str) -> ObjectTruth {
        ObjectTruth {
            shape: shape.into(),
            colour: colour.into(),
            size: size.into(),
            bbox: [0, 0, 1, 1],
            mask: vec![true],
        }
    }

    fn two_object_caption() -> (SceneTruth, Caption) {
        let truth = SceneTruth {
            objects: vec![
                object("large", "red", "circle"),
                object("small", "blue", "square"),
            ],
        };
        let text = "a large red circle left of a small blue square".to_string();
        let caption = Caption {
            mentions: vec![
                Mention {
                    object: 0,
                    start: 2,
                    end: 18,
                },
                Mention {
                    object: 1,
                    start: 29,
                    end: 46,
                },
            ],
            text,
        };
        (truth, caption)
    }

    #[test]
    fn every_negative_changes_exactly_one_thing() {
        let (truth, caption) = two_object_caption();
        let negs = generate(&truth, &caption, 400, &mut Rng::new(3)).unwrap();
        let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        let orig = words(&caption.text);
        let mut seen_binding = false;
        let mut seen_relation = false;
        for n in &negs {
            assert_ne!(n, &caption.text);
            if n.contains("right of") {
                assert_eq!(n, "a large red circle right of a small blue square");
                seen_relation = true;
                continue;
            }
            let w = words(n);
            assert_eq!(w.len(), orig.len(), "{n}");
            let diff: Vec<usize> = (0..w.len()).filter(|&i| w[i] != orig[i]).collect();
            match diff.as_slice() {
                [_] => {}
                [a, b] if w[*a] == orig[*b] && w[*b] == orig[*a] => seen_binding = true,
                _ => panic!("{n} changes {diff:?}"),
            }
        }
        assert!(seen_binding && seen_relation);
        assert!(negs.contains(&"a large blue circle left of a small red square".to_string()));
    }

    #[test]
    fn identical_objects_never_get_a_relation_flip() {
        let truth = SceneTruth {
            objects: vec![
                object("small", "red", "ring"),
                object("small", "red", "ring"),
            ],
        };
        let text = "a small red ring above a small red ring".to_string();
        let caption = Caption {
            mentions: vec![
                Mention {
                    object: 0,
                    start: 2,
                    end: 16,
                },
                Mention {
                    object: 1,
                    start: 25,
                    end: 39,
                },
            ],
            text,
        };
        for n in generate(&truth, &caption, 200, &mut Rng::new(1)).unwrap() {
            assert!(n.contains("above"), "{n}");
            assert_ne!(n, caption.text);
        }
    }

    #[test]
    fn a_caption_without_mentions_is_an_error() {
        let caption = Caption {
            text: "a picture".into(),
            mentions: vec![],
        };
        let truth = SceneTruth { objects: vec![] };
        assert!(generate(&truth, &caption, 1, &mut Rng::new(0)).is_err());
    }
}

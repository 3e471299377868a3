//! COCO-captions annotation files (`captions_train2017.json` and the like).
//!
//! The file is one JSON object with an `images` array (each with an integer `id` and a string
//! `file_name`) and an `annotations` array (each with an integer `image_id` and a string
//! `caption`); other keys are ignored:
//!
//! ```text
//! {"images": [{"id": 1, "file_name": "000001.jpg"}],
//!  "annotations": [{"image_id": 1, "caption": "A cat on a mat."},
//!                  {"image_id": 1, "caption": "A sleeping cat."}]}
//! ```
//!
//! [`parse_coco`] works on bytes (no I/O). A file that is not JSON or lacks the two arrays is an
//! error; an entry with a missing or mistyped key, a duplicate image id, a caption for an image
//! id not in `images`, an empty caption, or an image without any caption is a bad sample,
//! handled by the [`BadSample`] policy. Messages name the entry, e.g. `annotations[7]`.

use crate::data::captions::{ImageCaptions, MAX_CAPTION_BYTES, kind};
use crate::data::policy::{BadSample, BadSampleReport};
use crate::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// One image of a COCO file with its captions; [`ImageCaptions::line`] holds the COCO image id.
pub type CocoImage = ImageCaptions;

fn field<'a>(entry: &'a Value, at: &str, key: &str) -> std::result::Result<&'a Value, String> {
    match entry {
        Value::Object(m) => m
            .get(key)
            .ok_or_else(|| format!("{at}: missing key `{key}`")),
        other => Err(format!("{at}: expected an object, found {}", kind(other))),
    }
}

fn id_field(entry: &Value, at: &str, key: &str) -> std::result::Result<u64, String> {
    let v = field(entry, at, key)?;
    v.as_u64().ok_or_else(|| {
        format!(
            "{at}: `{key}` must be a non-negative integer, found {}",
            kind(v)
        )
    })
}

fn str_field<'a>(entry: &'a Value, at: &str, key: &str) -> std::result::Result<&'a str, String> {
    let v = field(entry, at, key)?;
    v.as_str()
        .ok_or_else(|| format!("{at}: `{key}` must be a string, found {}", kind(v)))
}

// One pass over each array with the policy applied inline reads best as one function.
#[allow(clippy::too_many_lines)]
/// Parses a COCO-captions JSON file. Images come back in file order, each with its captions in
/// annotation order; images with no caption are bad samples. `path` is only used in messages.
pub fn parse_coco(
    text: &[u8],
    path: &Path,
    policy: BadSample,
    report: &mut BadSampleReport,
) -> Result<Vec<CocoImage>> {
    let root: Value = serde_json::from_slice(text).map_err(|e| {
        Error::input(
            path,
            (e.line() > 0).then_some(e.line()),
            format!("not a valid COCO JSON file: {e}"),
        )
    })?;
    let top = |key: &str| -> Result<&Vec<Value>> {
        match &root {
            Value::Object(m) => match m.get(key) {
                Some(Value::Array(a)) => Ok(a),
                Some(other) => Err(Error::input(
                    path,
                    None,
                    format!("`{key}` must be an array, found {}", kind(other)),
                )),
                None => Err(Error::input(
                    path,
                    None,
                    format!(
                        "missing key `{key}`; a COCO captions file has `images` and `annotations`"
                    ),
                )),
            },
            other => Err(Error::input(
                path,
                None,
                format!(
                    "expected a JSON object with `images` and `annotations`, found {}",
                    kind(other)
                ),
            )),
        }
    };
    let images = top("images")?;
    let annotations = top("annotations")?;
    let bad = |msg: String| Error::input(path, None, msg);
    let mut out: Vec<CocoImage> = Vec::with_capacity(images.len());
    let mut by_id: HashMap<u64, usize> = HashMap::with_capacity(images.len());
    for (i, entry) in images.iter().enumerate() {
        let at = format!("images[{i}]");
        let parsed = id_field(entry, &at, "id").and_then(|id| {
            let name = str_field(entry, &at, "file_name")?.trim();
            if name.is_empty() {
                return Err(format!("{at}: empty `file_name`"));
            }
            let p = Path::new(name);
            if p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(format!(
                    "{at}: `file_name` {name:?} must be relative to the images folder, without `..`"
                ));
            }
            if by_id.contains_key(&id) {
                return Err(format!("{at}: duplicate image id {id}"));
            }
            Ok((id, name.to_string()))
        });
        match parsed {
            Ok((id, name)) => {
                by_id.insert(id, out.len());
                out.push(ImageCaptions {
                    image: name,
                    captions: Vec::new(),
                    line: usize::try_from(id).unwrap_or(usize::MAX),
                });
            }
            Err(msg) => policy.handle(report, bad(msg))?,
        }
    }
    for (j, entry) in annotations.iter().enumerate() {
        let at = format!("annotations[{j}]");
        let parsed = id_field(entry, &at, "image_id").and_then(|id| {
            let caption = str_field(entry, &at, "caption")?.trim();
            if caption.is_empty() {
                return Err(format!("{at}: empty caption"));
            }
            if caption.len() > MAX_CAPTION_BYTES {
                return Err(format!(
                    "{at}: caption of {} bytes; at most {MAX_CAPTION_BYTES} are accepted",
                    caption.len()
                ));
            }
            let k = by_id
                .get(&id)
                .ok_or_else(|| format!("{at}: image_id {id} is not in `images`"))?;
            Ok((*k, caption.to_string()))
        });
        match parsed {
            Ok((k, caption)) => out[k].captions.push(caption),
            Err(msg) => policy.handle(report, bad(msg))?,
        }
    }
    let mut kept = Vec::with_capacity(out.len());
    for im in out {
        if im.captions.is_empty() {
            policy.handle(
                report,
                bad(format!(
                    "image id {} ({:?}) has no caption in `annotations`",
                    im.line, im.image
                )),
            )?;
        } else {
            kept.push(im);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_join_their_images_and_bad_entries_follow_the_policy() {
        let text =
            br#"{"images":[{"id":1,"file_name":"a.jpg"},{"id":2,"file_name":"b.jpg"},{"id":3}],
            "annotations":[{"image_id":1,"caption":"x"},{"image_id":2,"caption":"y"},
                           {"image_id":1,"caption":"z"},{"image_id":9,"caption":"w"}]}"#;
        let p = Path::new("c.json");
        let mut r = BadSampleReport::default();
        let e = parse_coco(text, p, BadSample::Fail, &mut r).unwrap_err();
        assert_eq!(e.to_string(), "c.json: images[2]: missing key `file_name`");
        let ims = parse_coco(text, p, BadSample::Skip, &mut r).unwrap();
        assert_eq!(ims.len(), 2);
        assert_eq!(ims[0].captions, ["x", "z"]);
        assert_eq!(r.count, 2);
        assert!(r.examples[1].contains("image_id 9 is not in `images`"));
        let e = parse_coco(b"{\"images\": []}", p, BadSample::Skip, &mut r).unwrap_err();
        assert!(e.to_string().contains("missing key `annotations`"), "{e}");
    }
}

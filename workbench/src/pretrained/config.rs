//! Reading a Hugging Face `config.json` (model types `clip` and `siglip`) into a
//! [`ModelConfig`], with the defaults `transformers` uses for fields the file leaves out.
//!
//! Every value is checked before anything is allocated: a wrong type, a size of zero or beyond
//! the limits below, heads that do not divide the width or a patch that does not divide the image
//! is an error naming the file and the dotted field.

use super::Family;
use crate::model::{
    Activation, ImageStats, ModelConfig, Pool, ProjectionKind, TextConfig, TextPool, VisionConfig,
};
use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Largest accepted token width.
const MAX_WIDTH: usize = 16_384;
/// Largest accepted MLP width.
const MAX_HIDDEN: usize = 131_072;
/// Largest accepted number of blocks or heads.
const MAX_LAYERS: usize = 512;
/// Largest accepted vocabulary.
const MAX_VOCAB: usize = 1 << 22;
/// Largest accepted number of text positions.
const MAX_POSITIONS: usize = 1 << 16;
/// Largest accepted image side in pixels.
const MAX_IMAGE: usize = 8_192;

/// What `config.json` says about a checkpoint, in the workbench's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    /// CLIP or SigLIP.
    pub family: Family,
    /// The model configuration the weights fit.
    pub model: ModelConfig,
    /// Image side the position embeddings were made for.
    pub image_size: usize,
    /// Text positions (`max_position_embeddings`).
    pub context_length: usize,
    /// Rows of the token embedding.
    pub vocab_size: usize,
    /// CLIP text config's `eos_token_id` (2 marks the legacy "argmax of ids" pooling).
    pub eos_token_id: Option<i64>,
}

/// One table of the file, with the dotted path of its fields for errors.
struct Table<'a> {
    path: &'a Path,
    prefix: &'a str,
    value: Option<&'a Value>,
}

impl Table<'_> {
    fn field(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn err(&self, name: &str, msg: impl std::fmt::Display) -> Error {
        Error::input(
            self.path,
            None,
            format!("field `{}` {msg}", self.field(name)),
        )
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.value
            .and_then(|v| v.get(name))
            .filter(|v| !v.is_null())
    }

    /// A size in `1..=max`, `default` when absent.
    fn size(&self, name: &str, default: usize, max: usize) -> Result<usize> {
        let n = match self.get(name) {
            None => default,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| self.err(name, format!("is {v}; expected a positive integer")))?,
        };
        if n == 0 || n > max {
            return Err(self.err(name, format!("is {n}; expected 1..={max}")));
        }
        Ok(n)
    }

    /// An image size: an integer or a square `[h, w]`.
    fn side(&self, name: &str, default: usize) -> Result<usize> {
        if let Some(Value::Array(a)) = self.get(name) {
            let dims: Vec<Option<u64>> = a.iter().map(Value::as_u64).collect();
            return match dims.as_slice() {
                [Some(h), Some(w)] if h == w => {
                    let n = usize::try_from(*h).unwrap_or(usize::MAX);
                    if n == 0 || n > MAX_IMAGE {
                        Err(self.err(name, format!("is {n}; expected 1..={MAX_IMAGE}")))
                    } else {
                        Ok(n)
                    }
                }
                _ => Err(self.err(
                    name,
                    format!(
                        "is {}; expected an integer or a square [h, w]",
                        Value::Array(a.clone())
                    ),
                )),
            };
        }
        self.size(name, default, MAX_IMAGE)
    }

    fn float(&self, name: &str, default: f64) -> Result<f64> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0 && *x < 1.0)
                .ok_or_else(|| self.err(name, format!("is {v}; expected a number in (0, 1)"))),
        }
    }

    fn activation(&self, name: &str, default: Activation) -> Result<Activation> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                Some("quick_gelu") => Ok(Activation::QuickGelu),
                Some("gelu_pytorch_tanh" | "gelu_new" | "gelu_fast") => Ok(Activation::GeluTanh),
                Some("gelu") => Ok(Activation::Gelu),
                _ => Err(self.err(
                    name,
                    format!("is {v}; expected \"quick_gelu\", \"gelu\" or \"gelu_pytorch_tanh\""),
                )),
            },
        }
    }

    fn sub<'b>(&'b self, name: &'b str) -> Result<Table<'b>> {
        match self.get(name) {
            None | Some(Value::Object(_)) => Ok(Table {
                path: self.path,
                prefix: name,
                value: self.get(name),
            }),
            Some(v) => Err(self.err(name, format!("is {v}; expected a table"))),
        }
    }
}

/// A tower's shape as read: width, layers, heads, MLP width, activation, eps.
struct Tower {
    width: usize,
    layers: usize,
    heads: usize,
    hidden: usize,
    activation: Activation,
    eps: f64,
}

fn tower(t: &Table<'_>, defaults: (usize, usize, usize, usize, Activation, f64)) -> Result<Tower> {
    let (width, hidden, layers, heads, activation, eps) = defaults;
    let tower = Tower {
        width: t.size("hidden_size", width, MAX_WIDTH)?,
        layers: t.size("num_hidden_layers", layers, MAX_LAYERS)?,
        heads: t.size("num_attention_heads", heads, MAX_LAYERS)?,
        hidden: t.size("intermediate_size", hidden, MAX_HIDDEN)?,
        activation: t.activation("hidden_act", activation)?,
        eps: t.float("layer_norm_eps", eps)?,
    };
    if !tower.width.is_multiple_of(tower.heads) {
        return Err(t.err(
            "num_attention_heads",
            format!(
                "is {}, which does not divide hidden_size {}",
                tower.heads, tower.width
            ),
        ));
    }
    Ok(tower)
}

/// The workbench configuration of a CLIP or SigLIP model with these towers.
fn model_config(
    family: Family,
    embed_dim: usize,
    patch_size: usize,
    v: &Tower,
    t: &Tower,
) -> ModelConfig {
    let clip = family == Family::Clip;
    ModelConfig {
        embed_dim,
        projection: if clip {
            ProjectionKind::Linear
        } else {
            ProjectionKind::LinearBias
        },
        image_projection: (!clip).then_some(ProjectionKind::Identity),
        text_projection: None,
        vision: VisionConfig {
            patch_size,
            width: v.width,
            layers: v.layers,
            heads: v.heads,
            mlp_ratio: 1,
            pool: if clip { Pool::Cls } else { Pool::Map },
            mlp_hidden: Some(v.hidden),
            activation: v.activation,
            layer_norm_eps: v.eps,
            class_token: clip,
            ln_pre: clip,
            patch_bias: !clip,
            input_stats: None,
        },
        text: TextConfig {
            width: t.width,
            layers: t.layers,
            heads: t.heads,
            mlp_ratio: 1,
            mlp_hidden: Some(t.hidden),
            activation: t.activation,
            layer_norm_eps: t.eps,
            causal: clip,
            pool: if clip { TextPool::Eos } else { TextPool::Last },
        },
        kernels: crate::model::Kernels::Fused,
    }
}

/// Parses `config.json` at `path`.
pub fn read(path: &Path) -> Result<HfConfig> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let root: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::input(path, Some(e.line()), format!("not valid JSON: {e}")))?;
    if !root.is_object() {
        return Err(Error::input(path, None, "expected a JSON object"));
    }
    let top = Table {
        path,
        prefix: "",
        value: Some(&root),
    };
    let family = match top.get("model_type").and_then(Value::as_str) {
        Some("clip") => Family::Clip,
        Some("siglip") => Family::Siglip,
        other => {
            return Err(top.err(
                "model_type",
                format!(
                    "is {}; expected \"clip\" (CLIPModel) or \"siglip\" (SiglipModel)",
                    other.map_or_else(|| "missing".to_string(), |s| format!("{s:?}"))
                ),
            ));
        }
    };
    let text = top.sub("text_config")?;
    let vision = top.sub("vision_config")?;
    let clip = family == Family::Clip;
    // transformers' defaults: CLIP ViT-B/32 with a 512-wide text tower; SigLIP base/16.
    let (act, eps) = if clip {
        (Activation::QuickGelu, 1e-5)
    } else {
        (Activation::GeluTanh, 1e-6)
    };
    let t = if clip {
        tower(&text, (512, 2048, 12, 8, act, eps))?
    } else {
        tower(&text, (768, 3072, 12, 12, act, eps))?
    };
    let v = tower(&vision, (768, 3072, 12, 12, act, eps))?;
    let vocab_size = text.size("vocab_size", if clip { 49_408 } else { 32_000 }, MAX_VOCAB)?;
    let context_length = text.size(
        "max_position_embeddings",
        if clip { 77 } else { 64 },
        MAX_POSITIONS,
    )?;
    let image_size = vision.side("image_size", 224)?;
    let patch_size = vision.side("patch_size", if clip { 32 } else { 16 })?;
    if !image_size.is_multiple_of(patch_size) {
        return Err(vision.err(
            "patch_size",
            format!("is {patch_size}, which does not divide image_size {image_size}"),
        ));
    }
    if vision.size("num_channels", 3, MAX_LAYERS)? != 3 {
        return Err(vision.err("num_channels", "must be 3 (RGB)"));
    }
    let embed_dim = if clip {
        top.size("projection_dim", 512, MAX_WIDTH)?
    } else {
        let projection = text.size("projection_size", t.width, MAX_WIDTH)?;
        if projection != v.width {
            return Err(text.err(
                "projection_size",
                format!(
                    "is {projection}; SigLIP compares it with the image width (vision_config.hidden_size = {})",
                    v.width
                ),
            ));
        }
        if vision.get("vision_use_head").and_then(Value::as_bool) == Some(false) {
            return Err(vision.err(
                "vision_use_head",
                "is false; only SigLIP towers with the attention-pooling head are supported",
            ));
        }
        projection
    };
    let eos_token_id = text.get("eos_token_id").and_then(Value::as_i64);
    let model = model_config(family, embed_dim, patch_size, &v, &t);
    model
        .validate(image_size)
        .map_err(|e| Error::input(path, None, e.to_string()))?;
    Ok(HfConfig {
        family,
        model,
        image_size,
        context_length,
        vocab_size,
        eos_token_id,
    })
}

/// Image statistics from `preprocessor_config.json` when the directory has one, else the
/// family's defaults (OpenAI CLIP's mean / std; 0.5 / 0.5 for SigLIP). Returns them with
/// whether they came from the file.
pub fn read_stats(dir: &Path, family: Family) -> Result<(ImageStats, bool)> {
    let default = match family {
        Family::Clip => ImageStats {
            mean: crate::data::image::CLIP_MEAN,
            std: crate::data::image::CLIP_STD,
        },
        Family::Siglip => ImageStats {
            mean: [0.5; 3],
            std: [0.5; 3],
        },
    };
    let path = dir.join("preprocessor_config.json");
    if !path.is_file() {
        return Ok((default, false));
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let root: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::input(&path, Some(e.line()), format!("not valid JSON: {e}")))?;
    let channels = |name: &str, fallback: [f32; 3], positive: bool| -> Result<[f32; 3]> {
        let Some(v) = root.get(name).filter(|v| !v.is_null()) else {
            return Ok(fallback);
        };
        let bad = || {
            Error::input(
                &path,
                None,
                format!(
                    "field `{name}` is {v}; expected three {}numbers",
                    if positive { "positive " } else { "" }
                ),
            )
        };
        let xs: Vec<f32> = v
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32).filter(|x| x.is_finite()))
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let out: [f32; 3] = xs.try_into().map_err(|_| bad())?;
        if positive && out.iter().any(|x| *x <= 0.0) {
            return Err(bad());
        }
        Ok(out)
    };
    Ok((
        ImageStats {
            mean: channels("image_mean", default.mean, false)?,
            std: channels("image_std", default.std, true)?,
        },
        true,
    ))
}

//! Hugging Face tensor names → the workbench's parameter names.
//!
//! | Hugging Face | workbench |
//! |---|---|
//! | `*.embeddings.patch_embedding.{weight,bias}` `(D, 3, p, p)` | `model.vision.patch_embed.*` `(D, 3·p·p)` |
//! | `*.embeddings.class_embedding` | `model.vision.cls` |
//! | `*.embeddings.position_embedding.weight` | `model.{vision,text}.pos` |
//! | `text_model.embeddings.token_embedding.weight` | `model.text.token_embed` |
//! | `vision_model.pre_layrnorm` / `post_layernorm` | `model.vision.ln_pre` / `ln_post` |
//! | `*.encoder.layers.<i>.self_attn.{q,k,v}_proj` | `model.*.blocks.<i>.attn.qkv` (rows q, k, v) |
//! | `*.encoder.layers.<i>.self_attn.out_proj` | `model.*.blocks.<i>.attn.proj` |
//! | `*.encoder.layers.<i>.layer_norm{1,2}` | `model.*.blocks.<i>.ln{1,2}` |
//! | `*.encoder.layers.<i>.mlp.fc{1,2}` | `model.*.blocks.<i>.mlp.{fc,proj}` |
//! | `text_model.final_layer_norm` | `model.text.ln_final` |
//! | `visual_projection` / `text_projection` (CLIP) | `model.image_proj` / `model.text_proj` |
//! | `text_model.head` (SigLIP) | `model.text_proj` |
//! | `vision_model.head.{probe, attention.in_proj_*, attention.out_proj, layernorm, mlp}` | `model.vision.map.{probe, attn.qkv, attn.proj, ln, mlp}` |
//! | `logit_scale`, `logit_bias` | `loss.clip.logit_scale`, `loss.siglip.{logit_scale,logit_bias}` |

use super::Family;
use super::config::HfConfig;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The tensors of a `model.safetensors`, taken one by one with their expected shapes.
struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    fn open(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
            Error::input(
                path,
                None,
                format!("not a valid safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// Tensor `name` as f32, checked to have `shape`.
    fn take(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            Error::input(
                &self.path,
                None,
                format!("tensor `{name}` is missing (expected shape {shape:?} from config.json)"),
            )
        })?;
        if t.dims() != shape {
            return Err(Error::input(
                &self.path,
                None,
                format!(
                    "tensor `{name}` has shape {:?}; config.json implies {shape:?}",
                    t.dims()
                ),
            ));
        }
        let t = match t.dtype() {
            DType::F32 => t.clone(),
            DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
            other => {
                return Err(Error::input(
                    &self.path,
                    None,
                    format!("tensor `{name}` has dtype {other:?}; expected a float type"),
                ));
            }
        };
        // NaN and ±inf propagate through a sum (finite weights cannot overflow f32 in practice).
        if !t.sum_all()?.to_scalar::<f32>()?.is_finite() {
            return Err(Error::input(
                &self.path,
                None,
                format!("tensor `{name}` holds NaN or infinite values"),
            ));
        }
        Ok(t)
    }

    /// A scalar, stored as `()` or `(1,)`.
    fn scalar(&self, name: &str) -> Result<Tensor> {
        let shape: &[usize] = match self.tensors.get(name) {
            Some(t) if t.rank() == 1 => &[1],
            _ => &[],
        };
        Ok(self.take(name, shape)?.reshape(())?)
    }
}

/// Maps one tower's encoder (`<hf>.encoder.layers.<i>.*` → `<ours>.blocks.<i>.*`).
fn encoder(
    w: &Weights,
    out: &mut Named,
    hf: &str,
    ours: &str,
    (width, hidden, layers): (usize, usize, usize),
) -> Result<()> {
    for i in 0..layers {
        let h = format!("{hf}.encoder.layers.{i}");
        let o = format!("{ours}.blocks.{i}");
        let proj = |p: &str, suffix: &str, shape: &[usize]| {
            w.take(&format!("{h}.self_attn.{p}_proj.{suffix}"), shape)
        };
        let qkv_w = Tensor::cat(
            &[
                &proj("q", "weight", &[width, width])?,
                &proj("k", "weight", &[width, width])?,
                &proj("v", "weight", &[width, width])?,
            ],
            0,
        )?;
        let qkv_b = Tensor::cat(
            &[
                &proj("q", "bias", &[width])?,
                &proj("k", "bias", &[width])?,
                &proj("v", "bias", &[width])?,
            ],
            0,
        )?;
        out.insert(format!("{o}.attn.qkv.weight"), qkv_w);
        out.insert(format!("{o}.attn.qkv.bias"), qkv_b);
        out.insert(
            format!("{o}.attn.proj.weight"),
            proj("out", "weight", &[width, width])?,
        );
        out.insert(
            format!("{o}.attn.proj.bias"),
            proj("out", "bias", &[width])?,
        );
        layer_norm(
            w,
            out,
            &format!("{h}.layer_norm1"),
            &format!("{o}.ln1"),
            width,
        )?;
        layer_norm(
            w,
            out,
            &format!("{h}.layer_norm2"),
            &format!("{o}.ln2"),
            width,
        )?;
        linear(
            w,
            out,
            &format!("{h}.mlp.fc1"),
            &format!("{o}.mlp.fc"),
            (hidden, width),
            true,
        )?;
        linear(
            w,
            out,
            &format!("{h}.mlp.fc2"),
            &format!("{o}.mlp.proj"),
            (width, hidden),
            true,
        )?;
    }
    Ok(())
}

fn layer_norm(w: &Weights, out: &mut Named, hf: &str, ours: &str, width: usize) -> Result<()> {
    out.insert(
        format!("{ours}.weight"),
        w.take(&format!("{hf}.weight"), &[width])?,
    );
    out.insert(
        format!("{ours}.bias"),
        w.take(&format!("{hf}.bias"), &[width])?,
    );
    Ok(())
}

fn linear(
    w: &Weights,
    out: &mut Named,
    hf: &str,
    ours: &str,
    (rows, cols): (usize, usize),
    bias: bool,
) -> Result<()> {
    out.insert(
        format!("{ours}.weight"),
        w.take(&format!("{hf}.weight"), &[rows, cols])?,
    );
    if bias {
        out.insert(
            format!("{ours}.bias"),
            w.take(&format!("{hf}.bias"), &[rows])?,
        );
    }
    Ok(())
}

type Named = BTreeMap<String, Tensor>;

/// Every parameter of the model and its objective under the workbench's names, f32 on `device`.
pub fn read(path: &Path, cfg: &HfConfig, device: &Device) -> Result<Named> {
    let w = Weights::open(path, device)?;
    let mut out = BTreeMap::new();
    vision_tower(&w, cfg, &mut out)?;
    text_tower(&w, cfg, &mut out)?;
    match cfg.family {
        Family::Clip => clip_heads(&w, cfg, &mut out)?,
        Family::Siglip => siglip_heads(&w, cfg, &mut out)?,
    }
    Ok(out)
}

/// Patch embedding, class token, positions, encoder and `ln_post` of the image tower.
fn vision_tower(w: &Weights, cfg: &HfConfig, out: &mut Named) -> Result<()> {
    let v = &cfg.model.vision;
    let (p, d) = (v.patch_size, v.width);
    let grid = cfg.image_size / p;
    let pe = "vision_model.embeddings";
    let patch = w.take(&format!("{pe}.patch_embedding.weight"), &[d, 3, p, p])?;
    out.insert(
        "model.vision.patch_embed.weight".into(),
        patch.reshape((d, 3 * p * p))?,
    );
    if v.patch_bias {
        let bias = w.take(&format!("{pe}.patch_embedding.bias"), &[d])?;
        out.insert("model.vision.patch_embed.bias".into(), bias);
    }
    if v.class_token {
        let cls = w.take(&format!("{pe}.class_embedding"), &[d])?;
        out.insert("model.vision.cls".into(), cls);
    }
    let positions = [grid * grid + v.prefix_tokens(), d];
    let pos = w.take(&format!("{pe}.position_embedding.weight"), &positions)?;
    out.insert("model.vision.pos".into(), pos);
    encoder(
        w,
        out,
        "vision_model",
        "model.vision",
        (d, v.hidden(), v.layers),
    )?;
    layer_norm(
        w,
        out,
        "vision_model.post_layernorm",
        "model.vision.ln_post",
        d,
    )
}

/// Token and position embeddings, encoder and `ln_final` of the text tower.
fn text_tower(w: &Weights, cfg: &HfConfig, out: &mut Named) -> Result<()> {
    let t = &cfg.model.text;
    let te = "text_model.embeddings";
    let tokens = w.take(
        &format!("{te}.token_embedding.weight"),
        &[cfg.vocab_size, t.width],
    )?;
    out.insert("model.text.token_embed".into(), tokens);
    let pos = w.take(
        &format!("{te}.position_embedding.weight"),
        &[cfg.context_length, t.width],
    )?;
    out.insert("model.text.pos".into(), pos);
    encoder(
        w,
        out,
        "text_model",
        "model.text",
        (t.width, t.hidden(), t.layers),
    )?;
    layer_norm(
        w,
        out,
        "text_model.final_layer_norm",
        "model.text.ln_final",
        t.width,
    )
}

/// CLIP: `ln_pre`, the two bias-free projections and the logit scale.
fn clip_heads(w: &Weights, cfg: &HfConfig, out: &mut Named) -> Result<()> {
    let m = &cfg.model;
    let (e, dv, dt) = (m.embed_dim, m.vision.width, m.text.width);
    layer_norm(
        w,
        out,
        "vision_model.pre_layrnorm",
        "model.vision.ln_pre",
        dv,
    )?;
    linear(
        w,
        out,
        "visual_projection",
        "model.image_proj",
        (e, dv),
        false,
    )?;
    linear(w, out, "text_projection", "model.text_proj", (e, dt), false)?;
    out.insert("loss.clip.logit_scale".into(), w.scalar("logit_scale")?);
    Ok(())
}

/// SigLIP: the attention-pooling head, the text head, the logit scale and bias.
fn siglip_heads(w: &Weights, cfg: &HfConfig, out: &mut Named) -> Result<()> {
    let m = &cfg.model;
    let (d, hidden) = (m.vision.width, m.vision.hidden());
    let h = "vision_model.head";
    let map = "model.vision.map";
    let probe = w.take(&format!("{h}.probe"), &[1, 1, d])?;
    out.insert(format!("{map}.probe"), probe.reshape(d)?);
    let qkv = w.take(&format!("{h}.attention.in_proj_weight"), &[3 * d, d])?;
    out.insert(format!("{map}.attn.qkv.weight"), qkv);
    let qkv_bias = w.take(&format!("{h}.attention.in_proj_bias"), &[3 * d])?;
    out.insert(format!("{map}.attn.qkv.bias"), qkv_bias);
    let (attn_out, attn_proj) = (
        format!("{h}.attention.out_proj"),
        format!("{map}.attn.proj"),
    );
    linear(w, out, &attn_out, &attn_proj, (d, d), true)?;
    layer_norm(w, out, &format!("{h}.layernorm"), &format!("{map}.ln"), d)?;
    linear(
        w,
        out,
        &format!("{h}.mlp.fc1"),
        &format!("{map}.mlp.fc"),
        (hidden, d),
        true,
    )?;
    linear(
        w,
        out,
        &format!("{h}.mlp.fc2"),
        &format!("{map}.mlp.proj"),
        (d, hidden),
        true,
    )?;
    let text_head = (m.embed_dim, m.text.width);
    linear(
        w,
        out,
        "text_model.head",
        "model.text_proj",
        text_head,
        true,
    )?;
    out.insert("loss.siglip.logit_scale".into(), w.scalar("logit_scale")?);
    out.insert("loss.siglip.logit_bias".into(), w.scalar("logit_bias")?);
    Ok(())
}

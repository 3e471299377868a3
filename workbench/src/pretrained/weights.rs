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
    out: &mut BTreeMap<String, Tensor>,
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

fn layer_norm(
    w: &Weights,
    out: &mut BTreeMap<String, Tensor>,
    hf: &str,
    ours: &str,
    width: usize,
) -> Result<()> {
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
    out: &mut BTreeMap<String, Tensor>,
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

/// Every parameter of the model and its objective under the workbench's names, f32 on `device`.
pub fn read(path: &Path, cfg: &HfConfig, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let w = Weights::open(path, device)?;
    let m = &cfg.model;
    let (v, t) = (&m.vision, &m.text);
    let mut out = BTreeMap::new();
    let p = v.patch_size;
    let grid = cfg.image_size / p;
    let vis = "model.vision";
    let pe = "vision_model.embeddings";
    out.insert(
        format!("{vis}.patch_embed.weight"),
        w.take(&format!("{pe}.patch_embedding.weight"), &[v.width, 3, p, p])?
            .reshape((v.width, 3 * p * p))?,
    );
    if v.patch_bias {
        out.insert(
            format!("{vis}.patch_embed.bias"),
            w.take(&format!("{pe}.patch_embedding.bias"), &[v.width])?,
        );
    }
    if v.class_token {
        out.insert(
            format!("{vis}.cls"),
            w.take(&format!("{pe}.class_embedding"), &[v.width])?,
        );
    }
    out.insert(
        format!("{vis}.pos"),
        w.take(
            &format!("{pe}.position_embedding.weight"),
            &[grid * grid + v.prefix_tokens(), v.width],
        )?,
    );
    encoder(
        &w,
        &mut out,
        "vision_model",
        vis,
        (v.width, v.hidden(), v.layers),
    )?;
    layer_norm(
        &w,
        &mut out,
        "vision_model.post_layernorm",
        &format!("{vis}.ln_post"),
        v.width,
    )?;

    let txt = "model.text";
    out.insert(
        format!("{txt}.token_embed"),
        w.take(
            "text_model.embeddings.token_embedding.weight",
            &[cfg.vocab_size, t.width],
        )?,
    );
    out.insert(
        format!("{txt}.pos"),
        w.take(
            "text_model.embeddings.position_embedding.weight",
            &[cfg.context_length, t.width],
        )?,
    );
    encoder(
        &w,
        &mut out,
        "text_model",
        txt,
        (t.width, t.hidden(), t.layers),
    )?;
    layer_norm(
        &w,
        &mut out,
        "text_model.final_layer_norm",
        &format!("{txt}.ln_final"),
        t.width,
    )?;

    match cfg.family {
        Family::Clip => {
            layer_norm(
                &w,
                &mut out,
                "vision_model.pre_layrnorm",
                &format!("{vis}.ln_pre"),
                v.width,
            )?;
            let e = m.embed_dim;
            linear(
                &w,
                &mut out,
                "visual_projection",
                "model.image_proj",
                (e, v.width),
                false,
            )?;
            linear(
                &w,
                &mut out,
                "text_projection",
                "model.text_proj",
                (e, t.width),
                false,
            )?;
            out.insert("loss.clip.logit_scale".into(), w.scalar("logit_scale")?);
        }
        Family::Siglip => {
            let h = "vision_model.head";
            let map = format!("{vis}.map");
            let d = v.width;
            out.insert(
                format!("{map}.probe"),
                w.take(&format!("{h}.probe"), &[1, 1, d])?.reshape(d)?,
            );
            out.insert(
                format!("{map}.attn.qkv.weight"),
                w.take(&format!("{h}.attention.in_proj_weight"), &[3 * d, d])?,
            );
            out.insert(
                format!("{map}.attn.qkv.bias"),
                w.take(&format!("{h}.attention.in_proj_bias"), &[3 * d])?,
            );
            linear(
                &w,
                &mut out,
                &format!("{h}.attention.out_proj"),
                &format!("{map}.attn.proj"),
                (d, d),
                true,
            )?;
            layer_norm(
                &w,
                &mut out,
                &format!("{h}.layernorm"),
                &format!("{map}.ln"),
                d,
            )?;
            linear(
                &w,
                &mut out,
                &format!("{h}.mlp.fc1"),
                &format!("{map}.mlp.fc"),
                (v.hidden(), d),
                true,
            )?;
            linear(
                &w,
                &mut out,
                &format!("{h}.mlp.fc2"),
                &format!("{map}.mlp.proj"),
                (d, v.hidden()),
                true,
            )?;
            linear(
                &w,
                &mut out,
                "text_model.head",
                "model.text_proj",
                (m.embed_dim, t.width),
                true,
            )?;
            out.insert("loss.siglip.logit_scale".into(), w.scalar("logit_scale")?);
            out.insert("loss.siglip.logit_bias".into(), w.scalar("logit_bias")?);
        }
    }
    Ok(out)
}

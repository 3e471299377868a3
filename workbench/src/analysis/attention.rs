//! Attention of both towers for one image and one caption, attention rollout, and the "no-op
//! head" diagnostics of Bondarenko et al. (2023, *Quantizable Transformers*, arXiv:2306.12929).
//!
//! [`attention`] returns every layer's and head's weights as plain numbers: the image tower's
//! `(1 + N) × (1 + N)` maps (class token first, then the patches row by row) and the text
//! tower's causal `T × T` maps over `[BOS] … [EOS]`. Row `q` of a map is the distribution query
//! `q` spreads over the keys. [`rollout`] multiplies the head-averaged maps through the layers
//! (Abnar & Zuidema, 2020, arXiv:2005.00928), mixing in the residual connection as `½A + ½I`.
//!
//! [`head_diagnostics`] averages, over many images and captions, how much each head puts on the
//! class token / BOS (an attention "sink"), on background patches, and how peaked it is — heads
//! that learn to do nothing park their mass on such tokens — and, per layer, the residual
//! stream's largest |activation| and kurtosis (outliers grow where heads learn to do nothing).

use crate::data::batch::{images_tensor, text_tensors};
use crate::data::{RgbImage, SceneTruth, Tokenizer};
use crate::model::{Capture, ClipModel, Pool};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Weights of every layer and head of one tower for one input, `(layers, heads, len, len)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionStack {
    /// Number of layers.
    pub layers: usize,
    /// Heads per layer.
    pub heads: usize,
    /// Positions (queries = keys).
    pub len: usize,
    /// Row-major `(layers, heads, len, len)`.
    pub weights: Vec<f32>,
}

impl AttentionStack {
    /// Takes item `item` of per-layer `(B, H, L, L)` weights, keeping the first `keep` positions.
    pub fn from_tensors(per_layer: &[Tensor], item: usize, keep: usize) -> Result<Self> {
        let mut weights = Vec::new();
        let mut heads = 0;
        for w in per_layer {
            let (_, h, l, _) = w.dims4()?;
            if keep > l {
                return Err(Error::Data(format!(
                    "cannot keep {keep} positions of attention over {l}"
                )));
            }
            heads = h;
            let w = w
                .get(item)?
                .narrow(1, 0, keep)?
                .narrow(2, 0, keep)?
                .to_dtype(candle_core::DType::F32)?;
            weights.extend(w.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(Self {
            layers: per_layer.len(),
            heads,
            len: keep,
            weights,
        })
    }

    /// The `len × len` map of `layer`, `head` (row = query).
    pub fn map(&self, layer: usize, head: usize) -> &[f32] {
        let n = self.len * self.len;
        let at = (layer * self.heads + head) * n;
        &self.weights[at..at + n]
    }

    /// Row `query` of the map of `layer`, `head`.
    pub fn row(&self, layer: usize, head: usize, query: usize) -> &[f32] {
        &self.map(layer, head)[query * self.len..(query + 1) * self.len]
    }

    /// The map of `layer` averaged over heads.
    pub fn head_mean(&self, layer: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.len * self.len];
        for h in 0..self.heads {
            for (o, w) in out.iter_mut().zip(self.map(layer, h)) {
                *o += w / self.heads as f32;
            }
        }
        out
    }

    /// Every layer's head-averaged map, for [`rollout`].
    pub fn head_means(&self) -> Vec<Vec<f32>> {
        (0..self.layers).map(|l| self.head_mean(l)).collect()
    }
}

/// Attention rollout: `R = Â_L ⋯ Â_1` with `Â = ½A + ½I` (rows renormalised) when `residual`,
/// else the plain product. `layers` are `len × len` row-stochastic maps, first layer first.
/// Row `q` of the result says how much each input position reaches output position `q`.
pub fn rollout(layers: &[Vec<f32>], len: usize, residual: bool) -> Vec<f32> {
    let mut r = identity(len);
    for a in layers {
        let mut hat = a.clone();
        if residual {
            for q in 0..len {
                let row = &mut hat[q * len..(q + 1) * len];
                for (k, x) in row.iter_mut().enumerate() {
                    *x = 0.5 * *x + if k == q { 0.5 } else { 0.0 };
                }
                let s: f32 = row.iter().sum();
                if s > 0.0 {
                    for x in row.iter_mut() {
                        *x /= s;
                    }
                }
            }
        }
        r = matmul(&hat, &r, len);
    }
    r
}

/// The `n × n` identity, row-major.
pub fn identity(n: usize) -> Vec<f32> {
    let mut m = vec![0f32; n * n];
    for i in 0..n {
        m[i * n + i] = 1.0;
    }
    m
}

/// `a · b` for square row-major `n × n` matrices.
pub fn matmul(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * n];
    for i in 0..n {
        for k in 0..n {
            let x = a[i * n + k];
            if x != 0.0 {
                for j in 0..n {
                    out[i * n + j] += x * b[k * n + j];
                }
            }
        }
    }
    out
}

/// Display labels of the tokens `0..=eos` of `text`: the text's own pieces, `<bos>` / `<eos>`
/// for the specials.
pub fn token_labels(tokenizer: &Tokenizer, text: &str) -> Result<Vec<String>> {
    let enc = tokenizer.encode(text)?;
    Ok((0..=enc.eos)
        .map(|i| {
            let (s, e) = enc.offsets[i];
            if enc.special[i] || e <= s {
                if i == 0 {
                    "<bos>".to_string()
                } else if i == enc.eos {
                    "<eos>".to_string()
                } else {
                    "<special>".to_string()
                }
            } else {
                text.get(s..e).unwrap_or("?").to_string()
            }
        })
        .collect())
}

/// Both towers' attention for one image and caption.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionView {
    /// The caption.
    pub text: String,
    /// Token labels, `<bos>` … `<eos>`.
    pub tokens: Vec<String>,
    /// Patches per side.
    pub grid: usize,
    /// Image tower: positions are the class token (if the tower has one), then the patches row
    /// by row.
    pub vision: AttentionStack,
    /// Text tower over `tokens` (causal: upper triangle is zero).
    pub text_attention: AttentionStack,
    /// Rollout of the image tower, `(1 + N)²`.
    pub vision_rollout: Vec<f32>,
    /// Rollout of the text tower, `T²`.
    pub text_rollout: Vec<f32>,
    /// Per layer, the image tower's residual-stream statistics.
    pub vision_activations: Vec<ActivationStats>,
    /// Per layer, the text tower's residual-stream statistics (positions `0..=eos`).
    pub text_activations: Vec<ActivationStats>,
}

impl AttentionView {
    /// The pooled query's attention over the patches (`N` values, row-major `grid × grid`) in
    /// `layer`, `head`: the class token's row without its own entry, or, for mean- and
    /// attention-pooled towers, the mean over patch queries.
    pub fn cls_to_patches(&self, layer: usize, head: usize, pool: Pool) -> Vec<f32> {
        pooled_row(
            self.vision.map(layer, head),
            self.vision.len,
            self.prefix(),
            pool,
        )
    }

    /// The rollout row of the pooled query over the patches.
    pub fn rollout_to_patches(&self, pool: Pool) -> Vec<f32> {
        pooled_row(&self.vision_rollout, self.vision.len, self.prefix(), pool)
    }

    /// Image-tower positions before the first patch (1 for a class token, else 0).
    pub fn prefix(&self) -> usize {
        self.vision.len.saturating_sub(self.grid * self.grid)
    }
}

/// Row of the pooled query over the `len − prefix` patches of a `len × len` image-tower matrix
/// whose first `prefix` positions are not patches (the class token).
pub fn pooled_row(m: &[f32], len: usize, prefix: usize, pool: Pool) -> Vec<f32> {
    match pool {
        Pool::Cls => m[prefix..len].to_vec(),
        Pool::Mean | Pool::Map => {
            let n = len - prefix;
            let mut out = vec![0f32; n];
            for q in prefix..len {
                for (o, x) in out.iter_mut().zip(&m[q * len + prefix..(q + 1) * len]) {
                    *o += x / n as f32;
                }
            }
            out
        }
    }
}

/// Largest |activation| and kurtosis of one layer's output (the residual stream).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationStats {
    /// Layer index (0 = first block's output).
    pub layer: usize,
    /// Largest absolute value over positions and features.
    pub max_abs: f32,
    /// Kurtosis `E[(x−μ)⁴]/σ⁴` of each position's features (3 for a Gaussian), averaged over
    /// positions.
    pub kurtosis: f32,
}

/// [`ActivationStats`] of rows `(positions, width)`.
pub fn activation_stats(layer: usize, rows: &[f32], width: usize) -> ActivationStats {
    let positions = rows.len() / width.max(1);
    let mut kurt = 0f64;
    let mut max_abs = 0f32;
    for row in rows.chunks(width) {
        let n = row.len() as f64;
        let mean = row.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let m2 = row
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        let m4 = row
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(4))
            .sum::<f64>()
            / n;
        kurt += if m2 > 0.0 { m4 / (m2 * m2) } else { 0.0 };
        max_abs = row.iter().fold(max_abs, |m, x| m.max(x.abs()));
    }
    ActivationStats {
        layer,
        max_abs,
        kurtosis: (kurt / positions.max(1) as f64) as f32,
    }
}

/// Per-layer statistics of one tower's block outputs for item `item`, positions `0..keep`.
fn tower_activations(
    enc: &crate::model::layers::EncoderOutput,
    item: usize,
    keep: usize,
) -> Result<Vec<ActivationStats>> {
    let inputs = enc
        .inputs
        .as_ref()
        .ok_or_else(|| Error::Data("the encoder did not keep its block inputs".into()))?;
    // Block l's output is block l+1's input; the last one is the encoder's output.
    let outputs = inputs.iter().skip(1).chain(std::iter::once(&enc.hidden));
    outputs
        .enumerate()
        .map(|(l, t)| {
            let x = t.get(item)?.narrow(0, 0, keep)?;
            let width = x.dim(1)?;
            Ok(activation_stats(
                l,
                &x.flatten_all()?.to_vec1::<f32>()?,
                width,
            ))
        })
        .collect()
}

/// Attention of both towers of `model` for `image` and `text`.
pub fn attention(
    model: &ClipModel,
    tokenizer: &Tokenizer,
    image: &RgbImage,
    text: &str,
    device: &Device,
) -> Result<AttentionView> {
    let x = images_tensor(&[image], device)?;
    let (ids, eos, _) = text_tensors(&[text], tokenizer, device)?;
    let img = model.encode_image(&x, Capture::ATTENTION)?;
    let txt = model.encode_text(&ids, &eos, Capture::ATTENTION)?;
    let tokens = token_labels(tokenizer, text)?;
    let no_weights = || Error::Data("the tower returned no attention weights".into());
    let vi = img.attentions.as_ref().ok_or_else(no_weights)?;
    let ti = txt.attentions.as_ref().ok_or_else(no_weights)?;
    let len = vi.first().map_or(Ok(0), |w| w.dim(2))?;
    let vision = AttentionStack::from_tensors(vi, 0, len)?;
    let text_attention = AttentionStack::from_tensors(ti, 0, tokens.len())?;
    let prefix = model.config().vision.prefix_tokens();
    let grid = ((len - prefix) as f64).sqrt().round() as usize;
    Ok(AttentionView {
        text: text.to_string(),
        grid,
        vision_rollout: rollout(&vision.head_means(), vision.len, true),
        text_rollout: rollout(&text_attention.head_means(), text_attention.len, true),
        vision_activations: tower_activations(&img.tower.encoder, 0, len)?,
        text_activations: tower_activations(&txt.tower.encoder, 0, tokens.len())?,
        vision,
        text_attention,
        tokens,
    })
}

/// Where one head puts its attention, averaged over inputs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadMass {
    /// Layer index.
    pub layer: usize,
    /// Head index.
    pub head: usize,
    /// Mean mass on the first position (class token / BOS), over every other query.
    pub sink: f32,
    /// Image tower: mean mass on patches that overlap no object, over every query. Text: the
    /// share the EOS query (the pooled one) keeps on itself.
    pub background: Option<f32>,
    /// Mean entropy of the rows, divided by the log of the number of visible keys (0 = one
    /// key, 1 = uniform).
    pub entropy: f32,
}

/// No-op-head diagnostics of both towers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadDiagnostics {
    /// Image–caption pairs averaged.
    pub pairs: usize,
    /// Image tower, per layer and head.
    pub vision: Vec<HeadMass>,
    /// Text tower, per layer and head.
    pub text: Vec<HeadMass>,
    /// Image tower, per layer (mean over inputs of the max |activation|, and mean kurtosis).
    pub vision_activations: Vec<ActivationStats>,
    /// Text tower, per layer.
    pub text_activations: Vec<ActivationStats>,
}

/// Which of the `grid × grid` patches (`patch` pixels each) overlap no object of `truth`.
pub fn background_patches(truth: &SceneTruth, grid: usize, patch: usize) -> Vec<bool> {
    let width = grid * patch;
    (0..grid * grid)
        .map(|k| {
            let (r, c) = (k / grid, k % grid);
            !truth.objects.iter().any(|o| {
                (r * patch..(r + 1) * patch).any(|y| {
                    (c * patch..(c + 1) * patch).any(|x| o.mask.get(y * width + x) == Some(&true))
                })
            })
        })
        .collect()
}

fn row_entropy(row: &[f32]) -> f32 {
    let visible = row.len();
    if visible < 2 {
        return 0.0;
    }
    let h: f64 = row
        .iter()
        .filter(|&&p| p > 0.0)
        .map(|&p| -f64::from(p) * f64::from(p).ln())
        .sum();
    (h / (visible as f64).ln()) as f32
}

/// Mass statistics of one stack: `background` is per key position (image) or `None` (text).
fn stack_mass(
    stack: &AttentionStack,
    background: Option<&[bool]>,
    prefix: usize,
    causal: bool,
) -> Vec<HeadMass> {
    let l = stack.len;
    let mut out = Vec::new();
    for layer in 0..stack.layers {
        for head in 0..stack.heads {
            let (mut sink, mut bg, mut ent) = (0f64, 0f64, 0f64);
            for q in 0..l {
                let row = stack.row(layer, head, q);
                let visible = if causal { &row[..=q] } else { row };
                ent += f64::from(row_entropy(visible));
                if q > 0 {
                    sink += f64::from(row[0]);
                }
                if let Some(mask) = background {
                    bg += mask
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| **b)
                        .map(|(k, _)| f64::from(row[k + prefix]))
                        .sum::<f64>();
                }
            }
            out.push(HeadMass {
                layer,
                head,
                sink: (sink / (l - 1).max(1) as f64) as f32,
                background: if background.is_some() {
                    Some((bg / l as f64) as f32)
                } else if causal {
                    Some(stack.row(layer, head, l - 1)[l - 1])
                } else {
                    None
                },
                entropy: (ent / l as f64) as f32,
            });
        }
    }
    out
}

fn accumulate(total: &mut Vec<HeadMass>, add: &[HeadMass]) {
    if total.is_empty() {
        total.extend_from_slice(add);
        return;
    }
    for (t, a) in total.iter_mut().zip(add) {
        t.sink += a.sink;
        t.entropy += a.entropy;
        t.background = match (t.background, a.background) {
            (Some(x), Some(y)) => Some(x + y),
            _ => None,
        };
    }
}

fn accumulate_stats(total: &mut Vec<ActivationStats>, add: &[ActivationStats]) {
    if total.is_empty() {
        total.extend_from_slice(add);
        return;
    }
    for (t, a) in total.iter_mut().zip(add) {
        t.max_abs += a.max_abs;
        t.kurtosis += a.kurtosis;
    }
}

/// Averages [`HeadMass`] and [`ActivationStats`] over `pairs` (image, caption, optional ground
/// truth for the background). Background mass is reported only when every image has truth.
pub fn head_diagnostics(
    model: &ClipModel,
    tokenizer: &Tokenizer,
    pairs: &[(&RgbImage, &str, Option<&SceneTruth>)],
    device: &Device,
) -> Result<HeadDiagnostics> {
    if pairs.is_empty() {
        return Err(Error::Data(
            "head diagnostics need at least one image–caption pair".into(),
        ));
    }
    let patch = model.config().vision.patch_size;
    let (mut vision, mut text) = (Vec::new(), Vec::new());
    let (mut va, mut ta) = (Vec::new(), Vec::new());
    for (image, caption, truth) in pairs {
        let view = attention(model, tokenizer, image, caption, device)?;
        let bg = truth.map(|t| background_patches(t, view.grid, patch));
        let prefix = view.prefix();
        accumulate(
            &mut vision,
            &stack_mass(&view.vision, bg.as_deref(), prefix, false),
        );
        let causal = model.text().causal();
        accumulate(
            &mut text,
            &stack_mass(&view.text_attention, None, 0, causal),
        );
        accumulate_stats(&mut va, &view.vision_activations);
        accumulate_stats(&mut ta, &view.text_activations);
    }
    let n = pairs.len() as f32;
    for m in vision.iter_mut().chain(text.iter_mut()) {
        m.sink /= n;
        m.entropy /= n;
        m.background = m.background.map(|b| b / n);
    }
    for s in va.iter_mut().chain(ta.iter_mut()) {
        s.max_abs /= n;
        s.kurtosis /= n;
    }
    Ok(HeadDiagnostics {
        pairs: pairs.len(),
        vision,
        text,
        vision_activations: va,
        text_activations: ta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_of_identity_is_identity() {
        let n = 5;
        let layers = vec![identity(n); 3];
        assert_eq!(rollout(&layers, n, true), identity(n));
        assert_eq!(rollout(&layers, n, false), identity(n));
    }

    #[test]
    fn rollout_mixes_the_residual_by_hand() {
        // One layer that sends everything to position 0: Â = ½A + ½I.
        let a = vec![1.0, 0.0, 1.0, 0.0];
        let r = rollout(std::slice::from_ref(&a), 2, true);
        assert_eq!(r, vec![1.0, 0.0, 0.5, 0.5]);
        // Two layers: Â·Â = [[1,0],[0.75,0.25]].
        let r = rollout(&[a.clone(), a], 2, true);
        assert_eq!(r, vec![1.0, 0.0, 0.75, 0.25]);
    }

    #[test]
    fn activation_stats_by_hand() {
        // Rows [1, -1, 1, -1] (kurtosis 1) and [0, 0, 0, 4]: mean 1, m2 = 3, m4 = (1+1+1+81)/4 = 21
        // → 21/9.
        let s = activation_stats(2, &[1.0, -1.0, 1.0, -1.0, 0.0, 0.0, 0.0, 4.0], 4);
        assert_eq!(s.layer, 2);
        assert_eq!(s.max_abs, 4.0);
        assert!((s.kurtosis - f32::midpoint(1.0, 21.0 / 9.0)).abs() < 1e-6);
    }

    #[test]
    fn pooled_row_takes_the_class_row_or_the_patch_mean() {
        // len 3: class token + 2 patches.
        let m = [0.2, 0.3, 0.5, 0.1, 0.6, 0.3, 0.0, 0.2, 0.8];
        assert_eq!(pooled_row(&m, 3, 1, Pool::Cls), vec![0.3, 0.5]);
        let mean = pooled_row(&m, 3, 1, Pool::Mean);
        assert!((mean[0] - 0.4).abs() < 1e-6 && (mean[1] - 0.55).abs() < 1e-6);
    }

    #[test]
    fn head_mass_by_hand() {
        // One layer, one head, class token + 2 patches; patch 1 is background.
        let stack = AttentionStack {
            layers: 1,
            heads: 1,
            len: 3,
            weights: vec![1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.25, 0.25, 0.5],
        };
        let m = stack_mass(&stack, Some(&[false, true]), 1, false)[0];
        assert!((m.sink - f32::midpoint(0.5, 0.25)).abs() < 1e-6);
        assert!((m.background.unwrap() - 0.5 / 3.0).abs() < 1e-6);
        let h = |p: &[f64]| {
            -p.iter()
                .filter(|&&x| x > 0.0)
                .map(|x| x * x.ln())
                .sum::<f64>()
        };
        let want = (h(&[1.0]) + h(&[0.5, 0.5]) + h(&[0.25, 0.25, 0.5])) / 3f64.ln() / 3.0;
        assert!((f64::from(m.entropy) - want).abs() < 1e-6);
    }
}

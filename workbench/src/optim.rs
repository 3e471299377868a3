//! Optimisation: AdamW with decay / no-decay groups, warmup + cosine schedule, global-norm
//! gradient clipping.
//!
//! candle's `AdamW` has a single weight decay and iterates a `HashMap`; this one follows PyTorch's
//! `torch.optim.AdamW` update exactly, keeps per-parameter step counts (a parameter that joins
//! mid-run — a swapped-in loss's temperature — starts its own bias correction), applies weight
//! decay only to tensors with ≥ 2 dimensions (open_clip's `exclude_from_wd`: biases, norm gains
//! and scalars like the temperature are not decayed), and iterates names in sorted order.

use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};

/// Learning rate at `step` (0-based): linear warmup over `warmup` steps to `base`, then cosine
/// decay to `base · min_ratio` at step `total` (nanoGPT's `get_lr`).
pub fn lr_at(step: usize, base: f64, warmup: usize, total: usize, min_ratio: f64) -> f64 {
    let min_lr = base * min_ratio;
    // 1) linear warmup
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    // 2) after the schedule, the floor
    if step >= total {
        return min_lr;
    }
    // 3) cosine in between, from base down to min_lr
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    min_lr + coeff * (base - min_lr)
}

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay for tensors with ≥ 2 dimensions.
    pub weight_decay: f64,
}

/// First and second moments of one parameter. On the CPU they live in plain vectors and the
/// update is one loop per parameter; elsewhere they are device tensors updated with tensor ops.
/// Both paths compute the same PyTorch update (tested against each other).
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32>, t: u64 },
    Device { m: Tensor, v: Tensor, t: u64 },
}

impl Moments {
    fn t(&self) -> u64 {
        match self {
            Self::Host { t, .. } | Self::Device { t, .. } => *t,
        }
    }
}

/// AdamW with per-parameter state keyed by parameter name.
pub struct AdamW {
    hp: AdamWParams,
    state: BTreeMap<String, Moments>,
    tensor_path: bool,
}

/// Whether a parameter of this rank is weight-decayed.
pub fn decays(rank: usize) -> bool {
    rank >= 2
}

impl AdamW {
    /// An optimizer with empty state.
    pub fn new(hp: AdamWParams) -> Self {
        Self {
            hp,
            state: BTreeMap::new(),
            tensor_path: false,
        }
    }

    /// An optimizer that uses device tensor ops even on the CPU (to test the two paths agree).
    pub fn with_tensor_path(hp: AdamWParams) -> Self {
        Self {
            tensor_path: true,
            ..Self::new(hp)
        }
    }

    /// One update of every parameter in `params` that has a gradient in `grads`; gradients are
    /// multiplied by `grad_scale` first (the clipping factor). Parameters without a gradient are
    /// left untouched, moments included.
    ///
    /// All or nothing: the new values of every device parameter and its moments are computed
    /// before any is stored, so an error half way (a GPU out of memory) leaves every parameter
    /// and moment as it was — the run's last good state. That holds the new values of all
    /// device parameters at once (three tensors per parameter) until they are stored; host
    /// parameters are updated in place afterwards, a loop that cannot fail half way.
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        let mut staged = Vec::new();
        for (name, var) in params {
            let Some(g) = grads.get(var) else { continue };
            if g.dims() != var.dims() {
                return Err(Error::Data(format!(
                    "optimizer: the gradient of `{name}` has shape {:?}, the parameter {:?}",
                    g.dims(),
                    var.dims()
                )));
            }
            if self.on_host(var) {
                continue;
            }
            let (m, v, t) = match self.state.get(name) {
                Some(Moments::Device { m, v, t }) => (m.clone(), v.clone(), *t),
                _ => (g.zeros_like()?, g.zeros_like()?, 0),
            };
            let (m, v, p) = device_update(&self.hp, var, g, (&m, &v, t + 1), lr, grad_scale)?;
            staged.push((name, var, Moments::Device { m, v, t: t + 1 }, p));
        }
        for (name, var) in params {
            let Some(g) = grads.get(var) else { continue };
            if !self.on_host(var) {
                continue;
            }
            let n = g.elem_count();
            let st = self.state.entry(name.clone()).or_insert(Moments::Host {
                m: vec![0.0; n],
                v: vec![0.0; n],
                t: 0,
            });
            if let Moments::Host { m, v, t } = st {
                host_update(&self.hp, var, g, m, v, t, lr, grad_scale)?;
            }
        }
        for (name, var, moments, p) in staged {
            var.set(&p)?;
            self.state.insert(name.clone(), moments);
        }
        Ok(())
    }

    /// Whether `var`'s update runs as a loop over host memory (CPU, not the tensor path).
    fn on_host(&self, var: &Var) -> bool {
        !self.tensor_path && matches!(var.device(), Device::Cpu)
    }

    /// Moments as tensors named `m.<param>` / `v.<param>`, for checkpoints.
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, st) in &self.state {
            let (m, v) = match st {
                Moments::Host { m, v, .. } => (
                    Tensor::from_slice(m, m.len(), &Device::Cpu)?,
                    Tensor::from_slice(v, v.len(), &Device::Cpu)?,
                ),
                Moments::Device { m, v, .. } => (m.flatten_all()?, v.flatten_all()?),
            };
            out.insert(format!("m.{name}"), m);
            out.insert(format!("v.{name}"), v);
        }
        Ok(out)
    }

    /// Step count of every parameter with state.
    pub fn steps(&self) -> BTreeMap<String, u64> {
        self.state.iter().map(|(k, s)| (k.clone(), s.t())).collect()
    }

    /// Restores state saved by [`AdamW::state_tensors`] and [`AdamW::steps`] for `params`.
    pub fn load(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: &BTreeMap<String, u64>,
        params: &[(String, Var)],
        path: &std::path::Path,
    ) -> Result<()> {
        self.state.clear();
        for (name, &t) in steps {
            let get = |k: String| {
                tensors.get(&k).cloned().ok_or_else(|| {
                    Error::checkpoint(path, format!("optimizer tensor `{k}` is missing"))
                })
            };
            let (m, v) = (get(format!("m.{name}"))?, get(format!("v.{name}"))?);
            let (m, v) = (
                m.to_dtype(candle_core::DType::F32)?,
                v.to_dtype(candle_core::DType::F32)?,
            );
            let Some((_, var)) = params.iter().find(|(n, _)| n == name) else {
                return Err(Error::checkpoint(
                    path,
                    format!("optimizer state for unknown parameter `{name}`"),
                ));
            };
            for (which, t) in [("m", &m), ("v", &v)] {
                if t.elem_count() != var.elem_count() {
                    return Err(Error::checkpoint(
                        path,
                        format!(
                            "optimizer tensor `{which}.{name}` has {} values, the parameter {:?} \
                             has {}",
                            t.elem_count(),
                            var.shape().dims(),
                            var.elem_count()
                        ),
                    ));
                }
            }
            let st = if !self.tensor_path && matches!(var.device(), Device::Cpu) {
                Moments::Host {
                    m: m.flatten_all()?.to_vec1::<f32>()?,
                    v: v.flatten_all()?.to_vec1::<f32>()?,
                    t,
                }
            } else {
                Moments::Device {
                    m: m.reshape(var.shape())?.to_device(var.device())?,
                    v: v.reshape(var.shape())?.to_device(var.device())?,
                    t,
                }
            };
            self.state.insert(name.clone(), st);
        }
        Ok(())
    }
}

/// PyTorch's AdamW update on host vectors.
fn host_update(
    hp: &AdamWParams,
    var: &Var,
    g: &Tensor,
    m: &mut [f32],
    v: &mut [f32],
    t: &mut u64,
    lr: f64,
    grad_scale: f64,
) -> Result<()> {
    *t += 1;
    let g = g
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let (b1, b2) = (hp.beta1 as f32, hp.beta2 as f32);
    let bc1 = 1.0 - hp.beta1.powi(*t as i32);
    let bc2_sqrt = (1.0 - hp.beta2.powi(*t as i32)).sqrt() as f32;
    let decay = if decays(var.rank()) {
        (1.0 - lr * hp.weight_decay) as f32
    } else {
        1.0
    };
    let step_size = (lr / bc1) as f32;
    let (eps, scale) = (hp.eps as f32, grad_scale as f32);
    for i in 0..p.len() {
        let gi = g[i] * scale;
        m[i] = m[i] * b1 + gi * (1.0 - b1);
        v[i] = v[i] * b2 + gi * gi * (1.0 - b2);
        let denom = v[i].sqrt() / bc2_sqrt + eps;
        p[i] = p[i] * decay - step_size * m[i] / denom;
    }
    var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
    Ok(())
}

/// The same update with device tensor ops, stored nowhere: the new `(m, v, p)` from the old
/// moments and their step count after this update, `t`.
fn device_update(
    hp: &AdamWParams,
    var: &Var,
    g: &Tensor,
    (m, v, t): (&Tensor, &Tensor, u64),
    lr: f64,
    grad_scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = if (grad_scale - 1.0).abs() < f64::EPSILON {
        g.clone()
    } else {
        (g * grad_scale)?
    };
    let m = ((m * hp.beta1)? + (&g * (1.0 - hp.beta1))?)?;
    let v = ((v * hp.beta2)? + (g.sqr()? * (1.0 - hp.beta2))?)?;
    let bc1 = 1.0 - hp.beta1.powi(t as i32);
    let bc2 = 1.0 - hp.beta2.powi(t as i32);
    let p = var.as_tensor();
    let p = if decays(p.rank()) && hp.weight_decay > 0.0 {
        (p * (1.0 - lr * hp.weight_decay))?
    } else {
        p.clone()
    };
    let denom = ((v.sqrt()? / bc2.sqrt())? + hp.eps)?;
    let update = (m.div(&denom)? * (lr / bc1))?;
    let p = (p - update)?;
    Ok((m, v, p))
}

/// Global L2 norm of the gradients of `params` (those with no gradient count as zero), and the
/// name of the first parameter (sorted) whose gradient holds a NaN or an infinity.
pub fn grad_norm(params: &[(String, Var)], grads: &GradStore) -> Result<(f64, Option<String>)> {
    let mut total = 0f64;
    let mut bad = None;
    for (name, var) in params {
        let Some(g) = grads.get(var) else { continue };
        let sq = if matches!(g.device(), Device::Cpu) {
            g.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>()
        } else {
            f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?)
        };
        if !sq.is_finite() && bad.is_none() {
            bad = Some(name.clone());
        }
        total += sq;
    }
    Ok((total.sqrt(), bad))
}

/// Clipping factor for global-norm clipping to `max_norm` (`0` = off), as in
/// `torch.nn.utils.clip_grad_norm_`: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr = |s| lr_at(s, 1.0, 10, 110, 0.1);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.55).abs() < 1e-12);
        assert!((lr(110) - 0.1).abs() < 1e-12);
        assert!(lr(30) > lr(31));
    }

    /// `torch.optim.AdamW(betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)`, on the host loop or
    /// the tensor path.
    fn optimizer(tensor_path: bool) -> AdamW {
        let hp = AdamWParams {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.1,
        };
        if tensor_path {
            AdamW::with_tensor_path(hp)
        } else {
            AdamW::new(hp)
        }
    }

    /// Two AdamW steps on `L = 3·p₀ + 4·p₁ + 2·b` (constant gradients), checked by hand with
    /// PyTorch's update (`p ← p·(1 − lr·wd)`, then `p −= lr/bc₁ · m / (√v/√bc₂ + ε)`), as
    /// `torch.optim.AdamW(lr=0.01, betas=(0.9, 0.98), eps=1e-6)` with weight decay 0.1 on `p`
    /// and 0 on `b`:
    /// - step 1: `p = [1, −2]·0.999 − 0.1·[0.3/3, 0.4/4] = [0.989, −2.008]`; `b = 0.5 − 0.1·0.2/2 = 0.49`
    /// - step 2: `m = [0.57, 0.76]`, `v = [0.3564, 0.6336]`, `bc₁ = 0.19`, `bc₂ = 0.0396`, so
    ///   `p = [0.989, −2.008]·0.999 − (0.01/0.19)·[0.57/3, 0.76/4] = [0.978011, −2.015992]`; `b = 0.48`
    #[test]
    fn adamw_matches_pytorch() {
        let dev = Device::Cpu;
        for tensor_path in [false, true] {
            let p = Var::new(&[[1f32, -2.0]], &dev).unwrap();
            let b = Var::new(&[0.5f32], &dev).unwrap();
            let params = vec![("b".to_string(), b.clone()), ("p".to_string(), p.clone())];
            let mut opt = optimizer(tensor_path);
            let c = Tensor::new(&[[3f32, 4.0]], &dev).unwrap();
            for _ in 0..2 {
                let loss = ((p.as_tensor() * &c).unwrap().sum_all().unwrap()
                    + (b.as_tensor() * 2.0).unwrap().sum_all().unwrap())
                .unwrap();
                let grads = loss.backward().unwrap();
                opt.step(&params, &grads, 0.01, 1.0).unwrap();
            }
            let pv = p.as_tensor().to_vec2::<f32>().unwrap();
            let bv = b.as_tensor().to_vec1::<f32>().unwrap();
            assert!((pv[0][0] - 0.978_011).abs() < 1e-5, "{pv:?}");
            assert!((pv[0][1] + 2.015_992).abs() < 1e-5, "{pv:?}");
            assert!((bv[0] - 0.48).abs() < 1e-5, "{bv:?}");
        }
    }

    /// An update that fails at its second parameter (here a gradient of the wrong shape; on a
    /// GPU, running out of memory) changes neither parameter nor any moment, on either path.
    #[test]
    fn a_failing_update_changes_nothing() {
        let dev = Device::Cpu;
        for tensor_path in [false, true] {
            let a = Var::new(&[[1f32, -2.0, 3.0], [0.5, 0.25, -1.0]], &dev).unwrap();
            let b = Var::new(&[[4f32, 5.0], [6.0, 7.0], [8.0, 9.0]], &dev).unwrap();
            let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
            let mut opt = optimizer(tensor_path);
            // Gradients of `sum(a) + sum(b)`, with `b`'s replaced by `gb`.
            let grads_of = |gb: Tensor| {
                let loss =
                    (a.as_tensor().sum_all().unwrap() + b.as_tensor().sum_all().unwrap()).unwrap();
                let mut g = loss.backward().unwrap();
                g.insert(b.as_tensor(), gb);
                g
            };
            // One good step, so that there are moments to keep.
            let good = grads_of(b.as_tensor().ones_like().unwrap());
            opt.step(&params, &good, 0.01, 1.0).unwrap();
            let snapshot = |opt: &AdamW| {
                let mut s: Vec<Vec<f32>> = [&a, &b]
                    .iter()
                    .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
                    .collect();
                for t in opt.state_tensors().unwrap().values() {
                    s.push(t.flatten_all().unwrap().to_vec1().unwrap());
                }
                (s, opt.steps())
            };
            let before = snapshot(&opt);
            // A (2, 3) gradient for the (3, 2) `b` is refused before anything is touched.
            let bad = grads_of(Tensor::ones((2, 3), DType::F32, &dev).unwrap());
            assert!(opt.step(&params, &bad, 0.01, 1.0).is_err());
            assert!(snapshot(&opt) == before, "tensor path {tensor_path}");
            if tensor_path {
                // An f64 gradient meets `b`'s f32 moments only in its update, computed after
                // `a`'s: the step fails there, and `a` is not changed either.
                let late = grads_of(Tensor::ones((3, 2), DType::F64, &dev).unwrap());
                let e = opt.step(&params, &late, 0.01, 1.0).unwrap_err();
                assert!(e.to_string().contains("dtype"), "{e}");
                assert!(snapshot(&opt) == before);
            }
        }
    }

    #[test]
    fn clip_factor_follows_torch() {
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert!((clip_factor(4.0, 1.0) - 0.25).abs() < 1e-6);
        assert_eq!(clip_factor(4.0, 0.0), 1.0);
    }
}

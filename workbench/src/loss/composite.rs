//! A weighted sum of objectives.
//!
//! `L = Σ_k w_k · L_k`. Every part keeps its own parameters under `loss.<part name>` — the same
//! names it has when used alone, so a CLIP temperature trained inside a sum is the one CLIP uses
//! after a swap. Terms are logged as `<part>` (the part's unweighted value) and
//! `<part>/<term>`. Weights are data of the configuration, so editing one live is rebuilding the
//! objective with the new configuration (parameters are restored, nothing is lost).
//!
//! ```toml
//! [loss]
//! kind = "sum"
//! [[loss.parts]]
//! weight = 1.0
//! loss = { kind = "clip" }
//! [[loss.parts]]
//! weight = 0.5
//! loss = { kind = "filip" }
//! ```

use super::{LossConfig, LossInputs, LossOutput, Needs, Objective};
use crate::model::Kernels;
use crate::params::Scope;
use crate::{Error, Result};
use candle_core::Var;
use serde::{Deserialize, Serialize};

/// One weighted part of a sum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SumPart {
    /// Its weight (may be 0 to switch it off while keeping it built).
    pub weight: f64,
    /// The objective.
    pub loss: LossConfig,
}

/// Settings of [`SumLoss`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SumConfig {
    /// The parts (distinct kinds, no nested sums).
    pub parts: Vec<SumPart>,
}

/// Weighted sum of objectives.
pub struct SumLoss {
    parts: Vec<(f64, String, Box<dyn Objective>)>,
}

impl SumLoss {
    /// Builds every part under `loss_scope.<part name>`, with the fused kernels.
    pub fn new(cfg: &SumConfig, loss_scope: &Scope) -> Result<Self> {
        Self::with_kernels(cfg, loss_scope, Kernels::Fused)
    }

    /// As [`SumLoss::new`], every part computing with the fused kernels or their references.
    pub fn with_kernels(cfg: &SumConfig, loss_scope: &Scope, kernels: Kernels) -> Result<Self> {
        if cfg.parts.is_empty() {
            return Err(Error::config("loss.parts", "a sum needs at least one part"));
        }
        let mut parts = Vec::new();
        for (k, p) in cfg.parts.iter().enumerate() {
            let name = p.loss.name();
            if matches!(p.loss, LossConfig::Sum(_)) {
                return Err(Error::config(
                    format!("loss.parts[{k}]"),
                    "sums cannot be nested",
                ));
            }
            if parts.iter().any(|(_, n, _)| n == name) {
                return Err(Error::config(
                    format!("loss.parts[{k}]"),
                    format!("`{name}` appears twice; each part must be a different objective"),
                ));
            }
            if !(p.weight >= 0.0 && p.weight.is_finite()) {
                return Err(Error::config(
                    format!("loss.parts[{k}].weight"),
                    format!("must be >= 0, got {}", p.weight),
                ));
            }
            parts.push((
                p.weight,
                name.to_string(),
                p.loss.build_with(loss_scope, kernels)?,
            ));
        }
        Ok(Self { parts })
    }
}

impl Objective for SumLoss {
    fn name(&self) -> &'static str {
        "sum"
    }

    fn needs(&self) -> Needs {
        self.parts
            .iter()
            .fold(Needs::default(), |n, (_, _, o)| n.union(o.needs()))
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        let mut total = None;
        let mut terms = Vec::new();
        for (w, name, obj) in &self.parts {
            let out = obj.forward(x)?;
            let weighted = (&out.loss * *w)?;
            total = Some(match total {
                None => weighted,
                Some(t) => (t + weighted)?,
            });
            terms.push((name.clone(), out.loss));
            terms.extend(
                out.terms
                    .into_iter()
                    .map(|(t, v)| (format!("{name}/{t}"), v)),
            );
        }
        let Some(loss) = total else {
            candle_core::bail!("empty sum");
        };
        Ok(LossOutput { loss, terms })
    }

    fn supports_local_loss(&self) -> bool {
        self.parts.iter().all(|(_, _, o)| o.supports_local_loss())
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.parts
            .iter()
            .flat_map(|(_, _, o)| o.parameters())
            .collect()
    }

    fn after_step(&self) -> candle_core::Result<()> {
        self.parts.iter().try_for_each(|(_, _, o)| o.after_step())
    }

    fn scalars(&self) -> candle_core::Result<Vec<(String, f32)>> {
        let mut v = Vec::new();
        for (w, name, o) in &self.parts {
            v.push((format!("{name}/weight"), *w as f32));
            v.extend(
                o.scalars()?
                    .into_iter()
                    .map(|(k, x)| (format!("{name}/{k}"), x)),
            );
        }
        Ok(v)
    }

    fn on_activate(&self, x: &LossInputs<'_>) -> candle_core::Result<()> {
        self.parts.iter().try_for_each(|(_, _, o)| o.on_activate(x))
    }
}

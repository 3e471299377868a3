//! The parameter store: every learnable tensor of a run, by stable dotted name.
//!
//! Unlike candle's `VarMap` (a `HashMap`, initialised from an unseedable generator), [`Params`]
//! keeps names sorted and initialises each tensor from a generator derived from the run seed
//! *and the parameter's name*, so creation order never changes the numbers: a loss created in the
//! middle of a run gets the same initial parameters as one created at the start.
//!
//! [`Params::var`] is get-or-create: asking again for an existing name returns the existing
//! variable (with its trained value). That is how swapping an objective away and back restores
//! its temperature, and how a checkpoint's values are picked up by a freshly built model.

use crate::model::Precision;
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every element equal to the value.
    Const(f64),
    /// Normal with mean 0 and the given standard deviation.
    Normal(f64),
    /// Uniform in `[-bound, bound]`.
    Uniform(f64),
}

/// A shared, name-sorted store of [`Var`]s. Clones share the same store.
#[derive(Clone)]
pub struct Params {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    seed: u64,
    device: Device,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params")
            .field("tensors", &self.lock().len())
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Params {
    /// An empty store whose initial values derive from `seed`.
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            vars: Arc::new(Mutex::new(BTreeMap::new())),
            seed,
            device: device.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Var>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        self.vars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A view that prefixes names with `prefix.`.
    pub fn scope(&self, prefix: &str) -> Scope {
        Scope {
            params: self.clone(),
            prefix: prefix.to_string(),
            precision: Precision::F32,
        }
    }

    /// Gets `name`, or creates it with `init`. An existing tensor of another shape is an error.
    pub fn var(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Var> {
        let shape = shape.into();
        let mut vars = self.lock();
        if let Some(v) = vars.get(name) {
            if v.shape() != &shape {
                return Err(Error::config(
                    name,
                    format!(
                        "parameter exists with shape {:?}, asked for {:?}",
                        v.shape(),
                        shape
                    ),
                ));
            }
            return Ok(v.clone());
        }
        let n = shape.elem_count();
        let mut rng = Rng::derive(self.seed, name, 0);
        let data: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Const(c) => vec![c as f32; n],
            Init::Normal(std) => rng.normal_vec(n, std),
            Init::Uniform(b) => (0..n).map(|_| rng.range(-b, b) as f32).collect(),
        };
        let t = Tensor::from_vec(data, shape, &self.device)?;
        let v = Var::from_tensor(&t)?;
        vars.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// The variable called `name`, if any.
    pub fn get(&self, name: &str) -> Option<Var> {
        self.lock().get(name).cloned()
    }

    /// All `(name, variable)` pairs, sorted by name.
    pub fn all(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Pairs whose name starts with `prefix`, sorted by name.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, Var)> {
        self.lock()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Total number of scalars in tensors whose name starts with `prefix` (`""` for all).
    pub fn count(&self, prefix: &str) -> usize {
        self.with_prefix(prefix)
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// Current values as plain tensors, by name (e.g. to save them).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Sets each named tensor: an existing parameter takes the value (its shape must match), a
    /// new name is created with it. Values are converted to f32 on the store's device.
    pub fn insert_all(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut vars = self.lock();
        for (name, t) in tensors {
            let t = t.to_dtype(DType::F32)?.to_device(&self.device)?;
            match vars.get(name) {
                Some(v) if v.shape() != t.shape() => {
                    return Err(Error::config(
                        name,
                        format!(
                            "parameter exists with shape {:?}, given {:?}",
                            v.shape(),
                            t.shape()
                        ),
                    ));
                }
                Some(v) => v.set(&t)?,
                None => {
                    vars.insert(name.clone(), Var::from_tensor(&t)?);
                }
            }
        }
        Ok(())
    }

    /// Writes every parameter to a safetensors file (readable by PyTorch's `safetensors.torch`).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::checkpoint::save_tensors(&self.tensors(), path)
    }

    /// Overwrites parameters with the values in a safetensors file. Tensors the file lacks keep
    /// their values unless `strict`; tensors only the file has are created. Shapes must match.
    /// Nothing changes unless every tensor fits.
    pub fn load(&self, path: &Path, strict: bool) -> Result<()> {
        let loaded = crate::checkpoint::load_tensors(path, &self.device)?;
        self.load_tensors(loaded, path, strict)
    }

    /// [`Params::load`] from tensors already read (`path` names their file in messages).
    pub fn load_tensors(
        &self,
        loaded: std::collections::HashMap<String, Tensor>,
        path: &Path,
        strict: bool,
    ) -> Result<()> {
        let mut vars = self.lock();
        if let Some(missing) = vars.keys().find(|k| strict && !loaded.contains_key(*k)) {
            return Err(Error::checkpoint(
                path,
                format!("tensor `{missing}` is missing"),
            ));
        }
        let mut checked = Vec::with_capacity(loaded.len());
        for (name, t) in loaded {
            if let Some(v) = vars.get(&name)
                && v.shape() != t.shape()
            {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, the model expects {:?}",
                        t.shape().dims(),
                        v.shape().dims()
                    ),
                ));
            }
            checked.push((name, t.to_dtype(DType::F32)?));
        }
        for (name, t) in checked {
            match vars.get(&name) {
                Some(v) => v.set(&t)?,
                None => {
                    vars.insert(name, Var::from_tensor(&t)?);
                }
            }
        }
        Ok(())
    }
}

/// A prefixed view of [`Params`], handed to layer constructors (`model.vision.blocks.0.attn`).
///
/// It also carries the [`Precision`] of the matrix products of the layers built from it (like
/// the dtype of a `candle_nn::VarBuilder`); the variables it creates are f32 whatever it says.
#[derive(Clone, Debug)]
pub struct Scope {
    params: Params,
    prefix: String,
    precision: Precision,
}

impl Scope {
    /// A child scope `prefix.name`.
    #[must_use]
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Self {
            params: self.params.clone(),
            prefix: self.path(&name.to_string()),
            precision: self.precision,
        }
    }

    /// This scope with layers computing their matrix products in `precision` (children
    /// inherit it).
    #[must_use]
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The precision of the matrix products of layers built from this scope.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The full name of `name` in this scope.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// This scope's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Gets or creates `prefix.name` and returns its tensor (tracked for gradients).
    pub fn get(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        Ok(self.var(name, shape, init)?.as_tensor().clone())
    }

    /// Gets or creates `prefix.name` and returns the variable itself.
    pub fn var(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Var> {
        self.params.var(&self.path(name), shape, init)
    }

    /// The device of the store.
    pub fn device(&self) -> &Device {
        self.params.device()
    }

    /// The whole store.
    pub fn params(&self) -> &Params {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_depends_on_name_not_order() {
        let a = Params::new(1, &Device::Cpu);
        let b = Params::new(1, &Device::Cpu);
        let x1 = a.var("x", 4, Init::Normal(1.0)).unwrap();
        let _ = a.var("y", 4, Init::Normal(1.0)).unwrap();
        let _ = b.var("y", 4, Init::Normal(1.0)).unwrap();
        let x2 = b.var("x", 4, Init::Normal(1.0)).unwrap();
        assert_eq!(x1.to_vec1::<f32>().unwrap(), x2.to_vec1::<f32>().unwrap());
        assert_eq!(
            a.all().iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
            ["x", "y"]
        );
    }

    #[test]
    fn get_or_create_returns_the_existing_value() {
        let p = Params::new(0, &Device::Cpu);
        let v = p.var("t", (), Init::Const(2.0)).unwrap();
        v.set(&Tensor::new(5f32, &Device::Cpu).unwrap()).unwrap();
        let again = p.var("t", (), Init::Const(2.0)).unwrap();
        assert_eq!(again.to_scalar::<f32>().unwrap(), 5.0);
        assert!(p.var("t", 3, Init::Zeros).is_err());
    }
}

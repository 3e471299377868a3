//! Helpers shared by the integration tests.

use std::path::PathBuf;
use workbench::config::RunConfig;

/// A configuration small enough to train in a second in a debug build.
pub fn tiny_config() -> RunConfig {
    let mut cfg = RunConfig::preset("tiny").unwrap();
    cfg.data.train_size = 512;
    cfg.data.val_size = 64;
    cfg.data.test_size = 32;
    cfg.data.zero_shot_size = 72;
    cfg.model.vision.width = 32;
    cfg.model.text.width = 32;
    cfg.model.embed_dim = 32;
    cfg.train.batch_size = 16;
    cfg.train.steps = 20;
    cfg.train.warmup_steps = 2;
    cfg.train.eval_every = 0;
    cfg.train.eval_batch_size = 64;
    cfg
}

/// A fresh, empty directory under the system temp dir, unique to this test.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("workbench-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Largest absolute difference, printed with the mean difference when a check fails.
pub fn assert_close(a: &candle_core::Tensor, b: &candle_core::Tensor, atol: f64, what: &str) {
    let d = kernels::check::max_abs_diff(a, b).unwrap();
    assert!(d <= atol, "{what}: max |Δ| = {d:e} > {atol:e}");
}

/// The largest absolute value of `t` (any float dtype), the scale of relative tolerances.
pub fn max_abs(t: &candle_core::Tensor) -> f64 {
    let m = t.to_dtype(candle_core::DType::F32).unwrap().abs().unwrap();
    f64::from(m.max_all().unwrap().to_scalar::<f32>().unwrap())
}

/// Every parameter's name and values, sorted by name (to compare two trainers bit for bit).
pub fn snapshot(t: &workbench::train::Trainer) -> Vec<(String, Vec<f32>)> {
    t.params()
        .all()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

/// InfoNCE at a fixed temperature whose forward fails at one call, with `message`: the
/// driver's words when a GPU runs out of memory, or any other failure.
pub struct FailsAtCall {
    at: usize,
    calls: std::sync::atomic::AtomicUsize,
    message: &'static str,
}

impl FailsAtCall {
    pub fn boxed(at: usize, message: &'static str) -> Box<Self> {
        Box::new(Self {
            at,
            calls: std::sync::atomic::AtomicUsize::new(0),
            message,
        })
    }
}

impl workbench::loss::Objective for FailsAtCall {
    fn name(&self) -> &'static str {
        "fails_at_call"
    }
    fn forward(
        &self,
        x: &workbench::loss::LossInputs<'_>,
    ) -> candle_core::Result<workbench::loss::LossOutput> {
        if self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            == self.at
        {
            return Err(candle_core::Error::Msg(self.message.to_string()));
        }
        let logits = (x.image.matmul(&x.text.t()?)? * 10.0)?;
        let (i2t, t2i) = workbench::loss::symmetric_cross_entropy(&logits)?;
        Ok(workbench::loss::LossOutput {
            loss: ((i2t + t2i)? / 2.0)?,
            terms: Vec::new(),
        })
    }
    fn parameters(&self) -> Vec<(String, candle_core::Var)> {
        Vec::new()
    }
}

/// What CUDA says when an allocation fails (cudarc's `DriverError` as candle shows it).
pub const CUDA_OUT_OF_MEMORY: &str = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";

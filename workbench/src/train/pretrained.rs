//! Starting a run from a pretrained checkpoint (see [`crate::pretrained`]).

use super::Trainer;
use crate::config::RunConfig;
use crate::data::PairDataset;
use crate::pretrained::{Pretrained, check_complete};
use crate::{Error, Result};
use candle_core::Device;
use std::sync::Arc;

impl Trainer {
    /// A trainer on `dataset` whose model and objective start from `pretrained`.
    ///
    /// `cfg` is usually [`Pretrained::run_config`] with training settings edited; its `model`
    /// must be the checkpoint's (only `kernels` may differ). Its `loss` may be any objective: the
    /// checkpoint's temperature (and SigLIP bias) are kept in the store under `loss.clip` /
    /// `loss.siglip`, so swapping to that objective later picks them up. The dataset's images
    /// must have the model's size.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use candle_core::Device;
    /// use workbench::data::{Pairs, RgbImage};
    /// use workbench::train::Trainer;
    /// let pre = workbench::pretrained::load("models/clip-b32".as_ref(), &Device::Cpu)?;
    /// let image = RgbImage { width: 224, height: 224, data: vec![90; 224 * 224 * 3] };
    /// let data = Arc::new(Pairs::new("mine", vec![(image, vec!["a grey square".into()])])?);
    /// let mut cfg = pre.run_config();
    /// cfg.train.steps = 10;
    /// let mut trainer = Trainer::from_pretrained(&pre, cfg, data, Device::Cpu)?;
    /// let view = trainer.attention(&trainer.sample(workbench::data::Split::Val, 0)?.image, "a square")?;
    /// # Ok::<(), workbench::Error>(())
    /// ```
    pub fn from_pretrained(
        pretrained: &Pretrained,
        cfg: RunConfig,
        dataset: Arc<dyn PairDataset>,
        device: Device,
    ) -> Result<Self> {
        let mut expected = pretrained.model.clone();
        expected.kernels = cfg.model.kernels;
        if cfg.model != expected {
            return Err(Error::config(
                "model",
                format!(
                    "must be the architecture of the pretrained model in {} (start from Pretrained::run_config)",
                    pretrained.dir.display()
                ),
            ));
        }
        if dataset.image_size() != pretrained.preprocess.image_size {
            return Err(Error::Data(format!(
                "dataset `{}` has {} px images; the pretrained model in {} takes {} px",
                dataset.name(),
                dataset.image_size(),
                pretrained.dir.display(),
                pretrained.preprocess.image_size
            )));
        }
        let params = pretrained.params(cfg.train.seed, &device)?;
        let trainer = Self::assemble(
            cfg,
            dataset,
            pretrained.tokenizer.clone(),
            device,
            None,
            Some(params),
        )?;
        check_complete(&trainer.params, &pretrained.tensors, &pretrained.dir)?;
        Ok(trainer)
    }
}

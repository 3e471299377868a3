//! [`Pairs`]: a handful of image–caption pairs held in memory, the same in every split — to
//! inspect a model on your own image and text, or to fine-tune on a few pairs.
//!
//! ```
//! use workbench::data::{PairDataset, Pairs, RgbImage, Split};
//! let image = RgbImage { width: 32, height: 32, data: vec![128; 32 * 32 * 3] };
//! let pairs = Pairs::new("mine", vec![(image, vec!["a grey square".into()])])?;
//! assert_eq!(pairs.len(Split::Val), 1);
//! assert_eq!(pairs.image_size(), 32);
//! # Ok::<(), workbench::Error>(())
//! ```

use super::{Caption, PairDataset, RgbImage, Sample, Split};
use crate::{Error, Result};

/// Square images of one size with their captions; every split holds all of them.
#[derive(Clone, Debug)]
pub struct Pairs {
    name: String,
    size: usize,
    items: Vec<(RgbImage, Vec<String>)>,
}

impl Pairs {
    /// At least one pair; images square, of one size, with at least one caption each.
    pub fn new(name: &str, items: Vec<(RgbImage, Vec<String>)>) -> Result<Self> {
        let Some(first) = items.first() else {
            return Err(Error::Data(format!("dataset `{name}` has no pairs")));
        };
        let size = first.0.width;
        for (i, (image, captions)) in items.iter().enumerate() {
            if image.width != size || image.height != size || image.data.len() != size * size * 3 {
                return Err(Error::Data(format!(
                    "dataset `{name}`: image {i} is {}x{} ({} bytes); expected {size}x{size} RGB",
                    image.width,
                    image.height,
                    image.data.len()
                )));
            }
            if captions.is_empty() {
                return Err(Error::Data(format!(
                    "dataset `{name}`: image {i} has no caption"
                )));
            }
        }
        Ok(Self {
            name: name.to_string(),
            size,
            items,
        })
    }
}

impl PairDataset for Pairs {
    fn name(&self) -> &str {
        &self.name
    }

    fn image_size(&self) -> usize {
        self.size
    }

    fn len(&self, _split: Split) -> usize {
        self.items.len()
    }

    fn sample(&self, split: Split, index: usize) -> Result<Sample> {
        let (image, captions) = self.items.get(index).ok_or_else(|| {
            Error::Data(format!(
                "sample {index} is out of range: the {split} split of `{}` has {} pairs",
                self.name,
                self.items.len()
            ))
        })?;
        Ok(Sample {
            image: image.clone(),
            captions: captions
                .iter()
                .map(|t| Caption {
                    text: t.clone(),
                    mentions: Vec::new(),
                })
                .collect(),
            label: None,
            truth: None,
            group: None,
        })
    }

    fn corpus(&self) -> Vec<String> {
        self.items.iter().flat_map(|(_, c)| c.clone()).collect()
    }
}

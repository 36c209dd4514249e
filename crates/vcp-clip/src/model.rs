//! Both towers together, built once from [`ClipWeights`] for one input size.

use crate::config::{Activation, ClipConfig};
use crate::error::Result;
use crate::text::TextTower;
use crate::vision::{DensePath, VisionTower};
use crate::weights::ClipWeights;
use candle_core::DType;

/// Options that are not part of the checkpoint.
#[derive(Debug, Clone)]
pub struct ClipOptions {
    /// Input size of the image tower (positional embedding resized to it); `None` = native.
    pub image_size: Option<usize>,
    /// Override the checkpoint's activation (VCP-CLIP runs OpenAI weights with exact GELU).
    pub activation: Option<Activation>,
    /// Zero rows appended to the token table for added special tokens (1 for `<|class|>`).
    pub extra_tokens: usize,
    /// Compute dtype of both towers (f32, or bf16/f16 mixed precision: LayerNorm and softmax
    /// stay f32, outputs are f32).
    pub dtype: DType,
    /// Dense path of the image tower (dense-CLIP variants).
    pub dense: DensePath,
}

impl Default for ClipOptions {
    fn default() -> Self {
        Self {
            image_size: None,
            activation: None,
            extra_tokens: 1,
            dtype: DType::F32,
            dense: DensePath::None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Clip {
    pub config: ClipConfig,
    pub activation: Activation,
    pub vision: VisionTower,
    pub text: TextTower,
}

impl Clip {
    pub fn new(w: &ClipWeights, opts: &ClipOptions) -> Result<Self> {
        let activation = opts.activation.unwrap_or(w.config.activation);
        let size = opts.image_size.unwrap_or(w.config.vision.image_size);
        let cast;
        let w = if opts.dtype == DType::F32 {
            w
        } else {
            cast = w.cast_compute(opts.dtype)?;
            &cast
        };
        let mut vision = VisionTower::new(w, size, activation)?;
        vision.set_dense_path(opts.dense)?;
        Ok(Self {
            config: w.config.clone(),
            activation,
            vision,
            text: TextTower::new(w, activation, opts.extra_tokens)?,
        })
    }
}

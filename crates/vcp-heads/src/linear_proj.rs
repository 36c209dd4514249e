//! A trainable `Linear(Wv → D)` with bias per tapped layer, class token dropped (APRIL-GAN;
//! VCP-CLIP `LinearLayer` in train.py/test.py), PyTorch's default init.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_clip::Clip;
use vcp_core::{BuildCtx, HeadInput, HeadOutput, Linear, PatchHead};

/// `[head] kind = "linear_proj"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearProjConfig {}

pub struct LinearProj {
    fc: Vec<Linear>,
}

impl LinearProj {
    pub fn new(ctx: &mut BuildCtx) -> Result<Self> {
        let (width, embed) = (ctx.vision_width(), ctx.embed_dim()?);
        let fc = (0..ctx.taps)
            .map(|i| Linear::torch_default(ctx.params, &format!("head.fc.{i}"), width, embed))
            .collect::<Result<_>>()?;
        Ok(Self { fc })
    }
}

impl PatchHead for LinearProj {
    fn forward(&self, input: &HeadInput) -> Result<HeadOutput> {
        crate::text_patch_maps(input, |i, p| self.project(i, p, input.clip))
    }

    fn project(&self, i: usize, patches: &Tensor, _clip: &Clip) -> Result<Tensor> {
        self.fc[i].forward(patches)
    }
}

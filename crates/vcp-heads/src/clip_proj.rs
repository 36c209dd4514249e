//! CLIP's own frozen `ln_post` + projection for patch tokens (WinCLIP-style training-free maps).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_clip::Clip;
use vcp_core::{HeadInput, HeadOutput, PatchHead};

/// `[head] kind = "clip_proj"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipProjConfig {}

pub struct ClipProj;

impl PatchHead for ClipProj {
    fn forward(&self, input: &HeadInput) -> Result<HeadOutput> {
        crate::text_patch_maps(input, |i, p| self.project(i, p, input.clip))
    }

    fn project(&self, _i: usize, patches: &Tensor, clip: &Clip) -> Result<Tensor> {
        Ok(clip.vision.post_project(patches)?)
    }
}

//! Patch tokens → joint embedding space, per tapped layer (the "raw" branch of VCP-CLIP).
//!
//! * `LinearProj`: a trainable `Linear(W → D)` with bias per layer, class token dropped
//!   (APRIL-GAN; VCP-CLIP `LinearLayer` in train.py/test.py). PyTorch default init.
//! * `ClipProj`: CLIP's own frozen `ln_post` + projection (WinCLIP-style training-free maps).

use crate::params::Params;
use candle_core::{Result, Tensor};
use vcp_clip::Clip;

pub enum PatchHead {
    LinearProj(Vec<(Tensor, Tensor)>),
    ClipProj,
}

impl PatchHead {
    pub fn linear(p: &mut Params, layers: usize, width: usize, embed: usize) -> Result<Self> {
        let bound = 1.0 / (width as f64).sqrt();
        let mut v = Vec::with_capacity(layers);
        for i in 0..layers {
            v.push((
                p.uniform(&format!("head.fc.{i}.weight"), (embed, width), bound)?,
                p.uniform(&format!("head.fc.{i}.bias"), embed, bound)?,
            ));
        }
        Ok(PatchHead::LinearProj(v))
    }

    /// # Shapes
    /// `patches`: [B, N, W] (class token already dropped) → [B, N, D] (not normalised).
    pub fn project(&self, i: usize, patches: &Tensor, clip: &Clip) -> Result<Tensor> {
        match self {
            PatchHead::LinearProj(v) => {
                let (w, b) = &v[i];
                let (bs, n, wd) = patches.dims3()?;
                patches
                    .reshape((bs * n, wd))?
                    .matmul(&w.t()?)?
                    .broadcast_add(b)?
                    .reshape((bs, n, w.dim(0)?))
            }
            PatchHead::ClipProj => clip
                .vision
                .post_project(patches)
                .map_err(|e| candle_core::Error::Msg(e.to_string())),
        }
    }
}

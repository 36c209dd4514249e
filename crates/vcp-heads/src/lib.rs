//! # vcp-heads: the `head` slot
//!
//! Patch tokens → per-tap maps `[B, 2, g, g]`.
//!
//! * [`linear_proj`] (`kind = "linear_proj"`, APRIL-GAN, VCP-CLIP): a trainable Linear per
//!   tapped layer into the joint space, then scaled cosine with the text embeddings.
//! * [`clip_proj`] (`kind = "clip_proj"`, WinCLIP-style): CLIP's own frozen `ln_post` +
//!   projection, then the same text-patch map.
//! * [`decoder`] (`kind = "decoder"`): a DETR-style decoder with learnable queries and its own
//!   image logit.

pub mod clip_proj;
pub mod decoder;
pub mod linear_proj;

use candle_core::{Result, Tensor};
use vcp_core::{l2norm, HeadInput, HeadOutput, Registry};

/// Register this crate's kinds of the `head` slot.
pub fn register(reg: &mut Registry) {
    reg.head.register::<linear_proj::LinearProjConfig>(
        "linear_proj",
        "a trainable Linear per tapped layer (APRIL-GAN, VCP-CLIP)",
        |_, ctx| Ok(Some(Box::new(linear_proj::LinearProj::new(ctx)?))),
    );
    reg.head.register::<clip_proj::ClipProjConfig>(
        "clip_proj",
        "CLIP's own frozen ln_post + projection (training-free maps)",
        |_, _| Ok(Some(Box::new(clip_proj::ClipProj))),
    );
    reg.head.register::<decoder::DecoderConfig>(
        "decoder",
        "DETR-style decoder: learnable queries over the tapped patches, with an image logit",
        |c, ctx| Ok(Some(Box::new(decoder::AnomalyDecoder::new(c, ctx)?))),
    );
}

/// The text-patch maps of VCP-CLIP's raw branch: per tap, the scaled cosine between the
/// projected patches and the two text embeddings.
///
/// # Shapes
/// per tap: `project(i, [B, N, Wv])` → `[B, N, D]`; texts `[B, 2, D]` → maps `[B, 2, g, g]`.
pub fn text_patch_maps(
    input: &HeadInput,
    project: impl Fn(usize, &Tensor) -> Result<Tensor>,
) -> Result<HeadOutput> {
    let g = input.grid;
    let mut maps = Vec::with_capacity(input.patches.len());
    let mut projected = Vec::with_capacity(input.patches.len());
    for (i, (patches, text)) in input.patches.iter().zip(input.texts).enumerate() {
        let b = patches.dim(0)?;
        let proj = project(i, patches)?; // [B, N, D]
        let s = l2norm(&proj)?
            .matmul(&text.transpose(1, 2)?)? // [B, N, 2]
            .broadcast_mul(input.scale)?;
        maps.push(s.transpose(1, 2)?.reshape((b, 2, g, g))?);
        projected.push(proj);
    }
    Ok(HeadOutput {
        maps,
        image_logit: None,
        projected,
    })
}

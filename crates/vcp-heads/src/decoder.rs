//! A DETR-style anomaly decoder (`[head] kind = "decoder"`; idea from the reading note's
//! "Thoughts", not in VCP-CLIP).
//!
//! Instead of comparing text embeddings with patches, `Q` learnable queries read the tapped
//! dense features through a small transformer decoder (pre-LN; self-attention among the
//! queries, cross-attention over the patches of all tapped layers, MLP):
//!
//! * queries 0 and 1 are the *state queries* (normal, abnormal); optionally the text embeddings
//!   of the two prompts are added to them (`text_queries`), which makes the decoder
//!   prompt-conditioned;
//! * query 2 is the *image query*: a Linear on it gives the image-level anomaly logit (trained
//!   with BCE against "the mask has an anomalous pixel");
//! * the other queries are free context slots.
//!
//! Maps per tapped layer are scaled cosine similarities between the (mask-MLP-projected) state
//! queries and that layer's projected patch features, `[B, 2, g, g]`: the same form as the
//! text-patch logits, so the fusion, losses and metrics are shared with every other head.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_clip::Clip;
use vcp_core::ops::{LayerNorm, Mha};
use vcp_core::{l2norm, BuildCtx, HeadInput, HeadOutput, Linear, Params, PatchHead};

/// `[head] kind = "decoder"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    #[serde(default = "default_queries")]
    pub queries: usize,
    #[serde(default = "default_layers")]
    pub layers: usize,
    #[serde(default = "default_heads")]
    pub heads: usize,
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// Add the (normal, abnormal) text embeddings to the two state queries.
    #[serde(default)]
    pub text_queries: bool,
}

fn default_queries() -> usize {
    8
}
fn default_layers() -> usize {
    2
}
fn default_heads() -> usize {
    4
}
fn default_dim() -> usize {
    128
}

struct DecoderLayer {
    ln_self: LayerNorm,
    self_attn: Mha,
    ln_cross: LayerNorm,
    cross_attn: Mha,
    ln_mlp: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct AnomalyDecoder {
    /// Per tapped layer: Linear(Wv → d) of the patch features.
    mem_proj: Vec<Linear>,
    /// Learned embedding of each tapped layer, added to its memory tokens, `[T, d]`.
    layer_embed: Tensor,
    queries: Tensor, // [Q, d]
    /// Text embedding (D) → query space (d), for `text_queries`.
    text_proj: Option<Linear>,
    layers: Vec<DecoderLayer>,
    ln_out: LayerNorm,
    mask_mlp: (Linear, Linear),
    image_head: Linear, // d → 1
}

impl AnomalyDecoder {
    pub fn new(c: &DecoderConfig, ctx: &mut BuildCtx) -> Result<Self> {
        let (taps, vision_width, embed_dim) = (ctx.taps, ctx.vision_width(), ctx.embed_dim()?);
        let (queries, dim, heads) = (c.queries, c.dim, c.heads);
        if queries < 3 {
            candle_core::bail!("head.queries must be at least 3 (two state queries and an image query), got {queries}");
        }
        if heads == 0 || !dim.is_multiple_of(heads) {
            candle_core::bail!("head.dim {dim} is not divisible by head.heads {heads}");
        }
        let p: &mut Params = ctx.params;
        let ln = |p: &mut Params, name: &str| LayerNorm::new(p, name, dim, 1e-5);
        let mem_proj = (0..taps)
            .map(|i| Linear::torch_default(p, &format!("decoder.mem_proj.{i}"), vision_width, dim))
            .collect::<Result<Vec<_>>>()?;
        let layer_embed = p.normal("decoder.layer_embed", (taps, dim), 0.02)?;
        let queries_t = p.normal("decoder.queries", (queries, dim), 1.0)?;
        let text_proj = if c.text_queries {
            Some(Linear::torch_default(
                p,
                "decoder.text_proj",
                embed_dim,
                dim,
            )?)
        } else {
            None
        };
        let mut ls = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let n = format!("decoder.layers.{l}");
            ls.push(DecoderLayer {
                ln_self: ln(p, &format!("{n}.ln_self"))?,
                self_attn: Mha::new(p, &format!("{n}.self_attn"), dim, heads)?,
                ln_cross: ln(p, &format!("{n}.ln_cross"))?,
                cross_attn: Mha::new(p, &format!("{n}.cross_attn"), dim, heads)?,
                ln_mlp: ln(p, &format!("{n}.ln_mlp"))?,
                fc1: Linear::torch_default(p, &format!("{n}.fc1"), dim, 4 * dim)?,
                fc2: Linear::torch_default(p, &format!("{n}.fc2"), 4 * dim, dim)?,
            });
        }
        Ok(Self {
            mem_proj,
            layer_embed,
            queries: queries_t,
            text_proj,
            layers: ls,
            ln_out: ln(p, "decoder.ln_out")?,
            mask_mlp: (
                Linear::torch_default(p, "decoder.mask_mlp.0", dim, dim)?,
                Linear::torch_default(p, "decoder.mask_mlp.1", dim, dim)?,
            ),
            image_head: Linear::torch_default(p, "decoder.image_head", dim, 1)?,
        })
    }

    /// Per-layer state logits and the image logit.
    ///
    /// # Shapes
    /// `patches[i]`: [B, N, W] per tapped layer (class token dropped), `text`: [B, 2, D]
    /// (used with `text_queries`), `scale`: scalar → (per layer `[B, 2, N]` scaled cosines,
    /// image logit `[B]`).
    pub fn decode(
        &self,
        patches: &[Tensor],
        text: Option<&Tensor>,
        scale: &Tensor,
    ) -> Result<(Vec<Tensor>, Tensor)> {
        let b = patches[0].dim(0)?;
        let mut mems = Vec::with_capacity(patches.len());
        for (i, x) in patches.iter().enumerate() {
            let m = self.mem_proj[i].forward(x)?; // [B, N, d]
            mems.push(m.broadcast_add(&self.layer_embed.get(i)?)?);
        }
        let memory = Tensor::cat(&mems, 1)?; // [B, T N, d]
        let (nq, d) = self.queries.dims2()?;
        let mut q = self.queries.unsqueeze(0)?.broadcast_as((b, nq, d))?;
        if let (Some(tp), Some(text)) = (&self.text_proj, text) {
            let t = tp.forward(text)?; // [B, 2, d]
            let rest = Tensor::zeros((b, nq - 2, d), t.dtype(), t.device())?;
            q = q.broadcast_add(&Tensor::cat(&[&t, &rest], 1)?)?;
        }
        let mut q = q.contiguous()?;
        for l in &self.layers {
            let h = l.ln_self.forward(&q)?;
            q = (&q + l.self_attn.forward(&h, &h)?)?;
            let h = l.ln_cross.forward(&q)?;
            q = (&q + l.cross_attn.forward(&h, &memory)?)?;
            let h = l.ln_mlp.forward(&q)?;
            q = (&q + l.fc2.forward(&l.fc1.forward(&h)?.gelu_erf()?)?)?;
        }
        let q = self.ln_out.forward(&q)?;
        let states = q.narrow(1, 0, 2)?; // [B, 2, d]
        let m = self
            .mask_mlp
            .1
            .forward(&self.mask_mlp.0.forward(&states)?.relu()?)?;
        let m = l2norm(&m)?.transpose(1, 2)?; // [B, d, 2]
        let maps = mems
            .iter()
            .map(|mem| {
                l2norm(mem)?
                    .matmul(&m)?
                    .broadcast_mul(scale)?
                    .transpose(1, 2) // [B, 2, N]
            })
            .collect::<Result<Vec<_>>>()?;
        let image = self
            .image_head
            .forward(&q.narrow(1, 2, 1)?.squeeze(1)?)?
            .squeeze(1)?; // [B]
        Ok((maps, image))
    }
}

impl PatchHead for AnomalyDecoder {
    fn forward(&self, input: &HeadInput) -> Result<HeadOutput> {
        let g = input.grid;
        let b = input.patches[0].dim(0)?;
        let (maps, image) = self.decode(input.patches, input.texts.first(), input.scale)?;
        Ok(HeadOutput {
            maps: maps
                .into_iter()
                .map(|m| m.reshape((b, 2, g, g)))
                .collect::<Result<_>>()?,
            image_logit: Some(image),
            projected: vec![],
        })
    }

    /// Few-shot references are pooled through CLIP's own projection.
    fn project(&self, _i: usize, patches: &Tensor, clip: &Clip) -> Result<Tensor> {
        Ok(clip.vision.post_project(patches)?)
    }

    fn needs_text(&self) -> bool {
        self.text_proj.is_some()
    }

    fn has_image_logit(&self) -> bool {
        true
    }

    fn allows_refiner(&self) -> bool {
        false
    }

    fn compares_text_with_patches(&self) -> bool {
        false
    }
}

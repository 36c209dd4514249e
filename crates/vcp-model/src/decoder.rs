//! A DETR-style anomaly decoder (idea from the reading note's "Thoughts"; not in VCP-CLIP).
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

use crate::params::Params;
use crate::post_vcp::{l2norm, lin};
use candle_core::{Result, Tensor, D};

type Lin = (Tensor, Tensor); // weight [out, in], bias [out]

fn layer_norm(x: &Tensor, (g, b): &Lin) -> Result<Tensor> {
    // The generic op: it has a backward (candle's fused layer_norm has none).
    candle_nn::ops::layer_norm_slow(x, g, b, 1e-5)
}

/// Multi-head attention with separate q/k/v/out projections.
pub struct Mha {
    q: Lin,
    k: Lin,
    v: Lin,
    o: Lin,
    heads: usize,
}

impl Mha {
    fn new(p: &mut Params, name: &str, dim: usize, heads: usize) -> Result<Self> {
        let bound = 1.0 / (dim as f64).sqrt();
        let mut l = |n: &str| -> Result<Lin> {
            Ok((
                p.uniform(&format!("{name}.{n}.weight"), (dim, dim), bound)?,
                p.constant(&format!("{name}.{n}.bias"), dim, 0.0)?,
            ))
        };
        Ok(Self {
            q: l("q")?,
            k: l("k")?,
            v: l("v")?,
            o: l("o")?,
            heads,
        })
    }

    /// Scaled dot-product attention of `x` over `mem`.
    ///
    /// # Shapes
    /// `x`: [B, Q, d], `mem`: [B, M, d] → [B, Q, d].
    pub fn forward(&self, x: &Tensor, mem: &Tensor) -> Result<Tensor> {
        let (b, nq, d) = x.dims3()?;
        let nm = mem.dim(1)?;
        let h = self.heads;
        let hd = d / h;
        let split = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((b, n, h, hd))?.transpose(1, 2)?.contiguous() // [B, H, n, hd]
        };
        let q = split(lin(x, &self.q)?, nq)?;
        let k = split(lin(mem, &self.k)?, nm)?;
        let v = split(lin(mem, &self.v)?, nm)?;
        let s = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?; // [B, H, Q, M]
        let a = candle_nn::ops::softmax(&s, D::Minus1)?;
        let o = a.matmul(&v)?.transpose(1, 2)?.reshape((b, nq, d))?;
        lin(&o, &self.o)
    }
}

struct DecoderLayer {
    ln_self: Lin,
    self_attn: Mha,
    ln_cross: Lin,
    cross_attn: Mha,
    ln_mlp: Lin,
    fc1: Lin,
    fc2: Lin,
}

pub struct AnomalyDecoder {
    /// Per tapped layer: Linear(W → d) of the patch features.
    mem_proj: Vec<Lin>,
    /// Learned embedding of each tapped layer, added to its memory tokens, `[T, d]`.
    layer_embed: Tensor,
    queries: Tensor, // [Q, d]
    /// Text embedding (D) → query space (d), for `text_queries`.
    text_proj: Option<Lin>,
    layers: Vec<DecoderLayer>,
    ln_out: Lin,
    mask_mlp: (Lin, Lin),
    image_head: Lin, // d → 1
}

impl AnomalyDecoder {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &mut Params,
        taps: usize,
        vision_width: usize,
        embed_dim: usize,
        queries: usize,
        layers: usize,
        heads: usize,
        dim: usize,
        text_queries: bool,
    ) -> Result<Self> {
        if queries < 3 {
            candle_core::bail!("head.queries must be at least 3 (two state queries and an image query), got {queries}");
        }
        if heads == 0 || !dim.is_multiple_of(heads) {
            candle_core::bail!("head.dim {dim} is not divisible by head.heads {heads}");
        }
        let lin_init = |p: &mut Params, name: &str, i: usize, o: usize| -> Result<Lin> {
            let bound = 1.0 / (i as f64).sqrt();
            Ok((
                p.uniform(&format!("{name}.weight"), (o, i), bound)?,
                p.uniform(&format!("{name}.bias"), o, bound)?,
            ))
        };
        let ln = |p: &mut Params, name: &str| -> Result<Lin> {
            Ok((
                p.constant(&format!("{name}.weight"), dim, 1.0)?,
                p.constant(&format!("{name}.bias"), dim, 0.0)?,
            ))
        };
        let mem_proj = (0..taps)
            .map(|i| lin_init(p, &format!("decoder.mem_proj.{i}"), vision_width, dim))
            .collect::<Result<Vec<_>>>()?;
        let layer_embed = p.normal("decoder.layer_embed", (taps, dim), 0.02)?;
        let queries_t = p.normal("decoder.queries", (queries, dim), 1.0)?;
        let text_proj = if text_queries {
            Some(lin_init(p, "decoder.text_proj", embed_dim, dim)?)
        } else {
            None
        };
        let mut ls = Vec::with_capacity(layers);
        for l in 0..layers {
            let n = format!("decoder.layers.{l}");
            ls.push(DecoderLayer {
                ln_self: ln(p, &format!("{n}.ln_self"))?,
                self_attn: Mha::new(p, &format!("{n}.self_attn"), dim, heads)?,
                ln_cross: ln(p, &format!("{n}.ln_cross"))?,
                cross_attn: Mha::new(p, &format!("{n}.cross_attn"), dim, heads)?,
                ln_mlp: ln(p, &format!("{n}.ln_mlp"))?,
                fc1: lin_init(p, &format!("{n}.fc1"), dim, 4 * dim)?,
                fc2: lin_init(p, &format!("{n}.fc2"), 4 * dim, dim)?,
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
                lin_init(p, "decoder.mask_mlp.0", dim, dim)?,
                lin_init(p, "decoder.mask_mlp.1", dim, dim)?,
            ),
            image_head: lin_init(p, "decoder.image_head", dim, 1)?,
        })
    }

    /// Whether the state queries take the text embeddings (`text_queries`).
    pub fn text_conditioned(&self) -> bool {
        self.text_proj.is_some()
    }

    /// Per-layer state logits and the image logit.
    ///
    /// # Shapes
    /// `patches[i]`: [B, N, W] per tapped layer (class token dropped), `text`: [B, 2, D]
    /// (used with `text_queries`), `scale`: scalar → (per layer `[B, 2, N]` scaled cosines,
    /// image logit `[B]`).
    pub fn forward(
        &self,
        patches: &[Tensor],
        text: &Tensor,
        scale: &Tensor,
    ) -> Result<(Vec<Tensor>, Tensor)> {
        let b = patches[0].dim(0)?;
        let mut mems = Vec::with_capacity(patches.len());
        for (i, x) in patches.iter().enumerate() {
            let m = lin(x, &self.mem_proj[i])?; // [B, N, d]
            mems.push(m.broadcast_add(&self.layer_embed.get(i)?)?);
        }
        let memory = Tensor::cat(&mems, 1)?; // [B, T N, d]
        let (nq, d) = self.queries.dims2()?;
        let mut q = self.queries.unsqueeze(0)?.broadcast_as((b, nq, d))?;
        if let Some(tp) = &self.text_proj {
            let t = lin(text, tp)?; // [B, 2, d]
            let rest = Tensor::zeros((b, nq - 2, d), t.dtype(), t.device())?;
            q = q.broadcast_add(&Tensor::cat(&[&t, &rest], 1)?)?;
        }
        let mut q = q.contiguous()?;
        for l in &self.layers {
            let h = layer_norm(&q, &l.ln_self)?;
            q = (&q + l.self_attn.forward(&h, &h)?)?;
            let h = layer_norm(&q, &l.ln_cross)?;
            q = (&q + l.cross_attn.forward(&h, &memory)?)?;
            let h = layer_norm(&q, &l.ln_mlp)?;
            q = (&q + lin(&lin(&h, &l.fc1)?.gelu_erf()?, &l.fc2)?)?;
        }
        let q = layer_norm(&q, &self.ln_out)?;
        let states = q.narrow(1, 0, 2)?; // [B, 2, d]
        let m = lin(&lin(&states, &self.mask_mlp.0)?.relu()?, &self.mask_mlp.1)?;
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
        let image = lin(&q.narrow(1, 2, 1)?.squeeze(1)?, &self.image_head)?.squeeze(1)?; // [B]
        Ok((maps, image))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The attention against a hand computation on a 1-head, 2-dim toy case with identity
    /// projections: `o = softmax(q k^T / sqrt(2)) v`.
    #[test]
    fn attention_matches_hand_computation() {
        let dev = Device::Cpu;
        let mut p = Params::new(0, &dev);
        let mut a = Mha::new(&mut p, "t", 2, 1).unwrap();
        let eye = Tensor::eye(2, candle_core::DType::F32, &dev).unwrap();
        let zero = Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap();
        for l in [&mut a.q, &mut a.k, &mut a.v, &mut a.o] {
            *l = (eye.clone(), zero.clone());
        }
        let x = Tensor::new(&[[[1f32, 0.0]]], &dev).unwrap(); // one query
        let mem = Tensor::new(&[[[1f32, 0.0], [0.0, 2.0], [1.0, 1.0]]], &dev).unwrap();
        let got = a.forward(&x, &mem).unwrap().flatten_all().unwrap();
        let got = got.to_vec1::<f32>().unwrap();
        // scores q.k / sqrt 2 = [1, 0, 1] / 1.41421
        let s = [1.0f64, 0.0, 1.0].map(|v| (v / 2f64.sqrt()).exp());
        let z: f64 = s.iter().sum();
        let w = s.map(|v| v / z);
        let want = [w[0] + w[2], 2.0 * w[1] + w[2]];
        for (g, e) in got.iter().zip(want) {
            assert!((*g as f64 - e).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}

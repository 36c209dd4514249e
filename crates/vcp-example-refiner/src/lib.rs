//! # vcp-example-refiner: a component crate, from scratch
//!
//! A gated cross-attention refiner for the `refiner` slot (`kind = "gated_cross_attention"`),
//! written as a researcher would write a new idea: one crate that depends on `vcp-core` only,
//! plugged into the binary with one line (`crates/vcp-cli/src/components.rs`).
//!
//! Unlike Post-VCP, which *replaces* the text embedding by what it reads from the patches,
//! this refiner keeps the (projected) text and adds what it reads through a learnable gate, as
//! Flamingo's gated cross-attention does:
//!
//! `t' = normalize(P t + tanh(alpha) * O(attn(Q P t, K x, V x)))`
//!
//! with `P: D → Wv` projecting the text into the patch space, scaled multi-head attention over
//! the normalised patch tokens `x`, and `alpha` initialised at `gate_init` (0: the refiner
//! starts as a plain projection of the text and learns how much of the image to mix in).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_core::ops::Mha;
use vcp_core::{l2norm, BuildCtx, Linear, Refiner, Registry, Trace};

/// `[refiner] kind = "gated_cross_attention"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatedConfig {
    /// Attention heads (must divide the vision width).
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// Initial gate `alpha` (`tanh(alpha)` scales the attention output).
    #[serde(default)]
    pub gate_init: f64,
}

fn default_heads() -> usize {
    4
}

/// The one line a binary needs: `registry.with(vcp_example_refiner::register)`.
pub fn register(reg: &mut Registry) {
    reg.refiner.register::<GatedConfig>(
        "gated_cross_attention",
        "example: text + tanh(gate) x cross-attention over the patches",
        |c, ctx| Ok(Some(Box::new(GatedCrossAttention::new(c, ctx)?))),
    );
}

pub struct GatedCrossAttention {
    /// Text (D) → patch width (Wv).
    text_proj: Linear,
    attn: Mha,
    /// Scalar `alpha`.
    gate: Tensor,
}

impl GatedCrossAttention {
    pub fn new(c: &GatedConfig, ctx: &mut BuildCtx) -> Result<Self> {
        let (d, w) = (ctx.embed_dim()?, ctx.vision_width());
        if c.heads == 0 || !w.is_multiple_of(c.heads) {
            candle_core::bail!(
                "refiner.heads = {}: must divide the vision width {w}",
                c.heads
            );
        }
        let p = &mut *ctx.params;
        Ok(Self {
            text_proj: Linear::torch_default(p, "gated_xattn.text_proj", d, w)?,
            attn: Mha::new(p, "gated_xattn.attn", w, c.heads)?,
            gate: p.scalar("gated_xattn.gate", c.gate_init, true)?,
        })
    }
}

impl Refiner for GatedCrossAttention {
    /// # Shapes
    /// `text`: [B, 2, D]; `dense`: [B, N, Wv] (normalised) → [B, 2, Wv] normalised.
    fn refine(&self, text: &Tensor, dense: &Tensor, _trace: Option<&mut Trace>) -> Result<Tensor> {
        let t = self.text_proj.forward(text)?; // [B, 2, Wv]
        let read = self.attn.forward(&t, dense)?; // [B, 2, Wv]
        l2norm(&t.broadcast_add(&read.broadcast_mul(&self.gate.tanh()?)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// One head, width 2, identity projections: the refined embedding against a hand
    /// computation `normalize(t + tanh(a) softmax(t x^T / sqrt 2) x)` in f64.
    #[test]
    fn refine_matches_hand_computation() {
        let dev = Device::Cpu;
        let mut p = vcp_core::Params::new(0, &dev);
        let mut attn = Mha::new(&mut p, "t", 2, 1).unwrap();
        let eye = Tensor::eye(2, DType::F32, &dev).unwrap();
        let zero = Tensor::zeros(2, DType::F32, &dev).unwrap();
        for l in [&mut attn.q, &mut attn.k, &mut attn.v, &mut attn.o] {
            *l = Linear::new(eye.clone(), zero.clone());
        }
        let alpha = 0.7f64;
        let r = GatedCrossAttention {
            text_proj: Linear::new(eye.clone(), zero.clone()),
            attn,
            gate: Tensor::new(alpha as f32, &dev).unwrap(),
        };
        let text = [[1.0f64, 0.0], [0.6, 0.8]];
        let x = [[1.0f64, 0.0], [0.0, 1.0], [0.8, -0.6]];
        let tt = Tensor::new(&[text.map(|r| r.map(|v| v as f32))], &dev).unwrap();
        let xt = Tensor::new(&[x.map(|r| r.map(|v| v as f32))], &dev).unwrap();
        let got = r.refine(&tt, &xt, None).unwrap().to_vec3::<f32>().unwrap();
        for (j, t) in text.iter().enumerate() {
            let s: Vec<f64> = x
                .iter()
                .map(|xk| ((t[0] * xk[0] + t[1] * xk[1]) / 2f64.sqrt()).exp())
                .collect();
            let z: f64 = s.iter().sum();
            let read = [0, 1].map(|d| x.iter().zip(&s).map(|(xk, w)| w / z * xk[d]).sum::<f64>());
            let y = [0, 1].map(|d| t[d] + alpha.tanh() * read[d]);
            let n = (y[0] * y[0] + y[1] * y[1]).sqrt();
            for d in 0..2 {
                assert!(
                    (got[0][j][d] as f64 - y[d] / n).abs() < 1e-6,
                    "text {j} dim {d}: {} vs {}",
                    got[0][j][d],
                    y[d] / n
                );
            }
        }
    }

    /// With the gate at 0 the refiner is the normalised text projection alone.
    #[test]
    fn closed_gate_is_the_projected_text() {
        let dev = Device::Cpu;
        let mut p = vcp_core::Params::new(3, &dev);
        let r = GatedCrossAttention {
            text_proj: Linear::torch_default(&mut p, "tp", 3, 4).unwrap(),
            attn: Mha::new(&mut p, "a", 4, 2).unwrap(),
            gate: Tensor::new(0f32, &dev).unwrap(),
        };
        let text = vcp_clip::testing::seeded_randn(1, &[2, 2, 3], &dev);
        let dense = vcp_clip::testing::seeded_randn(2, &[2, 5, 4], &dev);
        let got = r.refine(&text, &dense, None).unwrap();
        let want = l2norm(&r.text_proj.forward(&text).unwrap()).unwrap();
        let d = vcp_clip::testing::max_abs_diff(&got, &want);
        assert!(d < 1e-7, "{d}");
    }
}

//! # vcp-scaffold-head: a component for the `head` slot (`kind = "scaffold_head"`)
//!
//! Written by `vcp new-component --slot head --name scaffold_head` from the workspace's template: a
//! compiling starting point with its configuration type, the module and a forward test against
//! a hand computation. Replace the forward with the idea (and the test with its hand
//! computation); `experiments/scaffold_head.toml` compares it with the slot's default, VCP-CLIP's
//! trainable Linear per tapped layer (`linear_proj`).
//!
//! The template's head: one Linear shared by every tapped layer into the joint space, then the
//! scaled cosine with the two text embeddings, `logit_j = s * cos(P x_n, t_j)` per patch `n`.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_clip::Clip;
use vcp_core::{l2norm, BuildCtx, HeadInput, HeadOutput, Linear, PatchHead, Registry};

/// `[head] kind = "scaffold_head"` (no keys yet: add the idea's settings here, with defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The one line a binary needs: `vcp_scaffold_head::register(&mut registry)`.
pub fn register(reg: &mut Registry) {
    reg.head.register::<Config>(
        "scaffold_head",
        "scaffold_head: one Linear shared by the tapped layers (vcp new-component template)",
        |_, ctx| Ok(Some(Box::new(Component::new(ctx)?))),
    );
}

pub struct Component {
    /// Patch width (Wv) → joint space (D), shared by every tapped layer.
    proj: Linear,
}

impl Component {
    pub fn new(ctx: &mut BuildCtx) -> Result<Self> {
        let (w, d) = (ctx.vision_width(), ctx.embed_dim()?);
        Ok(Self {
            proj: Linear::torch_default(ctx.params, "scaffold_head.proj", w, d)?,
        })
    }
}

impl PatchHead for Component {
    /// # Shapes
    /// per tap: `patches` [B, N, Wv], `texts` [B, 2, D] (normalised) → maps [B, 2, g, g].
    fn forward(&self, input: &HeadInput) -> Result<HeadOutput> {
        let g = input.grid;
        let mut maps = Vec::with_capacity(input.patches.len());
        let mut projected = Vec::with_capacity(input.patches.len());
        for (patches, text) in input.patches.iter().zip(input.texts) {
            let p = self.proj.forward(patches)?; // [B, N, D]
            let cos = l2norm(&p)?.matmul(&text.transpose(1, 2)?.contiguous()?)?; // [B, N, 2]
            let logits = cos.broadcast_mul(input.scale)?;
            let b = logits.dim(0)?;
            maps.push(logits.transpose(1, 2)?.reshape((b, 2, g, g))?);
            projected.push(p);
        }
        Ok(HeadOutput {
            maps,
            image_logit: None,
            projected,
        })
    }

    /// `patches`: [B, N, Wv] → [B, N, D] (not normalised).
    fn project(&self, _i: usize, patches: &Tensor, _clip: &Clip) -> Result<Tensor> {
        self.proj.forward(patches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};
    use vcp_clip::{ClipConfig, ClipWeights};

    /// Width 2, identity projection, scale 10, a 2 x 2 grid: the maps against
    /// `10 * cos(x_n, t_j)` computed by hand in f64 (patch `n` at row `n / 2`, column `n % 2`).
    #[test]
    fn forward_matches_hand_computation() {
        let dev = Device::Cpu;
        let head = Component {
            proj: Linear::new(
                Tensor::eye(2, DType::F32, &dev).unwrap(),
                Tensor::zeros(2, DType::F32, &dev).unwrap(),
            ),
        };
        let x = [[3.0f64, 4.0], [1.0, -1.0], [0.0, 2.0], [-1.0, 0.0]];
        let t = [[1.0f64, 0.0], [0.6, 0.8]];
        let patches = [Tensor::new(&[x.map(|r| r.map(|v| v as f32))], &dev).unwrap()];
        let texts = [Tensor::new(&[t.map(|r| r.map(|v| v as f32))], &dev).unwrap()];
        let scale = Tensor::new(10f32, &dev).unwrap();
        // The head reads no CLIP weights; the input type carries the model's CLIP.
        let w = ClipWeights::random(&ClipConfig::tiny(), 0, &dev).unwrap();
        let clip = Clip::new(&w, &Default::default()).unwrap();
        let out = head
            .forward(&HeadInput {
                patches: &patches,
                texts: &texts,
                scale: &scale,
                grid: 2,
                clip: &clip,
            })
            .unwrap();
        assert_eq!(out.maps[0].dims(), &[1, 2, 2, 2]);
        let got = out.maps[0].i(0).unwrap().to_vec3::<f32>().unwrap(); // [2, g, g]
        for (n, xn) in x.iter().enumerate() {
            let norm = (xn[0] * xn[0] + xn[1] * xn[1]).sqrt();
            for (j, tj) in t.iter().enumerate() {
                let want = 10.0 * (xn[0] * tj[0] + xn[1] * tj[1]) / norm;
                let v = got[j][n / 2][n % 2] as f64;
                assert!((v - want).abs() < 1e-5, "patch {n} text {j}: {v} vs {want}");
            }
        }
    }
}

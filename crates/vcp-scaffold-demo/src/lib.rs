//! # vcp-scaffold-demo: a component for the `refiner` slot (`kind = "scaffold_demo"`)
//!
//! Written by `vcp new-component --slot refiner --name scaffold_demo` from the workspace's template:
//! a compiling starting point with its configuration type, the module and a forward test
//! against a hand computation. Replace the forward with the idea (and the test with its hand
//! computation); `experiments/scaffold_demo.toml` compares it with the slot's default, Post-VCP.
//!
//! The template's refiner: the text projected into the patch space plus a learnable multiple
//! of the mean patch token, `t' = normalize(P t + beta * mean_n(x_n))`.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_core::{l2norm, BuildCtx, Linear, Refiner, Registry, Trace};

/// `[refiner] kind = "scaffold_demo"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Initial weight `beta` of the mean patch token (0: the refiner starts as the projected
    /// text alone).
    #[serde(default)]
    pub beta_init: f64,
}

/// The one line a binary needs: `vcp_scaffold_demo::register(&mut registry)`.
pub fn register(reg: &mut Registry) {
    reg.refiner.register::<Config>(
        "scaffold_demo",
        "scaffold_demo: projected text + beta x mean patch (vcp new-component template)",
        |c, ctx| Ok(Some(Box::new(Component::new(c, ctx)?))),
    );
}

pub struct Component {
    /// Text (D) → patch width (Wv).
    text_proj: Linear,
    /// Scalar `beta`.
    beta: Tensor,
}

impl Component {
    pub fn new(c: &Config, ctx: &mut BuildCtx) -> Result<Self> {
        let (d, w) = (ctx.embed_dim()?, ctx.vision_width());
        let p = &mut *ctx.params;
        Ok(Self {
            text_proj: Linear::torch_default(p, "scaffold_demo.text_proj", d, w)?,
            beta: p.scalar("scaffold_demo.beta", c.beta_init, true)?,
        })
    }
}

impl Refiner for Component {
    /// # Shapes
    /// `text`: [B, 2, D]; `dense`: [B, N, Wv] (normalised) → [B, 2, Wv] normalised.
    fn refine(&self, text: &Tensor, dense: &Tensor, _trace: Option<&mut Trace>) -> Result<Tensor> {
        let t = self.text_proj.forward(text)?; // [B, 2, Wv]
        let mean = dense.mean_keepdim(1)?; // [B, 1, Wv]
        l2norm(&t.broadcast_add(&mean.broadcast_mul(&self.beta)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Width 2, identity projection, beta = 0.5: the refined embeddings against
    /// `normalize(t + 0.5 * mean(x))` computed by hand in f64.
    #[test]
    fn refine_matches_hand_computation() {
        let dev = Device::Cpu;
        let eye = Tensor::eye(2, DType::F32, &dev).unwrap();
        let zero = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let beta = 0.5f64;
        let r = Component {
            text_proj: Linear::new(eye, zero),
            beta: Tensor::new(beta as f32, &dev).unwrap(),
        };
        let text = [[1.0f64, 0.0], [0.6, 0.8]];
        let x = [[1.0f64, 0.0], [0.0, 1.0], [0.8, -0.6]];
        let tt = Tensor::new(&[text.map(|r| r.map(|v| v as f32))], &dev).unwrap();
        let xt = Tensor::new(&[x.map(|r| r.map(|v| v as f32))], &dev).unwrap();
        let got = r.refine(&tt, &xt, None).unwrap().to_vec3::<f32>().unwrap();
        let mean = [0, 1].map(|d| x.iter().map(|xk| xk[d]).sum::<f64>() / 3.0);
        for (j, t) in text.iter().enumerate() {
            let y = [0, 1].map(|d| t[d] + beta * mean[d]);
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
}

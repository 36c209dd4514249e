//! Pre-VCP (VCP-CLIP §3.3, reference `models/pre_vcp.py` `Context_Prompting`): the learnable
//! queries plus a map of the (unnormalised) global image embedding. The reference's map is a
//! `Conv1d(1 → r, kernel 3, padding 1)` slid along the embedding dimension (despite its name
//! `prompt_linear1`); a Linear alternative is offered.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_core::{BuildCtx, CategoryTokens, Linear};

/// `[category] kind = "pre_vcp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreVcpConfig {
    #[serde(default = "crate::two")]
    pub tokens: usize,
    #[serde(default)]
    pub map: GlobalMap,
}

/// How Pre-VCP maps the global embedding to `r` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalMap {
    /// The reference: Conv1d(1 → r, kernel 3, padding 1) along the embedding dimension.
    #[default]
    Conv1d,
    /// Linear(D → r·W) (the MLP alternative left commented in the reference).
    Linear,
}

enum MapImpl {
    /// weight [r, 1, 3], bias [r]
    Conv1d { weight: Tensor, bias: Tensor },
    /// D → r·W
    Linear(Linear),
}

pub struct PreVcp {
    query: Tensor, // [1, r, W]
    map: MapImpl,
}

impl PreVcp {
    /// The Conv1d map keeps the dimension, so it needs the embedding dim to equal the text
    /// width (true for OpenAI CLIPs).
    pub fn new(cfg: &PreVcpConfig, ctx: &mut BuildCtx) -> Result<Self> {
        if cfg.tokens == 0 {
            candle_core::bail!("category.tokens must be at least 1");
        }
        let (width, embed) = (ctx.text_width(), ctx.embed_dim()?);
        let r = cfg.tokens;
        let p = &mut *ctx.params;
        let query = p.trunc_normal("category.query", (1, r, width), 1.0)?;
        let map = match cfg.map {
            GlobalMap::Conv1d => {
                if embed != width {
                    candle_core::bail!(
                        "Pre-VCP conv1d needs the image embedding dim ({embed}) to equal the text width ({width}); use map = \"linear\""
                    );
                }
                // PyTorch Conv1d default init: U(±1/sqrt(fan_in)), fan_in = 1 * 3.
                let bound = 1.0 / 3f64.sqrt();
                MapImpl::Conv1d {
                    weight: p.uniform("category.conv.weight", (r, 1, 3), bound)?,
                    bias: p.uniform("category.conv.bias", r, bound)?,
                }
            }
            GlobalMap::Linear => MapImpl::Linear(Linear::torch_default(
                p,
                "category.linear",
                embed,
                r * width,
            )?),
        };
        Ok(Self { query, map })
    }
}

impl CategoryTokens for PreVcp {
    fn tokens_per_prompt(&self) -> usize {
        self.query.dim(1).unwrap_or(0)
    }

    /// # Shapes
    /// `global`: [B, D] → [B, r, W].
    fn tokens(&self, global: &Tensor) -> Result<Tensor> {
        let (b, d) = global.dims2()?;
        let (r, w) = (self.query.dim(1)?, self.query.dim(2)?);
        let mapped = match &self.map {
            MapImpl::Conv1d { weight, bias } => {
                // out[b, o, i] = bias[o] + sum_k w[o, 0, k] * g[b, i + k - 1] (zero padded)
                let g = global.pad_with_zeros(1, 1, 1)?; // [B, D + 2]
                let mut acc: Option<Tensor> = None;
                for k in 0..3 {
                    let s = g.narrow(1, k, d)?.unsqueeze(1)?; // [B, 1, D]
                    let w = weight.narrow(2, k, 1)?.reshape((1, r, 1))?; // [1, r, 1]
                    let term = s.broadcast_mul(&w)?; // [B, r, D]
                    acc = Some(match acc {
                        Some(a) => (a + term)?,
                        None => term,
                    });
                }
                acc.expect("3 terms")
                    .broadcast_add(&bias.reshape((1, r, 1))?)?
            }
            MapImpl::Linear(l) => l.forward(global)?.reshape((b, r, w))?,
        };
        mapped.broadcast_add(&self.query)
    }
}

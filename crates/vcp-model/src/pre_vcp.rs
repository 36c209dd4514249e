//! Category tokens that replace `<|class|>` in the unified text prompt.
//!
//! * `Static`: `r` learnable vectors, the same for every image (pure UTP, paper §3.1).
//! * `PreVcp` (paper §3.3, reference `models/pre_vcp.py` `Context_Prompting`): the learnable
//!   queries plus a map of the (unnormalised) global image embedding. The reference's map is a
//!   `Conv1d(1 → r, kernel 3, padding 1)` slid along the embedding dimension (despite its name
//!   `prompt_linear1`); a Linear alternative is offered.

use crate::config::{CategoryConfig, GlobalMap};
use crate::params::Params;
use candle_core::{Result, Tensor};

pub enum Category {
    None,
    Static { query: Tensor },
    PreVcp { query: Tensor, map: MapImpl },
}

pub enum MapImpl {
    /// weight [r, 1, 3], bias [r]
    Conv1d { weight: Tensor, bias: Tensor },
    /// weight [r*D, D], bias [r*D]
    Linear { weight: Tensor, bias: Tensor },
}

impl Category {
    /// `width`: text width (the tokens' dimension); `embed`: global embedding dimension. The
    /// Conv1d map keeps the dimension, so it needs `embed == width` (true for OpenAI CLIPs).
    pub fn new(cfg: &CategoryConfig, p: &mut Params, width: usize, embed: usize) -> Result<Self> {
        Ok(match cfg {
            CategoryConfig::None => Category::None,
            CategoryConfig::Static { tokens } => Category::Static {
                query: p.trunc_normal("category.query", (1, *tokens, width), 1.0)?,
            },
            CategoryConfig::PreVcp { tokens, map } => {
                let query = p.trunc_normal("category.query", (1, *tokens, width), 1.0)?;
                let map = match map {
                    GlobalMap::Conv1d => {
                        if embed != width {
                            candle_core::bail!(
                                "Pre-VCP conv1d needs the image embedding dim ({embed}) to equal the text width ({width}); use map = \"linear\""
                            );
                        }
                        // PyTorch Conv1d default init: U(±1/sqrt(fan_in)), fan_in = 1 * 3.
                        let bound = 1.0 / 3f64.sqrt();
                        MapImpl::Conv1d {
                            weight: p.uniform("category.conv.weight", (*tokens, 1, 3), bound)?,
                            bias: p.uniform("category.conv.bias", *tokens, bound)?,
                        }
                    }
                    GlobalMap::Linear => {
                        let bound = 1.0 / (embed as f64).sqrt();
                        MapImpl::Linear {
                            weight: p.uniform(
                                "category.linear.weight",
                                (*tokens * width, embed),
                                bound,
                            )?,
                            bias: p.uniform("category.linear.bias", *tokens * width, bound)?,
                        }
                    }
                };
                Category::PreVcp { query, map }
            }
        })
    }

    pub fn tokens_per_prompt(&self) -> usize {
        match self {
            Category::None => 0,
            Category::Static { query } | Category::PreVcp { query, .. } => {
                query.dim(1).unwrap_or(0)
            }
        }
    }

    pub fn depends_on_image(&self) -> bool {
        matches!(self, Category::PreVcp { .. })
    }

    /// # Shapes
    /// `global`: [B, D] → `Some([B, r, W])` (`[1, r, W]` when image-independent), or `None`.
    pub fn tokens(&self, global: &Tensor) -> Result<Option<Tensor>> {
        match self {
            Category::None => Ok(None),
            Category::Static { query } => Ok(Some(query.clone())),
            Category::PreVcp { query, map } => {
                let (b, d) = global.dims2()?;
                let r = query.dim(1)?;
                let mapped = match map {
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
                        acc.unwrap().broadcast_add(&bias.reshape((1, r, 1))?)?
                    }
                    MapImpl::Linear { weight, bias } => global
                        .matmul(&weight.t()?)?
                        .broadcast_add(bias)?
                        .reshape((b, r, d))?,
                };
                Ok(Some(mapped.broadcast_add(query)?))
            }
        }
    }
}

//! Static category tokens: `r` learnable vectors `[v1..vr]`, the same for every image (pure
//! UTP, VCP-CLIP §3.1), initialised like the reference's `prompt_query` (truncated normal).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_core::{BuildCtx, CategoryTokens};

/// `[category] kind = "static"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    #[serde(default = "crate::two")]
    pub tokens: usize,
}

pub struct StaticTokens {
    query: Tensor, // [1, r, W]
}

impl StaticTokens {
    pub fn new(cfg: &StaticConfig, ctx: &mut BuildCtx) -> Result<Self> {
        if cfg.tokens == 0 {
            candle_core::bail!("category.tokens must be at least 1");
        }
        let w = ctx.text_width();
        Ok(Self {
            query: ctx
                .params
                .trunc_normal("category.query", (1, cfg.tokens, w), 1.0)?,
        })
    }
}

impl CategoryTokens for StaticTokens {
    fn tokens(&self, _global: &Tensor) -> Result<Tensor> {
        Ok(self.query.clone())
    }
    fn tokens_per_prompt(&self) -> usize {
        self.query.dim(1).unwrap_or(0)
    }
}

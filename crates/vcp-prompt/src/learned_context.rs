//! AnomalyCLIP-style object-agnostic prompts: `n_ctx` learnable vectors per state right after
//! the start token, then the state words ("[V..] object" / "[W..] damaged object").

use crate::ids_of;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_clip::PromptHook;
use vcp_core::{l2norm, BuildCtx, TextCtx, TextPrompt};

/// `[prompt] kind = "learned_context"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedContextConfig {
    #[serde(default = "default_n_ctx")]
    pub n_ctx: usize,
    #[serde(default = "default_object")]
    pub normal_words: String,
    #[serde(default = "default_damaged_object")]
    pub abnormal_words: String,
}

fn default_n_ctx() -> usize {
    12
}
fn default_object() -> String {
    "object".into()
}
fn default_damaged_object() -> String {
    "damaged object".into()
}

pub struct LearnedContext {
    ids: Tensor, // [2, L]
    eot: [usize; 2],
    ctx: [Tensor; 2], // [n, W] each
}

impl LearnedContext {
    pub fn new(cfg: &LearnedContextConfig, ctx: &mut BuildCtx) -> Result<Self> {
        let (width, len) = (ctx.text_width(), ctx.clip.text.context_length());
        let mut all = Vec::new();
        let mut eot = [0; 2];
        for (j, words) in [&cfg.normal_words, &cfg.abnormal_words].iter().enumerate() {
            let (ids, e) = ids_of(ctx.tokenizer, words, len)?;
            if e + cfg.n_ctx >= len {
                candle_core::bail!(
                    "prompt.n_ctx = {}: `{words}` plus the context does not fit the {len} text positions",
                    cfg.n_ctx
                );
            }
            eot[j] = e + cfg.n_ctx;
            all.extend(ids);
        }
        Ok(Self {
            ids: Tensor::from_vec(all, (2, len), ctx.device)?,
            eot,
            ctx: [
                ctx.params
                    .normal("prompt.ctx_normal", (cfg.n_ctx, width), 0.02)?,
                ctx.params
                    .normal("prompt.ctx_abnormal", (cfg.n_ctx, width), 0.02)?,
            ],
        })
    }
}

impl TextPrompt for LearnedContext {
    fn encode(
        &self,
        ctx: &TextCtx,
        _category: Option<&Tensor>,
        hook: Option<&dyn PromptHook>,
        _class: &str,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let text = &ctx.clip.text;
        let hook = hook.unwrap_or(&vcp_clip::NoHook);
        let x = text.embed_ids(&self.ids)?; // [2, L, W]
        let l = x.dim(1)?;
        let mut seqs = Vec::new();
        for (j, c) in self.ctx.iter().enumerate() {
            let n = c.dim(0)?;
            let xj = x.get(j)?;
            seqs.push(Tensor::cat(
                &[&xj.narrow(0, 0, 1)?, c, &xj.narrow(0, 1, l - 1 - n)?],
                0,
            )?);
        }
        let x = Tensor::stack(&seqs, 0)?.broadcast_add(text.positional_embedding())?;
        let e = l2norm(&text.forward_embeds(&x, &self.eot, hook)?)?; // [2, D]
        Ok((e.unsqueeze(0)?, None))
    }
}

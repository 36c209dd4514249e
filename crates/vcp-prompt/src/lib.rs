//! # vcp-prompt: the `prompt` slot
//!
//! The two text embeddings `T = [normal, abnormal]`, `[Bc, 2, D]`, L2-normalised.
//!
//! * [`utp`] (`kind = "utp"`, VCP-CLIP §3.1): "a photo of a [state] [v1..vr]", the category
//!   slot's tokens fill `<|class|>`.
//! * [`handcrafted`] (`kind = "handcrafted"`, WinCLIP / APRIL-GAN): state phrases x templates
//!   with a class word, averaged.
//! * [`learned_context`] (`kind = "learned_context"`, AnomalyCLIP-style): learnable vectors
//!   before the state words.

pub mod handcrafted;
pub mod learned_context;
pub mod utp;

use candle_core::Result;
use vcp_clip::Tokenizer;
use vcp_core::Registry;

/// Register this crate's kinds of the `prompt` slot.
pub fn register(reg: &mut Registry) {
    reg.prompt.register::<utp::UtpConfig>(
        "utp",
        "VCP-CLIP unified text prompt: a photo of a [state] [category tokens]",
        |c, ctx| Ok(Some(Box::new(utp::Utp::new(c, ctx)?))),
    );
    reg.prompt.register::<handcrafted::HandcraftedConfig>(
        "handcrafted",
        "WinCLIP / APRIL-GAN state phrases x templates, averaged",
        |c, _| Ok(Some(Box::new(handcrafted::Handcrafted::new(c)))),
    );
    reg.prompt
        .register::<learned_context::LearnedContextConfig>(
            "learned_context",
            "AnomalyCLIP-style object-agnostic learnable context",
            |c, ctx| {
                Ok(Some(Box::new(learned_context::LearnedContext::new(
                    c, ctx,
                )?)))
            },
        );
}

/// Token ids of `text` padded to `ctx`, and the EOT position.
pub(crate) fn ids_of(tok: &Tokenizer, text: &str, ctx: usize) -> Result<(Vec<u32>, usize)> {
    let ids = tok.tokenize(text, ctx, true)?;
    let eot = ids
        .iter()
        .position(|&i| i == vcp_clip::tokenizer::EOT)
        .unwrap_or(ctx - 1);
    Ok((ids, eot))
}

//! # vcp-pre-vcp: the `category` slot
//!
//! Tokens that replace `<|class|>` in the unified text prompt.
//!
//! * [`static_tokens`] (`kind = "static"`): `r` learnable vectors, the same for every image
//!   (pure UTP, VCP-CLIP §3.1).
//! * [`pre_vcp`] (`kind = "pre_vcp"`, VCP-CLIP §3.3): the learnable queries plus a map of the
//!   global image embedding.
//! * `kind = "none"`: no category tokens (prompts that name the object themselves).

pub mod pre_vcp;
pub mod static_tokens;

use serde::{Deserialize, Serialize};
use vcp_core::Registry;

/// `[category] kind = "none"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoneConfig {}

/// Register this crate's kinds of the `category` slot.
pub fn register(reg: &mut Registry) {
    reg.category
        .register::<NoneConfig>("none", "no category tokens", |_, _| Ok(None));
    reg.category.register::<static_tokens::StaticConfig>(
        "static",
        "learnable image-independent category tokens (pure UTP)",
        |c, ctx| Ok(Some(Box::new(static_tokens::StaticTokens::new(c, ctx)?))),
    );
    reg.category.register::<pre_vcp::PreVcpConfig>(
        "pre_vcp",
        "VCP-CLIP Pre-VCP: category tokens from the global image embedding",
        |c, ctx| Ok(Some(Box::new(pre_vcp::PreVcp::new(c, ctx)?))),
    );
}

pub(crate) fn two() -> usize {
    2
}

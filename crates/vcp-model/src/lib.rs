//! # vcp-model: the baseline CLIP anomaly architecture, assembled from components
//!
//! A model is the frozen CLIP of `vcp-clip` plus one component per slot, each from its own
//! crate through the registry of `vcp-core`: text prompt (`vcp-prompt`: UTP, hand-crafted
//! ensembles, learned context), deep text prompts (`vcp-dtp`), category tokens (`vcp-pre-vcp`:
//! static or Pre-VCP), text refiner (`vcp-post-vcp`), patch head (`vcp-heads`: linear, CLIP
//! projection, DETR-style decoder) and few-shot references (`vcp-fewshot`). This crate keeps
//! what is common to all of them: the assembly ([`model::VcpModel`]: text-patch maps of each
//! tapped layer, the two branches), fusion and scoring ([`fusion`]), the losses ([`loss`]),
//! checkpoints with the official name map ([`checkpoint`]) and the [`presets`] (VCP-CLIP,
//! APRIL-GAN-style, AnomalyCLIP-style).
//!
//! Every detail of the reference (exact GELU, Conv1d Pre-VCP, unscaled Post-VCP attention, EOT
//! shift, upsample-then-softmax, 0.2/0.8 blend, sigma-8 smoothing, per-category min-max,
//! top-2000 score) is reproduced and tested against tensors from the official code.

pub mod checkpoint;
pub mod config;
pub mod fusion;
pub mod loss;
pub mod model;
pub mod presets;

pub use config::ModelConfig;
pub use model::{Features, Logits, VcpModel};
pub use vcp_core::{Registry, SlotConfig, SlotError};

/// The workspace's own components: every kind of every slot.
pub fn standard_registry() -> Registry {
    Registry::empty()
        .with(vcp_prompt::register)
        .with(vcp_dtp::register)
        .with(vcp_pre_vcp::register)
        .with(vcp_post_vcp::register)
        .with(vcp_heads::register)
        .with(vcp_fewshot::register)
}

//! # vcp-model: VCP-CLIP and its peers as swappable components
//!
//! Slots (each a serde enum in [`config`], each with an "off" variant):
//! text prompt ([`prompt`]: UTP, hand-crafted ensembles, learned context), deep text prompts
//! ([`dtp`]), category tokens ([`pre_vcp`]: static or Pre-VCP), text refiner ([`post_vcp`]),
//! patch head ([`head`], or the DETR-style [`decoder`]), fusion and scoring ([`fusion`]), few-shot
//! references ([`fewshot`]: memory bank, reference-conditioned normal prompt); the image tower's
//! attention (dense-CLIP paths) and compute dtype are backbone settings. [`model::VcpModel`] assembles them on
//! the frozen CLIP of `vcp-clip`; [`loss`] and [`checkpoint`] serve training and inference;
//! [`presets`] express VCP-CLIP, APRIL-GAN-style and AnomalyCLIP-style models.
//!
//! Every detail of the reference (exact GELU, Conv1d Pre-VCP, unscaled Post-VCP attention, EOT
//! shift, upsample-then-softmax, 0.2/0.8 blend, sigma-8 smoothing, per-category min-max,
//! top-2000 score) is reproduced and tested against tensors from the official code.

pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod dtp;
pub mod fewshot;
pub mod fusion;
pub mod head;
pub mod loss;
pub mod model;
pub mod params;
pub mod post_vcp;
pub mod pre_vcp;
pub mod presets;
pub mod prompt;

pub use config::ModelConfig;
pub use model::{Features, Logits, VcpModel};

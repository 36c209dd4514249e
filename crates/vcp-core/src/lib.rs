//! # vcp-core: what every component of the workspace plugs into
//!
//! A model is a frozen CLIP plus one component per *slot*. This crate defines the slots
//! ([`slots`]: one trait each), the values passed between them ([`features`]), the store of
//! trainable parameters with the reference's seeded initialisers ([`params`]), small shared
//! ops ([`ops`]: one trainable linear type, `l2norm`, layer norm, multi-head attention, bilinear
//! upsampling with a backward) and the [`registry`] that maps a slot's `kind` in a TOML table
//! to the component that parses that table and builds itself.
//!
//! A component family lives in its own crate (`vcp-prompt`, `vcp-dtp`, `vcp-pre-vcp`,
//! `vcp-post-vcp`, `vcp-heads`, `vcp-fewshot`) that depends on this one only; `vcp-model`
//! assembles them. A new component is a crate with a `register(&mut Registry)` function.

pub mod features;
pub mod ops;
pub mod params;
pub mod registry;
pub mod slots;

pub use features::{Features, Trace};
pub use ops::{l2norm, Linear};
pub use params::Params;
pub use registry::{BuildCtx, Registry, SlotConfig, SlotError};
pub use slots::{
    CategoryTokens, DeepPrompt, FewShot, HeadInput, HeadOutput, PatchHead, Refiner, TextCtx,
    TextPrompt,
};

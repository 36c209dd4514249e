//! # vcp-pretrain: a small CLIP that knows what a defect is
//!
//! Contrastive pretraining (the ordinary CLIP objective) of `vcp-clip`'s own towers on the
//! procedural caption corpus of [`vcp_data::corpus`], on candle, CPU or CUDA.
//! * [`config`]: the TOML recipe (`experiments/pretrain_tiny_clip.toml`), strict.
//! * [`trainer`]: InfoNCE, AdamW with warm-up + cosine, checkpoints, resume, export.
//! * [`objective`]: the v2 patch and state terms (dense text-patch alignment against masks).
//! * [`heldout`]: retrieval, kind accuracy and zero-shot defect AUROC on held-out pairs, and the
//!   model card's check.
//! * [`batch`]: pixels and token ids of corpus samples.
//! * [`optim`]: AdamW, as tensor ops and in place on host memory.
//! * [`checkpoint`]: resumable checkpoints, the exported weights, the warm start.
//! * [`run`]: the loop of `vcp pretrain-clip` (prefetched batches, progress, Ctrl-C, logs).

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod heldout;
pub mod objective;
pub mod optim;
pub mod run;
pub mod trainer;

pub use config::PretrainConfig;
pub use trainer::{clip_loss, Trainer};

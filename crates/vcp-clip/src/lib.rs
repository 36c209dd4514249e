//! # vcp-clip: a CLIP backbone opened up for zero-shot anomaly segmentation
//!
//! Our own CLIP on candle (not candle-transformers'), because ZSAS needs what a classification
//! CLIP hides: any input size with a resized positional embedding, the residual stream of chosen
//! blocks, prompt embeddings and deep prompts in the text tower with gradients flowing through
//! it, and exact parity with the PyTorch references (Hugging Face transformers, OpenAI CLIP as
//! VCP-CLIP runs it).
//!
//! * [`ClipWeights`]: load HF directories, OpenAI/open_clip `.safetensors`/`.pt`/`.pth`
//!   (TorchScript archives included), strictly checked; random weights for presets.
//! * [`VisionTower`]: taps + global embedding. [`TextTower`]: staged forward with [`PromptHook`].
//! * [`Tokenizer`]: CLIP BPE with `<|class|>`. [`preprocess`]: Pillow-exact bicubic + mean/std.

pub mod block;
pub mod config;
pub mod error;
pub mod fused;
pub mod fused_block;
pub mod infer_block;
pub mod model;
pub mod pickle_guard;
pub mod preprocess;
pub mod pretrained;
#[doc(hidden)]
pub mod testing;
pub mod text;
pub mod tokenizer;
pub mod torchscript;
pub mod vision;
pub mod weights;

pub use block::Kernels;
pub use config::{Activation, ClipConfig, TextConfig, VisionConfig, WeightFormat};
pub use error::{ClipError, Result};
pub use model::{Clip, ClipOptions};
pub use text::{InsertedTokens, NoHook, PromptHook, TextTower};
pub use tokenizer::Tokenizer;
/// Pillow/PyTorch-exact resampling (lives in `vcp-data`, which has no tensor dependency).
pub use vcp_data::resample;
pub use vision::{resize_pos_embed, DensePath, VisionOutput, VisionTower};
pub use weights::ClipWeights;

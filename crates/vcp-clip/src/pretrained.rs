//! The embedded `tiny_pretrained` CLIP: a small CLIP pretrained by this workspace
//! (`vcp pretrain-clip --config experiments/pretrain_tiny_clip.toml`) on the procedural
//! defect-caption corpus, stored in f16 (`assets/tiny_pretrained.safetensors`) with its
//! configuration and model-card numbers (`assets/tiny_pretrained.json`). It knows what a
//! defect is, so zero-shot prompting and VCP-CLIP's components have real text-image alignment
//! to work with, offline and on a CPU. Model card: `paper-notes/tiny_pretrained_clip.md`.

use crate::config::ClipConfig;
use crate::error::{ClipError, Result};
use crate::weights::ClipWeights;
use candle_core::{DType, Device};

/// Preset name.
pub const TINY_PRETRAINED: &str = "tiny_pretrained";

const WEIGHTS: &[u8] = include_bytes!("../assets/tiny_pretrained.safetensors");
use crate::config::TINY_PRETRAINED_CARD as CARD;

/// A short fingerprint of the embedded weights (first 16 hex digits of their SHA-256): the
/// preset's name stays `tiny_pretrained` when the weights are retrained, so records and cached
/// features name the weights they came from by this.
pub fn fingerprint() -> &'static str {
    static FP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FP.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let h = format!("{:x}", Sha256::digest(WEIGHTS));
        h[..16].to_string()
    })
}

/// The model card's JSON (configuration, steps, provenance, recorded evaluations).
pub fn card() -> Result<serde_json::Value> {
    serde_json::from_str(CARD)
        .map_err(|e| ClipError::Config(format!("embedded tiny_pretrained.json: {e}")))
}

pub fn tiny_pretrained_config() -> Result<ClipConfig> {
    ClipConfig::tiny_pretrained()
}

/// The pretrained weights (stored f16, returned f32), strictly checked against the config.
pub fn tiny_pretrained(device: &Device) -> Result<ClipWeights> {
    let config = tiny_pretrained_config()?;
    let raw = candle_core::safetensors::load_buffer(WEIGHTS, device)
        .map_err(|e| ClipError::Config(format!("embedded tiny_pretrained.safetensors: {e}")))?;
    let tensors = raw
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    let mut w = ClipWeights::from_tensors(config, tensors)?;
    w.source = Some(std::path::PathBuf::from("<embedded tiny_pretrained>"));
    Ok(w)
}

impl ClipWeights {
    /// Weights of a preset: the embedded pretrained ones for `tiny_pretrained`, otherwise
    /// seeded random weights of the preset's architecture (`seed` is ignored for pretrained).
    pub fn from_preset(name: &str, seed: u64, device: &Device) -> Result<Self> {
        if name == TINY_PRETRAINED {
            return tiny_pretrained(device);
        }
        ClipWeights::random(&ClipConfig::preset(name)?, seed, device)
    }
}

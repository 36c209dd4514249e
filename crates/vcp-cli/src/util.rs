//! Shared CLI helpers.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use vcp_clip::{ClipConfig, ClipWeights};

/// The error chain on one line; candle errors can carry a backtrace, which is dropped.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        let first = s.lines().next().unwrap_or("").trim().to_string();
        if !first.is_empty() && !parts.iter().any(|p| p.contains(&first)) {
            parts.push(first);
        }
    }
    parts.join(": ")
}

/// Load CLIP weights from a HF directory or OpenAI file; `tiny` (when no such path exists) gives
/// the tiny preset with deterministic random weights.
pub fn load_clip(spec: &str, device: &Device) -> Result<ClipWeights> {
    let p = Path::new(spec);
    if !p.exists() && spec == "tiny" {
        return Ok(ClipWeights::random(&ClipConfig::tiny(), 0, device)?);
    }
    Ok(ClipWeights::load(p, device)?)
}

/// Parse `6,12,18,24`.
pub fn parse_layers(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .with_context(|| format!("--layers: `{x}` is not a layer number"))
        })
        .collect()
}

/// Write tensors to safetensors atomically (temporary name, then rename).
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    let tmp = vcp_data::io::tmp_path(path);
    candle_core::safetensors::save(tensors, &tmp).with_context(|| format!("{}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))?;
    Ok(())
}

/// First line of an error's message (candle errors may carry a backtrace).
pub fn first(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

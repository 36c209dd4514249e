//! Shared CLI helpers.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use vcp_clip::{ClipConfig, ClipWeights};

/// Write one line to stdout (see `outln!`).
pub fn write_stdout(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

pub use vcp_runner::one_line;

/// Load CLIP weights from a HF directory or OpenAI file; `tiny` (when no such path exists) gives
/// the tiny preset with deterministic random weights.
pub fn load_clip(spec: &str, device: &Device) -> Result<ClipWeights> {
    let p = Path::new(spec);
    if !p.exists() && spec == "tiny" {
        return Ok(ClipWeights::random(&ClipConfig::tiny(), 0, device)?);
    }
    if !p.exists() && spec == vcp_clip::pretrained::TINY_PRETRAINED {
        return Ok(vcp_clip::pretrained::tiny_pretrained(device)?);
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

/// Write tensors to safetensors atomically (the shared writer: temporary name, then rename;
/// never over a link or special file).
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    vcp_data::io::write_atomic_with(path, |tmp| candle_core::safetensors::save(tensors, tmp))?;
    Ok(())
}

//! What train / eval / predict share: experiment files, data specs, building the model.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};
use vcp_clip::ClipWeights;
use vcp_data::Meta;
use vcp_model::VcpModel;
use vcp_runner::config::{ExperimentConfig, SynthConfig};

/// Resolve `synth:<domain>` (generated on first use) or a meta.json path to (meta, meta path, root).
pub fn resolve_data(
    spec: &str,
    root: Option<&str>,
    synth: &SynthConfig,
) -> Result<(Meta, PathBuf, PathBuf)> {
    vcp_runner::data::resolve(spec, root, synth)
}

pub fn load_experiment(path: &Path) -> Result<ExperimentConfig> {
    ExperimentConfig::load(path).map_err(|e| anyhow::anyhow!(e))
}

/// CLIP weights of the backbone config: a file/directory, or seeded random weights of a preset.
pub fn backbone_weights(
    cfg: &vcp_model::config::BackboneConfig,
    device: &Device,
) -> Result<ClipWeights> {
    if cfg.weights.is_empty() {
        Ok(ClipWeights::from_preset(&cfg.preset, cfg.seed, device)
            .with_context(|| "backbone.preset")?)
    } else {
        Ok(ClipWeights::load(&cfg.weights, device)?)
    }
}

pub fn build_model(exp: &ExperimentConfig, device: &Device) -> Result<VcpModel> {
    let w = backbone_weights(&exp.backbone, device)?;
    VcpModel::new(&exp.model(), &w, exp.seed, device)
        .map_err(|e| anyhow::anyhow!("model config: {}", crate::util::first(&e)))
}

pub fn device(name: Option<&str>) -> Result<Device> {
    match name.unwrap_or("auto") {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        s if s.starts_with("cuda") => {
            let i: usize = s
                .strip_prefix("cuda:")
                .unwrap_or("0")
                .parse()
                .context("--device cuda:N")?;
            Device::new_cuda(i).map_err(|e| {
                anyhow::anyhow!(
                    "--device {s}: {} (build with --features cuda)",
                    crate::util::first(&e)
                )
            })
        }
        other => bail!("--device `{other}`: expected cpu, cuda, cuda:N or auto"),
    }
}

/// `--dtype` / `backbone.dtype` names → candle dtype.
pub fn dtype(name: &str) -> Result<candle_core::DType> {
    match name {
        "f32" => Ok(candle_core::DType::F32),
        "bf16" => Ok(candle_core::DType::BF16),
        "f16" => Ok(candle_core::DType::F16),
        other => bail!("--dtype `{other}`: expected f32, bf16 or f16"),
    }
}

//! What train / eval / predict share: experiment files, data specs, building the model.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use vcp_clip::{ClipConfig, ClipWeights};
use vcp_data::Meta;
use vcp_model::config::{ExperimentConfig, SynthConfig};
use vcp_model::VcpModel;

/// Cache folder for generated data and features (`$VCP_CACHE`, else `~/.cache/vcp-clip-rs`).
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VCP_CACHE") {
        return PathBuf::from(d);
    }
    std::env::var("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("."))
        .join(".cache/vcp-clip-rs")
}

/// Resolve `synth:<domain>` (generated on first use) or a meta.json path to (meta, meta path, root).
pub fn resolve_data(
    spec: &str,
    root: Option<&str>,
    synth: &SynthConfig,
) -> Result<(Meta, PathBuf, PathBuf)> {
    if let Some(domain) = spec.strip_prefix("synth:") {
        let known: Vec<&str> = vcp_data::synth::DOMAINS.iter().map(|(d, _)| *d).collect();
        if !known.contains(&domain) && domain != "all" {
            bail!(
                "data `{spec}`: unknown synthetic domain `{domain}` (known: {}, all)",
                known.join(", ")
            );
        }
        let dir = cache_dir().join(format!(
            "synth/v{}-s{}-n{}-k{}",
            vcp_data::synth::GENERATOR_VERSION,
            synth.seed,
            synth.size,
            synth.per_category
        ));
        let meta_path = if domain == "all" {
            dir.join("meta.json")
        } else {
            dir.join(format!("meta_{domain}.json"))
        };
        if !meta_path.exists() {
            eprintln!(
                "generating the synthetic benchmark into {} ...",
                dir.display()
            );
            let opts = vcp_data::synth::SynthOptions {
                seed: synth.seed,
                size: synth.size,
                per_category: synth.per_category,
            };
            vcp_data::synth::generate(&dir, &opts)?;
        }
        return Ok((Meta::load(&meta_path)?, meta_path, dir));
    }
    let p = PathBuf::from(spec);
    let meta = Meta::load(&p)?;
    let root = root
        .map(PathBuf::from)
        .unwrap_or_else(|| p.parent().map(Path::to_path_buf).unwrap_or_default());
    Ok((meta, p, root))
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
        let c = ClipConfig::preset(&cfg.preset).with_context(|| "backbone.preset")?;
        Ok(ClipWeights::random(&c, cfg.seed, device)?)
    } else {
        Ok(ClipWeights::load(&cfg.weights, device)?)
    }
}

pub fn build_model(exp: &ExperimentConfig, device: &Device) -> Result<VcpModel> {
    let w = backbone_weights(&exp.backbone, device)?;
    VcpModel::new(&exp.model(), &w, exp.seed, device)
        .map_err(|e| anyhow::anyhow!("model config: {}", crate::util::first(&e)))
}

/// `[B, 3, S, S]` tensor from a batch.
pub fn pixels(b: &vcp_data::dataset::Batch, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(
        &b.images,
        (b.len(), 3, b.size, b.size),
        device,
    )?)
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

//! What train / eval / predict share: experiment files, data specs, building the model.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};
use vcp_data::Meta;
use vcp_model::{Registry, VcpModel};
use vcp_runner::config::{ExperimentConfig, SynthConfig};

/// Resolve `synth:<domain>` (generated on first use) or a meta.json path to (meta, meta path, root).
pub fn resolve_data(
    spec: &str,
    root: Option<&str>,
    synth: &SynthConfig,
) -> Result<(Meta, PathBuf, PathBuf)> {
    vcp_runner::data::resolve(spec, root, synth)
}

pub fn load_experiment(reg: &Registry, path: &Path) -> Result<ExperimentConfig> {
    Ok(ExperimentConfig::load(reg, path)?)
}

pub use vcp_runner::config::backbone_weights;

pub fn build_model(reg: &Registry, exp: &ExperimentConfig, device: &Device) -> Result<VcpModel> {
    exp.build_model(reg, device)
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
                    vcp_clip::error::first_line(&e)
                )
            })
        }
        other => bail!("--device `{other}`: expected cpu, cuda, cuda:N or auto"),
    }
}

/// `--dtype` / `backbone.dtype` names → candle dtype (one parser: `ComputeDtype`'s).
pub fn dtype(name: &str) -> Result<candle_core::DType> {
    let d: vcp_model::config::ComputeDtype =
        name.parse().map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
    Ok(d.dtype())
}

/// `--threads N`: the number of compute threads (rayon's pool and candle's matmuls, which read
/// `RAYON_NUM_THREADS`), set once before any work. 0 or more than the machine's cores is an error.
pub fn set_threads(n: Option<usize>) -> anyhow::Result<()> {
    let Some(n) = n else {
        return Ok(());
    };
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    if n == 0 || n > cores {
        anyhow::bail!("--threads {n}: must be in 1..={cores} (the cores of this machine)");
    }
    // Still single-threaded here (called first thing in main): setting the variable is safe.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("--threads {n}: {e}"))
}

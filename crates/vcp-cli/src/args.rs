//! Flag groups shared by several commands (flattened into each command's `Args`), so that a
//! flag is spelled, documented and interpreted in one place.

use anyhow::Result;
use candle_core::Device;
use vcp_clip::{Activation, ClipWeights};
use vcp_runner::config::ExperimentConfig;

/// `--device` and `--dtype`: where the model runs and in what precision its frozen towers
/// compute (`train`, `eval`, `predict`, `ablate`, `bench`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N or auto (default: auto, the first GPU if there is one).
    #[arg(long)]
    pub device: Option<String>,
    /// Compute dtype of the frozen CLIP towers: f32, bf16 or f16 (mixed precision: LayerNorm,
    /// softmax, heads and losses stay f32). Overrides `backbone.dtype`. On a CPU the matmuls
    /// stay f32 (one note says so).
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
}

impl DeviceArgs {
    /// The device `--device` names (auto when not given).
    pub fn device(&self) -> Result<Device> {
        crate::common::device(self.device.as_deref())
    }

    /// `--dtype` as the experiment's `backbone.dtype`, when given.
    pub fn apply_dtype(&self, exp: &mut ExperimentConfig) -> Result<()> {
        if let Some(d) = &self.dtype {
            exp.model.backbone.dtype = d.parse().map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}

/// `--threads N` (`train`, `ablate`, `bench`, `pretrain-clip`): read by `main` before any work.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ThreadArgs {
    /// Cores to use (compute threads); default all. Results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `--clip` and `--activation`: a CLIP checkpoint read as it is (`features`, `text-embed`).
#[derive(clap::Args, Debug, Clone)]
pub struct ClipArgs {
    /// Hugging Face CLIP directory or OpenAI-format weight file (.safetensors/.pt/.pth); `tiny`
    /// or `tiny_pretrained` for the built-in models.
    #[arg(long)]
    pub clip: String,
    /// Override the checkpoint's MLP activation.
    #[arg(long, value_parser = ["gelu", "quick_gelu"])]
    pub activation: Option<String>,
}

impl ClipArgs {
    pub fn weights(&self, device: &Device) -> Result<ClipWeights> {
        crate::util::load_clip(&self.clip, device)
    }

    pub fn activation(&self) -> Result<Option<Activation>> {
        self.activation
            .as_deref()
            .map(|a| a.parse::<Activation>())
            .transpose()
            .map_err(Into::into)
    }
}

//! The pretraining configuration (`experiments/pretrain_tiny_clip.toml`), parsed strictly:
//! unknown keys are errors naming the key, the line and the file.

use serde::{Deserialize, Serialize};
use std::path::Path;
use vcp_clip::ClipConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Name of the model (the preset it becomes, e.g. `tiny_pretrained`).
    pub name: String,
    /// The architecture: a full CLIP configuration (both towers, joint dimension, activation).
    pub model: ClipConfig,
    pub corpus: CorpusConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusConfig {
    /// Stream seed of the training corpus (held-out pairs use `seed + 1_000_003`).
    pub seed: u64,
    /// Hard-negative pairs (one scene clean and defective) per batch; the rest are independent.
    pub pairs: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    /// Peak learning rate (after the linear warm-up; cosine decay to `min_lr_ratio * lr`).
    pub lr: f64,
    #[serde(default = "default_warmup")]
    pub warmup: usize,
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay, on matrices only (not on biases, LayerNorms, embeddings' rows
    /// of positions, class embedding or the logit scale), as CLIP.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Learning-rate multiplier of the logit scale (it moves slowly at the base rate).
    #[serde(default = "default_ls_mult")]
    pub logit_scale_lr_mult: f64,
    /// Seed of the initial weights.
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: usize,
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-out corpus samples for retrieval and zero-shot monitoring during training.
    #[serde(default = "default_heldout")]
    pub heldout: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            heldout: default_heldout(),
        }
    }
}

fn default_warmup() -> usize {
    200
}
fn default_min_lr_ratio() -> f64 {
    0.02
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.98]
}
fn default_eps() -> f64 {
    1e-6
}
fn default_wd() -> f64 {
    0.1
}
fn default_ls_mult() -> f64 {
    1.0
}
fn default_ckpt() -> usize {
    250
}
fn default_eval_every() -> usize {
    500
}
fn default_heldout() -> usize {
    256
}

impl PretrainConfig {
    /// Parse TOML text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &Path) -> anyhow::Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .map(|l| format!(", line {l}"))
                .unwrap_or_default();
            anyhow::anyhow!(
                "{}{line}: {}",
                origin.display(),
                e.message().lines().next().unwrap_or("")
            )
        })?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", origin.display()))?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::from_toml(&text, path)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.model
            .validate()
            .map_err(|e| anyhow::anyhow!("model: {e}"))?;
        let t = &self.train;
        if t.batch_size < 2 {
            anyhow::bail!("train.batch_size: a contrastive batch needs at least 2 pairs");
        }
        if t.steps == 0 {
            anyhow::bail!("train.steps must be positive");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            anyhow::bail!("train.lr must be a positive number");
        }
        if 2 * self.corpus.pairs > t.batch_size {
            anyhow::bail!(
                "corpus.pairs = {} needs a batch of at least {} (train.batch_size = {})",
                self.corpus.pairs,
                2 * self.corpus.pairs,
                t.batch_size
            );
        }
        if self.model.text.vocab_size != 49408 {
            anyhow::bail!("model.text.vocab_size must be 49408 (the CLIP BPE vocabulary)");
        }
        if t.checkpoint_every == 0 || t.eval_every == 0 {
            anyhow::bail!("train.checkpoint_every and train.eval_every must be positive");
        }
        Ok(())
    }

    /// Learning rate at `step` (0-based): linear warm-up, then cosine to `min_lr_ratio * lr`.
    pub fn lr_at(&self, step: usize) -> f64 {
        let t = &self.train;
        if step < t.warmup {
            return t.lr * (step + 1) as f64 / t.warmup as f64;
        }
        let span = (t.steps - t.warmup.min(t.steps)).max(1) as f64;
        let p = ((step - t.warmup) as f64 / span).min(1.0);
        let min = t.lr * t.min_lr_ratio;
        min + (t.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

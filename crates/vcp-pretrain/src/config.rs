//! The pretraining configuration (`experiments/pretrain_tiny_clip.toml`), parsed strictly:
//! unknown keys are errors naming the key, the line and the file.

use serde::{Deserialize, Serialize};
use std::path::Path;
use vcp_clip::ClipConfig;

/// ln(100): CLIP's clamp of the logit scale.
pub const LOGIT_SCALE_MAX: f64 = 4.605_170_185_988_092;

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
    /// Dense and state terms beside the contrastive one (v2); absent = the plain CLIP objective.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<ObjectiveConfig>,
    /// Warm start from trained weights instead of a random init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitConfig>,
}

/// The v2 objective: `InfoNCE + patch_weight * patch + state_weight * state`.
/// * patch: per patch token of the last block through `ln_post` and the projection (the
///   readout zero-shot maps use), logits `s_p * [cos(p, t_normal), cos(p, t_abnormal)]` against
///   the image's kind's two prompts, upsampled bilinearly (align corners, as the benchmark's
///   fusion) to the image size, two-way softmax, focal + Dice on both channels against the
///   corpus's exact defect mask (normal images: all normal). `s_p = exp(tau_p)`, `tau_p` a
///   parameter of its own (init `patch_scale_init`).
/// * state: cross-entropy of `state_scale * [cos(g, t_normal), cos(g, t_abnormal)]` on the
///   global embedding against the image's label.
///
/// Kinds in `heldout_kinds` still appear in captions (the contrastive term) but contribute
/// nothing to the patch and state terms: zero-shot on them stays zero-shot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    #[serde(default = "default_patch_weight")]
    pub patch_weight: f64,
    #[serde(default = "default_state_weight")]
    pub state_weight: f64,
    /// ln of the patch term's initial logit scale (ln(1/0.07)); learnable.
    #[serde(default = "default_patch_scale_init")]
    pub patch_scale_init: f64,
    /// Fixed logit scale of the state term (1/0.07, AnomalyCLIP's).
    #[serde(default = "default_state_scale")]
    pub state_scale: f64,
    /// `{}` is replaced by the kind.
    #[serde(default = "default_normal_prompt")]
    pub normal_prompt: String,
    #[serde(default = "default_abnormal_prompt")]
    pub abnormal_prompt: String,
    /// Kinds kept out of the patch and state terms (the benchmark's unseen domain `beta`).
    #[serde(default = "default_heldout_kinds")]
    pub heldout_kinds: Vec<String>,
}

/// Warm start: `weights` is `tiny_pretrained` (the embedded preset) or a `.safetensors` file
/// exported by `vcp pretrain-clip`; its architecture must equal `model` except the vision
/// input size (the positional embedding is then resized, antialiased bicubic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    pub weights: String,
}

fn default_patch_weight() -> f64 {
    1.0
}
fn default_state_weight() -> f64 {
    0.5
}
fn default_patch_scale_init() -> f64 {
    (1.0f64 / 0.07).ln()
}
fn default_state_scale() -> f64 {
    1.0 / 0.07
}
fn default_normal_prompt() -> String {
    "a photo of a flawless {}".into()
}
fn default_abnormal_prompt() -> String {
    "a photo of a damaged {}".into()
}
fn default_heldout_kinds() -> Vec<String> {
    ["grid", "leather", "tile", "bottle", "capsule"]
        .map(String::from)
        .to_vec()
}

impl ObjectiveConfig {
    pub fn is_heldout(&self, kind: &str) -> bool {
        self.heldout_kinds.iter().any(|k| k == kind)
    }
    pub fn prompts(&self, kind: &str) -> [String; 2] {
        [
            self.normal_prompt.replace("{}", kind),
            self.abnormal_prompt.replace("{}", kind),
        ]
    }
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
    /// A final phase at another input size (CLIPA: train small, finish briefly at the size of
    /// use): the last `final_steps` steps run at `final_size` px, the positional embedding
    /// resized when the phase starts (its AdamW moments restarted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_size: Option<usize>,
    #[serde(default)]
    pub final_steps: usize,
    /// Batch size of the final phase (default `batch_size`): a larger input costs more per
    /// image, so the same wall time buys fewer but larger images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_batch_size: Option<usize>,
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
        let text = vcp_data::io::read_regular_string(path, 16 << 20)?;
        Self::from_toml(&text, path)
    }

    // Long because it is a flat list of independent checks, one per recipe key, in the file's
    // order.
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
        if t.lr > 1.0 {
            anyhow::bail!("train.lr = {}: must be at most 1", t.lr);
        }
        for (i, b) in t.betas.iter().enumerate() {
            if !(b.is_finite() && (0.0..1.0).contains(b)) {
                anyhow::bail!("train.betas[{i}] = {b}: must be a number in [0, 1)");
            }
        }
        if !(t.eps.is_finite() && t.eps > 0.0 && t.eps <= 1.0) {
            anyhow::bail!("train.eps = {}: must be a number in (0, 1]", t.eps);
        }
        if !(t.weight_decay.is_finite() && (0.0..=10.0).contains(&t.weight_decay)) {
            anyhow::bail!(
                "train.weight_decay = {}: must be a number in [0, 10]",
                t.weight_decay
            );
        }
        if !(t.min_lr_ratio.is_finite() && (0.0..=1.0).contains(&t.min_lr_ratio)) {
            anyhow::bail!(
                "train.min_lr_ratio = {}: must be a number in [0, 1]",
                t.min_lr_ratio
            );
        }
        if !(t.logit_scale_lr_mult.is_finite() && (0.0..=1000.0).contains(&t.logit_scale_lr_mult)) {
            anyhow::bail!(
                "train.logit_scale_lr_mult = {}: must be a number in [0, 1000]",
                t.logit_scale_lr_mult
            );
        }
        if t.batch_size > 65536 || t.steps > 100_000_000 {
            anyhow::bail!(
                "train.batch_size (at most 65536) or train.steps (at most 10^8) too large"
            );
        }
        if self.eval.heldout < 2 || self.eval.heldout > 65536 {
            anyhow::bail!(
                "eval.heldout = {}: must be in 2..=65536 (retrieval needs at least two samples)",
                self.eval.heldout
            );
        }
        if self.model.text.vocab_size != 49408 {
            anyhow::bail!("model.text.vocab_size must be 49408 (the CLIP BPE vocabulary)");
        }
        if t.checkpoint_every == 0 || t.eval_every == 0 {
            anyhow::bail!("train.checkpoint_every and train.eval_every must be positive");
        }
        if let Some(fs) = t.final_size {
            let p = self.model.vision.patch_size;
            if fs == 0 || fs % p != 0 || fs > 1024 {
                anyhow::bail!(
                    "train.final_size = {fs}: must be a positive multiple of the patch size {p}, at most 1024"
                );
            }
            if t.final_steps == 0 || t.final_steps > t.steps {
                anyhow::bail!(
                    "train.final_steps = {}: must be in 1..={} (train.steps) when train.final_size is set",
                    t.final_steps,
                    t.steps
                );
            }
            if let Some(fb) = t.final_batch_size {
                if fb < 2 * self.corpus.pairs.max(1) || fb > t.batch_size.max(2 * self.corpus.pairs)
                {
                    anyhow::bail!(
                        "train.final_batch_size = {fb}: must be in {}..={} (2 x corpus.pairs up to train.batch_size)",
                        2 * self.corpus.pairs.max(1),
                        t.batch_size
                    );
                }
            }
        } else if t.final_steps != 0 || t.final_batch_size.is_some() {
            anyhow::bail!("train.final_steps and train.final_batch_size need train.final_size");
        }
        if let Some(o) = &self.objective {
            for (k, v) in [
                ("objective.patch_weight", o.patch_weight),
                ("objective.state_weight", o.state_weight),
            ] {
                if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                    anyhow::bail!("{k} = {v}: must be a number in [0, 100]");
                }
            }
            if !(o.patch_scale_init.is_finite() && o.patch_scale_init.abs() <= LOGIT_SCALE_MAX) {
                anyhow::bail!(
                    "objective.patch_scale_init = {}: must be a finite log-scale in [-ln 100, ln 100]",
                    o.patch_scale_init
                );
            }
            if !(o.state_scale.is_finite() && o.state_scale > 0.0 && o.state_scale <= 100.0) {
                anyhow::bail!(
                    "objective.state_scale = {}: must be in (0, 100]",
                    o.state_scale
                );
            }
            for (k, p) in [
                ("objective.normal_prompt", &o.normal_prompt),
                ("objective.abnormal_prompt", &o.abnormal_prompt),
            ] {
                if p.matches("{}").count() != 1 {
                    anyhow::bail!("{k} = {p:?}: must contain `{{}}` (the kind) exactly once");
                }
            }
            let kinds = vcp_data::corpus::kinds();
            for k in &o.heldout_kinds {
                if !kinds.contains(&k.as_str()) {
                    anyhow::bail!("objective.heldout_kinds: `{k}` is not a corpus kind");
                }
            }
        }
        Ok(())
    }

    /// The architecture at `step`: `model`, at `train.final_size` px during the final phase.
    pub fn model_at(&self, step: usize) -> ClipConfig {
        let mut m = self.model.clone();
        if let Some(fs) = self.train.final_size {
            if step >= self.final_phase_start() {
                m.vision.image_size = fs;
            }
        }
        m
    }

    /// The architecture of the weights after `done` steps: that of the last step taken (the
    /// final phase's input size takes effect when its first step begins, not before).
    pub fn model_after(&self, done: usize) -> ClipConfig {
        self.model_at(done.saturating_sub(1))
    }

    /// The batch size at `step`: `train.final_batch_size` during the final phase.
    pub fn batch_at(&self, step: usize) -> usize {
        match self.train.final_batch_size {
            Some(b) if step >= self.final_phase_start() => b,
            _ => self.train.batch_size,
        }
    }

    /// First step (0-based) of the final phase (`train.steps` when there is none).
    pub fn final_phase_start(&self) -> usize {
        match self.train.final_size {
            Some(_) => self.train.steps - self.train.final_steps,
            None => self.train.steps,
        }
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

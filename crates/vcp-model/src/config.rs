//! Model configuration: the backbone, the assembly's settings (temperature, fusion, few-shot),
//! and one [`SlotConfig`] table per component slot whose keys the registered kind parses
//! (unknown keys rejected). A TOML file in `experiments/` mirrors these tables; presets express
//! VCP-CLIP and its peers as values of the same slots.

use serde::{Deserialize, Serialize};
pub use vcp_core::ops::Upsample;
pub use vcp_core::{Registry, SlotConfig, SlotError};
pub use vcp_fewshot::FewShotConfig;

/// The frozen CLIP backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    /// A preset name (`vit_l_14_336`, `vit_b_16`, `tiny`, ...) used when `weights` is empty (random
    /// weights, seeded), or a description of what `weights` holds.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// HF directory or OpenAI-format file; empty = random weights of `preset`.
    #[serde(default)]
    pub weights: String,
    /// Seed of random backbone weights.
    #[serde(default)]
    pub seed: u64,
    /// Input size (positional embedding resized), e.g. 518.
    pub image_size: usize,
    /// Tapped blocks (1-based), e.g. [6, 12, 18, 24].
    pub taps: Vec<usize>,
    /// MLP activation override (`gelu` reproduces the VCP-CLIP reference on OpenAI weights).
    #[serde(default)]
    pub activation: Option<vcp_clip::Activation>,
    /// Attention of the frozen image tower (dense-CLIP variants).
    #[serde(default)]
    pub attention: VisionAttention,
    /// Number of final blocks the dense path covers (`value_value` and `surgery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_blocks: Option<usize>,
    /// Compute dtype of the frozen towers (mixed precision; LayerNorm, softmax and losses in f32).
    #[serde(default, skip_serializing_if = "ComputeDtype::is_f32")]
    pub dtype: ComputeDtype,
}

/// The image tower's attention. The variants other than `standard` run a second, dense path
/// over the last blocks whose taps replace CLIP's there (`vcp_clip::DensePath`); the global
/// embedding is always CLIP's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisionAttention {
    /// CLIP's own query-key attention in every block.
    #[default]
    Standard,
    /// AnomalyCLIP (DPAM): value-value attention replaces query-key attention in the last
    /// `dense_blocks` blocks (residuals and MLPs kept).
    ValueValue,
    /// CLIP Surgery: a parallel path accumulating value-value attention (no MLP) over the last
    /// `dense_blocks` blocks.
    Surgery,
    /// ClearCLIP: the last block with query-query attention, no residual, no MLP.
    ClearClip,
    /// MaskCLIP-style self-only attention (each token keeps its own value) in the last
    /// `dense_blocks` blocks (residuals and MLPs kept).
    SelfOnly,
}

/// Compute dtype of the frozen CLIP towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl ComputeDtype {
    pub fn is_f32(&self) -> bool {
        *self == ComputeDtype::F32
    }
    pub fn dtype(&self) -> candle_core::DType {
        match self {
            ComputeDtype::F32 => candle_core::DType::F32,
            ComputeDtype::Bf16 => candle_core::DType::BF16,
            ComputeDtype::F16 => candle_core::DType::F16,
        }
    }
}

impl std::str::FromStr for ComputeDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(ComputeDtype::F32),
            "bf16" => Ok(ComputeDtype::Bf16),
            "f16" => Ok(ComputeDtype::F16),
            o => Err(format!("dtype `{o}`: expected f32, bf16 or f16")),
        }
    }
}

fn default_preset() -> String {
    "tiny".into()
}

/// Which layers' maps are combined and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerReduce {
    Mean,
    Sum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    None,
    PerImage,
    PerCategory,
}

/// Image-level score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ImageScoreConfig {
    /// Sum over branches of the mean of each branch map's top-k pixels (VCP-CLIP: k = 2000 at
    /// 518 px). Give `k` (pixels) or `fraction` (of the map's pixels, resolution-independent:
    /// the paper's 2000 of 518^2 is 0.00745), exactly one.
    TopkMean {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        k: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fraction: Option<f64>,
    },
    /// Max of the final map.
    Max,
    /// Probability of the abnormal state from the class token: softmax over the two states of
    /// `exp(tau) * cos(global embedding, text)` (APRIL-GAN / AnomalyCLIP zero-shot image score).
    ClsText,
}

impl ImageScoreConfig {
    /// `k` pixels, or `fraction` of `pixels` rounded (at least 1).
    pub fn topk_pixels(k: Option<usize>, fraction: Option<f64>, pixels: usize) -> usize {
        match (k, fraction) {
            (Some(k), _) => k,
            (None, Some(f)) => ((f * pixels as f64).round() as usize).clamp(1, pixels.max(1)),
            (None, None) => pixels,
        }
    }

    /// Exactly one of `k` / `fraction`, each in range (the key named in the error).
    pub fn validate(&self) -> Result<(), String> {
        if let ImageScoreConfig::TopkMean { k, fraction } = self {
            match (k, fraction) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(
                        "fusion.image_score: give exactly one of `k` (pixels) and `fraction` (of the map)"
                            .into(),
                    )
                }
                (Some(0), _) => return Err("fusion.image_score.k must be at least 1".into()),
                (_, Some(f)) if !(f.is_finite() && *f > 0.0 && *f <= 1.0) => {
                    return Err(format!(
                        "fusion.image_score.fraction = {f}: must be in (0, 1]"
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Map fusion and post-processing (VCP-CLIP test.py / calcuate_metric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusionConfig {
    pub layer_reduce: LayerReduce,
    /// Weight of the raw (text-patch) branch; the refined (Post-VCP) branch gets `1 - raw_weight`
    /// when it exists.
    pub raw_weight: f64,
    pub upsample: Upsample,
    /// Gaussian smoothing sigma in pixels (0 = off); truncate 4, reflect borders (scipy).
    pub sigma: f64,
    pub normalize: Normalize,
    pub image_score: ImageScoreConfig,
}

/// Text-patch similarity scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperatureConfig {
    /// Initial log-scale (reference: ln(1/0.07)).
    pub init: f64,
    pub learnable: bool,
}

/// The whole model: the backbone, one table per component slot (`kind` plus the kind's keys,
/// parsed by the registry), and the settings of the assembly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub backbone: BackboneConfig,
    pub prompt: SlotConfig,
    pub deep_prompt: SlotConfig,
    pub category: SlotConfig,
    pub refiner: SlotConfig,
    pub head: SlotConfig,
    pub temperature: TemperatureConfig,
    pub fusion: FusionConfig,
    /// Few-shot references (`kind` may be left out: `references`); absent = zero-shot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fewshot: Option<SlotConfig>,
    /// Training-loss terms beyond VCP-CLIP's (absent = VCP-CLIP's focal + Dice per map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossConfig>,
}

/// The training loss's terms. VCP-CLIP (absent table): per map, focal + Dice(anomalous, mask).
/// AnomalyCLIP's `train.py`: `4 x` per map (focal + Dice(anomalous, mask) + Dice(normal,
/// 1 - mask)) plus the image-level cross-entropy of `[cos(g, t_n), cos(g, t_a)] / 0.07`
/// (`g` the normalised global embedding, the scale is the model's text-patch temperature).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    /// Factor on the sum of the map terms (AnomalyCLIP's `lam = 4`).
    #[serde(default = "one")]
    pub map_weight: f64,
    /// Also Dice(normal channel, 1 - mask) on every map.
    #[serde(default)]
    pub normal_dice: bool,
    /// Weight of the image-level cross-entropy of the class token against the two text
    /// embeddings (0 = off); needs a head without its own image logit.
    #[serde(default)]
    pub image_ce: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            map_weight: 1.0,
            normal_dice: false,
            image_ce: 0.0,
        }
    }
}

/// Largest input size a backbone runs at (the paper's 518 is far inside; larger sizes only
/// exhaust memory).
pub const MAX_IMAGE_SIZE: usize = 2048;

impl ModelConfig {
    /// Numbers that cannot work, found before anything is built or trained; the error names
    /// the key (`fusion.sigma = inf: ...`).
    pub fn check_values(&self) -> Result<(), String> {
        let b = &self.backbone;
        if !(1..=MAX_IMAGE_SIZE).contains(&b.image_size) {
            return Err(format!(
                "backbone.image_size = {}: must be in 1..={MAX_IMAGE_SIZE}",
                b.image_size
            ));
        }
        if let Some(l) = &self.loss {
            for (k, v) in [
                ("loss.map_weight", l.map_weight),
                ("loss.image_ce", l.image_ce),
            ] {
                if !(v.is_finite() && (0.0..=1000.0).contains(&v)) {
                    return Err(format!("{k} = {v}: must be a number in [0, 1000]"));
                }
            }
        }
        if b.taps.len() > 256 {
            return Err(format!(
                "backbone.taps: {} taps (at most 256)",
                b.taps.len()
            ));
        }
        if let Some(n) = b.dense_blocks {
            if n > 256 {
                return Err(format!("backbone.dense_blocks = {n}: at most 256"));
            }
        }
        let f = &self.fusion;
        if !(f.raw_weight.is_finite() && (0.0..=1.0).contains(&f.raw_weight)) {
            return Err(format!(
                "fusion.raw_weight = {}: must be in [0, 1]",
                f.raw_weight
            ));
        }
        if !(f.sigma.is_finite() && (0.0..=256.0).contains(&f.sigma)) {
            return Err(format!(
                "fusion.sigma = {}: must be a number of pixels in [0, 256] (0 = no smoothing)",
                f.sigma
            ));
        }
        f.image_score.validate()?;
        let t = &self.temperature;
        if !(t.init.is_finite() && t.init.abs() <= 20.0) {
            return Err(format!(
                "temperature.init = {}: must be a finite log-scale in [-20, 20]",
                t.init
            ));
        }
        Ok(())
    }
}

/// The few-shot slot's default kind (experiment files may leave `kind` out).
pub const FEWSHOT_DEFAULT_KIND: &str = "references";

impl ModelConfig {
    /// Every slot's table parsed strictly by its kind and returned with the defaults filled in
    /// (what a run's hash and a checkpoint's metadata hold). Errors start with the slot's name.
    pub fn normalized(&self, reg: &Registry) -> Result<Self, SlotError> {
        Ok(Self {
            prompt: reg.prompt.normalize(&self.prompt)?,
            deep_prompt: reg.deep_prompt.normalize(&self.deep_prompt)?,
            category: reg.category.normalize(&self.category)?,
            refiner: reg.refiner.normalize(&self.refiner)?,
            head: reg.head.normalize(&self.head)?,
            fewshot: match &self.fewshot {
                None => None,
                Some(t) => {
                    let mut t = t.clone();
                    t.0.entry("kind")
                        .or_insert_with(|| toml::Value::String(FEWSHOT_DEFAULT_KIND.into()));
                    let n = reg.fewshot.normalize(&t)?;
                    // `k = 0` is zero-shot: the same run as no table at all.
                    (n.get("k").and_then(|v| v.as_integer()) != Some(0)).then_some(n)
                }
            },
            ..self.clone()
        })
    }
}

/// 1-based line of byte offset `pos`.
pub fn line_of(text: &str, pos: usize) -> usize {
    text[..pos.min(text.len())].matches('\n').count() + 1
}

/// The key named by a serde "unknown field `k`" message.
pub fn unknown_key(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// First line at or after byte `from` that sets `key` (`key = ...`, `"key" = ...`, or the last
/// part of a dotted key such as `"fusion.key" = ...`), 1-based.
pub fn key_line(text: &str, key: &str, from: usize) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if offset <= from {
            continue;
        }
        let l = line.trim_start();
        let sets = |prefix: &str| {
            l.strip_prefix(prefix)
                .map(|r| r.trim_start().starts_with('='))
                .unwrap_or(false)
        };
        let dotted = l.contains(&format!(".{key}\""))
            || l.contains(&format!("\"{key}\" ="))
            || l.contains(&format!("{{ {key} ="))
            || l.contains(&format!(", {key} ="));
        if sets(key) || sets(&format!("\"{key}\"")) || dotted {
            return Some(line_of(text, start));
        }
    }
    None
}

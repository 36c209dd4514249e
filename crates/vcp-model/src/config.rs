//! Model configuration: one serde enum per component slot, tagged by `kind`, unknown keys
//! rejected. A TOML file in `experiments/` mirrors these tables; presets express VCP-CLIP and
//! its peers as values of the same slots.

use serde::{Deserialize, Serialize};

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

/// One state word, or several synonyms whose prompt embeddings are averaged (an ensemble).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StateWords {
    One(String),
    Many(Vec<String>),
}

impl From<&str> for StateWords {
    fn from(s: &str) -> Self {
        StateWords::One(s.into())
    }
}

impl StateWords {
    pub fn words(&self) -> Vec<String> {
        match self {
            StateWords::One(s) => vec![s.clone()],
            StateWords::Many(v) => v.clone(),
        }
    }
}

fn default_preset() -> String {
    "tiny".into()
}

/// How the two text prompts (normal, abnormal) are built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PromptConfig {
    /// WinCLIP / APRIL-GAN: hand-written state words x templates with a class word, averaged.
    Handcrafted {
        /// Word filling `{}` in the state phrases (`object`, or the category name with `class_name = true`).
        #[serde(default = "default_object")]
        object: String,
        /// Use each category's own name instead of `object` (`_` → space).
        #[serde(default)]
        class_name: bool,
        #[serde(default = "default_normal_states")]
        normal_states: Vec<String>,
        #[serde(default = "default_abnormal_states")]
        abnormal_states: Vec<String>,
        #[serde(default = "default_templates")]
        templates: Vec<String>,
    },
    /// Unified text prompt (VCP-CLIP §3): "a photo of a [state] [v1..vr]", category tokens from the
    /// `category` slot replace `<|class|>`.
    Utp {
        #[serde(default = "default_utp_template")]
        template: String,
        /// A word or a list of synonyms (ensembled: mean of the normalised embeddings).
        #[serde(default = "default_good")]
        normal_state: StateWords,
        #[serde(default = "default_damaged")]
        abnormal_state: StateWords,
        /// Make the state words' token embeddings learnable (initialised from the words).
        #[serde(default, skip_serializing_if = "is_false")]
        learnable_states: bool,
    },
    /// AnomalyCLIP-style object-agnostic prompts: `n_ctx` learnable vectors per state before the
    /// words ("[V..] object" / "[W..] damaged object").
    LearnedContext {
        #[serde(default = "default_n_ctx")]
        n_ctx: usize,
        #[serde(default = "default_object")]
        normal_words: String,
        #[serde(default = "default_damaged_object")]
        abnormal_words: String,
    },
}

fn default_object() -> String {
    "object".into()
}
fn default_damaged_object() -> String {
    "damaged object".into()
}
fn default_good() -> StateWords {
    StateWords::One("good".into())
}
fn default_damaged() -> StateWords {
    StateWords::One("damaged".into())
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn default_utp_template() -> String {
    "a photo of a {state} <|class|>".into()
}
fn default_n_ctx() -> usize {
    12
}
pub fn default_normal_states() -> Vec<String> {
    [
        "{}",
        "flawless {}",
        "perfect {}",
        "unblemished {}",
        "{} without flaw",
        "{} without defect",
        "{} without damage",
    ]
    .map(String::from)
    .to_vec()
}
pub fn default_abnormal_states() -> Vec<String> {
    [
        "damaged {}",
        "broken {}",
        "{} with flaw",
        "{} with defect",
        "{} with damage",
    ]
    .map(String::from)
    .to_vec()
}
pub fn default_templates() -> Vec<String> {
    [
        "a bad photo of a {}.",
        "a low resolution photo of the {}.",
        "a bad photo of the {}.",
        "a cropped photo of the {}.",
        "a bright photo of a {}.",
        "a dark photo of the {}.",
        "a photo of my {}.",
        "a photo of the cool {}.",
        "a close-up photo of a {}.",
        "a black and white photo of the {}.",
        "a bright photo of the {}.",
        "a cropped photo of a {}.",
        "a jpeg corrupted photo of a {}.",
        "a blurry photo of the {}.",
        "a photo of the {}.",
        "a good photo of the {}.",
        "a photo of one {}.",
        "a close-up photo of the {}.",
        "a photo of a {}.",
        "a low resolution photo of a {}.",
        "a photo of a large {}.",
        "a blurry photo of a {}.",
        "a jpeg corrupted photo of the {}.",
        "a good photo of a {}.",
        "a photo of the small {}.",
        "a photo of the large {}.",
        "a black and white photo of a {}.",
        "a dark photo of a {}.",
        "a photo of a cool {}.",
        "a photo of a small {}.",
        "there is a {} in the scene.",
        "there is the {} in the scene.",
        "this is a {} in the scene.",
        "this is the {} in the scene.",
        "this is one {} in the scene.",
    ]
    .map(String::from)
    .to_vec()
}

/// Deep text prompts (DTP, VCP-CLIP §3.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeepPromptConfig {
    None,
    Dtp {
        /// Learnable tokens per layer (n).
        #[serde(default = "one")]
        tokens: usize,
        /// Layers after the first that get their own tokens (reference: text layers - 1).
        depth: usize,
        #[serde(default = "default_dropout")]
        dropout: f64,
    },
}

fn one() -> usize {
    1
}
fn default_dropout() -> f64 {
    0.1
}

/// The category tokens that replace `<|class|>` in a UTP prompt (Pre-VCP, VCP-CLIP §3.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CategoryConfig {
    /// No learned category tokens (hand-crafted or learned-context prompts name the object).
    None,
    /// Learnable, image-independent `[v1..vr]` (pure UTP).
    Static {
        #[serde(default = "two")]
        tokens: usize,
    },
    /// Pre-VCP: learnable queries + a map of the global image embedding.
    PreVcp {
        #[serde(default = "two")]
        tokens: usize,
        #[serde(default)]
        map: GlobalMap,
    },
}

fn two() -> usize {
    2
}

/// How Pre-VCP maps the global embedding to `r` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalMap {
    /// The reference: Conv1d(1 → r, kernel 3, padding 1) along the embedding dimension.
    #[default]
    Conv1d,
    /// Linear(D → r·D) (the MLP alternative left commented in the reference).
    Linear,
}

/// Post-VCP: text embeddings attend over dense patch features (VCP-CLIP §3.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RefinerConfig {
    Identity,
    PostVcp {
        #[serde(default = "default_heads")]
        heads: usize,
        /// The reference computes `dim^-0.5` but never applies it.
        #[serde(default)]
        scaled: bool,
    },
}

fn default_heads() -> usize {
    8
}

/// Patch tokens → joint space for the text-patch map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HeadConfig {
    /// A trainable Linear(W → D) per tapped layer (APRIL-GAN, VCP-CLIP).
    LinearProj,
    /// CLIP's own `ln_post` + projection, frozen (WinCLIP-style training-free maps).
    ClipProj,
    /// DETR-style decoder: learnable queries cross-attend over the tapped patch features; two
    /// state queries give the maps (query-patch similarity), an image query the image logit
    /// (trained with BCE). Replaces the text-patch map (and the refiner).
    Decoder {
        #[serde(default = "default_queries")]
        queries: usize,
        #[serde(default = "two")]
        layers: usize,
        #[serde(default = "default_decoder_heads")]
        heads: usize,
        #[serde(default = "default_decoder_dim")]
        dim: usize,
        /// Add the (normal, abnormal) text embeddings to the two state queries.
        #[serde(default)]
        text_queries: bool,
    },
}

fn default_queries() -> usize {
    8
}
fn default_decoder_heads() -> usize {
    4
}
fn default_decoder_dim() -> usize {
    128
}

/// Few-shot references: `k` normal images of the target category (its `train` split), drawn
/// with `seed` mixed with the run's seed; the images used are recorded with the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FewShotConfig {
    /// Reference images per category (0 = zero-shot).
    #[serde(default)]
    pub k: usize,
    #[serde(default)]
    pub seed: u64,
    /// Weight of the patch memory-bank map in the final map (WinCLIP+ / APRIL-GAN few-shot):
    /// `(1 - w) zero_shot + w (1 - max cos(patch, bank))`; 0 = off.
    #[serde(default)]
    pub memory_bank: f64,
    /// Reference-conditioned normal prompt: the normal text embedding of each layer becomes
    /// `normalize((1 - a) t_normal + a pooled(refs))`, with the references' patch features mapped
    /// by the patch head and averaged; 0 = off, 1 = replaced.
    #[serde(default)]
    pub normal_prompt: f64,
}

impl FewShotConfig {
    pub fn is_off(&self) -> bool {
        self.k == 0
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upsample {
    /// Bilinear, `align_corners = True` (the reference).
    BilinearAlignCorners,
    /// Bilinear, `align_corners = False`.
    Bilinear,
}

/// Image-level score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ImageScoreConfig {
    /// Sum over branches of the mean of each branch map's top-k pixels (VCP-CLIP: k = 2000).
    TopkMean { k: usize },
    /// Max of the final map.
    Max,
    /// Probability of the abnormal state from the class token: softmax over the two states of
    /// `exp(tau) * cos(global embedding, text)` (APRIL-GAN / AnomalyCLIP zero-shot image score).
    ClsText,
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

/// The whole model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub backbone: BackboneConfig,
    pub prompt: PromptConfig,
    pub deep_prompt: DeepPromptConfig,
    pub category: CategoryConfig,
    pub refiner: RefinerConfig,
    pub head: HeadConfig,
    pub temperature: TemperatureConfig,
    pub fusion: FusionConfig,
    #[serde(default, skip_serializing_if = "FewShotConfig::is_off")]
    pub fewshot: FewShotConfig,
}

/// Training settings (reference train.py / train.sh).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A meta.json path, or `synth:<domain>` for the built-in benchmark. Its `test` split is
    /// used, as in the reference (train on the auxiliary dataset's test split).
    pub data: String,
    /// Dataset root (default: the meta file's folder).
    #[serde(default)]
    pub root: Option<String>,
    pub epochs: usize,
    pub batch_size: usize,
    /// Learning rate of everything but the temperatures (reference 4e-5 from VisA, 2e-5 from MVTec).
    pub lr: f64,
    /// Learning rate of the temperatures (reference 0.01).
    pub lr_temperature: f64,
    /// Adam betas (reference 0.5, 0.999).
    pub betas: [f64; 2],
    /// Reference albumentations-style augmentation.
    #[serde(default)]
    pub augment: bool,
    /// Probability of replacing a sample by a 2x2 mosaic of four anomalous images of its category
    /// (the reference uses 0.2 when training on MVTec AD, 0 on VisA).
    #[serde(default)]
    pub mosaic_rate: f64,
    /// Images per backward pass (default: the whole batch). The loss is a weighted sum over
    /// images, so chunks give the same gradient while holding only one chunk's upsampled maps
    /// (the reference needs 24 GB at batch 32 and 518 px because it keeps all of them).
    #[serde(default)]
    pub loss_chunk: Option<usize>,
    /// Categories of `val_data` for the per-epoch validation log (pixel AP), empty = none.
    #[serde(default)]
    pub val_data: Option<String>,
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// A meta.json path or `synth:<domain>`; its `test` split is scored.
    pub data: String,
    #[serde(default)]
    pub root: Option<String>,
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
}

fn default_eval_batch() -> usize {
    8
}

/// Settings of the built-in synthetic benchmark (`synth:<domain>` data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_synth_size")]
    pub size: usize,
    #[serde(default = "default_synth_k")]
    pub per_category: usize,
}

fn default_synth_size() -> usize {
    128
}
fn default_synth_k() -> usize {
    12
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            size: default_synth_size(),
            per_category: default_synth_k(),
        }
    }
}

/// One experiment file: the model's slots as top-level tables, plus `[train]`, `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    pub backbone: BackboneConfig,
    pub prompt: PromptConfig,
    pub deep_prompt: DeepPromptConfig,
    pub category: CategoryConfig,
    pub refiner: RefinerConfig,
    pub head: HeadConfig,
    pub temperature: TemperatureConfig,
    pub fusion: FusionConfig,
    #[serde(default, skip_serializing_if = "FewShotConfig::is_off")]
    pub fewshot: FewShotConfig,
    pub train: Option<TrainConfig>,
    pub eval: Option<EvalConfig>,
    #[serde(default)]
    pub synth: SynthConfig,
}

impl ExperimentConfig {
    pub fn model(&self) -> ModelConfig {
        ModelConfig {
            backbone: self.backbone.clone(),
            prompt: self.prompt.clone(),
            deep_prompt: self.deep_prompt.clone(),
            category: self.category.clone(),
            refiner: self.refiner.clone(),
            head: self.head.clone(),
            temperature: self.temperature.clone(),
            fusion: self.fusion.clone(),
            fewshot: self.fewshot.clone(),
        }
    }

    pub fn from_model(name: &str, m: ModelConfig) -> Self {
        Self {
            name: name.into(),
            seed: 0,
            backbone: m.backbone,
            prompt: m.prompt,
            deep_prompt: m.deep_prompt,
            category: m.category,
            refiner: m.refiner,
            head: m.head,
            temperature: m.temperature,
            fusion: m.fusion,
            fewshot: m.fewshot,
            train: None,
            eval: None,
            synth: SynthConfig::default(),
        }
    }

    /// Parse a TOML experiment; errors name the file and the offending key.
    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().lines().next().unwrap_or("").to_string();
            let line = e.span().map(|s| {
                let start = s.start.min(text.len());
                // An unknown key's span covers its whole table: name the key's own line.
                unknown_key(&msg)
                    .and_then(|k| key_line(text, k, start))
                    .unwrap_or_else(|| line_of(text, start))
            });
            let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            format!("{}: {msg}{at}", path.display())
        })
    }

    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_toml(&text, path)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
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

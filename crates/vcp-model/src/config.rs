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
        #[serde(default = "default_good")]
        normal_state: String,
        #[serde(default = "default_damaged")]
        abnormal_state: String,
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
fn default_good() -> String {
    "good".into()
}
fn default_damaged() -> String {
    "damaged".into()
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
}

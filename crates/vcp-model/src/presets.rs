//! VCP-CLIP and its peers as values of the same slots (see `config.rs`), plus the component
//! ablation of the paper (UTP baseline → +DTP → +Pre-VCP → +Post-VCP). Written once: an
//! experiment file's variant says `preset = "april_gan"` to get the same tables
//! ([`slot_tables`]).

use crate::config::*;

/// A slot table from its kind and TOML keys (written in the component's own words).
fn slot(kind: &str, keys: &str) -> SlotConfig {
    let mut s = SlotConfig::parse(keys).expect("preset tables are valid TOML");
    s.0.insert("kind".into(), toml::Value::String(kind.into()));
    s
}

/// The backbone of the reference: OpenAI ViT-L/14-336 at 518 px, taps 6/12/18/24, exact GELU.
pub fn vit_l_14_336_at_518(weights: &str) -> BackboneConfig {
    BackboneConfig {
        preset: "vit_l_14_336".into(),
        weights: weights.into(),
        seed: 0,
        image_size: 518,
        taps: vec![6, 12, 18, 24],
        activation: Some(vcp_clip::Activation::Gelu),
        attention: VisionAttention::Standard,
        dense_blocks: None,
        dtype: Default::default(),
    }
}

/// The tiny random backbone of tests and the embedded default.
pub fn tiny(image_size: usize) -> BackboneConfig {
    BackboneConfig {
        preset: "tiny".into(),
        weights: String::new(),
        seed: 0,
        image_size,
        taps: vec![3, 6, 9, 12],
        activation: None,
        attention: VisionAttention::Standard,
        dense_blocks: None,
        dtype: Default::default(),
    }
}

fn vcp_fusion() -> FusionConfig {
    FusionConfig {
        layer_reduce: LayerReduce::Mean,
        raw_weight: 0.2,
        upsample: Upsample::BilinearAlignCorners,
        sigma: 8.0,
        normalize: Normalize::PerCategory,
        image_score: ImageScoreConfig::TopkMean {
            k: Some(2000),
            fraction: None,
        },
    }
}

fn ln_inv_007() -> f64 {
    (1.0f64 / 0.07).ln()
}

/// VCP-CLIP as released: UTP + DTP (n = 1, all text layers) + Pre-VCP (conv1d, r = 2) + Post-VCP.
pub fn vcp_clip(backbone: BackboneConfig, text_layers: usize) -> ModelConfig {
    ModelConfig {
        backbone,
        prompt: slot(
            "utp",
            r#"template = "a photo of a {state} <|class|>"
normal_state = "good"
abnormal_state = "damaged""#,
        ),
        deep_prompt: slot(
            "dtp",
            &format!("tokens = 1\ndepth = {}\ndropout = 0.1", text_layers - 1),
        ),
        category: slot("pre_vcp", "tokens = 2\nmap = \"conv1d\""),
        refiner: slot("post_vcp", "heads = 8\nscaled = false"),
        head: slot("linear_proj", ""),
        temperature: TemperatureConfig {
            init: ln_inv_007(),
            learnable: true,
        },
        fusion: vcp_fusion(),
        fewshot: None,
        loss: None,
    }
}

/// The paper's component ablation, as named variants of [`vcp_clip`].
pub fn component_ablation(
    backbone: BackboneConfig,
    text_layers: usize,
) -> Vec<(&'static str, ModelConfig)> {
    let full = vcp_clip(backbone, text_layers);
    let mut utp = full.clone();
    utp.deep_prompt = slot("none", "");
    utp.category = slot("static", "tokens = 2");
    utp.refiner = slot("identity", "");
    utp.fusion.raw_weight = 1.0;
    let mut dtp = utp.clone();
    dtp.deep_prompt = full.deep_prompt.clone();
    let mut pre = dtp.clone();
    pre.category = full.category.clone();
    vec![
        ("utp", utp),
        ("utp+dtp", dtp),
        ("utp+dtp+pre_vcp", pre),
        ("vcp_clip", full),
    ]
}

/// APRIL-GAN-style: hand-crafted state x template ensemble with class names, a trainable Linear
/// per layer, fixed scale 100, maps summed over layers, no prompt learning.
pub fn april_gan(backbone: BackboneConfig) -> ModelConfig {
    ModelConfig {
        backbone,
        // The state phrases and templates are the kind's defaults (WinCLIP's lists).
        prompt: slot("handcrafted", "class_name = true"),
        deep_prompt: slot("none", ""),
        category: slot("none", ""),
        refiner: slot("identity", ""),
        head: slot("linear_proj", ""),
        temperature: TemperatureConfig {
            init: 100f64.ln(),
            learnable: false,
        },
        fusion: FusionConfig {
            layer_reduce: LayerReduce::Sum,
            raw_weight: 1.0,
            upsample: Upsample::BilinearAlignCorners,
            sigma: 4.0,
            normalize: Normalize::None,
            image_score: ImageScoreConfig::ClsText,
        },
        fewshot: None,
        loss: None,
    }
}

/// AnomalyCLIP-style: object-agnostic learnable prompts ("[V] object" / "[W] damaged object") with
/// deep text prompts (4 tokens, 8 more layers), CLIP's frozen projection for patches (AnomalyCLIP
/// also replaces attention in the last blocks with DPAM/V-V attention: `backbone.attention =
/// "value_value"`).
pub fn anomaly_clip(backbone: BackboneConfig, text_layers: usize) -> ModelConfig {
    ModelConfig {
        backbone,
        prompt: slot(
            "learned_context",
            r#"n_ctx = 12
normal_words = "object"
abnormal_words = "damaged object""#,
        ),
        deep_prompt: slot(
            "dtp",
            &format!(
                "tokens = 4\ndepth = {}\ndropout = 0.0",
                8.min(text_layers - 1)
            ),
        ),
        category: slot("none", ""),
        refiner: slot("identity", ""),
        head: slot("clip_proj", ""),
        temperature: TemperatureConfig {
            init: ln_inv_007(),
            learnable: false,
        },
        fusion: FusionConfig {
            layer_reduce: LayerReduce::Mean,
            raw_weight: 1.0,
            upsample: Upsample::BilinearAlignCorners,
            sigma: 4.0,
            normalize: Normalize::None,
            image_score: ImageScoreConfig::ClsText,
        },
        fewshot: None,
        // AnomalyCLIP's train.py: lam = 4 on the map terms, Dice on both channels, and the
        // image-level cross-entropy of the class token at scale 1/0.07 (paper-notes/peers.md).
        loss: Some(LossConfig {
            map_weight: 4.0,
            normal_dice: true,
            image_ce: 1.0,
        }),
    }
}

/// Presets by name (for `--preset` and experiment files).
pub fn by_name(name: &str, backbone: BackboneConfig, text_layers: usize) -> Option<ModelConfig> {
    match name {
        "vcp_clip" => Some(vcp_clip(backbone, text_layers)),
        "april_gan" => Some(april_gan(backbone)),
        "anomaly_clip" => Some(anomaly_clip(backbone, text_layers)),
        other => component_ablation(backbone, text_layers)
            .into_iter()
            .find(|(n, _)| *n == other)
            .map(|(_, c)| c),
    }
}

/// Names accepted by [`by_name`].
pub const NAMES: [&str; 6] = [
    "vcp_clip",
    "april_gan",
    "anomaly_clip",
    "utp",
    "utp+dtp",
    "utp+dtp+pre_vcp",
];

/// A preset's model tables other than `backbone`, as a TOML table: what an experiment file's
/// `preset = "name"` puts in place (its own `set` then applies on top).
///
/// `text_layers` is the text depth of the experiment's backbone (presets size their deep
/// prompts by it).
pub fn slot_tables(name: &str, text_layers: usize) -> Option<toml::Table> {
    let m = by_name(name, tiny(224), text_layers)?;
    let mut t = toml::Table::try_from(&m).expect("model configs serialise");
    t.remove("backbone");
    Some(t)
}

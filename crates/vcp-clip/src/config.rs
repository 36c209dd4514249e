//! CLIP configurations: presets, Hugging Face `config.json`, and inference from OpenAI-format
//! tensor shapes (OpenAI files carry no config; `build_model` in openai/CLIP `clip/model.py`
//! derives it from the shapes, and so do we).

use crate::error::{ClipError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The model card of the embedded `tiny_pretrained` weights (configuration, provenance, recorded
/// evaluations); the architecture is read from it here, the weights in [`crate::pretrained`].
pub(crate) const TINY_PRETRAINED_CARD: &str = include_str!("../assets/tiny_pretrained.json");

/// MLP activation of the transformer blocks.
///
/// OpenAI trained CLIP with QuickGELU, but the official VCP-CLIP code runs the OpenAI weights with
/// exact (erf) GELU (`models/transformer.py`), so both must be selectable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (PyTorch `nn.GELU()`, HF `"gelu"`).
    Gelu,
}

impl std::str::FromStr for Activation {
    type Err = ClipError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(ClipError::Config(format!(
                "unknown activation `{other}` (expected `gelu` or `quick_gelu`)"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub patch_size: usize,
    /// Native input size of the checkpoint (its positional embedding has `(size/patch)^2 + 1` rows).
    pub image_size: usize,
    pub ln_eps: f64,
}

impl VisionConfig {
    pub fn native_grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    pub ln_eps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    /// Joint embedding dimension (output of both projections).
    pub embed_dim: usize,
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub activation: Activation,
}

/// Where a weight file came from; decides the key layout and the default activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// transformers `CLIPModel` (`vision_model.encoder.layers.0.self_attn.q_proj.weight`, ...).
    HuggingFace,
    /// OpenAI / open_clip state dicts (`visual.transformer.resblocks.0.attn.in_proj_weight`, ...).
    OpenAi,
}

impl ClipConfig {
    /// OpenAI ViT-B/16 at 224 (`ViT-B-16.json`).
    pub fn vit_b_16() -> Self {
        Self::openai_like(512, 768, 12, 16, 224, 512, 12)
    }
    /// OpenAI ViT-L/14 at 224 (`ViT-L-14.json`).
    pub fn vit_l_14() -> Self {
        Self::openai_like(768, 1024, 24, 14, 224, 768, 12)
    }
    /// OpenAI ViT-L/14 at 336 (`ViT-L-14-336.json`), the VCP-CLIP backbone.
    pub fn vit_l_14_336() -> Self {
        Self::openai_like(768, 1024, 24, 14, 336, 768, 12)
    }
    /// A small random model for tests, the embedded default and CPU ablations.
    ///
    /// 12 vision layers so the VCP-CLIP taps (3, 6, 9, 12 at this depth) exist; narrow widths
    /// keep a forward at 224 px well under a second on 2 cores.
    pub fn tiny() -> Self {
        Self {
            embed_dim: 64,
            vision: VisionConfig {
                width: 96,
                layers: 12,
                heads: 2,
                mlp_dim: 384,
                patch_size: 16,
                image_size: 224,
                ln_eps: 1e-5,
            },
            text: TextConfig {
                width: 64,
                layers: 4,
                heads: 2,
                mlp_dim: 256,
                context_length: 77,
                vocab_size: 49408,
                ln_eps: 1e-5,
            },
            activation: Activation::QuickGelu,
        }
    }

    /// The architecture of the embedded `tiny_pretrained` weights, from their model card (the
    /// card and weights themselves: [`crate::pretrained`]).
    pub fn tiny_pretrained() -> Result<Self> {
        let card: serde_json::Value = serde_json::from_str(TINY_PRETRAINED_CARD)
            .map_err(|e| ClipError::Config(format!("embedded tiny_pretrained.json: {e}")))?;
        let cfg = card.get("config").cloned().ok_or_else(|| {
            ClipError::Config("embedded tiny_pretrained.json: no `config`".into())
        })?;
        serde_json::from_value(cfg)
            .map_err(|e| ClipError::Config(format!("embedded tiny_pretrained.json: config: {e}")))
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "vit_b_16" | "ViT-B-16" => Ok(Self::vit_b_16()),
            "vit_l_14" | "ViT-L-14" => Ok(Self::vit_l_14()),
            "vit_l_14_336" | "ViT-L-14-336" => Ok(Self::vit_l_14_336()),
            "tiny" => Ok(Self::tiny()),
            // Pretrained by this workspace; its weights are embedded (`ClipWeights::from_preset`).
            "tiny_pretrained" => Self::tiny_pretrained(),
            // OpenCLIP's LAION/DataComp models of the same architecture use exact GELU.
            "openclip_vit_b_16" => Ok(Self {
                activation: Activation::Gelu,
                ..Self::vit_b_16()
            }),
            "openclip_vit_l_14" => Ok(Self {
                activation: Activation::Gelu,
                ..Self::vit_l_14()
            }),
            other => Err(ClipError::Config(format!(
                "unknown CLIP preset `{other}` (known: vit_b_16, vit_l_14, vit_l_14_336, openclip_vit_b_16, openclip_vit_l_14, tiny, tiny_pretrained)"
            ))),
        }
    }

    fn openai_like(
        embed_dim: usize,
        vision_width: usize,
        vision_layers: usize,
        patch_size: usize,
        image_size: usize,
        text_width: usize,
        text_layers: usize,
    ) -> Self {
        Self {
            embed_dim,
            vision: VisionConfig {
                width: vision_width,
                layers: vision_layers,
                heads: vision_width / 64,
                mlp_dim: vision_width * 4,
                patch_size,
                image_size,
                ln_eps: 1e-5,
            },
            text: TextConfig {
                width: text_width,
                layers: text_layers,
                heads: text_width / 64,
                mlp_dim: text_width * 4,
                context_length: 77,
                vocab_size: 49408,
                ln_eps: 1e-5,
            },
            activation: Activation::QuickGelu,
        }
    }

    /// Parse a transformers `CLIPModel` `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ClipError::Config(format!("config.json does not parse: {e}")))?;
        let get = |section: &str, key: &str| -> Result<&serde_json::Value> {
            v.get(section)
                .and_then(|s| s.get(key))
                .ok_or_else(|| ClipError::Config(format!("config.json: missing `{section}.{key}`")))
        };
        let uint = |section: &str, key: &str| -> Result<usize> {
            get(section, key)?
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| {
                    ClipError::Config(format!("config.json: `{section}.{key}` is not an integer"))
                })
        };
        let float_or = |section: &str, key: &str, default: f64| -> f64 {
            v.get(section)
                .and_then(|s| s.get(key))
                .and_then(|x| x.as_f64())
                .unwrap_or(default)
        };
        let act = |section: &str| -> Result<Activation> {
            let name = v
                .get(section)
                .and_then(|s| s.get("hidden_act"))
                .and_then(|x| x.as_str())
                .unwrap_or("quick_gelu");
            name.parse().map_err(|_| {
                ClipError::Config(format!(
                    "config.json: `{section}.hidden_act` = `{name}` is not supported (gelu, quick_gelu)"
                ))
            })
        };
        let (va, ta) = (act("vision_config")?, act("text_config")?);
        if va != ta {
            return Err(ClipError::Config(
                "config.json: vision and text towers use different activations".into(),
            ));
        }
        let embed_dim = v
            .get("projection_dim")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| ClipError::Config("config.json: missing `projection_dim`".into()))?
            as usize;
        Ok(Self {
            embed_dim,
            vision: VisionConfig {
                width: uint("vision_config", "hidden_size")?,
                layers: uint("vision_config", "num_hidden_layers")?,
                heads: uint("vision_config", "num_attention_heads")?,
                mlp_dim: uint("vision_config", "intermediate_size")?,
                patch_size: uint("vision_config", "patch_size")?,
                image_size: uint("vision_config", "image_size")?,
                ln_eps: float_or("vision_config", "layer_norm_eps", 1e-5),
            },
            text: TextConfig {
                width: uint("text_config", "hidden_size")?,
                layers: uint("text_config", "num_hidden_layers")?,
                heads: uint("text_config", "num_attention_heads")?,
                mlp_dim: uint("text_config", "intermediate_size")?,
                context_length: uint("text_config", "max_position_embeddings")?,
                vocab_size: uint("text_config", "vocab_size")?,
                ln_eps: float_or("text_config", "layer_norm_eps", 1e-5),
            },
            activation: va,
        })
    }

    /// Infer the config from OpenAI-format tensor shapes, as openai/CLIP `build_model` does:
    /// heads = width / 64, patch from the conv kernel, native grid from the positional embedding.
    pub fn from_openai_shapes(shapes: &HashMap<String, Vec<usize>>) -> Result<Self> {
        let shape = |k: &str| -> Result<&Vec<usize>> {
            shapes
                .get(k)
                .ok_or_else(|| ClipError::MissingTensor(k.to_string()))
        };
        let count_layers = |prefix: &str| -> usize {
            let mut n = 0;
            while shapes.contains_key(&format!("{prefix}{n}.ln_1.weight")) {
                n += 1;
            }
            n
        };
        let conv = shape("visual.conv1.weight")?; // [W, 3, p, p]
        let pos = shape("visual.positional_embedding")?; // [1 + g^2, W]
        let (vw, patch) = (conv[0], conv[conv.len() - 1]);
        let grid = ((pos[0].saturating_sub(1)) as f64).sqrt().round() as usize;
        if grid * grid + 1 != pos[0] {
            return Err(ClipError::BadShape {
                name: "visual.positional_embedding".into(),
                got: pos.clone(),
                expected: vec![grid * grid + 1, vw],
            });
        }
        let tw = shape("ln_final.weight")?[0];
        let vision_layers = count_layers("visual.transformer.resblocks.");
        let text_layers = count_layers("transformer.resblocks.");
        if vision_layers == 0 || text_layers == 0 {
            return Err(ClipError::Config(
                "OpenAI weights: no `visual.transformer.resblocks.*` or `transformer.resblocks.*` found"
                    .into(),
            ));
        }
        Ok(Self {
            embed_dim: shape("text_projection")?[1],
            vision: VisionConfig {
                width: vw,
                layers: vision_layers,
                heads: vw / 64,
                mlp_dim: shape("visual.transformer.resblocks.0.mlp.c_fc.weight")?[0],
                patch_size: patch,
                image_size: grid * patch,
                ln_eps: 1e-5,
            },
            text: TextConfig {
                width: tw,
                layers: text_layers,
                heads: tw / 64,
                mlp_dim: shape("transformer.resblocks.0.mlp.c_fc.weight")?[0],
                context_length: shape("positional_embedding")?[0],
                vocab_size: shape("token_embedding.weight")?[0],
                ln_eps: 1e-5,
            },
            activation: Activation::QuickGelu,
        })
    }

    /// Sanity checks that would otherwise surface as shape errors deep inside a forward.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        if v.heads == 0 || !v.width.is_multiple_of(v.heads) {
            return Err(ClipError::Config(format!(
                "vision width {} is not divisible by {} heads",
                v.width, v.heads
            )));
        }
        if t.heads == 0 || !t.width.is_multiple_of(t.heads) {
            return Err(ClipError::Config(format!(
                "text width {} is not divisible by {} heads",
                t.width, t.heads
            )));
        }
        // Bounds before anything is allocated: a mistyped size must be an error, not an abort
        // (the largest public CLIPs are far inside them: ViT-bigG is 1664 wide, 48 blocks).
        for (key, val, lo, hi) in [
            ("embed_dim", self.embed_dim, 1, 16384),
            ("vision.width", v.width, 1, 16384),
            ("vision.layers", v.layers, 1, 256),
            ("vision.mlp_dim", v.mlp_dim, 1, 65536),
            ("vision.patch_size", v.patch_size, 1, 1024),
            ("vision.image_size", v.image_size, 1, 4096),
            ("text.width", t.width, 1, 16384),
            ("text.layers", t.layers, 1, 256),
            ("text.mlp_dim", t.mlp_dim, 1, 65536),
            ("text.context_length", t.context_length, 1, 1024),
            ("text.vocab_size", t.vocab_size, 1, 1 << 22),
        ] {
            if !(lo..=hi).contains(&val) {
                return Err(ClipError::Config(format!(
                    "{key} = {val}: must be in {lo}..={hi}"
                )));
            }
        }
        for (key, eps) in [("vision.ln_eps", v.ln_eps), ("text.ln_eps", t.ln_eps)] {
            if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
                return Err(ClipError::Config(format!(
                    "{key} = {eps}: must be a small positive number"
                )));
            }
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(ClipError::Config(format!(
                "native image size {} is not a multiple of patch size {}",
                v.image_size, v.patch_size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_follow_openai_build_model() {
        let c = ClipConfig::vit_l_14_336();
        assert_eq!((c.vision.heads, c.text.heads), (16, 12));
        assert_eq!(c.vision.native_grid(), 24);
        assert!(ClipConfig::preset("nope").is_err());
        for p in [
            "vit_b_16",
            "vit_l_14",
            "vit_l_14_336",
            "openclip_vit_b_16",
            "openclip_vit_l_14",
            "tiny",
        ] {
            ClipConfig::preset(p).unwrap().validate().unwrap();
        }
    }

    /// OpenCLIP ViT-B/16 and ViT-L/14 state dicts (224 px) have OpenAI's names and shapes: the
    /// config inferred from the shapes is the preset's (activation aside: OpenCLIP's own models
    /// use GELU, which the file cannot tell; `backbone.activation = "gelu"` / `--activation gelu`).
    #[test]
    fn openclip_224_shapes_give_the_presets() {
        for name in ["openclip_vit_b_16", "openclip_vit_l_14"] {
            let c = ClipConfig::preset(name).unwrap();
            let (v, t) = (&c.vision, &c.text);
            let mut m: HashMap<String, Vec<usize>> = HashMap::new();
            let g = v.image_size / v.patch_size;
            m.insert(
                "visual.conv1.weight".into(),
                vec![v.width, 3, v.patch_size, v.patch_size],
            );
            m.insert(
                "visual.positional_embedding".into(),
                vec![g * g + 1, v.width],
            );
            m.insert("ln_final.weight".into(), vec![t.width]);
            m.insert("text_projection".into(), vec![t.width, c.embed_dim]);
            m.insert(
                "positional_embedding".into(),
                vec![t.context_length, t.width],
            );
            m.insert("token_embedding.weight".into(), vec![t.vocab_size, t.width]);
            for i in 0..v.layers {
                let k = format!("visual.transformer.resblocks.{i}");
                m.insert(format!("{k}.ln_1.weight"), vec![v.width]);
                m.insert(format!("{k}.mlp.c_fc.weight"), vec![v.mlp_dim, v.width]);
            }
            for i in 0..t.layers {
                let k = format!("transformer.resblocks.{i}");
                m.insert(format!("{k}.ln_1.weight"), vec![t.width]);
                m.insert(format!("{k}.mlp.c_fc.weight"), vec![t.mlp_dim, t.width]);
            }
            let got = ClipConfig::from_openai_shapes(&m).unwrap();
            assert_eq!(got.vision, c.vision, "{name}");
            assert_eq!(got.text, c.text, "{name}");
            assert_eq!(got.embed_dim, c.embed_dim);
            assert_eq!(got.vision.image_size, 224);
        }
    }

    #[test]
    fn hf_json_missing_key_is_named() {
        let err = ClipConfig::from_hf_json(r#"{"projection_dim": 8, "text_config": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vision_config.hidden_act") || err.contains("vision_config."),
            "{err}"
        );
    }
}

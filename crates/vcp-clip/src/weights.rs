//! Loading CLIP weights from every format users have, into one canonical naming (the Hugging
//! Face `CLIPModel` layout), with strict checking against the shapes the config implies.
//!
//! * Hugging Face directory: `config.json` + `model.safetensors` (or `pytorch_model.bin`).
//! * OpenAI / open_clip state dicts (`.safetensors`, `.pt`, `.pth`, `.bin`): fused
//!   `attn.in_proj_weight` is split into q/k/v, `visual.proj` and `text_projection` (used as
//!   `x @ P`) are transposed into Linear weights; the config is inferred from the shapes.
//! * OpenAI TorchScript archives (`ViT-L-14-336px.pt`): the module tree is walked to recover the
//!   state dict (see [`crate::torchscript`]).

use crate::config::{ClipConfig, WeightFormat};
use crate::error::{ClipError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Keys that checkpoints carry but a CLIP forward does not use.
fn is_ignored(key: &str) -> bool {
    key.ends_with("position_ids")
        || matches!(key, "input_resolution" | "context_length" | "vocab_size")
        // open_clip / OpenAI attention-mask buffer, rebuilt at run time.
        || key == "attn_mask"
}

/// A CLIP state dict in canonical (HF) names, in f32 on one device, with its config.
#[derive(Clone)]
pub struct ClipWeights {
    pub config: ClipConfig,
    pub format: WeightFormat,
    /// Where the weights came from (for error messages and provenance records).
    pub source: Option<PathBuf>,
    tensors: HashMap<String, Tensor>,
}

impl std::fmt::Debug for ClipWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipWeights")
            .field("config", &self.config)
            .field("format", &self.format)
            .field("source", &self.source)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Whether a tensor is cast to the compute dtype in mixed precision: the matmul weights of the
/// blocks and the visual projection. LayerNorms, token/positional/class embeddings, the text
/// projection and the patch embedding stay f32 (they are small or feed f32 computations; the
/// patch convolution runs in f32 because candle's CPU convolution has no bf16 kernel).
fn is_compute_weight(name: &str) -> bool {
    name.contains(".self_attn.") || name.contains(".mlp.") || name == "visual_projection.weight"
}

impl ClipWeights {
    /// A copy with the matmul weights in `dtype` (bf16/f16 mixed precision; f32 = unchanged).
    /// The towers built from it compute in that dtype with LayerNorm and softmax in f32.
    pub fn cast_compute(&self, dtype: DType) -> Result<Self> {
        let mut out = self.clone();
        if dtype != DType::F32 {
            for (k, t) in out.tensors.iter_mut() {
                if is_compute_weight(k) {
                    *t = t.to_dtype(dtype)?;
                }
            }
        }
        Ok(out)
    }

    /// Load from a Hugging Face CLIP directory or an OpenAI-format weight file.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(ClipError::file(path, "no such file or directory"));
        }
        let mut w = if path.is_dir() {
            Self::load_hf_dir(path, device)?
        } else {
            let raw = read_tensor_file(path, device)?;
            if raw.contains_key("visual.conv1.weight") {
                Self::from_openai(raw, path)?
            } else if raw.contains_key("vision_model.embeddings.patch_embedding.weight") {
                return Err(ClipError::file(
                    path,
                    "this looks like a Hugging Face CLIP file: pass its directory (with config.json) instead",
                ));
            } else {
                return Err(ClipError::file(
                    path,
                    "not a CLIP checkpoint: no `visual.conv1.weight` (OpenAI) or HF vision tensors found",
                ));
            }
        };
        w.source = Some(path.to_path_buf());
        Ok(w)
    }

    fn load_hf_dir(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = vcp_data::io::read_regular_string(&cfg_path, 16 << 20)?;
        let config = ClipConfig::from_hf_json(&text).map_err(|e| ClipError::file(&cfg_path, e))?;
        let st = dir.join("model.safetensors");
        let bin = dir.join("pytorch_model.bin");
        let file = if st.exists() {
            st
        } else if bin.exists() {
            bin
        } else {
            return Err(ClipError::file(
                dir,
                "no model.safetensors or pytorch_model.bin in this directory",
            ));
        };
        let raw = read_tensor_file(&file, device)?;
        let mut tensors = HashMap::new();
        for (k, t) in raw {
            if !is_ignored(&k) {
                tensors.insert(k, t.to_dtype(DType::F32)?);
            }
        }
        let w = Self {
            config,
            format: WeightFormat::HuggingFace,
            source: None,
            tensors,
        };
        w.check_strict().map_err(|e| ClipError::file(&file, e))?;
        Ok(w)
    }

    /// Convert an OpenAI-format state dict (already read) into canonical names.
    pub fn from_openai(raw: HashMap<String, Tensor>, origin: &Path) -> Result<Self> {
        let shapes: HashMap<String, Vec<usize>> = raw
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        let config =
            ClipConfig::from_openai_shapes(&shapes).map_err(|e| ClipError::file(origin, e))?;
        let mut tensors = HashMap::new();
        for (k, t) in raw {
            if is_ignored(&k) {
                continue;
            }
            let t = t.to_dtype(DType::F32)?;
            for (name, tensor) in openai_to_hf(&k, t).map_err(|e| ClipError::file(origin, e))? {
                tensors.insert(name, tensor);
            }
        }
        let w = Self {
            config,
            format: WeightFormat::OpenAi,
            source: None,
            tensors,
        };
        w.check_strict().map_err(|e| ClipError::file(origin, e))?;
        Ok(w)
    }

    /// Build from canonical tensors (e.g. random weights), checking them strictly.
    pub fn from_tensors(config: ClipConfig, tensors: HashMap<String, Tensor>) -> Result<Self> {
        let w = Self {
            config,
            format: WeightFormat::HuggingFace,
            source: None,
            tensors,
        };
        w.check_strict()?;
        Ok(w)
    }

    /// Random weights for a config (deterministic for a seed), initialised like CLIP:
    /// N(0, 0.02) embeddings and projections, width^-0.5-scaled attention and MLP weights,
    /// unit LayerNorms. Used by the `tiny` preset, tests and benchmarks.
    pub fn random(config: &ClipConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut rng = vcp_data::rng::SplitMix64(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in expected_shapes(config) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.contains("layer_norm") || name.contains("layrnorm") {
                if name.ends_with("weight") {
                    vec![1.0; n]
                } else {
                    vec![0.0; n]
                }
            } else if name.ends_with("bias") {
                vec![0.0; n]
            } else if name == "logit_scale" {
                vec![(1.0f32 / 0.07).ln()]
            } else {
                let fan_in = *shape.last().unwrap_or(&1) as f32;
                let std = if name.contains("embedding") || name.contains("projection") {
                    0.02
                } else {
                    fan_in.powf(-0.5)
                };
                (0..n).map(|_| rng.normal_f32() * std).collect()
            };
            tensors.insert(name, Tensor::from_vec(data, shape, device)?);
        }
        Self::from_tensors(config.clone(), tensors)
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| ClipError::MissingTensor(name.to_string()))
    }

    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// Write as a Hugging Face CLIP directory (`config.json` + `model.safetensors`), atomically.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ClipError::file(dir, e))?;
        let c = &self.config;
        let act = match c.activation {
            crate::Activation::Gelu => "gelu",
            crate::Activation::QuickGelu => "quick_gelu",
        };
        let json = serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": c.embed_dim,
            "logit_scale_init_value": 2.6592,
            "text_config": {
                "hidden_size": c.text.width, "num_hidden_layers": c.text.layers,
                "num_attention_heads": c.text.heads, "intermediate_size": c.text.mlp_dim,
                "max_position_embeddings": c.text.context_length, "vocab_size": c.text.vocab_size,
                "layer_norm_eps": c.text.ln_eps, "hidden_act": act, "projection_dim": c.embed_dim,
                "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1
            },
            "vision_config": {
                "hidden_size": c.vision.width, "num_hidden_layers": c.vision.layers,
                "num_attention_heads": c.vision.heads, "intermediate_size": c.vision.mlp_dim,
                "patch_size": c.vision.patch_size, "image_size": c.vision.image_size,
                "layer_norm_eps": c.vision.ln_eps, "hidden_act": act, "projection_dim": c.embed_dim,
                "num_channels": 3
            }
        });
        let cfg_path = dir.join("config.json");
        vcp_data::io::write_atomic(
            &cfg_path,
            serde_json::to_string_pretty(&json).unwrap().as_bytes(),
        )
        .map_err(|e| ClipError::file(&cfg_path, e))?;
        let st_path = dir.join("model.safetensors");
        vcp_data::io::write_atomic_with(&st_path, |tmp| {
            candle_core::safetensors::save(&self.tensors, tmp)
        })
        .map_err(|e| ClipError::file(&st_path, e))?;
        Ok(())
    }

    /// Every expected tensor present with the right shape, nothing unexpected.
    fn check_strict(&self) -> Result<()> {
        let expected = expected_shapes(&self.config);
        for (name, shape) in &expected {
            match self.tensors.get(name) {
                None if name == "logit_scale" => {}
                None => return Err(ClipError::MissingTensor(name.clone())),
                Some(t) if t.dims() != shape.as_slice() => {
                    return Err(ClipError::BadShape {
                        name: name.clone(),
                        got: t.dims().to_vec(),
                        expected: shape.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        let mut extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .collect();
        extra.sort();
        if let Some(k) = extra.first() {
            return Err(ClipError::ExtraTensor((*k).clone()));
        }
        Ok(())
    }
}

/// Canonical tensor names and shapes of a CLIP model with this config.
pub fn expected_shapes(c: &ClipConfig) -> BTreeMap<String, Vec<usize>> {
    let mut m = BTreeMap::new();
    let (v, t, d) = (&c.vision, &c.text, c.embed_dim);
    let block = |m: &mut BTreeMap<String, Vec<usize>>, p: &str, w: usize, mlp: usize| {
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            m.insert(format!("{p}.self_attn.{proj}.weight"), vec![w, w]);
            m.insert(format!("{p}.self_attn.{proj}.bias"), vec![w]);
        }
        for ln in ["layer_norm1", "layer_norm2"] {
            m.insert(format!("{p}.{ln}.weight"), vec![w]);
            m.insert(format!("{p}.{ln}.bias"), vec![w]);
        }
        m.insert(format!("{p}.mlp.fc1.weight"), vec![mlp, w]);
        m.insert(format!("{p}.mlp.fc1.bias"), vec![mlp]);
        m.insert(format!("{p}.mlp.fc2.weight"), vec![w, mlp]);
        m.insert(format!("{p}.mlp.fc2.bias"), vec![w]);
    };
    m.insert("logit_scale".into(), vec![]);
    m.insert("text_projection.weight".into(), vec![d, t.width]);
    m.insert("visual_projection.weight".into(), vec![d, v.width]);
    m.insert(
        "text_model.embeddings.token_embedding.weight".into(),
        vec![t.vocab_size, t.width],
    );
    m.insert(
        "text_model.embeddings.position_embedding.weight".into(),
        vec![t.context_length, t.width],
    );
    for i in 0..t.layers {
        block(
            &mut m,
            &format!("text_model.encoder.layers.{i}"),
            t.width,
            t.mlp_dim,
        );
    }
    m.insert("text_model.final_layer_norm.weight".into(), vec![t.width]);
    m.insert("text_model.final_layer_norm.bias".into(), vec![t.width]);
    let g = v.native_grid();
    m.insert(
        "vision_model.embeddings.class_embedding".into(),
        vec![v.width],
    );
    m.insert(
        "vision_model.embeddings.patch_embedding.weight".into(),
        vec![v.width, 3, v.patch_size, v.patch_size],
    );
    m.insert(
        "vision_model.embeddings.position_embedding.weight".into(),
        vec![g * g + 1, v.width],
    );
    for ln in ["pre_layrnorm", "post_layernorm"] {
        m.insert(format!("vision_model.{ln}.weight"), vec![v.width]);
        m.insert(format!("vision_model.{ln}.bias"), vec![v.width]);
    }
    for i in 0..v.layers {
        block(
            &mut m,
            &format!("vision_model.encoder.layers.{i}"),
            v.width,
            v.mlp_dim,
        );
    }
    m
}

/// Map one OpenAI-format tensor to its canonical name(s).
fn openai_to_hf(key: &str, t: Tensor) -> Result<Vec<(String, Tensor)>> {
    let one = |n: String, t: Tensor| Ok(vec![(n, t)]);
    let (tower, rest) = if let Some(r) = key.strip_prefix("visual.") {
        ("vision_model", r)
    } else {
        ("text_model", key)
    };
    if let Some(r) = rest.strip_prefix("transformer.resblocks.") {
        let (idx, sub) = r
            .split_once('.')
            .ok_or_else(|| ClipError::ExtraTensor(key.to_string()))?;
        let p = format!("{tower}.encoder.layers.{idx}");
        return match sub {
            "attn.in_proj_weight" | "attn.in_proj_bias" => {
                let kind = if sub.ends_with("weight") {
                    "weight"
                } else {
                    "bias"
                };
                let w = t.dim(0)? / 3;
                Ok(["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        Ok((
                            format!("{p}.self_attn.{n}.{kind}"),
                            t.narrow(0, i * w, w)?.contiguous()?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?)
            }
            _ => {
                let mapped = sub
                    .replace("attn.out_proj", "self_attn.out_proj")
                    .replace("ln_1", "layer_norm1")
                    .replace("ln_2", "layer_norm2")
                    .replace("mlp.c_fc", "mlp.fc1")
                    .replace("mlp.c_proj", "mlp.fc2");
                one(format!("{p}.{mapped}"), t)
            }
        };
    }
    match key {
        "visual.conv1.weight" => one("vision_model.embeddings.patch_embedding.weight".into(), t),
        "visual.class_embedding" => one("vision_model.embeddings.class_embedding".into(), t),
        "visual.positional_embedding" => one(
            "vision_model.embeddings.position_embedding.weight".into(),
            t,
        ),
        "visual.ln_pre.weight" => one("vision_model.pre_layrnorm.weight".into(), t),
        "visual.ln_pre.bias" => one("vision_model.pre_layrnorm.bias".into(), t),
        "visual.ln_post.weight" => one("vision_model.post_layernorm.weight".into(), t),
        "visual.ln_post.bias" => one("vision_model.post_layernorm.bias".into(), t),
        // OpenAI computes `x @ proj`; a Linear weight is its transpose.
        "visual.proj" => one("visual_projection.weight".into(), t.t()?.contiguous()?),
        "text_projection" => one("text_projection.weight".into(), t.t()?.contiguous()?),
        "token_embedding.weight" => one("text_model.embeddings.token_embedding.weight".into(), t),
        "positional_embedding" => one("text_model.embeddings.position_embedding.weight".into(), t),
        "ln_final.weight" => one("text_model.final_layer_norm.weight".into(), t),
        "ln_final.bias" => one("text_model.final_layer_norm.bias".into(), t),
        "logit_scale" => one("logit_scale".into(), t),
        other => Err(ClipError::ExtraTensor(other.to_string())),
    }
}

/// Read every tensor of a `.safetensors` or PyTorch pickle (`.pt`, `.pth`, `.bin`) file.
pub fn read_tensor_file(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "safetensors" => candle_core::safetensors::load(path, device)
            .map_err(|e| ClipError::file(path, format!("cannot read safetensors: {}", crate::error::first_line(&e)))),
        "pt" | "pth" | "bin" | "ckpt" => {
            let list = crate::torchscript::read_pickled_state_dict(path)?;
            let mut m = HashMap::new();
            for (k, t) in list {
                m.insert(k, t.to_device(device)?);
            }
            if m.is_empty() {
                return Err(ClipError::file(path, "no tensors found in this PyTorch file"));
            }
            Ok(m)
        }
        _ => Err(ClipError::file(
            path,
            "unknown weight file extension (expected .safetensors, .pt, .pth or .bin, or a HF directory)",
        )),
    }
}

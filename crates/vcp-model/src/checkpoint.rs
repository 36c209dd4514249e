//! Checkpoints of the trainable tensors only (CLIP stays frozen and is never saved).
//!
//! * Ours: `.safetensors` with our parameter names, the resolved model config (TOML) in the
//!   metadata, and a `<file>.sha256` beside it; written to a temporary name, then renamed.
//! * The official VCP-CLIP format (`train.py`): a `.pth` dict with `trainable_linearlayer`,
//!   `New_Lan_Embed`, `Zero_try` and the CLIP `prompt_*` parameters (also accepted flattened into
//!   safetensors as `<top>.<key>`), mapped onto our names; `prompt_text_projection` (unused by
//!   the reference forward) is ignored. Loading is strict: every trainable must be present with
//!   its shape, and nothing unknown may be left over.

use crate::model::VcpModel;
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// A write or read of ours that already names its file (the path is not repeated).
    #[error("{0}")]
    Data(#[from] vcp_data::DataError),
}

fn ferr(path: &Path, msg: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::File {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Official name → our name (and whether a trailing Conv1d kernel dim of 1 must be dropped).
pub fn official_to_ours(name: &str) -> Option<(String, bool)> {
    if let Some(r) = name.strip_prefix("trainable_linearlayer.fc.") {
        return Some((format!("head.fc.{r}"), false));
    }
    let direct = match name {
        "New_Lan_Embed.prompt_query" => "category.query",
        "New_Lan_Embed.prompt_linear1.fc.weight" => "category.conv.weight",
        "New_Lan_Embed.prompt_linear1.fc.bias" => "category.conv.bias",
        "New_Lan_Embed.prompt_temp" => "temperature.raw",
        "Zero_try.prompt_temp_l1" => "temperature.post",
        "prompt_embeddings" => "dtp.first",
        "deep_prompt_embeddings" => "dtp.deep",
        "prompt_proj.weight" => "dtp.proj.weight",
        "prompt_proj.bias" => "dtp.proj.bias",
        "prompt_norm.weight" => "dtp.norm.weight",
        "prompt_norm.bias" => "dtp.norm.bias",
        _ => "",
    };
    if !direct.is_empty() {
        return Some((direct.to_string(), false));
    }
    for (off, ours) in [
        ("q_proj_pre", "q"),
        ("k_proj_pre_1", "k"),
        ("v_proj_pre_1", "v"),
        ("proj_post_t", "out"),
    ] {
        if let Some(kind) = name.strip_prefix(&format!("Zero_try.{off}.")) {
            return Some((format!("post_vcp.{ours}.{kind}"), kind == "weight"));
        }
    }
    None
}

/// Ignored entries of official checkpoints.
fn official_ignored(name: &str) -> bool {
    name == "prompt_text_projection"
}

/// Tensors and (for our own files) the string metadata.
type Contents = (HashMap<String, Tensor>, Option<HashMap<String, String>>);

fn read_any(path: &Path) -> Result<Contents, CheckpointError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "safetensors" => {
            let bytes = std::fs::read(path).map_err(|e| ferr(path, e))?;
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
                .map_err(|e| ferr(path, format!("cannot read safetensors: {e}")))?;
            let tensors =
                candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
                    ferr(
                        path,
                        format!(
                            "cannot read safetensors: {}",
                            e.to_string().lines().next().unwrap_or("")
                        ),
                    )
                })?;
            Ok((tensors, meta.metadata().clone()))
        }
        "pth" | "pt" | "bin" | "ckpt" => {
            let list =
                vcp_clip::torchscript::read_pickled_state_dict(path).map_err(|e| ferr(path, e))?;
            Ok((list.into_iter().collect(), None))
        }
        _ => Err(ferr(
            path,
            "unknown checkpoint extension (expected .safetensors or .pth)",
        )),
    }
}

/// Is this file in the official format (names like `trainable_linearlayer.*`)?
pub fn is_official(tensors: &HashMap<String, Tensor>) -> bool {
    tensors.keys().any(|k| {
        k.starts_with("trainable_linearlayer.")
            || k.starts_with("Zero_try.")
            || k.starts_with("New_Lan_Embed.")
    })
}

/// The resolved model config stored in one of our checkpoints, if any.
pub fn stored_config(path: &Path) -> Result<Option<String>, CheckpointError> {
    let (_, meta) = read_any(path)?;
    Ok(meta.and_then(|m| m.get("config").cloned()))
}

/// Load trainable values into the model, strictly.
pub fn load_into(model: &VcpModel, path: &Path) -> Result<(), CheckpointError> {
    let (raw, _) = read_any(path)?;
    let official = is_official(&raw);
    let mut values: HashMap<String, Tensor> = HashMap::new();
    let mut unknown = Vec::new();
    for (k, t) in raw {
        if official {
            if official_ignored(&k) {
                continue;
            }
            match official_to_ours(&k) {
                Some((ours, squeeze)) => {
                    let t = if squeeze && t.rank() == 3 && t.dim(2).unwrap_or(0) == 1 {
                        t.squeeze(2).unwrap()
                    } else {
                        t
                    };
                    values.insert(ours, t);
                }
                None => unknown.push(k),
            }
        } else {
            values.insert(k, t);
        }
    }
    let vars = model.params.vars();
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for (name, var) in &vars {
        match values.remove(name) {
            None => missing.push(name.clone()),
            Some(t) if t.dims() != var.dims() => wrong.push(format!(
                "{name} {:?} (model expects {:?})",
                t.dims(),
                var.dims()
            )),
            Some(t) => {
                let t = t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.to_device(var.device()))
                    .map_err(|e| ferr(path, e))?;
                var.set(&t).map_err(|e| ferr(path, e))?;
            }
        }
    }
    unknown.extend(values.into_keys());
    unknown.sort();
    if !missing.is_empty() || !wrong.is_empty() || !unknown.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing {}", missing.join(", ")));
        }
        if !wrong.is_empty() {
            parts.push(format!("wrong shape {}", wrong.join(", ")));
        }
        if !unknown.is_empty() {
            parts.push(format!("not in this model {}", unknown.join(", ")));
        }
        return Err(ferr(
            path,
            format!(
                "checkpoint does not fit the model config ({}): {}",
                summary(&model.cfg),
                parts.join("; ")
            ),
        ));
    }
    Ok(())
}

fn summary(cfg: &crate::config::ModelConfig) -> String {
    let kind = |v: serde_json::Value| {
        v.get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("?")
            .to_string()
    };
    format!(
        "prompt={}, deep_prompt={}, category={}, refiner={}, head={}, taps={:?}",
        kind(serde_json::to_value(&cfg.prompt).unwrap_or_default()),
        kind(serde_json::to_value(&cfg.deep_prompt).unwrap_or_default()),
        kind(serde_json::to_value(&cfg.category).unwrap_or_default()),
        kind(serde_json::to_value(&cfg.refiner).unwrap_or_default()),
        kind(serde_json::to_value(&cfg.head).unwrap_or_default()),
        cfg.backbone.taps
    )
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Save the trainables (and the resolved config) atomically; returns the sha256.
pub fn save(
    model: &VcpModel,
    path: &Path,
    extra_meta: &[(&str, String)],
) -> Result<String, CheckpointError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ferr(dir, e))?;
    }
    let vars = model.params.vars();
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (name, var) in &vars {
        let t = var
            .as_tensor()
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| ferr(path, e))?;
        if t.iter().any(|v| !v.is_finite()) {
            return Err(ferr(
                path,
                format!("refusing to save: `{name}` has NaN/inf values"),
            ));
        }
        let bytes: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.clone(), bytes, var.dims().to_vec()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, b, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), "vcp-rs-trainables/1".into());
    meta.insert(
        "config".into(),
        toml::to_string(&model.cfg).map_err(|e| ferr(path, e))?,
    );
    for (k, v) in extra_meta {
        meta.insert(k.to_string(), v.clone());
    }
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| ferr(path, e))?;
    let sha = format!("{:x}", Sha256::digest(&bytes));
    vcp_data::io::write_atomic(path, &bytes)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    vcp_data::io::write_atomic(
        &path.with_extension("safetensors.sha256"),
        format!("{sha}  {name}\n").as_bytes(),
    )?;
    Ok(sha)
}

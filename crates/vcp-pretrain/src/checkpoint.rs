//! The pretrainer's files: resumable checkpoints (weights and AdamW moments, f32), the exported
//! weights (f16 safetensors + JSON with the configuration and the model card's check) and the
//! warm start from exported weights. Every file goes through the shared atomic writer.

use crate::config::PretrainConfig;
use crate::heldout::card_check;
use crate::optim::Param;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use vcp_clip::ClipWeights;
use vcp_data::corpus;
use vcp_data::io::{write_atomic, write_atomic_with};

/// The patch term's own learnable log-scale (not a CLIP tensor: kept in checkpoints, never
/// exported).
pub const PATCH_SCALE: &str = "patch_logit_scale";

/// The vision tower's positional embedding (resized when the input size changes).
pub(crate) const VISION_POS: &str = "vision_model.embeddings.position_embedding.weight";

/// Save `params` (weights and moments) and `DIR/checkpoint.json` (step, configuration), each
/// written atomically, JSON last.
pub fn save(dir: &Path, params: &[Param], step: usize, cfg: &PretrainConfig) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let mut t = HashMap::new();
    for p in params {
        t.insert(
            format!("param/{}", p.name),
            p.var.as_tensor().to_device(&Device::Cpu)?,
        );
        t.insert(format!("adam_m/{}", p.name), p.m.to_device(&Device::Cpu)?);
        t.insert(format!("adam_v/{}", p.name), p.v.to_device(&Device::Cpu)?);
    }
    let st = dir.join("checkpoint.safetensors");
    write_atomic_with(&st, |tmp| candle_core::safetensors::save(&t, tmp))?;
    let meta = serde_json::json!({
        "format": "vcp-pretrain-checkpoint/1",
        "step": step,
        "corpus_version": corpus::CORPUS_VERSION,
        "config": cfg,
    });
    write_atomic(
        &dir.join("checkpoint.json"),
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )?;
    Ok(())
}

/// A checkpoint read back and checked against the configuration.
pub struct Saved {
    pub step: usize,
    /// The parameters by name (`param/` removed).
    pub params: HashMap<String, Tensor>,
    /// Every tensor of the file (the moments as `adam_m/NAME`, `adam_v/NAME`).
    pub all: HashMap<String, Tensor>,
}

/// Read `DIR/checkpoint.*`. The checkpoint's architecture must equal `cfg.model` (errors name
/// the file and the first tensor or key that differs).
pub fn read(dir: &Path, cfg: &PretrainConfig) -> Result<Saved> {
    let jpath = dir.join("checkpoint.json");
    let spath = dir.join("checkpoint.safetensors");
    if !jpath.exists() {
        bail!("{}: no checkpoint to resume from", jpath.display());
    }
    let text = vcp_data::io::read_regular_string(&jpath, 16 << 20)?;
    let meta: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a checkpoint ({e})", jpath.display()))?;
    if meta.get("format").and_then(|f| f.as_str()) != Some("vcp-pretrain-checkpoint/1") {
        bail!("{}: not a vcp pretraining checkpoint", jpath.display());
    }
    let step = meta
        .get("step")
        .and_then(|s| s.as_u64())
        .with_context(|| format!("{}: `step` missing", jpath.display()))? as usize;
    let saved: PretrainConfig = serde_json::from_value(
        meta.get("config")
            .cloned()
            .with_context(|| format!("{}: `config` missing", jpath.display()))?,
    )
    .map_err(|e| anyhow::anyhow!("{}: config: {e}", jpath.display()))?;
    if saved.model != cfg.model {
        bail!(
            "{}: the checkpoint is of another architecture than `model` in the config ({})",
            jpath.display(),
            first_difference(&saved.model, &cfg.model)
        );
    }
    let all = read_safetensors(&spath)?;
    let mut params = HashMap::new();
    for (k, t) in &all {
        if let Some(n) = k.strip_prefix("param/") {
            params.insert(n.to_string(), t.clone());
        }
    }
    // Strictly the architecture's tensors, with their shapes.
    let mut clip_part = params.clone();
    let extra = clip_part.remove(PATCH_SCALE);
    if extra.is_some() != cfg.objective.is_some() {
        bail!(
            "{}: the checkpoint was trained {} an [objective]; the config has {}",
            spath.display(),
            if extra.is_some() { "with" } else { "without" },
            if cfg.objective.is_some() {
                "one"
            } else {
                "none"
            }
        );
    }
    ClipWeights::from_tensors(cfg.model_after(step), clip_part)
        .map_err(|e| anyhow::anyhow!("{}: {e}", spath.display()))?;
    for (name, t) in &params {
        for moment in ["adam_m", "adam_v"] {
            if let Some(m) = all.get(&format!("{moment}/{name}")) {
                if m.dims() != t.dims() {
                    bail!(
                        "{}: `{moment}/{name}` has shape {:?}, its parameter {:?}",
                        spath.display(),
                        m.dims(),
                        t.dims()
                    );
                }
            }
        }
    }
    Ok(Saved { step, params, all })
}

/// Write the trained weights of `model` as `DIR/NAME.safetensors` (f16) and `DIR/NAME.json`
/// (configuration, provenance and the model card's check, computed from the exported file).
pub fn export(
    dir: &Path,
    params: &[Param],
    cfg: &PretrainConfig,
    step: usize,
    model: &vcp_clip::ClipConfig,
    provenance: serde_json::Value,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let name = &cfg.name;
    let mut t = HashMap::new();
    for p in params.iter().filter(|p| p.name != PATCH_SCALE) {
        t.insert(
            p.name.clone(),
            p.var
                .as_tensor()
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F16)?,
        );
    }
    let st = dir.join(format!("{name}.safetensors"));
    write_atomic_with(&st, |tmp| candle_core::safetensors::save(&t, tmp))?;
    // The numbers a user can check: computed here from the exported (f16) file exactly as
    // `card_check` recomputes them from the embedded preset.
    let exported = load_exported(&st, model)?;
    let check = card_check(&exported, cfg.corpus.seed)?;
    let meta = serde_json::json!({
        "name": name,
        "config": model,
        "steps": step,
        "corpus_version": corpus::CORPUS_VERSION,
        "corpus_seed": cfg.corpus.seed,
        "card_check": check,
        "provenance": provenance,
    });
    write_atomic(
        &dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )?;
    Ok(())
}

/// All tensors of a safetensors file on the CPU; errors name the file on one line.
fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot read ({})",
            path.display(),
            e.to_string().lines().next().unwrap_or("")
        )
    })
}

/// Read an exported `NAME.safetensors` (f16) back as f32 weights of `model`.
pub fn load_exported(path: &Path, model: &vcp_clip::ClipConfig) -> Result<ClipWeights> {
    let raw = read_safetensors(path)?;
    let t = raw
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    ClipWeights::from_tensors(model.clone(), t)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub(crate) fn first_difference(a: &vcp_clip::ClipConfig, b: &vcp_clip::ClipConfig) -> String {
    let (ja, jb) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    for sec in ["vision", "text"] {
        if let (Some(x), Some(y)) = (
            ja.get(sec).and_then(|v| v.as_object()),
            jb.get(sec).and_then(|v| v.as_object()),
        ) {
            for (k, v) in x {
                if y.get(k) != Some(v) {
                    return format!(
                        "model.{sec}.{k}: checkpoint {v}, config {}",
                        y.get(k).cloned().unwrap_or_default()
                    );
                }
            }
        }
    }
    for k in ["embed_dim", "activation"] {
        if ja.get(k) != jb.get(k) {
            return format!(
                "model.{k}: checkpoint {}, config {}",
                ja.get(k).cloned().unwrap_or_default(),
                jb.get(k).cloned().unwrap_or_default()
            );
        }
    }
    "model differs".into()
}

/// Warm-start tensors from `weights` (`tiny_pretrained` or an exported `.safetensors` with its
/// `.json` beside it), checked against `model` (equal but for the vision input size; the
/// positional embedding is resized to `model`'s).
pub(crate) fn warm_start(
    weights: &str,
    model: &vcp_clip::ClipConfig,
) -> Result<HashMap<String, Tensor>> {
    let w = if weights == vcp_clip::pretrained::TINY_PRETRAINED {
        vcp_clip::pretrained::tiny_pretrained(&Device::Cpu)?
    } else {
        let path = Path::new(weights);
        let json = path.with_extension("json");
        let text = vcp_data::io::read_regular_string(&json, 16 << 20).with_context(|| {
            format!(
                "init.weights: {} (the configuration exported beside the weights)",
                json.display()
            )
        })?;
        let meta: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", json.display()))?;
        let cfg: vcp_clip::ClipConfig = serde_json::from_value(
            meta.get("config")
                .cloned()
                .with_context(|| format!("{}: no `config`", json.display()))?,
        )
        .map_err(|e| anyhow::anyhow!("{}: config: {e}", json.display()))?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", json.display()))?;
        load_exported(path, &cfg)?
    };
    let mut same = w.config.clone();
    same.vision.image_size = model.vision.image_size;
    if &same != model {
        bail!(
            "init.weights `{weights}` is of another architecture than `model` ({})",
            first_difference(&same, model)
        );
    }
    let mut t: HashMap<String, Tensor> = w.tensors().clone();
    let (g0, g1) = (w.config.vision.native_grid(), model.vision.native_grid());
    if g0 != g1 {
        let pos = t
            .get(VISION_POS)
            .context("no vision positional embedding")?;
        let r = vcp_clip::resize_pos_embed(pos, g0, g1)?;
        t.insert(VISION_POS.into(), r);
    }
    Ok(t)
}

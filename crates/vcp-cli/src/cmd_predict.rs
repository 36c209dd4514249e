//! `vcp predict [--config X.toml] --checkpoint CKPT [--clip PATH] [--size S] [--layers a,b,c,d]
//! [--activation gelu|quick_gelu] (--image FILE | --images DIR) --out DIR [--threshold T]`
//!
//! Anomaly maps for single files, no dataset or meta file needed. For each image:
//! `<stem>.npy` (blended, smoothed map at S x S, before any normalisation across images),
//! `<stem>_overlay.png` (image | heat-map overlay | thresholded map), and one `scores.json`.

use crate::common::backbone_weights;
use crate::util::parse_layers;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vcp_model::config::Normalize;
use vcp_model::fusion::finalize;
use vcp_model::Registry;
use vcp_model::{presets, VcpModel};
use vcp_runner::config::ExperimentConfig;
use vcp_runner::visual::Panel;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    checkpoint: PathBuf,
    /// CLIP weights (HF directory or OpenAI file); overrides the config's backbone.weights.
    #[arg(long)]
    clip: Option<String>,
    #[arg(long)]
    size: Option<usize>,
    #[arg(long)]
    layers: Option<String>,
    #[arg(long, value_parser = ["gelu", "quick_gelu"])]
    activation: Option<String>,
    #[arg(long, conflicts_with = "images")]
    image: Option<PathBuf>,
    #[arg(long)]
    images: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Threshold of the binary map in the overlay (maps are probabilities).
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    #[command(flatten)]
    dev: crate::args::DeviceArgs,
    /// Few-shot: a folder of normal images of the same object (all are used as references).
    #[arg(long)]
    refs: Option<PathBuf>,
    /// With --refs: weight of the patch memory-bank map in the final map (0 = off).
    #[arg(long, default_value_t = 0.5)]
    memory_bank: f64,
    /// With --refs: move the normal text embedding towards the references (0 = off, 1 = replace).
    #[arg(long, default_value_t = 0.0)]
    normal_prompt: f64,
}

/// The experiment to run: --config, else the config stored in our checkpoint, else (official
/// checkpoints) the VCP-CLIP preset on ViT-L/14-336 at 518.
fn experiment(a: &Args, reg: &Registry) -> Result<ExperimentConfig> {
    if let Some(c) = &a.config {
        return crate::common::load_experiment(reg, c);
    }
    if let Some(text) = vcp_model::checkpoint::stored_config(&a.checkpoint)? {
        let m: vcp_model::ModelConfig = toml::from_str(&text)
            .with_context(|| format!("{}: stored config", a.checkpoint.display()))?;
        let m = m
            .normalized(reg)
            .map_err(|e| anyhow::anyhow!("{}: stored config: {e}", a.checkpoint.display()))?;
        return Ok(ExperimentConfig::from_model("checkpoint", m));
    }
    let clip = a.clip.clone().with_context(|| {
        format!(
            "{}: official checkpoint without a config: give --clip (e.g. ViT-L-14-336px.pt)",
            a.checkpoint.display()
        )
    })?;
    // Text depth of the given CLIP decides the DTP depth.
    let w = vcp_clip::ClipWeights::load(&clip, &candle_core::Device::Cpu)?;
    Ok(ExperimentConfig::from_model(
        "vcp_clip",
        presets::vcp_clip(presets::vit_l_14_336_at_518(&clip), w.config.text.layers),
    ))
}

fn list_images(a: &Args) -> Result<Vec<PathBuf>> {
    if let Some(f) = &a.image {
        return Ok(vec![f.clone()]);
    }
    let dir = a
        .images
        .as_ref()
        .context("give --image FILE or --images DIR")?;
    images_in(dir)
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            matches!(
                ext.as_str(),
                "png" | "jpg" | "jpeg" | "bmp" | "tif" | "tiff"
            )
        })
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("{}: no images (png, jpg, bmp, tif)", dir.display());
    }
    // Outputs are named by the file stem: `a.png` and `a.PNG` (or `a.jpg`) would write the same
    // `a.npy`, one silently replacing the other.
    let mut seen: std::collections::HashMap<String, &PathBuf> = Default::default();
    for p in &v {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if let Some(first) = seen.insert(stem.clone(), p) {
            bail!(
                "{} and {} would both write {stem}.npy; rename one of them",
                first.display(),
                p.display()
            );
        }
        // Checked before any image is scored, so a bad entry (a FIFO, which would block when
        // opened, or a folder named `x.png`) leaves no partial outputs behind.
        if !std::fs::metadata(p).is_ok_and(|m| m.is_file()) {
            bail!(
                "{}: is not a regular file (a FIFO, socket, device or folder)",
                p.display()
            );
        }
    }
    Ok(v)
}

/// The command line's model overrides on top of the experiment; returns the few-shot reference
/// images (`--refs`), if any.
fn apply_overrides(a: &Args, exp: &mut ExperimentConfig) -> Result<Vec<PathBuf>> {
    if let Some(c) = &a.clip {
        exp.model.backbone.weights = c.clone();
    }
    if let Some(s) = a.size {
        exp.model.backbone.image_size = s;
    }
    if let Some(l) = &a.layers {
        exp.model.backbone.taps = parse_layers(l)?;
    }
    if let Some(act) = &a.activation {
        exp.model.backbone.activation = Some(act.parse()?);
    }
    // Per-image maps "before any normalisation across images".
    a.dev.apply_dtype(exp)?;
    exp.model.fusion.normalize = Normalize::None;
    match &a.refs {
        Some(d) => {
            // k = 1 marks few-shot on; the references are all images of the folder.
            exp.model.fewshot = Some(
                vcp_model::SlotConfig::of("references")
                    .with("k", 1)
                    .with("memory_bank", a.memory_bank)
                    .with("normal_prompt", a.normal_prompt),
            );
            images_in(d)
        }
        None => Ok(vec![]),
    }
}

/// Every image decoded and resized to `size` (bicubic, as PIL), `[S, S, 3]` bytes each.
fn decode(paths: &[PathBuf], size: usize) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    paths
        .iter()
        .map(|p| {
            let (rgb, iw, ih) = vcp_data::dataset::load_rgb(p)?;
            Ok((
                p.clone(),
                vcp_data::resample::resize_u8_pil(
                    &rgb,
                    3,
                    (ih, iw),
                    (size, size),
                    vcp_data::resample::Filter::Bicubic,
                ),
            ))
        })
        .collect()
}

/// `[1, 3, S, S]` normalised pixels of one decoded image.
fn pixels(rgb: &[u8], size: usize, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        vcp_data::dataset::normalize_rgb(rgb, size),
        (1, 3, size, size),
        dev,
    )?)
}

/// The few-shot references of the decoded `refs` images.
fn references(
    model: &VcpModel,
    refs: &[(PathBuf, Vec<u8>)],
    size: usize,
    dev: &Device,
) -> Result<vcp_model::model::References> {
    let feats = refs
        .iter()
        .map(|(_, rgb)| Ok(model.encode_images(&pixels(rgb, size, dev)?)?))
        .collect::<Result<Vec<_>>>()?;
    let names = refs.iter().map(|(p, _)| p.display().to_string()).collect();
    Ok(model.references(&vcp_model::Features::cat(&feats)?, names)?)
}

/// One image's final map and image score (few-shot references and memory bank when given).
fn predict_one(
    model: &VcpModel,
    exp: &ExperimentConfig,
    x: &Tensor,
    refs: Option<&vcp_model::model::References>,
    memory_bank: f64,
) -> Result<(Vec<f32>, f32)> {
    let size = exp.model.backbone.image_size;
    let feats = model.encode_images(x)?;
    let lg = model.logits_with(&feats, "object", false, false, refs)?;
    let mut maps = model.image_maps(&lg, size)?;
    if let Some(r) = refs.filter(|_| memory_bank > 0.0) {
        let bank = r.memory_bank_maps(&feats, size, exp.model.fusion.upsample)?;
        maps[0].fewshot = Some((memory_bank as f32, bank.flatten_all()?.to_vec1::<f32>()?));
    }
    let mut fin = finalize(&maps, &exp.model.fusion);
    Ok((fin.maps.swap_remove(0), fin.scores_unnormalized[0]))
}

pub fn run(a: Args, reg: &Registry) -> Result<()> {
    // The output folder is checked before anything is loaded or computed.
    vcp_data::io::prepare_out_dir(&a.out, &["scores.json"])?;
    let mut exp = experiment(&a, reg)?;
    let ref_paths = apply_overrides(&a, &mut exp)?;
    let images = list_images(&a)?;
    let dev = a.dev.device()?;
    let w = backbone_weights(&exp.model.backbone, &dev)?;
    let model = VcpModel::new(reg, &exp.model, &w, exp.seed, &dev)
        .map_err(|e| anyhow::anyhow!("model config: {}", vcp_clip::error::first_line(&e)))?;
    vcp_model::checkpoint::load_into(&model, &a.checkpoint)?;
    let size = exp.model.backbone.image_size;
    // Decode everything first: an unreadable image must not leave a partial result folder.
    let decoded = decode(&images, size)?;
    let refs = if ref_paths.is_empty() {
        None
    } else {
        let r = references(&model, &decode(&ref_paths, size)?, size, &dev)?;
        eprintln!(
            "few-shot: {} reference image(s) from {}",
            ref_paths.len(),
            a.refs
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        );
        Some(r)
    };
    let pb = crate::cmd_eval::bar(images.len() as u64, "images");
    let mut scores = BTreeMap::new();
    for (p, rgb) in &decoded {
        let x = pixels(rgb, size, &dev)?;
        let (map, score) = predict_one(&model, &exp, &x, refs.as_ref(), a.memory_bank)?;
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        let arr = vcp_data::npy::Array2 {
            height: size,
            width: size,
            data: map,
        };
        vcp_data::npy::write_f32_2d(&a.out.join(format!("{stem}.npy")), &arr)?;
        // image | overlay | thresholded map, each S x S.
        let panels = [
            Panel::Image,
            Panel::Heat { outline: None },
            Panel::Threshold(a.threshold),
        ];
        let img = vcp_runner::visual::overlay(rgb, &arr.data, size, &panels);
        vcp_runner::visual::write_png(&a.out.join(format!("{stem}_overlay.png")), &img, None)?;
        scores.insert(stem, serde_json::json!({ "score": score }));
        pb.inc(1);
    }
    pb.finish_and_clear();
    vcp_data::io::write_atomic(
        &a.out.join("scores.json"),
        serde_json::to_string_pretty(&scores)?.as_bytes(),
    )?;
    outln!(
        "wrote {} maps, overlays and scores.json to {}",
        images.len(),
        a.out.display()
    );
    Ok(())
}

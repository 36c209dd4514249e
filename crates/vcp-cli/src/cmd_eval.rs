//! `vcp eval --config X.toml --checkpoint CKPT [--data META] [--save-maps DIR] [--out DIR]`:
//! the model on a dataset's test split, scored exactly like `vcp eval-maps`.

use crate::common::{build_model, device, pixels, resolve_data};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use vcp_data::Meta;
use vcp_metrics::{evaluate_category, CategoryMetrics, MapRef};
use vcp_model::fusion::finalize;
use vcp_model::VcpModel;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: PathBuf,
    /// Trainables (ours or the official .pth); omit only for models with nothing to train.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Override the config's `[eval] data` (meta.json path or synth:<domain>).
    #[arg(long)]
    data: Option<String>,
    #[arg(long)]
    root: Option<String>,
    /// Write each final map as `<DIR>/<img_path>.npy`.
    #[arg(long)]
    save_maps: Option<PathBuf>,
    /// Output folder for metrics.{json,csv,md} (default: next to the checkpoint).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    device: Option<String>,
}

pub fn bar(len: u64, what: &str) -> ProgressBar {
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&format!("{{prefix:>14}} [{{bar:30}}] {{pos}}/{{len}} {what} {{msg}} {{elapsed_precise}} eta {{eta}}"))
            .unwrap()
            .progress_chars("=> "),
    )
}

/// Per-category metrics in category order.
pub type Rows = Vec<(String, CategoryMetrics)>;

/// Evaluate `model` on every category of `meta.test`; optionally save final maps.
pub fn evaluate(
    model: &VcpModel,
    meta: &Meta,
    root: &Path,
    batch_size: usize,
    save_maps: Option<&Path>,
    device: &Device,
    pb: &ProgressBar,
) -> Result<(Rows, Vec<String>)> {
    let size = model.cfg.backbone.image_size;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (cls, recs) in &meta.test.0 {
        pb.set_prefix(cls.clone());
        let mut images = Vec::new();
        let mut masks: Vec<Vec<bool>> = Vec::new();
        let mut labels = Vec::new();
        let mut paths = Vec::new();
        for b in
            vcp_data::dataset::batches(root.to_path_buf(), recs.clone(), size, batch_size, 2, None)
        {
            let b = b?;
            let feats = model.encode_images(&pixels(&b, device)?)?;
            let lg = model.logits(&feats, cls, false, false)?;
            images.extend(model.image_maps(&lg, size)?);
            masks.extend(
                b.masks
                    .chunks(size * size)
                    .map(|m| m.iter().map(|&v| v > 0.5).collect()),
            );
            labels.extend(b.labels.iter().map(|&l| l == 1));
            paths.extend(b.paths.clone());
            pb.inc(b.len() as u64);
        }
        if images.is_empty() {
            notes.push(format!("{cls}: no images"));
            continue;
        }
        let fin = finalize(&images, &model.cfg.fusion);
        if let Some(dir) = save_maps {
            for (m, p) in fin.maps.iter().zip(&paths) {
                let a = vcp_data::npy::Array2 {
                    height: size,
                    width: size,
                    data: m.clone(),
                };
                vcp_data::npy::write_f32_2d(&dir.join(Path::new(p).with_extension("npy")), &a)?;
            }
        }
        let refs: Vec<MapRef> = fin
            .maps
            .iter()
            .zip(&masks)
            .map(|(s, m)| MapRef {
                scores: s,
                mask: m,
                height: size,
                width: size,
            })
            .collect();
        let r = evaluate_category(&refs, &labels, &fin.scores)
            .with_context(|| format!("category {cls}"))?;
        for w in r.warnings {
            notes.push(format!("{cls}: {w}"));
        }
        rows.push((cls.clone(), r.metrics));
    }
    Ok((rows, notes))
}

pub fn run(a: Args) -> Result<()> {
    let exp = crate::common::load_experiment(&a.config)?;
    let dev = device(a.device.as_deref())?;
    let model = build_model(&exp, &dev)?;
    if let Some(c) = &a.checkpoint {
        vcp_model::checkpoint::load_into(&model, c)?;
    } else if model.parameter_count() > 0 && !model.cfg.temperature.learnable {
        eprintln!("warning: no --checkpoint: evaluating freshly initialised trainable parameters");
    }
    let ec = exp.eval.clone();
    let spec = a
        .data
        .clone()
        .or_else(|| ec.as_ref().map(|e| e.data.clone()))
        .context("no data: give --data or an [eval] table")?;
    let root = a
        .root
        .clone()
        .or_else(|| ec.as_ref().and_then(|e| e.root.clone()));
    let (meta, _, root) = resolve_data(&spec, root.as_deref(), &exp.synth)?;
    let bs = ec.as_ref().map(|e| e.batch_size).unwrap_or(8);
    let pb = bar(meta.test.len() as u64, "images");
    let t = std::time::Instant::now();
    let (rows, notes) = evaluate(&model, &meta, &root, bs, a.save_maps.as_deref(), &dev, &pb)?;
    pb.finish_and_clear();
    let out = a.out.clone().unwrap_or_else(|| match &a.checkpoint {
        Some(c) => c
            .parent()
            .map(|p| p.join("eval"))
            .unwrap_or_else(|| PathBuf::from("eval")),
        None => PathBuf::from("results/eval"),
    });
    let md = crate::cmd_eval_maps::write_outputs(
        &out,
        &rows,
        &notes,
        "model image score (see config fusion.image_score)",
    )?;
    println!("{md}");
    println!(
        "Evaluated {} images in {:.1} s; wrote {}/metrics.{{json,csv,md}}",
        meta.test.len(),
        t.elapsed().as_secs_f64(),
        out.display()
    );
    let _ = Tensor::zeros(1, candle_core::DType::F32, &dev)?;
    Ok(())
}

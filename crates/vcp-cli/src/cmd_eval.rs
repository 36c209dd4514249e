//! `vcp eval --config X.toml --checkpoint CKPT [--data META] [--save-maps DIR] [--out DIR]`:
//! the model on a dataset's test split, scored exactly like `vcp eval-maps`.

use crate::common::{build_model, resolve_data};
use anyhow::{Context, Result};
use candle_core::Tensor;
use indicatif::ProgressBar;
use std::path::PathBuf;
use vcp_model::Registry;

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
    #[command(flatten)]
    dev: crate::args::DeviceArgs,
}

pub fn bar(len: u64, what: &str) -> ProgressBar {
    vcp_runner::bar(len, what)
}

pub fn run(a: Args, reg: &Registry) -> Result<()> {
    let mut exp = crate::common::load_experiment(reg, &a.config)?;
    a.dev.apply_dtype(&mut exp)?;
    let dev = a.dev.device()?;
    let model = build_model(reg, &exp, &dev)?;
    if let Some(c) = &a.checkpoint {
        vcp_model::checkpoint::load_into(&model, c)?;
    } else if model.parameter_count() > 0 && !model.cfg.temperature.learnable {
        eprintln!("warning: no --checkpoint: evaluating freshly initialised trainable parameters");
    }
    // Outputs are checked before the evaluation, not after it.
    let out = a.out.clone().unwrap_or_else(|| match &a.checkpoint {
        Some(c) => c
            .parent()
            .map(|p| p.join("eval"))
            .unwrap_or_else(|| PathBuf::from("eval")),
        None => PathBuf::from("results/eval"),
    });
    vcp_data::io::prepare_out_dir(&out, &["metrics.json", "metrics.csv", "metrics.md"])?;
    if let Some(m) = &a.save_maps {
        vcp_data::io::prepare_out_dir(m, &[])?;
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
    let eo = vcp_runner::eval::EvalOptions {
        batch_size: bs,
        save_maps: a.save_maps.as_deref(),
        keep_images: 0,
        cache: None,
    };
    let ev = vcp_runner::eval::evaluate(&model, &meta, &root, &eo, &dev, &pb)?;
    let (rows, notes) = (ev.rows, ev.notes);
    pb.finish_and_clear();
    let md = crate::cmd_eval_maps::write_outputs(
        &out,
        &rows,
        &notes,
        "model image score (see config fusion.image_score)",
    )?;
    outln!("{md}");
    outln!(
        "Evaluated {} images in {:.1} s; wrote {}/metrics.{{json,csv,md}}",
        meta.test.len(),
        t.elapsed().as_secs_f64(),
        out.display()
    );
    let _ = Tensor::zeros(1, candle_core::DType::F32, &dev)?;
    Ok(())
}

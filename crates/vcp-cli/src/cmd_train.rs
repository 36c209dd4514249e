//! `vcp train --config experiments/X.toml [--out DIR] [--resume]` (reference train.py); the loop
//! itself lives in `vcp_runner::train`, shared with `vcp ablate`.

use crate::common::build_model;
use anyhow::{Context, Result};
use std::path::PathBuf;
use vcp_model::Registry;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub threads: crate::args::ThreadArgs,
    #[arg(long)]
    config: PathBuf,
    /// Output folder (default: results/train/<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the last epoch checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
    /// Override `[train] epochs`.
    #[arg(long)]
    epochs: Option<usize>,
    #[command(flatten)]
    dev: crate::args::DeviceArgs,
}

pub fn run(a: Args, reg: &Registry) -> Result<()> {
    let mut exp = crate::common::load_experiment(reg, &a.config)?;
    a.dev.apply_dtype(&mut exp)?;
    let mut tc = exp
        .train
        .clone()
        .with_context(|| format!("{}: no [train] table", a.config.display()))?;
    if let Some(e) = a.epochs {
        tc.epochs = e;
    }
    let dev = a.dev.device()?;
    let model = build_model(reg, &exp, &dev)?;
    let (meta, _, root) = vcp_runner::data::resolve(&tc.data, tc.root.as_deref(), &exp.synth)?;
    let val = tc
        .val_data
        .as_deref()
        .map(|v| vcp_runner::data::resolve(v, None, &exp.synth))
        .transpose()?;
    let name = if exp.name.is_empty() {
        a.config.file_stem().unwrap().to_string_lossy().to_string()
    } else {
        exp.name.clone()
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results/train").join(&name));
    std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
    vcp_data::io::write_atomic(&out.join("config.resolved.toml"), exp.to_toml().as_bytes())?;
    eprintln!(
        "training {} trainable values on {} images ({} categories) for {} epochs, batch {}",
        model.parameter_count(),
        meta.test.len(),
        meta.test.0.len(),
        tc.epochs,
        tc.batch_size
    );
    let opts = vcp_runner::train::TrainOptions {
        out: &out,
        resume: a.resume,
        keep_last_only: false,
        cache: None,
        val: val.as_ref().map(|(m, _, r)| (m, r.as_path())),
        seed: exp.seed,
        quiet: false,
        progress: None,
    };
    vcp_runner::interrupt::install();
    vcp_runner::train::train(&model, &tc, &meta, &root, &opts, &dev)?;
    eprintln!(
        "peak memory {:.0} MiB",
        vcp_runner::train::peak_rss_mib().unwrap_or(0.0)
    );
    Ok(())
}

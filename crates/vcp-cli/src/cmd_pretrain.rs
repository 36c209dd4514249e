//! `vcp pretrain-clip --config experiments/pretrain_tiny_clip.toml [--out DIR] [--resume]`:
//! contrastive pretraining of a small CLIP on the procedural caption corpus.

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub threads: crate::args::ThreadArgs,
    /// The pretraining recipe (TOML: name, [model], [corpus], [train], [eval]).
    #[arg(long)]
    config: PathBuf,
    /// Output folder: checkpoint/, log.csv, heldout.csv, NAME.safetensors (f16) + NAME.json.
    /// Default: pretrain/<name>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from OUT/checkpoint (same architecture; the batches continue where they stopped).
    #[arg(long)]
    resume: bool,
    /// cpu, cuda, cuda:N or auto. Default cpu (not auto, unlike the model commands): the
    /// committed weights were pretrained on a CPU and a rerun reproduces them there.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Override train.steps (e.g. a short trial of the recipe).
    #[arg(long)]
    steps: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg = vcp_pretrain::PretrainConfig::load(&a.config)?;
    if let Some(s) = a.steps {
        cfg.train.steps = s;
        cfg.validate()?;
    }
    let device = crate::common::device(Some(&a.device))?;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("pretrain").join(&cfg.name));
    let provenance = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "config_file": a.config.display().to_string(),
        "device": format!("{device:?}"),
        "threads": rayon::current_num_threads(),
        "vcp_version": env!("CARGO_PKG_VERSION"),
    });
    let summary = vcp_pretrain::run::run(
        cfg.clone(),
        &vcp_pretrain::run::RunOptions {
            out: out.clone(),
            resume: a.resume,
            device,
            provenance,
            progress: true,
        },
    )?;
    match plot_curves(&out) {
        Ok(p) => eprintln!("curves: {}", p.join(", ")),
        Err(e) => eprintln!("(no curves plotted: {e})"),
    }
    if summary.interrupted {
        eprintln!(
            "stopped at step {} of {}; resume with: vcp pretrain-clip --config {} --out {} --resume",
            summary.steps,
            cfg.train.steps,
            a.config.display(),
            out.display()
        );
        std::process::exit(130);
    }
    outln!(
        "pretrained {} steps in {:.0} s (last loss {:.4}); weights: {}",
        summary.steps,
        summary.wall_s,
        summary.last_loss,
        out.join(format!("{}.safetensors", cfg.name)).display()
    );
    Ok(())
}

/// `curves_loss.png` and `curves_heldout.png` from the run's `log.csv` / `heldout.csv`.
pub fn plot_curves(out: &std::path::Path) -> Result<Vec<String>> {
    let read = |name: &str| vcp_pretrain::run::read_log(&out.join(name));
    let mut written = Vec::new();
    let (h, rows) = read("log.csv")?;
    let col = |name: &str| h.iter().position(|c| c == name);
    if let Some(s) = col("step") {
        // The loss per step is noisy: plot it with a running mean over 50 steps.
        let smooth = |l: usize| -> Vec<(f64, f64)> {
            let raw: Vec<(f64, f64)> = rows.iter().map(|r| (r[s], r[l])).collect();
            raw.iter()
                .enumerate()
                .map(|(i, &(x, _))| {
                    let w = &raw[i.saturating_sub(49)..=i];
                    (x, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
                })
                .collect()
        };
        // v1 logs have the total only; v2 logs also the terms (all-zero terms are not drawn).
        let series: Vec<(String, Vec<(f64, f64)>)> = ["loss", "contrastive", "patch", "state"]
            .iter()
            .filter_map(|n| col(n).map(|c| (n.to_string(), smooth(c))))
            .filter(|(_, v)| v.iter().any(|p| p.1 != 0.0))
            .collect();
        if !series.is_empty() {
            let p = out.join("curves_loss.png");
            vcp_runner::plots::line_chart(
                &p,
                "pretraining loss and its terms (batch 128; running mean of 50 steps)",
                "step",
                "loss",
                &series,
            )?;
            written.push(p.display().to_string());
        }
    }
    if let Ok((h, rows)) = read("heldout.csv") {
        let series: Vec<(String, Vec<(f64, f64)>)> = h
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, name)| name.as_str() != "size")
            .map(|(j, name)| (name.clone(), rows.iter().map(|r| (r[0], r[j])).collect()))
            .collect();
        let p = out.join("curves_heldout.png");
        vcp_runner::plots::line_chart(
            &p,
            "held-out corpus pairs: retrieval, kind accuracy, zero-shot image and pixel AUROC",
            "step",
            "fraction",
            &series,
        )?;
        written.push(p.display().to_string());
    }
    Ok(written)
}

//! `vcp data synth` (and, later, `vcp data meta`).

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write meta.json for a dataset in its native layout (see the README for `folder`).
    Meta {
        /// mvtec | visa | btad | mpdd | folder
        #[arg(long)]
        format: String,
        /// Dataset root.
        root: PathBuf,
        /// Output file (default: ROOT/meta.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generate the built-in synthetic defect benchmark (MVTec layout + meta.json).
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Image side in pixels.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Test images per category (half anomalous); as many normal train images.
        #[arg(long, default_value_t = 12)]
        per_category: usize,
    },
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Meta { format, root, out } => {
            let fmt: vcp_data::formats::Format = format.parse()?;
            let meta = vcp_data::formats::build_meta(&root, fmt)?;
            let out = out.unwrap_or_else(|| root.join("meta.json"));
            meta.save(&out)?;
            let anomalous: usize = meta
                .test
                .0
                .iter()
                .map(|(_, r)| r.iter().filter(|x| x.anomaly == 1).count())
                .sum();
            eprintln!(
                "wrote {}: {} categories, {} test images ({anomalous} anomalous), {} train images",
                out.display(),
                meta.test.0.len(),
                meta.test.len(),
                meta.train.len()
            );
            Ok(())
        }
        Command::Synth {
            out,
            seed,
            size,
            per_category,
        } => {
            let t = std::time::Instant::now();
            let meta = vcp_data::synth::generate(
                &out,
                &vcp_data::synth::SynthOptions {
                    seed,
                    size,
                    per_category,
                },
            )?;
            eprintln!(
                "wrote {} images in {} categories to {} ({:.1} s); meta.json, {}",
                meta.train.len() + meta.test.len(),
                meta.test.0.len(),
                out.display(),
                t.elapsed().as_secs_f64(),
                vcp_data::synth::DOMAINS
                    .iter()
                    .map(|(d, _)| format!("meta_{d}.json"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
    }
}

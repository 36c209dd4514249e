//! # vcp-runner: experiments, runs, records, tables and plots
//!
//! * [`config`]: run settings and the experiment file (model slots + `[train]`, `[eval]`).
//! * [`experiment`]: ablation files (base + variants + grid + seeds), resolved configs, hashes.
//! * [`launch`]: one ablation request run here, by worker processes or as a Slurm job array;
//!   tables and the reproduction check when all runs are done.
//! * [`runner`]: resumable runs writing `record.json` last and atomically.
//! * [`train`], [`eval`]: the training loop and the evaluation shared with `vcp train`/`vcp eval`.
//! * [`cache`]: frozen-backbone features reused across variants and epochs.
//! * [`record`]: the typed `record.json` of a finished run.
//! * [`summary`]: per-variant means and spreads over seeds (what tables and figures show).
//! * [`report`], [`plots`]: tables (polars) and figures (plotters) from the records alone.
//! * [`provenance`]: the code and time a record names.

pub mod cache;
pub mod config;
pub mod data;
pub mod eval;
pub mod experiment;
pub mod interrupt;
pub mod launch;
pub mod lock;
pub mod plots;
pub mod provenance;
pub mod record;
pub mod report;
pub mod runner;
pub mod slurm;
pub mod summary;
pub mod train;
pub mod visual;
pub mod workers;

/// A progress bar in the workspace's style.
pub fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{prefix:>14}} [{{bar:30}}] {{pos}}/{{len}} {what} {{msg}} {{elapsed_precise}} eta {{eta}}"
        ))
        .unwrap()
        .progress_chars("=> "),
    )
}

/// An error chain on one line: the first line of each cause, joined with `: ` (causes that
/// repeat an earlier one left out), as the CLI prints errors.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        let first = s.lines().next().unwrap_or("").trim().to_string();
        if !first.is_empty() && !parts.iter().any(|p| p.contains(&first)) {
            parts.push(first);
        }
    }
    parts.join(": ")
}

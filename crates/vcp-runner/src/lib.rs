//! # vcp-runner: experiments, runs, records, tables and plots
//!
//! * [`config`]: run settings and the experiment file (model slots + `[train]`, `[eval]`).
//! * [`experiment`]: ablation files (base + variants + grid + seeds), resolved configs, hashes.
//! * [`runner`]: resumable runs writing `record.json` last and atomically.
//! * [`train`], [`eval`]: the training loop and the evaluation shared with `vcp train`/`vcp eval`.
//! * [`cache`]: frozen-backbone features reused across variants and epochs.
//! * [`record`]: the typed `record.json` of a finished run.
//! * [`report`], [`plots`]: tables (polars) and figures (plotters) from the records alone.

pub mod cache;
pub mod config;
pub mod data;
pub mod eval;
pub mod experiment;
pub mod interrupt;
pub mod plots;
pub mod record;
pub mod report;
pub mod runner;
pub mod train;

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

//! `vcp ablate [EXPERIMENT.toml] [--device ...] [--seeds ...] [--set key=value ...]` and
//! `vcp report EXPERIMENT`.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use vcp_runner::experiment;

const DEFAULT_ABLATION: &str = include_str!("../../../experiments/ablate_default.toml");
const DEFAULT_BASE: &str = include_str!("../../../experiments/vcp_clip_tiny.toml");

#[derive(clap::Args)]
pub struct Args {
    /// Ablation or experiment file; none = the embedded default (synthetic benchmark, tiny CLIP).
    experiment: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    device: Option<String>,
    /// Seeds, e.g. 0,1,2 (overrides the file's list).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Override any config key for every run, e.g. --set train.epochs=2 (repeatable).
    #[arg(long = "set")]
    sets: Vec<String>,
    /// Results folder.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Recompute backbone features for every run (for measuring the cache).
    #[arg(long)]
    no_cache: bool,
    /// Compute dtype of the frozen CLIP towers: f32, bf16 or f16 (mixed precision: LayerNorm,
    /// softmax, heads and losses stay f32). Overrides `backbone.dtype`.
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    dtype: Option<String>,
    /// Feature-cache size limit in MiB.
    #[arg(long, default_value_t = 4096)]
    cache_mib: usize,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Experiment name (folder in --results) or its ablation file.
    experiment: String,
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// The seeds the ablation ran with, when not the file's (as given to `vcp ablate`).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// The overrides the ablation ran with (as given to `vcp ablate`).
    #[arg(long = "set")]
    sets: Vec<String>,
    /// The device class the ablation ran on: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The embedded default written to the cache folder, so `vcp ablate` works from any directory.
fn default_file() -> Result<PathBuf> {
    let dir = vcp_runner::data::cache_dir().join("embedded");
    vcp_data::io::write_atomic(
        &dir.join("ablate_default.toml"),
        DEFAULT_ABLATION.as_bytes(),
    )?;
    vcp_data::io::write_atomic(&dir.join("vcp_clip_tiny.toml"), DEFAULT_BASE.as_bytes())?;
    Ok(dir.join("ablate_default.toml"))
}

/// The command as a user would type it again (`vcp ...`, not the binary's full path).
fn command_line() -> String {
    std::iter::once("vcp".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(a: Args) -> Result<()> {
    let t = std::time::Instant::now();
    let file = match &a.experiment {
        Some(f) => f.clone(),
        None => default_file()?,
    };
    let mut set_args = a.sets.clone();
    if let Some(d) = &a.dtype {
        set_args.push(format!("backbone.dtype={d}"));
    }
    let sets: Vec<_> = set_args
        .iter()
        .map(|s| experiment::parse_set(s))
        .collect::<Result<_>>()?;
    let device = crate::common::device(a.device.as_deref())?;
    let ab = experiment::load(&file, &sets, a.seeds.as_deref())?.on_device(if device.is_cuda() {
        "cuda"
    } else {
        "cpu"
    });
    eprintln!(
        "{}: {} variants x seeds = {} runs",
        ab.name,
        ab.variants.len(),
        ab.runs.len()
    );
    let opts = vcp_runner::runner::RunOptions {
        results: a.results.clone(),
        device,
        cache: !a.no_cache,
        cache_bytes: a.cache_mib << 20,
        keep_images: 1,
        command: command_line(),
    };
    let exp_dir = a.results.join(&ab.name);
    // The committed table is the reference this run is checked against (read before the new
    // table replaces it).
    let reference_table = std::fs::read_to_string(exp_dir.join("table.csv")).ok();
    let (skipped, ran) = vcp_runner::runner::run_all(&ab, &opts)?;
    let (md, plots) = vcp_runner::report::report(
        &exp_dir,
        &ab.variants,
        ab.baseline.as_deref(),
        &ab.reference,
        Some(&ab.hashes()),
    )?;
    outln!("{md}");
    outln!(
        "{ran} runs done, {skipped} already finished; {:.1} s.\nTable: {}/table.md (.csv, .tex)\nPlots: {}",
        t.elapsed().as_secs_f64(),
        exp_dir.display(),
        plots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    match (
        &reference_table,
        std::fs::read_to_string(exp_dir.join("table.csv")),
    ) {
        (Some(old), Ok(new)) if ran > 0 => {
            outln!(
                "{}",
                vcp_runner::report::compare_tables(old, &new).summary()
            )
        }
        (None, _) => outln!(
            "(no earlier table.csv in {} to compare with)",
            exp_dir.display()
        ),
        _ => {}
    }
    Ok(())
}

pub fn report(a: ReportArgs) -> Result<()> {
    let p = Path::new(&a.experiment);
    let sets: Vec<_> = a
        .sets
        .iter()
        .map(|s| experiment::parse_set(s))
        .collect::<Result<_>>()?;
    let file = if p.is_file() {
        Some(p.to_path_buf())
    } else {
        let f = Path::new("experiments").join(format!("{}.toml", a.experiment));
        f.is_file().then_some(f)
    };
    let ab = match &file {
        Some(f) => Some(experiment::load(f, &sets, a.seeds.as_deref())?.on_device(&a.device)),
        None => {
            eprintln!(
                "no experiment file for `{}`: tabulating every record in its folder (pass the file to keep exactly its runs)",
                a.experiment
            );
            None
        }
    };
    let (name, order, baseline, reference, hashes) = match &ab {
        Some(ab) => (
            ab.name.clone(),
            ab.variants.clone(),
            ab.baseline.clone(),
            ab.reference.clone(),
            Some(ab.hashes()),
        ),
        None => (a.experiment.clone(), vec![], None, vec![], None),
    };
    let exp_dir = a.results.join(&name);
    let (md, plots) = vcp_runner::report::report(
        &exp_dir,
        &order,
        baseline.as_deref(),
        &reference,
        hashes.as_deref(),
    )
    .with_context(|| format!("report of {}", exp_dir.display()))?;
    outln!("{md}");
    outln!(
        "Table: {}/table.md; plots: {}",
        exp_dir.display(),
        plots.len()
    );
    Ok(())
}

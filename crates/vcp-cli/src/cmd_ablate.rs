//! `vcp ablate [EXPERIMENT.toml] [--device ...] [--seeds ...] [--set key=value ...]` and
//! `vcp report EXPERIMENT`, with the ways to scale out: `--shard I/N`, `--gpus 0,1,..` /
//! `--workers N` (one process per GPU or CPU share), `--slurm` (a job array), `--status`.
//!
//! This file turns flags into a [`Request`] and a [`Backend`] and prints; what runs where, the
//! child command lines, tables and the reproduction check live in `vcp_runner::launch`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use vcp_model::Registry;
use vcp_runner::experiment;
use vcp_runner::launch::{self, Backend, Launched, Request};

const DEFAULT_ABLATION: &str = include_str!("../../../experiments/ablate_default.toml");
const DEFAULT_BASE: &str = include_str!("../../../experiments/vcp_clip_tiny.toml");

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub threads: crate::args::ThreadArgs,
    /// Ablation or experiment file; none = the embedded default (synthetic benchmark, tiny CLIP).
    experiment: Option<PathBuf>,
    #[command(flatten)]
    dev: crate::args::DeviceArgs,
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
    /// Feature-cache size limit in MiB.
    #[arg(long, default_value_t = 4096)]
    cache_mib: usize,
    /// Folder of the disk feature cache shared by processes (default:
    /// results/<experiment>/feature_cache).
    #[arg(long)]
    feature_cache: Option<PathBuf>,
    /// Size limit of the disk feature cache in MiB.
    #[arg(long, default_value_t = 16384)]
    feature_cache_mib: u64,
    /// Keep frozen features in memory only.
    #[arg(long)]
    no_feature_cache: bool,
    /// Take only shard I of N of the runs (stable by run hash), e.g. --shard 0/4.
    #[arg(long)]
    shard: Option<String>,
    /// List the runs as done / running (by whom) / failed (with the error) / pending, and exit.
    #[arg(long)]
    status: bool,
    /// One worker process per GPU, each seeing only its device, e.g. --gpus 0,1,2,3.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["workers", "slurm"])]
    gpus: Option<Vec<String>>,
    /// N worker processes on the CPU (the cores shared out between them).
    #[arg(long, conflicts_with = "slurm")]
    workers: Option<usize>,
    /// Submit the runs that need work as a Slurm job array plus a collector job.
    #[arg(long)]
    slurm: bool,
    /// Slurm partition (--slurm).
    #[arg(long, requires = "slurm")]
    partition: Option<String>,
    /// Generic resources per array task, e.g. gpu:1 (--slurm).
    #[arg(long, requires = "slurm")]
    gres: Option<String>,
    /// Time limit per array task, HH:MM:SS (--slurm).
    #[arg(long, requires = "slurm")]
    time: Option<String>,
    /// At most K array tasks at once (--slurm).
    #[arg(long, requires = "slurm")]
    array_parallelism: Option<usize>,
    /// An extra sbatch option for both jobs, e.g. --sbatch-arg=--mem=16G (repeatable; --slurm).
    #[arg(long = "sbatch-arg", requires = "slurm", allow_hyphen_values = true)]
    sbatch_args: Vec<String>,
    /// With --slurm: write and print the scripts, submit nothing.
    #[arg(long, requires = "slurm")]
    dry_run: bool,
    /// A file of run hashes, one per line (written by --slurm for its array tasks).
    #[arg(long, requires = "run_index")]
    run_list: Option<PathBuf>,
    /// Run only line I (0-based) of --run-list.
    #[arg(long, requires = "run_list")]
    run_index: Option<usize>,
    /// Remove the lock of run RUN (its folder name as `--status` prints it, e.g. utp-1a2b3c4d,
    /// or a prefix of its hash) and exit: for a lock left by a process that cannot be checked
    /// (another host that died).
    #[arg(long, value_name = "RUN", conflicts_with_all = ["slurm", "workers", "gpus", "status"])]
    break_lock: Option<String>,
    /// Worker mode (set by --gpus/--workers/--slurm): no progress bars, go on after a failed
    /// run, one line per finished run, no tables.
    #[arg(long, hide = true)]
    worker: bool,
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

fn request(a: &Args) -> Result<Request> {
    // Checked here, before any worker or array task starts with them.
    launch::mib_to_bytes(a.cache_mib as u64, "--cache-mib")?;
    launch::mib_to_bytes(a.feature_cache_mib, "--feature-cache-mib")?;
    Ok(Request {
        file: match &a.experiment {
            Some(f) => f.clone(),
            None => default_file()?,
        },
        results: a.results.clone(),
        seeds: a.seeds.clone(),
        sets: a.sets.clone(),
        dtype: a.dev.dtype.clone(),
        device: a.dev.device.clone(),
        cache: launch::CacheOptions {
            no_cache: a.no_cache,
            cache_mib: a.cache_mib as u64,
            feature_cache: a.feature_cache.clone(),
            feature_cache_mib: a.feature_cache_mib,
            no_feature_cache: a.no_feature_cache,
        },
        shard: a.shard.clone(),
        run_list: a.run_list.clone().zip(a.run_index),
    })
}

fn backend(a: &Args, runs: &[&experiment::RunSpec]) -> Result<Backend> {
    Ok(if a.slurm {
        Backend::Slurm(vcp_runner::slurm::SlurmOptions {
            partition: a.partition.clone(),
            gres: a.gres.clone(),
            time: a.time.clone(),
            array_parallelism: a.array_parallelism,
            sbatch_args: a.sbatch_args.clone(),
            dry_run: a.dry_run,
        })
    } else if let Some(g) = &a.gpus {
        Backend::Workers(launch::gpu_slots(g)?)
    } else if let Some(n) = a.workers {
        // All cores, or --threads of them.
        let (slots, notes) = launch::cpu_slots(n, rayon::current_num_threads(), runs, &a.results)?;
        for n in notes {
            eprintln!("{n}");
        }
        Backend::Workers(slots)
    } else {
        Backend::Local { worker: a.worker }
    })
}

fn print_status(runs: &[&experiment::RunSpec], results: &Path) {
    let rows = launch::status(runs, results);
    outln!("{:<8} {:<28} {:>5}  run", "state", "variant", "seed");
    for r in &rows {
        let detail = if r.detail.is_empty() {
            String::new()
        } else {
            format!("  {}", r.detail)
        };
        outln!(
            "{:<8} {:<28} {:>5}  {}{detail}",
            r.state,
            r.variant,
            r.seed,
            r.folder
        );
    }
    let count = |s: &str| rows.iter().filter(|r| r.state == s).count();
    outln!(
        "{} runs: {} done, {} running, {} failed, {} pending",
        rows.len(),
        count("done"),
        count("running"),
        count("failed"),
        count("pending")
    );
}

pub fn run(a: Args, reg: &Registry) -> Result<()> {
    let t = std::time::Instant::now();
    let req = request(&a)?;
    let device = a.dev.device()?;
    let ab = req.load(reg, &device)?;
    let runs = req.select(&ab)?;
    if a.status {
        print_status(&runs, &a.results);
        return Ok(());
    }
    if let Some(name) = &a.break_lock {
        match launch::break_lock(&runs, &a.results, &ab.name, name)? {
            (dir, Some(h)) => outln!(
                "removed the lock of {} held by {h}; if that process is still running, stop it: the run will be done again by the next `vcp ablate`",
                dir.display()
            ),
            (dir, None) => outln!("{}: not locked", dir.display()),
        }
        return Ok(());
    }
    if !a.worker {
        eprintln!("{}", banner(&ab, runs.len()));
    }
    if !(a.slurm && a.dry_run) {
        launch::check_weights(&runs)?;
    }
    let backend = backend(&a, &runs)?;
    let inv = launch::Invocation {
        registry: reg,
        exe: std::env::current_exe().context("the path of this vcp binary")?,
        command: command_line(),
        device,
    };
    // The committed table is the reference the new one is checked against (read before the new
    // table replaces it).
    let reference_table = launch::reference_table(&req, &ab);
    let ran = match launch::launch(&req, &ab, &runs, &backend, &inv) {
        Ok(Launched::Slurm(sub)) => {
            print_submission(&sub, runs.len(), a.dry_run);
            return Ok(());
        }
        Ok(Launched::Workers {
            ran,
            done_before,
            workers,
        }) => {
            outln!("{ran} runs done by {workers} workers, {done_before} already finished");
            ran
        }
        Ok(Launched::Local(sum)) if a.worker => return worker_summary(&sum),
        Ok(Launched::Local(sum)) => {
            outln!(
                "{} runs done, {} already finished{}",
                sum.ran,
                sum.skipped,
                if sum.busy > 0 {
                    format!(", {} running in other processes", sum.busy)
                } else {
                    String::new()
                }
            );
            sum.ran
        }
        Err(e) => {
            if matches!(backend, Backend::Workers(_)) && !vcp_runner::interrupt::requested() {
                print_status(&runs, &a.results);
            }
            return Err(e);
        }
    };
    print_finish(&req, &ab, t, reference_table, ran)
}

/// `name: V variants x seeds = N runs (K selected)`.
fn banner(ab: &experiment::Ablation, selected: usize) -> String {
    format!(
        "{}: {} variants x seeds = {} runs{}",
        ab.name,
        ab.variants.len(),
        ab.runs.len(),
        if selected < ab.runs.len() {
            format!(" ({selected} selected)")
        } else {
            String::new()
        }
    )
}

/// A worker's one-line account (its runs are reported by the parent).
fn worker_summary(sum: &vcp_runner::runner::RunSummary) -> Result<()> {
    eprintln!(
        "worker {}: {} ran, {} had records, {} running elsewhere, {} failed",
        std::process::id(),
        sum.ran,
        sum.skipped,
        sum.busy,
        sum.failed.len()
    );
    if !sum.failed.is_empty() {
        bail!(
            "{} run(s) failed: {}",
            sum.failed.len(),
            sum.failed
                .iter()
                .map(|(v, s, m)| format!("{v} seed {s}: {m}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

fn print_submission(sub: &vcp_runner::slurm::Submission, selected: usize, dry_run: bool) {
    if dry_run {
        outln!(
            "# {}/array.sh\n{}\n# {}/collect.sh\n{}",
            sub.dir.display(),
            sub.array_script,
            sub.dir.display(),
            sub.collect_script
        );
        outln!(
            "dry run: {} runs; scripts written to {}, nothing submitted",
            sub.runs,
            sub.dir.display()
        );
    } else {
        outln!(
            "submitted {} of {selected} runs: array job {} ({} tasks), collector job {} (afterany); scripts and logs in {}",
            sub.runs,
            sub.array_job.as_deref().unwrap_or("?"),
            sub.runs,
            sub.collect_job.as_deref().unwrap_or("?"),
            sub.dir.display()
        );
    }
}

/// Tables and plots once every run of the experiment has a record (and the reproduction check
/// against the table that was there before).
fn print_finish(
    req: &Request,
    ab: &experiment::Ablation,
    t: std::time::Instant,
    reference_table: Option<String>,
    ran: usize,
) -> Result<()> {
    match launch::finish(req, ab, reference_table, ran)? {
        Err(missing) => outln!(
            "{missing} of {} runs have no record yet; the table is written when all are done (`vcp ablate ... --status` lists them, `vcp report` tabulates what there is)",
            ab.runs.len()
        ),
        Ok(f) => {
            outln!("{}", f.table_md);
            outln!(
                "{:.1} s.\nTable: {}/table.md (.csv, .tex)\nPlots: {}",
                t.elapsed().as_secs_f64(),
                req.exp_dir(ab).display(),
                f.plots
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Some(r) = f.reproduction {
                outln!("{r}");
            }
        }
    }
    Ok(())
}

pub fn report(a: ReportArgs, reg: &Registry) -> Result<()> {
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
        Some(f) => Some(experiment::load(reg, f, &sets, a.seeds.as_deref())?.on_device(&a.device)),
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

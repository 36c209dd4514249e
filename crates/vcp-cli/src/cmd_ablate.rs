//! `vcp ablate [EXPERIMENT.toml] [--device ...] [--seeds ...] [--set key=value ...]` and
//! `vcp report EXPERIMENT`, with the ways to scale out: `--shard I/N`, `--gpus 0,1,..` /
//! `--workers N` (one process per GPU or CPU share), `--slurm` (a job array), `--status`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use vcp_runner::experiment::{self, RunSpec};
use vcp_runner::runner::RunState;

const DEFAULT_ABLATION: &str = include_str!("../../../experiments/ablate_default.toml");
const DEFAULT_BASE: &str = include_str!("../../../experiments/vcp_clip_tiny.toml");

#[derive(clap::Args)]
pub struct Args {
    /// Cores to use (compute threads); default all. Results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
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

/// The options every process of this ablation shares (workers, array tasks, the collector),
/// with `file` and `results` as given (absolute for Slurm).
fn shared_args(a: &Args, file: &Path, results: &Path) -> Vec<String> {
    let mut v = vec![file.display().to_string()];
    v.extend(["--results".into(), results.display().to_string()]);
    if let Some(s) = &a.seeds {
        v.push(seeds_arg(s));
    }
    for s in &a.sets {
        v.extend(["--set".into(), s.clone()]);
    }
    if let Some(d) = &a.dtype {
        v.extend(["--dtype".into(), d.clone()]);
    }
    if a.no_cache {
        v.push("--no-cache".into());
    }
    v.extend(["--cache-mib".into(), a.cache_mib.to_string()]);
    if a.no_feature_cache {
        v.push("--no-feature-cache".into());
    } else {
        if let Some(f) = &a.feature_cache {
            v.extend(["--feature-cache".into(), absolute(f).display().to_string()]);
        }
        v.extend([
            "--feature-cache-mib".into(),
            a.feature_cache_mib.to_string(),
        ]);
    }
    v
}

/// `--seeds=0,1,2`.
fn seeds_arg(s: &[u64]) -> String {
    let list: Vec<String> = s.iter().map(|x| x.to_string()).collect();
    format!("--seeds={}", list.join(","))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// The runs this process is asked about: all, a shard, or one line of a run list.
fn selected<'a>(a: &Args, ab: &'a experiment::Ablation) -> Result<Vec<&'a RunSpec>> {
    let mut runs: Vec<&RunSpec> = match &a.shard {
        Some(s) => {
            let (i, n) = experiment::parse_shard(s)?;
            ab.shard(i, n)
        }
        None => ab.runs.iter().collect(),
    };
    if let (Some(list), Some(k)) = (&a.run_list, a.run_index) {
        let text = vcp_data::io::read_regular_string(list, 64 << 20)?;
        let hash = text
            .lines()
            .nth(k)
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .with_context(|| format!("{}: no line {k}", list.display()))?;
        runs.retain(|r| r.hash == hash);
        if runs.is_empty() {
            bail!(
                "{}, line {}: run {} is not a run of this experiment (was the file or --set changed since?)",
                list.display(),
                k + 1,
                hash.chars().take(8).collect::<String>()
            );
        }
    }
    Ok(runs)
}

fn print_status(runs: &[&RunSpec], results: &Path) {
    let (mut done, mut running, mut failed, mut pending) = (0, 0, 0, 0);
    outln!("{:<8} {:<28} {:>5}  run", "state", "variant", "seed");
    for r in runs {
        let dir = r.dir(results);
        let folder = dir
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        let (state, detail) = match vcp_runner::runner::run_state(&dir) {
            RunState::Done => {
                done += 1;
                ("done", String::new())
            }
            RunState::Running(h) => {
                running += 1;
                ("running", format!("  by {h}"))
            }
            RunState::Failed(m) => {
                failed += 1;
                ("failed", format!("  {m}"))
            }
            RunState::Pending => {
                pending += 1;
                ("pending", String::new())
            }
        };
        outln!(
            "{state:<8} {:<28} {:>5}  {folder}{detail}",
            r.variant,
            r.seed
        );
    }
    outln!(
        "{} runs: {done} done, {running} running, {failed} failed, {pending} pending",
        runs.len()
    );
}

/// Every backbone weight file the selected runs need exists, or one error (before any run
/// starts) that says where to get it and where to put it.
fn check_weights(runs: &[&RunSpec]) -> Result<()> {
    let mut missing: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r.config.backbone.weights.as_str(),
                r.config.backbone.preset.as_str(),
            )
        })
        .filter(|(w, _)| !w.is_empty() && !Path::new(w).exists())
        .collect();
    missing.sort();
    missing.dedup();
    if let Some((w, preset)) = missing.first() {
        let hint = match *preset {
            "vit_l_14_336" => " (OpenAI's ViT-L-14-336px.pt: from https://openaipublic.azureedge.net/clip/models/ — see OpenAI CLIP's clip/clip.py for the URL; or `vcp weights fetch openai/clip-vit-large-patch14-336` for the Hugging Face copy, then set backbone.weights to the folder it prints)",
            "vit_b_16" => " (`vcp weights fetch openai/clip-vit-base-patch16`, then set backbone.weights to the folder it prints)",
            _ => " (`vcp weights fetch <owner/name>` downloads a Hugging Face CLIP; set backbone.weights to the folder it prints)",
        };
        bail!(
            "backbone.weights `{w}` does not exist{}: put the weights there{hint}, or pass --set backbone.weights=PATH; no run was started",
            if missing.len() > 1 {
                format!(" (nor {} other weight files)", missing.len() - 1)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn needs_work(r: &RunSpec, results: &Path) -> bool {
    matches!(
        vcp_runner::runner::run_state(&r.dir(results)),
        RunState::Pending | RunState::Failed(_)
    )
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
    let exp_dir = a.results.join(&ab.name);
    let runs = selected(&a, &ab)?;
    // Checked here, before any worker or array task starts with them.
    let cache_bytes = mib_to_bytes(a.cache_mib as u64, "--cache-mib")?;
    let feature_cache_bytes = mib_to_bytes(a.feature_cache_mib, "--feature-cache-mib")?;
    if a.status {
        print_status(&runs, &a.results);
        return Ok(());
    }
    if let Some(name) = &a.break_lock {
        let matching: Vec<&&RunSpec> = runs
            .iter()
            .filter(|r| {
                let dir = r.dir(&a.results);
                dir.file_name()
                    .is_some_and(|f| f.to_string_lossy() == name.as_str())
                    || (name.len() >= 4 && r.hash.starts_with(name.as_str()))
            })
            .collect();
        let r = match matching.as_slice() {
            [r] => r,
            [] => bail!("--break-lock {name}: no run of {} has this folder name or hash prefix (see --status)", ab.name),
            _ => bail!("--break-lock {name}: {} runs match; give the whole folder name", matching.len()),
        };
        let dir = r.dir(&a.results);
        match vcp_runner::lock::break_lock(&dir)? {
            Some(h) => outln!(
                "removed the lock of {} held by {h}; if that process is still running, stop it: the run will be done again by the next `vcp ablate`",
                dir.display()
            ),
            None => outln!("{}: not locked", dir.display()),
        }
        return Ok(());
    }
    if !a.worker {
        eprintln!(
            "{}: {} variants x seeds = {} runs{}",
            ab.name,
            ab.variants.len(),
            ab.runs.len(),
            if runs.len() < ab.runs.len() {
                format!(" ({} selected)", runs.len())
            } else {
                String::new()
            }
        );
    }
    if !(a.slurm && a.dry_run) {
        check_weights(&runs)?;
    }
    let exe = std::env::current_exe().context("the path of this vcp binary")?;
    if a.slurm {
        let todo: Vec<&RunSpec> = runs
            .iter()
            .copied()
            .filter(|r| needs_work(r, &a.results))
            .collect();
        let results_abs = absolute(&a.results);
        let mut ablate_args = shared_args(&a, &absolute(&file), &results_abs);
        if let Some(d) = &a.device {
            ablate_args.extend(["--device".into(), d.clone()]);
        }
        let mut report_args = vec![
            absolute(&file).display().to_string(),
            "--results".into(),
            results_abs.display().to_string(),
            "--device".into(),
            ab.device.clone(),
        ];
        if let Some(s) = &a.seeds {
            report_args.push(seeds_arg(s));
        }
        for s in &set_args {
            report_args.extend(["--set".into(), s.clone()]);
        }
        let cwd = std::env::current_dir()?;
        let cmds = vcp_runner::slurm::Commands {
            exe: &exe,
            ablate_args: &ablate_args,
            report_args: &report_args,
            submitted_by: &command_line(),
            cwd: &cwd,
        };
        let o = vcp_runner::slurm::SlurmOptions {
            partition: a.partition.clone(),
            gres: a.gres.clone(),
            time: a.time.clone(),
            array_parallelism: a.array_parallelism,
            sbatch_args: a.sbatch_args.clone(),
            dry_run: a.dry_run,
        };
        let sub = vcp_runner::slurm::submit(&cmds, &todo, &exp_dir, &ab.name, &o)?;
        if a.dry_run {
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
                "submitted {} of {} runs: array job {} ({} tasks), collector job {} (afterany); scripts and logs in {}",
                sub.runs,
                runs.len(),
                sub.array_job.as_deref().unwrap_or("?"),
                sub.runs,
                sub.collect_job.as_deref().unwrap_or("?"),
                sub.dir.display()
            );
        }
        return Ok(());
    }
    if a.gpus.is_some() || a.workers.is_some() {
        let slots: Vec<vcp_runner::workers::Slot> = match (&a.gpus, a.workers) {
            (Some(g), _) => {
                if !candle_core::utils::cuda_is_available() {
                    bail!("--gpus: this vcp was built without CUDA (cargo build --release --features cuda); use --workers N on the CPU");
                }
                if g.is_empty() || g.iter().any(|x| x.trim().is_empty()) {
                    bail!("--gpus: give GPU indices, e.g. --gpus 0,1");
                }
                g.iter()
                    .map(|x| vcp_runner::workers::Slot::Gpu(x.trim().to_string()))
                    .collect()
            }
            (None, Some(0)) => bail!("--workers must be at least 1"),
            (None, Some(n)) => {
                // All cores, or --threads of them.
                let cores = rayon::current_num_threads();
                // No more workers than runs that need work (an idle worker only costs a process).
                let need = runs
                    .iter()
                    .filter(|r| !r.dir(&a.results).join("record.json").exists())
                    .count()
                    .max(1);
                let n = if n > need {
                    eprintln!("--workers {n}: only {need} run(s) need work; starting {need}");
                    need
                } else {
                    n
                };
                if n > cores {
                    eprintln!(
                        "--workers {n}: more workers than the {cores} cores; each gets one thread and they share the cores"
                    );
                }
                (0..n)
                    .map(|_| vcp_runner::workers::Slot::Cpu {
                        threads: (cores / n).max(1),
                    })
                    .collect()
            }
            (None, None) => unreachable!(),
        };
        let mut args = vec!["ablate".to_string()];
        args.extend(shared_args(&a, &file, &a.results));
        if let Some(s) = &a.shard {
            args.extend(["--shard".into(), s.clone()]);
        }
        let reference_table =
            vcp_data::io::read_regular_string(&exp_dir.join("table.csv"), 256 << 20).ok();
        let done = |runs: &[&RunSpec]| {
            runs.iter()
                .filter(|r| r.dir(&a.results).join("record.json").exists())
                .count()
        };
        let done_before = done(&runs);
        let pool = vcp_runner::workers::Pool {
            exe,
            args,
            slots,
            log_dir: exp_dir.join("workers"),
        };
        let outcomes = vcp_runner::workers::run(&pool, &runs, &a.results, &ab.name)?;
        let bad: Vec<String> = outcomes
            .iter()
            .filter(|o| !o.success)
            .map(|o| o.log.display().to_string())
            .collect();
        if vcp_runner::interrupt::requested() {
            bail!("interrupted (Ctrl-C): the workers stopped; runs without a record are redone next time");
        }
        if !bad.is_empty() {
            print_status(&runs, &a.results);
            bail!(
                "{} of {} workers ended with an error (see {})",
                bad.len(),
                outcomes.len(),
                bad.join(", ")
            );
        }
        let ran = done(&runs) - done_before;
        outln!(
            "{ran} runs done by {} workers, {done_before} already finished",
            outcomes.len()
        );
        return finish(&a, &ab, &exp_dir, t, reference_table, ran);
    }
    let opts = vcp_runner::runner::RunOptions {
        results: a.results.clone(),
        device,
        cache: !a.no_cache,
        cache_bytes: cache_bytes as usize,
        keep_images: 1,
        command: command_line(),
        quiet: a.worker,
        keep_going: a.worker,
        announce: a.worker,
        feature_cache: (!a.no_feature_cache).then(|| vcp_runner::cache::DiskOptions {
            dir: a
                .feature_cache
                .clone()
                .unwrap_or_else(|| exp_dir.join("feature_cache")),
            max_bytes: feature_cache_bytes,
        }),
    };
    // The committed table is the reference this run is checked against (read before the new
    // table replaces it).
    let reference_table =
        vcp_data::io::read_regular_string(&exp_dir.join("table.csv"), 256 << 20).ok();
    let sum = vcp_runner::runner::run_all(&runs, &ab.name, &opts)?;
    if a.worker {
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
        return Ok(());
    }
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
    finish(&a, &ab, &exp_dir, t, reference_table, sum.ran)
}

/// Tables and plots once every run of the experiment has a record (and the reproduction check
/// against the table that was there before).
fn finish(
    a: &Args,
    ab: &experiment::Ablation,
    exp_dir: &Path,
    t: std::time::Instant,
    reference_table: Option<String>,
    ran: usize,
) -> Result<()> {
    let missing = ab
        .runs
        .iter()
        .filter(|r| !r.dir(&a.results).join("record.json").exists())
        .count();
    if missing > 0 {
        outln!(
            "{missing} of {} runs have no record yet; the table is written when all are done (`vcp ablate ... --status` lists them, `vcp report` tabulates what there is)",
            ab.runs.len()
        );
        return Ok(());
    }
    let (md, plots) = vcp_runner::report::report(
        exp_dir,
        &ab.variants,
        ab.baseline.as_deref(),
        &ab.reference,
        Some(&ab.hashes()),
    )?;
    outln!("{md}");
    outln!(
        "{:.1} s.\nTable: {}/table.md (.csv, .tex)\nPlots: {}",
        t.elapsed().as_secs_f64(),
        exp_dir.display(),
        plots
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    match (
        &reference_table,
        vcp_data::io::read_regular_string(&exp_dir.join("table.csv"), 256 << 20),
    ) {
        (Some(old), Ok(new)) if ran > 0 => {
            outln!(
                "{}",
                vcp_runner::report::compare_tables(old, &new).summary()
            )
        }
        (None, _) if ran > 0 => outln!(
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

/// MiB to bytes; a value whose bytes do not fit (in this machine's address space) is an error,
/// not a silently wrapped (disabled) limit.
fn mib_to_bytes(mib: u64, flag: &str) -> Result<u64> {
    mib.checked_mul(1 << 20)
        .filter(|&b| b <= usize::MAX as u64)
        .with_context(|| {
            format!(
                "{flag} {mib}: too large (at most {} MiB)",
                (usize::MAX as u64) >> 20
            )
        })
}

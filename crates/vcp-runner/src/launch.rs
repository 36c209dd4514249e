//! One ablation request and the ways to run it: in this process ([`Backend::Local`]), as
//! worker processes on this machine ([`Backend::Workers`]), or as a Slurm job array
//! ([`Backend::Slurm`]). [`launch`] runs the selected runs with the chosen backend; [`finish`]
//! writes the tables and plots once every run has a record and checks them against the table
//! that was there before. The CLI only turns flags into a [`Request`] and a [`Backend`] and
//! prints what comes back.
//!
//! Every child process (worker, array task, collector) receives the request through one
//! serialiser, [`Request::child_args`], so a new option cannot be forgotten on one path.

use crate::experiment::{self, Ablation, RunSpec};
use crate::runner::{RunOptions, RunState, RunSummary};
use crate::workers::Slot;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};
use vcp_model::Registry;

/// Feature caches of the runs (see [`crate::cache`]).
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Recompute backbone features for every run.
    pub no_cache: bool,
    /// In-memory cache limit (MiB).
    pub cache_mib: u64,
    /// Disk cache folder shared by processes (default `results/<experiment>/feature_cache`).
    pub feature_cache: Option<PathBuf>,
    /// Disk cache limit (MiB).
    pub feature_cache_mib: u64,
    /// Keep frozen features in memory only.
    pub no_feature_cache: bool,
}

/// Everything that defines which runs an ablation consists of and how they are computed.
#[derive(Debug, Clone)]
pub struct Request {
    /// The ablation or experiment file.
    pub file: PathBuf,
    /// The results folder (`results/<experiment>/runs/...` below it).
    pub results: PathBuf,
    /// Seeds replacing the file's list.
    pub seeds: Option<Vec<u64>>,
    /// `--set key=value` overrides, as typed.
    pub sets: Vec<String>,
    /// Compute dtype of the frozen towers (`backbone.dtype`).
    pub dtype: Option<String>,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: Option<String>,
    pub cache: CacheOptions,
    /// Only shard `I/N` of the runs.
    pub shard: Option<String>,
    /// Only line `k` of a run list (Slurm array tasks).
    pub run_list: Option<(PathBuf, usize)>,
}

/// MiB to bytes; a value whose bytes do not fit (in this machine's address space) is an error,
/// not a silently wrapped (disabled) limit.
pub fn mib_to_bytes(mib: u64, flag: &str) -> Result<u64> {
    mib.checked_mul(1 << 20)
        .filter(|&b| b <= usize::MAX as u64)
        .with_context(|| {
            format!(
                "{flag} {mib}: too large (at most {} MiB)",
                (usize::MAX as u64) >> 20
            )
        })
}

/// `--seeds=0,1,2`.
fn seeds_arg(s: &[u64]) -> String {
    let list: Vec<String> = s.iter().map(|x| x.to_string()).collect();
    format!("--seeds={}", list.join(","))
}

/// `p` made absolute against the current folder (paths handed to jobs on other nodes).
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

impl Request {
    /// The overrides every run gets: the `--set`s, then `--dtype` as `backbone.dtype`.
    pub fn all_sets(&self) -> Vec<String> {
        let mut v = self.sets.clone();
        if let Some(d) = &self.dtype {
            v.push(format!("backbone.dtype={d}"));
        }
        v
    }

    /// The expanded experiment (slots read with the kinds of `reg`), its run hashes for
    /// `device`'s class.
    pub fn load(&self, reg: &Registry, device: &Device) -> Result<Ablation> {
        let sets: Vec<_> = self
            .all_sets()
            .iter()
            .map(|s| experiment::parse_set(s))
            .collect::<Result<_>>()?;
        let class = if device.is_cuda() { "cuda" } else { "cpu" };
        Ok(experiment::load(reg, &self.file, &sets, self.seeds.as_deref())?.on_device(class))
    }

    /// `results/<experiment>`.
    pub fn exp_dir(&self, ab: &Ablation) -> PathBuf {
        self.results.join(&ab.name)
    }

    /// The runs this process is asked about: all, a shard, or one line of a run list.
    pub fn select<'a>(&self, ab: &'a Ablation) -> Result<Vec<&'a RunSpec>> {
        let mut runs: Vec<&RunSpec> = match &self.shard {
            Some(s) => {
                let (i, n) = experiment::parse_shard(s)?;
                ab.shard(i, n)
            }
            None => ab.runs.iter().collect(),
        };
        if let Some((list, k)) = &self.run_list {
            let text = vcp_data::io::read_regular_string(list, 64 << 20)?;
            let hash = text
                .lines()
                .nth(*k)
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

    /// The arguments of `vcp ablate` that reproduce this request in a child process, with
    /// `file` and `results` as given (absolute for Slurm). Selection (shard, run list) and the
    /// device are added by each backend.
    pub fn child_args(&self, file: &Path, results: &Path) -> Vec<String> {
        let mut v = vec![file.display().to_string()];
        v.extend(["--results".into(), results.display().to_string()]);
        if let Some(s) = &self.seeds {
            v.push(seeds_arg(s));
        }
        for s in &self.sets {
            v.extend(["--set".into(), s.clone()]);
        }
        if let Some(d) = &self.dtype {
            v.extend(["--dtype".into(), d.clone()]);
        }
        let c = &self.cache;
        if c.no_cache {
            v.push("--no-cache".into());
        }
        v.extend(["--cache-mib".into(), c.cache_mib.to_string()]);
        if c.no_feature_cache {
            v.push("--no-feature-cache".into());
        } else {
            if let Some(f) = &c.feature_cache {
                v.extend(["--feature-cache".into(), absolute(f).display().to_string()]);
            }
            v.extend([
                "--feature-cache-mib".into(),
                c.feature_cache_mib.to_string(),
            ]);
        }
        v
    }

    /// The arguments of `vcp report` that tabulate exactly this request's runs.
    pub fn report_args(&self, file: &Path, results: &Path, device_class: &str) -> Vec<String> {
        let mut v = vec![
            file.display().to_string(),
            "--results".into(),
            results.display().to_string(),
            "--device".into(),
            device_class.to_string(),
        ];
        if let Some(s) = &self.seeds {
            v.push(seeds_arg(s));
        }
        for s in self.all_sets() {
            v.extend(["--set".into(), s]);
        }
        v
    }
}

/// Whether a run still needs to be done (no record, not running elsewhere).
pub fn needs_work(r: &RunSpec, results: &Path) -> bool {
    matches!(
        crate::runner::run_state(&r.dir(results)),
        RunState::Pending | RunState::Failed(_)
    )
}

/// Every backbone weight file the selected runs need exists, or one error (before any run
/// starts) that says where to get it and where to put it.
pub fn check_weights(runs: &[&RunSpec]) -> Result<()> {
    let mut missing: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r.config.model.backbone.weights.as_str(),
                r.config.model.backbone.preset.as_str(),
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

/// One line of `vcp ablate --status`.
pub struct StatusRow {
    /// `done`, `running`, `failed` or `pending`.
    pub state: &'static str,
    pub variant: String,
    pub seed: u64,
    /// The run's folder name.
    pub folder: String,
    /// Who holds it (running) or its error (failed).
    pub detail: String,
}

/// The state of each run, in order.
pub fn status(runs: &[&RunSpec], results: &Path) -> Vec<StatusRow> {
    runs.iter()
        .map(|r| {
            let dir = r.dir(results);
            let (state, detail) = match crate::runner::run_state(&dir) {
                RunState::Done => ("done", String::new()),
                RunState::Running(h) => ("running", format!("by {h}")),
                RunState::Failed(m) => ("failed", m),
                RunState::Pending => ("pending", String::new()),
            };
            StatusRow {
                state,
                variant: r.variant.clone(),
                seed: r.seed,
                folder: dir
                    .file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default(),
                detail,
            }
        })
        .collect()
}

/// Remove the lock of the run whose folder name is `name` (or whose hash starts with it, 4+
/// characters): its folder and the holder that was removed (`None`: it was not locked).
pub fn break_lock(
    runs: &[&RunSpec],
    results: &Path,
    experiment: &str,
    name: &str,
) -> Result<(PathBuf, Option<crate::lock::Holder>)> {
    let matching: Vec<&&RunSpec> = runs
        .iter()
        .filter(|r| {
            r.dir(results)
                .file_name()
                .is_some_and(|f| f.to_string_lossy() == name)
                || (name.len() >= 4 && r.hash.starts_with(name))
        })
        .collect();
    let r = match matching.as_slice() {
        [r] => r,
        [] => bail!("--break-lock {name}: no run of {experiment} has this folder name or hash prefix (see --status)"),
        _ => bail!("--break-lock {name}: {} runs match; give the whole folder name", matching.len()),
    };
    let dir = r.dir(results);
    let holder = crate::lock::break_lock(&dir)?;
    Ok((dir, holder))
}

/// Where and how the runs are computed.
pub enum Backend {
    /// In this process. `worker`: no progress bars, go on after a failed run, one line per
    /// finished run, no tables (how workers and array tasks run).
    Local { worker: bool },
    /// Worker processes of this binary on this machine, one per slot.
    Workers(Vec<Slot>),
    /// A Slurm job array plus a collector job.
    Slurm(crate::slurm::SlurmOptions),
}

/// One worker per GPU index (`--gpus 0,1`).
pub fn gpu_slots(gpus: &[String]) -> Result<Vec<Slot>> {
    if !candle_core::utils::cuda_is_available() {
        bail!("--gpus: this vcp was built without CUDA (cargo build --release --features cuda); use --workers N on the CPU");
    }
    if gpus.is_empty() || gpus.iter().any(|x| x.trim().is_empty()) {
        bail!("--gpus: give GPU indices, e.g. --gpus 0,1");
    }
    Ok(gpus
        .iter()
        .map(|x| Slot::Gpu(x.trim().to_string()))
        .collect())
}

/// `n` CPU workers sharing `cores` (capped at the runs that need work; notes for the user in
/// the second value).
pub fn cpu_slots(
    n: usize,
    cores: usize,
    runs: &[&RunSpec],
    results: &Path,
) -> Result<(Vec<Slot>, Vec<String>)> {
    if n == 0 {
        bail!("--workers must be at least 1");
    }
    let mut notes = Vec::new();
    // No more workers than runs that need work (an idle worker only costs a process).
    let need = runs
        .iter()
        .filter(|r| !r.dir(results).join("record.json").exists())
        .count()
        .max(1);
    let n = if n > need {
        notes.push(format!(
            "--workers {n}: only {need} run(s) need work; starting {need}"
        ));
        need
    } else {
        n
    };
    if n > cores {
        notes.push(format!(
            "--workers {n}: more workers than the {cores} cores; each gets one thread and they share the cores"
        ));
    }
    let slots = (0..n)
        .map(|_| Slot::Cpu {
            threads: (cores / n).max(1),
        })
        .collect();
    Ok((slots, notes))
}

/// What the process that launches knows about itself.
pub struct Invocation<'a> {
    /// The component kinds this binary was built with.
    pub registry: &'a Registry,
    /// This `vcp` binary (children run it).
    pub exe: PathBuf,
    /// The command line as the user typed it (recorded; written into Slurm scripts).
    pub command: String,
    pub device: Device,
}

/// What a launch did.
pub enum Launched {
    /// Runs in this process.
    Local(RunSummary),
    /// Worker processes: how many runs they finished, how many had records before, how many
    /// workers there were.
    Workers {
        ran: usize,
        done_before: usize,
        workers: usize,
    },
    /// Scripts written (and submitted unless a dry run).
    Slurm(crate::slurm::Submission),
}

/// Run `runs` of `ab` with `backend`.
pub fn launch(
    req: &Request,
    ab: &Ablation,
    runs: &[&RunSpec],
    backend: &Backend,
    inv: &Invocation<'_>,
) -> Result<Launched> {
    match backend {
        Backend::Local { worker } => run_here(req, ab, runs, *worker, inv).map(Launched::Local),
        Backend::Workers(slots) => run_workers(req, ab, runs, slots, inv),
        Backend::Slurm(o) => submit_slurm(req, ab, runs, o, inv).map(Launched::Slurm),
    }
}

fn run_here(
    req: &Request,
    ab: &Ablation,
    runs: &[&RunSpec],
    worker: bool,
    inv: &Invocation<'_>,
) -> Result<RunSummary> {
    let c = &req.cache;
    let opts = RunOptions {
        registry: inv.registry,
        results: req.results.clone(),
        device: inv.device.clone(),
        cache: !c.no_cache,
        cache_bytes: mib_to_bytes(c.cache_mib, "--cache-mib")? as usize,
        keep_images: 1,
        command: inv.command.clone(),
        quiet: worker,
        keep_going: worker,
        announce: worker,
        feature_cache: if c.no_feature_cache {
            None
        } else {
            Some(crate::cache::DiskOptions {
                dir: c
                    .feature_cache
                    .clone()
                    .unwrap_or_else(|| req.exp_dir(ab).join("feature_cache")),
                max_bytes: mib_to_bytes(c.feature_cache_mib, "--feature-cache-mib")?,
            })
        },
    };
    crate::runner::run_all(runs, &ab.name, &opts)
}

fn run_workers(
    req: &Request,
    ab: &Ablation,
    runs: &[&RunSpec],
    slots: &[Slot],
    inv: &Invocation<'_>,
) -> Result<Launched> {
    let mut args = vec!["ablate".to_string()];
    args.extend(req.child_args(&req.file, &req.results));
    if let Some(s) = &req.shard {
        args.extend(["--shard".into(), s.clone()]);
    }
    let done = |runs: &[&RunSpec]| {
        runs.iter()
            .filter(|r| r.dir(&req.results).join("record.json").exists())
            .count()
    };
    let done_before = done(runs);
    let pool = crate::workers::Pool {
        exe: inv.exe.clone(),
        args,
        slots: slots.to_vec(),
        log_dir: req.exp_dir(ab).join("workers"),
    };
    let outcomes = crate::workers::run(&pool, runs, &req.results, &ab.name)?;
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.success)
        .map(|o| o.log.display().to_string())
        .collect();
    if crate::interrupt::requested() {
        bail!(
            "interrupted (Ctrl-C): the workers stopped; runs without a record are redone next time"
        );
    }
    if !bad.is_empty() {
        bail!(
            "{} of {} workers ended with an error (see {}; `vcp ablate ... --status` lists the runs)",
            bad.len(),
            outcomes.len(),
            bad.join(", ")
        );
    }
    Ok(Launched::Workers {
        ran: done(runs) - done_before,
        done_before,
        workers: outcomes.len(),
    })
}

fn submit_slurm(
    req: &Request,
    ab: &Ablation,
    runs: &[&RunSpec],
    o: &crate::slurm::SlurmOptions,
    inv: &Invocation<'_>,
) -> Result<crate::slurm::Submission> {
    let todo: Vec<&RunSpec> = runs
        .iter()
        .copied()
        .filter(|r| needs_work(r, &req.results))
        .collect();
    let (file, results) = (absolute(&req.file), absolute(&req.results));
    let mut ablate_args = req.child_args(&file, &results);
    if let Some(d) = &req.device {
        ablate_args.extend(["--device".into(), d.clone()]);
    }
    let report_args = req.report_args(&file, &results, &ab.device);
    let cwd = std::env::current_dir()?;
    let cmds = crate::slurm::Commands {
        exe: &inv.exe,
        ablate_args: &ablate_args,
        report_args: &report_args,
        submitted_by: &inv.command,
        cwd: &cwd,
    };
    crate::slurm::submit(&cmds, &todo, &req.exp_dir(ab), &ab.name, o)
}

/// The tables and plots of a finished experiment.
pub struct Finished {
    /// `table.md` as printed.
    pub table_md: String,
    pub plots: Vec<PathBuf>,
    /// The reproduction check against the table that was there before (when runs were done
    /// now): a summary line, or a note that there was no earlier table.
    pub reproduction: Option<String>,
}

/// The committed table a new one is checked against (read before it is replaced).
pub fn reference_table(req: &Request, ab: &Ablation) -> Option<String> {
    vcp_data::io::read_regular_string(&req.exp_dir(ab).join("table.csv"), 256 << 20).ok()
}

/// Tables and plots once every run of the experiment has a record (`Err(missing)` with the
/// number of runs without one otherwise), and the reproduction check against
/// `reference_table` when `ran` runs were done now.
pub fn finish(
    req: &Request,
    ab: &Ablation,
    reference_table: Option<String>,
    ran: usize,
) -> Result<std::result::Result<Finished, usize>> {
    let missing = ab
        .runs
        .iter()
        .filter(|r| !r.dir(&req.results).join("record.json").exists())
        .count();
    if missing > 0 {
        return Ok(Err(missing));
    }
    let exp_dir = req.exp_dir(ab);
    let (table_md, plots) = crate::report::report(
        &exp_dir,
        &ab.variants,
        ab.baseline.as_deref(),
        &ab.reference,
        Some(&ab.hashes()),
    )?;
    let new = vcp_data::io::read_regular_string(&exp_dir.join("table.csv"), 256 << 20);
    let reproduction = match (&reference_table, new) {
        (Some(old), Ok(new)) if ran > 0 => Some(crate::report::compare_tables(old, &new).summary()),
        (None, _) if ran > 0 => Some(format!(
            "(no earlier table.csv in {} to compare with)",
            exp_dir.display()
        )),
        _ => None,
    };
    Ok(Ok(Finished {
        table_md,
        plots,
        reproduction,
    }))
}

//! Running an ablation: each run trains (if it has something to train) and evaluates, then writes
//! `record.json` last and atomically. A run whose record exists is skipped; an interrupted run
//! left no record and is redone. Frozen-backbone features are shared across runs (cache.rs).

use crate::cache::FeatureCache;
use crate::config::ExperimentConfig;
use crate::experiment::RunSpec;
use crate::provenance::{git_state, utc_now};
use crate::record::{Datasets, Git, Metrics, OrderedMap, Qualitative, Record, WallSeconds};
use crate::visual::Panel;
use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::MultiProgress;
use std::path::{Path, PathBuf};
use vcp_model::{Registry, VcpModel};

pub struct RunOptions<'a> {
    /// The component kinds the runs' slots are built with.
    pub registry: &'a Registry,
    pub results: PathBuf,
    pub device: Device,
    pub cache: bool,
    pub cache_bytes: usize,
    /// Images per category kept for the qualitative grid.
    pub keep_images: usize,
    /// The command that started the runs (recorded; printed under the tables).
    pub command: String,
    /// No progress bars (worker processes, Slurm tasks).
    pub quiet: bool,
    /// After a failed run, go on with the others (workers, Slurm tasks).
    pub keep_going: bool,
    /// Print `ran <hash> <variant> seed <seed>` to stdout after each finished run.
    pub announce: bool,
    /// Frozen features on disk, shared by processes (`--feature-cache`).
    pub feature_cache: Option<crate::cache::DiskOptions>,
}

pub use crate::config::backbone_weights;

/// What [`run_all`] did.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Runs with a record before this call.
    pub skipped: usize,
    /// Runs this process finished.
    pub ran: usize,
    /// Runs another process was working on.
    pub busy: usize,
    /// (variant, seed, error) of runs that failed (with `keep_going`).
    pub failed: Vec<(String, u64, String)>,
}

/// The state of a run, as `vcp ablate EXP --status` lists it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Done,
    Running(crate::lock::Holder),
    /// The last line of the run's `error.txt`.
    Failed(String),
    Pending,
}

pub const ERROR_FILE: &str = "error.txt";

pub fn run_state(dir: &Path) -> RunState {
    if dir.join("record.json").exists() {
        return RunState::Done;
    }
    if let Some(h) = crate::lock::holder(dir) {
        if h.may_be_alive() {
            return RunState::Running(h);
        }
    }
    match vcp_data::io::read_regular_string(&dir.join(ERROR_FILE), 1 << 20) {
        Ok(t) => RunState::Failed(t.lines().last().unwrap_or("").to_string()),
        Err(_) => RunState::Pending,
    }
}

/// Run every given run that has no record and that no other live process holds. Each run is
/// claimed with a lock file first (see [`crate::lock`]), so several processes may share one
/// experiment folder. A failed run leaves `error.txt` (its message) and no record; with
/// `keep_going` the others still run, else the error is returned at once.
/// What [`claim`] found for a run.
enum Claimed {
    /// This process does the run (holding its lock).
    Run(crate::lock::RunLock),
    /// It has a record already.
    Done,
    /// Another live process is doing it.
    Busy,
}

/// Take the run's lock unless it is done or another process holds it (a stale lock of a dead
/// process is taken over, with one line saying so).
fn claim(spec: &RunSpec, dir: &Path, o: &RunOptions<'_>, mp: &MultiProgress) -> Result<Claimed> {
    if dir.join("record.json").exists() {
        return Ok(Claimed::Done);
    }
    let lock = match crate::lock::try_claim(dir)? {
        crate::lock::Claim::Acquired(l) => l,
        crate::lock::Claim::Held(h) => {
            if !o.quiet {
                mp.suspend(|| {
                    eprintln!(
                        "{} seed {}: running in {h}; skipped here",
                        spec.variant, spec.seed
                    )
                });
            }
            return Ok(Claimed::Busy);
        }
    };
    if dir.join("record.json").exists() {
        // Finished by another process between the check and the claim.
        return Ok(Claimed::Done);
    }
    if let Some(h) = &lock.took_over {
        mp.suspend(|| {
            eprintln!(
                "{} seed {}: took over the stale lock of {h} (that process is gone); redoing the run",
                spec.variant, spec.seed
            )
        });
    }
    Ok(Claimed::Run(lock))
}

pub fn run_all(runs: &[&RunSpec], name: &str, o: &RunOptions<'_>) -> Result<RunSummary> {
    let cache = FeatureCache::new(if o.cache { o.cache_bytes } else { 0 })
        .with_disk(o.feature_cache.clone());
    let mp = if o.quiet {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let overall = mp.add(crate::bar(runs.len() as u64, "runs"));
    overall.set_prefix(name.to_string());
    let mut sum = RunSummary::default();
    crate::interrupt::install();
    for spec in runs {
        if crate::interrupt::requested() {
            anyhow::bail!(
                "interrupted (Ctrl-C): {} runs finished now, {} before; rerun to continue",
                sum.ran,
                sum.skipped
            );
        }
        let dir = spec.dir(&o.results);
        let lock = match claim(spec, &dir, o, &mp)? {
            Claimed::Run(lock) => lock,
            Claimed::Done => {
                sum.skipped += 1;
                overall.inc(1);
                continue;
            }
            Claimed::Busy => {
                sum.busy += 1;
                overall.inc(1);
                continue;
            }
        };
        let _ = std::fs::remove_file(dir.join(ERROR_FILE));
        overall.set_message(format!("{} (seed {})", spec.variant, spec.seed));
        let res = run_one(
            spec,
            &dir,
            o,
            if o.cache { Some(&cache) } else { None },
            &mp,
        )
        .with_context(|| format!("run {} seed {}", spec.variant, spec.seed));
        match res {
            Ok(()) => {
                sum.ran += 1;
                if o.announce {
                    // One line per finished run (workers' logs, tests counting who ran what).
                    println!("ran {} {} seed {}", spec.hash, spec.variant, spec.seed);
                }
            }
            Err(e) => {
                let msg = crate::one_line(&e);
                let _ = vcp_data::io::write_atomic(
                    &dir.join(ERROR_FILE),
                    format!("{msg}\n").as_bytes(),
                );
                if !o.keep_going || crate::interrupt::requested() {
                    return Err(e);
                }
                mp.suspend(|| eprintln!("failed: {msg}"));
                sum.failed.push((spec.variant.clone(), spec.seed, msg));
            }
        }
        drop(lock);
        overall.inc(1);
    }
    overall.finish_and_clear();
    let (hits, misses, bytes) = cache.stats();
    if o.cache && hits + misses > 0 && !o.quiet {
        eprintln!(
            "feature cache: {hits} hits, {misses} misses, {:.1} MiB in memory{}",
            bytes as f64 / 1048576.0,
            cache.disk_summary()
        );
    }
    Ok(sum)
}

/// Training of one run (when the experiment trains anything); epoch lines go to `log`.
fn train_phase(
    exp: &crate::config::ExperimentConfig,
    model: &VcpModel,
    dir: &Path,
    cache: Option<&FeatureCache>,
    mp: &MultiProgress,
    device: &Device,
    log: &mut String,
) -> Result<crate::train::TrainReport> {
    let mut train_report = crate::train::TrainReport::default();
    if let Some(tc) = &exp.train {
        if model.parameter_count() > 0 && tc.epochs > 0 {
            let (meta, _, root) = crate::data::resolve(&tc.data, tc.root.as_deref(), &exp.synth)?;
            let opts = crate::train::TrainOptions {
                out: dir,
                resume: false,
                keep_last_only: true,
                cache,
                val: None,
                seed: exp.seed,
                quiet: true,
                progress: Some(mp),
            };
            train_report = crate::train::train(model, tc, &meta, &root, &opts, device)?;
            for e in &train_report.epochs {
                log.push_str(&format!(
                    "epoch {} loss {:.5} ({:.1} s)\n",
                    e.epoch, e.loss, e.seconds
                ));
            }
        }
    }
    Ok(train_report)
}

/// The run folder's files besides the record: qualitative overlays, `per_category.csv`,
/// `curves.json`. Returns the overlays for the record.
fn write_run_files(
    dir: &Path,
    ev: &crate::eval::EvalOutput,
    size: usize,
) -> Result<Vec<Qualitative>> {
    std::fs::create_dir_all(dir.join("qual"))?;
    let mut qual = Vec::new();
    for k in &ev.kept {
        let (p, rgb, map, mask) = (&k.img_path, &k.rgb, &k.map, &k.mask);
        let name = format!(
            "{}.png",
            crate::experiment::slug(p.trim_end_matches(|c: char| c != '.').trim_end_matches('.'))
        );
        // image | heat overlay with the ground-truth outline; tiles of at most 128 px, small
        // enough to commit with the records.
        let panels = [
            Panel::Image,
            Panel::Heat {
                outline: Some(mask),
            },
        ];
        let img = crate::visual::overlay(rgb, map, size, &panels);
        crate::visual::write_png(&dir.join("qual").join(&name), &img, Some(128))?;
        qual.push(Qualitative {
            img_path: p.clone(),
            file: format!("qual/{name}"),
        });
    }
    crate::report::write_csv(
        &dir.join("per_category.csv"),
        crate::report::per_category_frame(&ev.rows)?,
    )?;
    let curves: serde_json::Map<String, serde_json::Value> = ev
        .curves
        .iter()
        .map(|(c, cv)| (c.clone(), serde_json::to_value(cv).unwrap()))
        .collect();
    vcp_data::io::write_atomic(
        &dir.join("curves.json"),
        serde_json::to_string(&curves)?.as_bytes(),
    )?;
    Ok(qual)
}

/// Fail before training when the evaluation data cannot supply a few-shot model's references.
fn check_fewshot_data(exp: &ExperimentConfig, model: &VcpModel) -> Result<()> {
    if let (Some(k), Some(ec)) = (model.fewshot().map(|f| f.shots()), &exp.eval) {
        let (meta, _, _) = crate::data::resolve(&ec.data, ec.root.as_deref(), &exp.synth)?;
        crate::eval::check_references(&meta, k)?;
    }
    Ok(())
}

/// Evaluation of one run on its `[eval]` data, with a progress bar.
fn eval_phase(
    model: &VcpModel,
    ec: &crate::config::EvalConfig,
    exp: &ExperimentConfig,
    o: &RunOptions<'_>,
    cache: Option<&FeatureCache>,
    mp: &MultiProgress,
) -> Result<crate::eval::EvalOutput> {
    let (meta, _, root) = crate::data::resolve(&ec.data, ec.root.as_deref(), &exp.synth)?;
    let pb = mp.add(crate::bar(meta.test.len() as u64, "eval images"));
    let eo = crate::eval::EvalOptions {
        batch_size: ec.batch_size,
        save_maps: None,
        keep_images: o.keep_images,
        cache,
    };
    let ev = crate::eval::evaluate(model, &meta, &root, &eo, &o.device, &pb)?;
    pb.finish_and_clear();
    Ok(ev)
}

pub fn run_one(
    spec: &RunSpec,
    dir: &Path,
    o: &RunOptions<'_>,
    cache: Option<&FeatureCache>,
    mp: &MultiProgress,
) -> Result<()> {
    let (t_start, start_iso) = utc_now();
    std::fs::create_dir_all(dir)?;
    vcp_data::io::write_atomic(&dir.join("config.resolved.toml"), spec.toml.as_bytes())?;
    let exp = &spec.config;
    let model = exp.build_model(o.registry, &o.device)?;
    let mut log = format!("run {} seed {} ({})\n", spec.variant, spec.seed, spec.hash);
    check_fewshot_data(exp, &model)?;
    let train_report = train_phase(exp, &model, dir, cache, mp, &o.device, &mut log)?;
    let ec = exp
        .eval
        .clone()
        .context("the experiment has no [eval] table")?;
    let ev = eval_phase(&model, &ec, exp, o, cache, mp)?;
    let qual = write_run_files(dir, &ev, exp.model.backbone.image_size)?;
    let (mean, mean_notes) = vcp_metrics::mean_over_categories(&ev.rows);
    let (t_end, end_iso) = utc_now();
    let (commit, dirty) = git_state();
    let record = Record {
        experiment: spec.experiment.clone(),
        variant: spec.variant.clone(),
        seed: spec.seed,
        hash: spec.hash.clone(),
        dataset: Datasets {
            train: exp.train.as_ref().map(|t| t.data.clone()),
            eval: ec.data.clone(),
        },
        git: Git { commit, dirty },
        command: o.command.clone(),
        device: format!("{:?}", o.device),
        dtype: exp.model.backbone.dtype,
        start: start_iso,
        end: end_iso,
        wall_seconds: WallSeconds {
            total: t_end - t_start,
            train: train_report.seconds,
            eval: ev.seconds,
            backbone: train_report.backbone_seconds + ev.backbone_seconds,
        },
        peak_rss_mib: crate::train::peak_rss_mib(),
        trainable_parameters: model.parameter_count(),
        checkpoint_sha256: train_report.sha256.clone(),
        train_loss: train_report.epochs.iter().map(|e| e.loss).collect(),
        metrics: Metrics {
            mean: mean.clone(),
            categories: OrderedMap(ev.rows.clone()),
        },
        notes: ev.notes.iter().chain(mean_notes.iter()).cloned().collect(),
        qualitative: qual,
        fewshot_references: OrderedMap(ev.references.clone()),
        test_images: OrderedMap(ev.test_images.clone()),
        worker: Some(crate::lock::Holder::me()),
    };
    log.push_str(&format!(
        "eval: mean auroc_px {:?} ap_px {:?}\n",
        mean.auroc_px, mean.ap_px
    ));
    vcp_data::io::write_atomic(&dir.join("log.txt"), log.as_bytes())?;
    // Last: the record marks the run as done.
    vcp_data::io::write_atomic(
        &dir.join("record.json"),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    Ok(())
}

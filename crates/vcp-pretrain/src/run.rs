//! The loop of `vcp pretrain-clip`: batches generated ahead on a producer thread, a progress
//! bar (loss, logit scale, img/s, ETA), checkpoints every `train.checkpoint_every` steps and on
//! Ctrl-C (the first stops at the next step, leaving a resumable checkpoint; a second exits at
//! once), held-out evaluation every `train.eval_every` steps, logs as CSV.

use crate::config::PretrainConfig;
use crate::heldout;
use crate::trainer::{make_batch, Batch, Trainer};
use anyhow::{Context, Result};
use candle_core::Device;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use vcp_data::io::write_atomic;

pub struct RunOptions {
    pub out: PathBuf,
    pub resume: bool,
    pub device: Device,
    /// Provenance to record in the exported model (command, commit, machine).
    pub provenance: serde_json::Value,
    pub progress: bool,
}

/// What a finished (or interrupted) run reached.
pub struct RunSummary {
    pub steps: usize,
    pub interrupted: bool,
    pub wall_s: f64,
    pub last_loss: f32,
}

fn append(path: &Path, header: &str, line: &str) -> Result<()> {
    let new = !path.exists();
    // A run killed mid-write (or a full disk) can leave a last line without its newline: it
    // is ended first, so the new line stays a line of its own ([`read_log`] skips the short one).
    let unterminated = !new && {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        let len = f.metadata()?.len();
        let mut last = [b'\n'];
        if len > 0 {
            f.seek(SeekFrom::Start(len - 1))?;
            f.read_exact(&mut last)?;
        }
        last[0] != b'\n'
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    if new {
        writeln!(f, "{header}")?;
    }
    if unterminated {
        writeln!(f)?;
    }
    writeln!(f, "{line}").with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// A log of ours (`log.csv`, `heldout.csv`) as its header and the rows that are complete: a
/// row without every column or with a value that is not a finite number (the short last line
/// of a killed run) is skipped, never indexed. Errors name the file.
pub fn read_log(path: &Path) -> Result<(Vec<String>, Vec<Vec<f64>>)> {
    let text = vcp_data::io::read_regular_string(path, 1 << 30)?;
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .with_context(|| format!("{}: empty", path.display()))?
        .split(',')
        .map(|c| c.trim().to_string())
        .collect();
    let rows = lines
        .filter_map(|l| {
            let r: Vec<f64> = l
                .split(',')
                .map(|v| v.trim().parse::<f64>().ok().filter(|x| x.is_finite()))
                .collect::<Option<_>>()?;
            (r.len() == header.len()).then_some(r)
        })
        .collect();
    Ok((header, rows))
}

/// `--out`'s lock: one `vcp pretrain-clip` per folder (two would interleave their logs and
/// overwrite each other's checkpoints). Removed when dropped; a lock of a process that is gone
/// (pid dead, reused by another process, or another boot) is taken over.
struct FolderLock(std::path::PathBuf);

impl FolderLock {
    fn take(out: &Path) -> Result<Self> {
        let path = out.join("pretrain.lock");
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    writeln!(f, "{}", vcp_data::process::me_line())?;
                    return Ok(Self(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let line = vcp_data::io::read_regular_string(&path, 4096).unwrap_or_default();
                    if vcp_data::process::line_alive(line.trim()) {
                        anyhow::bail!(
                            "{}: another vcp pretrain-clip is writing to this folder (host, pid: {}); wait for it or choose another --out",
                            out.display(),
                            line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
                        );
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
            }
        }
        anyhow::bail!("{}: could not take the folder's lock", path.display())
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The trainer of `--out`: resumed from its checkpoint, or fresh (refused when a checkpoint
/// is there; old logs removed, they would mix with the new ones).
fn open_trainer(cfg: &PretrainConfig, opts: &RunOptions) -> Result<Trainer> {
    let out = &opts.out;
    if opts.resume {
        return Trainer::resume(cfg.clone(), opts.device.clone(), &out.join("checkpoint"));
    }
    if out.join("checkpoint").join("checkpoint.json").exists() {
        anyhow::bail!(
            "{}: a checkpoint exists; pass --resume to continue it or choose another --out",
            out.display()
        );
    }
    for f in ["log.csv", "heldout.csv"] {
        let _ = std::fs::remove_file(out.join(f));
    }
    Trainer::new(cfg.clone(), opts.device.clone())
}

type Batches = std::sync::mpsc::Receiver<(usize, Result<Batch>)>;

/// Producer thread: the batches of steps `start..total`, made two ahead of the training.
fn spawn_producer(
    cfg: &PretrainConfig,
    start: usize,
    total: usize,
) -> (Batches, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Result<Batch>)>(2);
    let pcfg = cfg.clone();
    let producer = std::thread::spawn(move || {
        let tok = match vcp_clip::Tokenizer::clip() {
            Ok(t) => t,
            Err(e) => {
                let _ = tx.send((start, Err(e.into())));
                return;
            }
        };
        for step in start..total {
            if tx.send((step, make_batch(&pcfg, &tok, step))).is_err() {
                return;
            }
        }
    });
    (rx, producer)
}

/// The progress bar of the loop (hidden without `progress`).
fn progress_bar(progress: bool, start: usize, total: usize) -> indicatif::ProgressBar {
    let bar = if progress {
        indicatif::ProgressBar::new(total as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} steps {msg} {elapsed_precise} eta {eta}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar.set_prefix("pretrain");
    bar.set_position(start as u64);
    bar
}

/// One line of `log.csv` for the step just done.
fn log_step(
    log: &Path,
    tr: &Trainer,
    report: &crate::trainer::StepReport,
    rate: f64,
    wall_s: f64,
) -> Result<()> {
    append(
        log,
        "step,loss,lr,logit_scale,img_per_s,wall_s,contrastive,patch,state,patch_scale",
        &format!(
            "{},{:.5},{:.3e},{:.3},{rate:.1},{wall_s:.1},{:.5},{:.5},{:.5},{:.3}",
            tr.step,
            report.total_value,
            tr.cfg.lr_at(tr.step - 1),
            tr.logit_scale()?.exp(),
            report.contrastive,
            report.patch,
            report.state,
            tr.patch_logit_scale().map(f32::exp).unwrap_or(0.0),
        ),
    )
}

/// One line of `heldout.csv`.
fn log_heldout(path: &Path, step: usize, r: &heldout::HeldoutReport, size: usize) -> Result<()> {
    append(
        path,
        "step,recall1_t2i,recall1_i2t,kind_accuracy,defect_auroc,image_auroc_seen,image_auroc_heldout,pixel_auroc_seen,pixel_auroc_heldout,size",
        &format!(
            "{step},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{size}",
            r.recall1_t2i,
            r.recall1_i2t,
            r.kind_accuracy,
            r.defect_auroc,
            r.image_auroc_seen,
            r.image_auroc_heldout,
            r.pixel_auroc_seen,
            r.pixel_auroc_heldout
        ),
    )
}

/// The loop (over 80 lines on purpose: one step of it, logging, checkpoint and evaluation,
/// reads top to bottom in one place).
pub fn run(cfg: PretrainConfig, opts: &RunOptions) -> Result<RunSummary> {
    let out = &opts.out;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let _lock = FolderLock::take(out)?;
    let mut tr = open_trainer(&cfg, opts)?;
    write_atomic(&out.join("config.toml"), toml::to_string(&cfg)?.as_bytes())?;
    vcp_data::interrupt::install();
    let total = cfg.train.steps;
    let start_step = tr.step;
    let held_kinds: Vec<&str> = match &cfg.objective {
        Some(o) => o.heldout_kinds.iter().map(String::as_str).collect(),
        None => heldout::heldout_kinds().to_vec(),
    };
    // Held-out pairs at the input size of the current phase (regenerated when it changes).
    let mut heldout: (usize, Vec<vcp_data::corpus::CorpusSample>) = (0, Vec::new());

    let (rx, producer) = spawn_producer(&cfg, start_step, total);

    let bar = progress_bar(opts.progress, start_step, total);
    let t0 = Instant::now();
    let mut last_loss = f32::NAN;
    let mut ema_rate = 0.0f64;
    let mut interrupted = false;
    let log = out.join("log.csv");
    while tr.step < total {
        if vcp_data::interrupt::requested() {
            interrupted = true;
            break;
        }
        let (s, batch) = rx.recv().context("the batch producer stopped")?;
        debug_assert_eq!(s, tr.step);
        let batch = batch?;
        let ts = Instant::now();
        let report = match tr.train_step_parts(&batch) {
            Ok(r) => r,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        let loss = report.total_value;
        let dt = ts.elapsed().as_secs_f64();
        let rate = batch.n as f64 / dt.max(1e-9);
        ema_rate = if ema_rate == 0.0 {
            rate
        } else {
            0.9 * ema_rate + 0.1 * rate
        };
        last_loss = loss;
        let ls = tr.logit_scale()?;
        log_step(&log, &tr, &report, rate, t0.elapsed().as_secs_f64())?;
        bar.set_message(format!(
            "loss {loss:.3} scale {:.1} {ema_rate:.0} img/s",
            ls.exp()
        ));
        bar.set_position(tr.step as u64);
        if tr.step % cfg.train.checkpoint_every == 0 || tr.step == total {
            tr.save_checkpoint(&out.join("checkpoint"))?;
        }
        if tr.step % cfg.train.eval_every == 0 || tr.step == total {
            let clip = tr.model()?;
            let size = clip.vision.image_size();
            if heldout.0 != size {
                heldout = (
                    size,
                    heldout::heldout_samples(cfg.corpus.seed, cfg.eval.heldout, size),
                );
            }
            let r = heldout::evaluate(&clip, &heldout.1, &held_kinds, &tr.device)?;
            log_heldout(&out.join("heldout.csv"), tr.step, &r, size)?;
            bar.println(format!(
                "step {}: loss {loss:.3}, held-out R@1 t2i {:.3}, kind acc {:.3}, image AUROC seen {:.3} held-out {:.3}, pixel AUROC seen {:.3} held-out {:.3}",
                tr.step, r.recall1_t2i, r.kind_accuracy, r.image_auroc_seen, r.image_auroc_heldout, r.pixel_auroc_seen, r.pixel_auroc_heldout
            ));
        }
    }
    drop(rx);
    let _ = producer.join();
    if interrupted {
        tr.save_checkpoint(&out.join("checkpoint"))?;
        bar.abandon_with_message(format!(
            "interrupted at step {}: checkpoint saved, continue with --resume",
            tr.step
        ));
    } else {
        bar.finish();
        tr.export(out, opts.provenance.clone())?;
    }
    Ok(RunSummary {
        steps: tr.step,
        interrupted,
        wall_s: t0.elapsed().as_secs_f64(),
        last_loss,
    })
}

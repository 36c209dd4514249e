//! The loop of `vcp pretrain-clip`: batches generated ahead on a producer thread, a progress
//! bar (loss, logit scale, img/s, ETA), checkpoints every `train.checkpoint_every` steps and on
//! Ctrl-C (the first stops at the next step, leaving a resumable checkpoint; a second exits at
//! once), held-out evaluation every `train.eval_every` steps, logs as CSV.

use crate::config::PretrainConfig;
use crate::heldout;
use crate::trainer::{make_batch, write_atomic, Batch, Trainer};
use anyhow::{Context, Result};
use candle_core::Device;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

fn install_interrupt() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let f = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&f));
            let _ = signal_hook::flag::register(sig, Arc::clone(&f));
        }
        f
    })
    .clone()
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

pub fn run(cfg: PretrainConfig, opts: &RunOptions) -> Result<RunSummary> {
    let out = &opts.out;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let _lock = FolderLock::take(out)?;
    let mut tr = if opts.resume {
        Trainer::resume(cfg.clone(), opts.device.clone(), &out.join("checkpoint"))?
    } else {
        if out.join("checkpoint").join("checkpoint.json").exists() {
            anyhow::bail!(
                "{}: a checkpoint exists; pass --resume to continue it or choose another --out",
                out.display()
            );
        }
        // Fresh run: old logs would mix with the new ones.
        for f in ["log.csv", "heldout.csv"] {
            let _ = std::fs::remove_file(out.join(f));
        }
        Trainer::new(cfg.clone(), opts.device.clone())?
    };
    write_atomic(&out.join("config.toml"), toml::to_string(&cfg)?.as_bytes())?;
    let flag = install_interrupt();
    let total = cfg.train.steps;
    let start_step = tr.step;
    let held_kinds: Vec<&str> = match &cfg.objective {
        Some(o) => o.heldout_kinds.iter().map(String::as_str).collect(),
        None => heldout::heldout_kinds().to_vec(),
    };
    // Held-out pairs at the input size of the current phase (regenerated when it changes).
    let mut heldout: (usize, Vec<vcp_data::corpus::CorpusSample>) = (0, Vec::new());

    // Producer: batches of the coming steps, two ahead.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Result<Batch>)>(2);
    let pcfg = cfg.clone();
    let producer = std::thread::spawn(move || {
        let tok = match vcp_clip::Tokenizer::clip() {
            Ok(t) => t,
            Err(e) => {
                let _ = tx.send((start_step, Err(e.into())));
                return;
            }
        };
        for step in start_step..total {
            if tx.send((step, make_batch(&pcfg, &tok, step))).is_err() {
                return;
            }
        }
    });

    let bar = if opts.progress {
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
    bar.set_position(start_step as u64);
    let t0 = Instant::now();
    let mut last_loss = f32::NAN;
    let mut ema_rate = 0.0f64;
    let mut interrupted = false;
    let log = out.join("log.csv");
    while tr.step < total {
        if flag.load(Ordering::Relaxed) {
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
        append(
            &log,
            "step,loss,lr,logit_scale,img_per_s,wall_s,contrastive,patch,state,patch_scale",
            &format!(
                "{},{loss:.5},{:.3e},{:.3},{rate:.1},{:.1},{:.5},{:.5},{:.5},{:.3}",
                tr.step,
                cfg.lr_at(tr.step - 1),
                ls.exp(),
                t0.elapsed().as_secs_f64(),
                report.contrastive,
                report.patch,
                report.state,
                tr.patch_logit_scale().map(f32::exp).unwrap_or(0.0),
            ),
        )?;
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
            append(
                &out.join("heldout.csv"),
                "step,recall1_t2i,recall1_i2t,kind_accuracy,defect_auroc,image_auroc_seen,image_auroc_heldout,pixel_auroc_seen,pixel_auroc_heldout,size",
                &format!(
                    "{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{size}",
                    tr.step,
                    r.recall1_t2i,
                    r.recall1_i2t,
                    r.kind_accuracy,
                    r.defect_auroc,
                    r.image_auroc_seen,
                    r.image_auroc_heldout,
                    r.pixel_auroc_seen,
                    r.pixel_auroc_heldout
                ),
            )?;
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

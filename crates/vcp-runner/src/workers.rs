//! Several worker processes on one machine (`vcp ablate EXP --gpus 0,1,2,3` or `--workers N`):
//! each worker is the same `vcp` binary running `vcp ablate EXP ... --worker`, claiming runs
//! through the run locks (so the work balances itself), with one GPU visible
//! (`CUDA_VISIBLE_DEVICES`) or a share of the CPU cores. The parent shows one progress bar
//! (records appearing in the run folders), writes each worker's output to
//! `results/<experiment>/workers/worker-<i>.log`, and on Ctrl-C asks every worker to stop
//! (SIGINT: the runs in progress leave no record and are redone next time).

use crate::experiment::RunSpec;
use anyhow::{Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// One worker: what it sees.
#[derive(Debug, Clone)]
pub enum Slot {
    /// `CUDA_VISIBLE_DEVICES=<gpu>` and `--device cuda:0`.
    Gpu(String),
    /// `--device cpu` with this many threads.
    Cpu { threads: usize },
}

pub struct Pool {
    /// The `vcp` binary.
    pub exe: PathBuf,
    /// `ablate EXP ...` arguments shared by all workers (no `--gpus`/`--workers`).
    pub args: Vec<String>,
    pub slots: Vec<Slot>,
    /// `results/<experiment>/workers`.
    pub log_dir: PathBuf,
}

/// How each worker ended.
pub struct Outcome {
    pub slot: Slot,
    pub log: PathBuf,
    pub success: bool,
}

fn spawn(pool: &Pool, i: usize) -> Result<(Child, PathBuf)> {
    let log = pool.log_dir.join(format!("worker-{i}.log"));
    let out = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
    let err = out.try_clone()?;
    let mut c = Command::new(&pool.exe);
    c.args(&pool.args).arg("--worker");
    match &pool.slots[i] {
        Slot::Gpu(g) => {
            c.env("CUDA_VISIBLE_DEVICES", g)
                .args(["--device", "cuda:0"]);
        }
        Slot::Cpu { threads } => {
            c.env("RAYON_NUM_THREADS", threads.to_string())
                .args(["--device", "cpu"]);
        }
    }
    // Own process group: a terminal's Ctrl-C reaches the parent only, which then stops each
    // worker exactly once.
    c.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let child = c
        .spawn()
        .with_context(|| format!("starting worker {i} ({})", pool.exe.display()))?;
    Ok((child, log))
}

/// Ask a process to stop as Ctrl-C would (`kill -INT`; no unsafe code in this workspace).
fn interrupt(pid: u32) {
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn done(runs: &[&RunSpec], results: &Path) -> usize {
    runs.iter()
        .filter(|r| r.dir(results).join("record.json").exists())
        .count()
}

/// Run the workers until they all exit; returns how each ended.
pub fn run(pool: &Pool, runs: &[&RunSpec], results: &Path, name: &str) -> Result<Vec<Outcome>> {
    std::fs::create_dir_all(&pool.log_dir)
        .with_context(|| format!("{}", pool.log_dir.display()))?;
    crate::interrupt::install();
    let mut children = Vec::new();
    for i in 0..pool.slots.len() {
        match spawn(pool, i) {
            Ok(c) => children.push(c),
            Err(e) => {
                for (c, _) in &mut children {
                    interrupt(c.id());
                    let _ = c.wait();
                }
                return Err(e);
            }
        }
    }
    let pb = crate::bar(runs.len() as u64, "runs");
    pb.set_prefix(name.to_string());
    pb.set_message(format!("{} workers", children.len()));
    let mut status: Vec<Option<bool>> = vec![None; children.len()];
    let mut stopping = false;
    loop {
        for (k, (c, _)) in children.iter_mut().enumerate() {
            if status[k].is_none() {
                if let Some(s) = c.try_wait()? {
                    status[k] = Some(s.success());
                }
            }
        }
        pb.set_position(done(runs, results) as u64);
        if status.iter().all(|s| s.is_some()) {
            break;
        }
        if crate::interrupt::requested() && !stopping {
            stopping = true;
            pb.set_message("stopping the workers (Ctrl-C)");
            for (k, (c, _)) in children.iter().enumerate() {
                if status[k].is_none() {
                    interrupt(c.id());
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    pb.finish_and_clear();
    Ok(children
        .into_iter()
        .zip(status)
        .enumerate()
        .map(|(i, ((_, log), s))| Outcome {
            slot: pool.slots[i].clone(),
            log,
            success: s == Some(true),
        })
        .collect())
}

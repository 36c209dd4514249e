//! Run-level locks, so any number of `vcp ablate` processes (workers on one machine, Slurm array
//! tasks on a cluster's shared file system) can work on one experiment folder without running
//! a run twice.
//!
//! A run is claimed by creating `<run>/lock.json` with `O_EXCL` (atomic on local and NFS v3+
//! file systems); it holds the claimant's host, pid and start time and is removed when the run
//! ends, whatever the outcome. A lock whose process is gone (same host, no such live pid) is
//! stale: it is taken over, under a second exclusive file (`lock.takeover`) so that two
//! processes never both take over the same lock. Locks of other hosts are trusted (a node that
//! died leaves one behind: `vcp ablate EXP --status` shows it; delete it by hand).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
pub use vcp_data::process::{boot_id, hostname, pid_alive, proc_start};

/// Who holds (or ran) a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// RFC 3339 UTC.
    pub start: String,
    /// The process's start time in clock ticks after boot (`/proc/PID/stat` field 22): a pid
    /// that now belongs to another process has another start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proc_start: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id`: after a reboot every pid is someone else's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

impl Holder {
    /// This process.
    pub fn me() -> Self {
        Self {
            host: hostname(),
            pid: std::process::id(),
            start: crate::provenance::utc_now().1,
            proc_start: proc_start(std::process::id()),
            boot_id: boot_id(),
        }
    }

    /// Whether the holder may still be running: always for another host; on this host,
    /// whether its pid is a live (not zombie) process that is still the same process (same
    /// boot, same start time, when the lock recorded them).
    pub fn may_be_alive(&self) -> bool {
        if self.host != hostname() {
            return true;
        }
        if let (Some(a), Some(b)) = (&self.boot_id, boot_id()) {
            if *a != b {
                return false;
            }
        }
        if !pid_alive(self.pid) {
            return false;
        }
        match (self.proc_start, proc_start(self.pid)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}:{} since {}", self.host, self.pid, self.start)
    }
}

/// Remove the lock of `run_dir` by hand (`vcp ablate --break-lock`): returns who held it.
pub fn break_lock(run_dir: &Path) -> Result<Option<Holder>> {
    let path = lock_path(run_dir);
    if !path.exists() {
        return Ok(None);
    }
    let h = holder(run_dir).unwrap_or(Holder {
        host: "?".into(),
        pid: 0,
        start: "(unreadable lock)".into(),
        proc_start: None,
        boot_id: None,
    });
    std::fs::remove_file(&path).with_context(|| format!("{}", path.display()))?;
    let _ = std::fs::remove_file(run_dir.join("lock.takeover"));
    Ok(Some(h))
}

/// A held claim on a run; the lock file is removed when it is dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// Set when a stale lock was taken over (its holder), for the log.
    pub took_over: Option<Holder>,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub enum Claim {
    Acquired(RunLock),
    /// Someone else (alive, or on another host) holds it.
    Held(Holder),
}

pub fn lock_path(run_dir: &Path) -> PathBuf {
    run_dir.join("lock.json")
}

/// The current holder of a run's lock, if any (`None` also for an unreadable lock file that is
/// being written right now).
pub fn holder(run_dir: &Path) -> Option<Holder> {
    let text = vcp_data::io::read_regular_string(&lock_path(run_dir), 1 << 20).ok()?;
    serde_json::from_str(&text).ok()
}

fn create_exclusive(path: &Path, h: &Holder) -> std::io::Result<bool> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(serde_json::to_string(h).unwrap_or_default().as_bytes())?;
            f.sync_data()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Claim the run in `run_dir` (created if needed).
pub fn try_claim(run_dir: &Path) -> Result<Claim> {
    std::fs::create_dir_all(run_dir).with_context(|| format!("{}", run_dir.display()))?;
    let path = lock_path(run_dir);
    let me = Holder::me();
    for _ in 0..20 {
        if create_exclusive(&path, &me).with_context(|| format!("{}", path.display()))? {
            return Ok(Claim::Acquired(RunLock {
                path,
                took_over: None,
            }));
        }
        let Some(h) = holder(run_dir) else {
            // Just created by someone and not yet written, or removed meanwhile: look again.
            std::thread::sleep(std::time::Duration::from_millis(20));
            if !path.exists() {
                continue;
            }
            match holder(run_dir) {
                Some(_) => continue,
                None => {
                    // Still unreadable after a while: a crash between create and write.
                    let age = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    if age.as_secs() < 10 {
                        return Ok(Claim::Held(Holder {
                            host: "?".into(),
                            pid: 0,
                            start: "(lock being written)".into(),
                            proc_start: None,
                            boot_id: None,
                        }));
                    }
                    take_over(run_dir, None)?;
                    continue;
                }
            }
        };
        if h.may_be_alive() {
            return Ok(Claim::Held(h));
        }
        if let Some(old) = take_over(run_dir, Some(&h))? {
            if create_exclusive(&path, &me).with_context(|| format!("{}", path.display()))? {
                return Ok(Claim::Acquired(RunLock {
                    path,
                    took_over: Some(old),
                }));
            }
        }
    }
    anyhow::bail!(
        "{}: could not claim the run (lock contention)",
        path.display()
    )
}

/// Remove a stale lock whose content is still `stale` (or unreadable when `None`), under the
/// exclusive `lock.takeover` file. Returns the removed holder when this process removed it.
fn take_over(run_dir: &Path, stale: Option<&Holder>) -> Result<Option<Holder>> {
    let guard = run_dir.join("lock.takeover");
    let me = Holder::me();
    if !create_exclusive(&guard, &me).with_context(|| format!("{}", guard.display()))? {
        // Someone else is taking over; an abandoned guard (older than 30 s) is cleared.
        let old = std::fs::metadata(&guard)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|a| a.as_secs() > 30);
        if old {
            let _ = std::fs::remove_file(&guard);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        return Ok(None);
    }
    let now = holder(run_dir);
    let removed = if now.as_ref() == stale {
        std::fs::remove_file(lock_path(run_dir)).ok().map(|_| {
            stale.cloned().unwrap_or(Holder {
                host: "?".into(),
                pid: 0,
                start: "(unreadable lock)".into(),
                proc_start: None,
                boot_id: None,
            })
        })
    } else {
        None
    };
    let _ = std::fs::remove_file(&guard);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_claims_and_stale_takeover() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        let Claim::Acquired(l) = try_claim(&run).unwrap() else {
            panic!("first claim")
        };
        // Held by a live process (this one): a second claim fails and names it.
        match try_claim(&run).unwrap() {
            Claim::Held(h) => assert_eq!(h.pid, std::process::id()),
            Claim::Acquired(_) => panic!("claimed twice"),
        }
        drop(l);
        assert!(!lock_path(&run).exists(), "released on drop");
        // A lock of a process that is gone is taken over.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = Holder {
            host: hostname(),
            pid: dead,
            start: "2026-01-01T00:00:00Z".into(),
            proc_start: None,
            boot_id: None,
        };
        std::fs::write(lock_path(&run), serde_json::to_string(&stale).unwrap()).unwrap();
        let Claim::Acquired(l) = try_claim(&run).unwrap() else {
            panic!("stale lock not taken over")
        };
        assert_eq!(l.took_over.as_ref(), Some(&stale));
        assert_eq!(holder(&run).unwrap().pid, std::process::id());
        drop(l);
        // Another host's lock is trusted.
        let remote = Holder {
            host: "some-other-node".into(),
            pid: dead,
            start: "2026-01-01T00:00:00Z".into(),
            proc_start: None,
            boot_id: None,
        };
        std::fs::write(lock_path(&run), serde_json::to_string(&remote).unwrap()).unwrap();
        assert!(matches!(try_claim(&run).unwrap(), Claim::Held(h) if h == remote));
    }

    /// Issue 25 (9): a lock whose pid now belongs to another live process (PID reuse, or a
    /// reboot) is stale; the same process's lock is not. `break_lock` removes any lock.
    #[test]
    fn pid_reuse_and_reboots_make_a_lock_stale() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        let me = Holder::me();
        assert!(me.proc_start.is_some() && me.boot_id.is_some());
        assert!(me.may_be_alive());
        // Our own pid, but recorded with another start time: the pid was reused.
        let reused = Holder {
            proc_start: me.proc_start.map(|t| t + 12345),
            ..me.clone()
        };
        assert!(!reused.may_be_alive());
        let rebooted = Holder {
            boot_id: Some("00000000-0000-0000-0000-000000000000".into()),
            ..me.clone()
        };
        assert!(!rebooted.may_be_alive());
        std::fs::write(lock_path(&run), serde_json::to_string(&reused).unwrap()).unwrap();
        let Claim::Acquired(l) = try_claim(&run).unwrap() else {
            panic!("a lock of a reused pid was not taken over")
        };
        assert_eq!(l.took_over.as_ref(), Some(&reused));
        drop(l);
        // An old lock without the new fields still reads (and is judged by pid alone).
        std::fs::write(
            lock_path(&run),
            format!(
                r#"{{"host":"{}","pid":{},"start":"x"}}"#,
                hostname(),
                std::process::id()
            ),
        )
        .unwrap();
        assert!(holder(&run).unwrap().may_be_alive());
        let h = break_lock(&run).unwrap().unwrap();
        assert_eq!(h.pid, std::process::id());
        assert!(!lock_path(&run).exists());
        assert!(break_lock(&run).unwrap().is_none());
    }
}

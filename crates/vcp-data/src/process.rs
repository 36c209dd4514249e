//! Who a process is, robustly enough for lock files: host, pid, the pid's start time and the
//! boot id (a pid alone is reused by the system). Used by the ablation runner's run locks and
//! by `vcp pretrain-clip`'s folder lock.

use std::path::Path;

/// The machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// This boot's id (Linux), if readable.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Start time of process `pid` in clock ticks after boot (`/proc/PID/stat` field 22; the
/// command name, field 2, may hold spaces and parentheses, so fields are counted after its
/// last `)`).
pub fn proc_start(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first; field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A live, non-zombie process with this pid (Linux `/proc`; elsewhere assumed alive).
pub fn pid_alive(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => !s.lines().any(|l| {
            l.starts_with("State:") && (l.contains("Z (zombie)") || l.contains("X (dead)"))
        }),
        Err(_) => false,
    }
}

/// This process as a lock records it: `host pid proc_start boot_id` on one line.
pub fn me_line() -> String {
    format!(
        "{} {} {} {}",
        hostname(),
        std::process::id(),
        proc_start(std::process::id()).unwrap_or(0),
        boot_id().unwrap_or_default()
    )
}

/// Whether the process a [`me_line`] describes may still be running: another host's always;
/// on this host, a live pid with the same start time in the same boot.
pub fn line_alive(line: &str) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (Some(host), Some(pid)) = (f.first(), f.get(1).and_then(|p| p.parse::<u32>().ok())) else {
        return false;
    };
    if *host != hostname() {
        return true;
    }
    if let (Some(b), Some(now)) = (f.get(3), boot_id()) {
        if *b != now {
            return false;
        }
    }
    if !pid_alive(pid) {
        return false;
    }
    match (
        f.get(2).and_then(|t| t.parse::<u64>().ok()),
        proc_start(pid),
    ) {
        (Some(a), Some(b)) if a != 0 => a == b,
        _ => true,
    }
}

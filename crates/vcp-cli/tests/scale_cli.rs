//! Scaling out on one machine: run locks (two processes never run one run twice, a stale lock
//! is taken over, another host's lock is respected), `--shard` (disjoint and complete),
//! `--workers` (same table as one process), `--status`, and `--slurm` without a cluster
//! (dry run, no sbatch, bad options, all-or-nothing submission with a fake sbatch).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::*;

/// A 6-run ablation (3 variants x 2 seeds) of the tiny model on a few synthetic images.
fn mini(dir: &Path) -> PathBuf {
    write_small_base(dir);
    let ab = format!(
        "name = \"mini_scale\"\nbase = \"base.toml\"\nseeds = [0, 1]\n{UTP_AND_VCP_CLIP}[[variant]]\nname = \"april_gan\"\npreset = \"april_gan\"\n"
    );
    std::fs::write(dir.join("mini.toml"), ab).unwrap();
    dir.join("mini.toml")
}

/// `ran <hash> ...` lines a worker printed.
fn ran(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ran "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

fn records(results: &Path) -> BTreeMap<String, serde_json::Value> {
    let runs = results.join("mini_scale/runs");
    std::fs::read_dir(runs)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path().join("record.json");
            let r: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
            Some((r["hash"].as_str().unwrap().to_string(), r))
        })
        .collect()
}

#[test]
fn two_processes_share_an_experiment_without_running_a_run_twice() {
    let d = tempfile::tempdir().unwrap();
    let (cache, results) = (d.path().join("cache"), d.path().join("results"));
    let file = mini(d.path());
    let spawn = || {
        vcp(&cache)
            .arg("ablate")
            .arg(&file)
            .arg("--results")
            .arg(&results)
            .arg("--worker")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The second process starts once the first holds a run: both then compete for the other
    // five, and each is sure to have done at least one.
    let p1 = spawn();
    let runs_dir = results.join("mini_scale/runs");
    let t = std::time::Instant::now();
    let holds = || {
        std::fs::read_dir(&runs_dir).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                e.path().join("lock.json").exists() || e.path().join("record.json").exists()
            })
        })
    };
    while !holds() {
        assert!(
            t.elapsed().as_secs() < 300,
            "the first process never claimed a run"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let p2 = spawn();
    let (pid1, pid2) = (p1.id() as u64, p2.id() as u64);
    let (o1, _) = ok_output(p1.wait_with_output().unwrap());
    let (o2, _) = ok_output(p2.wait_with_output().unwrap());
    let (r1, r2) = (ran(&o1), ran(&o2));
    let mut all: Vec<String> = r1.iter().chain(&r2).cloned().collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a run ran twice: {r1:?} / {r2:?}");
    let recs = records(&results);
    assert_eq!(recs.len(), 6);
    assert_eq!(all, recs.keys().cloned().collect::<Vec<_>>());
    // Each record names the process that announced it.
    for (h, r) in &recs {
        let pid = r["worker"]["pid"].as_u64().unwrap();
        assert_eq!(pid, if r1.contains(h) { pid1 } else { pid2 }, "{h}");
    }
    assert!(
        !r1.is_empty() && !r2.is_empty(),
        "both processes did runs: {r1:?} / {r2:?}"
    );
    // --status: all done, no locks left.
    let (st, _) = ok(vcp(&cache)
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(&results)
        .arg("--status"));
    assert!(
        st.contains("6 runs: 6 done, 0 running, 0 failed, 0 pending"),
        "{st}"
    );
    for e in std::fs::read_dir(results.join("mini_scale/runs")).unwrap() {
        assert!(!e.unwrap().path().join("lock.json").exists());
    }
}

#[test]
fn locks_stale_and_foreign_shards_and_workers() {
    let d = tempfile::tempdir().unwrap();
    let (cache, results) = (d.path().join("cache"), d.path().join("results"));
    let file = mini(d.path());
    let ablate = || {
        let mut c = vcp(&cache);
        c.arg("ablate").arg(&file).arg("--results").arg(&results);
        c
    };
    // Shards: disjoint and complete.
    let mut seen = Vec::new();
    for i in 0..3 {
        let (out, _) = ok(ablate().args(["--shard", &format!("{i}/3"), "--worker"]));
        seen.extend(ran(&out));
    }
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(n, 6, "shards overlap or miss runs: {seen:?}");
    assert_eq!(seen.len(), 6);
    let recs = records(&results);
    let table_one_process = {
        let (out, _) = ok(ablate().arg("--no-feature-cache"));
        assert!(out.contains("0 runs done, 6 already finished"), "{out}");
        std::fs::read_to_string(results.join("mini_scale/table.csv")).unwrap()
    };
    for bad in ["3/3", "1", "a/b", "0/0"] {
        let out = ablate().args(["--shard", bad]).output().unwrap();
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("--shard") && one_error(&e), "{e}");
    }
    // A stale lock (its process is gone) is taken over and the run redone; another host's
    // lock is respected and shown by --status.
    let (h_stale, h_remote) = {
        let mut k = recs.keys();
        (k.next().unwrap().clone(), k.next().unwrap().clone())
    };
    let dir_of = |h: &str| {
        std::fs::read_dir(results.join("mini_scale/runs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(&h[..8]))
            .unwrap()
    };
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    for (h, host, pid) in [(&h_stale, host.as_str(), dead), (&h_remote, "node-b", 4242)] {
        let dir = dir_of(h);
        std::fs::remove_file(dir.join("record.json")).unwrap();
        std::fs::write(
            dir.join("lock.json"),
            format!(r#"{{"host":"{host}","pid":{pid},"start":"2026-11-30T10:00:00Z"}}"#),
        )
        .unwrap();
    }
    let (st, _) = ok(ablate().arg("--status"));
    assert!(
        st.contains("4 done, 1 running, 0 failed, 1 pending"),
        "{st}"
    );
    assert!(st.contains("by node-b:4242"), "{st}");
    let (out, err) = ok(&mut ablate());
    assert!(err.contains("took over the stale lock"), "{err}");
    assert!(
        out.contains("1 runs done, 4 already finished, 1 running in other processes"),
        "{out}"
    );
    assert!(
        out.contains("5 of 6") || out.contains("1 of 6 runs have no record"),
        "{out}"
    );
    assert!(dir_of(&h_stale).join("record.json").exists());
    assert!(!dir_of(&h_remote).join("record.json").exists());
    // The other host's run finishes (its lock goes away): --workers 2 completes the
    // experiment, and the table equals the one-process table number for number.
    std::fs::remove_file(dir_of(&h_remote).join("lock.json")).unwrap();
    // Two workers asked for, one run left: one worker is started (issue 25: capped at the runs
    // that need work).
    let (out, err) = ok(ablate().args(["--workers", "2"]));
    assert!(out.contains("Table:"), "{out}");
    assert!(
        err.contains("--workers 2: only 1 run(s) need work; starting 1"),
        "{err}"
    );
    assert!(
        out.contains("1 runs done by 1 workers, 5 already finished"),
        "{out}"
    );
    assert!(out.contains("reproduced the committed table"), "{out}");
    let logs: Vec<_> = std::fs::read_dir(results.join("mini_scale/workers"))
        .unwrap()
        .collect();
    assert_eq!(logs.len(), 1);
    // The footer names the command a user types (`--workers N`), not the worker's own.
    let md = std::fs::read_to_string(results.join("mini_scale/table.md")).unwrap();
    assert!(md.contains(" --workers "), "{md}");
    assert!(
        !md.contains("--worker ") && !md.contains("--worker`"),
        "{md}"
    );
    let table = std::fs::read_to_string(results.join("mini_scale/table.csv")).unwrap();
    assert_eq!(table, table_one_process);
}

#[test]
fn slurm_without_a_cluster_dry_run_and_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let (cache, results) = (d.path().join("cache"), d.path().join("results"));
    let file = mini(d.path());
    let empty_path = d.path().join("empty_path");
    std::fs::create_dir_all(&empty_path).unwrap();
    let slurm = |path: &Path| {
        let mut c = vcp(&cache);
        c.env("PATH", path)
            .arg("ablate")
            .arg(&file)
            .arg("--results")
            .arg(&results)
            .arg("--slurm");
        c
    };
    // Dry run: scripts printed and kept, nothing submitted (no sbatch needed).
    let (out, _) = ok(slurm(&empty_path)
        .args([
            "--partition",
            "gpu",
            "--gres",
            "gpu:1",
            "--time",
            "01:00:00",
        ])
        .args([
            "--array-parallelism",
            "2",
            "--sbatch-arg=--mem=8G",
            "--dry-run",
        ]));
    assert!(out.contains("#SBATCH --array=0-5%2"), "{out}");
    assert!(out.contains("#SBATCH --partition=gpu") && out.contains("#SBATCH --gres=gpu:1"));
    assert!(out.contains("#SBATCH --time=01:00:00") && out.contains("#SBATCH --mem=8G"));
    assert!(
        out.contains(env!("CARGO_BIN_EXE_vcp")),
        "absolute binary path: {out}"
    );
    assert!(out.contains("--run-index \"$SLURM_ARRAY_TASK_ID\""));
    assert!(out.contains("--dependency") || out.contains("afterany"));
    assert!(out.contains("nothing submitted"));
    let subs: Vec<_> = std::fs::read_dir(results.join("mini_scale/slurm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(subs.len(), 1);
    let runs = std::fs::read_to_string(subs[0].join("runs.txt")).unwrap();
    assert_eq!(runs.lines().count(), 6);
    // No sbatch on the PATH: one line, nothing written.
    let out = slurm(&empty_path).output().unwrap();
    assert_eq!(
        std::fs::read_dir(results.join("mini_scale/slurm"))
            .unwrap()
            .count(),
        1
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("sbatch is not on the PATH") && one_error(&e),
        "{e}"
    );
    // A malformed --sbatch-arg.
    let out = slurm(&empty_path)
        .arg("--sbatch-arg=mem 8G")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("--sbatch-arg"), "{e}");
    // A fake Slurm whose controller is down: nothing submitted.
    let fake = d.path().join("fake_slurm");
    std::fs::create_dir_all(&fake).unwrap();
    let script = |name: &str, body: &str| {
        let p = fake.join(name);
        std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let calls = d.path().join("calls.txt");
    // `vcp ablate --slurm` with only the fake Slurm (and the system tools) on the PATH.
    let run_fake = || {
        let out = slurm(&fake)
            .env("PATH", format!("{}:/usr/bin:/bin", fake.display()))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    script(
        "scontrol",
        "echo 'Slurmctld(primary) at vm is DOWN'; exit 1",
    );
    script(
        "sbatch",
        &format!("echo sbatch \"$@\" >> {}; exit 1", calls.display()),
    );
    let (success, e) = run_fake();
    assert!(
        !success && e.contains("not reachable") && e.contains("DOWN"),
        "{e}"
    );
    assert!(!calls.exists(), "sbatch was called");
    // Controller up, the array accepted, the collector refused: the array is cancelled.
    script("scontrol", "exit 0");
    script(
        "sbatch",
        &format!(
            "echo sbatch \"$@\" >> {c}; for a in \"$@\"; do case $a in --dependency*) echo 'sbatch: error: Invalid dependency' >&2; exit 1;; esac; done; echo 77",
            c = calls.display()
        ),
    );
    script(
        "scancel",
        &format!("echo scancel \"$@\" >> {}", calls.display()),
    );
    let (success, e) = run_fake();
    assert!(
        !success && e.contains("cancelled") && e.contains("Invalid dependency"),
        "{e}"
    );
    let c = std::fs::read_to_string(&calls).unwrap();
    assert!(c.contains("scancel 77"), "{c}");
}

/// Nothing typed reaches a shell: a control character in any value or path that goes into the
/// Slurm scripts is refused before anything is written; printable shell syntax stays inert
/// (`bash -n` accepts both scripts, and running them runs nothing injected).
#[test]
fn slurm_scripts_cannot_be_injected() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let file = mini(d.path());
    let empty_path = d.path().join("empty_path");
    std::fs::create_dir_all(&empty_path).unwrap();
    let slurm = |results: &Path| {
        let mut c = vcp(&cache);
        c.env("PATH", &empty_path)
            .current_dir(d.path())
            .arg("ablate")
            .arg(&file)
            .arg("--results")
            .arg(results)
            .args(["--slurm", "--dry-run"]);
        c
    };
    let injected = |tag: &str| d.path().join(format!("injected_{tag}"));
    let results = d.path().join("results");
    for flag in ["--partition", "--gres", "--time", "--sbatch-arg"] {
        let value = format!("-gpu\ntouch {}\n#", injected(flag).display());
        let out = slurm(&results)
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && one_error(&e) && e.contains(flag),
            "{flag}: {e}"
        );
        assert!(e.contains("control character"), "{e}");
    }
    let bad_results = d.path().join("res\ntouch x\n#");
    let out = slurm(&bad_results).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("results folder"), "{e}");
    assert!(
        !results.join("mini_scale/slurm").exists(),
        "scripts written for refused input"
    );
    assert!(!bad_results.exists());

    // Printable shell syntax everywhere: written, parsed, run, inert.
    let results = d.path().join(format!(
        "res $(touch {}) `touch {}` 'q'",
        injected("a").display(),
        injected("b").display()
    ));
    ok(slurm(&results).args([
        &format!("--partition=gpu$(touch {})", injected("c").display()),
        &format!("--time=`touch {}`", injected("d").display()),
        &format!("--gres=gpu:1;touch {}", injected("e").display()),
    ]));
    let sub = std::fs::read_dir(results.join("mini_scale/slurm"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for script in ["array.sh", "collect.sh"] {
        let st = Command::new("bash")
            .arg("-n")
            .arg(sub.join(script))
            .status()
            .unwrap();
        assert!(st.success(), "bash -n {script}");
    }
    let out = Command::new("bash")
        .arg(sub.join("array.sh"))
        .env("SLURM_ARRAY_TASK_ID", "0")
        .env("VCP_CACHE", &cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("bash")
        .arg(sub.join("collect.sh"))
        .env("VCP_CACHE", &cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sub.join("collected").exists() && sub.join("summary.txt").exists());
    let summary = std::fs::read_to_string(sub.join("summary.txt")).unwrap();
    assert!(summary.contains("1 done"), "{summary}");
    for tag in ["a", "b", "c", "d", "e"] {
        assert!(!injected(tag).exists(), "injected_{tag} was created");
    }
}

/// Ctrl-C to `vcp ablate --workers 2`: the parent stops both workers (each finishes nothing
/// half-way and releases its lock), exits with one line, and a rerun completes the experiment.
#[test]
fn ctrl_c_stops_every_worker_and_a_rerun_completes() {
    let d = tempfile::tempdir().unwrap();
    let (cache, results) = (d.path().join("cache"), d.path().join("results"));
    let file = mini(d.path());
    let child = vcp(&cache)
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(&results)
        .args(["--workers", "2", "--set", "train.epochs=3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let runs = results.join("mini_scale/runs");
    let t0 = std::time::Instant::now();
    while !runs.exists() || std::fs::read_dir(&runs).unwrap().next().is_none() {
        assert!(t0.elapsed().as_secs() < 120, "no run started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(one_error(&err) && err.contains("interrupted"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Both workers are gone and left no lock behind.
    for e in std::fs::read_dir(&runs).unwrap() {
        assert!(!e.unwrap().path().join("lock.json").exists());
    }
    for i in 0..2 {
        let log =
            std::fs::read_to_string(results.join(format!("mini_scale/workers/worker-{i}.log")))
                .unwrap();
        assert!(!log.contains("panicked"), "{log}");
    }
    let done = std::fs::read_dir(&runs)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("record.json").exists())
        .count();
    assert!(done < 6);
    let (out, _) = ok(vcp(&cache)
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(&results)
        .args(["--set", "train.epochs=3"]));
    assert!(
        out.contains(&format!("{} runs done, {done} already finished", 6 - done)),
        "{out}"
    );
}

/// Issue 25 (3, 9): sizes that overflow are errors, `--threads` is bounded, and a lock left by
/// a process that cannot be checked (another host) is removed by `--break-lock` with a message.
#[test]
fn cache_sizes_threads_and_break_lock() {
    let d = tempfile::tempdir().unwrap();
    let (cache, results) = (d.path().join("cache"), d.path().join("results"));
    let file = mini(d.path());
    let ablate = || {
        let mut c = vcp(&cache);
        c.arg("ablate").arg(&file).arg("--results").arg(&results);
        c
    };
    for flag in ["--cache-mib", "--feature-cache-mib"] {
        let o = ablate()
            .args([flag, "18446744073709551615", "--status"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && one_error(&e) && e.contains(flag) && e.contains("too large"),
            "{e}"
        );
    }
    for n in ["0", "100000"] {
        let o = ablate()
            .args(["--threads", n, "--status"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && one_error(&e) && e.contains(&format!("--threads {n}")),
            "{e}"
        );
    }
    let (st, _) = ok(ablate().arg("--status"));
    let run = st
        .lines()
        .find(|l| l.starts_with("pending") && l.contains("utp"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_string();
    let dir = results.join("mini_scale/runs").join(&run);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("lock.json"),
        r#"{"host":"node-gone","pid":4242,"start":"2026-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let (st, _) = ok(ablate().arg("--status"));
    assert!(st.contains("by node-gone:4242"), "{st}");
    let (out, _) = ok(ablate().args(["--break-lock", &run]));
    assert!(
        out.contains("removed the lock") && out.contains("node-gone:4242"),
        "{out}"
    );
    assert!(!dir.join("lock.json").exists());
    let (out, _) = ok(ablate().args(["--break-lock", &run]));
    assert!(out.contains("not locked"), "{out}");
    let o = ablate()
        .args(["--break-lock", "nope-12345678"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && one_error(&e) && e.contains("no run"),
        "{e}"
    );
}

/// Issue 25 (7, 8): a `--run-list` that is a FIFO or `/dev/zero` is refused before it is opened;
/// a non-ASCII or non-hash line in it is one error naming the file and line.
#[test]
fn special_files_and_damaged_run_lists_are_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let (cache, results) = (d.path().join("cache"), d.path().join("results"));
    let file = mini(d.path());
    let fifo = d.path().join("runs.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let bad_line = d.path().join("runs.txt");
    std::fs::write(&bad_line, "é€漢字🙂 not a hash\n").unwrap();
    for (list, needle) in [
        (fifo.as_path(), "not a regular file".to_string()),
        (Path::new("/dev/zero"), "not a regular file".to_string()),
        (
            bad_line.as_path(),
            format!("{}, line 1: run é€漢字🙂 n", bad_line.display()),
        ),
    ] {
        let o = output_within(
            vcp(&cache)
                .arg("ablate")
                .arg(&file)
                .arg("--results")
                .arg(&results)
                .arg("--run-list")
                .arg(list)
                .args(["--run-index", "0"]),
            120,
        );
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && one_error(&e) && e.contains(&needle) && !e.contains("panicked"),
            "{}: {e}",
            list.display()
        );
    }
    assert!(
        !results.join("mini_scale/runs").exists(),
        "no run was started"
    );
}

/// Issue 25 (10): a write that fails for lack of room (here: the file-size limit, which fails
/// like a full disk, through the same code) is one error that names its file once, and leaves
/// neither the file nor a temporary behind.
#[test]
fn a_failed_write_names_its_file_once() {
    let d = tempfile::tempdir().unwrap();
    let (cache, results) = (d.path().join("cache"), d.path().join("results"));
    let file = mini(d.path());
    let base = vcp(&cache);
    let mut c = Command::new("bash");
    c.arg("-c")
        // `trap '' XFSZ`: the write fails with EFBIG instead of the signal killing the process.
        .arg("ulimit -f 64; trap '' XFSZ; exec \"$@\"")
        .arg("bash")
        .arg(base.get_program())
        .args(["ablate"])
        .arg(&file)
        .arg("--results")
        .arg(&results)
        .args(["--set", "train.epochs=1", "--seeds", "0"]);
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let o = c.output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("File too large"), "{e}");
    let line = e.lines().find(|l| l.starts_with("error:")).unwrap();
    let path = line
        .split_whitespace()
        .find(|w| w.starts_with('/'))
        .unwrap()
        .trim_end_matches(':');
    assert_eq!(line.matches(path).count(), 1, "{line}");
    // Nothing half-written: neither the file nor its temporary.
    let p = Path::new(path);
    assert!(!p.exists());
    let left: Vec<_> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".vcp-tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Issue 25: SIGKILL in the middle of a run (no handler runs: the lock stays, no record is
/// written) and a rerun: the dead process's lock is taken over, every run ends with exactly one
/// record, and the table is written.
#[test]
fn sigkill_then_rerun_does_every_run_exactly_once() {
    let d = tempfile::tempdir().unwrap();
    let (cache, results) = (d.path().join("cache"), d.path().join("results"));
    let file = mini(d.path());
    let mut child = vcp(&cache)
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(&results)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let runs_dir = results.join("mini_scale/runs");
    let t = std::time::Instant::now();
    let locked = || {
        std::fs::read_dir(&runs_dir).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.path().join("lock.json").exists())
        })
    };
    while !locked() {
        assert!(t.elapsed().as_secs() < 300, "no run was ever claimed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(locked(), "a SIGKILLed process leaves its lock behind");
    let (out, err) = ok(vcp(&cache)
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(&results));
    assert!(err.contains("took over the stale lock"), "{err}");
    assert!(out.contains("| utp |"), "{out}");
    let recs = records(&results);
    assert_eq!(recs.len(), 6);
    // Exactly one record per run folder, and every folder belongs to a run of the experiment.
    let folders: Vec<_> = std::fs::read_dir(&runs_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(folders.len(), 6);
    for f in folders {
        assert!(f.path().join("record.json").exists());
        assert!(!f.path().join("lock.json").exists());
    }
}

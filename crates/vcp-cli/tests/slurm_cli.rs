//! `vcp ablate --slurm` against a real single-node Slurm. Opt-in (`--ignored`): it needs the
//! daemons, which `tools/slurm/with_local_slurm.sh` starts (and stops) around it; CI runs
//!
//!   bash tools/slurm/with_local_slurm.sh cargo test --release -p vcp-cli --test slurm_cli -- --ignored
//!
//! A 4-run ablation submitted as a job array gives the table of the same ablation run locally,
//! number for number; a variant that fails is reported by the collector while the other runs
//! complete; after the fix, resubmitting runs only that run; a bad sbatch option submits nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn write_files(dir: &Path) {
    write_small_base(dir);
    std::fs::write(
        dir.join("mini.toml"),
        format!("name = \"mini_slurm\"\nbase = \"base.toml\"\nseeds = [0, 1]\n{UTP_AND_VCP_CLIP}"),
    )
    .unwrap();
}

/// stdout of a successful command.
fn run_ok(cmd: &mut Command) -> String {
    ok(cmd).0
}

/// The submission folder and the collector's marker from `vcp ablate --slurm`'s output.
fn submission(out: &str) -> PathBuf {
    let dir = out
        .split("scripts and logs in ")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"))
        .trim();
    PathBuf::from(dir)
}

fn wait_collected(dir: &Path) {
    let t = Instant::now();
    while !dir.join("collected").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "collector did not finish: {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn squeue_count() -> usize {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%i"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
#[ignore = "needs a running Slurm: bash tools/slurm/with_local_slurm.sh cargo test ... -- --ignored"]
fn job_array_equals_local_run_reports_failures_and_resubmits_only_what_failed() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    write_files(d.path());
    let file = d.path().join("mini.toml");
    // Locally.
    let local = d.path().join("local");
    run_ok(
        vcp(&cache)
            .arg("ablate")
            .arg(&file)
            .arg("--results")
            .arg(&local),
    );
    let table_local = std::fs::read_to_string(local.join("mini_slurm/table.csv")).unwrap();
    // As a job array (from another directory: the scripts use absolute paths).
    let cluster = d.path().join("cluster");
    let out = run_ok(
        vcp(&cache)
            .current_dir(d.path().join("..").canonicalize().unwrap())
            .arg("ablate")
            .arg(&file)
            .arg("--results")
            .arg(&cluster)
            .args(["--slurm", "--array-parallelism", "2", "--time", "00:10:00"]),
    );
    assert!(out.contains("submitted 4 of 4 runs"), "{out}");
    let sub = submission(&out);
    wait_collected(&sub);
    let table = std::fs::read_to_string(cluster.join("mini_slurm/table.csv")).unwrap();
    assert_eq!(
        table, table_local,
        "the job array's table differs from the local one"
    );
    let summary = std::fs::read_to_string(sub.join("summary.txt")).unwrap();
    assert!(
        summary.contains("4 runs: 4 done, 0 running, 0 failed, 0 pending"),
        "{summary}"
    );
    assert!(std::fs::read_dir(&sub).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("task-")));
    // Everything done: nothing to submit.
    let o = vcp(&cache)
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(&cluster)
        .arg("--slurm")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to submit"));

    // One variant fails at run time (its evaluation data does not exist yet).
    let synth = std::fs::read_dir(cache.join("synth"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("meta_beta.json").exists())
        .unwrap();
    let late = d.path().join("late");
    let text = std::fs::read_to_string(&file).unwrap().replace("mini_slurm", "mini_fail")
        + &format!(
            "[[variant]]\nname = \"late_data\"\nset = {{ \"eval.data\" = {:?}, \"eval.root\" = {:?} }}\n",
            late.join("meta.json").display().to_string(),
            synth.display().to_string()
        );
    let fail_file = d.path().join("fail.toml");
    std::fs::write(&fail_file, text).unwrap();
    let submit = || {
        run_ok(
            vcp(&cache)
                .arg("ablate")
                .arg(&fail_file)
                .arg("--results")
                .arg(&cluster)
                .arg("--slurm"),
        )
    };
    let out = submit();
    assert!(out.contains("submitted 6 of 6 runs"), "{out}");
    let sub = submission(&out);
    wait_collected(&sub);
    let summary = std::fs::read_to_string(sub.join("summary.txt")).unwrap();
    assert!(
        summary.contains("6 runs: 4 done, 0 running, 2 failed, 0 pending"),
        "{summary}"
    );
    let failed: Vec<&str> = summary
        .lines()
        .filter(|l| l.starts_with("failed"))
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .all(|l| l.contains("late_data") && l.contains("meta.json")),
        "{summary}"
    );
    let report = std::fs::read_to_string(sub.join("report.txt")).unwrap();
    assert!(
        report.contains("| utp |") && report.contains("| vcp_clip |"),
        "{report}"
    );
    let done_before: Vec<(PathBuf, std::time::SystemTime)> =
        std::fs::read_dir(cluster.join("mini_fail/runs"))
            .unwrap()
            .map(|e| e.unwrap().path().join("record.json"))
            .filter(|p| p.exists())
            .map(|p| {
                let m = std::fs::metadata(&p).unwrap().modified().unwrap();
                (p, m)
            })
            .collect();
    assert_eq!(done_before.len(), 4);
    // The fix: the data appears. Resubmitting runs only the two failed runs.
    std::fs::create_dir_all(&late).unwrap();
    std::fs::copy(synth.join("meta_beta.json"), late.join("meta.json")).unwrap();
    let out = submit();
    assert!(out.contains("submitted 2 of 6 runs"), "{out}");
    let sub = submission(&out);
    wait_collected(&sub);
    let summary = std::fs::read_to_string(sub.join("summary.txt")).unwrap();
    assert!(summary.contains("6 runs: 6 done"), "{summary}");
    for (p, m) in done_before {
        assert_eq!(
            std::fs::metadata(&p).unwrap().modified().unwrap(),
            m,
            "{} ran again",
            p.display()
        );
    }
    assert!(cluster.join("mini_fail/table.csv").exists());

    // A bad sbatch option: an error, and nothing is submitted.
    let before = squeue_count();
    std::fs::remove_dir_all(cluster.join("mini_fail/runs")).unwrap();
    let o = vcp(&cache)
        .arg("ablate")
        .arg(&fail_file)
        .arg("--results")
        .arg(&cluster)
        .args(["--slurm", "--sbatch-arg=--no-such-option=1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("sbatch refused the array job") && e.contains("nothing was submitted"),
        "{e}"
    );
    assert_eq!(squeue_count(), before);
}

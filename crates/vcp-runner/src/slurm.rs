//! `vcp ablate EXP --slurm`: one Slurm job array for the runs that need work, one array task
//! per run, plus a collector job that writes the table, the plots and a summary of failed runs.
//!
//! Everything goes to `results/<experiment>/slurm/<submission>/`: `runs.txt` (one run hash per
//! line; array task `i` runs line `i`), `array.sh` and `collect.sh` (kept for the user to read
//! and resubmit: every option is an `#SBATCH` line), the tasks' output, and after the collector
//! `summary.txt` (`vcp ablate --status`) and `report.txt`. The tasks run the very `vcp` binary
//! that submitted them (absolute path), so nodes need nothing on their PATH; the results folder
//! must be on a file system the nodes share. The collector depends on the array with
//! `afterany` (with `afterok` one failed task would leave it pending forever). Either both jobs
//! are submitted or neither.

use crate::experiment::RunSpec;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub gres: Option<String>,
    /// `HH:MM:SS` (or any form `sbatch --time` takes).
    pub time: Option<String>,
    /// At most this many array tasks at once (`--array=0-(N-1)%K`).
    pub array_parallelism: Option<usize>,
    /// Passed to both jobs as extra `#SBATCH` lines (e.g. `--account=abc`, `--mem=16G`).
    pub sbatch_args: Vec<String>,
    pub dry_run: bool,
}

/// What was written (and submitted).
#[derive(Debug)]
pub struct Submission {
    pub dir: PathBuf,
    pub array_script: String,
    pub collect_script: String,
    pub runs: usize,
    /// Job ids (`None` for a dry run).
    pub array_job: Option<String>,
    pub collect_job: Option<String>,
}

/// Single-quote for bash.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

fn first_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// `vcp` invocations the scripts run: `exe`, then `ablate_args` (the experiment file and its
/// options, absolute paths) for the tasks and the status, `report_args` for the report.
pub struct Commands<'a> {
    pub exe: &'a Path,
    pub ablate_args: &'a [String],
    pub report_args: &'a [String],
    /// The command line that submitted (written into the scripts).
    pub submitted_by: &'a str,
    /// Working directory of the jobs.
    pub cwd: &'a Path,
}

fn header(name: &str, out: &str, o: &SlurmOptions, gpu: bool) -> String {
    let mut h = String::from("#!/bin/bash\n");
    h += &format!("#SBATCH --job-name={}\n", sh_quote(name));
    h += &format!("#SBATCH --output={}\n", sh_quote(out));
    if let Some(p) = &o.partition {
        h += &format!("#SBATCH --partition={}\n", sh_quote(p));
    }
    if let (Some(g), true) = (&o.gres, gpu) {
        h += &format!("#SBATCH --gres={}\n", sh_quote(g));
    }
    if let Some(t) = &o.time {
        h += &format!("#SBATCH --time={}\n", sh_quote(t));
    }
    for a in &o.sbatch_args {
        h += &format!("#SBATCH {a}\n");
    }
    h
}

/// A value that goes into a script must stay on its line: a newline (or any other control
/// character) in an `#SBATCH` comment line would end it, and the next line would run as a
/// command on the compute node.
fn check_script_value(what: &str, value: &str) -> Result<()> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        bail!(
            "{what} {value:?} contains the control character {:?}; nothing was written or submitted",
            c
        );
    }
    Ok(())
}

/// Everything a user typed that goes into the scripts, checked before anything is written.
pub fn validate(cmds: &Commands, exp_dir: &Path, name: &str, o: &SlurmOptions) -> Result<()> {
    for (what, v) in [
        ("--partition", &o.partition),
        ("--gres", &o.gres),
        ("--time", &o.time),
    ] {
        if let Some(v) = v {
            check_script_value(what, v)?;
        }
    }
    for a in &o.sbatch_args {
        check_script_value("--sbatch-arg", a)?;
        if !a.starts_with('-') {
            bail!(
                "--sbatch-arg `{a}`: expected one sbatch option such as --mem=16G or --account=abc"
            );
        }
    }
    if o.array_parallelism == Some(0) {
        bail!("--array-parallelism must be at least 1");
    }
    check_script_value("the experiment name", name)?;
    check_script_value("the results folder", &exp_dir.display().to_string())?;
    check_script_value("the working directory", &cmds.cwd.display().to_string())?;
    check_script_value("the vcp binary's path", &cmds.exe.display().to_string())?;
    for a in cmds.ablate_args.iter().chain(cmds.report_args) {
        check_script_value("the argument", a)?;
    }
    Ok(())
}

/// Write the scripts for `runs` (the runs that need work) into a new folder under
/// `exp_dir/slurm/` and, unless a dry run, submit the array and the collector.
pub fn submit(
    cmds: &Commands,
    runs: &[&RunSpec],
    exp_dir: &Path,
    name: &str,
    o: &SlurmOptions,
) -> Result<Submission> {
    if runs.is_empty() {
        bail!("nothing to submit: every run of {name} has a record or is running");
    }
    validate(cmds, exp_dir, name, o)?;
    let (sbatch, scancel) = tools(o)?;
    let sub = write_scripts(cmds, runs, exp_dir, name, o)?;
    if o.dry_run {
        return Ok(sub);
    }
    submit_jobs(sub, &sbatch, &scancel)
}

/// `sbatch` and `scancel` (names only for a dry run); the controller must answer `scontrol ping`.
fn tools(o: &SlurmOptions) -> Result<(PathBuf, PathBuf)> {
    Ok(if o.dry_run {
        (PathBuf::from("sbatch"), PathBuf::from("scancel"))
    } else {
        let sbatch = find_on_path("sbatch").context(
            "sbatch is not on the PATH (install Slurm's client, or use --dry-run to only write the scripts)",
        )?;
        if let Some(scontrol) = find_on_path("scontrol") {
            let out = Command::new(scontrol)
                .arg("ping")
                .output()
                .context("scontrol ping")?;
            if !out.status.success() {
                bail!(
                    "the Slurm controller is not reachable (`scontrol ping`: {}); nothing was submitted",
                    first_line(&[out.stdout, out.stderr].concat())
                );
            }
        }
        (
            sbatch,
            find_on_path("scancel").unwrap_or_else(|| "scancel".into()),
        )
    })
}

/// `runs.txt`, `array.sh` and `collect.sh` in a new submission folder.
fn write_scripts(
    cmds: &Commands,
    runs: &[&RunSpec],
    exp_dir: &Path,
    name: &str,
    o: &SlurmOptions,
) -> Result<Submission> {
    let stamp = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .format("%Y%m%dT%H%M%SZ");
    let dir = exp_dir
        .join("slurm")
        .join(format!("{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let hashes: String = runs.iter().map(|r| format!("{}\n", r.hash)).collect();
    vcp_data::io::write_atomic(&dir.join("runs.txt"), hashes.as_bytes())?;
    let d = |f: &str| dir.join(f).display().to_string();
    let n = runs.len();
    let array = match o.array_parallelism {
        Some(k) => format!("0-{}%{k}", n - 1),
        None => format!("0-{}", n - 1),
    };
    let exe = sh_quote(&cmds.exe.display().to_string());
    let ablate: Vec<String> = cmds.ablate_args.iter().map(|a| sh_quote(a)).collect();
    let report: Vec<String> = cmds.report_args.iter().map(|a| sh_quote(a)).collect();
    let mut array_script = header(&format!("vcp-{name}"), &d("task-%A_%a.out"), o, true);
    array_script += &format!("#SBATCH --array={array}\n");
    array_script += &format!(
        "# Written by `{}`.\n# One task per line of runs.txt; resubmit all with `sbatch array.sh` in this folder (runs with a record are skipped),\n# or only what still needs work by running the same `vcp ablate ... --slurm` again.\nset -euo pipefail\ncd {}\nexec {exe} ablate {} --worker --run-list {} --run-index \"$SLURM_ARRAY_TASK_ID\"\n",
        // A comment line: no control character may end it early.
        cmds.submitted_by
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>(),
        sh_quote(&cmds.cwd.display().to_string()),
        ablate.join(" "),
        sh_quote(&d("runs.txt")),
    );
    let mut collect_script = header(&format!("vcp-{name}-collect"), &d("collect.out"), o, false);
    collect_script += &format!(
        "# The collector: runs after every array task ended (afterany), whatever their outcome.\nset -uo pipefail\ncd {}\n{exe} ablate {} --status > {}\n{exe} report {} > {} 2>&1\ntouch {}\n",
        sh_quote(&cmds.cwd.display().to_string()),
        ablate.join(" "),
        sh_quote(&d("summary.txt")),
        report.join(" "),
        sh_quote(&d("report.txt")),
        sh_quote(&d("collected")),
    );
    vcp_data::io::write_atomic(&dir.join("array.sh"), array_script.as_bytes())?;
    vcp_data::io::write_atomic(&dir.join("collect.sh"), collect_script.as_bytes())?;
    Ok(Submission {
        dir,
        array_script,
        collect_script,
        runs: n,
        array_job: None,
        collect_job: None,
    })
}

/// Submit the array, then the collector after it (`afterany`); all or nothing.
fn submit_jobs(mut sub: Submission, sbatch: &Path, scancel: &Path) -> Result<Submission> {
    let dir = sub.dir.clone();
    let out = Command::new(sbatch)
        .arg("--parsable")
        .arg(dir.join("array.sh"))
        .output()
        .context("running sbatch")?;
    if !out.status.success() {
        bail!(
            "sbatch refused the array job ({}); nothing was submitted (scripts kept in {})",
            first_line(&[out.stderr, out.stdout].concat()),
            dir.display()
        );
    }
    let array_id = first_line(&out.stdout)
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    let out = Command::new(sbatch)
        .arg("--parsable")
        .arg(format!("--dependency=afterany:{array_id}"))
        .arg(dir.join("collect.sh"))
        .output()
        .context("running sbatch")?;
    if !out.status.success() {
        // All or nothing: withdraw the array.
        let _ = Command::new(scancel).arg(&array_id).status();
        bail!(
            "sbatch refused the collector job ({}); the array job {array_id} was cancelled, nothing is left submitted",
            first_line(&[out.stderr, out.stdout].concat())
        );
    }
    sub.collect_job = Some(
        first_line(&out.stdout)
            .split(';')
            .next()
            .unwrap_or("")
            .to_string(),
    );
    sub.array_job = Some(array_id);
    vcp_data::io::write_atomic(
        &dir.join("jobs.txt"),
        format!(
            "array {}\ncollector {}\n",
            sub.array_job.as_deref().unwrap_or(""),
            sub.collect_job.as_deref().unwrap_or("")
        )
        .as_bytes(),
    )?;
    Ok(sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_bash() {
        for s in ["plain", "with space", "it's", "$HOME", "a\"b", ""] {
            let out = Command::new("bash")
                .arg("-c")
                .arg(format!("printf %s {}", sh_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }
}

//! `vcp report EXPERIMENT`: tables and plots regenerated from the run records alone.
//!
//! The records become a polars DataFrame (one row per run); per variant the mean and standard
//! deviation over seeds (sample std, n - 1; 0 for one seed) give `table.csv`, `table.md` (and
//! `table.tex`), values x100. Reference rows (paper numbers, released checkpoints) from the
//! ablation file are printed beside the measured ones.

use crate::record::Record;
use anyhow::{bail, Context, Result};
use polars::prelude::*;
use std::path::{Path, PathBuf};

pub use crate::summary::{mean_std, summarize, Summary, VariantSummary, METRICS};

/// The records of an experiment folder. With `expected` (the run hashes of the current
/// expanded experiment), only those runs are returned; the other records (a variant edited
/// since, another `--set`, another device) come back as `stale` folder names, never averaged in.
pub fn load_records(
    exp_dir: &Path,
    expected: Option<&[String]>,
) -> Result<(Vec<Record>, Vec<String>)> {
    let runs = exp_dir.join("runs");
    let mut v = Vec::new();
    let mut stale = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&runs)
        .with_context(|| format!("{}: no runs (run `vcp ablate` first)", runs.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for dir in entries {
        let p = dir.join("record.json");
        if p.exists() {
            let r = Record::load(&p)?;
            let keep = match expected {
                Some(hashes) => hashes.contains(&r.hash),
                None => true,
            };
            if keep {
                v.push(r);
            } else {
                stale.push(
                    dir.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .to_string(),
                );
            }
        }
    }
    if v.is_empty() {
        bail!("{}: no finished runs of this experiment", runs.display());
    }
    Ok((v, stale))
}

/// One row per run.
pub fn runs_frame(records: &[Record]) -> Result<DataFrame> {
    let n = records.len();
    let mut cols: Vec<Column> = vec![
        Column::new(
            "variant".into(),
            records
                .iter()
                .map(|r| r.variant.clone())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "seed".into(),
            records.iter().map(|r| r.seed).collect::<Vec<_>>(),
        ),
    ];
    for m in METRICS {
        cols.push(Column::new(
            m.into(),
            records
                .iter()
                .map(|r| r.metrics.mean.get(m))
                .collect::<Vec<Option<f64>>>(),
        ));
    }
    cols.push(Column::new(
        "wall_seconds".into(),
        records
            .iter()
            .map(|r| r.wall_seconds.total)
            .collect::<Vec<_>>(),
    ));
    Ok(DataFrame::new(n, cols)?)
}

/// Write a table as CSV (polars' writer, the one writer of every CSV of the results) atomically.
pub fn write_csv(path: &Path, mut df: DataFrame) -> Result<()> {
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).finish(&mut df)?;
    vcp_data::io::write_atomic(path, &buf)?;
    Ok(())
}

/// Per category of one run (`per_category.csv`): the metric columns, values x100, empty where
/// undefined.
pub fn per_category_frame(rows: &[(String, vcp_metrics::CategoryMetrics)]) -> Result<DataFrame> {
    let mut cols = vec![Column::new(
        "category".into(),
        rows.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(),
    )];
    for m in METRICS {
        cols.push(Column::new(
            m.into(),
            rows.iter()
                .map(|(_, r)| r.get(m).map(|v| v * 100.0))
                .collect::<Vec<Option<f64>>>(),
        ));
    }
    Ok(DataFrame::new(rows.len(), cols)?)
}

fn fmt(s: Option<(f64, f64)>, n: usize) -> String {
    match s {
        None => "n/a".into(),
        Some((m, _)) if n < 2 => format!("{:.2}", m * 100.0),
        Some((m, sd)) => format!("{:.2} ± {:.2}", m * 100.0, sd * 100.0),
    }
}

// Long because it writes the same rows in three formats (csv, markdown, LaTeX) side by side, so
// that they cannot drift apart.
/// Write table.csv / table.md / table.tex into `exp_dir`; returns the markdown.
pub fn write_tables(
    exp_dir: &Path,
    summary: &Summary,
    reference: &[toml::Table],
    title: &str,
    footer: &str,
) -> Result<String> {
    // CSV through polars: variant, n_seeds, <metric>_mean, <metric>_std (x100).
    let n = summary.len();
    let mut cols = vec![
        Column::new(
            "variant".into(),
            summary.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "n_seeds".into(),
            summary.iter().map(|s| s.runs as u64).collect::<Vec<_>>(),
        ),
    ];
    for (j, m) in METRICS.iter().enumerate() {
        cols.push(Column::new(
            format!("{m}_mean").into(),
            summary
                .iter()
                .map(|s| s.stats[j].map(|x| x.0 * 100.0))
                .collect::<Vec<_>>(),
        ));
        cols.push(Column::new(
            format!("{m}_std").into(),
            summary
                .iter()
                .map(|s| s.stats[j].map(|x| x.1 * 100.0))
                .collect::<Vec<_>>(),
        ));
    }
    write_csv(&exp_dir.join("table.csv"), DataFrame::new(n, cols)?)?;

    let mut md = format!(
        "| variant | seeds | {} |\n|:--|--:|{}\n",
        METRICS.join(" | "),
        "--:|".repeat(METRICS.len())
    );
    for VariantSummary {
        name,
        stats,
        runs: k,
    } in summary
    {
        md.push_str(&format!(
            "| {name} | {k} | {} |\n",
            stats
                .iter()
                .map(|s| fmt(*s, *k))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    for r in reference {
        let name = r
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or("reference");
        let vals: Vec<String> = METRICS
            .iter()
            .map(|m| {
                r.get(*m)
                    .and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)))
                    .map(|v| format!("*{:.2}*", v * 100.0))
                    .unwrap_or_else(|| "".into())
            })
            .collect();
        md.push_str(&format!("| *{name}* | | {} |\n", vals.join(" | ")));
    }
    let mut doc = format!("# {title}\n\n{md}\nValues x100, mean ± sample std over seeds. Regenerate with `vcp report {title}`.\n");
    if !reference.is_empty() {
        doc.push_str("Rows in italics are numbers reported elsewhere (see the experiment file), not measured here.\n");
    }
    doc.push_str(footer);
    vcp_data::io::write_atomic(&exp_dir.join("table.md"), doc.as_bytes())?;
    let mut tex = format!(
        "\\begin{{tabular}}{{l{}}}\n\\hline\nvariant & {} \\\\\n\\hline\n",
        "r".repeat(METRICS.len()),
        METRICS.map(|m| m.replace('_', "\\_")).join(" & ")
    );
    for VariantSummary {
        name,
        stats,
        runs: k,
    } in summary
    {
        tex.push_str(&format!(
            "{} & {} \\\\\n",
            name.replace('_', "\\_"),
            stats
                .iter()
                .map(|s| fmt(*s, *k).replace('±', "$\\pm$"))
                .collect::<Vec<_>>()
                .join(" & ")
        ));
    }
    tex.push_str("\\hline\n\\end{tabular}\n");
    vcp_data::io::write_atomic(&exp_dir.join("table.tex"), tex.as_bytes())?;
    Ok(md)
}

/// Regenerate tables and plots for `results/<experiment>`. `order`: variants in file order.
pub fn report(
    exp_dir: &Path,
    order: &[String],
    baseline: Option<&str>,
    reference: &[toml::Table],
    expected: Option<&[String]>,
) -> Result<(String, Vec<PathBuf>)> {
    let (records, stale) = load_records(exp_dir, expected)?;
    let df = runs_frame(&records)?;
    let summary = summarize(&df, order)?;
    let title = exp_dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut footer = provenance_footer(&records, &stale);
    // A variant of the file without a record of its current settings (edited since its runs,
    // or not run yet) is named, never silently absent from the table.
    let absent: Vec<&String> = order
        .iter()
        .filter(|v| !records.iter().any(|r| &r.variant == *v))
        .collect();
    if !absent.is_empty() {
        let names = absent
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!(
            "warning: no record of the current settings for variant(s) {names} (edited since their runs, or not run yet): not in the table; run `vcp ablate` to add them"
        );
        footer.push_str(&format!(
            "Not in the table (no record of their current settings): {names}.\n"
        ));
    }
    let md = write_tables(exp_dir, &summary, reference, &title, &footer)?;
    if !stale.is_empty() {
        eprintln!(
            "left out {} stale record(s) that are not runs of the current experiment: {}",
            stale.len(),
            stale.join(", ")
        );
    }
    let plots = crate::plots::all(exp_dir, &records, &summary, baseline)?;
    Ok((md, plots))
}

/// Where the numbers come from: the command, the code (commit, clean or not), the device and
/// the date of the records; and any stale records that were left out.
fn provenance_footer(records: &[Record], stale: &[String]) -> String {
    let uniq = |key: &dyn Fn(&Record) -> String| {
        let mut v: Vec<String> = records.iter().map(key).collect();
        v.sort();
        v.dedup();
        v.join(", ")
    };
    let commits = uniq(&|r: &Record| {
        let c = r.git.commit.as_deref().unwrap_or("unknown");
        let dirty = match r.git.dirty {
            Some(true) => " (dirty)",
            Some(false) => " (clean)",
            None => "",
        };
        format!("{}{dirty}", &c[..c.len().min(12)])
    });
    // Runs done by worker processes record the child's command line (`... --worker`): the
    // footer names the equivalent command a user types (`... --workers N`, N = the processes
    // that did runs; the table does not depend on N).
    let workers = {
        let mut pids: Vec<String> = records
            .iter()
            .filter(|r| r.command.split_whitespace().any(|a| a == "--worker"))
            .filter(|r| !r.command.contains("--run-list"))
            .filter_map(|r| r.worker.as_ref().map(|w| format!("{}:{}", w.host, w.pid)))
            .collect();
        pids.sort();
        pids.dedup();
        pids.len().max(1)
    };
    let commands = uniq(&|r: &Record| {
        let args: Vec<&str> = r.command.split_whitespace().collect();
        // (Slurm array tasks, `--run-list`, keep their own command lines.)
        if args.contains(&"--worker") && !args.contains(&"--run-list") {
            let kept: Vec<&str> = args.into_iter().filter(|a| *a != "--worker").collect();
            format!("{} --workers {workers}", kept.join(" "))
        } else {
            r.command.clone()
        }
    });
    let devices = uniq(&|r: &Record| r.device.clone());
    let mut s = format!(
        "Produced by `{commands}`; code {commits}; device {devices}; {} runs.\n",
        records.len()
    );
    s.push_str(&test_set_line(records));
    if !stale.is_empty() {
        s.push_str(&format!(
            "Left out: {} stale record(s) of other configurations ({}).\n",
            stale.len(),
            stale.join(", ")
        ));
    }
    s
}

/// How many test images each category has (`[normal, defective]`, from the records): one
/// phrase when every category and record agrees, otherwise per category; records written before
/// the counts were kept say nothing.
fn test_set_line(records: &[Record]) -> String {
    let mut per: Vec<(String, [usize; 2])> = Vec::new();
    for r in records {
        for (c, n) in &r.test_images.0 {
            if !per.iter().any(|(pc, pn)| pc == c && pn == n) {
                per.push((c.clone(), *n));
            }
        }
    }
    if per.is_empty() {
        return String::new();
    }
    let mut counts: Vec<[usize; 2]> = per.iter().map(|(_, n)| *n).collect();
    counts.sort();
    counts.dedup();
    let mut cats: Vec<&str> = per.iter().map(|(c, _)| c.as_str()).collect();
    cats.dedup();
    if counts.len() == 1 && cats.len() == per.len() {
        let [n, d] = counts[0];
        format!(
            "Test set: {} categories x {} images ({n} normal + {d} defective) per category.\n",
            cats.len(),
            n + d
        )
    } else {
        let list: Vec<String> = per
            .iter()
            .map(|(c, [n, d])| format!("{c} {n}+{d}"))
            .collect();
        format!(
            "Test images per category (normal+defective): {}.\n",
            list.join(", ")
        )
    }
}

/// Split one CSV line (polars quotes fields with commas or quotes; `""` is a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// `variant → (column → value)` of a `table.csv`'s `*_mean` columns.
fn table_means(
    csv: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>> {
    let mut lines = csv.lines();
    let header = lines.next().map(csv_fields).unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let f = csv_fields(l);
        let Some(variant) = f.first() else { continue };
        let row = header
            .iter()
            .zip(&f)
            .filter_map(|(h, v)| {
                let m = h.strip_suffix("_mean")?;
                Some((m.to_string(), v.parse::<f64>().ok()?))
            })
            .collect();
        out.insert(variant.clone(), row);
    }
    out
}

/// How a freshly written table compares with an earlier one (e.g. the committed reference):
/// the variants found in both and, per metric, the largest absolute difference of the means
/// (table units, x100) with the variant where it occurs.
#[derive(Debug, Clone)]
pub struct Reproduction {
    pub matched: Vec<String>,
    pub only_new: Vec<String>,
    pub only_old: Vec<String>,
    pub max_diff: Vec<(String, f64, String)>,
}

pub fn compare_tables(old_csv: &str, new_csv: &str) -> Reproduction {
    let (old, new) = (table_means(old_csv), table_means(new_csv));
    let matched: Vec<String> = new
        .keys()
        .filter(|k| old.contains_key(*k))
        .cloned()
        .collect();
    let mut max_diff: Vec<(String, f64, String)> = Vec::new();
    for v in &matched {
        for (metric, &b) in &new[v] {
            let Some(&a) = old[v].get(metric) else {
                continue;
            };
            let d = (a - b).abs();
            match max_diff.iter_mut().find(|(m, _, _)| m == metric) {
                Some(e) if d > e.1 => *e = (metric.clone(), d, v.clone()),
                Some(_) => {}
                None => max_diff.push((metric.clone(), d, v.clone())),
            }
        }
    }
    Reproduction {
        only_new: new
            .keys()
            .filter(|k| !old.contains_key(*k))
            .cloned()
            .collect(),
        only_old: old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect(),
        matched,
        max_diff,
    }
}

impl Reproduction {
    /// Reproduced when every matched metric agrees to the printed precision (0.005) and the
    /// variants are the same.
    pub fn reproduced(&self) -> bool {
        !self.matched.is_empty()
            && self.only_new.is_empty()
            && self.only_old.is_empty()
            && self.max_diff.iter().all(|(_, d, _)| *d < 0.005)
    }

    pub fn summary(&self) -> String {
        let diffs = self
            .max_diff
            .iter()
            .map(|(m, d, v)| format!("{m} {d:.2} ({v})"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut s = format!(
            "{}: {} of the table's variants compared; largest difference per metric (x100): {diffs}",
            if self.reproduced() {
                "reproduced the committed table"
            } else {
                "did NOT reproduce the committed table"
            },
            self.matched.len()
        );
        if !self.only_new.is_empty() {
            s += &format!("; new variants: {}", self.only_new.join(", "));
        }
        if !self.only_old.is_empty() {
            s += &format!(
                "; variants only in the committed table: {}",
                self.only_old.join(", ")
            );
        }
        s
    }
}

#[cfg(test)]
mod reproduction_tests {
    use super::*;

    #[test]
    fn compares_means_per_metric_and_names_the_variant() {
        let old = "variant,n_seeds,auroc_px_mean,auroc_px_std,ap_px_mean,ap_px_std\n\
                   a,2,60.0,1.0,2.0,0.1\n\"b,x\",2,70.0,1.0,3.0,0.1\n";
        let new = "variant,n_seeds,auroc_px_mean,auroc_px_std,ap_px_mean,ap_px_std\n\
                   a,2,60.004,9.0,2.5,0.1\n\"b,x\",2,69.0,1.0,3.0,0.1\nc,1,1,0,1,0\n";
        let r = compare_tables(old, new);
        assert_eq!(r.matched, vec!["a".to_string(), "b,x".to_string()]);
        assert_eq!(r.only_new, vec!["c".to_string()]);
        let get = |m: &str| r.max_diff.iter().find(|(k, _, _)| k == m).cloned().unwrap();
        let (_, d, v) = get("auroc_px");
        assert!((d - 1.0).abs() < 1e-9 && v == "b,x");
        let (_, d, v) = get("ap_px");
        assert!((d - 0.5).abs() < 1e-9 && v == "a");
        assert!(!r.reproduced());
        let same = compare_tables(old, old);
        assert!(same.reproduced(), "{}", same.summary());
    }
}

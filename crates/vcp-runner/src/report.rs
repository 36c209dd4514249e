//! `vcp report EXPERIMENT`: tables and plots regenerated from the run records alone.
//!
//! The records become a polars DataFrame (one row per run); per variant the mean and standard
//! deviation over seeds (sample std, n - 1; 0 for one seed) give `table.csv`, `table.md` (and
//! `table.tex`), values x100. Reference rows (paper numbers, released checkpoints) from the
//! ablation file are printed beside the measured ones.

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The metric columns, in the order of `vcp eval-maps`.
pub const METRICS: [&str; 9] = vcp_metrics::COLUMNS;

/// All records of an experiment folder, sorted by (variant order in file, seed).
pub fn load_records(exp_dir: &Path) -> Result<Vec<Value>> {
    let runs = exp_dir.join("runs");
    let mut v = Vec::new();
    for e in std::fs::read_dir(&runs)
        .with_context(|| format!("{}: no runs (run `vcp ablate` first)", runs.display()))?
    {
        let p = e?.path().join("record.json");
        if p.exists() {
            let r: Value = serde_json::from_str(&std::fs::read_to_string(&p)?)
                .with_context(|| format!("{}", p.display()))?;
            v.push(r);
        }
    }
    if v.is_empty() {
        bail!("{}: no finished runs", runs.display());
    }
    Ok(v)
}

/// One row per run.
pub fn runs_frame(records: &[Value]) -> Result<DataFrame> {
    let n = records.len();
    let mut cols: Vec<Column> = vec![
        Column::new(
            "variant".into(),
            records
                .iter()
                .map(|r| r["variant"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "seed".into(),
            records
                .iter()
                .map(|r| r["seed"].as_u64().unwrap_or(0))
                .collect::<Vec<_>>(),
        ),
    ];
    for m in METRICS {
        cols.push(Column::new(
            m.into(),
            records
                .iter()
                .map(|r| r["metrics"]["mean"][m].as_f64())
                .collect::<Vec<Option<f64>>>(),
        ));
    }
    cols.push(Column::new(
        "wall_seconds".into(),
        records
            .iter()
            .map(|r| r["wall_seconds"]["total"].as_f64())
            .collect::<Vec<_>>(),
    ));
    Ok(DataFrame::new(n, cols)?)
}

/// Mean and sample std of the non-missing values.
pub fn mean_std(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let s = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some((m, s))
}

/// Per variant (in `order`), per metric: (mean, std, n).
pub type Summary = Vec<(String, Vec<Option<(f64, f64)>>, usize)>;

pub fn summarize(df: &DataFrame, order: &[String]) -> Result<Summary> {
    let ca = df.column("variant")?.str()?;
    let variants: Vec<String> = (0..ca.len())
        .map(|i| ca.get(i).unwrap_or("").to_string())
        .collect();
    let mut names: Vec<String> = order
        .iter()
        .filter(|v| variants.contains(v))
        .cloned()
        .collect();
    for v in &variants {
        if !names.contains(v) {
            names.push(v.clone());
        }
    }
    let mut out = Vec::new();
    for name in names {
        let idx: Vec<usize> = (0..variants.len())
            .filter(|&i| variants[i] == name)
            .collect();
        let mut stats = Vec::new();
        for m in METRICS {
            let c = df.column(m)?.f64()?;
            let vals: Vec<f64> = idx.iter().filter_map(|&i| c.get(i)).collect();
            stats.push(mean_std(&vals));
        }
        out.push((name, stats, idx.len()));
    }
    Ok(out)
}

fn fmt(s: Option<(f64, f64)>, n: usize) -> String {
    match s {
        None => "n/a".into(),
        Some((m, _)) if n < 2 => format!("{:.2}", m * 100.0),
        Some((m, sd)) => format!("{:.2} ± {:.2}", m * 100.0, sd * 100.0),
    }
}

/// Write table.csv / table.md / table.tex into `exp_dir`; returns the markdown.
pub fn write_tables(
    exp_dir: &Path,
    summary: &Summary,
    reference: &[toml::Table],
    title: &str,
) -> Result<String> {
    // CSV through polars: variant, n_seeds, <metric>_mean, <metric>_std (x100).
    let n = summary.len();
    let mut cols = vec![
        Column::new(
            "variant".into(),
            summary.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "n_seeds".into(),
            summary.iter().map(|s| s.2 as u64).collect::<Vec<_>>(),
        ),
    ];
    for (j, m) in METRICS.iter().enumerate() {
        cols.push(Column::new(
            format!("{m}_mean").into(),
            summary
                .iter()
                .map(|s| s.1[j].map(|x| x.0 * 100.0))
                .collect::<Vec<_>>(),
        ));
        cols.push(Column::new(
            format!("{m}_std").into(),
            summary
                .iter()
                .map(|s| s.1[j].map(|x| x.1 * 100.0))
                .collect::<Vec<_>>(),
        ));
    }
    let mut df = DataFrame::new(n, cols)?;
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).finish(&mut df)?;
    vcp_data::io::write_atomic(&exp_dir.join("table.csv"), &buf)?;

    let mut md = format!(
        "| variant | seeds | {} |\n|:--|--:|{}\n",
        METRICS.join(" | "),
        "--:|".repeat(METRICS.len())
    );
    for (name, stats, k) in summary {
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
    vcp_data::io::write_atomic(&exp_dir.join("table.md"), doc.as_bytes())?;
    let mut tex = format!(
        "\\begin{{tabular}}{{l{}}}\n\\hline\nvariant & {} \\\\\n\\hline\n",
        "r".repeat(METRICS.len()),
        METRICS.map(|m| m.replace('_', "\\_")).join(" & ")
    );
    for (name, stats, k) in summary {
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
) -> Result<(String, Vec<PathBuf>)> {
    let records = load_records(exp_dir)?;
    let df = runs_frame(&records)?;
    let summary = summarize(&df, order)?;
    let title = exp_dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let md = write_tables(exp_dir, &summary, reference, &title)?;
    let plots = crate::plots::all(exp_dir, &records, &summary, baseline)?;
    Ok((md, plots))
}

//! Per-variant summaries of the runs of an experiment: the mean and spread over seeds of each
//! metric, which the tables ([`crate::report`]) and figures ([`crate::plots`]) both show.

use anyhow::Result;
use polars::prelude::*;

/// The metric columns, in the order of `vcp eval-maps`.
pub const METRICS: [&str; 9] = vcp_metrics::COLUMNS;

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

/// One variant's row of a table: per metric (in [`METRICS`] order) the mean and sample std
/// over its runs (`None` where no run has the metric), and how many runs (seeds) there are.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantSummary {
    pub name: String,
    pub stats: Vec<Option<(f64, f64)>>,
    pub runs: usize,
}

/// Per variant, in the experiment file's order.
pub type Summary = Vec<VariantSummary>;

/// Per variant (in `order`, then any others in record order), per metric: mean and std.
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
        out.push(VariantSummary {
            runs: idx.len(),
            name,
            stats,
        });
    }
    Ok(out)
}

//! Per-category evaluation (all pixels of all test images of one category pooled, as every
//! ZSAS repository does) and the unweighted mean over categories.

use crate::aupro::{bin, cflow_aupro, cflow_thresholds, Histograms};
use crate::components::label8;
use crate::curve::{binary_metrics, sort_desc, sweep, Scored, SweepResult};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// One anomaly map and its ground truth, row-major `height x width`.
#[derive(Debug, Clone, Copy)]
pub struct MapRef<'a> {
    pub scores: &'a [f32],
    /// Anomalous pixels (the reference binarises resized masks at 0.5).
    pub mask: &'a [bool],
    pub height: usize,
    pub width: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("map {index}: {len} scores or mask pixels for a {height}x{width} map")]
    Shape {
        index: usize,
        len: usize,
        height: usize,
        width: usize,
    },
    #[error("map {index}: non-finite value (NaN or inf) at pixel {pixel}")]
    NonFinite { index: usize, pixel: usize },
    #[error("{labels} image labels for {scores} image scores")]
    ImageCount { labels: usize, scores: usize },
}

/// Metrics of one category, fractions in [0, 1]; `None` where undefined (see `warnings`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CategoryMetrics {
    pub auroc_px: Option<f64>,
    /// cflow-style AUPRO (200 thresholds, FPR < 0.3 min-max rescaled), as the ZSAS papers.
    pub aupro_px: Option<f64>,
    /// MVTec-official AUPRO (exact curve to FPR 0.3, interpolated, / 0.3).
    pub aupro30_px: Option<f64>,
    pub ap_px: Option<f64>,
    pub f1_px: Option<f64>,
    /// IoU of `map > f1_px_threshold` with the ground truth.
    pub iou_px: Option<f64>,
    pub f1_px_threshold: Option<f64>,
    pub auroc_sp: Option<f64>,
    pub ap_sp: Option<f64>,
    pub f1_sp: Option<f64>,
    pub f1_sp_threshold: Option<f64>,
}

/// Names and accessors of the metric columns, in the order tables print them.
pub const COLUMNS: [&str; 9] = [
    "auroc_px",
    "aupro_px",
    "aupro30_px",
    "ap_px",
    "f1_px",
    "iou_px",
    "auroc_sp",
    "ap_sp",
    "f1_sp",
];

impl CategoryMetrics {
    pub fn get(&self, column: &str) -> Option<f64> {
        match column {
            "auroc_px" => self.auroc_px,
            "aupro_px" => self.aupro_px,
            "aupro30_px" => self.aupro30_px,
            "ap_px" => self.ap_px,
            "f1_px" => self.f1_px,
            "iou_px" => self.iou_px,
            "f1_px_threshold" => self.f1_px_threshold,
            "auroc_sp" => self.auroc_sp,
            "ap_sp" => self.ap_sp,
            "f1_sp" => self.f1_sp,
            "f1_sp_threshold" => self.f1_sp_threshold,
            _ => None,
        }
    }

    fn set(&mut self, column: &str, v: Option<f64>) {
        match column {
            "auroc_px" => self.auroc_px = v,
            "aupro_px" => self.aupro_px = v,
            "aupro30_px" => self.aupro30_px = v,
            "ap_px" => self.ap_px = v,
            "f1_px" => self.f1_px = v,
            "iou_px" => self.iou_px = v,
            "auroc_sp" => self.auroc_sp = v,
            "ap_sp" => self.ap_sp = v,
            "f1_sp" => self.f1_sp = v,
            _ => {}
        }
    }
}

/// Curves kept for plots (down-sampled).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Curves {
    pub roc_px: Vec<(f64, f64)>,
    pub pr_px: Vec<(f64, f64)>,
    pub pro_px: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Default)]
pub struct CategoryReport {
    pub metrics: CategoryMetrics,
    pub curves: Curves,
    pub warnings: Vec<String>,
}

fn validate(maps: &[MapRef]) -> Result<(), MetricsError> {
    maps.par_iter().enumerate().try_for_each(|(index, m)| {
        let n = m.height * m.width;
        if m.scores.len() != n || m.mask.len() != n {
            return Err(MetricsError::Shape {
                index,
                len: m.scores.len().max(m.mask.len()),
                height: m.height,
                width: m.width,
            });
        }
        if let Some(pixel) = m.scores.iter().position(|v| !v.is_finite()) {
            return Err(MetricsError::NonFinite { index, pixel });
        }
        Ok(())
    })
}

// Long because every pixel metric comes from one pass over the category's pixels (region labels,
// histograms, one sweep) whose intermediates they share; the crate's speed comes from not repeating
// it.
/// Pixel-level metrics of one category.
pub fn pixel_metrics(maps: &[MapRef]) -> Result<CategoryReport, MetricsError> {
    validate(maps)?;
    let mut report = CategoryReport::default();
    if maps.is_empty() {
        report.warnings.push("no maps".into());
        return Ok(report);
    }
    // Components and score range, per image in parallel.
    let per_image: Vec<(Vec<u32>, Vec<u64>, f32, f32)> = maps
        .par_iter()
        .map(|m| {
            let (labels, sizes) = label8(m.mask, m.height, m.width);
            let (lo, hi) = m
                .scores
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            (labels, sizes, lo, hi)
        })
        .collect();
    let lo = per_image.iter().map(|p| p.2).fold(f32::INFINITY, f32::min);
    let hi = per_image
        .iter()
        .map(|p| p.3)
        .fold(f32::NEG_INFINITY, f32::max);
    let sizes: Vec<u64> = per_image.iter().flat_map(|p| p.1.iter().copied()).collect();
    let n_regions = sizes.len();
    let mut offsets = Vec::with_capacity(maps.len());
    let mut acc = 0u32;
    for p in &per_image {
        offsets.push(acc);
        acc += p.1.len() as u32;
    }

    // Scored pixels (payload = global region id, 0 = normal) and the cflow histograms.
    let thresholds = cflow_thresholds(lo, hi);
    let n_thr = thresholds.as_ref().map_or(0, |t| t.len());
    let total: usize = maps.iter().map(|m| m.scores.len()).sum();
    let mut items = vec![
        Scored {
            score: 0.0,
            payload: 0
        };
        total
    ];
    let mut chunks = Vec::with_capacity(maps.len());
    let mut rest: &mut [Scored] = &mut items;
    for m in maps {
        let (a, b) = rest.split_at_mut(m.scores.len());
        chunks.push(a);
        rest = b;
    }
    let hists: Vec<Histograms> = chunks
        .into_par_iter()
        .zip(maps.par_iter())
        .zip(per_image.par_iter().zip(offsets.par_iter()))
        .map(|((chunk, m), ((labels, sizes, _, _), &off))| {
            let mut h = Histograms::new(n_thr, sizes.len());
            for ((dst, &v), &l) in chunk.iter_mut().zip(m.scores).zip(labels) {
                *dst = Scored {
                    score: v,
                    payload: if l == 0 { 0 } else { off + l },
                };
                if let Some(t) = &thresholds {
                    let k = bin(v, t);
                    if l == 0 {
                        h.normal[k] += 1;
                    } else {
                        h.regions[l as usize - 1][k] += 1;
                    }
                }
            }
            h
        })
        .collect();
    drop(per_image);

    let n_pos: u64 = sizes.iter().sum();
    if n_pos == 0 {
        report
            .warnings
            .push("no anomalous pixels: pixel metrics undefined".into());
        return Ok(report);
    }
    if n_pos as usize == total {
        report
            .warnings
            .push("no normal pixels: pixel metrics undefined".into());
        return Ok(report);
    }

    // cflow AUPRO from the merged histograms.
    if let Some(t) = &thresholds {
        let mut normal = vec![0u64; t.len() + 1];
        let mut regions = Vec::with_capacity(n_regions);
        for h in hists {
            normal.iter_mut().zip(&h.normal).for_each(|(a, b)| *a += b);
            regions.extend(h.regions);
        }
        report.metrics.aupro_px = cflow_aupro(&normal, &regions, &sizes, t.len());
        if report.metrics.aupro_px.is_none() {
            report
                .warnings
                .push("aupro_px undefined (fewer than two thresholds with FPR < 0.3)".into());
        }
    } else {
        report
            .warnings
            .push("all maps are constant: aupro_px undefined".into());
    }

    // One sort for everything else.
    sort_desc(&mut items);
    let mut weight = vec![0f64; n_regions + 1];
    for (i, &s) in sizes.iter().enumerate() {
        weight[i + 1] = 1.0 / s as f64;
    }
    let s: SweepResult = sweep(&items, &weight, n_regions);
    let m = &mut report.metrics;
    m.auroc_px = s.auroc;
    m.ap_px = s.ap;
    m.f1_px = s.f1_max;
    m.f1_px_threshold = s.f1_threshold;
    m.iou_px = s.iou;
    m.aupro30_px = s.aupro30;
    report.curves = Curves {
        roc_px: s.roc,
        pr_px: s.pr,
        pro_px: s.pro,
    };
    Ok(report)
}

/// Image-level metrics from one score per image.
pub fn image_metrics(
    labels: &[bool],
    scores: &[f32],
    into: &mut CategoryReport,
) -> Result<(), MetricsError> {
    if labels.len() != scores.len() {
        return Err(MetricsError::ImageCount {
            labels: labels.len(),
            scores: scores.len(),
        });
    }
    if let Some(index) = scores.iter().position(|v| !v.is_finite()) {
        return Err(MetricsError::NonFinite { index, pixel: 0 });
    }
    let r = binary_metrics(labels, scores);
    if r.auroc.is_none() {
        into.warnings.push(
            "only one image class (all normal or all anomalous): image metrics undefined".into(),
        );
    }
    let m = &mut into.metrics;
    m.auroc_sp = r.auroc;
    m.ap_sp = r.ap;
    m.f1_sp = r.f1_max;
    m.f1_sp_threshold = r.f1_threshold;
    Ok(())
}

/// Pixel and image metrics of one category.
pub fn evaluate_category(
    maps: &[MapRef],
    labels: &[bool],
    scores: &[f32],
) -> Result<CategoryReport, MetricsError> {
    let mut r = pixel_metrics(maps)?;
    image_metrics(labels, scores, &mut r)?;
    Ok(r)
}

/// Unweighted mean over categories of each metric; categories where a metric is undefined are
/// left out of that metric's mean, and a note says so.
pub fn mean_over_categories(cats: &[(String, CategoryMetrics)]) -> (CategoryMetrics, Vec<String>) {
    let mut mean = CategoryMetrics::default();
    let mut notes = Vec::new();
    for col in COLUMNS {
        let vals: Vec<f64> = cats.iter().filter_map(|(_, m)| m.get(col)).collect();
        let missing: Vec<&str> = cats
            .iter()
            .filter(|(_, m)| m.get(col).is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        if !missing.is_empty() && !vals.is_empty() {
            notes.push(format!(
                "{col}: mean over {} categories; left out (undefined): {}",
                vals.len(),
                missing.join(", ")
            ));
        }
        mean.set(
            col,
            if vals.is_empty() {
                None
            } else {
                Some(vals.iter().sum::<f64>() / vals.len() as f64)
            },
        );
    }
    (mean, notes)
}

/// The default image score of the zero-shot repositories' evaluation scripts: the mean of a
/// map's top 1% values (at least one value). `None` for an empty map.
pub fn top1_percent(v: &[f32]) -> Option<f32> {
    if v.is_empty() {
        return None;
    }
    let k = (v.len() / 100).max(1);
    let mut s = v.to_vec();
    let idx = s.len() - k;
    s.select_nth_unstable_by(idx, |a, b| a.total_cmp(b));
    Some(s[idx..].iter().map(|&x| x as f64).sum::<f64>() as f32 / k as f32)
}

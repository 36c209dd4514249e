//! Plots for the report (plotters, PNG and SVG; text in the embedded DejaVu Sans, so no system
//! fonts are needed): metric bars with seed std, deltas against the baseline variant, a
//! per-category heat table, mean ROC / PR / PRO curves per variant, and a qualitative grid.
//!
//! One file per figure: [`bars`] (metric bars and deltas), [`heat`] (per-category table),
//! [`curves`] (mean ROC / PR / PRO), [`qualitative`] (the heat-map grid), [`line`] (training
//! curves). What they share (font, colours, PNG writing) is here.

mod bars;
mod curves;
mod heat;
mod line;
mod qualitative;

pub use line::line_chart;

use crate::record::Record;
use crate::summary::{Summary, METRICS};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
pub(crate) const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub(crate) fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

pub(crate) fn pe<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// An RGB buffer for plotters' `BitMapBackend::with_buffer`.
pub(crate) fn rgb_buffer((w, h): (u32, u32)) -> Vec<u8> {
    vec![0u8; w as usize * h as usize * 3]
}

/// Encode an RGB buffer as PNG (with `image`, the one image crate of the build) and write it
/// atomically.
pub(crate) fn save_png(path: &Path, (w, h): (u32, u32), buf: Vec<u8>) -> Result<()> {
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("plot buffer size"))?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    vcp_data::io::write_atomic(path, &bytes)?;
    Ok(())
}

/// The first record (seed order of the folder listing) of variant `v`.
pub(crate) fn first_of<'a>(records: &'a [Record], v: &str) -> Option<&'a Record> {
    records.iter().find(|r| r.variant == v)
}

/// Every plot of the report; returns the files written.
pub fn all(
    exp_dir: &Path,
    records: &[Record],
    s: &Summary,
    baseline: Option<&str>,
) -> Result<Vec<PathBuf>> {
    register_font();
    let dir = exp_dir.join("plots");
    std::fs::create_dir_all(&dir)?;
    let order: Vec<String> = s.iter().map(|x| x.name.clone()).collect();
    let mut out = Vec::new();
    let px = [0usize, 1, 2, 3, 4, 5];
    let sp = [6usize, 7, 8];
    for ext in ["png", "svg"] {
        let p = dir.join(format!("pixel_metrics.{ext}"));
        bars::save_bars(
            &p,
            s,
            &px,
            "Pixel-level metrics (mean over categories; whiskers: std over seeds)",
            None,
        )?;
        out.push(p);
        let p = dir.join(format!("image_metrics.{ext}"));
        bars::save_bars(
            &p,
            s,
            &sp,
            "Image-level metrics (mean over categories; whiskers: std over seeds)",
            None,
        )?;
        out.push(p);
    }
    let b = baseline
        .and_then(|b| order.iter().position(|v| v == b))
        .unwrap_or(0);
    if s.len() > 1 {
        let p = dir.join("deltas.png");
        let all: Vec<usize> = (0..METRICS.len()).collect();
        bars::save_bars(
            &p,
            s,
            &all,
            &format!("Difference to the baseline `{}`", order[b]),
            Some(b),
        )?;
        out.push(p);
    }
    let p = dir.join("per_category_ap_px.png");
    heat::heat(&p, records, &order, "ap_px")?;
    out.push(p);
    for (key, name, xl, yl) in [
        ("roc_px", "roc", "false positive rate", "true positive rate"),
        ("pr_px", "pr", "recall", "precision"),
        ("pro_px", "pro", "false positive rate", "per-region overlap"),
    ] {
        let p = dir.join(format!("curves_{name}.png"));
        let title = format!("Pixel {} curve (mean over categories)", name.to_uppercase());
        if curves::curves_plot(
            &p,
            exp_dir,
            records,
            &order,
            &curves::CurveSpec {
                key,
                title: &title,
                xl,
                yl,
            },
        )? {
            out.push(p);
        }
    }
    let p = dir.join("qualitative.png");
    if qualitative::qualitative(&p, exp_dir, records, &order)? {
        out.push(p);
    }
    Ok(out)
}

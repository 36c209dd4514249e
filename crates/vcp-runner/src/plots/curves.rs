//! Mean pixel ROC / PR / PRO curves per variant (from each run's `curves.json`).

use super::{first_of, pe, rgb_buffer, save_png, COLORS};
use crate::record::Record;
use anyhow::Result;
use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;

/// Mean over categories of a curve, on a grid of x in [0, 1].
fn mean_curve(curves: &Value, key: &str) -> Option<Vec<(f64, f64)>> {
    let grid: Vec<f64> = (0..=100).map(|i| i as f64 / 100.0).collect();
    let mut acc = vec![0f64; grid.len()];
    let mut n = 0;
    for (_, c) in curves.as_object()? {
        let pts: Vec<(f64, f64)> = c[key]
            .as_array()?
            .iter()
            .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
            .collect();
        if pts.len() < 2 {
            continue;
        }
        for (g, a) in grid.iter().zip(acc.iter_mut()) {
            let k = pts.partition_point(|p| p.0 < *g).min(pts.len() - 1);
            let y = if k == 0 {
                pts[0].1
            } else {
                let (a0, b0) = (pts[k - 1], pts[k]);
                if b0.0 > a0.0 {
                    a0.1 + (b0.1 - a0.1) * (g - a0.0) / (b0.0 - a0.0)
                } else {
                    b0.1
                }
            };
            *a += y;
        }
        n += 1;
    }
    (n > 0).then(|| {
        grid.iter()
            .zip(&acc)
            .map(|(&x, &a)| (x, a / n as f64))
            .collect()
    })
}

/// Which curve of `curves.json` and its labels.
pub(super) struct CurveSpec<'a> {
    pub key: &'a str,
    pub title: &'a str,
    pub xl: &'a str,
    pub yl: &'a str,
}

pub(super) fn curves_plot(
    path: &Path,
    exp_dir: &Path,
    records: &[Record],
    order: &[String],
    spec: &CurveSpec,
) -> Result<bool> {
    let CurveSpec { key, title, xl, yl } = *spec;
    let mut series = Vec::new();
    for v in order {
        let Some(r) = first_of(records, v) else {
            continue;
        };
        let dir = r.run_dir(exp_dir);
        let Ok(text) = vcp_data::io::read_regular_string(&dir.join("curves.json"), 256 << 20)
        else {
            continue;
        };
        let cv: Value = serde_json::from_str(&text)?;
        if let Some(c) = mean_curve(&cv, key) {
            series.push((v.clone(), c));
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    let size: (u32, u32) = (640, 520);
    let mut buf = rgb_buffer(size);
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)
            .map_err(pe)?;
        chart
            .configure_mesh()
            .x_desc(xl)
            .y_desc(yl)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(pe)?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().cloned(), c.stroke_width(2)))
                .map_err(pe)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(if key == "pr_px" {
                SeriesLabelPosition::UpperRight
            } else {
                SeriesLabelPosition::LowerRight
            })
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(pe)?;
        root.present().map_err(pe)?;
    }
    save_png(path, size, buf)?;
    Ok(true)
}

//! Grouped metric bars with seed-std whiskers (and the deltas to a baseline).

use super::{pe, rgb_buffer, save_png, COLORS};
use crate::summary::{Summary, METRICS};
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

// Long because it is one plotters builder chain (axes, bars, whiskers, labels, legend).
/// Grouped bars: groups = metrics, bars = variants; whiskers = seed std.
fn bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    s: &Summary,
    metrics: &[usize],
    title: &str,
    deltas: Option<usize>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(pe)?;
    let nv = s.len().max(1);
    let val = |v: usize, m: usize| -> Option<(f64, f64)> {
        let x = s[v].stats[m]?;
        match deltas {
            Some(b) => s[b].stats[m].map(|y| ((x.0 - y.0) * 100.0, x.1 * 100.0)),
            None => Some((x.0 * 100.0, x.1 * 100.0)),
        }
    };
    let (lo, hi) = match deltas {
        None => (0.0, 105.0),
        Some(_) => {
            let mut m = 1.0f64;
            for v in 0..s.len() {
                for &j in metrics {
                    if let Some((d, sd)) = val(v, j) {
                        m = m.max(d.abs() + sd);
                    }
                }
            }
            (-m * 1.15, m * 1.15)
        }
    };
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..metrics.len() as f64, lo..hi)
        .map_err(pe)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(if deltas.is_some() {
            "difference to baseline (x100)"
        } else {
            "value (x100)"
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(pe)?;
    let w = 0.8 / nv as f64;
    for v in 0..s.len() {
        let c = COLORS[v % COLORS.len()];
        let rects: Vec<_> = metrics
            .iter()
            .enumerate()
            .filter_map(|(g, &j)| val(v, j).map(|(y, _)| (g, y)))
            .map(|(g, y)| {
                let x0 = g as f64 + 0.1 + v as f64 * w;
                Rectangle::new([(x0, 0.0f64.max(lo)), (x0 + w * 0.9, y)], c.filled())
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(pe)?
            .label(s[v].name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        let whiskers: Vec<_> = metrics
            .iter()
            .enumerate()
            .filter_map(|(g, &j)| val(v, j).map(|(y, sd)| (g, y, sd)))
            .filter(|(_, _, sd)| *sd > 0.0)
            .map(|(g, y, sd)| {
                let xc = g as f64 + 0.1 + v as f64 * w + w * 0.45;
                PathElement::new(vec![(xc, y - sd), (xc, y + sd)], BLACK.stroke_width(2))
            })
            .collect();
        chart.draw_series(whiskers).map_err(pe)?;
    }
    if deltas.is_some() {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 0.0), (metrics.len() as f64, 0.0)],
                BLACK,
            )))
            .map_err(pe)?;
    }
    for (g, &j) in metrics.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(g as f64 + 0.5, lo));
        root.draw(&Text::new(
            METRICS[j].to_string(),
            (px, py + 8),
            ("sans-serif", 15)
                .into_font()
                .into_text_style(root)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(pe)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(pe)?;
    Ok(())
}

pub(super) fn save_bars(
    path: &Path,
    s: &Summary,
    metrics: &[usize],
    title: &str,
    deltas: Option<usize>,
) -> Result<()> {
    let size = (1000u32, 520u32);
    if path.extension().and_then(|e| e.to_str()) == Some("svg") {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
            bars(&root, s, metrics, title, deltas)?;
            root.present().map_err(pe)?;
        }
        vcp_data::io::write_atomic(path, svg.as_bytes())?;
    } else {
        let mut buf = rgb_buffer(size);
        {
            let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
            bars(&root, s, metrics, title, deltas)?;
            root.present().map_err(pe)?;
        }
        save_png(path, size, buf)?;
    }
    Ok(())
}

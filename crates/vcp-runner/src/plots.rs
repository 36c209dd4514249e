//! Plots for the report (plotters, PNG and SVG; text in the embedded DejaVu Sans, so no system
//! fonts are needed): metric bars with seed std, deltas against the baseline variant, a
//! per-category heat table, mean ROC / PR / PRO curves per variant, and a qualitative grid.

use crate::record::Record;
use crate::summary::{Summary, METRICS};
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;
use std::path::{Path, PathBuf};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const COLORS: [RGBColor; 10] = [
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

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Jet colour map of v in [0, 1].
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let f = |x: f32| ((1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0) * 255.0) as u8;
    [f(3.0), f(2.0), f(1.0)]
}

fn pe<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// An RGB buffer for plotters' `BitMapBackend::with_buffer`.
fn rgb_buffer((w, h): (u32, u32)) -> Vec<u8> {
    vec![0u8; w as usize * h as usize * 3]
}

/// Encode an RGB buffer as PNG (with `image`, the one image crate of the build) and write it
/// atomically.
fn save_png(path: &Path, (w, h): (u32, u32), buf: Vec<u8>) -> Result<()> {
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("plot buffer size"))?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    vcp_data::io::write_atomic(path, &bytes)?;
    Ok(())
}

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

fn save_bars(
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

/// The first record (seed order of the folder listing) of variant `v`.
fn first_of<'a>(records: &'a [Record], v: &str) -> Option<&'a Record> {
    records.iter().find(|r| r.variant == v)
}

/// Variants x categories, coloured and labelled with one metric (first seed of each variant).
fn heat(path: &Path, records: &[Record], order: &[String], metric: &str) -> Result<()> {
    let mut cats: Vec<String> = Vec::new();
    let rows: Vec<(String, &Record)> = order
        .iter()
        .filter_map(|v| first_of(records, v).map(|r| (v.clone(), r)))
        .collect();
    for (_, r) in &rows {
        {
            for k in r.metrics.categories.keys() {
                if !cats.contains(k) {
                    cats.push(k.clone());
                }
            }
        }
    }
    // Colours span the table's own range (small values such as pixel AP stay distinguishable).
    let vals: Vec<f64> = rows
        .iter()
        .flat_map(|(_, r)| cats.iter().filter_map(|c| r.category_metric(c, metric)))
        .collect();
    let (vlo, vhi) = vals
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (cw, ch, lw, th) = (90i32, 34i32, 230i32, 70i32);
    let size = (
        (lw + cw * cats.len() as i32 + 20) as u32,
        (th + ch * rows.len() as i32 + 20) as u32,
    );
    let mut buf = rgb_buffer(size);
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        let font = |s: u32| ("sans-serif", s).into_font();
        root.draw(&Text::new(
            format!("{metric} per category (x100)"),
            (10, 10),
            font(20),
        ))
        .map_err(pe)?;
        for (j, c) in cats.iter().enumerate() {
            let st = font(14)
                .into_text_style(&root)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            root.draw(&Text::new(
                c.clone(),
                (lw + cw * j as i32 + cw / 2, th - 6),
                st,
            ))
            .map_err(pe)?;
        }
        for (i, (name, r)) in rows.iter().enumerate() {
            let y = th + ch * i as i32;
            let st = font(14)
                .into_text_style(&root)
                .pos(Pos::new(HPos::Right, VPos::Center));
            root.draw(&Text::new(name.clone(), (lw - 8, y + ch / 2), st))
                .map_err(pe)?;
            for (j, c) in cats.iter().enumerate() {
                let x = lw + cw * j as i32;
                let v = r.category_metric(c, metric);
                let t = |v: f64| {
                    if vhi > vlo {
                        ((v - vlo) / (vhi - vlo)) as f32
                    } else {
                        0.5
                    }
                };
                let col = v
                    .map(|v| jet(t(v)))
                    .map(|c| RGBColor(c[0], c[1], c[2]).mix(0.55))
                    .unwrap_or(WHITE.mix(1.0));
                root.draw(&Rectangle::new(
                    [(x, y), (x + cw - 2, y + ch - 2)],
                    col.filled(),
                ))
                .map_err(pe)?;
                let st = font(14)
                    .into_text_style(&root)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                let txt = v
                    .map(|v| format!("{:.1}", v * 100.0))
                    .unwrap_or_else(|| "n/a".into());
                root.draw(&Text::new(txt, (x + cw / 2, y + ch / 2), st))
                    .map_err(pe)?;
            }
        }
        root.present().map_err(pe)?;
    }
    save_png(path, size, buf)?;
    Ok(())
}

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
struct CurveSpec<'a> {
    key: &'a str,
    title: &'a str,
    xl: &'a str,
    yl: &'a str,
}

fn curves_plot(
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

/// Rows: the same test images; columns: input, then each variant's heat-map overlay.
fn qualitative(path: &Path, exp_dir: &Path, records: &[Record], order: &[String]) -> Result<bool> {
    let firsts: Vec<(&String, &Record)> = order
        .iter()
        .filter_map(|v| first_of(records, v).map(|r| (v, r)))
        .collect();
    let Some((_, r0)) = firsts.first() else {
        return Ok(false);
    };
    let items: Vec<String> = r0
        .qualitative
        .iter()
        .map(|q| q.img_path.clone())
        .take(6)
        .collect();
    if items.is_empty() {
        return Ok(false);
    }
    let tile = 128u32;
    // The overlay columns outline the ground truth in green.
    let (head, left) = (40u32, 0u32);
    let (w, h) = (
        left + tile * (1 + firsts.len() as u32),
        head + tile * items.len() as u32,
    );
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let mut blit = |img: &image::RgbImage, x0: u32, y0: u32, half: u32| {
        let sz = img.height();
        let crop = image::imageops::crop_imm(img, half * sz, 0, sz, sz).to_image();
        let small =
            image::imageops::resize(&crop, tile, tile, image::imageops::FilterType::Triangle);
        for (x, y, p) in small.enumerate_pixels() {
            let i = (((y0 + y) * w + x0 + x) * 3) as usize;
            buf[i..i + 3].copy_from_slice(&p.0);
        }
    };
    for (row, item) in items.iter().enumerate() {
        let y0 = head + row as u32 * tile;
        for (col, (_, r)) in firsts.iter().enumerate() {
            let file = r.qualitative.iter().find(|q| &q.img_path == item);
            if let Some(q) = file {
                if let Ok(img) = image::open(r.run_dir(exp_dir).join(&q.file)) {
                    let img = img.to_rgb8();
                    if col == 0 {
                        blit(&img, left, y0, 0);
                    }
                    blit(&img, left + tile * (1 + col as u32), y0, 1);
                }
            }
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let st = |s: u32| {
            ("sans-serif", s)
                .into_font()
                .into_text_style(&root)
                .pos(Pos::new(HPos::Center, VPos::Center))
        };
        root.draw(&Text::new(
            "input".to_string(),
            ((left + tile / 2) as i32, (head / 2) as i32),
            st(11),
        ))
        .map_err(pe)?;
        for (col, (v, _)) in firsts.iter().enumerate() {
            root.draw(&Text::new(
                v.to_string(),
                (
                    (left + tile * (1 + col as u32) + tile / 2) as i32,
                    (head / 2) as i32,
                ),
                st(13),
            ))
            .map_err(pe)?;
        }
        root.present().map_err(pe)?;
    }
    let img =
        image::RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("qualitative grid buffer"))?;
    save_png(path, (w, h), img.into_raw())?;
    Ok(true)
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
        save_bars(
            &p,
            s,
            &px,
            "Pixel-level metrics (mean over categories; whiskers: std over seeds)",
            None,
        )?;
        out.push(p);
        let p = dir.join(format!("image_metrics.{ext}"));
        save_bars(
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
        save_bars(
            &p,
            s,
            &all,
            &format!("Difference to the baseline `{}`", order[b]),
            Some(b),
        )?;
        out.push(p);
    }
    let p = dir.join("per_category_ap_px.png");
    heat(&p, records, &order, "ap_px")?;
    out.push(p);
    for (key, name, xl, yl) in [
        ("roc_px", "roc", "false positive rate", "true positive rate"),
        ("pr_px", "pr", "recall", "precision"),
        ("pro_px", "pro", "false positive rate", "per-region overlap"),
    ] {
        let p = dir.join(format!("curves_{name}.png"));
        let title = format!("Pixel {} curve (mean over categories)", name.to_uppercase());
        if curves_plot(
            &p,
            exp_dir,
            records,
            &order,
            &CurveSpec {
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
    if qualitative(&p, exp_dir, records, &order)? {
        out.push(p);
    }
    Ok(out)
}

/// A line chart of named series `(x, y)` (e.g. a training curve), PNG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    register_font();
    let pts = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        anyhow::bail!("{}: nothing to plot", path.display());
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let size: (u32, u32) = (900, 460);
    let mut buf = rgb_buffer(size);
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
            .map_err(pe)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(pe)?;
        for (i, (name, s)) in series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(s.iter().copied(), c.stroke_width(2)))
                .map_err(pe)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(pe)?;
        root.present().map_err(pe)?;
    }
    save_png(path, size, buf)?;
    Ok(())
}

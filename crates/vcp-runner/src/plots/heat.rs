//! Variants x categories, one metric per cell.

use super::{first_of, pe, rgb_buffer, save_png};
use crate::record::Record;
use crate::visual::jet;
use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

// Long because it is one plotters drawing sequence (cells, values, row and column labels, colour
// bar).
/// Variants x categories, coloured and labelled with one metric (first seed of each variant).
pub(super) fn heat(path: &Path, records: &[Record], order: &[String], metric: &str) -> Result<()> {
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

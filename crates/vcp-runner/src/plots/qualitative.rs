//! The qualitative grid: the same test images, one column per variant's heat-map overlay.

use super::{first_of, pe, save_png};
use crate::record::Record;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

// Long because it is one plotters drawing sequence (tiles, column titles, row labels).
/// Rows: the same test images; columns: input, then each variant's heat-map overlay.
pub(super) fn qualitative(
    path: &Path,
    exp_dir: &Path,
    records: &[Record],
    order: &[String],
) -> Result<bool> {
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

//! Anomaly maps as pictures: the jet colour map and the one overlay writer, used by the runs'
//! qualitative tiles (`vcp ablate`) and by `vcp predict`.

use anyhow::Result;
use std::path::Path;

/// Jet colour map of v in [0, 1].
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let f = |x: f32| ((1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0) * 255.0) as u8;
    [f(3.0), f(2.0), f(1.0)]
}

/// One S x S panel of an overlay row.
#[derive(Debug, Clone, Copy)]
pub enum Panel<'a> {
    /// The input image.
    Image,
    /// The image blended half and half with the map in jet colours (the map min-max normalised
    /// over the image); `outline` draws a ground-truth mask's border in green.
    Heat { outline: Option<&'a [bool]> },
    /// White where the map is above the threshold, black elsewhere.
    Threshold(f32),
}

/// `panels` side by side for one image: `rgb` is `[S, S, 3]` bytes, `map` `[S, S]`.
pub fn overlay(rgb: &[u8], map: &[f32], size: usize, panels: &[Panel]) -> image::RgbImage {
    let (lo, hi) = map
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let mut img = image::RgbImage::new((panels.len() * size) as u32, size as u32);
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let px = [rgb[i * 3], rgb[i * 3 + 1], rgb[i * 3 + 2]];
            for (p, panel) in panels.iter().enumerate() {
                let o = match *panel {
                    Panel::Image => px,
                    Panel::Heat { outline } => {
                        if outline.is_some_and(|m| on_edge(m, size, y, x)) {
                            [0, 255, 0]
                        } else {
                            let n = if hi > lo {
                                (map[i] - lo) / (hi - lo)
                            } else {
                                0.0
                            };
                            let c = jet(n);
                            [0, 1, 2].map(|k| ((px[k] as u16 + c[k] as u16) / 2) as u8)
                        }
                    }
                    Panel::Threshold(t) => [if map[i] > t { 255 } else { 0 }; 3],
                };
                img.put_pixel((p * size + x) as u32, y as u32, image::Rgb(o));
            }
        }
    }
    img
}

/// A mask pixel with a 4-neighbour outside the mask (or the image).
fn on_edge(mask: &[bool], size: usize, y: usize, x: usize) -> bool {
    mask[y * size + x]
        && [(0i64, 1i64), (1, 0), (0, -1), (-1, 0)]
            .iter()
            .any(|(dy, dx)| {
                let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                yy < 0
                    || xx < 0
                    || yy >= size as i64
                    || xx >= size as i64
                    || !mask[yy as usize * size + xx as usize]
            })
}

/// Write `img` as PNG, atomically; with `max_height`, a taller image is first scaled down
/// (keeping the aspect ratio) so that tiles committed with the records stay small.
pub fn write_png(path: &Path, img: &image::RgbImage, max_height: Option<u32>) -> Result<()> {
    let (w, h) = img.dimensions();
    let scaled;
    let img = match max_height {
        Some(m) if h > m => {
            scaled =
                image::imageops::resize(img, w * m / h, m, image::imageops::FilterType::Triangle);
            &scaled
        }
        _ => img,
    };
    let (w, h) = img.dimensions();
    let png = vcp_data::io::encode_png(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)?;
    vcp_data::io::write_atomic(path, &png)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_by_hand() {
        // f(x) = clamp(1.5 - |4v - x|, 0, 1) * 255, truncated; channels x = 3, 2, 1.
        assert_eq!(jet(0.0), [0, 0, 127]);
        assert_eq!(jet(0.5), [127, 255, 127]);
        assert_eq!(jet(1.0), [127, 0, 0]);
        assert_eq!(jet(-3.0), jet(0.0));
    }

    #[test]
    fn panels_by_hand() {
        // 2 x 2 grey image; map 0, 1 on the first row, 0.25, 0.75 on the second.
        let rgb = vec![100u8; 12];
        let map = [0.0f32, 1.0, 0.25, 0.75];
        let mask = [true, false, false, false];
        let img = overlay(
            &rgb,
            &map,
            2,
            &[
                Panel::Image,
                Panel::Heat {
                    outline: Some(&mask),
                },
                Panel::Threshold(0.5),
            ],
        );
        assert_eq!(img.dimensions(), (6, 2));
        let at = |x: u32, y: u32| img.get_pixel(x, y).0;
        assert_eq!(at(0, 0), [100, 100, 100]);
        // The one mask pixel borders the outside: green.
        assert_eq!(at(2, 0), [0, 255, 0]);
        // Map 1 (the maximum) -> jet [127, 0, 0], blended half and half with 100.
        assert_eq!(at(3, 0), [113, 50, 50]);
        // Map 0.25 -> jet(0.25) = [0, 127, 255] -> [50, 113, 177].
        assert_eq!(at(2, 1), [50, 113, 177]);
        assert_eq!(at(4, 0), [0, 0, 0]);
        assert_eq!(at(5, 0), [255, 255, 255]);
        assert_eq!(at(5, 1), [255, 255, 255]);
        assert_eq!(at(4, 1), [0, 0, 0]);
    }
}

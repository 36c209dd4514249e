//! Separable antialiased resampling, written to reproduce two references exactly:
//!
//! * PyTorch `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` on float data
//!   (used once at load time to resize the positional embedding; VCP-CLIP `resize_pos_embed`);
//! * Pillow's `Image.resize(..., BICUBIC | BILINEAR)` on 8-bit images, including its 22-bit fixed
//!   point coefficients and the uint8 rounding between the horizontal and vertical passes
//!   (torchvision's `Resize` on PIL images calls it; see Pillow `src/libImaging/Resample.c`).
//!
//! Both use the same weights: for output index `i`, centre `c = (i + 0.5) * in/out`, support
//! `s = filter_support * max(in/out, 1)`, taps `j` in `[trunc(c - s + 0.5), trunc(c + s + 0.5))`
//! clipped to the input, `w_j = filter((j - c + 0.5) / max(in/out, 1))`, normalised to sum 1.

/// Interpolation kernel. Bicubic uses `a = -0.5` (Pillow and PyTorch's antialiased path; the
/// non-antialiased PyTorch bicubic uses -0.75 and would differ by up to ~0.3 on CLIP pos-embeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Taps of one output position: first input index and normalised weights.
#[derive(Debug, Clone)]
pub struct Taps {
    pub start: usize,
    pub weights: Vec<f64>,
}

/// Antialiased resampling weights for a 1-D resize from `in_size` to `out_size`.
pub fn taps(in_size: usize, out_size: usize, filter: Filter) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            // `as i64` truncates toward zero, like the C `(int)` cast in both references.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut weights: Vec<f64> = (xmin..xmax)
                .map(|j| filter.eval((j as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps {
                start: xmin,
                weights,
            }
        })
        .collect()
}

/// Resize planar float data `[C, H, W]` to `[C, out_h, out_w]` (PyTorch antialiased semantics).
pub fn resize_planar_f32(
    data: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
    filter: Filter,
) -> Vec<f32> {
    assert_eq!(
        data.len(),
        channels * h * w,
        "resize_planar_f32: data length"
    );
    let tw = taps(w, out_w, filter);
    let th = taps(h, out_h, filter);
    let mut tmp = vec![0f64; channels * h * out_w];
    for c in 0..channels {
        for y in 0..h {
            let row = &data[(c * h + y) * w..(c * h + y + 1) * w];
            for (x, t) in tw.iter().enumerate() {
                let acc: f64 = t
                    .weights
                    .iter()
                    .enumerate()
                    .map(|(k, wt)| row[t.start + k] as f64 * wt)
                    .sum();
                tmp[(c * h + y) * out_w + x] = acc;
            }
        }
    }
    let mut out = vec![0f32; channels * out_h * out_w];
    for c in 0..channels {
        for (y, t) in th.iter().enumerate() {
            for x in 0..out_w {
                let acc: f64 = t
                    .weights
                    .iter()
                    .enumerate()
                    .map(|(k, wt)| tmp[(c * h + t.start + k) * out_w + x] * wt)
                    .sum();
                out[(c * out_h + y) * out_w + x] = acc as f32;
            }
        }
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's fixed-point coefficients (`normalize_coeffs_8bpc`).
fn fixed_point(t: &[Taps]) -> Vec<(usize, Vec<i32>)> {
    t.iter()
        .map(|t| {
            let k = t
                .weights
                .iter()
                .map(|&w| {
                    let v = w * (1i64 << PRECISION_BITS) as f64;
                    if w < 0.0 {
                        (v - 0.5) as i32
                    } else {
                        (v + 0.5) as i32
                    }
                })
                .collect();
            (t.start, k)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resize an interleaved 8-bit image (`channels` per pixel, row-major `h x w`) exactly like
/// Pillow's `Image.resize((out_w, out_h), filter)`: horizontal pass first, each pass rounded to
/// uint8, and a pass skipped when its dimension does not change.
pub fn resize_u8_pil(
    data: &[u8],
    channels: usize,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
    filter: Filter,
) -> Vec<u8> {
    assert_eq!(data.len(), channels * h * w, "resize_u8_pil: data length");
    let mut cur = data.to_vec();
    let mut cur_w = w;
    if out_w != w {
        let k = fixed_point(&taps(w, out_w, filter));
        let mut out = vec![0u8; channels * h * out_w];
        for y in 0..h {
            for (x, (start, kk)) in k.iter().enumerate() {
                for c in 0..channels {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (j, &kv) in kk.iter().enumerate() {
                        ss += cur[(y * w + start + j) * channels + c] as i64 * kv as i64;
                    }
                    out[(y * out_w + x) * channels + c] = clip8(ss);
                }
            }
        }
        cur = out;
        cur_w = out_w;
    }
    if out_h != h {
        let k = fixed_point(&taps(h, out_h, filter));
        let mut out = vec![0u8; channels * out_h * cur_w];
        for (y, (start, kk)) in k.iter().enumerate() {
            for x in 0..cur_w {
                for c in 0..channels {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (j, &kv) in kk.iter().enumerate() {
                        ss += cur[((start + j) * cur_w + x) * channels + c] as i64 * kv as i64;
                    }
                    out[(y * cur_w + x) * channels + c] = clip8(ss);
                }
            }
        }
        cur = out;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_identity_is_exact() {
        for (i, o) in [(7, 10), (24, 37), (37, 24), (5, 5)] {
            for t in taps(i, o, Filter::Bicubic) {
                let s: f64 = t.weights.iter().sum();
                assert!((s - 1.0).abs() < 1e-12);
            }
        }
        let data: Vec<f32> = (0..25).map(|x| x as f32).collect();
        assert_eq!(
            resize_planar_f32(&data, 1, (5, 5), (5, 5), Filter::Bicubic),
            data
        );
        let img: Vec<u8> = (0..75).map(|x| (x * 3) as u8).collect();
        assert_eq!(resize_u8_pil(&img, 3, (5, 5), (5, 5), Filter::Bicubic), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = vec![200u8; 3 * 13 * 17];
        let out = resize_u8_pil(&img, 3, (13, 17), (31, 8), Filter::Bicubic);
        assert!(out.iter().all(|&v| v == 200));
        let f = vec![0.25f32; 2 * 7 * 7];
        let out = resize_planar_f32(&f, 2, (7, 7), (10, 10), Filter::Bicubic);
        assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-6));
    }
}

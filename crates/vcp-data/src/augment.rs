//! Training augmentation as in the reference (`utils/dataset.py`, albumentations):
//! `Rotate(limit=30, p=.5)`, `RandomRotate90(p=.5)`, `RandomBrightnessContrast(p=.5)`,
//! `GaussNoise(p=.5)`, `OneOf([Blur(3), ColorJitter, GaussianBlur], p=.5)`; geometric transforms
//! move the mask too (nearest), photometric ones leave it. Plus the optional 2x2 mosaic of four
//! anomalous images of one category ([`mosaic`]). Deterministic for a seed.
//!
//! Our own implementations of those transforms, with albumentations' default parameters; they
//! are not bit-identical to OpenCV (interpolation rounding), which augmentation does not need.

use crate::dataset::{normalize_rgb, Sample};
use crate::synth::Rng;

#[derive(Debug, Clone, Copy)]
pub struct AugmentConfig {
    /// Probability of each transform (reference 0.5).
    pub p: f32,
    /// Maximal rotation in degrees (reference 30).
    pub rotate_limit: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            p: 0.5,
            rotate_limit: 30.0,
        }
    }
}

/// Reflect-101 index (OpenCV `BORDER_REFLECT_101`: `gfedcb|abcdefgh|gfedcba`).
fn reflect101(i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    let p = 2 * (n - 1);
    let m = i.rem_euclid(p);
    (if m >= n { p - m } else { m }) as usize
}

fn rotate(rgb: &[u8], mask: &[f32], s: usize, deg: f32) -> (Vec<u8>, Vec<f32>) {
    let (sin, cos) = deg.to_radians().sin_cos();
    let c = (s as f32 - 1.0) / 2.0;
    let mut out = vec![0u8; rgb.len()];
    let mut m = vec![0f32; mask.len()];
    for y in 0..s {
        for x in 0..s {
            // Inverse map: output pixel -> source position.
            let (dx, dy) = (x as f32 - c, y as f32 - c);
            let (sx, sy) = (cos * dx + sin * dy + c, -sin * dx + cos * dy + c);
            let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            for ch in 0..3 {
                let px = |xx: i64, yy: i64| {
                    rgb[(reflect101(yy, s as i64) * s + reflect101(xx, s as i64)) * 3 + ch] as f32
                };
                let v = px(x0, y0) * (1.0 - fx) * (1.0 - fy)
                    + px(x0 + 1, y0) * fx * (1.0 - fy)
                    + px(x0, y0 + 1) * (1.0 - fx) * fy
                    + px(x0 + 1, y0 + 1) * fx * fy;
                out[(y * s + x) * 3 + ch] = v.round().clamp(0.0, 255.0) as u8;
            }
            let (nx, ny) = (sx.round() as i64, sy.round() as i64);
            m[y * s + x] = mask[reflect101(ny, s as i64) * s + reflect101(nx, s as i64)];
        }
    }
    (out, m)
}

fn rot90(rgb: &[u8], mask: &[f32], s: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    let mut out = rgb.to_vec();
    let mut m = mask.to_vec();
    for _ in 0..k % 4 {
        let (src, srcm) = (out.clone(), m.clone());
        for y in 0..s {
            for x in 0..s {
                // counter-clockwise: out[y][x] = src[x][s-1-y]
                let (sy, sx) = (x, s - 1 - y);
                m[y * s + x] = srcm[sy * s + sx];
                out[(y * s + x) * 3..(y * s + x) * 3 + 3]
                    .copy_from_slice(&src[(sy * s + sx) * 3..(sy * s + sx) * 3 + 3]);
            }
        }
    }
    (out, m)
}

fn box_blur(rgb: &[u8], s: usize, k: usize) -> Vec<u8> {
    let r = (k / 2) as i64;
    let mut out = vec![0u8; rgb.len()];
    for y in 0..s as i64 {
        for x in 0..s as i64 {
            for ch in 0..3 {
                let mut acc = 0u32;
                for dy in -r..=r {
                    for dx in -r..=r {
                        acc += rgb[(reflect101(y + dy, s as i64) * s
                            + reflect101(x + dx, s as i64))
                            * 3
                            + ch] as u32;
                    }
                }
                out[(y as usize * s + x as usize) * 3 + ch] =
                    (acc as f32 / ((2 * r + 1) * (2 * r + 1)) as f32).round() as u8;
            }
        }
    }
    out
}

fn gaussian_blur(rgb: &[u8], s: usize, ksize: usize) -> Vec<u8> {
    // OpenCV's sigma for a given kernel size when sigma = 0.
    let sigma = 0.3 * ((ksize as f32 - 1.0) * 0.5 - 1.0) + 0.8;
    let r = (ksize / 2) as i64;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let ks: f32 = k.iter().sum();
    let pass = |src: &[u8], horizontal: bool| -> Vec<u8> {
        let mut out = vec![0u8; src.len()];
        for y in 0..s as i64 {
            for x in 0..s as i64 {
                for ch in 0..3 {
                    let mut acc = 0f32;
                    for (j, w) in k.iter().enumerate() {
                        let o = j as i64 - r;
                        let (xx, yy) = if horizontal { (x + o, y) } else { (x, y + o) };
                        acc += w * src
                            [(reflect101(yy, s as i64) * s + reflect101(xx, s as i64)) * 3 + ch]
                            as f32;
                    }
                    out[(y as usize * s + x as usize) * 3 + ch] =
                        (acc / ks).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        out
    };
    pass(&pass(rgb, true), false)
}

fn color_jitter(rgb: &mut [u8], rng: &mut Rng) {
    // ColorJitter(brightness=.2, contrast=.2, saturation=.2, hue=.2) in albumentations' defaults.
    let b = rng.range(0.8, 1.2);
    let c = rng.range(0.8, 1.2);
    let sat = rng.range(0.8, 1.2);
    let hue = rng.range(-0.2, 0.2);
    let mean: f32 = rgb
        .chunks_exact(3)
        .map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32)
        .sum::<f32>()
        / (rgb.len() / 3) as f32;
    for p in rgb.chunks_exact_mut(3) {
        let mut v = [p[0] as f32 * b, p[1] as f32 * b, p[2] as f32 * b];
        v = v.map(|x| (x - mean) * c + mean);
        let g = 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
        v = v.map(|x| (x - g) * sat + g);
        // Hue: rotate the chroma around the grey axis (YIQ rotation).
        let (yv, i, q) = (
            0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2],
            0.596 * v[0] - 0.274 * v[1] - 0.322 * v[2],
            0.211 * v[0] - 0.523 * v[1] + 0.312 * v[2],
        );
        let (sh, ch) = (hue * std::f32::consts::TAU).sin_cos();
        let (i2, q2) = (i * ch - q * sh, i * sh + q * ch);
        let out = [
            yv + 0.956 * i2 + 0.621 * q2,
            yv - 0.272 * i2 - 0.647 * q2,
            yv - 1.106 * i2 + 1.703 * q2,
        ];
        for k in 0..3 {
            p[k] = out[k].round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Augment the sample's resized RGB and mask in place; recompute its normalised image.
pub fn augment(sample: &mut Sample, size: usize, seed: u64, cfg: &AugmentConfig) {
    let mut rng = Rng::new(seed);
    let mut rgb = std::mem::take(&mut sample.rgb);
    let mut mask = std::mem::take(&mut sample.mask);
    if rng.f() < cfg.p {
        let deg = rng.range(-cfg.rotate_limit, cfg.rotate_limit);
        (rgb, mask) = rotate(&rgb, &mask, size, deg);
    }
    if rng.f() < cfg.p {
        let k = rng.int(4);
        (rgb, mask) = rot90(&rgb, &mask, size, k);
    }
    if rng.f() < cfg.p {
        let alpha = 1.0 + rng.range(-0.2, 0.2);
        let beta = rng.range(-0.2, 0.2) * 255.0;
        rgb.iter_mut()
            .for_each(|v| *v = (*v as f32 * alpha + beta).round().clamp(0.0, 255.0) as u8);
    }
    if rng.f() < cfg.p {
        let sigma = rng.range(10.0, 50.0).sqrt();
        for v in rgb.iter_mut() {
            let (u1, u2) = (rng.f().max(1e-7), rng.f());
            let g = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            *v = (*v as f32 + g * sigma).round().clamp(0.0, 255.0) as u8;
        }
    }
    if rng.f() < cfg.p {
        // OneOf picks one transform, which then applies with its own p (0.5).
        let which = rng.int(3);
        if rng.f() < 0.5 {
            match which {
                0 => rgb = box_blur(&rgb, size, 3),
                1 => color_jitter(&mut rgb, &mut rng),
                _ => rgb = gaussian_blur(&rgb, size, [3, 5, 7][rng.int(3)]),
            }
        }
    }
    sample.image = normalize_rgb(&rgb, size);
    sample.rgb = rgb;
    sample.mask = mask;
}

/// A 2x2 mosaic of four samples (each loaded at half size): the reference's MVTec-only
/// augmentation (four anomalous test images of the same category, probability `aug_rate`).
pub fn mosaic(parts: &[Sample], half: usize, size: usize) -> Sample {
    assert_eq!(parts.len(), 4);
    let mut rgb = vec![0u8; size * size * 3];
    let mut mask = vec![0f32; size * size];
    for (q, p) in parts.iter().enumerate() {
        let (oy, ox) = ((q / 2) * half, (q % 2) * half);
        for y in 0..half.min(size - oy) {
            for x in 0..half.min(size - ox) {
                let (d, s) = ((oy + y) * size + ox + x, y * half + x);
                rgb[d * 3..d * 3 + 3].copy_from_slice(&p.rgb[s * 3..s * 3 + 3]);
                mask[d] = p.mask[s];
            }
        }
    }
    Sample {
        image: normalize_rgb(&rgb, size),
        mask,
        label: 1,
        class: parts[0].class.clone(),
        img_path: format!(
            "mosaic({})",
            parts
                .iter()
                .map(|p| p.img_path.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ),
        rgb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square_sample(s: usize) -> Sample {
        let mut rgb = vec![0u8; s * s * 3];
        let mut mask = vec![0f32; s * s];
        for y in s / 4..s / 2 {
            for x in s / 5..s / 2 + 3 {
                rgb[(y * s + x) * 3..(y * s + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
                mask[y * s + x] = 1.0;
            }
        }
        Sample {
            image: normalize_rgb(&rgb, s),
            mask,
            label: 1,
            class: "c".into(),
            img_path: "x".into(),
            rgb,
        }
    }

    #[test]
    fn deterministic_and_mask_follows_geometry() {
        let s = 40;
        let geo = AugmentConfig {
            p: 1.0,
            rotate_limit: 30.0,
        };
        for seed in 0..20u64 {
            let mut a = square_sample(s);
            let mut b = square_sample(s);
            augment(&mut a, s, seed, &geo);
            augment(&mut b, s, seed, &geo);
            assert_eq!(a.rgb, b.rgb);
            assert_eq!(a.mask, b.mask);
        }
        // Geometry only (photometric steps disabled by running rotate/rot90 directly):
        // the mask stays on the bright square.
        let base = square_sample(s);
        for (deg, k) in [(17.0, 1), (-29.0, 3), (0.0, 2)] {
            let (r, m) = rotate(&base.rgb, &base.mask, s, deg);
            let (r, m) = rot90(&r, &m, s, k);
            let agree = m
                .iter()
                .zip(r.chunks_exact(3))
                .filter(|(mv, px)| (**mv > 0.5) == (px[0] > 127))
                .count();
            assert!(
                agree as f32 / (s * s) as f32 > 0.97,
                "{deg} {k}: only {agree} pixels agree"
            );
            assert!(m.iter().any(|&v| v > 0.5));
        }
    }

    #[test]
    fn mosaic_places_quadrants() {
        let half = 10;
        let parts: Vec<Sample> = (0..4).map(|_| square_sample(half)).collect();
        let m = mosaic(&parts, half, 20);
        assert_eq!(
            m.mask.iter().filter(|&&v| v > 0.5).count(),
            4 * parts[0].mask.iter().filter(|&&v| v > 0.5).count()
        );
    }
}

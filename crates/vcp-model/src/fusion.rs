//! From per-layer logits to the final anomaly map and image score (reference `test.py`,
//! `calcuate_metric`): upsample logits, softmax over {normal, abnormal}, reduce over layers per
//! branch, blend the branches, Gaussian smoothing, normalisation, top-k image score.
//!
//! Upsampling is `vcp_core::ops::upsample` (matmuls, with a backward). Post-processing that
//! needs no gradient is plain Rust.

use crate::config::{FusionConfig, ImageScoreConfig, Normalize, Upsample};
use candle_core::{Result, Tensor};
pub use vcp_core::ops::{interp_matrix, upsample};

/// Softmax over the two state channels of upsampled logits → probabilities `[B, 2, S, S]`.
pub fn probs(logits: &Tensor, size: usize, mode: Upsample) -> Result<Tensor> {
    candle_nn::ops::softmax(&upsample(logits, size, mode)?, 1)
}

/// scipy `gaussian_filter(x, sigma)` on one 2-D map: truncate 4, `reflect` borders (repeated when
/// the kernel is wider than the map), f64 accumulation, f32 between the two passes.
pub fn gaussian_filter(x: &[f32], h: usize, w: usize, sigma: f64) -> Vec<f32> {
    if sigma <= 0.0 {
        return x.to_vec();
    }
    let radius = (4.0 * sigma + 0.5) as i64;
    let mut k: Vec<f64> = (-radius..=radius)
        .map(|i| (-0.5 / (sigma * sigma) * (i * i) as f64).exp())
        .collect();
    let s: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    let reflect = |i: i64, n: i64| -> usize {
        let p = 2 * n;
        let m = i.rem_euclid(p);
        (if m >= n { p - 1 - m } else { m }) as usize
    };
    // One 1-D correlation along an axis; rows' axis first (axis 0), then columns (axis 1), as
    // scipy iterates axes in order, rounding to f32 in between.
    let pass = |src: &[f32], along_rows: bool| -> Vec<f32> {
        let mut out = vec![0f32; h * w];
        for y in 0..h {
            for xx in 0..w {
                let mut acc = 0f64;
                for (j, kv) in k.iter().enumerate() {
                    let o = j as i64 - radius;
                    let i = if along_rows {
                        reflect(y as i64 + o, h as i64) * w + xx
                    } else {
                        y * w + reflect(xx as i64 + o, w as i64)
                    };
                    acc += kv * src[i] as f64;
                }
                out[y * w + xx] = acc as f32;
            }
        }
        out
    };
    pass(&pass(x, true), false)
}

/// Mean of the `k` largest values (all values when there are fewer).
pub fn topk_mean(v: &[f32], k: usize) -> f32 {
    let k = k.clamp(1, v.len());
    let mut s = v.to_vec();
    let idx = s.len() - k;
    s.select_nth_unstable_by(idx, |a, b| a.total_cmp(b));
    (s[idx..].iter().map(|&x| x as f64).sum::<f64>() / k as f64) as f32
}

/// Min-max over all values of all maps together (the reference's `normalize` on a category).
pub fn minmax_all(maps: &mut [Vec<f32>]) {
    let (lo, hi) = maps
        .iter()
        .flatten()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let d = hi - lo;
    for m in maps.iter_mut() {
        for v in m.iter_mut() {
            *v = if d > 0.0 { (*v - lo) / d } else { 0.0 };
        }
    }
}

pub fn minmax_vec(v: &mut [f32]) {
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let d = hi - lo;
    v.iter_mut()
        .for_each(|x| *x = if d > 0.0 { (*x - lo) / d } else { 0.0 });
}

/// Per-image branch maps after the layer reduction (anomaly channel), `S x S`.
#[derive(Debug, Clone)]
pub struct ImageMaps {
    pub raw: Vec<f32>,
    pub refined: Option<Vec<f32>>,
    pub size: usize,
    /// Abnormal-state probability from the class token (for `ImageScoreConfig::ClsText`).
    pub cls_score: f32,
    /// Few-shot memory-bank map and its weight in the final map.
    pub fewshot: Option<(f32, Vec<f32>)>,
}

/// What post-processing produces for a set of images (a category, or one image).
#[derive(Debug, Clone)]
pub struct Finalized {
    pub blend: Vec<Vec<f32>>,
    pub smoothed: Vec<Vec<f32>>,
    /// After the configured normalisation (= `smoothed` when none).
    pub maps: Vec<Vec<f32>>,
    pub scores_unnormalized: Vec<f32>,
    pub scores: Vec<f32>,
}

/// Blend, smooth, normalise and score a set of images (normalisation `per_category` treats the
/// given set as one category).
pub fn finalize(images: &[ImageMaps], cfg: &FusionConfig) -> Finalized {
    let blend: Vec<Vec<f32>> = images
        .iter()
        .map(|im| match &im.refined {
            Some(r) => im
                .raw
                .iter()
                .zip(r)
                .map(|(&a, &b)| {
                    (cfg.raw_weight * a as f64 + (1.0 - cfg.raw_weight) * b as f64) as f32
                })
                .collect(),
            None => im.raw.clone(),
        })
        .zip(images)
        .map(|(zs, im)| match &im.fewshot {
            // (1 - w) zero-shot + w memory bank (WinCLIP+-style blending).
            Some((w, fs)) => zs
                .iter()
                .zip(fs)
                .map(|(&a, &b)| (1.0 - w) * a + w * b)
                .collect(),
            None => zs,
        })
        .collect();
    let smoothed: Vec<Vec<f32>> = {
        use rayon::prelude::*;
        blend
            .par_iter()
            .zip(images.par_iter())
            .map(|(b, im)| gaussian_filter(b, im.size, im.size, cfg.sigma))
            .collect()
    };
    let scores_unnormalized: Vec<f32> = images
        .iter()
        .zip(&smoothed)
        .map(|(im, sm)| match &cfg.image_score {
            ImageScoreConfig::TopkMean { k, fraction } => {
                let k = ImageScoreConfig::topk_pixels(*k, *fraction, im.raw.len());
                topk_mean(&im.raw, k) + im.refined.as_ref().map(|r| topk_mean(r, k)).unwrap_or(0.0)
            }
            ImageScoreConfig::Max => sm.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
            ImageScoreConfig::ClsText => im.cls_score,
        })
        .zip(images)
        .map(|(s, im)| match &im.fewshot {
            // Few-shot image score: the memory-bank map's maximum, blended like the maps.
            Some((w, fs)) => {
                (1.0 - w) * s + w * fs.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
            }
            None => s,
        })
        .collect();
    let mut maps = smoothed.clone();
    let mut scores = scores_unnormalized.clone();
    match cfg.normalize {
        Normalize::None => {}
        Normalize::PerImage => {
            maps.iter_mut().for_each(|m| minmax_vec(m));
        }
        Normalize::PerCategory => {
            minmax_all(&mut maps);
            minmax_vec(&mut scores);
        }
    }
    Finalized {
        blend,
        smoothed,
        maps,
        scores_unnormalized,
        scores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn interp_endpoints_and_rows_sum_to_one() {
        let m = interp_matrix(3, 7, true, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0], vec![1.0, 0.0, 0.0]);
        assert_eq!(m[6], vec![0.0, 0.0, 1.0]);
        assert!((m[3][1] - 1.0).abs() < 1e-6);
        for r in interp_matrix(10, 80, false, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
        {
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn gaussian_preserves_constants_and_topk() {
        let x = vec![0.5f32; 12 * 9];
        assert!(gaussian_filter(&x, 12, 9, 8.0)
            .iter()
            .all(|v| (v - 0.5).abs() < 1e-6));
        assert_eq!(topk_mean(&[1.0, 5.0, 3.0, 4.0], 2), 4.5);
        assert_eq!(topk_mean(&[1.0, 2.0], 10), 1.5);
    }
}

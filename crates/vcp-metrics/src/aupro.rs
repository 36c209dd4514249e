//! AUPRO exactly as the zero-shot segmentation repositories compute it (`cal_pro_score` from
//! cflow-ad, used unchanged by APRIL-GAN, AnomalyCLIP and VCP-CLIP `utils/tools.py`):
//!
//! 1. thresholds `np.arange(min, max, (max - min) / 200)` over all maps of the category (float64
//!    arange of float32 bounds: `D = f64(f32(max - min)) / 200`, `len = ceil((max - min) / D)`,
//!    `t_i = min + i * ((min + D) - min)`; checked against numpy on 5000 random ranges);
//! 2. at each threshold, binarise `map > t`; PRO = mean over all 8-connected ground-truth regions
//!    of all images of the fraction of the region predicted; FPR = predicted normal pixels / all
//!    normal pixels;
//! 3. keep points with FPR < 0.3, min-max rescale those FPRs, trapezoid area (sklearn `auc`).
//!
//! Instead of 200 passes over the maps, every pixel is binned once by how many thresholds it
//! exceeds (binary search), per image in parallel; counts above each threshold are suffix sums.

/// The reference's thresholds, or `None` when the maps are constant (numpy raises there).
pub fn cflow_thresholds(min: f32, max: f32) -> Option<Vec<f64>> {
    let d = ((max - min) as f64) / 200.0;
    if d.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let (lo, hi) = (min as f64, max as f64);
    let len = ((hi - lo) / d).ceil() as usize;
    let step = (lo + d) - lo;
    Some(
        (0..len)
            .map(|i| if i == 0 { lo } else { lo + i as f64 * step })
            .collect(),
    )
}

/// Number of thresholds strictly below `v`, i.e. for how many thresholds `v > t` holds.
#[inline]
pub fn bin(v: f32, thresholds: &[f64]) -> usize {
    let v = v as f64;
    thresholds.partition_point(|&t| v > t)
}

/// Per-threshold counts for one image: how many normal pixels exceed each threshold, and for each
/// region how many of its pixels do. Histograms over `bin`; index `k` counts pixels above exactly
/// the first `k` thresholds.
pub struct Histograms {
    pub normal: Vec<u64>,
    pub regions: Vec<Vec<u64>>,
}

impl Histograms {
    pub fn new(n_thr: usize, n_regions: usize) -> Self {
        Self {
            normal: vec![0; n_thr + 1],
            regions: vec![vec![0; n_thr + 1]; n_regions],
        }
    }
}

/// Finish the cflow AUPRO from histograms merged over the category.
/// `region_sizes` in the order regions were pooled (image order, then label order).
pub fn cflow_aupro(
    normal: &[u64],
    regions: &[Vec<u64>],
    region_sizes: &[u64],
    n_thr: usize,
) -> Option<f64> {
    let total_normal: u64 = normal.iter().sum();
    if regions.is_empty() || total_normal == 0 {
        return None;
    }
    // above[i] = pixels exceeding threshold i = sum of hist[k] for k > i.
    let suffix = |h: &[u64]| -> Vec<u64> {
        let mut out = vec![0u64; n_thr];
        let mut acc = 0u64;
        for i in (0..n_thr).rev() {
            acc += h[i + 1];
            out[i] = acc;
        }
        out
    };
    let fp = suffix(normal);
    let tp: Vec<Vec<u64>> = regions.iter().map(|h| suffix(h)).collect();
    let mut fprs = Vec::new();
    let mut pros = Vec::new();
    for i in 0..n_thr {
        let fpr = fp[i] as f64 / total_normal as f64;
        if fpr < 0.3 {
            let pro: f64 = tp
                .iter()
                .zip(region_sizes)
                .map(|(t, &s)| t[i] as f64 / s as f64)
                .sum::<f64>()
                / regions.len() as f64;
            fprs.push(fpr);
            pros.push(pro);
        }
    }
    if fprs.len() < 2 {
        return None;
    }
    let (lo, hi) = fprs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    if hi <= lo {
        return None;
    }
    let x: Vec<f64> = fprs.iter().map(|f| (f - lo) / (hi - lo)).collect();
    // sklearn `auc`: direction from monotonicity (FPR falls as the threshold rises), trapezoid.
    let dx: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).collect();
    let direction = if dx.iter().all(|&d| d <= 0.0) {
        -1.0
    } else if dx.iter().all(|&d| d >= 0.0) {
        1.0
    } else {
        return None;
    };
    let area: f64 = x
        .windows(2)
        .zip(pros.windows(2))
        .map(|(xw, yw)| (xw[1] - xw[0]) * (yw[0] + yw[1]) / 2.0)
        .sum();
    Some(direction * area)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_like_numpy() {
        // np.arange(np.float32(0), np.float32(1), np.float32(1)/200) has 200 entries.
        let t = cflow_thresholds(0.0, 1.0).unwrap();
        assert_eq!(t.len(), 200);
        assert_eq!(t[0], 0.0);
        assert!(cflow_thresholds(0.5, 0.5).is_none());
        assert_eq!(bin(0.0, &t), 0); // 0 > 0 is false
        assert_eq!(bin(1.0, &t), 200);
    }
}

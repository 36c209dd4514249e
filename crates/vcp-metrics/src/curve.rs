//! Threshold-sweep metrics from one descending pass over sorted scores: AUROC, AP, F1-max (with
//! its threshold), IoU at that threshold, and the exact PRO curve integrated to FPR 0.3.
//!
//! Definitions follow scikit-learn exactly (`roc_auc_score`: trapezoid over the ROC points at
//! every distinct score; `average_precision_score`: `sum (R_n - R_{n-1}) P_n`;
//! `precision_recall_curve` for F1 with `F1 = 2PR / (P + R + 1e-8)`, ties resolved like
//! `np.argmax` over the reversed arrays, i.e. the lowest such threshold). IoU follows VCP-CLIP's
//! `cal_iou`: prediction `score > threshold`.

/// One scored element: score and payload (0 = negative; >0 = positive, with the payload naming
/// its ground-truth region for the PRO curve, or just 1 for image-level labels).
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    pub score: f32,
    pub payload: u32,
}

/// What one pass yields. `None` when the metric is undefined (a class is absent).
#[derive(Debug, Clone, Default)]
pub struct SweepResult {
    pub auroc: Option<f64>,
    pub ap: Option<f64>,
    pub f1_max: Option<f64>,
    pub f1_threshold: Option<f64>,
    pub iou: Option<f64>,
    /// MVTec-official AUPRO: exact PRO curve, integrated to FPR 0.3 (interpolated), / 0.3.
    pub aupro30: Option<f64>,
    /// A down-sampled ROC curve (fpr, tpr) and PR curve (recall, precision) for plots.
    pub roc: Vec<(f64, f64)>,
    pub pr: Vec<(f64, f64)>,
    /// Down-sampled exact PRO curve (fpr, pro), for plots.
    pub pro: Vec<(f64, f64)>,
}

/// Sort descending by score (stable radix sort on the float key).
pub fn sort_desc(items: &mut [Scored]) {
    radsort::sort_by_key(items, |s| s.score);
    items.reverse();
}

// Long because ROC, PR and PRO are accumulated in one pass over the sorted scores (tie groups
// handled once for all three).
/// Sweep over `items` sorted by descending score. `region_weight[payload]` is `1 / region size`
/// for the PRO curve (index 0 unused); pass an empty slice to skip PRO.
pub fn sweep(items: &[Scored], region_weight: &[f64], n_regions: usize) -> SweepResult {
    let p = items.iter().filter(|s| s.payload != 0).count() as u64;
    let n = items.len() as u64 - p;
    let mut r = SweepResult::default();
    if p == 0 || n == 0 {
        return r;
    }
    let (pf, nf) = (p as f64, n as f64);
    let with_pro = !region_weight.is_empty() && n_regions > 0;
    // Curves are kept for plots only: ~256 points each are plenty.
    let plot_every = (items.len() / 256).max(1);

    let (mut tp, mut fp) = (0u64, 0u64);
    let mut pro_sum = 0f64;
    let (mut prev_fpr, mut prev_tpr) = (0f64, 0f64);
    let mut auc = 0f64;
    let mut ap = 0f64;
    let mut prev_recall = 0f64;
    // F1 bookkeeping: value, threshold, and the counts of the point just above it (for IoU).
    let mut best_f1 = f64::NEG_INFINITY;
    let mut best_thr = f64::NAN;
    let mut best_above = (0u64, 0u64);
    let mut above = (0u64, 0u64);
    // MVTec PRO integration to 0.3.
    let (mut pro_prev_x, mut pro_prev_y) = (0f64, 0f64);
    let mut pro_area = 0f64;
    let mut pro_done = false;
    let mut points = 0usize;

    let mut i = 0;
    while i < items.len() {
        let s = items[i].score;
        let mut j = i;
        while j < items.len() && items[j].score == s {
            let pl = items[j].payload;
            if pl != 0 {
                tp += 1;
                if with_pro {
                    pro_sum += region_weight[pl as usize];
                }
            } else {
                fp += 1;
            }
            j += 1;
        }
        // A point of every curve at threshold `s` (predict positive when score >= s).
        let fpr = fp as f64 / nf;
        let tpr = tp as f64 / pf;
        auc += (fpr - prev_fpr) * (tpr + prev_tpr) / 2.0;
        let precision = tp as f64 / (tp + fp) as f64;
        let recall = tpr;
        ap += (recall - prev_recall) * precision;
        let f1 = 2.0 * precision * recall / (precision + recall + 1e-8);
        // `>=`: among equal F1 the lowest threshold wins (argmax over ascending thresholds).
        if f1 >= best_f1 {
            best_f1 = f1;
            best_thr = s as f64;
            best_above = above;
        }
        if with_pro && !pro_done {
            let x = fpr;
            let y = pro_sum / n_regions as f64;
            if x <= 0.3 {
                pro_area += 0.5 * (y + pro_prev_y) * (x - pro_prev_x);
                pro_prev_x = x;
                pro_prev_y = y;
                if x == 0.3 {
                    pro_done = true;
                }
            } else {
                let y_at = pro_prev_y + (y - pro_prev_y) * (0.3 - pro_prev_x) / (x - pro_prev_x);
                pro_area += 0.5 * (y_at + pro_prev_y) * (0.3 - pro_prev_x);
                pro_done = true;
            }
            if points.is_multiple_of(plot_every) {
                r.pro.push((x, y));
            }
        }
        if points.is_multiple_of(plot_every) {
            r.roc.push((fpr, tpr));
            r.pr.push((recall, precision));
        }
        points += 1;
        prev_fpr = fpr;
        prev_tpr = tpr;
        prev_recall = recall;
        above = (tp, fp);
        i = j;
    }
    r.roc.push((prev_fpr, prev_tpr));
    r.auroc = Some(auc);
    r.ap = Some(ap);
    r.f1_max = Some(best_f1.max(0.0));
    r.f1_threshold = Some(best_thr);
    // IoU of `score > best threshold` against the positives.
    let (tp_above, fp_above) = best_above;
    let union = (tp_above + fp_above) + p - tp_above;
    r.iou = if union > 0 {
        Some(tp_above as f64 / union as f64)
    } else {
        None
    };
    if with_pro {
        r.aupro30 = Some(pro_area / 0.3);
    }
    r
}

/// Image-level (or any 1-D) metrics: AUROC, AP, F1-max and threshold.
pub fn binary_metrics(labels: &[bool], scores: &[f32]) -> SweepResult {
    let mut items: Vec<Scored> = labels
        .iter()
        .zip(scores)
        .map(|(&l, &s)| Scored {
            score: s,
            payload: l as u32,
        })
        .collect();
    sort_desc(&mut items);
    sweep(&items, &[], 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_inverted() {
        let l = [false, false, true, true];
        let r = binary_metrics(&l, &[0.1, 0.2, 0.8, 0.9]);
        assert_eq!(r.auroc, Some(1.0));
        assert_eq!(r.ap, Some(1.0));
        let r = binary_metrics(&l, &[0.9, 0.8, 0.2, 0.1]);
        assert_eq!(r.auroc, Some(0.0));
    }

    #[test]
    fn ties_count_half() {
        // One positive tied with one negative, the other positive above: AUROC = (1 + 1 + 1 + 0.5) / 4
        let r = binary_metrics(&[true, false, true, false], &[0.5, 0.5, 0.9, 0.1]);
        assert!((r.auroc.unwrap() - 0.875).abs() < 1e-12);
        // AP: thresholds 0.9 (P=1,R=.5), 0.5 (P=2/3,R=1), 0.1 (P=.5,R=1) → .5*1 + .5*2/3
        assert!((r.ap.unwrap() - (0.5 + 0.5 * 2.0 / 3.0)).abs() < 1e-12);
    }

    #[test]
    fn degenerate_is_none() {
        let r = binary_metrics(&[true, true], &[0.1, 0.2]);
        assert!(r.auroc.is_none() && r.ap.is_none() && r.f1_max.is_none());
    }
}

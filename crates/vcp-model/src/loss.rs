//! Segmentation losses of the reference (`utils/loss.py`): focal loss on the two-channel softmax
//! probabilities (gamma 2, one-hot clamped to [1e-5, 1 - 1e-5], `pt + 1e-5`, mean over pixels) and
//! binary Dice on the anomaly channel (smooth 1, mean over images).

use candle_core::{Result, Tensor};

/// # Shapes
/// `prob`: [B, 2, S, S] (softmax over dim 1), `gt`: [B, S, S] in {0, 1} → scalar.
pub fn focal(prob: &Tensor, gt: &Tensor) -> Result<Tensor> {
    const SMOOTH: f64 = 1e-5;
    let p0 = prob.narrow(1, 0, 1)?.squeeze(1)?;
    let p1 = prob.narrow(1, 1, 1)?.squeeze(1)?;
    let oh1 = gt.clamp(SMOOTH, 1.0 - SMOOTH)?;
    let oh0 = gt.affine(-1.0, 1.0)?.clamp(SMOOTH, 1.0 - SMOOTH)?;
    let pt = ((oh0 * p0)? + (oh1 * p1)?)?.affine(1.0, SMOOTH)?;
    let one_minus = pt.affine(-1.0, 1.0)?;
    (one_minus.sqr()? * pt.log()?)?.mean_all()?.neg()
}

/// # Shapes
/// `p1`: [B, S, S] (anomaly probability), `gt`: [B, S, S] → scalar.
pub fn dice(p1: &Tensor, gt: &Tensor) -> Result<Tensor> {
    let b = p1.dim(0)?;
    let p = p1.flatten_from(1)?;
    let g = gt.flatten_from(1)?;
    let inter = (&p * &g)?.sum(1)?;
    let num = inter.affine(2.0, 1.0)?;
    let den = (p.sum(1)? + g.sum(1)?)?.affine(1.0, 1.0)?;
    ((num / den)?.sum_all()? / b as f64)?.affine(-1.0, 1.0)
}

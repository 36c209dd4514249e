//! Fused CPU kernels **with analytic backward** for training through the towers: LayerNorm,
//! softmax over the last dimension, QuickGELU and the bias add of a Linear layer; and a Linear
//! layer with a frozen weight whose backward computes only the input's gradient.
//!
//! Why: candle composes these from generic element-wise ops when gradients are needed. Each
//! composed op allocates a tensor, runs one element at a time on one thread (exp, sigmoid), and
//! in backward the gradients of LayerNorm's gain and of every bias are sums over the leading
//! dimensions, which candle's CPU reduction computes with a division per element. Here each op
//! is one pass over contiguous rows, split over rayon's threads, and its backward is the
//! closed-form gradient (one more pass); the sums over rows are per-thread partial sums added at
//! the end.
//!
//! Every public function falls back to candle's differentiable composition for inputs that are
//! not f32 on the CPU (GPU, half precision), so callers need not care. Exact to the composition
//! up to float rounding (tests: `crates/vcp-clip/tests/fused_ops.rs`, against the composition, a
//! float64 hand computation and finite differences).

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp2, Layout, Shape, Tensor, D,
};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Switch the fused kernels off (on by default) for this process: every function below then
/// runs candle's composition. For side-by-side checks and benchmarks of the two paths.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the fused kernels apply: switched on, every tensor f32 on the CPU.
pub(crate) fn usable(ts: &[&Tensor]) -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The contiguous f32 data of a custom op's input.
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> CResult<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused op: input is not contiguous"),
    }
}

/// Rows per rayon task: enough work per task that scheduling costs nothing measurable.
fn rows_per_task(row_len: usize) -> usize {
    (16384 / row_len.max(1)).max(1)
}

/// Run `f` compiled for the best instruction set this CPU has (AVX2 + FMA, AVX-512), chosen
/// at run time; the build itself targets baseline x86-64 (SSE2) so that it runs everywhere.
/// The loops inside are auto-vectorised 8 or 16 wide instead of 4. Same results to the bit:
/// Rust never contracts `a * b + c` into an FMA nor reorders float sums.
///
/// Pass the closure as `simd(#[inline(always)] || ...)`: only code inlined into pulp's
/// `target_feature` function is compiled for AVX2, and LLVM does not inline a closure with a
/// large body on its own (the softmax's stayed SSE2, 4 wide, until this was found in a profile).
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `e^x` for f32, branch-free so that loops over slices vectorise (libm's `expf` is a call per
/// element). Cody-Waite range reduction `x = n ln2 + r`, `|r| <= ln2 / 2`, a degree-6
/// polynomial for `e^r` and the exponent bits for `2^n`: relative error below 2e-7 on
/// [-87, 88]; inputs below -87.3 give 0 (what softmax and the sigmoid need), above 88.3 clamp.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let underflow = x < -87.3;
    let x = x.clamp(-87.3, 88.3);
    // Round to nearest by the 1.5 * 2^23 trick: `f32::round` is a libm call on baseline
    // x86-64 (no SSE4.1), which would stop the loop from vectorising. `t` then holds `n` in its
    // low mantissa bits, which give `2^n` by integer ops alone (a float-to-int conversion,
    // saturating in Rust, vectorises poorly).
    const ROUND: f32 = 12_582_912.0;
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor coefficients 1/k! (k = 0..6): error below 1e-7 for |r| <= 0.347.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n is in [-126, 127] after the clamp: a normal exponent.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if underflow {
        0.0
    } else {
        p * scale
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * gamma + beta.

struct LayerNormOp {
    eps: f32,
}

/// Mean and 1 / std of one row (two passes, as candle's kernel: no cancellation).
#[inline]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "vcp-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, g, b) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let d = g.len();
        let mut y = vec![0f32; x.len()];
        let chunk = rows_per_task(d) * d;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(yc, xc)| {
                simd(
                    #[inline(always)]
                    || {
                        for (yr, xr) in yc.chunks_exact_mut(d).zip(xc.chunks_exact(d)) {
                            let (mean, rstd) = row_stats(xr, self.eps);
                            for (((o, &v), &gi), &bi) in yr.iter_mut().zip(xr).zip(g).zip(b) {
                                *o = (v - mean) * rstd * gi + bi;
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = x.apply_op3_no_bwd(gamma, &dy, &LayerNormGradX { eps: self.eps })?;
        // A frozen gain and bias (plain tensors: nothing trains them) get no gradient.
        if !gamma.track_op() && !beta.track_op() {
            return Ok((Some(dx), None, None));
        }
        let gb = x.apply_op2_no_bwd(&dy, &LayerNormGradGain { eps: self.eps })?; // [2, D]
        let keep = |t: &Tensor, g: Tensor| t.track_op().then_some(g);
        Ok((Some(dx), keep(gamma, gb.get(0)?), keep(beta, gb.get(1)?)))
    }
}

/// dx = rstd * (dy*g - mean(dy*g) - xhat * mean(dy*g*xhat)), per row.
struct LayerNormGradX {
    eps: f32,
}

impl CustomOp3 for LayerNormGradX {
    fn name(&self) -> &'static str {
        "vcp-layer-norm-grad-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, g, dy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let d = g.len();
        let mut dx = vec![0f32; x.len()];
        let chunk = rows_per_task(d) * d;
        dx.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
            .for_each(|(oc, (xc, dc))| {
                simd(
                    #[inline(always)]
                    || {
                        for ((o, xr), dr) in oc
                            .chunks_exact_mut(d)
                            .zip(xc.chunks_exact(d))
                            .zip(dc.chunks_exact(d))
                        {
                            let (mean, rstd) = row_stats(xr, self.eps);
                            let (mut s1, mut s2) = (0f32, 0f32);
                            for ((&v, &dv), &gi) in xr.iter().zip(dr).zip(g) {
                                let gh = dv * gi;
                                s1 += gh;
                                s2 += gh * (v - mean) * rstd;
                            }
                            let (m1, m2) = (s1 / d as f32, s2 / d as f32);
                            for (((o, &v), &dv), &gi) in o.iter_mut().zip(xr).zip(dr).zip(g) {
                                let xhat = (v - mean) * rstd;
                                *o = rstd * (dv * gi - m1 - xhat * m2);
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// [dgamma; dbeta] = [sum_rows(dy * xhat); sum_rows(dy)], shape [2, D].
struct LayerNormGradGain {
    eps: f32,
}

impl CustomOp2 for LayerNormGradGain {
    fn name(&self) -> &'static str {
        "vcp-layer-norm-grad-gain"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, dy) = (slice(s1, l1)?, slice(s2, l2)?);
        let d = *l1.dims().last().unwrap_or(&1);
        let chunk = rows_per_task(d) * d;
        let out = x
            .par_chunks(chunk)
            .zip(dy.par_chunks(chunk))
            .fold(
                || vec![0f32; 2 * d],
                |mut acc, (xc, dc)| {
                    simd(
                        #[inline(always)]
                        || {
                            for (xr, dr) in xc.chunks_exact(d).zip(dc.chunks_exact(d)) {
                                let (mean, rstd) = row_stats(xr, self.eps);
                                let (ag, ab) = acc.split_at_mut(d);
                                for (((a, b), &v), &dv) in
                                    ag.iter_mut().zip(ab.iter_mut()).zip(xr).zip(dr)
                                {
                                    *a += dv * (v - mean) * rstd;
                                    *b += dv;
                                }
                            }
                            acc
                        },
                    )
                },
            )
            .reduce(|| vec![0f32; 2 * d], add_vecs);
        Ok((CpuStorage::F32(out), Shape::from((2, d))))
    }
}

fn add_vecs(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    for (x, y) in a.iter_mut().zip(&b) {
        *x += y;
    }
    a
}

/// LayerNorm over the last dimension, differentiable in `x`, `gamma` and `beta`.
///
/// # Shapes
/// `x`: [.., D]; `gamma`, `beta`: [D] → [.., D].
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> CResult<Tensor> {
    if !usable(&[x, gamma, beta]) {
        return candle_nn::ops::layer_norm_slow(x, gamma, beta, eps as f32);
    }
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last dimension.

/// `lane_sums`: the row sum as eight interleaved partial sums (vectorised; a different rounding
/// from the sequential sum). Training keeps the sequential sum, so that its results stay those
/// of every earlier run to the bit; inference ([`crate::infer_block`]) takes the lanes.
struct SoftmaxOp {
    lane_sums: bool,
}

const LANES: usize = 8;

/// The largest value of a row, eight lanes at a time (the maximum does not depend on the order,
/// so this is the sequential fold's value; a serial `f32::max` chain does not vectorise).
#[inline(always)]
fn row_max(xr: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xr.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    rest.iter()
        .copied()
        .fold(acc.into_iter().fold(f32::NEG_INFINITY, f32::max), f32::max)
}

/// The sum of a row as eight interleaved partial sums, then the lanes pairwise, then the tail.
#[inline(always)]
fn lane_sum(xr: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xr.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let pairs = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    let total = (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]);
    rest.iter().fold(total, |s, v| s + v)
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "vcp-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let d = *l.dims().last().unwrap_or(&1);
        let mut y = vec![0f32; x.len()];
        let chunk = rows_per_task(d) * d;
        let lane_sums = self.lane_sums;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(yc, xc)| {
                simd(
                    #[inline(always)]
                    || {
                        for (yr, xr) in yc.chunks_exact_mut(d).zip(xc.chunks_exact(d)) {
                            let max = row_max(xr);
                            // A row of -inf only (a fully masked row): uniform zeros, not NaN.
                            let max = if max.is_finite() { max } else { 0.0 };
                            for (o, &v) in yr.iter_mut().zip(xr) {
                                *o = exp_f32(v - max);
                            }
                            let sum: f32 = if lane_sums {
                                lane_sum(yr)
                            } else {
                                yr.iter().sum()
                            };
                            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                            for o in yr.iter_mut() {
                                *o *= inv;
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(
            y.contiguous()?
                .apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// dx = y * (dy - sum(dy * y)), per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "vcp-softmax-last-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (y, dy) = (slice(s1, l1)?, slice(s2, l2)?);
        let d = *l1.dims().last().unwrap_or(&1);
        let mut dx = vec![0f32; y.len()];
        let chunk = rows_per_task(d) * d;
        dx.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk)))
            .for_each(|(oc, (yc, dc))| {
                simd(
                    #[inline(always)]
                    || {
                        for ((o, yr), dr) in oc
                            .chunks_exact_mut(d)
                            .zip(yc.chunks_exact(d))
                            .zip(dc.chunks_exact(d))
                        {
                            let dot: f32 = yr.iter().zip(dr).map(|(a, b)| a * b).sum();
                            for ((o, &y), &dv) in o.iter_mut().zip(yr).zip(dr) {
                                *o = y * (dv - dot);
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last(x: &Tensor) -> CResult<Tensor> {
    if !usable(&[x]) {
        return candle_nn::ops::softmax(x, D::Minus1);
    }
    x.contiguous()?.apply_op1(SoftmaxOp { lane_sums: false })
}

// ---------------------------------------------------------------------------------------------
// QuickGELU: y = x * sigmoid(1.702 x).

const QG: f32 = 1.702;

#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-z))
}

struct QuickGeluOp;

impl CustomOp1 for QuickGeluOp {
    fn name(&self) -> &'static str {
        "vcp-quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(16384)
            .zip(x.par_chunks(16384))
            .for_each(|(yc, xc)| {
                simd(
                    #[inline(always)]
                    || {
                        for (o, &v) in yc.iter_mut().zip(xc) {
                            *o = v * sigmoid(QG * v);
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(
            x.contiguous()?
                .apply_op2_no_bwd(&dy.contiguous()?, &QuickGeluGrad)?,
        ))
    }
}

/// dx = dy * (s + 1.702 x s (1 - s)), s = sigmoid(1.702 x).
struct QuickGeluGrad;

impl CustomOp2 for QuickGeluGrad {
    fn name(&self) -> &'static str {
        "vcp-quick-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, dy) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(16384)
            .zip(x.par_chunks(16384).zip(dy.par_chunks(16384)))
            .for_each(|(oc, (xc, dc))| {
                simd(
                    #[inline(always)]
                    || {
                        for ((o, &v), &g) in oc.iter_mut().zip(xc).zip(dc) {
                            let s = sigmoid(QG * v);
                            *o = g * (s + QG * v * s * (1.0 - s));
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// QuickGELU, differentiable.
pub fn quick_gelu(x: &Tensor) -> CResult<Tensor> {
    if !usable(&[x]) {
        return x * candle_nn::ops::sigmoid(&(x * QG as f64)?)?;
    }
    x.contiguous()?.apply_op1(QuickGeluOp)
}

// ---------------------------------------------------------------------------------------------
// Bias add of a Linear layer: y[r, :] = x[r, :] + b.

struct AddBiasOp;

impl CustomOp2 for AddBiasOp {
    fn name(&self) -> &'static str {
        "vcp-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, b) = (slice(s1, l1)?, slice(s2, l2)?);
        let d = b.len();
        let mut y = x.to_vec();
        let chunk = rows_per_task(d) * d;
        y.par_chunks_mut(chunk).for_each(|yc| {
            simd(
                #[inline(always)]
                || {
                    for yr in yc.chunks_exact_mut(d) {
                        for (o, bv) in yr.iter_mut().zip(b) {
                            *o += bv;
                        }
                    }
                },
            )
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        // A frozen bias (a plain tensor) gets no gradient.
        if !b.track_op() {
            return Ok((Some(dy.clone()), None));
        }
        let db = dy.contiguous()?.apply_op1_no_bwd(&SumRows)?;
        Ok((Some(dy.clone()), Some(db)))
    }
}

/// Sum over every dimension but the last: [.., D] → [D] (per-thread partial sums of rows).
struct SumRows;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "vcp-sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let d = *l.dims().last().unwrap_or(&1);
        let chunk = rows_per_task(d) * d;
        let out = x
            .par_chunks(chunk)
            .fold(
                || vec![0f32; d],
                |mut acc, xc| {
                    simd(
                        #[inline(always)]
                        || {
                            for xr in xc.chunks_exact(d) {
                                for (a, v) in acc.iter_mut().zip(xr) {
                                    *a += v;
                                }
                            }
                            acc
                        },
                    )
                },
            )
            .reduce(|| vec![0f32; d], add_vecs);
        Ok((CpuStorage::F32(out), Shape::from(d)))
    }
}

/// `x + b` with `b` broadcast over the rows, differentiable in both.
///
/// # Shapes
/// `x`: [.., D]; `b`: [D] → [.., D].
pub fn add_bias(x: &Tensor, b: &Tensor) -> CResult<Tensor> {
    if !usable(&[x, b]) || b.rank() != 1 {
        return x.broadcast_add(b);
    }
    x.contiguous()?.apply_op2(&b.contiguous()?, AddBiasOp)
}

// ---------------------------------------------------------------------------------------------
// A Linear layer with a frozen weight: only the input's gradient.

/// Forward: the precomputed output (a copy); backward: `dx = dy W` only. candle's matmul
/// backward also computes `x^T dy` for the weight (as costly as the forward matmul) and
/// accumulates it, even for a weight nothing trains (VCP-CLIP's frozen text tower, through which
/// the deep prompts' gradients flow).
struct FrozenLinearGrad {
    /// The weight as multiplied, `[in, out]`.
    weight_t: Tensor,
}

impl CustomOp2 for FrozenLinearGrad {
    fn name(&self) -> &'static str {
        "vcp-frozen-linear"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(slice(s2, l2)?.to_vec()), l2.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        // The same expression as candle's matmul backward: the same bits.
        Ok((Some(dy.matmul(&self.weight_t.t()?)?), None))
    }
}

/// `x W^T + b` (`weight_t` = `W^T`, `[in, out]`; `x`: `[rows, in]`). When neither the weight nor
/// the bias is trained but `x` needs a gradient (on CPU f32), the backward computes `dx` alone;
/// otherwise candle's matmul and bias add (both gradients).
pub fn linear_2d(x: &Tensor, weight_t: &Tensor, bias: Option<&Tensor>) -> CResult<Tensor> {
    let frozen = !weight_t.track_op() && bias.is_none_or(|b| !b.track_op());
    if !(frozen && x.track_op() && usable(&[x, weight_t])) {
        let y = x.matmul(weight_t)?;
        return match bias {
            Some(b) => add_bias(&y, b),
            None => Ok(y),
        };
    }
    let y = x.detach().matmul(weight_t)?;
    let y = match bias {
        Some(b) => add_bias(&y, b)?,
        None => y,
    };
    x.apply_op2(
        &y,
        FrozenLinearGrad {
            weight_t: weight_t.clone(),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The kernels without a graph node, for callers that form the backward themselves
// (`crate::fused_block`). Inputs must be contiguous f32 on the CPU.

/// `x[r, :] += b` in place (`b` of the row length: a bias; or of `x`'s length: a residual).
struct AddInPlace;

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        "vcp-add-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<()> {
        let b = slice(s2, l2)?;
        let (lo, hi) = match l1.contiguous_offsets() {
            Some(r) => r,
            None => candle_core::bail!("fused op: input is not contiguous"),
        };
        let CpuStorage::F32(data) = s1 else {
            candle_core::bail!("fused op: not f32")
        };
        let x = &mut data[lo..hi];
        let d = b.len();
        if d == 0 || x.len() % d != 0 {
            candle_core::bail!("fused op: cannot add {} values to rows of {}", d, x.len())
        }
        if d == x.len() {
            // A residual (or a bias of a single row: the same sum).
            x.par_chunks_mut(16384)
                .zip(b.par_chunks(16384))
                .for_each(|(xc, bc)| {
                    simd(
                        #[inline(always)]
                        || {
                            for (o, v) in xc.iter_mut().zip(bc) {
                                *o += v;
                            }
                        },
                    )
                });
        } else {
            x.par_chunks_mut(rows_per_task(d) * d).for_each(|xc| {
                simd(
                    #[inline(always)]
                    || {
                        for xr in xc.chunks_exact_mut(d) {
                            for (o, v) in xr.iter_mut().zip(b) {
                                *o += v;
                            }
                        }
                    },
                )
            });
        }
        Ok(())
    }
}

/// Plain kernels (no autograd node): the forward and backward passes of the ops above.
pub(crate) mod plain {
    use super::*;

    /// `x += b` in place: `b` a bias of the row length, or a tensor of `x`'s shape. `x` must be
    /// a fresh tensor nothing else reads (a matmul's output).
    pub fn add_in_place(x: &Tensor, b: &Tensor) -> CResult<()> {
        x.inplace_op2(b, &AddInPlace)
    }

    /// LayerNorm over the last dimension.
    pub fn layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> CResult<Tensor> {
        x.apply_op3_no_bwd(g, b, &LayerNormOp { eps: eps as f32 })
    }

    /// The input's gradient of LayerNorm.
    pub fn layer_norm_grad_x(x: &Tensor, g: &Tensor, dy: &Tensor, eps: f64) -> CResult<Tensor> {
        x.apply_op3_no_bwd(g, dy, &LayerNormGradX { eps: eps as f32 })
    }

    /// `[dgamma; dbeta]`, shape `[2, D]`.
    pub fn layer_norm_grad_gain(x: &Tensor, dy: &Tensor, eps: f64) -> CResult<Tensor> {
        x.apply_op2_no_bwd(dy, &LayerNormGradGain { eps: eps as f32 })
    }

    pub fn softmax_last(x: &Tensor) -> CResult<Tensor> {
        x.apply_op1_no_bwd(&SoftmaxOp { lane_sums: false })
    }

    /// Softmax with the row sums in lanes (inference: faster, rounded differently).
    pub fn softmax_last_lanes(x: &Tensor) -> CResult<Tensor> {
        x.apply_op1_no_bwd(&SoftmaxOp { lane_sums: true })
    }

    /// The softmax input's gradient from the softmax output `y` and `dy`.
    pub fn softmax_grad(y: &Tensor, dy: &Tensor) -> CResult<Tensor> {
        y.apply_op2_no_bwd(dy, &SoftmaxGrad)
    }

    pub fn quick_gelu(x: &Tensor) -> CResult<Tensor> {
        x.apply_op1_no_bwd(&QuickGeluOp)
    }

    pub fn quick_gelu_grad(x: &Tensor, dy: &Tensor) -> CResult<Tensor> {
        x.apply_op2_no_bwd(dy, &QuickGeluGrad)
    }

    /// Sum over every dimension but the last.
    pub fn sum_rows(x: &Tensor) -> CResult<Tensor> {
        x.apply_op1_no_bwd(&SumRows)
    }
}

#[cfg(test)]
mod lane_tests {
    use super::*;
    use candle_core::Device;

    /// Both softmax variants against a float64 softmax on row lengths around the lane width,
    /// with a fully masked row (zeros, not NaN); the lane maximum equals the sequential one.
    #[test]
    fn softmax_with_lane_sums_matches_float64() {
        for d in [1usize, 7, 8, 9, 17, 1370] {
            let rows = 3;
            let mut v: Vec<f32> = (0..rows * d)
                .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
                .collect();
            v[2 * d..].fill(f32::NEG_INFINITY);
            let x = Tensor::from_vec(v.clone(), (rows, d), &Device::Cpu).unwrap();
            for y in [
                plain::softmax_last(&x).unwrap(),
                plain::softmax_last_lanes(&x).unwrap(),
            ] {
                let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                for r in 0..rows {
                    let row = &v[r * d..(r + 1) * d];
                    let seq_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    assert_eq!(row_max(row).to_bits(), seq_max.to_bits(), "d={d}");
                    let m = row
                        .iter()
                        .map(|&a| a as f64)
                        .fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = row.iter().map(|&a| (a as f64 - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (j, &got) in y[r * d..(r + 1) * d].iter().enumerate() {
                        let want = if m.is_finite() { e[j] / z } else { 0.0 };
                        assert!(
                            (got as f64 - want).abs() < 1e-6,
                            "d={d} row {r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

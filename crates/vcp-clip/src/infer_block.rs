//! The transformer block for inference on CPU f32 (the frozen image tower, `Kernels::Fused`):
//! the ops of [`Block::forward_composed`] in the same order, with fewer copies, the attention
//! heads in parallel and our vectorised softmax.
//!
//! Why: the composed block splits the q/k/v projection into three `[B, H, N, hd]` copies,
//! merges the heads with one more, allocates a fresh tensor for every bias and residual add,
//! runs the per-head attention gemms (too small for gemm to split over threads) one after the
//! other, and candle's softmax calls libm's `expf` once per score: at ViT-L/14 and 518 px
//! (1370 tokens, 16 heads, 24 blocks) that is 720 million calls per image, about a tenth of the
//! forward. Here the biases and residuals are added in place into the fresh matmul outputs,
//! each (sample, head) reads its query, key and value as strided views of the projection (gemm
//! packs its operands anyway), the (sample, head) pairs run in parallel, and the softmax is
//! [`crate::fused`]'s (vectorised `exp`, relative error below 2e-7; row sums in eight lanes). LayerNorm stays candle's
//! fused kernel and the activation the block's own, so everything but the softmax's last bits
//! is the composition's (measured: the composition's bits when its softmax is kept).
//!
//! Test (`crates/vcp-clip/tests/infer_block.rs`): a float64 hand computation and the
//! composition, on odd shapes, with and without a mask, for each score rule; the same bits on
//! 1, 2 and 3 threads.

use crate::block::{Block, Kernels, Scores};
use crate::error::Result;
use crate::fused::plain;
use candle_core::Tensor;
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

/// The version of the image tower's arithmetic on the CPU: bumped whenever its features change,
/// even in their last bits (here: 2, our softmax replaced candle's). Feature caches key on it, so
/// features computed by an earlier version are recomputed rather than mixed with new ones.
pub const ARITHMETIC_VERSION: u32 = 2;

/// The block for inference when it can be (CPU f32, biases everywhere, nothing tracked by
/// autograd, a score rule formed from two projections); `None` otherwise.
///
/// # Shapes
/// `x`: [B, N, W]; `mask`: additive [N, N] or none → [B, N, W].
pub fn forward(
    block: &Block,
    x: &Tensor,
    mask: Option<&Tensor>,
    scores_of: Scores,
) -> Result<Option<Tensor>> {
    // Which thirds of the q/k/v projection form the scores (`a b^T`).
    let (ia, ib) = match scores_of {
        Scores::QueryKey => (0, 1),
        Scores::ValueValue => (2, 2),
        Scores::QueryQuery => (0, 0),
        Scores::SelfOnly => return Ok(None),
    };
    let (Some(bqkv), Some(bo), Some(bf1), Some(bf2)) = (
        &block.attn.qkv.bias,
        &block.attn.out.bias,
        &block.fc1.bias,
        &block.fc2.bias,
    ) else {
        return Ok(None);
    };
    let mut all = vec![
        x,
        &block.ln_1.weight,
        &block.ln_1.bias,
        &block.attn.qkv.weight_t,
        bqkv,
        &block.attn.out.weight_t,
        bo,
        &block.ln_2.weight,
        &block.ln_2.bias,
        &block.fc1.weight_t,
        bf1,
        &block.fc2.weight_t,
        bf2,
    ];
    if let Some(m) = mask {
        all.push(m);
    }
    // In-place adds would corrupt a graph: only when nothing is differentiated.
    if !crate::fused::usable(&all) || all.iter().any(|t| t.track_op()) || x.rank() != 3 {
        return Ok(None);
    }
    let (b, n, w) = x.dims3()?;
    let heads = block.attn.heads;
    if heads == 0 || w % heads != 0 || mask.is_some_and(|m| m.dims() != [n, n]) {
        return Ok(None);
    }
    let hd = w / heads;
    let r = b * n;
    // Attention, as `Attention::forward_scores` composes it.
    let h1 = block.ln_1.forward(x, Kernels::Fused)?.reshape((r, w))?;
    let qkv = h1.matmul(&block.attn.qkv.weight_t)?; // [R, 3W]
    plain::add_in_place(&qkv, bqkv)?;
    let scale = (hd as f64).powf(-0.5);
    let head = |i: usize| -> CResult<Tensor> {
        let (s, h) = (i / heads, i % heads);
        let rows = qkv.narrow(0, s * n, n)?; // [N, 3W]
        let part = |third: usize| rows.narrow(1, third * w + h * hd, hd); // [N, hd] views
        let a = (part(ia)? * scale)?;
        let mut scores = a.matmul(&part(ib)?.t()?)?; // [N, N]
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        plain::softmax_last_lanes(&scores)?.matmul(&part(2)?) // [N, hd]
    };
    let per_head = (0..b * heads)
        .into_par_iter()
        .map(head)
        .collect::<CResult<Vec<_>>>()?;
    let merged = per_head
        .chunks(heads)
        .map(|hs| Tensor::cat(hs, 1)) // [N, W]
        .collect::<CResult<Vec<_>>>()?;
    let o = Tensor::cat(&merged, 0)?; // [R, W]
    let x2 = o.matmul(&block.attn.out.weight_t)?;
    plain::add_in_place(&x2, bo)?;
    plain::add_in_place(&x2, &x.contiguous()?.reshape((r, w))?)?; // x + attn
    let x2 = x2.reshape((b, n, w))?;
    // MLP, as `Block::mlp_residual`.
    let h2 = block.ln_2.forward(&x2, Kernels::Fused)?.reshape((r, w))?;
    let u = h2.matmul(&block.fc1.weight_t)?;
    plain::add_in_place(&u, bf1)?;
    let y = block.activation(&u)?.matmul(&block.fc2.weight_t)?;
    plain::add_in_place(&y, bf2)?;
    plain::add_in_place(&y, &x2.reshape((r, w))?)?; // x2 + mlp
    Ok(Some(y.reshape((b, n, w))?))
}

//! The pre-LN transformer block (query-key attention, QuickGELU) as **one** differentiable op on
//! CPU f32, with a hand-written backward.
//!
//! Why: candle's autograd, for every edge of the graph, allocates a zero tensor the size of the
//! operand and adds the edge's gradient to it (`GradStore::or_insert` + `add`), computes
//! gradients for operands nothing trains, and pads the gradient of every `narrow` with zeros.
//! A block composed from candle ops has about fifteen activation-sized edges (the q/k/v split,
//! reshapes, permutes, two residual adds, ...), so most of a CPU training step went to `memset`,
//! page faults and element-wise adds that PyTorch's autograd does not do (it hands the first
//! gradient of a tensor over instead of adding it to zeros). Here the forward runs on plain
//! tensors (no graph), keeps what the backward needs, and the block enters candle's graph as a
//! single node with two operands: the input `x` and the block's parameters packed into one
//! vector. Its backward forms exactly the expressions candle's autograd forms for the composed
//! block (the same kernels of [`crate::fused`], the same gemm calls), without the zero tensors
//! and without the gradients nobody needs (frozen weights: only `dx`).
//!
//! Tests (`crates/vcp-clip/tests/fused_block.rs`): output and every gradient equal to the
//! composed block's ([`crate::block::Block::forward_composed`]), and to finite differences.

use crate::block::{Act, Block};
use crate::config::Activation;
use crate::error::Result;
use crate::fused::plain;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

type CResult<T> = candle_core::Result<T>;

/// The block's parameters as multiplied (Linear weights `[in, out]`), detached from any graph.
/// Packed in this order into the op's second operand.
#[derive(Clone)]
struct Params {
    g1: Tensor,
    b1: Tensor,
    wqkv_t: Tensor,
    bqkv: Tensor,
    wo_t: Tensor,
    bo: Tensor,
    g2: Tensor,
    b2: Tensor,
    w1_t: Tensor,
    bf1: Tensor,
    w2_t: Tensor,
    bf2: Tensor,
}

impl Params {
    /// The parameters of `block` (not detached), or `None` when a Linear has no bias.
    fn of(block: &Block) -> Option<[Tensor; 12]> {
        Some([
            block.ln_1.weight.clone(),
            block.ln_1.bias.clone(),
            block.attn.qkv.weight_t.clone(),
            block.attn.qkv.bias.clone()?,
            block.attn.out.weight_t.clone(),
            block.attn.out.bias.clone()?,
            block.ln_2.weight.clone(),
            block.ln_2.bias.clone(),
            block.fc1.weight_t.clone(),
            block.fc1.bias.clone()?,
            block.fc2.weight_t.clone(),
            block.fc2.bias.clone()?,
        ])
    }

    fn detached(ts: &[Tensor; 12]) -> Self {
        let d = |i: usize| ts[i].detach();
        Self {
            g1: d(0),
            b1: d(1),
            wqkv_t: d(2),
            bqkv: d(3),
            wo_t: d(4),
            bo: d(5),
            g2: d(6),
            b2: d(7),
            w1_t: d(8),
            bf1: d(9),
            w2_t: d(10),
            bf2: d(11),
        }
    }
}

/// What the backward reads, from the forward. Shapes: R = B*N rows, W width, M MLP width.
#[derive(Clone)]
struct Cache {
    /// `[R, W]` the block's input.
    x: Tensor,
    /// `[R, W]` `ln_1(x)`.
    h1: Tensor,
    /// The attention core of each chunk of samples (see [`sample_chunks`]).
    attn: Vec<AttnCache>,
    /// `[R, W]` heads merged, before the output projection.
    o: Tensor,
    /// `[R, W]` the residual stream after attention.
    x2: Tensor,
    /// `[R, W]` `ln_2(x2)`; `[R, M]` MLP pre-activation and activation.
    h2: Tensor,
    u: Tensor,
    g: Tensor,
}

/// The attention core's tensors for samples `lo..hi` (`Bc` of them).
#[derive(Clone)]
struct AttnCache {
    lo: usize,
    hi: usize,
    /// `[Bc, H, N, hd]` queries already scaled by `hd^-0.5`, keys, values.
    a: Tensor,
    k: Tensor,
    v: Tensor,
    /// `[Bc, H, N, N]` attention weights.
    p: Tensor,
}

/// Shape and constants of one call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    n: usize,
    w: usize,
    heads: usize,
    eps1: f64,
    eps2: f64,
}

impl Dims {
    fn hd(&self) -> usize {
        self.w / self.heads
    }
    fn rows(&self) -> usize {
        self.b * self.n
    }
    fn scale(&self) -> f64 {
        (self.hd() as f64).powf(-0.5)
    }
}

/// The block as one op when it can be (QuickGELU, biases everywhere, query-key attention by
/// the caller, f32 on the CPU, fused kernels switched on); `None` otherwise.
///
/// # Shapes
/// `x`: [B, N, W]; `mask`: additive [N, N] or none → [B, N, W].
pub fn forward(block: &Block, x: &Tensor, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
    if block.act != Act::Clip(Activation::QuickGelu) {
        return Ok(None);
    }
    let Some(ps) = Params::of(block) else {
        return Ok(None);
    };
    let mut all: Vec<&Tensor> = ps.iter().collect();
    all.push(x);
    if let Some(m) = mask {
        all.push(m);
    }
    if !crate::fused::usable(&all) || x.rank() != 3 {
        return Ok(None);
    }
    let (b, n, w) = x.dims3()?;
    let heads = block.attn.heads;
    if heads == 0 || w % heads != 0 || mask.is_some_and(|m| m.dims() != [n, n]) {
        return Ok(None);
    }
    let dims = Dims {
        b,
        n,
        w,
        heads,
        eps1: block.ln_1.eps,
        eps2: block.ln_2.eps,
    };
    let train_params = ps.iter().any(|t| t.track_op());
    let x = x.contiguous()?;
    let params = Params::detached(&ps);
    let mask = mask.map(|m| m.detach());
    let (y, cache) = run_forward(&params, dims, &x.detach(), mask.as_ref())?;
    if !x.track_op() && !train_params {
        // Nothing to differentiate: no graph node, no cache kept.
        return Ok(Some(Tensor::from_vec(y, (b, n, w), x.device())?));
    }
    let op = BlockOp {
        y: Mutex::new(Some(y)),
        cache,
        params,
        dims,
    };
    let out = if train_params {
        let packed = pack(&ps)?;
        x.apply_op2(&packed, op)?
    } else {
        x.apply_op1(op)?
    };
    Ok(Some(out))
}

/// The forward on plain tensors; returns the output's data and the cache.
fn run_forward(
    p: &Params,
    d: Dims,
    x: &Tensor,
    mask: Option<&Tensor>,
) -> CResult<(Vec<f32>, Cache)> {
    let (b, w, r) = (d.b, d.w, d.rows());
    let x = x.reshape((r, w))?;
    // Attention, exactly as `Attention::forward_scores` composes it.
    let h1 = plain::layer_norm(&x, &p.g1, &p.b1, d.eps1)?;
    // Bias and residual adds go in place into fresh matmul outputs (same sums, no copy).
    let qkv = h1.matmul(&p.wqkv_t)?; // [R, 3W]
    plain::add_in_place(&qkv, &p.bqkv)?;
    // The attention core runs per chunk of samples, the chunks in parallel: its matmuls are
    // one small gemm per (sample, head), which gemm cannot split over threads.
    let parts = sample_chunks(b)
        .into_par_iter()
        .map(|(lo, hi)| attention_core(&qkv, d, lo, hi, mask))
        .collect::<CResult<Vec<_>>>()?;
    let (os, attn): (Vec<Tensor>, Vec<AttnCache>) = parts.into_iter().unzip();
    let o = Tensor::cat(&os, 0)?; // [R, W]
    let x2 = o.matmul(&p.wo_t)?;
    plain::add_in_place(&x2, &p.bo)?;
    plain::add_in_place(&x2, &x)?; // x2 = x + attn
                                   // MLP, as `Block::mlp_residual`.
    let h2 = plain::layer_norm(&x2, &p.g2, &p.b2, d.eps2)?;
    let u = h2.matmul(&p.w1_t)?; // [R, M]
    plain::add_in_place(&u, &p.bf1)?;
    let g = plain::quick_gelu(&u)?;
    let m = g.matmul(&p.w2_t)?;
    plain::add_in_place(&m, &p.bf2)?;
    let y = add_into_vec(&x2, &m)?;
    let cache = Cache {
        x,
        h1,
        attn,
        o,
        x2,
        h2,
        u,
        g,
    };
    Ok((y, cache))
}

/// Gradients of the block: `dx`, and the parameters' in packing order when asked for.
fn run_backward(
    p: &Params,
    c: &Cache,
    d: Dims,
    dy: &Tensor,
    params_too: bool,
) -> CResult<(Tensor, Option<Tensor>)> {
    let (b, n, w, r) = (d.b, d.n, d.w, d.rows());
    let dy = dy.contiguous()?.reshape((r, w))?;
    // Each `lhs.matmul(rhs)` of the forward gives `dlhs = grad.matmul(rhs.t())` and
    // `drhs = lhs.t().matmul(grad)`, as candle's autograd forms them.
    // MLP: y = x2 + fc2(quick_gelu(fc1(ln_2(x2)))).
    let dg = dy.matmul(&p.w2_t.t()?)?;
    let du = plain::quick_gelu_grad(&c.u, &dg)?;
    let dh2 = du.matmul(&p.w1_t.t()?)?;
    let dx2 = plain::layer_norm_grad_x(&c.x2, &p.g2, &dh2, d.eps2)?;
    plain::add_in_place(&dx2, &dy)?;
    // Attention: x2 = x + out(merge(softmax(a k^T + mask) v)).
    let d_o = dx2.matmul(&p.wo_t.t()?)?; // [R, W]
    let dqkv = c
        .attn
        .par_iter()
        .map(|ac| attention_core_grad(&d_o, ac, d))
        .collect::<CResult<Vec<_>>>()?;
    let dqkv = Tensor::cat(&dqkv, 0)?; // [R, 3W]
    let dh1 = dqkv.matmul(&p.wqkv_t.t()?)?;
    let dx = plain::layer_norm_grad_x(&c.x, &p.g1, &dh1, d.eps1)?;
    plain::add_in_place(&dx, &dx2)?;
    let dx = dx.reshape((b, n, w))?;
    if !params_too {
        return Ok((dx, None));
    }
    let gain1 = plain::layer_norm_grad_gain(&c.x, &dh1, d.eps1)?; // [2, W]
    let gain2 = plain::layer_norm_grad_gain(&c.x2, &dh2, d.eps2)?;
    let grads = [
        gain1.get(0)?,
        gain1.get(1)?,
        c.h1.t()?.matmul(&dqkv)?,
        plain::sum_rows(&dqkv)?,
        c.o.t()?.matmul(&dx2)?,
        plain::sum_rows(&dx2)?,
        gain2.get(0)?,
        gain2.get(1)?,
        c.h2.t()?.matmul(&du)?,
        plain::sum_rows(&du)?,
        c.g.t()?.matmul(&dy)?,
        plain::sum_rows(&dy)?,
    ];
    Ok((dx, Some(pack(&grads)?)))
}

/// The block's parameters (or their gradients, in the same order) as one flat vector: the
/// op's second operand.
fn pack(ts: &[Tensor; 12]) -> CResult<Tensor> {
    let flat: Vec<Tensor> = ts.iter().map(|t| t.flatten_all()).collect::<CResult<_>>()?;
    Tensor::cat(&flat, 0)
}

/// Sample ranges, one per thread: each range's tensors equal the corresponding slices of the
/// whole batch's to the bit (every gemm of the core is per sample and head), so results do not
/// depend on the number of threads.
fn sample_chunks(b: usize) -> Vec<(usize, usize)> {
    let t = rayon::current_num_threads().clamp(1, b.max(1));
    (0..t).map(|i| (i * b / t, (i + 1) * b / t)).collect()
}

/// Softmax attention of samples `lo..hi`, exactly as `Attention::forward_scores` composes it,
/// from their rows of `qkv` (`[R, 3W]`, biases added); returns their merged heads `[Bc*N, W]`.
fn attention_core(
    qkv: &Tensor,
    d: Dims,
    lo: usize,
    hi: usize,
    mask: Option<&Tensor>,
) -> CResult<(Tensor, AttnCache)> {
    let (n, w, heads, hd, bc) = (d.n, d.w, d.heads, d.hd(), hi - lo);
    let qkv = qkv
        .narrow(0, lo * n, bc * n)?
        .reshape((bc, n, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?; // [3, Bc, H, N, hd]
    let q = qkv.get(0)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let a = (q * d.scale())?;
    let mut s = a.matmul(&k.t()?)?; // [Bc, H, N, N]
    if let Some(m) = mask {
        s = s.broadcast_add(m)?;
    }
    let p = plain::softmax_last(&s)?;
    let o = p.matmul(&v)?.transpose(1, 2)?.reshape((bc * n, w))?;
    Ok((o, AttnCache { lo, hi, a, k, v, p }))
}

/// The gradient of [`attention_core`]'s `qkv` rows (`[Bc*N, 3W]`) from `d_o` (`[R, W]`, the
/// whole batch's gradient of the merged heads).
fn attention_core_grad(d_o: &Tensor, c: &AttnCache, d: Dims) -> CResult<Tensor> {
    let (n, w, heads, hd, bc) = (d.n, d.w, d.heads, d.hd(), c.hi - c.lo);
    let d_o4 = d_o
        .narrow(0, c.lo * n, bc * n)?
        .reshape((bc, n, heads, hd))?
        .transpose(1, 2)?
        .contiguous()?; // [Bc, H, N, hd]
    let dp = d_o4.matmul(&c.v.t()?)?; // [Bc, H, N, N]
    let dv = c.p.t()?.matmul(&d_o4)?;
    let ds = plain::softmax_grad(&c.p, &dp)?;
    let da = ds.matmul(&c.k)?;
    let dk = ds.t()?.matmul(&c.a)?;
    let dq = (da * d.scale())?;
    Tensor::stack(&[&dq, &dk, &dv], 0)? // [3, Bc, H, N, hd]
        .permute((1, 3, 0, 2, 4))? // [Bc, N, 3, H, hd]
        .contiguous()?
        .reshape((bc * n, 3 * w))
}

/// `a + b` element-wise (same shape, contiguous f32 on the CPU) into a new vector.
fn add_into_vec(a: &Tensor, b: &Tensor) -> CResult<Vec<f32>> {
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Storage::Cpu(ca), Storage::Cpu(cb)) = (&*sa, &*sb) else {
        candle_core::bail!("fused block: tensors are not on the CPU")
    };
    let (Some((a0, a1)), Some((b0, b1))) = (la.contiguous_offsets(), lb.contiguous_offsets())
    else {
        candle_core::bail!("fused block: tensors are not contiguous")
    };
    let (xa, xb) = (
        &ca.as_slice::<f32>()?[a0..a1],
        &cb.as_slice::<f32>()?[b0..b1],
    );
    let mut out = Vec::with_capacity(xa.len());
    xa.par_iter()
        .zip(xb.par_iter())
        .with_min_len(16384)
        .map(|(u, v)| u + v)
        .collect_into_vec(&mut out);
    Ok(out)
}

/// The block's graph node: holds the output computed by [`forward`] until candle asks for it,
/// and the cache for the backward.
struct BlockOp {
    y: Mutex<Option<Vec<f32>>>,
    cache: Cache,
    params: Params,
    dims: Dims,
}

impl BlockOp {
    fn output(&self, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let y = self
            .y
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused block: poisoned lock".into()))?
            .take();
        match y {
            Some(y) if y.len() == l.shape().elem_count() => {
                Ok((CpuStorage::F32(y), l.shape().clone()))
            }
            _ => {
                candle_core::bail!("fused block: the forward ran once already or on another input")
            }
        }
    }
}

/// Frozen parameters: the node has the input alone as operand, and its backward gives `dx`.
impl CustomOp1 for BlockOp {
    fn name(&self) -> &'static str {
        "vcp-block"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        self.output(l)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        let (dx, _) = run_backward(&self.params, &self.cache, self.dims, dy, false)?;
        Ok(Some(dx))
    }
}

/// Trained parameters: operands `x` and the packed parameters.
impl CustomOp2 for BlockOp {
    fn name(&self) -> &'static str {
        "vcp-block-train"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        self.output(l1)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _packed: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dp) = run_backward(&self.params, &self.cache, self.dims, dy, true)?;
        Ok((x.track_op().then_some(dx), dp))
    }
}

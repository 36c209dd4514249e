//! The optimiser: AdamW (decoupled decay, PyTorch's `torch.optim.AdamW` order: decay, then the
//! Adam step), as tensor ops on any device and in place on host memory.

use anyhow::Result;
use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Tensor, Var};

/// One trainable tensor and its optimiser state.
pub struct Param {
    pub name: String,
    pub var: Var,
    /// Decoupled weight decay applies (matrices; open_clip's rule `ndim >= 2`).
    pub decay: bool,
    pub lr_mult: f64,
    pub(crate) m: Tensor,
    pub(crate) v: Tensor,
}

impl Param {
    /// One AdamW update of this tensor with gradient `g`: in place on host memory (`cpu`), else
    /// with tensor ops (any device).
    pub fn update(&mut self, g: &Tensor, h: AdamHyper, cpu: bool) -> Result<()> {
        if cpu {
            return adamw_cpu_in_place(self.var.as_tensor(), g, &self.m, &self.v, h);
        }
        let (m, v, w) = adamw_tensor(self.var.as_tensor(), g, &self.m, &self.v, h)?;
        self.m = m;
        self.v = v;
        self.var.set(&w)?;
        Ok(())
    }
}

/// AdamW hyper-parameters of one update (bias corrections `c1 = 1 - b1^t`, `c2 = 1 - b2^t`).
#[derive(Clone, Copy)]
pub struct AdamHyper {
    pub lr: f64,
    pub b1: f64,
    pub b2: f64,
    pub c1: f64,
    pub c2: f64,
    pub eps: f64,
    pub wd: f64,
}

/// AdamW (decoupled decay, PyTorch's `torch.optim.AdamW` order: decay, then the Adam step)
/// with tensor ops: any device.
pub fn adamw_tensor(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: AdamHyper,
) -> Result<(Tensor, Tensor, Tensor)> {
    let m = ((m * h.b1)? + (g * (1.0 - h.b1))?)?;
    let v = ((v * h.b2)? + (g.sqr()? * (1.0 - h.b2))?)?;
    let denom = ((&v / h.c2)?.sqrt()? + h.eps)?;
    let step = ((&m / h.c1)? / denom)?;
    let w = (w.detach() * (1.0 - h.lr * h.wd))?;
    let w = (w - (step * h.lr)?)?;
    Ok((m, v, w))
}

/// Rows of work per rayon task in the in-place updates (large enough to amortise the task,
/// small enough to split a 6M-element token table over every core).
const CHUNK: usize = 1 << 14;

/// The contiguous f32 slice of a CPU storage, or an error naming the op.
fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: expects contiguous f32 tensors"),
    }
}

fn f32s_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{op}: expects contiguous f32 tensors"),
    }
}

/// `m <- beta m + (1 - beta) g` (first moment) or `v <- beta v + (1 - beta) g g` (second), in
/// place.
struct Moment {
    beta: f32,
    squared: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let (d, g) = (f32s_mut(dst, dl, self.name())?, f32s(g, gl, self.name())?);
        if d.len() != g.len() {
            candle_core::bail!(
                "adamw-moment: {} moments for {} gradients",
                d.len(),
                g.len()
            );
        }
        let (b, squared) = (self.beta, self.squared);
        d.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(d, g)| {
                // AVX2 when the CPU has it (same bits: element-wise, no FMA contraction).
                vcp_clip::fused::simd(
                    #[inline(always)]
                    || {
                        for (d, &g) in d.iter_mut().zip(g) {
                            // The same expressions, in the same order, as the tensor update.
                            *d = if squared {
                                b * *d + (1.0 - b) * g * g
                            } else {
                                b * *d + (1.0 - b) * g
                            };
                        }
                    },
                )
            });
        Ok(())
    }
}

/// `w <- w (1 - lr wd) - lr (m / c1) / (sqrt(v / c2) + eps)`, in place.
struct Weight {
    decay: f32,
    lr: f32,
    ic1: f32,
    ic2: f32,
    eps: f32,
}

impl InplaceOp3 for Weight {
    fn name(&self) -> &'static str {
        "adamw-weight"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let w = f32s_mut(dst, dl, self.name())?;
        let (m, v) = (f32s(m, ml, self.name())?, f32s(v, vl, self.name())?);
        if w.len() != m.len() || w.len() != v.len() {
            candle_core::bail!("adamw-weight: weights, moments of different sizes");
        }
        let Weight {
            decay,
            lr,
            ic1,
            ic2,
            eps,
        } = *self;
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(|((w, m), v)| {
                vcp_clip::fused::simd(
                    #[inline(always)]
                    || {
                        for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                            *w = *w * decay - lr * (m * ic1) / ((v * ic2).sqrt() + eps);
                        }
                    },
                )
            });
        Ok(())
    }
}

/// AdamW on host memory, in place: the moments `m`, `v` and the weights `w` are updated where
/// they are (no copy of the weights or the moments, nothing allocated), in three parallel
/// passes. On the CPU the copies this avoids dominated the update of the 49408-row token table
/// (four 25 MB copies out of candle's storage and one back into the variable, each into fresh
/// pages). All four tensors must be contiguous f32 on the CPU, `g` the same size.
pub fn adamw_cpu_in_place(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: AdamHyper,
) -> Result<()> {
    let g = g.contiguous()?;
    m.inplace_op2(
        &g,
        &Moment {
            beta: h.b1 as f32,
            squared: false,
        },
    )?;
    v.inplace_op2(
        &g,
        &Moment {
            beta: h.b2 as f32,
            squared: true,
        },
    )?;
    w.inplace_op3(
        m,
        v,
        &Weight {
            decay: (1.0 - h.lr * h.wd) as f32,
            lr: h.lr as f32,
            ic1: 1.0 / h.c1 as f32,
            ic2: 1.0 / h.c2 as f32,
            eps: h.eps as f32,
        },
    )?;
    Ok(())
}

//! Post-VCP (paper §3.4; reference `models/post_vcp.py` `Zero_Parameter`, used as `Zero_try`).
//!
//! The two text embeddings attend over the L2-normalised dense patch features of a layer:
//! queries from the text (`q_proj_pre`), keys and values from the patches (`k_proj_pre_1`,
//! `v_proj_pre_1`), `heads` heads, **no 1/sqrt(d) scaling** (the reference computes the scale but
//! never applies it), output projection (`proj_post_t`) and L2 normalisation. The refined text
//! embeddings live in the vision width and replace (not add to) the text embeddings for the
//! second map. One module is shared by all tapped layers.

use crate::params::Params;
use candle_core::{Result, Tensor, D};

pub struct PostVcp {
    q: (Tensor, Tensor), // [Wv, D], [Wv]
    k: (Tensor, Tensor), // [Wv, Wv]
    v: (Tensor, Tensor),
    out: (Tensor, Tensor),
    heads: usize,
    scaled: bool,
}

/// `x W^T + b` over the last dimension of `x` (any rank); `(W [out, in], b [out])`.
pub fn lin(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let n = *dims.last().unwrap();
    let rows = x.elem_count() / n;
    let y = x.reshape((rows, n))?.matmul(&w.t()?)?.broadcast_add(b)?;
    let mut od = dims;
    *od.last_mut().unwrap() = w.dim(0)?;
    y.reshape(od)
}

pub fn l2norm(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

impl PostVcp {
    pub fn new(
        p: &mut Params,
        text_dim: usize,
        vision_width: usize,
        heads: usize,
        scaled: bool,
    ) -> Result<Self> {
        if heads == 0 || !vision_width.is_multiple_of(heads) {
            candle_core::bail!(
                "Post-VCP: vision width {vision_width} is not divisible by {heads} heads"
            );
        }
        // PyTorch Conv1d(kernel 1) default init: U(±1/sqrt(fan_in)) for weight and bias.
        let mut layer = |name: &str, fan_in: usize| -> Result<(Tensor, Tensor)> {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Ok((
                p.uniform(
                    &format!("post_vcp.{name}.weight"),
                    (vision_width, fan_in),
                    bound,
                )?,
                p.uniform(&format!("post_vcp.{name}.bias"), vision_width, bound)?,
            ))
        };
        Ok(Self {
            q: layer("q", text_dim)?,
            k: layer("k", vision_width)?,
            v: layer("v", vision_width)?,
            out: layer("out", vision_width)?,
            heads,
            scaled,
        })
    }

    /// Refined text embeddings, plus the intermediates the parity tests check.
    ///
    /// # Shapes
    /// `text`: [B, 2, D] (normalised); `dense`: [B, N, Wv] (normalised patch tokens) →
    /// `(refined [B, 2, Wv] normalised, q [B, 2, Wv], k [B, N, Wv], v [B, N, Wv], attn_out [B, 2, Wv])`.
    pub fn refine_full(&self, text: &Tensor, dense: &Tensor) -> Result<[Tensor; 5]> {
        let (b, t, _) = text.dims3()?;
        let (_, n, w) = dense.dims3()?;
        let hd = w / self.heads;
        let q = lin(text, &self.q)?; // [B, T, Wv]
        let k = lin(dense, &self.k)?; // [B, N, Wv]
        let v = lin(dense, &self.v)?;
        let qh = q
            .reshape((b, t, self.heads, hd))?
            .transpose(1, 2)?
            .contiguous()?; // [B, H, T, hd]
        let kh = k
            .reshape((b, n, self.heads, hd))?
            .transpose(1, 2)?
            .contiguous()?; // [B, H, N, hd]
        let vh = v
            .reshape((b, n, self.heads, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let mut logits = qh.matmul(&kh.t()?)?; // [B, H, T, N]
        if self.scaled {
            logits = (logits * (hd as f64).powf(-0.5))?;
        }
        let attn = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let o = attn.matmul(&vh)?.transpose(1, 2)?.reshape((b, t, w))?; // [B, T, Wv]
        let refined = l2norm(&lin(&o, &self.out)?)?;
        Ok([refined, q, k, v, o])
    }

    pub fn refine(&self, text: &Tensor, dense: &Tensor) -> Result<Tensor> {
        let [r, ..] = self.refine_full(text, dense)?;
        Ok(r)
    }
}

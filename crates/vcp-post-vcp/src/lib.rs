//! # vcp-post-vcp: the `refiner` slot's VCP-CLIP kind
//!
//! Post-VCP (VCP-CLIP §3.4; reference `models/post_vcp.py` `Zero_Parameter`, used as
//! `Zero_try`): the two text embeddings attend over the L2-normalised dense patch features of a
//! layer: queries from the text (`q_proj_pre`), keys and values from the patches
//! (`k_proj_pre_1`, `v_proj_pre_1`), `heads` heads, **no 1/sqrt(d) scaling** (the reference
//! computes the scale but never applies it), output projection (`proj_post_t`) and L2
//! normalisation. The refined text embeddings live in the vision width and replace (not add to)
//! the text embeddings for the second map. One module is shared by all tapped layers.
//! `kind = "identity"` is no refiner (no second branch).

use candle_core::{Result, Tensor, D};
use serde::{Deserialize, Serialize};
use vcp_core::{l2norm, BuildCtx, Linear, Params, Refiner, Registry, Trace};

/// `[refiner] kind = "post_vcp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostVcpConfig {
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// The reference computes `dim^-0.5` but never applies it.
    #[serde(default)]
    pub scaled: bool,
}

fn default_heads() -> usize {
    8
}

/// `[refiner] kind = "identity"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {}

/// Register this crate's kinds of the `refiner` slot.
pub fn register(reg: &mut Registry) {
    reg.refiner
        .register::<IdentityConfig>("identity", "no refiner (one branch)", |_, _| Ok(None));
    reg.refiner.register::<PostVcpConfig>(
        "post_vcp",
        "VCP-CLIP Post-VCP: text attends over the dense patch features",
        |c, ctx: &mut BuildCtx| {
            let (embed, vw) = (ctx.embed_dim()?, ctx.vision_width());
            Ok(Some(Box::new(PostVcp::new(
                ctx.params, embed, vw, c.heads, c.scaled,
            )?)))
        },
    );
}

pub struct PostVcp {
    q: Linear, // D → Wv
    k: Linear, // Wv → Wv
    v: Linear,
    out: Linear,
    heads: usize,
    scaled: bool,
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
        let mut layer = |name: &str, fan_in: usize| {
            Linear::torch_default(p, &format!("post_vcp.{name}"), fan_in, vision_width)
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
}

impl Refiner for PostVcp {
    /// Also records q `[B, 2, Wv]`, k and v `[B, N, Wv]`, the attention output `[B, 2, Wv]` and
    /// the refined embeddings in the trace (the parity tests check them).
    fn refine(&self, text: &Tensor, dense: &Tensor, trace: Option<&mut Trace>) -> Result<Tensor> {
        let (b, t, _) = text.dims3()?;
        let (_, n, w) = dense.dims3()?;
        let hd = w / self.heads;
        let q = self.q.forward(text)?; // [B, T, Wv]
        let k = self.k.forward(dense)?; // [B, N, Wv]
        let v = self.v.forward(dense)?;
        let split = |x: &Tensor, len: usize| -> Result<Tensor> {
            x.reshape((b, len, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous() // [B, H, len, hd]
        };
        let (qh, kh, vh) = (split(&q, t)?, split(&k, n)?, split(&v, n)?);
        let mut logits = qh.matmul(&kh.t()?)?; // [B, H, T, N]
        if self.scaled {
            logits = (logits * (hd as f64).powf(-0.5))?;
        }
        let attn = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let o = attn.matmul(&vh)?.transpose(1, 2)?.reshape((b, t, w))?; // [B, T, Wv]
        let refined = l2norm(&self.out.forward(&o)?)?;
        if let Some(tr) = trace {
            tr.push("post_vcp.q", q);
            tr.push("post_vcp.k", k);
            tr.push("post_vcp.v", v);
            tr.push("post_vcp.attn_out", o);
            tr.push("post_vcp.refined", refined.clone());
        }
        Ok(refined)
    }
}

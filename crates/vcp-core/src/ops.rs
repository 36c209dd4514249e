//! Small ops shared by components: one trainable linear type, L2 normalisation, a layer norm
//! with a backward, multi-head attention, and bilinear upsampling built from matmuls.

use crate::params::Params;
use candle_core::{Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// `x W^T + b` over the last dimension of `x` (any rank).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`
    pub weight: Tensor,
    /// `[out]`
    pub bias: Tensor,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias }
    }

    /// PyTorch's default `nn.Linear` / `Conv1d(kernel 1)` init: weight and bias
    /// `U(±1/sqrt(fan_in))`, registered as `{name}.weight`, `{name}.bias`.
    pub fn torch_default(p: &mut Params, name: &str, fan_in: usize, out: usize) -> Result<Self> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        Ok(Self {
            weight: p.uniform(&format!("{name}.weight"), (out, fan_in), bound)?,
            bias: p.uniform(&format!("{name}.bias"), out, bound)?,
        })
    }

    pub fn out_dim(&self) -> Result<usize> {
        self.weight.dim(0)
    }

    /// # Shapes
    /// `x`: `[.., in]` → `[.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let n = *dims.last().expect("a tensor of rank >= 1");
        let rows = x.elem_count() / n;
        let y = x
            .reshape((rows, n))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let mut od = dims;
        *od.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(od)
    }
}

/// L2 normalisation over the last dimension.
pub use vcp_clip::block::l2norm;

/// A trainable layer norm (gain, bias) over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    /// Gain 1, bias 0 (PyTorch's init), registered as `{name}.weight`, `{name}.bias`.
    pub fn new(p: &mut Params, name: &str, dim: usize, eps: f32) -> Result<Self> {
        Ok(Self {
            weight: p.constant(&format!("{name}.weight"), dim, 1.0)?,
            bias: p.constant(&format!("{name}.bias"), dim, 0.0)?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The generic op: it has a backward (candle's fused layer_norm has none).
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps)
    }
}

/// Multi-head attention with separate q/k/v/out projections (weights `U(±1/sqrt(d))`, biases 0).
#[derive(Debug, Clone)]
pub struct Mha {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub heads: usize,
}

impl Mha {
    pub fn new(p: &mut Params, name: &str, dim: usize, heads: usize) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            candle_core::bail!("{name}: dim {dim} is not divisible by {heads} heads");
        }
        let bound = 1.0 / (dim as f64).sqrt();
        let mut l = |n: &str| -> Result<Linear> {
            Ok(Linear::new(
                p.uniform(&format!("{name}.{n}.weight"), (dim, dim), bound)?,
                p.constant(&format!("{name}.{n}.bias"), dim, 0.0)?,
            ))
        };
        Ok(Self {
            q: l("q")?,
            k: l("k")?,
            v: l("v")?,
            o: l("o")?,
            heads,
        })
    }

    /// Scaled dot-product attention of `x` over `mem`.
    ///
    /// # Shapes
    /// `x`: [B, Q, d], `mem`: [B, M, d] → [B, Q, d].
    pub fn forward(&self, x: &Tensor, mem: &Tensor) -> Result<Tensor> {
        let (b, nq, d) = x.dims3()?;
        let nm = mem.dim(1)?;
        let h = self.heads;
        let hd = d / h;
        let split = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((b, n, h, hd))?.transpose(1, 2)?.contiguous() // [B, H, n, hd]
        };
        let q = split(self.q.forward(x)?, nq)?;
        let k = split(self.k.forward(mem)?, nm)?;
        let v = split(self.v.forward(mem)?, nm)?;
        let s = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?; // [B, H, Q, M]
        let a = candle_nn::ops::softmax(&s, D::Minus1)?;
        let o = a.matmul(&v)?.transpose(1, 2)?.reshape((b, nq, d))?;
        self.o.forward(&o)
    }
}

/// Bilinear upsampling mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upsample {
    /// Bilinear, `align_corners = True` (the reference).
    BilinearAlignCorners,
    /// Bilinear, `align_corners = False`.
    Bilinear,
}

/// Bilinear interpolation matrix `[out, in]` (PyTorch semantics for both corner modes).
pub fn interp_matrix(inp: usize, out: usize, align_corners: bool, dev: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; out * inp];
    for i in 0..out {
        let src = if align_corners {
            if out > 1 {
                i as f64 * (inp as f64 - 1.0) / (out as f64 - 1.0)
            } else {
                0.0
            }
        } else {
            ((i as f64 + 0.5) * inp as f64 / out as f64 - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let w = (src - i0 as f64) as f32;
        m[i * inp + i0] += 1.0 - w;
        m[i * inp + i1] += w;
    }
    Tensor::from_vec(m, (out, inp), dev)
}

/// Upsampling as `R X R^T` with an interpolation matrix `R`: the same numbers as PyTorch's
/// bilinear `F.interpolate`, but built from matmuls, which have a backward in candle (its
/// `upsample_bilinear2d` has none).
///
/// # Shapes
/// `x`: [B, C, g, g] → [B, C, S, S].
pub fn upsample(x: &Tensor, size: usize, mode: Upsample) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let align = mode == Upsample::BilinearAlignCorners;
    let ry = interp_matrix(h, size, align, x.device())?; // [S, h]
    let rx = interp_matrix(w, size, align, x.device())?; // [S, w]
    let y = x.reshape((b * c, h, w))?.broadcast_matmul(&rx.t()?)?; // [BC, h, S]
    let y = ry.broadcast_left(b * c)?.matmul(&y)?; // [BC, S, S]
    y.reshape((b, c, size, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// The attention against a hand computation on a 1-head, 2-dim toy case with identity
    /// projections: `o = softmax(q k^T / sqrt(2)) v`.
    #[test]
    fn attention_matches_hand_computation() {
        let dev = Device::Cpu;
        let mut p = Params::new(0, &dev);
        let mut a = Mha::new(&mut p, "t", 2, 1).unwrap();
        let eye = Tensor::eye(2, DType::F32, &dev).unwrap();
        let zero = Tensor::zeros(2, DType::F32, &dev).unwrap();
        for l in [&mut a.q, &mut a.k, &mut a.v, &mut a.o] {
            *l = Linear::new(eye.clone(), zero.clone());
        }
        let x = Tensor::new(&[[[1f32, 0.0]]], &dev).unwrap(); // one query
        let mem = Tensor::new(&[[[1f32, 0.0], [0.0, 2.0], [1.0, 1.0]]], &dev).unwrap();
        let got = a.forward(&x, &mem).unwrap().flatten_all().unwrap();
        let got = got.to_vec1::<f32>().unwrap();
        // scores q.k / sqrt 2 = [1, 0, 1] / 1.41421
        let s = [1.0f64, 0.0, 1.0].map(|v| (v / 2f64.sqrt()).exp());
        let z: f64 = s.iter().sum();
        let w = s.map(|v| v / z);
        let want = [w[0] + w[2], 2.0 * w[1] + w[2]];
        for (g, e) in got.iter().zip(want) {
            assert!((*g as f64 - e).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    /// A linear layer on a rank-3 input against a hand computation.
    #[test]
    fn linear_any_rank_by_hand() {
        let dev = Device::Cpu;
        let l = Linear::new(
            Tensor::new(&[[1f32, 2.0], [0.0, -1.0], [3.0, 0.5]], &dev).unwrap(),
            Tensor::new(&[0.5f32, 0.0, -1.0], &dev).unwrap(),
        );
        let x = Tensor::new(&[[[1f32, 1.0], [2.0, -1.0]]], &dev).unwrap();
        let y = l.forward(&x).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(y, vec![vec![vec![3.5, -1.0, 2.5], vec![0.5, 1.0, 4.5]]]);
    }
}

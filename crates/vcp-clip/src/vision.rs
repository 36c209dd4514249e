//! The CLIP image tower, opened up for dense prediction
//! (openai/CLIP `clip/model.py` `VisionTransformer`; VCP-CLIP `models/transformer.py`).
//!
//! Differences from a classification CLIP, all needed by zero-shot anomaly segmentation:
//! * any input size: the positional embedding is resized once, at construction, with PyTorch's
//!   antialiased bicubic (VCP-CLIP `resize_pos_embed`, e.g. 24x24 → 37x37 for 518 px);
//! * the residual stream after any set of blocks is returned, class token first, without
//!   `ln_post` (VCP-CLIP `features_list = [6, 12, 18, 24]`);
//! * the global embedding `ln_post(x[:, 0]) @ proj` is returned unnormalised;
//! * optionally a *dense path* ([`DensePath`]) branches off for the last blocks, with value-value
//!   or query-query attention, and the taps in those blocks come from it; the global embedding
//!   always comes from CLIP's own path, so image-level components see unchanged inputs.
//!
//! In bf16/f16 the tower computes in that dtype (LayerNorm and softmax in f32) and returns f32.

use crate::block::{Block, Kernels, LayerNorm, Scores};
use crate::config::{Activation, VisionConfig};
use crate::error::{ClipError, Result};
use crate::weights::ClipWeights;
use candle_core::{DType, Tensor};
use vcp_data::resample::{resize_planar_f32, Filter};

/// What the image tower returns for a batch.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// `(block, tokens)` for each requested tap (1-based block index, as in VCP-CLIP):
    /// the residual stream after that block, `[B, 1 + g*g, W]`, class token first.
    pub layers: Vec<(usize, Tensor)>,
    /// `ln_post(class token of the last block) @ proj`, `[B, D]`, not normalised.
    pub global: Tensor,
    /// Patch grid side `g = image_size / patch`.
    pub grid: usize,
}

impl VisionOutput {
    /// Tokens after block `k` (1-based), if it was tapped.
    pub fn layer(&self, k: usize) -> Option<&Tensor> {
        self.layers.iter().find(|(i, _)| *i == k).map(|(_, t)| t)
    }
}

/// A second residual stream for dense features in the last blocks (training-free "dense CLIP"
/// variants). It starts from CLIP's stream before block `depth - blocks + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DensePath {
    /// CLIP's own attention everywhere.
    #[default]
    None,
    /// AnomalyCLIP (DPAM): in the last `blocks` blocks the query-key attention is replaced by
    /// value-value attention; residuals and MLPs are kept (`d = d + vv(ln_1 d); d = d + mlp(d)`).
    ValueValue { blocks: usize },
    /// CLIP Surgery's parallel path: `d = d + vv(ln_1 x)` over the last `blocks` blocks, where `x`
    /// is CLIP's own stream entering the block; no MLP on the dense path.
    Surgery { blocks: usize },
    /// ClearCLIP: the last block without residual and MLP, with query-query attention
    /// (`d = qq(ln_1 x)`).
    ClearClip,
    /// MaskCLIP-style self-only attention in the last `blocks` blocks (each token attends only
    /// to itself, i.e. its own value; residuals and MLPs kept): `d = d + out(v(ln_1 d)); d = d +
    /// mlp(d)`. Keeps each patch's own content, which CLIP's global attention mixes away.
    SelfOnly { blocks: usize },
}

impl DensePath {
    /// Number of final blocks the dense path covers.
    pub fn blocks(&self) -> usize {
        match *self {
            DensePath::None => 0,
            DensePath::ValueValue { blocks }
            | DensePath::Surgery { blocks }
            | DensePath::SelfOnly { blocks } => blocks,
            DensePath::ClearClip => 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct VisionTower {
    cfg: VisionConfig,
    image_size: usize,
    patch_weight: Tensor,    // [W, 3, p, p]
    class_embedding: Tensor, // [W]
    pos_embedding: Tensor,   // [1 + g*g, W], resized for `image_size`
    ln_pre: LayerNorm,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
    proj: Tensor, // [D, W] (Linear weight, no bias)
    kernels: Kernels,
    dense: DensePath,
    /// Compute dtype (that of the blocks' weights).
    dtype: DType,
}

impl VisionTower {
    /// Build for input images of `image_size` x `image_size` (a multiple of the patch size).
    pub fn new(w: &ClipWeights, image_size: usize, act: Activation) -> Result<Self> {
        let cfg = w.config.vision.clone();
        if image_size == 0 || !image_size.is_multiple_of(cfg.patch_size) {
            return Err(ClipError::Config(format!(
                "image size {image_size} is not a positive multiple of the patch size {}",
                cfg.patch_size
            )));
        }
        let pos = w.get("vision_model.embeddings.position_embedding.weight")?;
        let patch_weight = w
            .get("vision_model.embeddings.patch_embedding.weight")?
            .clone();
        let dtype = w
            .get("vision_model.encoder.layers.0.self_attn.q_proj.weight")?
            .dtype();
        let pos_embedding = resize_pos_embed(pos, cfg.native_grid(), image_size / cfg.patch_size)?
            .to_dtype(dtype)?;
        let blocks = (0..cfg.layers)
            .map(|i| {
                Block::load(
                    w,
                    &format!("vision_model.encoder.layers.{i}"),
                    cfg.heads,
                    cfg.ln_eps,
                    act,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            image_size,
            patch_weight,
            class_embedding: w
                .get("vision_model.embeddings.class_embedding")?
                .to_dtype(dtype)?,
            pos_embedding,
            ln_pre: LayerNorm::load(w, "vision_model.pre_layrnorm", cfg.ln_eps)?,
            blocks,
            ln_post: LayerNorm::load(w, "vision_model.post_layernorm", cfg.ln_eps)?,
            proj: w.get("visual_projection.weight")?.clone(),
            kernels: Kernels::Fused,
            dense: DensePath::None,
            dtype,
            cfg,
        })
    }

    /// Select the dense path (see [`DensePath`]); errors if it covers more blocks than exist.
    pub fn set_dense_path(&mut self, dense: DensePath) -> Result<()> {
        let n = dense.blocks();
        if (n == 0 && dense != DensePath::None) || n > self.blocks.len() {
            return Err(ClipError::Config(format!(
                "dense path over {n} blocks: the vision tower has {} (use 1..={0})",
                self.blocks.len()
            )));
        }
        self.dense = dense;
        Ok(())
    }
    pub fn dense_path(&self) -> DensePath {
        self.dense
    }
    /// The compute dtype (f32, bf16 or f16); outputs are always f32.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }
    pub fn image_size(&self) -> usize {
        self.image_size
    }
    pub fn grid(&self) -> usize {
        self.image_size / self.cfg.patch_size
    }
    pub fn width(&self) -> usize {
        self.cfg.width
    }
    pub fn embed_dim(&self) -> Result<usize> {
        Ok(self.proj.dim(0)?)
    }
    /// The positional embedding actually added to the tokens, `[1 + g*g, W]`.
    pub fn positional_embedding(&self) -> &Tensor {
        &self.pos_embedding
    }
    /// Use differentiable kernels (only needed to backpropagate into the image).
    pub fn set_kernels(&mut self, k: Kernels) {
        self.kernels = k;
    }

    /// Patch tokens + class token + positional embedding, then `ln_pre`.
    ///
    /// # Shapes
    /// `pixels`: [B, 3, S, S] → [B, 1 + g*g, W].
    pub fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, wd) = pixels.dims4()?;
        if c != 3 || h != self.image_size || wd != self.image_size {
            return Err(ClipError::Input(format!(
                "expected images of shape [B, 3, {s}, {s}], got {:?}",
                pixels.dims(),
                s = self.image_size
            )));
        }
        let p = self.cfg.patch_size;
        let pixels = pixels.to_dtype(self.patch_weight.dtype())?;
        let x = pixels
            .conv2d(&self.patch_weight, 0, p, 1, 1)? // [B, W, g, g]
            .to_dtype(self.dtype)?;
        let x = x.flatten_from(2)?.transpose(1, 2)?; // [B, g*g, W]
        let cls = self
            .class_embedding
            .reshape((1, 1, self.cfg.width))?
            .broadcast_as((b, 1, self.cfg.width))?;
        let x = Tensor::cat(&[&cls.contiguous()?, &x.contiguous()?], 1)?; // [B, 1 + g*g, W]
        let x = x.broadcast_add(&self.pos_embedding)?;
        self.ln_pre.forward(&x, self.kernels)
    }

    /// Run the tower and return the taps (1-based block indices) and the global embedding.
    ///
    /// # Shapes
    /// `pixels`: [B, 3, S, S]; see [`VisionOutput`].
    pub fn forward(&self, pixels: &Tensor, taps: &[usize]) -> Result<VisionOutput> {
        if let Some(&bad) = taps.iter().find(|&&t| t == 0 || t > self.blocks.len()) {
            return Err(ClipError::Config(format!(
                "tap layer {bad} is outside 1..={} (the vision tower's blocks)",
                self.blocks.len()
            )));
        }
        let mut x = self.embed(pixels)?;
        let mut layers = Vec::with_capacity(taps.len());
        let depth = self.blocks.len();
        let start = depth - self.dense.blocks(); // 0-based first block of the dense path
        let mut dense: Option<Tensor> = None;
        let k = self.kernels;
        for (i, block) in self.blocks.iter().enumerate() {
            if i >= start {
                let d = dense.take().unwrap_or_else(|| x.clone());
                dense = Some(match self.dense {
                    DensePath::None => unreachable!("no dense blocks"),
                    DensePath::ValueValue { .. } => {
                        block.forward_scores(&d, None, k, Scores::ValueValue)?
                    }
                    DensePath::SelfOnly { .. } => {
                        block.forward_scores(&d, None, k, Scores::SelfOnly)?
                    }
                    DensePath::Surgery { .. } => {
                        (d + block.attention_only(&x, None, k, Scores::ValueValue)?)?
                    }
                    DensePath::ClearClip => {
                        block.attention_only(&x, None, k, Scores::QueryQuery)?
                    }
                });
            }
            // CLIP's own stream is still needed for the global embedding (and as the dense
            // path's input for Surgery / ClearCLIP).
            x = block.forward(&x, None, k)?;
            if taps.contains(&(i + 1)) {
                let t = dense.as_ref().unwrap_or(&x);
                layers.push((i + 1, t.to_dtype(DType::F32)?));
            }
        }
        // Keep the caller's tap order.
        layers.sort_by_key(|(i, _)| taps.iter().position(|t| t == i));
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?; // [B, W]
                                                  // The projection as a per-row product-and-sum rather than a matmul: gemm's kernels (and
                                                  // so the last bits) depend on the number of rows, and the global embedding of an image
                                                  // must not depend on which other images share its batch (cached features, Pre-VCP).
        let cls = self.ln_post.forward_f32(&cls, k)?; // [B, W], f32
        let global = cls
            .unsqueeze(1)?
            .broadcast_mul(&self.proj.to_dtype(DType::F32)?.unsqueeze(0)?)? // [B, D, W]
            .sum(2)?; // [B, D]
        Ok(VisionOutput {
            layers,
            global,
            grid: self.grid(),
        })
    }

    /// `ln_post` then the visual projection, for any tokens `[.., W]` → `[.., D]`
    /// (some heads map dense tokens into the joint space this way).
    pub fn post_project(&self, tokens: &Tensor) -> Result<Tensor> {
        let y = self.project(
            &self
                .ln_post
                .forward(&tokens.to_dtype(self.dtype)?, self.kernels)?,
        )?;
        Ok(y.to_dtype(tokens.dtype())?)
    }

    fn project(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let rows = x.elem_count() / self.cfg.width;
        let y = x.reshape((rows, self.cfg.width))?.matmul(&self.proj.t()?)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.proj.dim(0)?;
        Ok(y.reshape(out)?)
    }

    /// The projection matrix as a Linear weight `[D, W]`.
    pub fn projection(&self) -> &Tensor {
        &self.proj
    }

    /// Block `i` (0-based).
    pub fn block(&self, i: usize) -> &Block {
        &self.blocks[i]
    }

    /// Number of blocks.
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }
}

/// Resize a `[1 + g0*g0, W]` positional embedding to `[1 + g1*g1, W]`: the class row is kept,
/// the grid is resized as a W-channel image with antialiased bicubic (PyTorch semantics).
pub fn resize_pos_embed(pos: &Tensor, g0: usize, g1: usize) -> Result<Tensor> {
    let (n, w) = pos.dims2()?;
    if n != g0 * g0 + 1 {
        return Err(ClipError::BadShape {
            name: "positional embedding".into(),
            got: vec![n, w],
            expected: vec![g0 * g0 + 1, w],
        });
    }
    if g0 == g1 {
        return Ok(pos.clone());
    }
    let cls = pos.narrow(0, 0, 1)?;
    let grid = pos.narrow(0, 1, g0 * g0)?.t()?.contiguous()?; // [W, g0*g0]
    let data = grid
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let resized = resize_planar_f32(&data, w, (g0, g0), (g1, g1), Filter::Bicubic);
    let grid = Tensor::from_vec(resized, (w, g1 * g1), pos.device())?
        .t()?
        .to_dtype(pos.dtype())?; // [g1*g1, W]
    Ok(Tensor::cat(&[&cls, &grid.contiguous()?], 0)?)
}

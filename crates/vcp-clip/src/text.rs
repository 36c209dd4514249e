//! The CLIP text tower with the hooks prompt learning needs
//! (openai/CLIP `clip/model.py` `CLIP.encode_text`; VCP-CLIP `models/model_CLIP.py` `encode_text`).
//!
//! The forward is split into its stages so that prompt components can work between them:
//! token embedding → (splice learned tokens) → + positional embedding → blocks, each preceded
//! by a [`PromptHook`] (deep prompts) → hook's final step → `ln_final` → pool at the
//! end-of-text index → projection.
//!
//! All kernels are the differentiable ones: gradients flow from the output back into input
//! embeddings and inserted tokens. The CLIP weights are plain tensors (not `Var`s), so they
//! receive no gradient and never change.

use crate::block::{Block, Kernels, LayerNorm};
use crate::config::{Activation, TextConfig};
use crate::error::{ClipError, Result};
use crate::weights::ClipWeights;
use candle_core::{DType, Tensor};

/// Called around the text blocks; the deep-prompt (DTP) mechanism plugs in here.
pub trait PromptHook {
    /// Hidden states before block `layer` (0-based) → states fed to that block.
    fn before_layer(&self, layer: usize, x: &Tensor) -> Result<Tensor>;
    /// Hidden states after the last block → states given to `ln_final`.
    fn after_layers(&self, x: &Tensor) -> Result<Tensor>;
}

/// No hook: the plain CLIP text encoder.
pub struct NoHook;

impl PromptHook for NoHook {
    fn before_layer(&self, _layer: usize, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn after_layers(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
}

/// Deep prompts as VCP-CLIP (and VPT-deep) use them, sequence length unchanged:
/// before block 0 the `n` tokens are inserted right after the start token and the last `n`
/// positions are dropped; before each later block `i` with `tokens[i]` present, positions
/// `1..=n` are overwritten (replaced, not accumulated); after the last block positions `1..=n`
/// are removed, so the output has `L - n` positions and EOT indices are those of the prompt
/// without the deep tokens.
pub struct InsertedTokens {
    /// Per block, `[n, W]` (same for the whole batch) or `[B, n, W]`; `None` keeps what is there.
    pub tokens: Vec<Option<Tensor>>,
}

impl InsertedTokens {
    fn n(&self) -> usize {
        self.tokens
            .iter()
            .flatten()
            .next()
            .map(|t| t.dim(t.rank() - 2).unwrap_or(0))
            .unwrap_or(0)
    }

    fn batch(t: &Tensor, b: usize) -> Result<Tensor> {
        Ok(if t.rank() == 2 {
            t.unsqueeze(0)?
                .broadcast_as((b, t.dim(0)?, t.dim(1)?))?
                .contiguous()?
        } else {
            t.clone()
        })
    }
}

impl PromptHook for InsertedTokens {
    fn before_layer(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        let Some(Some(t)) = self.tokens.get(layer) else {
            return Ok(x.clone());
        };
        let (b, l, _) = x.dims3()?;
        let n = self.n();
        let t = Self::batch(&t.to_dtype(x.dtype())?, b)?;
        let head = x.narrow(1, 0, 1)?;
        if layer == 0 {
            let tail = x.narrow(1, 1, l - 1 - n)?; // drop the last n positions
            Ok(Tensor::cat(&[&head, &t, &tail], 1)?)
        } else {
            let tail = x.narrow(1, 1 + n, l - 1 - n)?;
            Ok(Tensor::cat(&[&head, &t, &tail], 1)?)
        }
    }

    fn after_layers(&self, x: &Tensor) -> Result<Tensor> {
        let n = self.n();
        if n == 0 {
            return Ok(x.clone());
        }
        let l = x.dim(1)?;
        Ok(Tensor::cat(
            &[&x.narrow(1, 0, 1)?, &x.narrow(1, 1 + n, l - 1 - n)?],
            1,
        )?)
    }
}

#[derive(Debug, Clone)]
pub struct TextTower {
    cfg: TextConfig,
    token_embedding: Tensor, // [V + extra, W]
    pos_embedding: Tensor,   // [C, W]
    blocks: Vec<Block>,
    ln_final: LayerNorm,
    proj: Tensor,   // [D, W] Linear weight
    causal: Tensor, // [C, C] additive mask (f32: added to f32 scores)
    /// Compute dtype of the blocks; embeddings, LayerNorms and the projection stay f32.
    dtype: DType,
}

impl TextTower {
    /// `extra_tokens` zero rows are appended to the token table for added special tokens
    /// (VCP-CLIP's `<|class|>` = id 49408, whose embedding is always overwritten).
    pub fn new(w: &ClipWeights, act: Activation, extra_tokens: usize) -> Result<Self> {
        let cfg = w.config.text.clone();
        let mut token_embedding = w
            .get("text_model.embeddings.token_embedding.weight")?
            .clone();
        if extra_tokens > 0 {
            let zeros = Tensor::zeros(
                (extra_tokens, cfg.width),
                token_embedding.dtype(),
                token_embedding.device(),
            )?;
            token_embedding = Tensor::cat(&[&token_embedding, &zeros], 0)?;
        }
        let blocks = (0..cfg.layers)
            .map(|i| {
                Block::load(
                    w,
                    &format!("text_model.encoder.layers.{i}"),
                    cfg.heads,
                    cfg.ln_eps,
                    act,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let c = cfg.context_length;
        let mask: Vec<f32> = (0..c * c)
            .map(|i| {
                if i % c > i / c {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let device = token_embedding.device().clone();
        let dtype = w
            .get("text_model.encoder.layers.0.self_attn.q_proj.weight")
            .map(|t| t.dtype())
            .unwrap_or(DType::F32);
        Ok(Self {
            dtype,
            token_embedding,
            pos_embedding: w
                .get("text_model.embeddings.position_embedding.weight")?
                .clone(),
            blocks,
            ln_final: LayerNorm::load(w, "text_model.final_layer_norm", cfg.ln_eps)?,
            proj: w.get("text_projection.weight")?.clone(),
            causal: Tensor::from_vec(mask, (c, c), &device)?,
            cfg,
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }
    pub fn width(&self) -> usize {
        self.cfg.width
    }
    pub fn context_length(&self) -> usize {
        self.cfg.context_length
    }
    pub fn embed_dim(&self) -> Result<usize> {
        Ok(self.proj.dim(0)?)
    }
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }
    /// The compute dtype of the blocks (inputs are cast to it; outputs are f32).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn vocab_size(&self) -> Result<usize> {
        Ok(self.token_embedding.dim(0)?)
    }

    /// Token embeddings without positions.
    ///
    /// # Shapes
    /// `ids`: [B, L] (u32) → [B, L, W].
    pub fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let ids = ids.to_dtype(DType::U32)?;
        let v = self.vocab_size()? as u32;
        if let Some(bad) = ids
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .find(|&i| i >= v)
        {
            return Err(ClipError::Input(format!(
                "token id {bad} is outside the vocabulary of {v}"
            )));
        }
        Ok(self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, self.cfg.width))?)
    }

    /// `[C, W]` positional embedding.
    pub fn positional_embedding(&self) -> &Tensor {
        &self.pos_embedding
    }

    /// Run the blocks on embedded input (positions already added), with a hook around them,
    /// then `ln_final`. Returns the final hidden states `[B, L', W]` (L' = what the hook leaves).
    pub fn encode_hidden(&self, x: &Tensor, hook: &dyn PromptHook) -> Result<Tensor> {
        let l = x.dim(1)?;
        if l > self.cfg.context_length {
            return Err(ClipError::Input(format!(
                "text sequence of {l} positions exceeds the context length {}",
                self.cfg.context_length
            )));
        }
        let mut x = x.to_dtype(self.dtype)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = hook.before_layer(i, &x)?;
            let n = x.dim(1)?;
            let mask = self.causal.narrow(0, 0, n)?.narrow(1, 0, n)?;
            x = block.forward(&x, Some(&mask), Kernels::Differentiable)?;
        }
        let x = hook.after_layers(&x)?;
        self.ln_final.forward_f32(&x, Kernels::Differentiable)
    }

    /// Hidden states at per-row end-of-text positions, then the text projection.
    ///
    /// # Shapes
    /// `hidden`: [B, L, W], `eot`: B indices → [B, D] (not normalised).
    pub fn pool_project(&self, hidden: &Tensor, eot: &[usize]) -> Result<Tensor> {
        let (b, l, w) = hidden.dims3()?;
        if eot.len() != b {
            return Err(ClipError::Input(format!(
                "{} EOT indices for a batch of {b}",
                eot.len()
            )));
        }
        if let Some(&bad) = eot.iter().find(|&&e| e >= l) {
            return Err(ClipError::Input(format!(
                "EOT index {bad} outside a sequence of {l}"
            )));
        }
        let idx: Vec<u32> = eot
            .iter()
            .enumerate()
            .map(|(i, &e)| (i * l + e) as u32)
            .collect();
        let idx = Tensor::from_vec(idx, b, hidden.device())?;
        let pooled = hidden.reshape((b * l, w))?.index_select(&idx, 0)?; // [B, W]
        Ok(pooled.matmul(&self.proj.t()?)?)
    }

    /// Full text forward from input embeddings (positions already added).
    ///
    /// # Shapes
    /// `x`: [B, L, W] → [B, D] (not normalised).
    pub fn forward_embeds(
        &self,
        x: &Tensor,
        eot: &[usize],
        hook: &dyn PromptHook,
    ) -> Result<Tensor> {
        let hidden = self.encode_hidden(x, hook)?;
        self.pool_project(&hidden, eot)
    }

    /// Standard CLIP text encoding from token ids. EOT = first position of the end-of-text id
    /// 49407 (HF `eos_token_id` pooling), else of the largest id (OpenAI's `argmax`); the two agree
    /// unless an added special token such as `<|class|>` (49408) is present.
    ///
    /// # Shapes
    /// `ids`: [B, L] → [B, D] (not normalised).
    pub fn forward_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let eot: Vec<usize> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by_key(|(i, &v)| (v, std::cmp::Reverse(*i)))
                    .map(|(i, _)| i)
                    .unwrap_or(0)
            })
            .collect();
        let x = self.embed_ids(ids)?;
        let l = x.dim(1)?;
        let x = x.broadcast_add(&self.pos_embedding.narrow(0, 0, l)?)?;
        self.forward_embeds(&x, &eot, &NoHook)
    }
}

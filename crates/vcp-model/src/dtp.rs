//! Deep text prompts (DTP, paper §3.2; reference `models/model_CLIP.py` `_init_prompt`,
//! `encode_text`, `forward_deep_prompt`).
//!
//! `n` learnable tokens are inserted right after the start token before the first text layer
//! (dropping the last `n` positions, no positional embedding), and overwritten before each of the
//! next `depth` layers; one `prompt_proj` Linear is shared by all insertions, with dropout in
//! training. After the last layer they are removed and an extra trainable LayerNorm
//! (`prompt_norm`, eps 1e-6) runs before CLIP's frozen `ln_final`.

use crate::params::Params;
use candle_core::{Result, Tensor};
use vcp_clip::{InsertedTokens, PromptHook};

pub struct Dtp {
    first: Tensor,  // [1, n, W]
    deep: Tensor,   // [depth, n, W]
    proj_w: Tensor, // [W, W]
    proj_b: Tensor, // [W]
    norm_w: Tensor,
    norm_b: Tensor,
    dropout: f64,
    /// Dropout masks come from the model's seed (candle's CPU RNG cannot be seeded), so a
    /// training run is reproducible.
    rng: std::sync::Mutex<vcp_data::rng::SplitMix64>,
}

impl Dtp {
    pub fn new(
        p: &mut Params,
        tokens: usize,
        depth: usize,
        width: usize,
        dropout: f64,
    ) -> Result<Self> {
        // Reference init: embeddings U(-1, 1); prompt_proj kaiming_normal(fan_out) weight and
        // default Linear bias; prompt_norm weight 1, bias 0.
        let std = (2.0 / width as f64).sqrt();
        Ok(Self {
            first: p.uniform("dtp.first", (1, tokens, width), 1.0)?,
            deep: p.uniform("dtp.deep", (depth, tokens, width), 1.0)?,
            proj_w: p.normal("dtp.proj.weight", (width, width), std)?,
            proj_b: p.uniform("dtp.proj.bias", width, 1.0 / (width as f64).sqrt())?,
            norm_w: p.constant("dtp.norm.weight", width, 1.0)?,
            norm_b: p.constant("dtp.norm.bias", width, 0.0)?,
            dropout,
            rng: std::sync::Mutex::new(vcp_data::rng::SplitMix64(p.derive_seed())),
        })
    }

    /// Inverted dropout with a mask from our seeded generator.
    fn dropout(&self, y: &Tensor) -> Result<Tensor> {
        let keep = 1.0 - self.dropout;
        let mut rng = self.rng.lock().unwrap();
        let mask: Vec<f32> = (0..y.elem_count())
            .map(|_| {
                let u = rng.f64();
                if u < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        y * Tensor::from_vec(mask, y.shape(), y.device())?
    }

    fn project(&self, t: &Tensor, train: bool) -> Result<Tensor> {
        let y = t.matmul(&self.proj_w.t()?)?.broadcast_add(&self.proj_b)?;
        if train && self.dropout > 0.0 {
            self.dropout(&y)
        } else {
            Ok(y)
        }
    }

    /// The hook for one text forward (dropout drawn once per forward, as the reference draws it
    /// once per insertion call).
    pub fn hook(&self, train: bool) -> Result<DtpHook> {
        let mut tokens = vec![Some(self.project(&self.first.squeeze(0)?, train)?)];
        for i in 0..self.deep.dim(0)? {
            tokens.push(Some(self.project(&self.deep.get(i)?, train)?));
        }
        Ok(DtpHook {
            inner: InsertedTokens { tokens },
            norm_w: self.norm_w.clone(),
            norm_b: self.norm_b.clone(),
        })
    }
}

pub struct DtpHook {
    inner: InsertedTokens,
    norm_w: Tensor,
    norm_b: Tensor,
}

impl PromptHook for DtpHook {
    fn before_layer(&self, layer: usize, x: &Tensor) -> vcp_clip::Result<Tensor> {
        self.inner.before_layer(layer, x)
    }
    fn after_layers(&self, x: &Tensor) -> vcp_clip::Result<Tensor> {
        // In f32 whatever the towers' dtype (mixed precision keeps LayerNorms in f32).
        let x = self.inner.after_layers(x)?.to_dtype(self.norm_w.dtype())?;
        Ok(candle_nn::ops::layer_norm_slow(
            &x,
            &self.norm_w,
            &self.norm_b,
            1e-6,
        )?)
    }
}

//! # vcp-dtp: deep text prompts, the `deep_prompt` slot
//!
//! DTP (VCP-CLIP §3.2; reference `models/model_CLIP.py` `_init_prompt`, `encode_text`,
//! `forward_deep_prompt`): `n` learnable tokens are inserted right after the start token before
//! the first text layer (dropping the last `n` positions, no positional embedding), and
//! overwritten before each of the next `depth` layers; one `prompt_proj` Linear is shared by all
//! insertions, with dropout in training. After the last layer they are removed and an extra
//! trainable LayerNorm (`prompt_norm`, eps 1e-6) runs before CLIP's frozen `ln_final`.
//! `kind = "none"` is the plain text encoder.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_clip::{InsertedTokens, PromptHook};
use vcp_core::ops::LayerNorm;
use vcp_core::{BuildCtx, DeepPrompt, Linear, Params, Registry};

/// `[deep_prompt] kind = "dtp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtpConfig {
    /// Learnable tokens per layer (n).
    #[serde(default = "one")]
    pub tokens: usize,
    /// Layers after the first that get their own tokens (reference: text layers - 1).
    pub depth: usize,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
}

fn one() -> usize {
    1
}
fn default_dropout() -> f64 {
    0.1
}

/// `[deep_prompt] kind = "none"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoneConfig {}

/// Register this crate's kinds of the `deep_prompt` slot.
pub fn register(reg: &mut Registry) {
    reg.deep_prompt
        .register::<NoneConfig>("none", "no deep prompt", |_, _| Ok(None));
    reg.deep_prompt.register::<DtpConfig>(
        "dtp",
        "VCP-CLIP deep text prompts",
        |c, ctx: &mut BuildCtx| {
            let layers = ctx.text_layers();
            if c.depth >= layers {
                candle_core::bail!(
                    "deep_prompt.depth {} must be below the text depth {layers}",
                    c.depth
                );
            }
            if c.tokens == 0 {
                candle_core::bail!("deep_prompt.tokens must be at least 1");
            }
            if !(0.0..1.0).contains(&c.dropout) {
                candle_core::bail!("deep_prompt.dropout must be in [0, 1)");
            }
            let w = ctx.text_width();
            Ok(Some(Box::new(Dtp::new(
                ctx.params, c.tokens, c.depth, w, c.dropout,
            )?)))
        },
    );
}

pub struct Dtp {
    first: Tensor, // [1, n, W]
    deep: Tensor,  // [depth, n, W]
    proj: Linear,  // W → W
    norm: LayerNorm,
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
        let first = p.uniform("dtp.first", (1, tokens, width), 1.0)?;
        let deep = p.uniform("dtp.deep", (depth, tokens, width), 1.0)?;
        let proj = Linear::new(
            p.normal("dtp.proj.weight", (width, width), std)?,
            p.uniform("dtp.proj.bias", width, 1.0 / (width as f64).sqrt())?,
        );
        let norm = LayerNorm::new(p, "dtp.norm", width, 1e-6)?;
        Ok(Self {
            first,
            deep,
            proj,
            norm,
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
        let y = self.proj.forward(t)?;
        if train && self.dropout > 0.0 {
            self.dropout(&y)
        } else {
            Ok(y)
        }
    }
}

impl DeepPrompt for Dtp {
    /// The hook for one text forward (dropout drawn once per forward, as the reference draws
    /// it once per insertion call).
    fn hook(&self, train: bool) -> Result<Box<dyn PromptHook + '_>> {
        let mut tokens = vec![Some(self.project(&self.first.squeeze(0)?, train)?)];
        for i in 0..self.deep.dim(0)? {
            tokens.push(Some(self.project(&self.deep.get(i)?, train)?));
        }
        Ok(Box::new(DtpHook {
            inner: InsertedTokens { tokens },
            norm: &self.norm,
        }))
    }
}

struct DtpHook<'a> {
    inner: InsertedTokens,
    norm: &'a LayerNorm,
}

impl PromptHook for DtpHook<'_> {
    fn before_layer(&self, layer: usize, x: &Tensor) -> vcp_clip::Result<Tensor> {
        self.inner.before_layer(layer, x)
    }
    fn after_layers(&self, x: &Tensor) -> vcp_clip::Result<Tensor> {
        // In f32 whatever the towers' dtype (mixed precision keeps LayerNorms in f32).
        let x = self
            .inner
            .after_layers(x)?
            .to_dtype(self.norm.weight.dtype())?;
        Ok(self.norm.forward(&x)?)
    }
}

//! One trait per slot of the model. A component answers the capability questions about itself
//! (does it take category tokens, depend on the class name, allow a refiner, need text), so the
//! assembly and the runner ask components instead of matching on their configurations.
//!
//! Shapes: `B` images, `N = g*g` patches, `W` a tower's width, `D` the joint embedding dim,
//! `r` category tokens, `L` the text context length.

use crate::features::Trace;
use candle_core::{Result, Tensor};
use vcp_clip::{Clip, PromptHook, Tokenizer};

/// The frozen text side, for prompts.
pub struct TextCtx<'a> {
    pub clip: &'a Clip,
    pub tokenizer: &'a Tokenizer,
}

/// The two state embeddings `T = [normal, abnormal]` (slot `prompt`).
pub trait TextPrompt: Send + Sync {
    /// # Shapes
    /// `category`: `[Bc, r, W]` when [`Self::takes_category_tokens`] → `([Bc, 2, D]` L2-normalised,
    /// and optionally the input embeddings of the first text layer `[S, Bc, L, W]` for tests).
    /// `Bc = 1` when nothing is image-specific. `hook` is the deep prompt, when one is
    /// configured (trainable: results that use it must not be cached).
    fn encode(
        &self,
        ctx: &TextCtx,
        category: Option<&Tensor>,
        hook: Option<&dyn PromptHook>,
        class: &str,
    ) -> Result<(Tensor, Option<Tensor>)>;

    /// Whether `<|class|>` is filled by the `category` slot's tokens.
    fn takes_category_tokens(&self) -> bool {
        false
    }

    /// Whether `r` category tokens fit this prompt (checked before training starts).
    fn check_category_tokens(&self, _r: usize) -> Result<()> {
        Ok(())
    }

    /// Whether the embeddings depend on the category name (then batches must not mix
    /// categories).
    fn depends_on_class_name(&self) -> bool {
        false
    }
}

/// Learnable tokens inside the text encoder (slot `deep_prompt`).
pub trait DeepPrompt: Send + Sync {
    /// The hook of one text forward (`train`: dropout and the like are active).
    fn hook(&self, train: bool) -> Result<Box<dyn PromptHook + '_>>;
}

/// Tokens that replace `<|class|>` (slot `category`).
pub trait CategoryTokens: Send + Sync {
    /// # Shapes
    /// `global`: [B, D] (unnormalised) → `[B, r, W]`, or `[1, r, W]` when image-independent.
    fn tokens(&self, global: &Tensor) -> Result<Tensor>;

    /// `r`.
    fn tokens_per_prompt(&self) -> usize;
}

/// Text embeddings refined by the dense features of a layer (slot `refiner`); their maps form
/// the second ("refined") branch.
pub trait Refiner: Send + Sync {
    /// # Shapes
    /// `text`: [B, 2, D] (normalised); `dense`: [B, N, Wv] (normalised patch tokens) →
    /// `[B, 2, Wv]` normalised, compared with `dense` by a scaled cosine.
    fn refine(&self, text: &Tensor, dense: &Tensor, trace: Option<&mut Trace>) -> Result<Tensor>;
}

/// What a patch head sees.
pub struct HeadInput<'a> {
    /// Per tapped layer, `[B, N, Wv]` patch tokens (class token dropped).
    pub patches: &'a [Tensor],
    /// Per tapped layer, `[B, 2, D]` normalised text embeddings (per layer because few-shot
    /// references may condition them); empty when the head needs no text.
    pub texts: &'a [Tensor],
    /// Logit scale `exp(tau)`, scalar.
    pub scale: &'a Tensor,
    pub grid: usize,
    pub clip: &'a Clip,
}

/// What a patch head gives: per-tap maps and, for heads with their own image score, a logit.
#[derive(Debug)]
pub struct HeadOutput {
    /// Per tapped layer, `[B, 2, g, g]` logits over {normal, abnormal}.
    pub maps: Vec<Tensor>,
    /// `[B]`, the image-level anomaly logit (trained with BCE), if the head has one.
    pub image_logit: Option<Tensor>,
    /// Per tapped layer, the projected patches `[B, N, D]` (trace only; may be empty).
    pub projected: Vec<Tensor>,
}

/// Patch tokens → maps (slot `head`).
pub trait PatchHead: Send + Sync {
    fn forward(&self, input: &HeadInput) -> Result<HeadOutput>;

    /// Patch tokens of tapped layer `i` in the joint space (few-shot references are pooled
    /// through it).
    ///
    /// # Shapes
    /// `patches`: [B, N, Wv] → [B, N, D] (not normalised).
    fn project(&self, i: usize, patches: &Tensor, clip: &Clip) -> Result<Tensor>;

    /// Whether [`HeadInput::texts`] is read.
    fn needs_text(&self) -> bool {
        true
    }

    /// Whether [`HeadOutput::image_logit`] is given (then it is the image score's logit and
    /// the loss adds its BCE).
    fn has_image_logit(&self) -> bool {
        false
    }

    /// Whether a refiner's second branch makes sense beside this head's maps.
    fn allows_refiner(&self) -> bool {
        true
    }

    /// Whether the maps are text-patch similarities (so per-layer text conditioning, e.g. the
    /// reference-conditioned normal prompt, applies).
    fn compares_text_with_patches(&self) -> bool {
        true
    }
}

/// How `k` normal reference images of the target category change the result (slot
/// `fewshot`; its table's `kind` may be left out, meaning `references`).
pub trait FewShot: Send + Sync {
    /// Reference images per category (0 = zero-shot).
    fn shots(&self) -> usize;

    /// Seed of the reference draw (mixed with the run's seed by the runner).
    fn seed(&self) -> u64;

    /// The text of one tapped layer given the references' pooled, normalised joint-space
    /// embedding of that layer.
    ///
    /// # Shapes
    /// `text`: [B, 2, D], `pooled`: [D] → [B, 2, D].
    fn condition_text(&self, text: &Tensor, pooled: &Tensor) -> Result<Tensor>;

    /// Whether [`Self::condition_text`] changes anything (then the head must compare text with
    /// patches).
    fn conditions_text(&self) -> bool;

    /// Weight of the references' patch memory-bank map in the final map (0 = not used).
    fn memory_bank_weight(&self) -> f64;
}

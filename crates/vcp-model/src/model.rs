//! The assembled model: frozen CLIP + one component per slot (reference `train.py`/`test.py`
//! loop bodies). Image features come from the frozen tower once (and can be cached); everything
//! after them is differentiable with respect to the trainable parameters only.
//!
//! The components come from the registry the caller passes, so this file knows no
//! component kind: it asks the components what they need (category tokens, text, a refiner).

use crate::config::{LayerReduce, ModelConfig};
use crate::fusion::{probs, ImageMaps};
use candle_core::{Device, Result, Tensor, Var};
use vcp_clip::{Clip, ClipOptions, ClipWeights, Tokenizer};
use vcp_core::{
    l2norm, BuildCtx, CategoryTokens, DeepPrompt, FewShot, HeadInput, Params, PatchHead, Refiner,
    Registry, TextCtx, TextPrompt,
};
pub use vcp_core::{Features, Trace};
pub use vcp_fewshot::References;

/// Images per frozen-tower forward in [`VcpModel::encode_images`].
pub const ENCODE_CHUNK: usize = 8;

/// Trainable variables with their names.
pub type NamedVars = Vec<(String, Var)>;

/// Per-layer logits of both branches.
#[derive(Debug)]
pub struct Logits {
    /// `[B, 2, D]`, normalised (zeros when nothing reads the text).
    pub text: Tensor,
    /// Per tap `[B, 2, g, g]`.
    pub raw: Vec<Tensor>,
    /// Per tap `[B, 2, g, g]`; empty without a refiner.
    pub refined: Vec<Tensor>,
    /// Image-level two-class logits `[B, 2]`: class token vs text (scaled cosines), or `[0, z]`
    /// from a head with its own image logit `z` (softmax gives sigmoid(z)).
    pub cls: Tensor,
    /// Whether `cls` is a head's own image logit (then the loss adds its BCE).
    pub head_image_logit: bool,
    pub trace: Option<Trace>,
}

pub struct VcpModel {
    pub cfg: ModelConfig,
    /// The seed the trainables were initialised from (also varies few-shot reference draws).
    pub seed: u64,
    pub clip: Clip,
    pub tokenizer: Tokenizer,
    pub params: Params,
    prompt: Box<dyn TextPrompt>,
    deep_prompt: Option<Box<dyn DeepPrompt>>,
    category: Option<Box<dyn CategoryTokens>>,
    refiner: Option<Box<dyn Refiner>>,
    head: Box<dyn PatchHead>,
    fewshot: Option<Box<dyn FewShot>>,
    tau_raw: Tensor,
    tau_post: Option<Tensor>,
}

impl VcpModel {
    /// Build every slot of `cfg` with the kinds of `reg`, trainable parameters initialised from
    /// `seed` (reference initialisers).
    pub fn new(
        reg: &Registry,
        cfg: &ModelConfig,
        weights: &ClipWeights,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        validate(cfg, weights)?;
        let opts = ClipOptions {
            image_size: Some(cfg.backbone.image_size),
            activation: cfg.backbone.activation,
            extra_tokens: 1,
            dtype: cfg.backbone.dtype.dtype(),
            dense: dense_path(&cfg.backbone)?,
        };
        let clip = Clip::new(weights, &opts)?;
        let tokenizer = Tokenizer::vcp()?;
        let mut p = Params::new(seed, device);
        let mut ctx = BuildCtx {
            params: &mut p,
            clip: &clip,
            tokenizer: &tokenizer,
            taps: cfg.backbone.taps.len(),
            device,
        };
        // Creation order follows the reference (LinearLayer, Context_Prompting, Zero_Parameter,
        // CLIP prompts), so that names list like its checkpoint and a seed draws the same
        // initial values as before the components became crates.
        let head = reg
            .head
            .build(&cfg.head, &mut ctx)?
            .ok_or_else(|| candle_core::Error::Msg("head: every model needs a head".into()))?;
        let category = reg.category.build(&cfg.category, &mut ctx)?;
        let tau_raw = ctx.params.scalar(
            "temperature.raw",
            cfg.temperature.init,
            cfg.temperature.learnable,
        )?;
        let refiner = reg.refiner.build(&cfg.refiner, &mut ctx)?;
        let tau_post = match &refiner {
            Some(_) => Some(ctx.params.scalar(
                "temperature.post",
                cfg.temperature.init,
                cfg.temperature.learnable,
            )?),
            None => None,
        };
        let prompt = reg
            .prompt
            .build(&cfg.prompt, &mut ctx)?
            .ok_or_else(|| candle_core::Error::Msg("prompt: every model needs a prompt".into()))?;
        let deep_prompt = reg.deep_prompt.build(&cfg.deep_prompt, &mut ctx)?;
        let fewshot = match &cfg.fewshot {
            Some(t) => {
                let mut t = t.clone();
                t.0.entry("kind").or_insert_with(|| {
                    toml::Value::String(crate::config::FEWSHOT_DEFAULT_KIND.into())
                });
                reg.fewshot.build(&t, &mut ctx)?
            }
            None => None,
        };
        let m = Self {
            cfg: cfg.clone(),
            seed,
            clip,
            tokenizer,
            params: p,
            prompt,
            deep_prompt,
            category,
            refiner,
            head,
            fewshot,
            tau_raw,
            tau_post,
        };
        m.validate_components()?;
        Ok(m)
    }

    /// Cross-slot rules, asked of the components themselves.
    fn validate_components(&self) -> Result<()> {
        let bad = |m: String| Err(candle_core::Error::Msg(m));
        let (pk, ck) = (self.cfg.prompt.kind(), self.cfg.category.kind());
        if let (true, Some(c)) = (self.prompt.takes_category_tokens(), &self.category) {
            self.prompt.check_category_tokens(c.tokens_per_prompt())?;
        }
        match (self.prompt.takes_category_tokens(), &self.category) {
            (true, None) => {
                return bad(format!("prompt.kind = \"{pk}\" needs category tokens: set category.kind = \"static\" or \"pre_vcp\""))
            }
            (false, Some(_)) => {
                return bad(format!("category tokens (category.kind = \"{ck}\") only apply to a prompt that takes them (e.g. prompt.kind = \"utp\"), not prompt.kind = \"{pk}\""))
            }
            _ => {}
        }
        let hk = self.cfg.head.kind();
        if self.refiner.is_some() && !self.head.allows_refiner() {
            return bad(format!(
                "head.kind = \"{hk}\" replaces the text-patch maps: set refiner.kind = \"identity\""
            ));
        }
        let conditions = self.fewshot.as_ref().is_some_and(|f| f.conditions_text());
        if conditions && !self.head.compares_text_with_patches() {
            return bad(format!("fewshot.normal_prompt needs a text-patch head (head.kind = linear_proj or clip_proj), not head.kind = \"{hk}\""));
        }
        Ok(())
    }

    /// The few-shot component, when the model uses references.
    pub fn fewshot(&self) -> Option<&dyn FewShot> {
        self.fewshot.as_deref().filter(|f| f.shots() > 0)
    }

    /// Whether the text embeddings depend on the category name (batches must not mix them).
    pub fn text_depends_on_class(&self) -> bool {
        self.prompt.depends_on_class_name()
    }

    pub fn device(&self) -> &Device {
        self.tau_raw.device()
    }
    /// Frozen image features (no graph is kept).
    ///
    /// # Shapes
    /// `pixels`: [B, 3, S, S].
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Features> {
        // The frozen tower runs at most ENCODE_CHUNK images at a time: images are independent,
        // so the result is the same, while the transient attention scores ([b, H, N, N] f32,
        // 3.8 GB for 32 images of ViT-L at 518 px) stay bounded.
        let b = pixels.dim(0)?;
        if b > ENCODE_CHUNK {
            let parts = (0..b)
                .step_by(ENCODE_CHUNK)
                .map(|s| self.encode_images(&pixels.narrow(0, s, ENCODE_CHUNK.min(b - s))?))
                .collect::<Result<Vec<_>>>()?;
            return Features::cat(&parts);
        }
        let out = self.clip.vision.forward(pixels, &self.cfg.backbone.taps)?;
        Ok(Features {
            layers: out.layers.into_iter().map(|(_, t)| t.detach()).collect(),
            global: out.global.detach(),
            grid: out.grid,
        })
    }

    /// Text embeddings `[B, 2, D]` for these images (category `class` for prompts that name it).
    pub fn text_embeddings(
        &self,
        f: &Features,
        class: &str,
        train: bool,
    ) -> Result<(Tensor, Trace)> {
        let mut trace = Trace::default();
        let b = f.batch()?;
        let cat = match &self.category {
            Some(c) => Some(c.tokens(&f.global)?),
            None => None,
        };
        trace.class_tokens = cat.clone();
        let hook = match &self.deep_prompt {
            Some(d) => Some(d.hook(train)?),
            None => None,
        };
        let ctx = TextCtx {
            clip: &self.clip,
            tokenizer: &self.tokenizer,
        };
        let (t, layer1) = self
            .prompt
            .encode(&ctx, cat.as_ref(), hook.as_deref(), class)?;
        if let (Some(l1), Some(d)) = (layer1, &self.deep_prompt) {
            let (s, bc, l, w) = l1.dims4()?;
            let ins = d
                .hook(false)?
                .before_layer(0, &l1.reshape((s * bc, l, w))?)?;
            trace.layer1_input = Some(ins.reshape((s, bc, l, w))?);
        }
        let t = if t.dim(0)? == 1 && b > 1 {
            t.broadcast_as((b, 2, t.dim(2)?))?.contiguous()?
        } else {
            t
        };
        Ok((t, trace))
    }

    /// Per-layer logits of the raw (head) and refined (refiner) branches.
    pub fn logits(
        &self,
        f: &Features,
        class: &str,
        train: bool,
        want_trace: bool,
    ) -> Result<Logits> {
        self.logits_with(f, class, train, want_trace, None)
    }

    // Long because it follows the reference forward step by step (category tokens, DTP text,
    // refiner, both branches per tapped layer), with the trace recorded in place.
    /// [`Self::logits`] with few-shot references (reference-conditioned normal prompt).
    pub fn logits_with(
        &self,
        f: &Features,
        class: &str,
        train: bool,
        want_trace: bool,
        refs: Option<&References>,
    ) -> Result<Logits> {
        let (g, b) = (f.grid, f.batch()?);
        let n = g * g;
        let scale_raw = self.tau_raw.exp()?;
        let needs_text =
            self.head.needs_text() || self.refiner.is_some() || !self.head.has_image_logit();
        let (text, mut trace) = if needs_text {
            self.text_embeddings(f, class, train)?
        } else {
            let d = f.global.dim(1)?;
            (
                Tensor::zeros((b, 2, d), f.global.dtype(), f.global.device())?,
                Trace::default(),
            )
        };
        // Per tapped layer: the text, conditioned on few-shot references when configured.
        let texts = if needs_text {
            (0..f.layers.len())
                .map(|i| match (refs, &self.fewshot) {
                    (Some(r), Some(fs)) => fs.condition_text(&text, &r.pooled[i]),
                    _ => Ok(text.clone()),
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![]
        };
        let patches = f
            .layers
            .iter()
            .map(|t| t.narrow(1, 1, n))
            .collect::<Result<Vec<_>>>()?; // [B, N, W] each
        let out = self.head.forward(&HeadInput {
            patches: &patches,
            texts: &texts,
            scale: &scale_raw,
            grid: g,
            clip: &self.clip,
        })?;
        if want_trace {
            trace.raw_linear = out.projected;
        }
        let mut refined = Vec::new();
        if let (Some(r), Some(tau)) = (&self.refiner, &self.tau_post) {
            for (p, text_i) in patches.iter().zip(&texts) {
                let fs = l2norm(p)?; // [B, N, W]
                let ta = r.refine(text_i, &fs, want_trace.then_some(&mut trace))?; // [B, 2, W]
                let s = fs
                    .matmul(&ta.transpose(1, 2)?)?
                    .broadcast_mul(&tau.exp()?)?; // [B, N, 2]
                refined.push(s.transpose(1, 2)?.reshape((b, 2, g, g))?);
            }
        }
        let (cls, head_image_logit) = match out.image_logit {
            // Image logit as two-class logits [0, z]: softmax gives sigmoid(z).
            Some(z) => (Tensor::stack(&[&z.zeros_like()?, &z], 1)?, true),
            // Class token vs text: [B, 1, D] x [B, D, 2] -> [B, 2].
            None => (
                l2norm(&f.global)?
                    .unsqueeze(1)?
                    .matmul(&text.transpose(1, 2)?)?
                    .squeeze(1)?
                    .broadcast_mul(&scale_raw)?,
                false,
            ),
        };
        Ok(Logits {
            text,
            raw: out.maps,
            refined,
            cls,
            head_image_logit,
            trace: want_trace.then_some(trace),
        })
    }

    /// Focal + Dice on every map of every layer and branch (reference train.py), with named
    /// terms; `[loss]` adds AnomalyCLIP's terms (Dice on the normal channel, a factor on the map
    /// terms, the image-level cross-entropy of the class token).
    ///
    /// # Shapes
    /// `gt`: [B, S, S] in {0, 1}.
    pub fn loss(&self, lg: &Logits, gt: &Tensor) -> Result<(Tensor, Vec<(String, f32)>)> {
        let size = gt.dim(1)?;
        let lc = self.cfg.loss.clone().unwrap_or_default();
        let mut total: Option<Tensor> = None;
        let mut terms = Vec::new();
        let taps = &self.cfg.backbone.taps;
        let not_gt = if lc.normal_dice {
            Some(gt.affine(-1.0, 1.0)?)
        } else {
            None
        };
        for (branch, maps) in [("raw", &lg.raw), ("post", &lg.refined)] {
            for (l, logits) in maps.iter().enumerate() {
                let p = probs(logits, size, self.cfg.fusion.upsample)?;
                let fl = crate::loss::focal(&p, gt)?;
                let dl = crate::loss::dice(&p.narrow(1, 1, 1)?.squeeze(1)?, gt)?;
                terms.push((
                    format!("{branch}.focal.layer{:02}", taps[l]),
                    fl.to_scalar::<f32>()?,
                ));
                terms.push((
                    format!("{branch}.dice.layer{:02}", taps[l]),
                    dl.to_scalar::<f32>()?,
                ));
                let mut s = (fl + dl)?;
                if let Some(ng) = &not_gt {
                    let dn = crate::loss::dice(&p.narrow(1, 0, 1)?.squeeze(1)?, ng)?;
                    terms.push((
                        format!("{branch}.dice_normal.layer{:02}", taps[l]),
                        dn.to_scalar::<f32>()?,
                    ));
                    s = (s + dn)?;
                }
                total = Some(match total {
                    Some(t) => (t + s)?,
                    None => s,
                });
            }
        }
        let mut total = total.expect("at least one map");
        if lc.map_weight != 1.0 {
            total = (total * lc.map_weight)?;
        }
        // Image label: the mask has an anomalous pixel.
        let label = || -> Result<Tensor> {
            gt.flatten_from(1)?
                .max(1)?
                .gt(0.5)?
                .to_dtype(candle_core::DType::U32)
        };
        if lg.head_image_logit {
            // Image-level BCE on the head's own logit.
            let bce = candle_nn::loss::cross_entropy(&lg.cls, &label()?)?;
            terms.push(("image.bce".into(), bce.to_scalar::<f32>()?));
            total = (total + bce)?;
        } else if lc.image_ce > 0.0 {
            // AnomalyCLIP: CE of the class token's two-state logits (scale x cosines).
            let ce = candle_nn::loss::cross_entropy(&lg.cls, &label()?)?;
            terms.push(("image.ce".into(), ce.to_scalar::<f32>()?));
            total = (total + (ce * lc.image_ce)?)?;
        }
        Ok((total, terms))
    }

    /// Features of few-shot reference images → per-layer bank and pooled normal embeddings
    /// (pooled through the head's projection into the joint space).
    pub fn references(&self, f: &Features, paths: Vec<String>) -> Result<References> {
        References::new(f, paths, |i, p| self.head.project(i, p, &self.clip))
    }

    /// Anomaly-channel maps per branch, reduced over layers, at `size` (no graph kept).
    pub fn image_maps(&self, lg: &Logits, size: usize) -> Result<Vec<ImageMaps>> {
        let reduce = |maps: &[Tensor]| -> Result<Option<Vec<Vec<f32>>>> {
            if maps.is_empty() {
                return Ok(None);
            }
            let mut acc: Option<Tensor> = None;
            for m in maps {
                let p = probs(&m.detach(), size, self.cfg.fusion.upsample)?
                    .narrow(1, 1, 1)?
                    .squeeze(1)?;
                acc = Some(match acc {
                    Some(a) => (a + p)?,
                    None => p,
                });
            }
            let acc = acc.unwrap();
            let acc = match self.cfg.fusion.layer_reduce {
                LayerReduce::Mean => (acc / maps.len() as f64)?,
                LayerReduce::Sum => acc,
            };
            Ok(Some(acc.flatten_from(1)?.to_vec2::<f32>()?))
        };
        let raw = reduce(&lg.raw)?.expect("raw branch");
        let refined = reduce(&lg.refined)?;
        let cls = candle_nn::ops::softmax(&lg.cls.detach(), 1)?
            .narrow(1, 1, 1)?
            .squeeze(1)?
            .to_vec1::<f32>()?;
        Ok(raw
            .into_iter()
            .enumerate()
            .map(|(i, r)| ImageMaps {
                raw: r,
                refined: refined.as_ref().map(|v| v[i].clone()),
                size,
                cls_score: cls[i],
                fewshot: None,
            })
            .collect())
    }

    /// Trainable variables: (main group, temperature group) as the reference's two Adam groups.
    pub fn trainable_groups(&self) -> (NamedVars, NamedVars) {
        self.params
            .vars()
            .into_iter()
            .partition(|(n, _)| !n.starts_with("temperature."))
    }

    pub fn parameter_count(&self) -> usize {
        self.params.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// Values that cannot work, reported before anything is built (cross-slot rules are asked
/// of the built components, see `VcpModel::validate_components`).
pub fn validate(cfg: &ModelConfig, w: &ClipWeights) -> Result<()> {
    let bad = |m: String| Err(candle_core::Error::Msg(m));
    cfg.check_values().map_err(candle_core::Error::Msg)?;
    let depth = w.config.vision.layers;
    if cfg.backbone.taps.is_empty() {
        return bad("backbone.taps is empty".into());
    }
    if let Some(t) = cfg.backbone.taps.iter().find(|&&t| t == 0 || t > depth) {
        return bad(format!("backbone.taps: layer {t} is outside 1..={depth}"));
    }
    if !(0.0..=1.0).contains(&cfg.fusion.raw_weight) {
        return bad("fusion.raw_weight must be in [0, 1]".into());
    }
    dense_path(&cfg.backbone)?;
    Ok(())
}

/// The configured dense path of the image tower.
pub fn dense_path(b: &crate::config::BackboneConfig) -> Result<vcp_clip::DensePath> {
    use crate::config::VisionAttention as A;
    let blocks = || {
        b.dense_blocks.filter(|&n| n > 0).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "backbone.attention = \"{}\" needs backbone.dense_blocks (the number of final blocks, >= 1)",
                match b.attention {
                    A::ValueValue => "value_value",
                    A::SelfOnly => "self_only",
                    _ => "surgery",
                }
            ))
        })
    };
    Ok(match b.attention {
        A::Standard => vcp_clip::DensePath::None,
        A::ValueValue => vcp_clip::DensePath::ValueValue { blocks: blocks()? },
        A::Surgery => vcp_clip::DensePath::Surgery { blocks: blocks()? },
        A::ClearClip => vcp_clip::DensePath::ClearClip,
        A::SelfOnly => vcp_clip::DensePath::SelfOnly { blocks: blocks()? },
    })
}

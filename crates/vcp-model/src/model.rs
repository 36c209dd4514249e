//! The assembled model: frozen CLIP + the configured components (reference `train.py`/`test.py`
//! loop bodies). Image features come from the frozen tower once (and can be cached); everything
//! after them is differentiable with respect to the trainable parameters only.

use crate::config::{
    CategoryConfig, DeepPromptConfig, HeadConfig, LayerReduce, ModelConfig, PromptConfig,
    RefinerConfig,
};
use crate::decoder::AnomalyDecoder;
use crate::dtp::Dtp;
use crate::fewshot::References;
use crate::fusion::{probs, ImageMaps};
use crate::head::PatchHead;
use crate::params::Params;
use crate::post_vcp::{l2norm, PostVcp};
use crate::pre_vcp::Category;
use crate::prompt::TextPrompt;
use candle_core::{Device, Result, Tensor, Var};
use vcp_clip::{Clip, ClipOptions, ClipWeights, PromptHook, Tokenizer};

/// Images per frozen-tower forward in [`VcpModel::encode_images`].
pub const ENCODE_CHUNK: usize = 8;

/// Trainable variables with their names.
pub type NamedVars = Vec<(String, Var)>;

/// Outputs of the frozen image tower for a batch.
#[derive(Debug, Clone)]
pub struct Features {
    /// Per tapped layer, `[B, 1 + g*g, W]`, class token first.
    pub layers: Vec<Tensor>,
    /// `[B, D]`, unnormalised.
    pub global: Tensor,
    pub grid: usize,
}

impl Features {
    pub fn batch(&self) -> Result<usize> {
        self.global.dim(0)
    }
    /// Select images `idx` (e.g. to assemble a batch from cached features).
    pub fn select(&self, idx: &[usize]) -> Result<Features> {
        let ids = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            self.global.device(),
        )?;
        Ok(Features {
            layers: self
                .layers
                .iter()
                .map(|t| t.index_select(&ids, 0))
                .collect::<Result<_>>()?,
            global: self.global.index_select(&ids, 0)?,
            grid: self.grid,
        })
    }
    pub fn cat(parts: &[Features]) -> Result<Features> {
        let n = parts[0].layers.len();
        Ok(Features {
            layers: (0..n)
                .map(|i| {
                    Tensor::cat(
                        &parts
                            .iter()
                            .map(|p| p.layers[i].clone())
                            .collect::<Vec<_>>(),
                        0,
                    )
                })
                .collect::<Result<_>>()?,
            global: Tensor::cat(
                &parts.iter().map(|p| p.global.clone()).collect::<Vec<_>>(),
                0,
            )?,
            grid: parts[0].grid,
        })
    }
}

/// Intermediates, for parity tests and debugging.
#[derive(Debug, Default)]
pub struct Trace {
    pub class_tokens: Option<Tensor>,
    /// Input of text layer 1 after deep-prompt insertion, `[2, Bc, L, W]`.
    pub layer1_input: Option<Tensor>,
    pub raw_linear: Vec<Tensor>,
    pub post_q: Vec<Tensor>,
    pub post_k: Vec<Tensor>,
    pub post_v: Vec<Tensor>,
    pub post_attn_out: Vec<Tensor>,
    pub post_refined: Vec<Tensor>,
}

/// Per-layer logits of both branches.
#[derive(Debug)]
pub struct Logits {
    /// `[B, 2, D]`, normalised.
    pub text: Tensor,
    /// Per tap `[B, 2, g, g]`.
    pub raw: Vec<Tensor>,
    /// Per tap `[B, 2, g, g]`; empty when the refiner is the identity.
    pub refined: Vec<Tensor>,
    /// Class token vs text, `[B, 2]` (scaled cosine logits).
    pub cls: Tensor,
    pub trace: Option<Trace>,
}

pub struct VcpModel {
    pub cfg: ModelConfig,
    /// The seed the trainables were initialised from (also varies few-shot reference draws).
    pub seed: u64,
    pub clip: Clip,
    pub tokenizer: Tokenizer,
    pub params: Params,
    prompt: TextPrompt,
    dtp: Option<Dtp>,
    category: Category,
    refiner: Option<PostVcp>,
    head: PatchHead,
    /// The DETR-style head (`head.kind = "decoder"`), replacing the text-patch map.
    decoder: Option<AnomalyDecoder>,
    tau_raw: Tensor,
    tau_post: Option<Tensor>,
}

fn err(e: vcp_clip::ClipError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl VcpModel {
    /// Build with trainable parameters initialised from `seed` (reference initialisers).
    pub fn new(
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
        let clip = Clip::new(weights, &opts).map_err(err)?;
        let tokenizer = Tokenizer::vcp().map_err(err)?;
        let (tw, embed, vw) = (
            clip.text.width(),
            clip.text.embed_dim().map_err(err)?,
            clip.vision.width(),
        );
        let mut p = Params::new(seed, device);
        // Creation order follows the reference (LinearLayer, Context_Prompting, Zero_Parameter,
        // CLIP prompts) so that names list like its checkpoint.
        let mut decoder = None;
        let head = match cfg.head {
            HeadConfig::LinearProj => {
                PatchHead::linear(&mut p, cfg.backbone.taps.len(), vw, embed)?
            }
            HeadConfig::ClipProj => PatchHead::ClipProj,
            HeadConfig::Decoder {
                queries,
                layers,
                heads,
                dim,
                text_queries,
            } => {
                decoder = Some(AnomalyDecoder::new(
                    &mut p,
                    cfg.backbone.taps.len(),
                    vw,
                    embed,
                    queries,
                    layers,
                    heads,
                    dim,
                    text_queries,
                )?);
                // Only used to pool few-shot references into the joint space.
                PatchHead::ClipProj
            }
        };
        let category = Category::new(&cfg.category, &mut p, tw, embed)?;
        let tau_raw = p.scalar(
            "temperature.raw",
            cfg.temperature.init,
            cfg.temperature.learnable,
        )?;
        let (refiner, tau_post) = match &cfg.refiner {
            RefinerConfig::Identity => (None, None),
            RefinerConfig::PostVcp { heads, scaled } => (
                Some(PostVcp::new(&mut p, embed, vw, *heads, *scaled)?),
                Some(p.scalar(
                    "temperature.post",
                    cfg.temperature.init,
                    cfg.temperature.learnable,
                )?),
            ),
        };
        let prompt = TextPrompt::new(&cfg.prompt, &mut p, &tokenizer, &clip.text, device)?;
        let dtp = match &cfg.deep_prompt {
            DeepPromptConfig::None => None,
            DeepPromptConfig::Dtp {
                tokens,
                depth,
                dropout,
            } => Some(Dtp::new(&mut p, *tokens, *depth, tw, *dropout)?),
        };
        Ok(Self {
            cfg: cfg.clone(),
            seed,
            clip,
            tokenizer,
            params: p,
            prompt,
            dtp,
            category,
            refiner,
            head,
            decoder,
            tau_raw,
            tau_post,
        })
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
        let out = self
            .clip
            .vision
            .forward(pixels, &self.cfg.backbone.taps)
            .map_err(err)?;
        Ok(Features {
            layers: out.layers.into_iter().map(|(_, t)| t.detach()).collect(),
            global: out.global.detach(),
            grid: out.grid,
        })
    }

    /// Text embeddings `[B, 2, D]` for these images (category `class` for hand-crafted prompts).
    pub fn text_embeddings(
        &self,
        f: &Features,
        class: &str,
        train: bool,
    ) -> Result<(Tensor, Trace)> {
        let mut trace = Trace::default();
        let b = f.batch()?;
        let cat = self.category.tokens(&f.global)?;
        trace.class_tokens = cat.clone();
        let (t, layer1) = self.prompt.encode(
            &self.clip,
            &self.tokenizer,
            cat.as_ref(),
            self.dtp.as_ref(),
            train,
            class,
        )?;
        if let (Some(l1), Some(d)) = (layer1, &self.dtp) {
            let (s, bc, l, w) = l1.dims4()?;
            let ins = d
                .hook(false)?
                .before_layer(0, &l1.reshape((s * bc, l, w))?)
                .map_err(err)?;
            trace.layer1_input = Some(ins.reshape((s, bc, l, w))?);
        }
        let t = if t.dim(0)? == 1 && b > 1 {
            t.broadcast_as((b, 2, t.dim(2)?))?.contiguous()?
        } else {
            t
        };
        Ok((t, trace))
    }

    /// Per-layer logits of the raw (text-patch) and refined (Post-VCP) branches.
    pub fn logits(
        &self,
        f: &Features,
        class: &str,
        train: bool,
        want_trace: bool,
    ) -> Result<Logits> {
        self.logits_with(f, class, train, want_trace, None)
    }

    /// [`Self::logits`] with few-shot references (reference-conditioned normal prompt).
    pub fn logits_with(
        &self,
        f: &Features,
        class: &str,
        train: bool,
        want_trace: bool,
        refs: Option<&References>,
    ) -> Result<Logits> {
        let g = f.grid;
        let n = g * g;
        let scale_raw = self.tau_raw.exp()?;
        if let Some(dec) = &self.decoder {
            return self.decoder_logits(dec, f, class, train, want_trace, &scale_raw);
        }
        let (text, mut trace) = self.text_embeddings(f, class, train)?;
        let b = text.dim(0)?;
        // Class token vs text: [B, 1, D] x [B, D, 2] -> [B, 2].
        let cls = l2norm(&f.global)?
            .unsqueeze(1)?
            .matmul(&text.transpose(1, 2)?)?
            .squeeze(1)?
            .broadcast_mul(&scale_raw)?;
        let alpha = self.cfg.fewshot.normal_prompt;
        let mut raw = Vec::new();
        let mut refined = Vec::new();
        for (i, tokens) in f.layers.iter().enumerate() {
            // Reference-conditioned normal prompt: blend the normal embedding towards the
            // references' pooled patch embedding of this layer.
            let text_i = match refs {
                Some(r) if alpha > 0.0 => {
                    let normal = text.narrow(1, 0, 1)?; // [B, 1, D]
                    let pooled = r.pooled[i].reshape((1, 1, ()))?;
                    let normal =
                        l2norm(&((normal * (1.0 - alpha))?.broadcast_add(&(pooled * alpha)?)?))?;
                    Tensor::cat(&[&normal, &text.narrow(1, 1, 1)?], 1)?
                }
                _ => text.clone(),
            };
            let tt = text_i.transpose(1, 2)?; // [B, D, 2]
            let patches = tokens.narrow(1, 1, n)?; // [B, N, W]
            let proj = self.head.project(i, &patches, &self.clip)?; // [B, N, D]
            let s = l2norm(&proj)?.matmul(&tt)?.broadcast_mul(&scale_raw)?; // [B, N, 2]
            raw.push(s.transpose(1, 2)?.reshape((b, 2, g, g))?);
            if want_trace {
                trace.raw_linear.push(proj.clone());
            }
            if let (Some(r), Some(tau)) = (&self.refiner, &self.tau_post) {
                let fs = l2norm(&patches)?; // [B, N, W]
                let [ta, q, k, v, o] = r.refine_full(&text_i, &fs)?; // ta: [B, 2, W]
                let s = fs
                    .matmul(&ta.transpose(1, 2)?)?
                    .broadcast_mul(&tau.exp()?)?; // [B, N, 2]
                refined.push(s.transpose(1, 2)?.reshape((b, 2, g, g))?);
                if want_trace {
                    trace.post_q.push(q);
                    trace.post_k.push(k);
                    trace.post_v.push(v);
                    trace.post_attn_out.push(o);
                    trace.post_refined.push(ta);
                }
            }
        }
        Ok(Logits {
            text,
            raw,
            refined,
            cls,
            trace: want_trace.then_some(trace),
        })
    }

    /// The DETR-style head's logits. The text tower runs only when the queries are
    /// text-conditioned; otherwise `Logits::text` is zeros (nothing reads it).
    fn decoder_logits(
        &self,
        dec: &AnomalyDecoder,
        f: &Features,
        class: &str,
        train: bool,
        want_trace: bool,
        scale: &Tensor,
    ) -> Result<Logits> {
        let (b, g) = (f.batch()?, f.grid);
        let (text, trace) = if dec.text_conditioned() {
            self.text_embeddings(f, class, train)?
        } else {
            let d = f.global.dim(1)?;
            (
                Tensor::zeros((b, 2, d), f.global.dtype(), f.global.device())?,
                Trace::default(),
            )
        };
        let patches = f
            .layers
            .iter()
            .map(|t| t.narrow(1, 1, g * g))
            .collect::<Result<Vec<_>>>()?;
        let (maps, image) = dec.forward(&patches, &text, scale)?;
        let raw = maps
            .into_iter()
            .map(|m| m.reshape((b, 2, g, g)))
            .collect::<Result<Vec<_>>>()?;
        // Image logit as two-class logits [0, z]: softmax gives sigmoid(z).
        let cls = Tensor::stack(&[&image.zeros_like()?, &image], 1)?;
        Ok(Logits {
            text,
            raw,
            refined: vec![],
            cls,
            trace: want_trace.then_some(trace),
        })
    }

    /// Focal + Dice on every map of every layer and branch (reference train.py), with named terms.
    ///
    /// # Shapes
    /// `gt`: [B, S, S] in {0, 1}.
    pub fn loss(&self, lg: &Logits, gt: &Tensor) -> Result<(Tensor, Vec<(String, f32)>)> {
        let size = gt.dim(1)?;
        let mut total: Option<Tensor> = None;
        let mut terms = Vec::new();
        let taps = &self.cfg.backbone.taps;
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
                let s = (fl + dl)?;
                total = Some(match total {
                    Some(t) => (t + s)?,
                    None => s,
                });
            }
        }
        let mut total = total.expect("at least one map");
        if self.decoder.is_some() {
            // Image-level BCE on the decoder's logit: label = the mask has an anomalous pixel.
            let label = gt
                .flatten_from(1)?
                .max(1)?
                .gt(0.5)?
                .to_dtype(candle_core::DType::U32)?;
            let bce = candle_nn::loss::cross_entropy(&lg.cls, &label)?;
            terms.push(("image.bce".into(), bce.to_scalar::<f32>()?));
            total = (total + bce)?;
        }
        Ok((total, terms))
    }

    /// Features of few-shot reference images → per-layer bank and pooled normal embeddings.
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

/// Combinations that cannot work, reported before anything is built.
pub fn validate(cfg: &ModelConfig, w: &ClipWeights) -> Result<()> {
    let bad = |m: String| Err(candle_core::Error::Msg(m));
    let depth = w.config.vision.layers;
    if cfg.backbone.taps.is_empty() {
        return bad("backbone.taps is empty".into());
    }
    if let Some(t) = cfg.backbone.taps.iter().find(|&&t| t == 0 || t > depth) {
        return bad(format!("backbone.taps: layer {t} is outside 1..={depth}"));
    }
    let utp = matches!(cfg.prompt, PromptConfig::Utp { .. });
    let has_cat = !matches!(cfg.category, CategoryConfig::None);
    if utp && !has_cat {
        return bad("prompt.kind = \"utp\" needs category tokens: set category.kind = \"static\" or \"pre_vcp\"".into());
    }
    if !utp && has_cat {
        return bad("category tokens (category.kind) only apply to prompt.kind = \"utp\"".into());
    }
    if let DeepPromptConfig::Dtp {
        depth: d, tokens, ..
    } = &cfg.deep_prompt
    {
        if *d >= w.config.text.layers {
            return bad(format!(
                "deep_prompt.depth {d} must be below the text depth {}",
                w.config.text.layers
            ));
        }
        if *tokens == 0 {
            return bad("deep_prompt.tokens must be at least 1".into());
        }
    }
    if !(0.0..=1.0).contains(&cfg.fusion.raw_weight) {
        return bad("fusion.raw_weight must be in [0, 1]".into());
    }
    let fs = &cfg.fewshot;
    if !(0.0..=1.0).contains(&fs.memory_bank) || !(0.0..=1.0).contains(&fs.normal_prompt) {
        return bad("fewshot.memory_bank and fewshot.normal_prompt must be in [0, 1]".into());
    }
    if fs.k > 0 && fs.memory_bank == 0.0 && fs.normal_prompt == 0.0 {
        return bad(
            "fewshot.k > 0 but neither fewshot.memory_bank nor fewshot.normal_prompt is set".into(),
        );
    }
    if let HeadConfig::Decoder { .. } = cfg.head {
        if !matches!(cfg.refiner, RefinerConfig::Identity) {
            return bad("head.kind = \"decoder\" replaces the text-patch maps: set refiner.kind = \"identity\"".into());
        }
        if fs.normal_prompt > 0.0 {
            return bad("fewshot.normal_prompt needs a text-patch head (head.kind = linear_proj or clip_proj)".into());
        }
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

//! CLIP contrastive pretraining on candle: symmetric InfoNCE over in-batch pairs, a learnable
//! logit scale (init ln(1/0.07), clamped at ln 100 after every step as CLIP does), AdamW with
//! decoupled weight decay on matrices, linear warm-up and cosine decay; every tensor of both
//! towers is trained (unlike VCP-CLIP, which freezes them).
//!
//! The towers are `vcp-clip`'s own, rebuilt from the variables at every step (they pre-transpose
//! and fuse weights at construction; rebuilding keeps those copies in step with the variables
//! and in the autograd graph), so what is trained is exactly what VCP-CLIP later runs.

use crate::batch::{ids_of, pixels_of};
use crate::checkpoint::{self, warm_start, VISION_POS};
use crate::config::PretrainConfig;
use crate::objective::{self, DenseTargets};
use crate::optim::{AdamHyper, Param};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;
use vcp_clip::block::l2norm;
use vcp_clip::{Clip, ClipOptions, ClipWeights, Kernels, Tokenizer};
use vcp_data::corpus;

pub use crate::checkpoint::PATCH_SCALE;
pub use crate::config::LOGIT_SCALE_MAX;

/// A batch on the host, ready to become tensors.
pub struct Batch {
    /// `[B, 3, S, S]` CLIP-normalised pixels.
    pub pixels: Vec<f32>,
    /// `[B, C]` token ids.
    pub ids: Vec<u32>,
    pub n: usize,
    /// Input size of the images.
    pub size: usize,
    /// Patch and state targets (with `[objective]` only).
    pub dense: Option<DenseTargets>,
}

/// The loss of a batch and its terms, each differentiable (`patch`/`state` unweighted, `None`
/// without `[objective]` or when no row of the batch takes part).
pub struct LossParts {
    pub total: Tensor,
    pub contrastive: Tensor,
    pub patch: Option<Tensor>,
    pub state: Option<Tensor>,
}

pub struct Trainer {
    pub cfg: PretrainConfig,
    pub device: Device,
    pub params: Vec<Param>,
    /// Steps done.
    pub step: usize,
    tokenizer: Tokenizer,
}

/// Symmetric InfoNCE of CLIP: cross-entropy of image→text and text→image logits against the
/// diagonal, averaged.
///
/// # Shapes
/// `img`, `txt`: [B, D] (not normalised); `logit_scale`: [] or [1] (log of the scale) → [].
pub fn clip_loss(img: &Tensor, txt: &Tensor, logit_scale: &Tensor) -> Result<Tensor> {
    let b = img.dim(0)?;
    let img = l2norm(img)?;
    let txt = l2norm(txt)?;
    let scale = logit_scale.flatten_all()?.exp()?; // [1]
    let logits = img.matmul(&txt.t()?)?.broadcast_mul(&scale)?; // [B, B]
    let target = Tensor::arange(0u32, b as u32, img.device())?;
    let li = candle_nn::loss::cross_entropy(&logits, &target)?;
    let lt = candle_nn::loss::cross_entropy(&logits.t()?.contiguous()?, &target)?;
    Ok(((li + lt)? * 0.5)?)
}

impl Trainer {
    /// Fresh weights (CLIP-style random init from `train.seed`), zero optimiser state.
    pub fn new(cfg: PretrainConfig, device: Device) -> Result<Self> {
        let mut tensors: HashMap<String, Tensor> = match &cfg.init {
            None => ClipWeights::random(&cfg.model, cfg.train.seed, &device)?
                .tensors()
                .clone(),
            Some(init) => warm_start(&init.weights, &cfg.model_at(0))?,
        };
        if let Some(o) = &cfg.objective {
            tensors.insert(
                PATCH_SCALE.into(),
                Tensor::new(&[o.patch_scale_init as f32], &Device::Cpu)?,
            );
        }
        Self::from_tensors(cfg, device, tensors, None)
    }

    /// When the step enters the final phase, resize the positional embedding to the phase's
    /// input size (its AdamW moments restart: they belong to the old grid).
    fn enter_phase(&mut self) -> Result<()> {
        let want = self.cfg.model_at(self.step).vision;
        let rows = (want.image_size / want.patch_size).pow(2) + 1;
        let Some(p) = self.params.iter_mut().find(|p| p.name == VISION_POS) else {
            return Ok(());
        };
        let have = p.var.as_tensor().dim(0)?;
        if have != rows {
            let g0 = ((have - 1) as f64).sqrt().round() as usize;
            let g1 = want.image_size / want.patch_size;
            let t =
                vcp_clip::resize_pos_embed(&p.var.as_tensor().to_device(&Device::Cpu)?, g0, g1)?
                    .to_device(&self.device)?;
            p.m = t.zeros_like()?;
            p.v = t.zeros_like()?;
            p.var = Var::from_tensor(&t)?;
        }
        Ok(())
    }

    fn from_tensors(
        cfg: PretrainConfig,
        device: Device,
        tensors: HashMap<String, Tensor>,
        state: Option<&HashMap<String, Tensor>>,
    ) -> Result<Self> {
        let mut names: Vec<String> = tensors.keys().cloned().collect();
        names.sort();
        let mut params = Vec::with_capacity(names.len());
        for name in names {
            let t = tensors[&name].to_dtype(DType::F32)?.to_device(&device)?;
            let (m, v) = match state {
                Some(s) => (
                    s.get(&format!("adam_m/{name}"))
                        .with_context(|| format!("optimiser state for `{name}` missing"))?
                        .to_device(&device)?,
                    s.get(&format!("adam_v/{name}"))
                        .with_context(|| format!("optimiser state for `{name}` missing"))?
                        .to_device(&device)?,
                ),
                None => (t.zeros_like()?, t.zeros_like()?),
            };
            let is_ls = name == "logit_scale" || name == PATCH_SCALE;
            params.push(Param {
                decay: t.rank() >= 2,
                lr_mult: if is_ls {
                    cfg.train.logit_scale_lr_mult
                } else {
                    1.0
                },
                var: Var::from_tensor(&t)?,
                name,
                m,
                v,
            });
        }
        Ok(Self {
            cfg,
            device,
            params,
            step: 0,
            tokenizer: Tokenizer::clip()?,
        })
    }

    /// The current weights as canonical CLIP tensors (variables: gradients flow to them).
    pub fn weights(&self) -> Result<ClipWeights> {
        let tensors = self
            .params
            .iter()
            .filter(|p| p.name != PATCH_SCALE)
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect();
        Ok(ClipWeights::from_tensors(self.current_model()?, tensors)?)
    }

    /// The architecture the variables have now: `model` at the input size of the positional
    /// embedding as it stands (it changes when a step enters the final phase, so neither the
    /// step count before nor after that step names it in every case).
    pub fn current_model(&self) -> Result<vcp_clip::ClipConfig> {
        let mut m = self.cfg.model.clone();
        if let Some(p) = self.params.iter().find(|p| p.name == VISION_POS) {
            let grid = ((p.var.as_tensor().dim(0)? - 1) as f64).sqrt().round() as usize;
            m.vision.image_size = grid * m.vision.patch_size;
        }
        Ok(m)
    }

    /// Both towers built from the variables, differentiable kernels, native input size.
    pub fn model(&self) -> Result<Clip> {
        let opts = ClipOptions {
            extra_tokens: 0,
            ..ClipOptions::default()
        };
        let mut clip = Clip::new(&self.weights()?, &opts)?;
        clip.vision.set_kernels(Kernels::Differentiable);
        Ok(clip)
    }

    pub fn logit_scale(&self) -> Result<f32> {
        self.scalar_param("logit_scale")
    }

    /// ln of the patch term's scale (`None` without `[objective]`).
    pub fn patch_logit_scale(&self) -> Option<f32> {
        self.scalar_param(PATCH_SCALE).ok()
    }

    fn scalar_param(&self, name: &str) -> Result<f32> {
        let p = self
            .params
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no {name} parameter"))?;
        Ok(p.var.as_tensor().flatten_all()?.to_vec1::<f32>()?[0])
    }

    fn param(&self, name: &str) -> Result<&Tensor> {
        Ok(self
            .params
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no {name} parameter"))?
            .var
            .as_tensor())
    }

    /// Batch of training step `step`: deterministic in (corpus seed, step), so a resumed run
    /// sees exactly the batches it would have seen.
    pub fn batch_for_step(&self, step: usize) -> Result<Batch> {
        make_batch(&self.cfg, &self.tokenizer, step)
    }

    /// Image and text embeddings of a host batch (not normalised).
    pub fn embed(&self, clip: &Clip, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let e = self.embed_all(clip, batch, false)?;
        Ok((e.global, e.captions))
    }

    /// Everything the loss reads, in one pass of each tower: the global image embeddings, the
    /// captions' embeddings, and with `dense` the projected last-block patch tokens of the
    /// rows taking part and the prompt pairs of their kinds (encoded with the captions).
    fn embed_all(&self, clip: &Clip, batch: &Batch, dense: bool) -> Result<Embedded> {
        let s = batch.size;
        let ctx = self.cfg.model.text.context_length;
        let pixels = Tensor::from_slice(&batch.pixels, (batch.n, 3, s, s), &self.device)?;
        let depth = self.cfg.model.vision.layers;
        let targets = batch.dense.as_ref().filter(|t| dense && !t.is_empty());
        let taps: &[usize] = if targets.is_some() { &[depth] } else { &[] };
        let out = clip.vision.forward(&pixels, taps)?;
        let mut ids = batch.ids.clone();
        let mut n_text = batch.n;
        if let (Some(t), Some(o)) = (targets, &self.cfg.objective) {
            let prompts: Vec<String> = t.prompt_kinds.iter().flat_map(|k| o.prompts(k)).collect();
            ids.extend(ids_of(&self.tokenizer, &prompts, ctx)?);
            n_text += prompts.len();
        }
        let ids = Tensor::from_vec(ids, (n_text, ctx), &self.device)?;
        let txt = clip.text.forward_ids(&ids)?;
        let captions = txt.narrow(0, 0, batch.n)?;
        let (patches, prompts) = match targets {
            Some(t) => {
                let tokens = &out.layers[0].1; // [B, 1 + g*g, W]
                let rows = Tensor::from_slice(&t.rows, t.rows.len(), &self.device)?;
                let g2 = tokens.dim(1)? - 1;
                let patch = tokens.index_select(&rows, 0)?.narrow(1, 1, g2)?;
                let patch = clip.vision.post_project(&patch)?; // [R, g*g, D]
                (Some(patch), Some(txt.narrow(0, batch.n, n_text - batch.n)?))
            }
            None => (None, None),
        };
        Ok(Embedded {
            global: out.global,
            captions,
            patches,
            prompts,
        })
    }

    /// The loss of a batch with the current weights.
    pub fn loss(&self, batch: &Batch) -> Result<Tensor> {
        Ok(self.loss_parts(batch)?.total)
    }

    /// The loss and its terms: InfoNCE, and with `[objective]` the weighted patch and state
    /// terms over the rows whose kind is not held out.
    pub fn loss_parts(&self, batch: &Batch) -> Result<LossParts> {
        let clip = self.model()?;
        let e = self.embed_all(&clip, batch, self.cfg.objective.is_some())?;
        let contrastive = clip_loss(&e.global, &e.captions, self.param("logit_scale")?)?;
        let mut parts = LossParts {
            total: contrastive.clone(),
            contrastive,
            patch: None,
            state: None,
        };
        if let (Some(o), Some(t), Some(patches), Some(prompts)) =
            (&self.cfg.objective, &batch.dense, &e.patches, &e.prompts)
        {
            let patch = objective::patch_loss(patches, prompts, self.param(PATCH_SCALE)?, t)?;
            let rows = Tensor::from_slice(&t.rows, t.rows.len(), &self.device)?;
            let global = e.global.index_select(&rows, 0)?;
            let state = objective::state_loss(&global, prompts, o.state_scale, t)?;
            parts.total =
                ((parts.total + (&patch * o.patch_weight)?)? + (&state * o.state_weight)?)?;
            parts.patch = Some(patch);
            parts.state = Some(state);
        }
        Ok(parts)
    }

    /// One optimisation step on `batch`; returns the loss before the update. A NaN/inf loss or
    /// gradient is an error naming the step (the weights are left as they were).
    pub fn train_step(&mut self, batch: &Batch) -> Result<f32> {
        Ok(self.train_step_parts(batch)?.total_value)
    }

    // Long because the loss terms, backward and the AdamW update of one step share the step's
    // tensors; split, each part would pass all of them.
    /// [`Self::train_step`] with the loss's terms.
    pub fn train_step_parts(&mut self, batch: &Batch) -> Result<StepReport> {
        self.enter_phase()?;
        let parts = self.loss_parts(batch)?;
        let scalar = |t: Option<&Tensor>| -> Result<f32> {
            match t {
                Some(t) => Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?),
                None => Ok(0.0),
            }
        };
        let (contrastive, patch, state) = (
            scalar(Some(&parts.contrastive))?,
            scalar(parts.patch.as_ref())?,
            scalar(parts.state.as_ref())?,
        );
        let loss = parts.total;
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !value.is_finite() {
            bail!(
                "the loss became {value} at step {} (lower train.lr or resume from the last checkpoint)",
                self.step + 1
            );
        }
        let grads = loss.backward()?;
        let lr = self.cfg.lr_at(self.step);
        let t = &self.cfg.train;
        let (b1, b2) = (t.betas[0], t.betas[1]);
        let k = (self.step + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(k), 1.0 - b2.powi(k));
        // Check before touching anything: a non-finite gradient leaves the weights unchanged.
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                let s = g.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                if !s.is_finite() {
                    bail!(
                        "a gradient became non-finite at step {} (lower train.lr or resume from the last checkpoint)",
                        self.step + 1
                    );
                }
            }
        }
        let cpu = self.device.is_cpu();
        for p in self.params.iter_mut() {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let h = AdamHyper {
                lr: lr * p.lr_mult,
                b1,
                b2,
                c1,
                c2,
                eps: t.eps,
                wd: if p.decay { t.weight_decay } else { 0.0 },
            };
            p.update(g, h, cpu)?;
            if p.name == "logit_scale" || p.name == PATCH_SCALE {
                p.var.set(&p.var.as_tensor().clamp(0.0, LOGIT_SCALE_MAX)?)?;
            }
        }
        self.step += 1;
        Ok(StepReport {
            total_value: value,
            contrastive,
            patch,
            state,
        })
    }

    /// Save a resumable checkpoint: `DIR/checkpoint.safetensors` (weights and AdamW moments, f32)
    /// and `DIR/checkpoint.json` (step, configuration), each written atomically, JSON last.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        checkpoint::save(dir, &self.params, self.step, &self.cfg)
    }

    /// Resume from `DIR/checkpoint.*`. The checkpoint's architecture must equal `cfg.model`
    /// (errors name the file and the first tensor or key that differs).
    pub fn resume(cfg: PretrainConfig, device: Device, dir: &Path) -> Result<Self> {
        let saved = checkpoint::read(dir, &cfg)?;
        let spath = dir.join("checkpoint.safetensors");
        let mut tr = Self::from_tensors(cfg, device, saved.params, Some(&saved.all))
            .map_err(|e| anyhow::anyhow!("{}: {e}", spath.display()))?;
        tr.step = saved.step;
        Ok(tr)
    }

    /// The trained weights as a compact file: f16 safetensors (`NAME.safetensors`) plus the
    /// configuration and provenance (`NAME.json`).
    pub fn export(&self, dir: &Path, provenance: serde_json::Value) -> Result<()> {
        let model = self.current_model()?;
        checkpoint::export(dir, &self.params, &self.cfg, self.step, &model, provenance)
    }

    /// Names of parameters the last loss gives no gradient to (should be none).
    pub fn params_without_gradient(&self, batch: &Batch) -> Result<Vec<String>> {
        let grads = self.loss(batch)?.backward()?;
        let mut out = Vec::new();
        for p in &self.params {
            match grads.get(p.var.as_tensor()) {
                None => out.push(p.name.clone()),
                Some(g) => {
                    let s = g.abs()?.sum_all()?.to_scalar::<f32>()?;
                    if s == 0.0 {
                        out.push(p.name.clone());
                    }
                }
            }
        }
        Ok(out)
    }
}

pub fn make_batch(cfg: &PretrainConfig, tok: &Tokenizer, step: usize) -> Result<Batch> {
    let n = cfg.batch_at(step);
    let size = cfg.model_at(step).vision.image_size;
    let samples = corpus::batch(cfg.corpus.seed, step as u64, n, cfg.corpus.pairs, size);
    let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    Ok(Batch {
        pixels: pixels_of(&samples),
        ids: ids_of(tok, &captions, cfg.model.text.context_length)?,
        n,
        size,
        dense: cfg
            .objective
            .as_ref()
            .map(|o| DenseTargets::build(&samples, |k| o.is_heldout(k))),
    })
}

/// What one step reports: the loss before the update and its terms.
pub struct StepReport {
    pub total_value: f32,
    pub contrastive: f32,
    pub patch: f32,
    pub state: f32,
}

struct Embedded {
    global: Tensor,
    captions: Tensor,
    patches: Option<Tensor>,
    prompts: Option<Tensor>,
}

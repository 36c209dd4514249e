//! CLIP contrastive pretraining on candle: symmetric InfoNCE over in-batch pairs, a learnable
//! logit scale (init ln(1/0.07), clamped at ln 100 after every step as CLIP does), AdamW with
//! decoupled weight decay on matrices, linear warm-up and cosine decay; every tensor of both
//! towers is trained (unlike VCP-CLIP, which freezes them).
//!
//! The towers are `vcp-clip`'s own, rebuilt from the variables at every step (they pre-transpose
//! and fuse weights at construction; rebuilding keeps those copies in step with the variables
//! and in the autograd graph), so what is trained is exactly what VCP-CLIP later runs.

use crate::batch::{ids_of, pixels_of};
use crate::config::PretrainConfig;
use crate::heldout::card_check;
use crate::objective::{self, DenseTargets};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;
use vcp_clip::block::l2norm;
use vcp_clip::{Clip, ClipOptions, ClipWeights, Kernels, Tokenizer};
use vcp_data::corpus;
use vcp_data::io::{write_atomic, write_atomic_with};

pub use crate::config::LOGIT_SCALE_MAX;

/// The patch term's own learnable log-scale (not a CLIP tensor: kept in checkpoints, never
/// exported).
pub const PATCH_SCALE: &str = "patch_logit_scale";

/// The vision tower's positional embedding (resized when the input size changes).
const VISION_POS: &str = "vision_model.embeddings.position_embedding.weight";

/// One trainable tensor and its optimiser state.
pub struct Param {
    pub name: String,
    pub var: Var,
    /// Decoupled weight decay applies (matrices; open_clip's rule `ndim >= 2`).
    pub decay: bool,
    pub lr_mult: f64,
    m: Tensor,
    v: Tensor,
}

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
        let cpu = self.device.is_cpu();
        let mut updates = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let lr_p = lr * p.lr_mult;
            let wd = if p.decay { t.weight_decay } else { 0.0 };
            let h = AdamHyper {
                lr: lr_p,
                b1,
                b2,
                c1,
                c2,
                eps: t.eps,
                wd,
            };
            updates.push(if cpu {
                adamw_cpu(p.var.as_tensor(), g, &p.m, &p.v, h)?
            } else {
                adamw_tensor(p.var.as_tensor(), g, &p.m, &p.v, h)?
            });
        }
        // Check before touching anything: a non-finite update leaves the weights unchanged.
        for (_, _, w) in &updates {
            let s = w.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !s.is_finite() {
                bail!(
                    "a gradient became non-finite at step {} (lower train.lr or resume from the last checkpoint)",
                    self.step + 1
                );
            }
        }
        let mut it = updates.into_iter();
        for p in self.params.iter_mut() {
            if grads.get(p.var.as_tensor()).is_none() {
                continue;
            }
            let (m, v, w) = it.next().expect("one update per parameter with a gradient");
            p.m = m;
            p.v = v;
            if p.name == "logit_scale" || p.name == PATCH_SCALE {
                p.var.set(&w.clamp(0.0, LOGIT_SCALE_MAX)?)?;
            } else {
                p.var.set(&w)?;
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

    /// Save a resumable checkpoint: `DIR/checkpoint.safetensors` (weights and AdamW moments, f32)
    /// and `DIR/checkpoint.json` (step, configuration), each written atomically, JSON last.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let mut t = HashMap::new();
        for p in &self.params {
            t.insert(
                format!("param/{}", p.name),
                p.var.as_tensor().to_device(&Device::Cpu)?,
            );
            t.insert(format!("adam_m/{}", p.name), p.m.to_device(&Device::Cpu)?);
            t.insert(format!("adam_v/{}", p.name), p.v.to_device(&Device::Cpu)?);
        }
        let st = dir.join("checkpoint.safetensors");
        write_atomic_with(&st, |tmp| candle_core::safetensors::save(&t, tmp))?;
        let meta = serde_json::json!({
            "format": "vcp-pretrain-checkpoint/1",
            "step": self.step,
            "corpus_version": corpus::CORPUS_VERSION,
            "config": self.cfg,
        });
        write_atomic(
            &dir.join("checkpoint.json"),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )?;
        Ok(())
    }

    /// Resume from `DIR/checkpoint.*`. The checkpoint's architecture must equal `cfg.model`
    /// (errors name the file and the first tensor or key that differs).
    pub fn resume(cfg: PretrainConfig, device: Device, dir: &Path) -> Result<Self> {
        let jpath = dir.join("checkpoint.json");
        let spath = dir.join("checkpoint.safetensors");
        if !jpath.exists() {
            bail!("{}: no checkpoint to resume from", jpath.display());
        }
        let text = vcp_data::io::read_regular_string(&jpath, 16 << 20)?;
        let meta: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a checkpoint ({e})", jpath.display()))?;
        if meta.get("format").and_then(|f| f.as_str()) != Some("vcp-pretrain-checkpoint/1") {
            bail!("{}: not a vcp pretraining checkpoint", jpath.display());
        }
        let step = meta
            .get("step")
            .and_then(|s| s.as_u64())
            .with_context(|| format!("{}: `step` missing", jpath.display()))?
            as usize;
        let saved: PretrainConfig = serde_json::from_value(
            meta.get("config")
                .cloned()
                .with_context(|| format!("{}: `config` missing", jpath.display()))?,
        )
        .map_err(|e| anyhow::anyhow!("{}: config: {e}", jpath.display()))?;
        if saved.model != cfg.model {
            bail!(
                "{}: the checkpoint is of another architecture than `model` in the config ({})",
                jpath.display(),
                first_difference(&saved.model, &cfg.model)
            );
        }
        let all = read_safetensors(&spath)?;
        let mut params = HashMap::new();
        for (k, t) in &all {
            if let Some(n) = k.strip_prefix("param/") {
                params.insert(n.to_string(), t.clone());
            }
        }
        // Strictly the architecture's tensors, with their shapes.
        let mut clip_part = params.clone();
        let extra = clip_part.remove(PATCH_SCALE);
        if extra.is_some() != cfg.objective.is_some() {
            bail!(
                "{}: the checkpoint was trained {} an [objective]; the config has {}",
                spath.display(),
                if extra.is_some() { "with" } else { "without" },
                if cfg.objective.is_some() {
                    "one"
                } else {
                    "none"
                }
            );
        }
        ClipWeights::from_tensors(cfg.model_after(step), clip_part)
            .map_err(|e| anyhow::anyhow!("{}: {e}", spath.display()))?;
        for (name, t) in &params {
            for moment in ["adam_m", "adam_v"] {
                if let Some(m) = all.get(&format!("{moment}/{name}")) {
                    if m.dims() != t.dims() {
                        bail!(
                            "{}: `{moment}/{name}` has shape {:?}, its parameter {:?}",
                            spath.display(),
                            m.dims(),
                            t.dims()
                        );
                    }
                }
            }
        }
        let mut tr = Self::from_tensors(cfg, device, params, Some(&all))
            .map_err(|e| anyhow::anyhow!("{}: {e}", spath.display()))?;
        tr.step = step;
        Ok(tr)
    }

    /// The trained weights as a compact file: f16 safetensors (`NAME.safetensors`) plus the
    /// configuration and provenance (`NAME.json`).
    pub fn export(&self, dir: &Path, provenance: serde_json::Value) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let name = &self.cfg.name;
        let mut t = HashMap::new();
        for p in self.params.iter().filter(|p| p.name != PATCH_SCALE) {
            t.insert(
                p.name.clone(),
                p.var
                    .as_tensor()
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F16)?,
            );
        }
        let st = dir.join(format!("{name}.safetensors"));
        write_atomic_with(&st, |tmp| candle_core::safetensors::save(&t, tmp))?;
        // The numbers a user can check: computed here from the exported (f16) file exactly as
        // `card_check` recomputes them from the embedded preset.
        let model = self.current_model()?;
        let exported = load_exported(&st, &model)?;
        let check = card_check(&exported, self.cfg.corpus.seed)?;
        let meta = serde_json::json!({
            "name": name,
            "config": model,
            "steps": self.step,
            "corpus_version": corpus::CORPUS_VERSION,
            "corpus_seed": self.cfg.corpus.seed,
            "card_check": check,
            "provenance": provenance,
        });
        write_atomic(
            &dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )?;
        Ok(())
    }
}

/// All tensors of a safetensors file on the CPU; errors name the file on one line.
fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot read ({})",
            path.display(),
            e.to_string().lines().next().unwrap_or("")
        )
    })
}

/// Read an exported `NAME.safetensors` (f16) back as f32 weights of `model`.
pub fn load_exported(path: &Path, model: &vcp_clip::ClipConfig) -> Result<ClipWeights> {
    let raw = read_safetensors(path)?;
    let t = raw
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    ClipWeights::from_tensors(model.clone(), t)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// AdamW hyper-parameters of one update (bias corrections `c1 = 1 - b1^t`, `c2 = 1 - b2^t`).
#[derive(Clone, Copy)]
pub struct AdamHyper {
    pub lr: f64,
    pub b1: f64,
    pub b2: f64,
    pub c1: f64,
    pub c2: f64,
    pub eps: f64,
    pub wd: f64,
}

/// AdamW (decoupled decay, PyTorch's `torch.optim.AdamW` order: decay, then the Adam step)
/// with tensor ops: any device.
pub fn adamw_tensor(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: AdamHyper,
) -> Result<(Tensor, Tensor, Tensor)> {
    let m = ((m * h.b1)? + (g * (1.0 - h.b1))?)?;
    let v = ((v * h.b2)? + (g.sqr()? * (1.0 - h.b2))?)?;
    let denom = ((&v / h.c2)?.sqrt()? + h.eps)?;
    let step = ((&m / h.c1)? / denom)?;
    let w = (w.detach() * (1.0 - h.lr * h.wd))?;
    let w = (w - (step * h.lr)?)?;
    Ok((m, v, w))
}

/// The same update fused into one pass over host memory, in parallel: on the CPU the
/// tensor version's ten element-wise ops (each a single-threaded pass allocating a fresh
/// buffer) cost more than the rest of a small model's step (measured: 0.5-0.9 s of a 2.5 s
/// step, for the 49408-row token table).
pub fn adamw_cpu(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: AdamHyper,
) -> Result<(Tensor, Tensor, Tensor)> {
    use rayon::prelude::*;
    let shape = w.shape().clone();
    let mut wv = w.flatten_all()?.to_vec1::<f32>()?;
    let gv = g.flatten_all()?.to_vec1::<f32>()?;
    let mut mv = m.flatten_all()?.to_vec1::<f32>()?;
    let mut vv = v.flatten_all()?.to_vec1::<f32>()?;
    let (b1, b2) = (h.b1 as f32, h.b2 as f32);
    let (ic1, ic2) = (1.0 / h.c1 as f32, 1.0 / h.c2 as f32);
    let (lr, eps, decay) = (h.lr as f32, h.eps as f32, (1.0 - h.lr * h.wd) as f32);
    wv.par_chunks_mut(1 << 14)
        .zip(mv.par_chunks_mut(1 << 14))
        .zip(vv.par_chunks_mut(1 << 14))
        .zip(gv.par_chunks(1 << 14))
        .for_each(|(((w, m), v), g)| {
            for i in 0..w.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                w[i] = w[i] * decay - lr * (m[i] * ic1) / ((v[i] * ic2).sqrt() + eps);
            }
        });
    let dev = w.device();
    Ok((
        Tensor::from_vec(mv, shape.clone(), dev)?,
        Tensor::from_vec(vv, shape.clone(), dev)?,
        Tensor::from_vec(wv, shape, dev)?,
    ))
}

fn first_difference(a: &vcp_clip::ClipConfig, b: &vcp_clip::ClipConfig) -> String {
    let (ja, jb) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    for sec in ["vision", "text"] {
        if let (Some(x), Some(y)) = (
            ja.get(sec).and_then(|v| v.as_object()),
            jb.get(sec).and_then(|v| v.as_object()),
        ) {
            for (k, v) in x {
                if y.get(k) != Some(v) {
                    return format!(
                        "model.{sec}.{k}: checkpoint {v}, config {}",
                        y.get(k).cloned().unwrap_or_default()
                    );
                }
            }
        }
    }
    for k in ["embed_dim", "activation"] {
        if ja.get(k) != jb.get(k) {
            return format!(
                "model.{k}: checkpoint {}, config {}",
                ja.get(k).cloned().unwrap_or_default(),
                jb.get(k).cloned().unwrap_or_default()
            );
        }
    }
    "model differs".into()
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

/// Warm-start tensors from `weights` (`tiny_pretrained` or an exported `.safetensors` with its
/// `.json` beside it), checked against `model` (equal but for the vision input size; the
/// positional embedding is resized to `model`'s).
fn warm_start(weights: &str, model: &vcp_clip::ClipConfig) -> Result<HashMap<String, Tensor>> {
    let w = if weights == vcp_clip::pretrained::TINY_PRETRAINED {
        vcp_clip::pretrained::tiny_pretrained(&Device::Cpu)?
    } else {
        let path = Path::new(weights);
        let json = path.with_extension("json");
        let text = vcp_data::io::read_regular_string(&json, 16 << 20).with_context(|| {
            format!(
                "init.weights: {} (the configuration exported beside the weights)",
                json.display()
            )
        })?;
        let meta: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", json.display()))?;
        let cfg: vcp_clip::ClipConfig = serde_json::from_value(
            meta.get("config")
                .cloned()
                .with_context(|| format!("{}: no `config`", json.display()))?,
        )
        .map_err(|e| anyhow::anyhow!("{}: config: {e}", json.display()))?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", json.display()))?;
        load_exported(path, &cfg)?
    };
    let mut same = w.config.clone();
    same.vision.image_size = model.vision.image_size;
    if &same != model {
        bail!(
            "init.weights `{weights}` is of another architecture than `model` ({})",
            first_difference(&same, model)
        );
    }
    let mut t: HashMap<String, Tensor> = w.tensors().clone();
    let (g0, g1) = (w.config.vision.native_grid(), model.vision.native_grid());
    if g0 != g1 {
        let pos = t
            .get(VISION_POS)
            .context("no vision positional embedding")?;
        let r = vcp_clip::resize_pos_embed(pos, g0, g1)?;
        t.insert(VISION_POS.into(), r);
    }
    Ok(t)
}

//! CLIP contrastive pretraining on candle: symmetric InfoNCE over in-batch pairs, a learnable
//! logit scale (init ln(1/0.07), clamped at ln 100 after every step as CLIP does), AdamW with
//! decoupled weight decay on matrices, linear warm-up and cosine decay; every tensor of both
//! towers is trained (unlike VCP-CLIP, which freezes them).
//!
//! The towers are `vcp-clip`'s own, rebuilt from the variables at every step (they pre-transpose
//! and fuse weights at construction; rebuilding keeps those copies in step with the variables
//! and in the autograd graph), so what is trained is exactly what VCP-CLIP later runs.

use crate::config::PretrainConfig;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::HashMap;
use std::path::Path;
use vcp_clip::{Clip, ClipOptions, ClipWeights, Kernels, Tokenizer};
use vcp_data::corpus::{self, CorpusSample};

/// ln(100): CLIP's clamp of the logit scale.
pub const LOGIT_SCALE_MAX: f64 = 4.605_170_185_988_092;

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

pub fn l2norm(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&n)?)
}

impl Trainer {
    /// Fresh weights (CLIP-style random init from `train.seed`), zero optimiser state.
    pub fn new(cfg: PretrainConfig, device: Device) -> Result<Self> {
        let w = ClipWeights::random(&cfg.model, cfg.train.seed, &device)?;
        let tensors: HashMap<String, Tensor> = w.tensors().clone();
        Self::from_tensors(cfg, device, tensors, None)
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
            let is_ls = name == "logit_scale";
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
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect();
        Ok(ClipWeights::from_tensors(self.cfg.model.clone(), tensors)?)
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
        let p = self
            .params
            .iter()
            .find(|p| p.name == "logit_scale")
            .context("no logit_scale parameter")?;
        Ok(p.var.as_tensor().flatten_all()?.to_vec1::<f32>()?[0])
    }

    /// Batch of training step `step`: deterministic in (corpus seed, step), so a resumed run
    /// sees exactly the batches it would have seen.
    pub fn batch_for_step(&self, step: usize) -> Result<Batch> {
        make_batch(&self.cfg, &self.tokenizer, step)
    }

    /// Image and text embeddings of a host batch (not normalised).
    pub fn embed(&self, clip: &Clip, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let s = self.cfg.model.vision.image_size;
        let ctx = self.cfg.model.text.context_length;
        let pixels = Tensor::from_slice(&batch.pixels, (batch.n, 3, s, s), &self.device)?;
        let ids = Tensor::from_slice(&batch.ids, (batch.n, ctx), &self.device)?;
        let img = clip.vision.forward(&pixels, &[])?.global;
        let txt = clip.text.forward_ids(&ids)?;
        Ok((img, txt))
    }

    /// The loss of a batch with the current weights.
    pub fn loss(&self, batch: &Batch) -> Result<Tensor> {
        let clip = self.model()?;
        let (img, txt) = self.embed(&clip, batch)?;
        let ls = self
            .params
            .iter()
            .find(|p| p.name == "logit_scale")
            .context("no logit_scale parameter")?;
        clip_loss(&img, &txt, ls.var.as_tensor())
    }

    /// One optimisation step on `batch`; returns the loss before the update. A NaN/inf loss or
    /// gradient is an error naming the step (the weights are left as they were).
    pub fn train_step(&mut self, batch: &Batch) -> Result<f32> {
        let loss = self.loss(batch)?;
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
            if p.name == "logit_scale" {
                p.var.set(&w.clamp(0.0, LOGIT_SCALE_MAX)?)?;
            } else {
                p.var.set(&w)?;
            }
        }
        self.step += 1;
        Ok(value)
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
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
        candle_core::safetensors::save(&t, tmp.path())
            .with_context(|| format!("{}: cannot write", st.display()))?;
        tmp.persist(&st)
            .with_context(|| format!("{}: cannot write", st.display()))?;
        let meta = serde_json::json!({
            "format": "vcp-pretrain-checkpoint/1",
            "step": self.step,
            "corpus_version": corpus::CORPUS_VERSION,
            "config": self.cfg,
        });
        write_atomic(
            &dir.join("checkpoint.json"),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )
    }

    /// Resume from `DIR/checkpoint.*`. The checkpoint's architecture must equal `cfg.model`
    /// (errors name the file and the first tensor or key that differs).
    pub fn resume(cfg: PretrainConfig, device: Device, dir: &Path) -> Result<Self> {
        let jpath = dir.join("checkpoint.json");
        let spath = dir.join("checkpoint.safetensors");
        let text = std::fs::read_to_string(&jpath)
            .with_context(|| format!("{}: no checkpoint to resume from", jpath.display()))?;
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
        ClipWeights::from_tensors(cfg.model.clone(), params.clone())
            .map_err(|e| anyhow::anyhow!("{}: {e}", spath.display()))?;
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
        for p in &self.params {
            t.insert(
                p.name.clone(),
                p.var
                    .as_tensor()
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F16)?,
            );
        }
        let st = dir.join(format!("{name}.safetensors"));
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        candle_core::safetensors::save(&t, tmp.path())?;
        readable(tmp.as_file())?;
        tmp.persist(&st)
            .with_context(|| format!("{}: cannot write", st.display()))?;
        // The numbers a user can check: computed here from the exported (f16) file exactly as
        // `card_check` recomputes them from the embedded preset.
        let exported = load_exported(&st, &self.cfg.model)?;
        let check = card_check(&exported, self.cfg.corpus.seed)?;
        let meta = serde_json::json!({
            "name": name,
            "config": self.cfg.model,
            "steps": self.step,
            "corpus_version": corpus::CORPUS_VERSION,
            "corpus_seed": self.cfg.corpus.seed,
            "card_check": check,
            "provenance": provenance,
        });
        write_atomic(
            &dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )
    }
}

/// Held-out samples of the model card's fixed check split.
pub const CARD_SPLIT: usize = 64;

/// Zero-shot numbers on the card's fixed split (held-out corpus stream, 64 samples at the
/// native size), f32 on the CPU: what the committed weights must reproduce.
pub fn card_check(w: &ClipWeights, corpus_seed: u64) -> Result<crate::heldout::HeldoutReport> {
    let clip = Clip::new(
        w,
        &ClipOptions {
            extra_tokens: 0,
            ..ClipOptions::default()
        },
    )?;
    let samples =
        crate::heldout::heldout_samples(corpus_seed, CARD_SPLIT, w.config.vision.image_size);
    crate::heldout::evaluate(&clip, &samples, &Device::Cpu)
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

/// Temporary files are created 0600; what we persist is an ordinary 0644 file.
fn readable(f: &std::fs::File) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    let _ = f;
    Ok(())
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    readable(tmp.as_file())?;
    tmp.persist(path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// CLIP-normalised planar pixels of corpus samples, `[n, 3, S, S]` flattened.
pub fn pixels_of(samples: &[CorpusSample]) -> Vec<f32> {
    use vcp_clip::preprocess::{CLIP_MEAN, CLIP_STD};
    let mut out = Vec::new();
    for s in samples {
        let hw = s.size * s.size;
        let base = out.len();
        out.resize(base + 3 * hw, 0.0);
        for (i, px) in s.image.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[base + c * hw + i] = (px[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
    out
}

/// Token ids `[n, C]` flattened (too-long captions truncated with EOT kept last).
pub fn ids_of(tok: &Tokenizer, texts: &[String], ctx: usize) -> Result<Vec<u32>> {
    let mut ids = Vec::with_capacity(texts.len() * ctx);
    for t in texts {
        ids.extend(tok.tokenize(t, ctx, true)?);
    }
    Ok(ids)
}

pub fn make_batch(cfg: &PretrainConfig, tok: &Tokenizer, step: usize) -> Result<Batch> {
    let n = cfg.train.batch_size;
    let samples = corpus::batch(
        cfg.corpus.seed,
        step as u64,
        n,
        cfg.corpus.pairs,
        cfg.model.vision.image_size,
    );
    let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    Ok(Batch {
        pixels: pixels_of(&samples),
        ids: ids_of(tok, &captions, cfg.model.text.context_length)?,
        n,
    })
}

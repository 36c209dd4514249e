//! Training (reference train.py): focal + dice on every map, Adam with two parameter groups,
//! per-epoch checkpoints of the trainables (+ config, sha256), optional validation, NaN/inf stop.

use crate::cache::FeatureCache;
use crate::config::TrainConfig;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor, Var};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use vcp_data::io::read_regular_string;
use vcp_data::{Meta, Record};
use vcp_model::checkpoint;
use vcp_model::VcpModel;

/// Peak resident memory of this process (Linux), in MiB.
/// Sum the gradients of `vars` from another backward pass (loss chunks) into `acc`.
pub fn accumulate(
    acc: Option<candle_core::backprop::GradStore>,
    g: candle_core::backprop::GradStore,
    vars: &[candle_core::Var],
) -> candle_core::Result<candle_core::backprop::GradStore> {
    let Some(mut acc) = acc else { return Ok(g) };
    for var in vars {
        if let Some(gv) = g.get(var.as_tensor()) {
            let s = match acc.get(var.as_tensor()) {
                Some(a) => (a + gv)?,
                None => gv.clone(),
            };
            acc.insert(var.as_tensor(), s);
        }
    }
    Ok(acc)
}

pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn last_epoch(out: &Path) -> Option<usize> {
    std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_prefix("epoch_")?
                .strip_suffix(".safetensors")?
                .parse::<usize>()
                .ok()
        })
        .max()
}

/// Per-sample training transform: reference augmentation and/or the 2x2 mosaic.
pub fn augmentation(
    tc: &TrainConfig,
    records: &[Record],
    root: &Path,
    size: usize,
    seed: u64,
) -> Option<vcp_data::dataset::Transform> {
    if !tc.augment && tc.mosaic_rate <= 0.0 {
        return None;
    }
    let mut anomalous: std::collections::HashMap<String, Vec<Record>> = Default::default();
    for r in records.iter().filter(|r| r.anomaly == 1) {
        anomalous
            .entry(r.cls_name.clone())
            .or_default()
            .push(r.clone());
    }
    let (augment, rate, root) = (tc.augment, tc.mosaic_rate, root.to_path_buf());
    Some(std::sync::Arc::new(
        move |s: &mut vcp_data::dataset::Sample, i: u64| {
            let mut rng = vcp_data::synth::Rng::new(seed ^ i.wrapping_mul(0x9E37_79B9));
            if rate > 0.0 && (rng.f() as f64) < rate {
                if let Some(pool) = anomalous.get(&s.class).filter(|p| !p.is_empty()) {
                    let half = size / 2 + size % 2;
                    let parts: Option<Vec<_>> = (0..4)
                        .map(|_| {
                            vcp_data::dataset::load_sample(&root, &pool[rng.int(pool.len())], half)
                                .ok()
                        })
                        .collect();
                    if let Some(parts) = parts {
                        *s = vcp_data::augment::mosaic(&parts, half, size);
                    }
                }
            }
            if augment {
                vcp_data::augment::augment(
                    s,
                    size,
                    rng.next_u64(),
                    &vcp_data::augment::AugmentConfig::default(),
                );
            }
        },
    ))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub val_ap_px: Option<f64>,
    pub seconds: f64,
    pub checkpoint: String,
    pub sha256: String,
    pub peak_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochLog>,
    pub checkpoint: Option<PathBuf>,
    pub sha256: Option<String>,
    pub seconds: f64,
    pub backbone_seconds: f64,
}

pub struct TrainOptions<'a> {
    pub out: &'a Path,
    pub resume: bool,
    /// Keep only the last epoch's checkpoint (ablation runs).
    pub keep_last_only: bool,
    pub cache: Option<&'a FeatureCache>,
    pub val: Option<(&'a Meta, &'a Path)>,
    pub seed: u64,
    pub quiet: bool,
    /// Show the epoch bars under this multi-progress (ablation runs) instead of on their own.
    pub progress: Option<&'a indicatif::MultiProgress>,
}

/// The reference's optimiser (`train.py`): Adam with two parameter groups, the temperatures at
/// their own learning rate; betas from the config, eps 1e-8, no weight decay (candle's AdamW
/// with weight decay 0 is Adam).
pub struct Optimiser {
    main: candle_nn::AdamW,
    temperatures: candle_nn::AdamW,
}

impl Optimiser {
    pub fn new(main: &[(String, Var)], temps: &[(String, Var)], tc: &TrainConfig) -> Result<Self> {
        use candle_nn::Optimizer;
        let p = |lr: f64| candle_nn::ParamsAdamW {
            lr,
            beta1: tc.betas[0],
            beta2: tc.betas[1],
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let vars = |g: &[(String, Var)]| g.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
        Ok(Self {
            main: candle_nn::AdamW::new(vars(main), p(tc.lr))?,
            temperatures: candle_nn::AdamW::new(vars(temps), p(tc.lr_temperature))?,
        })
    }

    pub fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        use candle_nn::Optimizer;
        self.main.step(grads)?;
        self.temperatures.step(grads)?;
        Ok(())
    }
}

/// Groups of a batch's images per backward pass: per category when the text depends on the
/// category name (one text per group), else the whole batch.
fn loss_groups(classes: &[String], per_class_text: bool) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    if per_class_text {
        for (i, c) in classes.iter().enumerate() {
            match groups.iter_mut().find(|(g, _)| g == c) {
                Some((_, v)) => v.push(i),
                None => groups.push((c.clone(), vec![i])),
            }
        }
    } else {
        groups.push((classes[0].clone(), (0..classes.len()).collect()));
    }
    groups
}

/// The batch's loss and summed gradients, computed per group in chunks of at most `chunk`
/// images. Loss = sum_g (n_g / B) L_g exactly, so the summed gradients equal the full-batch
/// gradient while only one chunk's upsampled maps are held.
fn batch_gradients(
    model: &VcpModel,
    feats: &vcp_model::Features,
    gt: &Tensor,
    groups: &[(String, Vec<usize>)],
    chunk: usize,
    all_vars: &[(String, Var)],
) -> Result<(f32, candle_core::backprop::GradStore)> {
    let n: usize = groups.iter().map(|(_, g)| g.len()).sum();
    let device = gt.device();
    let mut grads: Option<candle_core::backprop::GradStore> = None;
    let mut v = 0f32;
    for (cls, idx) in groups {
        for part in idx.chunks(chunk) {
            let ids = Tensor::from_vec(
                part.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                part.len(),
                device,
            )?;
            let lg = model.logits(&feats.select(part)?, cls, true, false)?;
            let (l, _) = model.loss(&lg, &gt.index_select(&ids, 0)?)?;
            let l = (l * (part.len() as f64 / n as f64))?;
            let lv = l.to_scalar::<f32>()?;
            if !lv.is_finite() {
                bail!("training diverged: loss is {lv}");
            }
            v += lv;
            let g = l.backward()?;
            let vars: Vec<_> = all_vars.iter().map(|(_, v)| v.clone()).collect();
            grads = Some(accumulate(grads, g, &vars)?);
        }
    }
    Ok((v, grads.expect("a non-empty batch")))
}

/// Mean pixel AP over the validation data's categories (the per-epoch log).
fn validation_ap(
    model: &VcpModel,
    vm: &Meta,
    vroot: &Path,
    batch_size: usize,
    o: &TrainOptions,
    device: &Device,
) -> Result<Option<f64>> {
    let vpb = if o.quiet {
        ProgressBar::hidden()
    } else {
        crate::bar(vm.test.len() as u64, "val images")
    };
    let eo = crate::eval::EvalOptions {
        batch_size,
        save_maps: None,
        keep_images: 0,
        cache: o.cache,
    };
    let r = crate::eval::evaluate(model, vm, vroot, &eo, device, &vpb)?;
    vpb.finish_and_clear();
    let aps: Vec<f64> = r.rows.iter().filter_map(|(_, m)| m.ap_px).collect();
    Ok((!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64))
}

/// The frozen features of a batch (from the feature cache when the batch is not augmented) and
/// the seconds the backbone took.
fn batch_features(
    model: &VcpModel,
    b: &vcp_data::dataset::Batch,
    cache: Option<&crate::cache::FeatureCache>,
    root: &Path,
    device: &Device,
) -> Result<(vcp_model::Features, f64)> {
    let size = model.cfg.backbone.image_size;
    let px = Tensor::from_slice(&b.images, (b.len(), 3, size, size), device)?;
    let t = std::time::Instant::now();
    let feats = crate::cache::batch_features(cache, model, &px, root, &b.paths, device)?;
    Ok((feats, t.elapsed().as_secs_f64()))
}

/// With `--resume`: the last epoch with a checkpoint in the output folder, loaded into `model`;
/// 0 when starting afresh.
fn resume(model: &VcpModel, o: &TrainOptions) -> Result<usize> {
    let Some(e) = last_epoch(o.out).filter(|_| o.resume) else {
        return Ok(0);
    };
    checkpoint::load_into(model, &o.out.join(format!("epoch_{e}.safetensors")))?;
    if !o.quiet {
        eprintln!("resuming after epoch {e} (Adam moments restart from zero)");
    }
    Ok(e)
}

/// After an epoch: its checkpoint (the previous one removed with `keep_last_only`), the
/// validation AP when there is a validation set, one line on stderr; returns its log entry.
fn end_epoch(
    model: &VcpModel,
    tc: &TrainConfig,
    o: &TrainOptions,
    epoch: usize,
    mean_loss: f64,
    t0: std::time::Instant,
    device: &Device,
) -> Result<EpochLog> {
    let ck = o.out.join(format!("epoch_{epoch}.safetensors"));
    let sha = checkpoint::save(
        model,
        &ck,
        &[
            ("epoch", epoch.to_string()),
            ("loss", format!("{mean_loss}")),
        ],
    )?;
    if o.keep_last_only && epoch > 1 {
        let prev = o.out.join(format!("epoch_{}.safetensors", epoch - 1));
        let _ = std::fs::remove_file(&prev);
        let _ = std::fs::remove_file(prev.with_extension("safetensors.sha256"));
    }
    let val_ap = match o.val {
        Some((vm, vroot)) => validation_ap(model, vm, vroot, tc.batch_size, o, device)?,
        None => None,
    };
    let e = EpochLog {
        epoch,
        loss: mean_loss,
        val_ap_px: val_ap,
        seconds: t0.elapsed().as_secs_f64(),
        checkpoint: ck.file_name().unwrap().to_string_lossy().to_string(),
        sha256: sha,
        peak_rss_mib: peak_rss_mib(),
    };
    if !o.quiet {
        eprintln!(
            "epoch {epoch}: loss {mean_loss:.4}{} ({:.1} s) -> {}",
            val_ap
                .map(|a| format!(", val pixel AP {:.2}", a * 100.0))
                .unwrap_or_default(),
            e.seconds,
            ck.display()
        );
    }
    Ok(e)
}

// Long because the epoch loop holds what lives across epochs (optimiser, shuffled records, log,
// report); the per-batch work is in `batch_features` / `batch_gradients`, the per-epoch
// bookkeeping in `end_epoch`.
pub fn train(
    model: &VcpModel,
    tc: &TrainConfig,
    meta: &Meta,
    root: &Path,
    o: &TrainOptions,
    device: &Device,
) -> Result<TrainReport> {
    let t_all = std::time::Instant::now();
    std::fs::create_dir_all(o.out)?;
    let start = resume(model, o)? + 1;
    let (main, temps) = model.trainable_groups();
    let all_vars: Vec<(String, Var)> = main.iter().chain(temps.iter()).cloned().collect();
    let mut opt = Optimiser::new(&main, &temps, tc)?;
    let per_class_text = model.text_depends_on_class();
    let mut records: Vec<Record> = meta.test.0.iter().flat_map(|(_, r)| r.clone()).collect();
    let size = model.cfg.backbone.image_size;
    let mut report = TrainReport::default();
    // Resumed: the earlier epochs' lines are kept.
    let mut log = match o.resume {
        true => read_regular_string(&o.out.join("train_log.jsonl"), 1 << 30).unwrap_or_default(),
        false => String::new(),
    };
    for epoch in start..=tc.epochs {
        let t0 = std::time::Instant::now();
        vcp_data::dataset::shuffle(&mut records, o.seed.wrapping_mul(1000) + epoch as u64);
        let pb = match o.quiet {
            true => ProgressBar::hidden(),
            false => crate::bar(records.len() as u64, "images"),
        };
        pb.set_prefix(format!("epoch {epoch}/{}", tc.epochs));
        let transform = augmentation(
            tc,
            &records,
            root,
            size,
            o.seed.wrapping_mul(7919) + epoch as u64,
        );
        let cacheable = transform.is_none();
        let (mut sum, mut steps) = (0f64, 0usize);
        for (step, b) in vcp_data::dataset::batches(
            root.to_path_buf(),
            records.clone(),
            size,
            tc.batch_size,
            2,
            transform,
        )
        .into_iter()
        .enumerate()
        {
            let b = b?;
            if crate::interrupt::requested() {
                bail!("interrupted (Ctrl-C) at epoch {epoch}, step {step}; rerun to continue");
            }
            let n = b.len();
            let cache = o.cache.filter(|_| cacheable);
            let (feats, secs) = batch_features(model, &b, cache, root, device)?;
            report.backbone_seconds += secs;
            let gt = Tensor::from_slice(&b.masks, (n, size, size), device)?;
            let chunk = tc.loss_chunk.unwrap_or(n).max(1);
            let groups = loss_groups(&b.classes, per_class_text);
            let (v, grads) = batch_gradients(model, &feats, &gt, &groups, chunk, &all_vars)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{e} at epoch {epoch}, step {step}; no checkpoint was written for this epoch"
                    )
                })?;
            opt.step(&grads)?;
            sum += v as f64;
            steps += 1;
            pb.inc(n as u64);
            let rate = pb.position() as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!("loss {v:.4} ({rate:.1} img/s)"));
        }
        pb.finish_and_clear();
        let e = end_epoch(model, tc, o, epoch, sum / steps.max(1) as f64, t0, device)?;
        log.push_str(&serde_json::to_string(&e)?);
        log.push('\n');
        vcp_data::io::write_atomic(&o.out.join("train_log.jsonl"), log.as_bytes())?;
        report.checkpoint = Some(o.out.join(&e.checkpoint));
        report.sha256 = Some(e.sha256.clone());
        report.epochs.push(e);
    }
    report.seconds = t_all.elapsed().as_secs_f64();
    Ok(report)
}

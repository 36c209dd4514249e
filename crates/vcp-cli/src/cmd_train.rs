//! `vcp train --config experiments/X.toml [--out DIR] [--resume]` (reference train.py).

use crate::common::{build_model, device, pixels, resolve_data};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use candle_nn::Optimizer;
use std::path::{Path, PathBuf};
use vcp_model::checkpoint;
use vcp_model::config::PromptConfig;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: PathBuf,
    /// Output folder (default: results/train/<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the last epoch checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
    /// Override `[train] epochs`.
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    device: Option<String>,
}

/// Peak resident memory of this process (Linux), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn last_epoch(out: &Path) -> Option<usize> {
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

/// The per-sample training transform: reference augmentation and/or the 2x2 mosaic.
fn augmentation(
    tc: &vcp_model::config::TrainConfig,
    records: &[vcp_data::Record],
    root: &Path,
    size: usize,
    seed: u64,
) -> Option<vcp_data::dataset::Transform> {
    if !tc.augment && tc.mosaic_rate <= 0.0 {
        return None;
    }
    let mut anomalous: std::collections::HashMap<String, Vec<vcp_data::Record>> =
        Default::default();
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

pub fn run(a: Args) -> Result<()> {
    let exp = crate::common::load_experiment(&a.config)?;
    let mut tc = exp
        .train
        .clone()
        .with_context(|| format!("{}: no [train] table", a.config.display()))?;
    if let Some(e) = a.epochs {
        tc.epochs = e;
    }
    let dev = device(a.device.as_deref())?;
    let model = build_model(&exp, &dev)?;
    let (meta, _, root) = resolve_data(&tc.data, tc.root.as_deref(), &exp.synth)?;
    let val = tc
        .val_data
        .as_deref()
        .map(|v| resolve_data(v, None, &exp.synth))
        .transpose()?;
    let name = if exp.name.is_empty() {
        a.config.file_stem().unwrap().to_string_lossy().to_string()
    } else {
        exp.name.clone()
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results/train").join(&name));
    std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
    vcp_data::io::write_atomic(&out.join("config.resolved.toml"), exp.to_toml().as_bytes())?;

    let mut start = 1;
    if a.resume {
        if let Some(e) = last_epoch(&out) {
            checkpoint::load_into(&model, &out.join(format!("epoch_{e}.safetensors")))?;
            start = e + 1;
            eprintln!("resuming after epoch {e} (Adam moments restart from zero)");
        }
    }
    let (main, temps) = model.trainable_groups();
    let all_vars: Vec<(String, candle_core::Var)> =
        main.iter().chain(temps.iter()).cloned().collect();
    let p = |lr: f64| candle_nn::ParamsAdamW {
        lr,
        beta1: tc.betas[0],
        beta2: tc.betas[1],
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt_main =
        candle_nn::AdamW::new(main.iter().map(|(_, v)| v.clone()).collect(), p(tc.lr))?;
    let mut opt_temp = candle_nn::AdamW::new(
        temps.iter().map(|(_, v)| v.clone()).collect(),
        p(tc.lr_temperature),
    )?;
    let per_class_text = matches!(
        model.cfg.prompt,
        PromptConfig::Handcrafted {
            class_name: true,
            ..
        }
    );
    let mut records: Vec<vcp_data::Record> =
        meta.test.0.iter().flat_map(|(_, r)| r.clone()).collect();
    let size = model.cfg.backbone.image_size;
    eprintln!(
        "training {} trainable values on {} images ({} categories) for {} epochs, batch {}",
        model.parameter_count(),
        records.len(),
        meta.test.0.len(),
        tc.epochs,
        tc.batch_size
    );
    let mut log = String::new();
    for epoch in start..=tc.epochs {
        let t0 = std::time::Instant::now();
        vcp_data::dataset::shuffle(&mut records, exp.seed.wrapping_mul(1000) + epoch as u64);
        let pb = crate::cmd_eval::bar(records.len() as u64, "images");
        pb.set_prefix(format!("epoch {epoch}/{}", tc.epochs));
        let (mut sum, mut steps) = (0f64, 0usize);
        let transform = augmentation(
            &tc,
            &records,
            &root,
            size,
            exp.seed.wrapping_mul(7919) + epoch as u64,
        );
        for (step, b) in vcp_data::dataset::batches(
            root.clone(),
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
            let feats = model.encode_images(&pixels(&b, &dev)?)?;
            let gt = Tensor::from_slice(&b.masks, (b.len(), size, size), &dev)?;
            // Groups of images per backward pass: per category when the text depends on the
            // category name, at most `loss_chunk` images each. Loss = sum_g (n_g / B) L_g exactly,
            // so the summed gradients equal the full-batch gradient.
            let n = b.len();
            let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
            if per_class_text {
                for (i, c) in b.classes.iter().enumerate() {
                    match groups.iter_mut().find(|(g, _)| g == c) {
                        Some((_, v)) => v.push(i),
                        None => groups.push((c.clone(), vec![i])),
                    }
                }
            } else {
                groups.push((b.classes[0].clone(), (0..n).collect()));
            }
            let chunk = tc.loss_chunk.unwrap_or(n).max(1);
            let mut grads: Option<candle_core::backprop::GradStore> = None;
            let mut v = 0f32;
            for (cls, idx) in &groups {
                for part in idx.chunks(chunk) {
                    let ids = Tensor::from_vec(
                        part.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                        part.len(),
                        &dev,
                    )?;
                    let lg = model.logits(&feats.select(part)?, cls, true, false)?;
                    let (l, _) = model.loss(&lg, &gt.index_select(&ids, 0)?)?;
                    let l = (l * (part.len() as f64 / n as f64))?;
                    let lv = l.to_scalar::<f32>()?;
                    if !lv.is_finite() {
                        bail!("training diverged: loss is {lv} at epoch {epoch}, step {step}; no checkpoint was written for this epoch");
                    }
                    v += lv;
                    let g = l.backward()?;
                    grads = Some(match grads {
                        None => g,
                        Some(mut acc) => {
                            for (_, var) in &all_vars {
                                if let Some(gv) = g.get(var.as_tensor()) {
                                    let sum = match acc.get(var.as_tensor()) {
                                        Some(a) => (a + gv)?,
                                        None => gv.clone(),
                                    };
                                    acc.insert(var.as_tensor(), sum);
                                }
                            }
                            acc
                        }
                    });
                }
            }
            let grads = grads.expect("a non-empty batch");
            opt_main.step(&grads)?;
            opt_temp.step(&grads)?;
            sum += v as f64;
            steps += 1;
            pb.inc(b.len() as u64);
            let rate = pb.position() as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!("loss {v:.4} ({rate:.1} img/s)"));
        }
        pb.finish_and_clear();
        let mean_loss = sum / steps.max(1) as f64;
        let ck = out.join(format!("epoch_{epoch}.safetensors"));
        let sha = checkpoint::save(
            &model,
            &ck,
            &[
                ("epoch", epoch.to_string()),
                ("loss", format!("{mean_loss}")),
            ],
        )?;
        let mut val_ap = None;
        if let Some((vm, _, vroot)) = &val {
            let vpb = crate::cmd_eval::bar(vm.test.len() as u64, "val images");
            let (rows, _) =
                crate::cmd_eval::evaluate(&model, vm, vroot, tc.batch_size, None, &dev, &vpb)?;
            vpb.finish_and_clear();
            let aps: Vec<f64> = rows.iter().filter_map(|(_, m)| m.ap_px).collect();
            val_ap = (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64);
        }
        let secs = t0.elapsed().as_secs_f64();
        let line = serde_json::json!({"epoch": epoch, "loss": mean_loss, "val_ap_px": val_ap, "seconds": secs,
            "checkpoint": ck.file_name().unwrap().to_string_lossy(), "sha256": sha, "peak_rss_mib": peak_rss_mib()});
        eprintln!(
            "epoch {epoch}: loss {mean_loss:.4}{} ({secs:.1} s) -> {}",
            val_ap
                .map(|a| format!(", val pixel AP {:.2}", a * 100.0))
                .unwrap_or_default(),
            ck.display()
        );
        log.push_str(&line.to_string());
        log.push('\n');
        let mut all = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap_or_default();
        if epoch == start && !a.resume {
            all.clear();
        }
        all.push_str(&line.to_string());
        all.push('\n');
        vcp_data::io::write_atomic(&out.join("train_log.jsonl"), all.as_bytes())?;
    }
    eprintln!("peak memory {:.0} MiB", peak_rss_mib().unwrap_or(0.0));
    Ok(())
}

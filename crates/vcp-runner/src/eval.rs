//! Evaluation of a model on a dataset's test split with the exact metrics of `vcp-metrics`.

use crate::cache::FeatureCache;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use std::path::Path;
use vcp_data::Meta;
use vcp_metrics::{evaluate_category, CategoryMetrics, Curves, MapRef};
use vcp_model::fusion::finalize;
use vcp_model::VcpModel;

/// Per-category metrics in category order.
pub type Rows = Vec<(String, CategoryMetrics)>;

/// An evaluated image kept for the qualitative grid.
pub struct KeptImage {
    pub img_path: String,
    /// `[S, S, 3]`
    pub rgb: Vec<u8>,
    /// Final map `[S, S]`.
    pub map: Vec<f32>,
    pub mask: Vec<bool>,
}

#[derive(Default)]
pub struct EvalOutput {
    pub rows: Rows,
    pub curves: Vec<(String, Curves)>,
    pub notes: Vec<String>,
    /// The first `keep_images` images of each category (anomalous first).
    pub kept: Vec<KeptImage>,
    pub backbone_seconds: f64,
    pub seconds: f64,
    /// Few-shot: the reference images used for each category (dataset-relative paths).
    pub references: Vec<(String, Vec<String>)>,
    /// Test images of each category: `[normal, defective]`.
    pub test_images: Vec<(String, [usize; 2])>,
}

pub struct EvalOptions<'a> {
    pub batch_size: usize,
    pub save_maps: Option<&'a Path>,
    pub keep_images: usize,
    pub cache: Option<&'a FeatureCache>,
}

/// One category's maps before fusion, with its masks, labels, paths and images (`[S, S, 3]`).
struct Category {
    images: Vec<vcp_model::fusion::ImageMaps>,
    masks: Vec<Vec<bool>>,
    labels: Vec<bool>,
    paths: Vec<String>,
    rgbs: Vec<Vec<u8>>,
    backbone_seconds: f64,
}

/// The maps of every test image of category `cls` (few-shot references and memory bank when
/// the model has them), batch by batch.
#[allow(clippy::too_many_arguments)]
fn category_maps(
    model: &VcpModel,
    cls: &str,
    recs: &[vcp_data::meta::Record],
    refs: Option<&vcp_model::model::References>,
    root: &Path,
    o: &EvalOptions,
    device: &Device,
    pb: &ProgressBar,
) -> Result<Category> {
    let size = model.cfg.backbone.image_size;
    let bank_weight = model.fewshot().map_or(0.0, |f| f.memory_bank_weight());
    let mut c = Category {
        images: Vec::new(),
        masks: Vec::new(),
        labels: Vec::new(),
        paths: Vec::new(),
        rgbs: Vec::new(),
        backbone_seconds: 0.0,
    };
    let batches = vcp_data::dataset::batches(
        root.to_path_buf(),
        recs.to_vec(),
        size,
        o.batch_size,
        2,
        None,
    );
    for b in batches {
        // Ctrl-C stops evaluation at the next batch too (the run then leaves no record).
        if crate::interrupt::requested() {
            anyhow::bail!("interrupted (Ctrl-C) during evaluation");
        }
        let b = b?;
        let px = Tensor::from_slice(&b.images, (b.len(), 3, size, size), device)?;
        let tb = std::time::Instant::now();
        let feats = crate::cache::batch_features(o.cache, model, &px, root, &b.paths, device)?;
        c.backbone_seconds += tb.elapsed().as_secs_f64();
        let lg = model.logits_with(&feats, cls, false, false, refs)?;
        let mut maps = model.image_maps(&lg, size)?;
        if let Some(r) = refs.filter(|_| bank_weight > 0.0) {
            let bank = r.memory_bank_maps(&feats, size, model.cfg.fusion.upsample)?;
            for (im, m) in maps.iter_mut().zip(bank.flatten_from(1)?.to_vec2::<f32>()?) {
                im.fewshot = Some((bank_weight as f32, m));
            }
        }
        c.images.extend(maps);
        c.masks.extend(
            b.masks
                .chunks(size * size)
                .map(|m| m.iter().map(|&v| v > 0.5).collect()),
        );
        c.labels.extend(b.labels.iter().map(|&l| l == 1));
        c.paths.extend(b.paths.clone());
        c.rgbs.extend(b.rgb.clone());
        pb.inc(b.len() as u64);
    }
    Ok(c)
}

/// A non-finite map or score (e.g. from a hostile fusion setting or a diverged model) would be
/// ranked arbitrarily and make a plausible-looking AUROC: refuse it, as `vcp eval-maps` does for
/// map files.
fn check_finite(cls: &str, fin: &vcp_model::fusion::Finalized, paths: &[String]) -> Result<()> {
    let bad = fin
        .maps
        .iter()
        .position(|m| m.iter().any(|v| !v.is_finite()));
    let bad = bad.or_else(|| fin.scores.iter().position(|v| !v.is_finite()));
    if let Some(i) = bad {
        anyhow::bail!(
            "category {cls}: the map or score of {} is not finite (NaN or inf); check the `fusion` settings and the training loss",
            paths[i]
        );
    }
    Ok(())
}

/// `--save-maps DIR`: each final map as `DIR/<img_path>.npy`.
fn save_maps(dir: &Path, maps: &[Vec<f32>], paths: &[String], size: usize) -> Result<()> {
    for (m, p) in maps.iter().zip(paths) {
        let a = vcp_data::npy::Array2 {
            height: size,
            width: size,
            data: m.clone(),
        };
        vcp_data::npy::write_f32_2d(&dir.join(Path::new(p).with_extension("npy")), &a)?;
    }
    Ok(())
}

pub fn evaluate(
    model: &VcpModel,
    meta: &Meta,
    root: &Path,
    o: &EvalOptions,
    device: &Device,
    pb: &ProgressBar,
) -> Result<EvalOutput> {
    let t0 = std::time::Instant::now();
    let size = model.cfg.backbone.image_size;
    let mut out = EvalOutput::default();
    for (cls, recs) in &meta.test.0 {
        pb.set_prefix(cls.clone());
        let refs = if model.fewshot().is_some() {
            let r = references(model, meta, root, cls, o, device)?;
            out.references.push((cls.clone(), r.paths.clone()));
            Some(r)
        } else {
            None
        };
        let Category {
            images,
            masks,
            labels,
            paths,
            rgbs,
            backbone_seconds,
        } = category_maps(model, cls, recs, refs.as_ref(), root, o, device, pb)?;
        out.backbone_seconds += backbone_seconds;
        if images.is_empty() {
            out.notes.push(format!("{cls}: no images"));
            continue;
        }
        let fin = finalize(&images, &model.cfg.fusion);
        check_finite(cls, &fin, &paths)?;
        let defective = labels.iter().filter(|&&l| l).count();
        out.test_images
            .push((cls.clone(), [labels.len() - defective, defective]));
        if let Some(dir) = o.save_maps {
            save_maps(dir, &fin.maps, &paths, size)?;
        }
        // Keep a few anomalous images first (they make the qualitative grid), then normal ones.
        let mut order: Vec<usize> = (0..paths.len()).filter(|&i| labels[i]).collect();
        order.extend((0..paths.len()).filter(|&i| !labels[i]));
        for &i in order.iter().take(o.keep_images) {
            out.kept.push(KeptImage {
                img_path: paths[i].clone(),
                rgb: rgbs[i].clone(),
                map: fin.maps[i].clone(),
                mask: masks[i].clone(),
            });
        }
        let refs: Vec<MapRef> = fin
            .maps
            .iter()
            .zip(&masks)
            .map(|(s, m)| MapRef {
                scores: s,
                mask: m,
                height: size,
                width: size,
            })
            .collect();
        let r = evaluate_category(&refs, &labels, &fin.scores)
            .with_context(|| format!("category {cls}"))?;
        for w in r.warnings {
            out.notes.push(format!("{cls}: {w}"));
        }
        out.rows.push((cls.clone(), r.metrics));
        out.curves.push((cls.clone(), r.curves));
    }
    out.seconds = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// Every test category has at least `k` normal images in the `train` split (few-shot references).
pub fn check_references(meta: &Meta, k: usize) -> Result<()> {
    for (cls, _) in &meta.test.0 {
        let n = meta
            .train
            .0
            .iter()
            .find(|(c, _)| c == cls)
            .map(|(_, r)| r.iter().filter(|r| r.anomaly == 0).count())
            .unwrap_or(0);
        if n < k {
            anyhow::bail!(
                "fewshot.k = {k}: category {cls} has {n} normal images in the dataset's train split"
            );
        }
    }
    Ok(())
}

/// Draw `fewshot.k` normal images of `cls` from the dataset's `train` split and encode them.
fn references(
    model: &VcpModel,
    meta: &Meta,
    root: &Path,
    cls: &str,
    o: &EvalOptions,
    device: &Device,
) -> Result<vcp_fewshot::References> {
    let fs = model
        .fewshot()
        .ok_or_else(|| anyhow::anyhow!("references asked of a zero-shot model"))?;
    let k = fs.shots();
    let normal: Vec<_> = meta
        .train
        .0
        .iter()
        .find(|(c, _)| c == cls)
        .map(|(_, r)| r.iter().filter(|r| r.anomaly == 0).cloned().collect())
        .unwrap_or_default();
    if normal.len() < k {
        anyhow::bail!(
            "fewshot.k = {k}: category {cls} has {} normal images in the dataset's train split",
            normal.len()
        );
    }
    // The draw depends on `fewshot.seed` and on the run's seed, so the spread over seeds includes
    // the choice of references (as in WinCLIP's few-shot protocol).
    let seed = fs.seed() ^ model.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let pick = vcp_fewshot::select(normal.len(), k, seed, cls);
    let recs: Vec<_> = pick.iter().map(|&i| normal[i].clone()).collect();
    let size = model.cfg.backbone.image_size;
    let mut feats = Vec::new();
    let mut paths = Vec::new();
    for b in vcp_data::dataset::batches(root.to_path_buf(), recs, size, o.batch_size, 1, None) {
        let b = b?;
        let px = Tensor::from_slice(&b.images, (b.len(), 3, size, size), device)?;
        feats.push(crate::cache::batch_features(
            o.cache, model, &px, root, &b.paths, device,
        )?);
        paths.extend(b.paths.clone());
    }
    let f = vcp_model::Features::cat(&feats)?;
    Ok(model.references(&f, paths)?)
}

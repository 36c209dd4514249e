//! `vcp demo`: the embedded default end-to-end run until the ablation runner lands. A tiny random
//! CLIP encodes a few procedurally generated images with a "defect", compares patch tokens of
//! the tapped layers with the text embeddings of two prompts, and scores the resulting maps with
//! the exact metrics — exercising weights, preprocessing, both towers, the tokenizer and metrics.

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::path::PathBuf;
use vcp_clip::block::l2norm;
use vcp_clip::{Clip, ClipConfig, ClipOptions, ClipWeights};
use vcp_metrics::{evaluate_category, mean_over_categories, MapRef};

#[derive(clap::Args)]
pub struct Args {
    /// Number of synthetic images.
    #[arg(long, default_value_t = 8)]
    images: usize,
    /// Where to write metrics (default: results/demo).
    #[arg(long, default_value = "results/demo")]
    out: PathBuf,
}

/// A textured image with a bright square "defect" on odd indices; returns RGB bytes and mask.
fn synth(i: usize, size: usize) -> (Vec<u8>, Vec<bool>) {
    let mut rgb = vec![0u8; size * size * 3];
    let mut mask = vec![false; size * size];
    let (cy, cx, r) = (
        size / 3 + (i * 7) % (size / 3),
        size / 3 + (i * 13) % (size / 3),
        size / 8,
    );
    for y in 0..size {
        for x in 0..size {
            let t = (((x + i) / 6 + y / 6) % 2) as u8 * 60 + 80;
            let d = i % 2 == 1 && y.abs_diff(cy) < r && x.abs_diff(cx) < r;
            mask[y * size + x] = d;
            let v = if d { 250 } else { t };
            rgb[(y * size + x) * 3..(y * size + x) * 3 + 3].copy_from_slice(&[
                v,
                v / 2 + 40,
                255 - v,
            ]);
        }
    }
    (rgb, mask)
}

/// Zero-shot maps, `[S * S]` per image: patch tokens of each tap through ln_post + proj, cosine
/// with the two prompts (`text`, `[2, D]`, unit rows), softmax, mean over taps, nearest
/// upsampling of the patch grid to pixels.
fn zero_shot_maps(
    clip: &Clip,
    pixels: &Tensor,
    text: &Tensor,
    taps: &[usize],
) -> Result<Vec<Vec<f32>>> {
    let (b, size) = (pixels.dim(0)?, pixels.dim(2)?);
    let out = clip.vision.forward(pixels, taps)?;
    let g = out.grid;
    let mut acc: Option<Tensor> = None;
    for (_, t) in &out.layers {
        let p = l2norm(&clip.vision.post_project(&t.narrow(1, 1, g * g)?)?)?; // [B, g*g, D]
        let logits = (p.broadcast_matmul(&text.t()?)? * 100.0)?; // [B, g*g, 2]
        let prob = candle_nn::ops::softmax_last_dim(&logits)?
            .narrow(2, 1, 1)?
            .squeeze(2)?;
        acc = Some(match acc {
            Some(a) => (a + prob)?,
            None => prob,
        });
    }
    let maps = (acc.unwrap() / taps.len() as f64)?.reshape((b, g, g))?;
    let maps = maps
        .unsqueeze(1)?
        .upsample_nearest2d(size, size)?
        .squeeze(1)?
        .to_vec3::<f32>()?;
    Ok(maps.into_iter().map(|m| m.concat()).collect())
}

pub fn run(a: Args) -> Result<()> {
    let t0 = std::time::Instant::now();
    let dev = Device::Cpu;
    let cfg = ClipConfig::tiny();
    let w = ClipWeights::random(&cfg, 0, &dev)?;
    let size = cfg.vision.image_size;
    let clip = Clip::new(&w, &ClipOptions::default())?;
    let tok = vcp_clip::Tokenizer::vcp()?;
    let prompts = [
        "a photo of a flawless object.",
        "a photo of a damaged object.",
    ];
    let ids: Vec<u32> = prompts
        .iter()
        .map(|p| tok.tokenize(p, 77, false))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let text = l2norm(
        &clip
            .text
            .forward_ids(&Tensor::from_vec(ids, (2, 77), &dev)?)?,
    )?; // [2, D]

    let (imgs, masks): (Vec<_>, Vec<_>) = (0..a.images).map(|i| synth(i, size)).unzip();
    let pixels: Vec<Tensor> = imgs
        .iter()
        .map(|rgb| vcp_clip::preprocess::normalize(rgb, size, &dev))
        .collect::<Result<_, _>>()?;
    let pixels = Tensor::stack(&pixels, 0)?;
    let taps = [3, 6, 9, 12];
    let flat = zero_shot_maps(&clip, &pixels, &text, &taps)?;
    let refs: Vec<MapRef> = flat
        .iter()
        .zip(&masks)
        .map(|(s, m)| MapRef {
            scores: s,
            mask: m,
            height: size,
            width: size,
        })
        .collect();
    let labels: Vec<bool> = (0..a.images).map(|i| i % 2 == 1).collect();
    let scores: Vec<f32> = flat
        .iter()
        .map(|m| vcp_metrics::top1_percent(m).unwrap_or(0.0))
        .collect();
    let report = evaluate_category(&refs, &labels, &scores)?;
    let rows = vec![("synthetic".to_string(), report.metrics)];
    let md = crate::cmd_eval_maps::write_outputs(
        &a.out,
        &rows,
        &report.warnings,
        "mean of each map's top 1%",
    )?;
    let _ = mean_over_categories(&rows);
    outln!("Demo: tiny random CLIP ({} images at {size} px, taps {taps:?}), zero-shot prompts {prompts:?}", a.images);
    outln!("{md}");
    outln!(
        "(random weights: the numbers carry no meaning; this run checks the pipeline end to end)\nWrote {}/metrics.{{json,csv,md}} in {:.1} s",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

//! What the model has learned, on held-out corpus pairs (a stream the training never draws):
//! text→image and image→text recall@1, zero-shot object-kind accuracy ("a photo of a {kind}"
//! over all 41 kinds), and zero-shot defect detection (image AUROC of "a photo of a damaged
//! {kind}" against "a photo of a flawless {kind}" on the global embedding).

use crate::batch::{ids_of, pixels_of};
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;
use vcp_clip::block::l2norm;
use vcp_clip::{Clip, ClipOptions, ClipWeights, Tokenizer};
use vcp_data::corpus::{self, CorpusSample};

/// Offset of the held-out stream from the training stream's seed.
pub const HELDOUT_OFFSET: u64 = 1_000_003;

#[derive(Debug, Clone, Serialize)]
pub struct HeldoutReport {
    pub n: usize,
    pub recall1_t2i: f64,
    pub recall1_i2t: f64,
    pub kind_accuracy: f64,
    pub defect_auroc: f64,
    /// The same two-prompt image AUROC over samples of kinds the v2 objective supervises
    /// (`seen`) and of the benchmark's unseen domain `beta` (`heldout`), which only captions
    /// ever describe.
    pub image_auroc_seen: f64,
    pub image_auroc_heldout: f64,
    /// Pixel AUROC (all pixels of the group's images pooled) of the zero-shot patch readout:
    /// last-block patch tokens through `ln_post` and the projection, two-prompt softmax at
    /// CLIP's scale 100, bilinear (align corners) to the image size.
    pub pixel_auroc_seen: f64,
    pub pixel_auroc_heldout: f64,
}

/// The kinds kept out of the v2 patch and state terms by default: the benchmark's `beta`.
pub fn heldout_kinds() -> [&'static str; 5] {
    vcp_data::synth::DOMAINS[1].1
}

pub fn heldout_samples(seed: u64, n: usize, size: usize) -> Vec<CorpusSample> {
    (0..n as u64)
        .map(|i| corpus::sample(seed.wrapping_add(HELDOUT_OFFSET), i, size))
        .collect()
}

/// Normalised text embeddings of `texts`, `[n, D]`, in chunks.
pub fn text_embeddings(
    clip: &Clip,
    tok: &Tokenizer,
    texts: &[String],
    device: &Device,
) -> Result<Tensor> {
    let ctx = clip.text.context_length();
    let mut out = Vec::new();
    for chunk in texts.chunks(64) {
        let ids = Tensor::from_vec(ids_of(tok, chunk, ctx)?, (chunk.len(), ctx), device)?;
        out.push(l2norm(&clip.text.forward_ids(&ids)?.detach())?);
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// Normalised global image embeddings, `[n, D]`, in chunks.
pub fn image_embeddings(clip: &Clip, samples: &[CorpusSample], device: &Device) -> Result<Tensor> {
    let s = clip.vision.image_size();
    let mut out = Vec::new();
    for chunk in samples.chunks(64) {
        let px = Tensor::from_vec(pixels_of(chunk), (chunk.len(), 3, s, s), device)?;
        out.push(l2norm(&clip.vision.forward(&px, &[])?.global.detach())?);
    }
    Ok(Tensor::cat(&out, 0)?)
}

fn argmax_rows(m: &[Vec<f32>]) -> Vec<usize> {
    m.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |a, (i, &v)| if v > a.1 { (i, v) } else { a },
                )
                .0
        })
        .collect()
}

// Long because the held-out metrics (retrieval both ways, kind accuracy, state AUROC, dense pixel
// AUROC) share the image and text embeddings computed once at its top.
/// `held`: the kinds reported as held out (the objective's `heldout_kinds`; by default
/// [`heldout_kinds`]).
pub fn evaluate(
    clip: &Clip,
    samples: &[CorpusSample],
    held: &[&str],
    device: &Device,
) -> Result<HeldoutReport> {
    let tok = Tokenizer::clip()?;
    let n = samples.len();
    let img = image_embeddings(clip, samples, device)?;
    let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    let txt = text_embeddings(clip, &tok, &captions, device)?;
    let sim = img.matmul(&txt.t()?)?.to_vec2::<f32>()?; // [img, txt]
    let i2t = argmax_rows(&sim);
    let simt: Vec<Vec<f32>> = (0..n)
        .map(|j| (0..n).map(|i| sim[i][j]).collect())
        .collect();
    let t2i = argmax_rows(&simt);
    // A retrieval counts as right when it finds the pair's own partner or an identical caption.
    let r_i2t = (0..n)
        .filter(|&i| i2t[i] == i || captions[i2t[i]] == captions[i])
        .count() as f64
        / n as f64;
    let r_t2i = (0..n)
        .filter(|&j| t2i[j] == j || captions[t2i[j]] == captions[j])
        .count() as f64
        / n as f64;

    let kinds = corpus::kinds();
    let kind_prompts: Vec<String> = kinds.iter().map(|k| format!("a photo of a {k}")).collect();
    let kt = text_embeddings(clip, &tok, &kind_prompts, device)?;
    let ks = img.matmul(&kt.t()?)?.to_vec2::<f32>()?;
    let kpred = argmax_rows(&ks);
    let kind_acc = samples
        .iter()
        .zip(&kpred)
        .filter(|(s, &p)| kinds[p] == s.kind)
        .count() as f64
        / n as f64;

    // Two prompts per kind: flawless (row 2k) and damaged (row 2k + 1).
    let state_prompts: Vec<String> = kinds
        .iter()
        .flat_map(|k| {
            [
                format!("a photo of a flawless {k}"),
                format!("a photo of a damaged {k}"),
            ]
        })
        .collect();
    let st = text_embeddings(clip, &tok, &state_prompts, device)?;
    let ss = img.matmul(&st.t()?)?.to_vec2::<f32>()?;
    let mut labels = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    for (s, row) in samples.iter().zip(&ss) {
        let k = kinds.iter().position(|k| *k == s.kind).unwrap_or(0);
        scores.push(zero_shot_score(row[2 * k], row[2 * k + 1]));
        labels.push(!s.defects.is_empty());
    }
    let auroc = |sel: &dyn Fn(&CorpusSample) -> bool| {
        let (l, sc): (Vec<bool>, Vec<f32>) = samples
            .iter()
            .zip(labels.iter().zip(&scores))
            .filter(|(s, _)| sel(s))
            .map(|(_, (l, s))| (*l, *s))
            .unzip();
        vcp_metrics::binary_metrics(&l, &sc)
            .auroc
            .unwrap_or(f64::NAN)
    };
    let is_held = |s: &CorpusSample| held.contains(&s.kind);
    let (px_seen, px_held) = pixel_aurocs(clip, samples, &st, &kinds, held, device)?;
    Ok(HeldoutReport {
        n,
        recall1_t2i: r_t2i,
        recall1_i2t: r_i2t,
        kind_accuracy: kind_acc,
        defect_auroc: auroc(&|_| true),
        image_auroc_seen: auroc(&|s| !is_held(s)),
        image_auroc_heldout: auroc(&is_held),
        pixel_auroc_seen: px_seen,
        pixel_auroc_heldout: px_held,
    })
}

/// Pixel AUROC of the zero-shot patch readout over seen and held-out kinds.
/// `state_emb`: `[2 * kinds, D]` normalised (flawless, damaged) per kind, in `kinds` order.
fn pixel_aurocs(
    clip: &Clip,
    samples: &[CorpusSample],
    state_emb: &Tensor,
    kinds: &[&'static str],
    held: &[&str],
    device: &Device,
) -> Result<(f64, f64)> {
    let s = clip.vision.image_size();
    let depth = clip.vision.depth();
    let (mut seen, mut heldout) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for chunk in samples.chunks(32) {
        let px = Tensor::from_vec(pixels_of(chunk), (chunk.len(), 3, s, s), device)?;
        let out = clip.vision.forward(&px, &[depth])?;
        let tokens = &out.layers[0].1;
        let g2 = tokens.dim(1)? - 1;
        let patches = clip
            .vision
            .post_project(&tokens.narrow(1, 1, g2)?)?
            .detach();
        // Every sample takes part here; kinds index the full prompt table.
        let t = crate::objective::DenseTargets {
            rows: (0..chunk.len() as u32).collect(),
            kind_index: chunk
                .iter()
                .map(|c| kinds.iter().position(|k| *k == c.kind).unwrap_or(0) as u32)
                .collect(),
            prompt_kinds: kinds.to_vec(),
            labels: vec![],
            masks: vec![],
            size: s,
        };
        let maps = crate::objective::anomaly_maps(&patches, state_emb, 100f64.ln(), &t)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (i, c) in chunk.iter().enumerate() {
            let dst = if held.contains(&c.kind) {
                &mut heldout
            } else {
                &mut seen
            };
            dst.0.extend_from_slice(&c.mask);
            dst.1.extend_from_slice(&maps[i * s * s..(i + 1) * s * s]);
        }
    }
    let au = |(l, sc): &(Vec<bool>, Vec<f32>)| {
        vcp_metrics::binary_metrics(l, sc).auroc.unwrap_or(f64::NAN)
    };
    Ok((au(&seen), au(&heldout)))
}

/// WinCLIP-style score: softmax over the two prompts' cosines at CLIP's scale 100, abnormal
/// probability.
pub fn zero_shot_score(cos_normal: f32, cos_abnormal: f32) -> f32 {
    let (a, b) = (100.0 * cos_normal, 100.0 * cos_abnormal);
    let m = a.max(b);
    let (ea, eb) = ((a - m).exp(), (b - m).exp());
    eb / (ea + eb)
}

/// Held-out samples of the model card's fixed check split.
pub const CARD_SPLIT: usize = 64;

/// Zero-shot numbers on the card's fixed split (held-out corpus stream, 64 samples at the
/// native size), f32 on the CPU: what the committed weights must reproduce.
pub fn card_check(w: &ClipWeights, corpus_seed: u64) -> Result<HeldoutReport> {
    let clip = Clip::new(
        w,
        &ClipOptions {
            extra_tokens: 0,
            ..ClipOptions::default()
        },
    )?;
    let samples = heldout_samples(corpus_seed, CARD_SPLIT, w.config.vision.image_size);
    evaluate(&clip, &samples, &heldout_kinds(), &Device::Cpu)
}

//! What the model has learned, on held-out corpus pairs (a stream the training never draws):
//! text→image and image→text recall@1, zero-shot object-kind accuracy ("a photo of a {kind}"
//! over all 41 kinds), and zero-shot defect detection (image AUROC of "a photo of a damaged
//! {kind}" against "a photo of a flawless {kind}" on the global embedding).

use crate::trainer::{ids_of, l2norm, pixels_of};
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;
use vcp_clip::{Clip, Tokenizer};
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

pub fn evaluate(clip: &Clip, samples: &[CorpusSample], device: &Device) -> Result<HeldoutReport> {
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
    let auroc = vcp_metrics::binary_metrics(&labels, &scores)
        .auroc
        .unwrap_or(f64::NAN);
    Ok(HeldoutReport {
        n,
        recall1_t2i: r_t2i,
        recall1_i2t: r_i2t,
        kind_accuracy: kind_acc,
        defect_auroc: auroc,
    })
}

/// WinCLIP-style score: softmax over the two prompts' cosines at CLIP's scale 100, abnormal
/// probability.
pub fn zero_shot_score(cos_normal: f32, cos_abnormal: f32) -> f32 {
    let (a, b) = (100.0 * cos_normal, 100.0 * cos_abnormal);
    let m = a.max(b);
    let (ea, eb) = ((a - m).exp(), (b - m).exp());
    eb / (ea + eb)
}

//! A batch's tensors on the host: CLIP-normalised pixels and token ids of corpus samples
//! (shared by training and the held-out evaluation).

use anyhow::Result;
use vcp_clip::Tokenizer;
use vcp_data::corpus::CorpusSample;

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

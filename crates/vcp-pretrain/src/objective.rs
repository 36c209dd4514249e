//! The v2 pretraining terms beside InfoNCE (`[objective]` in the recipe): a **patch term** that
//! trains exactly the readout zero-shot maps use (last-block patch tokens through `ln_post` and
//! the projection, compared with "flawless / damaged {kind}") against the corpus's exact defect
//! masks, and an **image-level state term** on the global embedding. CLIP's own loss never
//! involves a patch token, so without the first a patch's embedding does not point toward the
//! text that describes it (the v1 model card measured pixel AUROC 47 with that readout).
//!
//! The segmentation losses are the ones VCP-CLIP itself trains with (`vcp_model::loss`: focal on
//! the two-way softmax, Dice); AnomalyCLIP's form is used for Dice (both channels).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use vcp_clip::block::l2norm;

/// What one batch asks of the patch and state terms: the images that take part (seen kinds
/// only), their kinds' prompt pair, label and mask.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DenseTargets {
    /// Batch rows taking part (kinds not held out).
    pub rows: Vec<u32>,
    /// For each row in `rows`: the index of its kind in `prompt_kinds`.
    pub kind_index: Vec<u32>,
    /// Distinct kinds of `rows`, in order of first appearance; prompt `2k` is the normal prompt
    /// of kind `k`, `2k + 1` the abnormal one.
    pub prompt_kinds: Vec<&'static str>,
    /// For each row in `rows`: 1 when defective.
    pub labels: Vec<u32>,
    /// `[rows, S, S]` flattened: 1.0 on the pixels the defects changed, else 0.0.
    pub masks: Vec<f32>,
    pub size: usize,
}

impl DenseTargets {
    /// Targets of a batch: every sample whose kind `is_heldout` says no to takes part.
    pub fn build(
        samples: &[vcp_data::corpus::CorpusSample],
        is_heldout: impl Fn(&str) -> bool,
    ) -> Self {
        let size = samples.first().map(|s| s.size).unwrap_or(0);
        let mut t = DenseTargets {
            size,
            ..Default::default()
        };
        for (i, s) in samples.iter().enumerate() {
            if is_heldout(s.kind) {
                continue;
            }
            let k = match t.prompt_kinds.iter().position(|k| *k == s.kind) {
                Some(k) => k,
                None => {
                    t.prompt_kinds.push(s.kind);
                    t.prompt_kinds.len() - 1
                }
            };
            t.rows.push(i as u32);
            t.kind_index.push(k as u32);
            t.labels.push(u32::from(!s.defects.is_empty()));
            t.masks
                .extend(s.mask.iter().map(|&m| if m { 1.0f32 } else { 0.0 }));
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Bilinear interpolation matrix `[out, inp]` with PyTorch's `align_corners = True`
/// (the benchmark's fusion upsamples maps this way): `U x` resizes a vector, `U X U^T` a map.
pub fn interp_matrix(out: usize, inp: usize) -> Vec<f32> {
    let mut u = vec![0f32; out * inp];
    for i in 0..out {
        let src = if out > 1 {
            i as f64 * (inp as f64 - 1.0) / (out as f64 - 1.0)
        } else {
            0.0
        };
        let i0 = (src.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let f = (src - i0 as f64) as f32;
        u[i * inp + i0] += 1.0 - f;
        u[i * inp + i1] += f;
    }
    u
}

/// Upsample maps `[N, g, g]` to `[N, S, S]` (bilinear, align corners) as two matrix products,
/// so that autograd carries the gradient back to the patch logits.
pub fn upsample(maps: &Tensor, size: usize) -> Result<Tensor> {
    let (_, g, g2) = maps.dims3()?;
    debug_assert_eq!(g, g2);
    let dev = maps.device();
    let u = Tensor::from_vec(interp_matrix(size, g), (size, g), dev)?.to_dtype(maps.dtype())?;
    let ut = u.t()?.contiguous()?;
    Ok(u.broadcast_matmul(maps)?.broadcast_matmul(&ut)?)
}

/// The patch term.
///
/// # Shapes
/// `patches`: `[R, g*g, D]` projected patch tokens of the rows taking part (not normalised);
/// `prompts`: `[2K, D]` prompt embeddings (not normalised); `log_scale`: `[1]` (`tau_p`).
/// Returns the scalar loss `focal(P, M) + dice(P_a, M) + dice(P_n, 1 - M)`, with `P` the
/// two-way softmax of the upsampled logits `exp(tau_p) * [cos_n, cos_a]`.
pub fn patch_loss(
    patches: &Tensor,
    prompts: &Tensor,
    log_scale: &Tensor,
    t: &DenseTargets,
) -> Result<Tensor> {
    let (r, n, d) = patches.dims3()?;
    let g = (n as f64).sqrt().round() as usize;
    anyhow::ensure!(g * g == n, "patch tokens {n} do not form a square grid");
    anyhow::ensure!(
        r == t.rows.len(),
        "{r} patch rows for {} targets",
        t.rows.len()
    );
    let dev = patches.device();
    let pairs = l2norm(prompts)?.reshape((prompts.dim(0)? / 2, 2, d))?; // [K, 2, D]
    let idx = Tensor::from_slice(&t.kind_index, r, dev)?;
    let per_row = pairs.index_select(&idx, 0)?; // [R, 2, D]
    let cos = l2norm(patches)?.matmul(&per_row.transpose(1, 2)?.contiguous()?)?; // [R, N, 2]
    let logits = cos.broadcast_mul(&log_scale.flatten_all()?.exp()?)?;
    let logits = logits
        .transpose(1, 2)?
        .contiguous()?
        .reshape((r * 2, g, g))?;
    let up = upsample(&logits, t.size)?.reshape((r, 2, t.size, t.size))?;
    let prob = candle_nn::ops::softmax(&up, 1)?; // [R, 2, S, S]
    let mask = Tensor::from_slice(&t.masks, (r, t.size, t.size), dev)?.to_dtype(prob.dtype())?;
    let focal = vcp_model::loss::focal(&prob, &mask)?;
    let p_a = prob.narrow(1, 1, 1)?.squeeze(1)?;
    let p_n = prob.narrow(1, 0, 1)?.squeeze(1)?;
    let dice_a = vcp_model::loss::dice(&p_a, &mask)?;
    let dice_n = vcp_model::loss::dice(&p_n, &mask.affine(-1.0, 1.0)?)?;
    Ok(((focal + dice_a)? + dice_n)?)
}

/// The state term: cross-entropy of `scale * [cos(g, t_n), cos(g, t_a)]` against the label.
///
/// # Shapes
/// `global`: `[R, D]` global embeddings of the rows taking part; `prompts`: `[2K, D]` → scalar.
pub fn state_loss(
    global: &Tensor,
    prompts: &Tensor,
    scale: f64,
    t: &DenseTargets,
) -> Result<Tensor> {
    let (r, d) = global.dims2()?;
    let dev = global.device();
    let pairs = l2norm(prompts)?.reshape((prompts.dim(0)? / 2, 2, d))?;
    let idx = Tensor::from_slice(&t.kind_index, r, dev)?;
    let per_row = pairs.index_select(&idx, 0)?; // [R, 2, D]
    let g = l2norm(global)?.unsqueeze(1)?; // [R, 1, D]
    let logits = (g
        .matmul(&per_row.transpose(1, 2)?.contiguous()?)?
        .squeeze(1)?
        * scale)?; // [R, 2]
    let labels = Tensor::from_slice(&t.labels, r, dev)?;
    Ok(candle_nn::loss::cross_entropy(
        &logits.to_dtype(DType::F32)?,
        &labels,
    )?)
}

/// Per-pixel anomaly probability maps `[R, S, S]` of the patch readout (for monitoring and
/// tests; no gradient needed).
pub fn anomaly_maps(
    patches: &Tensor,
    prompts: &Tensor,
    log_scale: f64,
    t: &DenseTargets,
) -> Result<Tensor> {
    let (r, n, d) = patches.dims3()?;
    let g = (n as f64).sqrt().round() as usize;
    let dev: &Device = patches.device();
    let pairs = l2norm(prompts)?.reshape((prompts.dim(0)? / 2, 2, d))?;
    let idx = Tensor::from_slice(&t.kind_index, r, dev)?;
    let per_row = pairs.index_select(&idx, 0)?;
    let cos = l2norm(patches)?.matmul(&per_row.transpose(1, 2)?.contiguous()?)?;
    let logits = (cos * log_scale.exp())?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((r * 2, g, g))?;
    let up = upsample(&logits, t.size)?.reshape((r, 2, t.size, t.size))?;
    Ok(candle_nn::ops::softmax(&up, 1)?
        .narrow(1, 1, 1)?
        .squeeze(1)?)
}

//! A pretraining step through the fused CPU kernels (`vcp_clip::fused`: LayerNorm, softmax,
//! QuickGELU, bias add with analytic backward) equals the step through candle's composition:
//! every weight after the first AdamW step to 1e-5 (relative to the tensor's largest value) and
//! the losses of three steps to 1e-5, on a v2 recipe (contrastive, patch and state terms). Its
//! own test binary: it switches the kernels process-wide.
//!
//! Left out of the weight comparison: the attention key biases. Softmax is invariant to them, so
//! their true gradient is 0 and both paths hand AdamW rounding noise (~1e-9), which its
//! normalisation `m / (sqrt(v) + eps)` turns into steps of ~1e-3 lr in either direction. Their
//! gradient is checked to be that noise instead.

use candle_core::Device;
use std::path::Path;
use vcp_pretrain::{PretrainConfig, Trainer};

const TINY: &str = r#"
name = "fused_step"
[model]
embed_dim = 16
activation = "quick_gelu"
[model.vision]
width = 24
layers = 2
heads = 2
mlp_dim = 40
patch_size = 8
image_size = 32
ln_eps = 1e-5
[model.text]
width = 24
layers = 2
heads = 2
mlp_dim = 40
context_length = 24
vocab_size = 49408
ln_eps = 1e-5
[corpus]
seed = 3
pairs = 2
[train]
steps = 3
batch_size = 8
lr = 2e-3
warmup = 1
[eval]
heldout = 16
[objective]
patch_weight = 1.0
state_weight = 0.5
"#;

type Weights = Vec<(String, Vec<f32>)>;

/// Losses of three steps, the weights after the first, and the largest |gradient| of the key
/// biases at the start.
fn run(fused: bool) -> (Vec<f32>, Weights, f32) {
    vcp_clip::fused::set_enabled(fused);
    let cfg = PretrainConfig::from_toml(TINY, Path::new("fused_step.toml")).unwrap();
    let mut tr = Trainer::new(cfg, Device::Cpu).unwrap();
    let b0 = tr.batch_for_step(0).unwrap();
    let g = tr.loss(&b0).unwrap().backward().unwrap();
    let key_bias_grad = tr
        .params
        .iter()
        .filter(|p| p.name.ends_with("k_proj.bias"))
        .map(|p| {
            let v = g.get(p.var.as_tensor()).unwrap().abs().unwrap();
            v.max_all().unwrap().to_scalar::<f32>().unwrap()
        })
        .fold(0f32, f32::max);
    let mut losses = vec![tr.train_step(&b0).unwrap()];
    let weights = tr
        .params
        .iter()
        .map(|p| {
            let v = p
                .var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (p.name.clone(), v)
        })
        .collect();
    for s in 1..3 {
        let b = tr.batch_for_step(s).unwrap();
        losses.push(tr.train_step(&b).unwrap());
    }
    (losses, weights, key_bias_grad)
}

#[test]
fn the_fused_step_equals_the_composed_step() {
    let (la, wa, ka) = run(true);
    let (lb, wb, kb) = run(false);
    assert!(ka < 1e-6 && kb < 1e-6, "key-bias gradients {ka}, {kb}");
    vcp_clip::fused::set_enabled(true);
    for (a, b) in la.iter().zip(&lb) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "losses {la:?} vs {lb:?}");
    }
    assert_eq!(wa.len(), wb.len());
    let mut changed = 0;
    for ((name, a), (_, b)) in wa.iter().zip(&wb) {
        if name.ends_with("k_proj.bias") {
            continue;
        }
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        let err = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(err <= 1e-5 * scale, "{name}: {err} (scale {scale})");
        changed += usize::from(a != b);
    }
    // The two paths are different code (not the same path twice): some weights differ in
    // their last bits.
    assert!(
        changed > 0,
        "fused and composed steps gave bit-identical weights"
    );
}

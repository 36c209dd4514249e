//! Tensor comparisons shared by the parity tests of every crate (not part of the model API).

use candle_core::{DType, Tensor};

/// max |a|, in f32.
pub fn max_abs(a: &Tensor) -> f32 {
    a.to_dtype(DType::F32)
        .and_then(|t| t.abs())
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.max(0))
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max_abs")
}

/// max |a - b|, in f32; the shapes must agree.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).expect("f32");
    let b = b.to_dtype(DType::F32).expect("f32");
    max_abs(&(a - b).expect("difference"))
}

/// Standard-normal values from a seed (candle's CPU generator cannot be seeded), so that tests
/// see the same inputs on every run.
pub fn seeded_randn(seed: u64, shape: &[usize], dev: &candle_core::Device) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = vcp_data::rng::SplitMix64(seed);
    let v: Vec<f32> = (0..n).map(|_| rng.normal_f64() as f32).collect();
    Tensor::from_vec(v, shape, dev).expect("seeded_randn")
}

/// Weights for `cfg` with every tensor drawn from N(0, 0.3) (LayerNorm gains from 1 + N(0, 0.3)),
/// each from its own seed (`seed` and the tensor's rank among the sorted names), so that biases
/// and gains are not the 0s and 1s of a fresh initialisation and a test sees the same values
/// on every run.
pub fn random_weights(cfg: &crate::ClipConfig, seed: u64) -> crate::ClipWeights {
    let dev = candle_core::Device::Cpu;
    let base = crate::ClipWeights::random(cfg, seed, &dev).expect("random weights");
    let mut names: Vec<&String> = base.tensors().keys().collect();
    names.sort();
    let tensors = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let dims = base.tensors()[name].dims();
            let mut r = (seeded_randn(seed * 1000 + i as u64, dims, &dev) * 0.3).expect("scale");
            if name.contains("layer_norm") && name.ends_with("weight") {
                r = (r + 1.0).expect("shift");
            }
            (name.clone(), r)
        })
        .collect();
    crate::ClipWeights::from_tensors(cfg.clone(), tensors).expect("weights")
}

/// A tensor's values as a flat f32 vector.
pub fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("flat")
}

/// The additive causal mask `[n, n]` (0 on and below the diagonal, -inf above), built here
/// rather than taken from the text tower so that tests compare against an independent one.
pub fn causal_mask(n: usize) -> Tensor {
    let v: Vec<f32> = (0..n * n)
        .map(|i| {
            if i % n > i / n {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(v, (n, n), &candle_core::Device::Cpu).expect("causal mask")
}

/// The `tiny` config with a single vision block of width `w`, `heads` heads and MLP width `m`
/// (and one text block): for tests of one block on odd shapes.
pub fn one_block_config(w: usize, heads: usize, m: usize) -> crate::ClipConfig {
    let mut c = crate::ClipConfig::tiny();
    c.vision.width = w;
    c.vision.heads = heads;
    c.vision.mlp_dim = m;
    c.vision.layers = 1;
    c.vision.image_size = 32;
    c.text.layers = 1;
    c
}

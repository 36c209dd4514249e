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

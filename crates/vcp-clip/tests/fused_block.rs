//! The transformer block as one op with a hand-written backward (`vcp_clip::fused_block`)
//! against the same block composed from candle's ops (`Block::forward_composed`, every op a node
//! of candle's autograd), and against finite differences: output and the gradients of the input
//! and of every weight, with and without the causal mask, trained and frozen weights, odd
//! shapes (1 token, widths that are not multiples of 8, batch 1).

use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;
use vcp_clip::block::{Block, Kernels, Scores};
use vcp_clip::testing::{causal_mask, flat, one_block_config, seeded_randn};
use vcp_clip::{Activation, ClipWeights};

const PREFIX: &str = "vision_model.encoder.layers.0";

/// The block's weights: every tensor random (LayerNorm gains around 1, the rest N(0, 0.3)),
/// as variables when `train`.
fn block(w: usize, heads: usize, m: usize, seed: u64, train: bool) -> (Block, Vec<(String, Var)>) {
    let (b, vars, _) = block_and_weights(w, heads, m, seed, train);
    (b, vars)
}

fn load(wts: &ClipWeights, heads: usize) -> Block {
    Block::load(wts, PREFIX, heads, 1e-5, Activation::QuickGelu).unwrap()
}

fn block_and_weights(
    w: usize,
    heads: usize,
    m: usize,
    seed: u64,
    train: bool,
) -> (Block, Vec<(String, Var)>, ClipWeights) {
    let cfg = one_block_config(w, heads, m);
    let base = ClipWeights::random(&cfg, seed, &Device::Cpu).unwrap();
    let mut vars = Vec::new();
    let mut tensors = HashMap::new();
    for (i, (name, t)) in base.tensors().iter().enumerate() {
        let mut r = seeded_randn(seed * 1000 + i as u64, t.dims(), &Device::Cpu);
        r = (r * 0.3).unwrap();
        if name.contains("layer_norm") && name.ends_with("weight") {
            r = (r + 1.0).unwrap();
        }
        let t = if train && name.starts_with(PREFIX) {
            let v = Var::from_tensor(&r).unwrap();
            vars.push((name.clone(), v.clone()));
            v.as_tensor().clone()
        } else {
            r
        };
        tensors.insert(name.clone(), t);
    }
    let wts = ClipWeights::from_tensors(cfg.clone(), tensors).unwrap();
    (load(&wts, heads), vars, wts)
}

/// max |a - b| / max(max |b|, 1e-6).
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (flat(a), flat(b));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// `sum(block(x) * r)` through the one-op block (`one_op`) or the composed one.
fn loss(b: &Block, x: &Tensor, r: &Tensor, mask: Option<&Tensor>, one_op: bool) -> Tensor {
    let y = if one_op {
        b.forward(x, mask, Kernels::Differentiable).unwrap()
    } else {
        b.forward_composed(x, mask, Kernels::Differentiable, Scores::QueryKey)
            .unwrap()
    };
    (y * r).unwrap().sum_all().unwrap()
}

/// Output and every gradient of both paths agree (to 1e-5 of the tensor's largest value;
/// in practice to the last bit or two: the same kernels run in the same order).
fn check_against_composition(bsz: usize, n: usize, w: usize, heads: usize, m: usize, masked: bool) {
    let (b, vars) = block(w, heads, m, 7 + n as u64, true);
    let x = Var::from_tensor(&seeded_randn(3, &[bsz, n, w], &Device::Cpu)).unwrap();
    let r = seeded_randn(4, &[bsz, n, w], &Device::Cpu);
    let mask = masked.then(|| causal_mask(n));
    let ctx = format!("B={bsz} N={n} W={w} H={heads} M={m} masked={masked}");

    let y1 = b
        .forward(&x, mask.as_ref(), Kernels::Differentiable)
        .unwrap();
    let y0 = b
        .forward_composed(&x, mask.as_ref(), Kernels::Differentiable, Scores::QueryKey)
        .unwrap();
    assert!(
        rel(&y1, &y0) < 1e-6,
        "{ctx}: outputs differ by {}",
        rel(&y1, &y0)
    );

    let g1 = loss(&b, &x, &r, mask.as_ref(), true).backward().unwrap();
    let g0 = loss(&b, &x, &r, mask.as_ref(), false).backward().unwrap();
    let dx1 = g1.get(x.as_tensor()).expect("dx, one op");
    let dx0 = g0.get(x.as_tensor()).expect("dx, composed");
    assert!(
        rel(dx1, dx0) < 1e-5,
        "{ctx}: dx differs by {}",
        rel(dx1, dx0)
    );
    assert!(vars.len() == 16, "{ctx}: {} block tensors", vars.len());
    for (name, v) in &vars {
        let a = g1
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{ctx}: no gradient for {name}"));
        let e = g0.get(v.as_tensor()).unwrap();
        // The key bias: softmax is invariant to it, its true gradient is 0 and both sides
        // hold rounding noise; compare it in absolute terms.
        if name.ends_with("k_proj.bias") {
            let big = flat(a).iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(big < 1e-4, "{ctx}: key-bias gradient {big}");
            continue;
        }
        assert!(rel(a, e) < 1e-5, "{ctx}: d{name} differs by {}", rel(a, e));
    }
}

#[test]
fn one_op_block_equals_the_composed_block_in_value_and_every_gradient() {
    // (batch, tokens, width, heads, mlp): the pretraining tower's head dim, odd token counts,
    // widths that are not multiples of 8, one token, batch one.
    check_against_composition(3, 17, 24, 2, 40, false);
    check_against_composition(2, 9, 20, 4, 36, true);
    check_against_composition(1, 1, 12, 3, 20, false);
    check_against_composition(1, 5, 13, 1, 7, true);
}

#[test]
fn frozen_weights_give_the_input_gradient_alone_and_the_same_values() {
    let (b, vars) = block(20, 2, 36, 5, false);
    assert!(vars.is_empty());
    let x = Var::from_tensor(&seeded_randn(8, &[2, 7, 20], &Device::Cpu)).unwrap();
    let r = seeded_randn(9, &[2, 7, 20], &Device::Cpu);
    let mask = causal_mask(7);
    let g1 = loss(&b, &x, &r, Some(&mask), true).backward().unwrap();
    let g0 = loss(&b, &x, &r, Some(&mask), false).backward().unwrap();
    let (dx1, dx0) = (
        g1.get(x.as_tensor()).unwrap(),
        g0.get(x.as_tensor()).unwrap(),
    );
    assert!(rel(dx1, dx0) < 1e-5, "dx differs by {}", rel(dx1, dx0));
    // The gradient store holds the input and the loss's own nodes, nothing of the block's
    // weights (plain tensors): one op (mul, sum, block) fewer than the composed graph's.
    assert!(
        g1.get_ids().count() < g0.get_ids().count(),
        "{} vs {} gradients",
        g1.get_ids().count(),
        g0.get_ids().count()
    );
    // Nothing to differentiate: the same output, no graph.
    let xp = x.as_tensor().detach();
    let y1 = b
        .forward(&xp, Some(&mask), Kernels::Differentiable)
        .unwrap();
    let y0 = b
        .forward_composed(&xp, Some(&mask), Kernels::Differentiable, Scores::QueryKey)
        .unwrap();
    assert!(!y1.track_op());
    assert_eq!(flat(&y1), flat(&y0));
}

/// Directional derivatives by central differences in f64 on the loss's f32 values:
/// `(L(θ + εv) - L(θ - εv)) / 2ε` against `<∇L, v>`, for the input and two weights.
#[test]
fn gradients_match_finite_differences() {
    let (bsz, n, w, heads, m) = (2, 6, 12, 2, 20);
    let (b, vars, wts) = block_and_weights(w, heads, m, 21, true);
    let x = Var::from_tensor(&seeded_randn(31, &[bsz, n, w], &Device::Cpu)).unwrap();
    let r = seeded_randn(32, &[bsz, n, w], &Device::Cpu);
    let mask = causal_mask(n);
    let grads = loss(&b, &x, &r, Some(&mask), true).backward().unwrap();
    drop(b);
    let mut checked = vec![("input".to_string(), x.clone())];
    for want in [
        "self_attn.q_proj.weight",
        "mlp.fc1.bias",
        "layer_norm2.weight",
    ] {
        checked.push(
            vars.iter()
                .find(|(k, _)| k.ends_with(want))
                .unwrap()
                .clone(),
        );
    }
    for (i, (name, v)) in checked.iter().enumerate() {
        let g = grads.get(v.as_tensor()).unwrap();
        let dir = seeded_randn(40 + i as u64, v.as_tensor().dims(), &Device::Cpu);
        let analytic: f64 = flat(g)
            .iter()
            .zip(flat(&dir))
            .map(|(a, b)| *a as f64 * b as f64)
            .sum();
        let orig = v.as_tensor().copy().unwrap();
        let eps = 1e-2;
        let at = |s: f64| -> f64 {
            v.set(&(&orig + (&dir * s).unwrap()).unwrap()).unwrap();
            // Rebuilt: the block's transposed weights are copies made when it is built.
            let lb = loss(&load(&wts, heads), &x, &r, Some(&mask), true);
            lb.to_scalar::<f32>().unwrap() as f64
        };
        let (lp, lm) = (at(eps), at(-eps));
        v.set(&orig).unwrap();
        let numeric = (lp - lm) / (2.0 * eps);
        let err = (numeric - analytic).abs() / analytic.abs().max(1e-3);
        assert!(
            err < 2e-2,
            "{name}: finite difference {numeric} vs analytic {analytic} (rel {err})"
        );
    }
}

/// The attention core runs per chunk of samples, one chunk per thread: the output and every
/// gradient are the same to the bit on 1, 2 and 3 threads.
#[test]
fn results_do_not_depend_on_the_number_of_threads() {
    let (b, vars) = block(24, 2, 40, 13, true);
    let x = Var::from_tensor(&seeded_randn(51, &[5, 9, 24], &Device::Cpu)).unwrap();
    let r = seeded_randn(52, &[5, 9, 24], &Device::Cpu);
    let mask = causal_mask(9);
    let run = |threads: usize| -> Vec<Vec<f32>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let y = b
                .forward(x.as_tensor(), Some(&mask), Kernels::Differentiable)
                .unwrap();
            let g = loss(&b, &x, &r, Some(&mask), true).backward().unwrap();
            let mut out = vec![flat(&y), flat(g.get(x.as_tensor()).unwrap())];
            out.extend(
                vars.iter()
                    .map(|(_, v)| flat(g.get(v.as_tensor()).unwrap())),
            );
            out
        })
    };
    let one = run(1);
    assert_eq!(one, run(2), "1 vs 2 threads");
    assert_eq!(one, run(3), "1 vs 3 threads");
}

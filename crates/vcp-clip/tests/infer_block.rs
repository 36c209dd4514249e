//! The inference block (`vcp_clip::infer_block`, what `Block::forward` runs with
//! `Kernels::Fused` on CPU f32) against a float64 hand computation of the pre-LN block and
//! against candle's composition of the same block (`Block::forward_composed`), on odd shapes
//! (1 token, widths that are not multiples of 8, batch 1), with and without a causal mask, for
//! each score rule; and the same bits on any number of threads.

use candle_core::{Device, Var};
use vcp_clip::block::{Block, Kernels, Scores};
use vcp_clip::testing::{causal_mask, flat, one_block_config, random_weights, seeded_randn};
use vcp_clip::{Activation, ClipWeights};

const PREFIX: &str = "vision_model.encoder.layers.0";
const EPS: f64 = 1e-5;

fn weights(w: usize, heads: usize, m: usize, seed: u64) -> ClipWeights {
    random_weights(&one_block_config(w, heads, m), seed)
}

fn block(wts: &ClipWeights, heads: usize, act: Activation) -> Block {
    Block::load(wts, PREFIX, heads, EPS, act).unwrap()
}

fn f64s(wts: &ClipWeights, name: &str) -> Vec<f64> {
    flat(&wts.tensors()[&format!("{PREFIX}.{name}")])
        .into_iter()
        .map(f64::from)
        .collect()
}

/// max |a - b| / max(max |b|, 1e-6); infinite when a value is not finite (`f64::max` would
/// skip a NaN).
fn rel(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    if !a.iter().all(|v| v.is_finite()) || !b.iter().all(|v| v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((f64::from(*x) - y).abs()))
        / scale
}

/// `y = x W^T + b` on rows of `x` (`W`: [out, in] as stored in the checkpoint).
fn linear(x: &[f64], w: &[f64], b: &[f64], inp: usize) -> Vec<f64> {
    let out = b.len();
    x.chunks(inp)
        .flat_map(|r| {
            (0..out).map(move |o| b[o] + (0..inp).map(|i| r[i] * w[o * inp + i]).sum::<f64>())
        })
        .collect()
}

fn layer_norm(x: &[f64], g: &[f64], b: &[f64]) -> Vec<f64> {
    let w = g.len();
    x.chunks(w)
        .flat_map(|r| {
            let mean = r.iter().sum::<f64>() / w as f64;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / w as f64;
            let inv = 1.0 / (var + EPS).sqrt();
            (0..w).map(move |i| (r[i] - mean) * inv * g[i] + b[i])
        })
        .collect()
}

/// The block in float64 from the checkpoint's tensors: `x + attn(ln_1(x))`, then
/// `+ mlp(ln_2(.))` with QuickGELU; scores from projections `sa` and `sb` (0 q, 1 k, 2 v).
fn reference(
    wts: &ClipWeights,
    x: &[f64],
    (bsz, n, w, heads): (usize, usize, usize, usize),
    (sa, sb): (usize, usize),
    masked: bool,
) -> Vec<f64> {
    let p = |s: &str| f64s(wts, s);
    let h1 = layer_norm(x, &p("layer_norm1.weight"), &p("layer_norm1.bias"));
    let proj: Vec<Vec<f64>> = ["q_proj", "k_proj", "v_proj"]
        .iter()
        .map(|s| {
            linear(
                &h1,
                &p(&format!("self_attn.{s}.weight")),
                &p(&format!("self_attn.{s}.bias")),
                w,
            )
        })
        .collect();
    let hd = w / heads;
    let scale = (hd as f64).powf(-0.5);
    let mut merged = vec![0f64; bsz * n * w];
    for s in 0..bsz {
        for h in 0..heads {
            let at = |t: usize, i: usize, j: usize| proj[t][(s * n + i) * w + h * hd + j];
            for i in 0..n {
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        if masked && j > i {
                            f64::NEG_INFINITY
                        } else {
                            scale * (0..hd).map(|d| at(sa, i, d) * at(sb, j, d)).sum::<f64>()
                        }
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|v| (v - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    merged[(s * n + i) * w + h * hd + d] =
                        (0..n).map(|j| e[j] / z * at(2, j, d)).sum::<f64>();
                }
            }
        }
    }
    let attn = linear(
        &merged,
        &p("self_attn.out_proj.weight"),
        &p("self_attn.out_proj.bias"),
        w,
    );
    let x2: Vec<f64> = x.iter().zip(&attn).map(|(a, b)| a + b).collect();
    let h2 = layer_norm(&x2, &p("layer_norm2.weight"), &p("layer_norm2.bias"));
    let u = linear(&h2, &p("mlp.fc1.weight"), &p("mlp.fc1.bias"), w);
    let g: Vec<f64> = u.iter().map(|v| v / (1.0 + (-1.702 * v).exp())).collect();
    let m = linear(
        &g,
        &p("mlp.fc2.weight"),
        &p("mlp.fc2.bias"),
        u.len() / (bsz * n),
    );
    x2.iter().zip(&m).map(|(a, b)| a + b).collect()
}

const SHAPES: [(usize, usize, usize, usize, usize); 4] = [
    // (batch, tokens, width, heads, mlp width)
    (1, 1, 12, 3, 20),
    (1, 7, 13, 1, 9),
    (2, 5, 20, 4, 36),
    (3, 17, 24, 2, 40),
];

#[test]
fn inference_block_equals_a_float64_computation_and_the_composition() {
    let rules = [
        (Scores::QueryKey, (0, 1)),
        (Scores::ValueValue, (2, 2)),
        (Scores::QueryQuery, (0, 0)),
    ];
    for (k, &(bsz, n, w, heads, m)) in SHAPES.iter().enumerate() {
        let wts = weights(w, heads, m, 11 + k as u64);
        let blk = block(&wts, heads, Activation::QuickGelu);
        let x = seeded_randn(5 + k as u64, &[bsz, n, w], &Device::Cpu);
        let xf: Vec<f64> = flat(&x).into_iter().map(f64::from).collect();
        for masked in [false, true] {
            let mask = masked.then(|| causal_mask(n));
            for &(rule, proj) in &rules {
                let ctx = format!("B={bsz} N={n} W={w} H={heads} M={m} masked={masked} {rule:?}");
                let y = blk
                    .forward_scores(&x, mask.as_ref(), Kernels::Fused, rule)
                    .unwrap();
                assert_eq!(y.dims(), [bsz, n, w], "{ctx}");
                let want = reference(&wts, &xf, (bsz, n, w, heads), proj, masked);
                let e = rel(&flat(&y), &want);
                assert!(e < 2e-6, "{ctx}: vs float64 {e:e}");
                // candle's composition (its own softmax kernel): the same up to f32 rounding.
                let composed = blk
                    .forward_composed(&x, mask.as_ref(), Kernels::Fused, rule)
                    .unwrap();
                let c: Vec<f64> = flat(&composed).into_iter().map(f64::from).collect();
                let e = rel(&flat(&y), &c);
                assert!(e < 1e-6, "{ctx}: vs composition {e:e}");
            }
        }
    }
}

#[test]
fn a_tracked_input_takes_the_composed_path() {
    // In-place adds cannot be part of a graph: an input that needs a gradient gets candle's
    // composition, to the bit.
    let (bsz, n, w, heads, m) = SHAPES[2];
    let wts = weights(w, heads, m, 3);
    let blk = block(&wts, heads, Activation::QuickGelu);
    let x = Var::from_tensor(&seeded_randn(9, &[bsz, n, w], &Device::Cpu)).unwrap();
    let y = blk.forward(x.as_tensor(), None, Kernels::Fused).unwrap();
    let composed = blk
        .forward_composed(x.as_tensor(), None, Kernels::Fused, Scores::QueryKey)
        .unwrap();
    assert!(y.track_op());
    assert_eq!(flat(&y), flat(&composed));
}

#[test]
fn results_do_not_depend_on_the_number_of_threads() {
    let (bsz, n, w, heads, m) = SHAPES[3];
    let wts = weights(w, heads, m, 4);
    let blk = block(&wts, heads, Activation::QuickGelu);
    let x = seeded_randn(8, &[bsz, n, w], &Device::Cpu);
    let mask = causal_mask(n);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let a = blk.forward(&x, None, Kernels::Fused).unwrap();
            let b = blk.forward(&x, Some(&mask), Kernels::Fused).unwrap();
            (flat(&a), flat(&b))
        })
    };
    let one = run(1);
    for t in [2, 3] {
        assert!(one == run(t), "{t} threads differ from 1");
    }
}

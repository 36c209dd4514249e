//! Dense-CLIP paths of the image tower (value-value, Surgery, ClearCLIP) and mixed precision.
//!
//! * The value-value attention is checked against a hand computation in plain f64 loops from
//!   the block's weights; each dense path against its defining recurrence over the blocks.
//! * bf16/f16 towers against the f32 ones on the same random weights, within stated tolerances.

use candle_core::{DType, Device, Tensor};
use vcp_clip::block::{Kernels, Scores};
use vcp_clip::testing::{max_abs, max_abs_diff};
use vcp_clip::{Clip, ClipConfig, ClipOptions, ClipWeights, DensePath};

fn tiny() -> (ClipWeights, Tensor) {
    let dev = Device::Cpu;
    let w = ClipWeights::random(&ClipConfig::tiny(), 7, &dev).unwrap();
    let px = vcp_clip::testing::seeded_randn(1, &[2, 3, 64, 64], &dev);
    (w, px)
}

fn clip(w: &ClipWeights, dense: DensePath, dtype: DType) -> Clip {
    Clip::new(
        w,
        &ClipOptions {
            image_size: Some(64),
            dense,
            dtype,
            ..Default::default()
        },
    )
    .unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Value-value (AnomalyCLIP / Surgery) `softmax(v v^T / sqrt(hd)) v` and query-query (ClearCLIP)
/// `softmax(q q^T / sqrt(hd)) v` per head, then the output projection, from the raw weights.
#[test]
fn value_value_and_query_query_attention_by_hand() {
    for (scores, proj) in [
        (Scores::ValueValue, "v_proj"),
        (Scores::QueryQuery, "q_proj"),
    ] {
        same_token_attention_by_hand(scores, proj);
    }
}

fn same_token_attention_by_hand(scores: Scores, proj: &str) {
    let (w, _) = tiny();
    let c = clip(&w, DensePath::None, DType::F32);
    let dev = Device::Cpu;
    let (n, width, heads) = (5usize, 96usize, 2usize);
    let hd = width / heads;
    let x = vcp_clip::testing::seeded_randn(2, &[1, n, width], &dev);
    // attention_only applies ln_1 first: feed the same normalised input to the hand computation.
    let got = c
        .vision
        .block(3)
        .attention_only(&x, None, Kernels::Fused, scores)
        .unwrap();
    let p = "vision_model.encoder.layers.3";
    let g = |k: &str| to_vec(w.get(&format!("{p}.{k}")).unwrap());
    let (lw, lb) = (g("layer_norm1.weight"), g("layer_norm1.bias"));
    let xs = to_vec(&x);
    let mut h = vec![0f64; n * width];
    for t in 0..n {
        let row = &xs[t * width..(t + 1) * width];
        let mu = row.iter().sum::<f64>() / width as f64;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / width as f64;
        for j in 0..width {
            h[t * width + j] = (row[j] - mu) / (var + 1e-5).sqrt() * lw[j] + lb[j];
        }
    }
    let linear = |wt: &[f64], b: &[f64], inp: &[f64], out_dim: usize| -> Vec<f64> {
        let mut y = vec![0f64; n * out_dim];
        for t in 0..n {
            for o in 0..out_dim {
                let mut acc = b[o];
                for i in 0..width {
                    acc += wt[o * width + i] * inp[t * width + i];
                }
                y[t * out_dim + o] = acc;
            }
        }
        y
    };
    let v = linear(
        &g("self_attn.v_proj.weight"),
        &g("self_attn.v_proj.bias"),
        &h,
        width,
    );
    // The tokens compared with each other: values (value-value) or queries (query-query).
    let a = linear(
        &g(&format!("self_attn.{proj}.weight")),
        &g(&format!("self_attn.{proj}.bias")),
        &h,
        width,
    );
    let mut o = vec![0f64; n * width];
    for hh in 0..heads {
        for t0 in 0..n {
            let s: Vec<f64> = (0..n)
                .map(|bb| {
                    (0..hd)
                        .map(|d| a[t0 * width + hh * hd + d] * a[bb * width + hh * hd + d])
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                o[t0 * width + hh * hd + d] = (0..n)
                    .map(|bb| e[bb] / z * v[bb * width + hh * hd + d])
                    .sum();
            }
        }
    }
    let want = linear(
        &g("self_attn.out_proj.weight"),
        &g("self_attn.out_proj.bias"),
        &o,
        width,
    );
    let got = to_vec(&got);
    let err = got
        .iter()
        .zip(&want)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max);
    println!("{scores:?} attention vs hand computation: max abs err {err:.2e}");
    assert!(err < 1e-4, "{err}");
}

#[test]
fn dense_paths_follow_their_recurrences_and_keep_the_global_embedding() {
    let (w, px) = tiny();
    let taps = [3, 9, 10, 11, 12];
    let base = clip(&w, DensePath::None, DType::F32);
    let b = base.vision.forward(&px, &taps).unwrap();
    let k = Kernels::Fused;
    let cases = [
        DensePath::ValueValue { blocks: 3 },
        DensePath::Surgery { blocks: 3 },
        DensePath::ClearClip,
        DensePath::SelfOnly { blocks: 2 },
    ];
    for dense in cases {
        let c = clip(&w, dense, DType::F32);
        let o = c.vision.forward(&px, &taps).unwrap();
        // CLIP's own path is untouched: global embedding and taps before the dense blocks.
        assert_eq!(max_abs_diff(&o.global, &b.global), 0.0, "{dense:?}");
        let start = 12 - dense.blocks(); // taps <= start come from CLIP's path
        for (t, x) in &o.layers {
            if *t <= start {
                assert_eq!(
                    max_abs_diff(x, b.layer(*t).unwrap()),
                    0.0,
                    "{dense:?} tap {t}"
                );
            }
        }
        // Recompute the dense taps from CLIP's taps with the block API.
        let mut main = b.layer(start).unwrap().clone(); // stream entering block `start` (0-based)
        let mut d = main.clone();
        for i in start..12 {
            let blk = c.vision.block(i);
            d = match dense {
                DensePath::ValueValue { .. } => {
                    blk.forward_scores(&d, None, k, Scores::ValueValue).unwrap()
                }
                DensePath::Surgery { .. } => (d + blk
                    .attention_only(&main, None, k, Scores::ValueValue)
                    .unwrap())
                .unwrap(),
                DensePath::ClearClip => blk
                    .attention_only(&main, None, k, Scores::QueryQuery)
                    .unwrap(),
                // Self-only attention = CLIP's attention under a mask that leaves each token
                // only itself (an independent route: softmax of one finite score is 1).
                DensePath::SelfOnly { .. } => {
                    let n = d.dim(1).unwrap();
                    let m: Vec<f32> = (0..n * n)
                        .map(|i| {
                            if i / n == i % n {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                        .collect();
                    let mask = candle_core::Tensor::from_vec(m, (n, n), d.device()).unwrap();
                    blk.forward(&d, Some(&mask), k).unwrap()
                }
                DensePath::None => unreachable!(),
            };
            main = blk.forward(&main, None, k).unwrap();
            let got = o.layer(i + 1).unwrap();
            let err = max_abs_diff(got, &d);
            assert!(err < 1e-5, "{dense:?} tap {}: {err}", i + 1);
            // ... and it is a different feature from CLIP's.
            assert!(max_abs_diff(got, b.layer(i + 1).unwrap()) > 1e-2);
        }
    }
    // Dense paths longer than the tower are refused.
    let mut v = base.vision.clone();
    assert!(v
        .set_dense_path(DensePath::ValueValue { blocks: 13 })
        .is_err());
    assert!(v.set_dense_path(DensePath::Surgery { blocks: 0 }).is_err());
}

/// bf16 / f16 towers vs f32: max abs error relative to the f32 output's scale.
#[test]
fn low_precision_towers_match_f32_within_tolerance() {
    let (w, px) = tiny();
    let f32c = clip(&w, DensePath::None, DType::F32);
    let r = f32c.vision.forward(&px, &[6, 12]).unwrap();
    let tok = vcp_clip::Tokenizer::vcp().unwrap();
    let ids: Vec<u32> = ["a photo of a damaged object.", "a photo of a good bottle"]
        .iter()
        .flat_map(|t| tok.tokenize(t, 77, true).unwrap())
        .collect();
    let ids = Tensor::from_vec(ids, (2, 77), &Device::Cpu).unwrap();
    let rt = f32c.text.forward_ids(&ids).unwrap();
    // By default a CPU tower asked for bf16 keeps its matmuls in f32 (candle's CPU bf16 is
    // slower than f32): the same numbers as f32, exactly.
    let c = clip(&w, DensePath::None, DType::BF16);
    let o = c.vision.forward(&px, &[6, 12]).unwrap();
    assert_eq!(
        max_abs_diff(&o.global, &r.global),
        0.0,
        "bf16 on a CPU runs in f32"
    );
    vcp_clip::model::allow_low_precision_on_cpu(true);
    // Tolerances: bf16 has an 8-bit mantissa (2^-8 = 3.9e-3 relative per rounding), f16 11 bits.
    for (dt, tol) in [(DType::BF16, 5e-2f32), (DType::F16, 1e-2)] {
        let c = clip(&w, DensePath::None, dt);
        let o = c.vision.forward(&px, &[6, 12]).unwrap();
        assert_eq!(o.global.dtype(), DType::F32, "outputs are f32");
        let mut worst = 0f32;
        for ((_, a), (_, b)) in o.layers.iter().zip(&r.layers) {
            worst = worst.max(max_abs_diff(a, b) / max_abs(b));
        }
        worst = worst.max(max_abs_diff(&o.global, &r.global) / max_abs(&r.global));
        let t = c.text.forward_ids(&ids).unwrap();
        let text_err = max_abs_diff(&t, &rt) / max_abs(&rt);
        println!("{dt:?}: vision rel err {worst:.2e}, text rel err {text_err:.2e}");
        assert!(worst < tol && text_err < tol, "{dt:?}: {worst} {text_err}");
        assert!(worst > 0.0, "{dt:?} must actually compute in low precision");
    }
}

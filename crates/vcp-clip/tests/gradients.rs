//! Backprop reaches prompt embeddings and inserted (deep) tokens through the frozen text tower,
//! and no CLIP weight changes.

mod common;
use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer;
use vcp_clip::{Clip, ClipOptions, ClipWeights, InsertedTokens};

#[test]
fn gradients_reach_prompts_and_clip_stays_frozen() {
    let dev = Device::Cpu;
    let w = ClipWeights::load(common::fixtures().join("hf_gelu"), &dev).unwrap();
    let clip = Clip::new(&w, &ClipOptions::default()).unwrap();
    let width = clip.text.width();
    let before: Vec<(String, Tensor)> = w
        .tensors()
        .iter()
        .map(|(k, t)| (k.clone(), t.copy().unwrap()))
        .collect();

    // Learnable context: 4 prompt vectors after SOT, and 1 deep token per layer.
    let tok = vcp_clip::Tokenizer::clip().unwrap();
    let ids = Tensor::new(
        tok.tokenize("x x x x damaged object", 77, false).unwrap(),
        &dev,
    )
    .unwrap()
    .unsqueeze(0)
    .unwrap();
    // Seeded draws (candle's CPU generator cannot be seeded): the test is the same every run.
    let mut rng = vcp_data::rng::SplitMix64(11);
    let mut randn = |std: f64, n: usize| -> Vec<f32> {
        (0..n).map(|_| (rng.normal_f64() * std) as f32).collect()
    };
    let ctx =
        Var::from_tensor(&Tensor::from_vec(randn(0.02, 4 * width), (1, 4, width), &dev).unwrap())
            .unwrap();
    let deep: Vec<Var> = (0..clip.text.depth())
        .map(|_| {
            Var::from_tensor(&Tensor::from_vec(randn(0.5, width), (1, width), &dev).unwrap())
                .unwrap()
        })
        .collect();

    let loss_of = |ctx: &Tensor, deep: &[Var]| -> Tensor {
        let x = clip.text.embed_ids(&ids).unwrap(); // [1, 77, W]
        let x = Tensor::cat(
            &[
                &x.narrow(1, 0, 1).unwrap(),
                ctx,
                &x.narrow(1, 5, 72).unwrap(),
            ],
            1,
        )
        .unwrap();
        let x = x.broadcast_add(clip.text.positional_embedding()).unwrap();
        let hook = InsertedTokens {
            tokens: deep.iter().map(|v| Some(v.as_tensor().clone())).collect(),
        };
        let eot = ids.to_vec2::<u32>().unwrap()[0]
            .iter()
            .position(|&i| i == 49407)
            .unwrap();
        let e = clip.text.forward_embeds(&x, &[eot], &hook).unwrap();
        e.sqr().unwrap().sum_all().unwrap()
    };
    let loss = loss_of(ctx.as_tensor(), &deep);
    let grads = loss.backward().unwrap();
    let g_ctx = grads
        .get(ctx.as_tensor())
        .expect("gradient reaches the prompt embeddings");
    assert!(common::max_abs(g_ctx) > 1e-6);
    for (i, d) in deep.iter().enumerate() {
        let g = grads
            .get(d.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for deep token {i}"));
        assert!(common::max_abs(g) > 1e-8, "deep token {i} gradient is zero");
    }
    // No CLIP weight is part of the graph's leaves.
    for (k, t) in w.tensors() {
        assert!(
            grads.get(t).is_none(),
            "frozen weight {k} received a gradient"
        );
    }

    // A few optimiser steps change the prompts, lower the loss, and leave CLIP untouched.
    let mut vars = vec![ctx.clone()];
    vars.extend(deep.iter().cloned());
    let mut opt = candle_nn::SGD::new(vars, 0.05).unwrap();
    let l0 = loss.to_scalar::<f32>().unwrap();
    for _ in 0..3 {
        let l = loss_of(ctx.as_tensor(), &deep);
        opt.backward_step(&l).unwrap();
    }
    let l1 = loss_of(ctx.as_tensor(), &deep).to_scalar::<f32>().unwrap();
    assert!(l1 < l0, "loss {l0} -> {l1}");
    for (k, t) in before {
        assert_eq!(
            common::max_abs_diff(&t, w.get(&k).unwrap()),
            0.0,
            "{k} changed"
        );
    }
}

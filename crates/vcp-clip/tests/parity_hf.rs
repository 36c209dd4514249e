//! Parity with Hugging Face transformers `CLIPModel` on two tiny random configurations
//! (fixtures from tools/fixtures/make_hf_fixtures.py). Tolerance: max abs error <= 1e-4 (f32).

mod common;
use candle_core::{DType, Device, IndexOp, Tensor};
use common::*;
use vcp_clip::{Activation, Clip, ClipOptions, ClipWeights};

const TOL: f32 = 1e-4;

fn check_model(name: &str, expected_act: Activation) {
    let dir = fixtures().join(format!("hf_{name}"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let refs = load(dir.join("reference.safetensors"));
    let w = ClipWeights::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(
        w.config.activation, expected_act,
        "activation read from config.json"
    );
    let run = meta["run_size"].as_u64().unwrap() as usize;
    let clip = Clip::new(
        &w,
        &ClipOptions {
            image_size: Some(run),
            ..Default::default()
        },
    )
    .unwrap();

    // Resized positional embedding (antialiased bicubic, computed once at load).
    let d = max_abs_diff(
        clip.vision.positional_embedding(),
        &refs["vision.pos_embed_resized"],
    );
    eprintln!("parity hf_{name}: pos-embed max abs err {d:.3e}");
    assert!(d <= TOL, "{name}: pos-embed resize error {d}");

    // Every layer's residual stream and the global embedding at the run size.
    let layers = w.config.vision.layers;
    let taps: Vec<usize> = (1..=layers).collect();
    let out = clip.vision.forward(&refs["input.pixels"], &taps).unwrap();
    for k in taps {
        let d = max_abs_diff(out.layer(k).unwrap(), &refs[&format!("vision.layer_{k}")]);
        eprintln!("parity hf_{name}: layer {k} max abs err {d:.3e}");
        assert!(d <= TOL, "{name}: layer {k} error {d}");
    }
    let d = max_abs_diff(&out.global, &refs["vision.global"]);
    eprintln!("parity hf_{name}: global max abs err {d:.3e}");
    assert!(d <= TOL, "{name}: global embedding error {d}");

    // Native size: no resize.
    let native = Clip::new(&w, &ClipOptions::default()).unwrap();
    let out = native
        .vision
        .forward(&refs["input.pixels_native"], &[layers])
        .unwrap();
    assert!(max_abs_diff(&out.global, &refs["vision_native.global"]) <= TOL);
    assert!(
        max_abs_diff(
            out.layer(layers).unwrap(),
            &refs["vision_native.layer_last"]
        ) <= TOL
    );

    // Text embeddings from token ids (projected, not normalised).
    let ids = refs["text.input_ids"].to_dtype(DType::U32).unwrap();
    let emb = clip.text.forward_ids(&ids).unwrap();
    let d = max_abs_diff(&emb, &refs["text.embeds"]);
    eprintln!("parity hf_{name}: text max abs err {d:.3e}");
    assert!(d <= TOL, "{name}: text embedding error {d}");
    // And via the staged path (embeddings in, explicit EOT), which prompt learning uses.
    let x = clip.text.embed_ids(&ids).unwrap();
    let x = x.broadcast_add(clip.text.positional_embedding()).unwrap();
    let hidden = clip.text.encode_hidden(&x, &vcp_clip::NoHook).unwrap();
    assert!(max_abs_diff(&hidden, &refs["text.last_hidden_state"]) <= TOL);
    // Sanity: the fixture is not trivially zero.
    assert!(max_abs(&refs["text.embeds"]) > 0.05);
    let _ = emb.i(0).unwrap();
}

#[test]
fn hf_quick_gelu_model_matches_transformers() {
    check_model("quick", Activation::QuickGelu);
}

#[test]
fn hf_gelu_model_matches_transformers() {
    check_model("gelu", Activation::Gelu);
}

#[test]
fn wrong_activation_is_detectably_different() {
    // Guards the parity tests against passing for any activation.
    let dir = fixtures().join("hf_gelu");
    let refs = load(dir.join("reference.safetensors"));
    let w = ClipWeights::load(&dir, &Device::Cpu).unwrap();
    let clip = Clip::new(
        &w,
        &ClipOptions {
            activation: Some(Activation::QuickGelu),
            ..Default::default()
        },
    )
    .unwrap();
    let ids = refs["text.input_ids"].to_dtype(DType::U32).unwrap();
    let d = max_abs_diff(&clip.text.forward_ids(&ids).unwrap(), &refs["text.embeds"]);
    assert!(
        d > 1e-3,
        "quick_gelu should not match an exact-gelu reference (diff {d})"
    );
    let _ = Tensor::zeros(1, DType::F32, &Device::Cpu);
}

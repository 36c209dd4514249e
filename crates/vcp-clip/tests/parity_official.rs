//! Parity with the official VCP-CLIP PyTorch code's CLIP (fixtures/official-dev, produced by the
//! official `Load_CLIP` on a tiny random OpenAI-format model run at 80 px with exact GELU).

mod common;
use candle_core::{Device, IndexOp, Tensor};
use common::*;
use vcp_clip::preprocess::preprocess_file;
use vcp_clip::{Activation, Clip, ClipOptions, ClipWeights, WeightFormat};

#[test]
fn official_clip_vision_matches() {
    let dir = official();
    let fwd = load(dir.join("forward.safetensors"));
    let w = ClipWeights::load(dir.join("clip_openai.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(w.format, WeightFormat::OpenAi);
    // Config inferred from shapes as build_model does.
    let c = &w.config;
    assert_eq!(
        (
            c.vision.width,
            c.vision.heads,
            c.vision.layers,
            c.vision.patch_size
        ),
        (192, 3, 12, 8)
    );
    assert_eq!(
        (c.vision.image_size, c.text.width, c.text.heads, c.embed_dim),
        (56, 128, 2, 128)
    );
    let opts = ClipOptions {
        image_size: Some(80),
        activation: Some(Activation::Gelu),
        extra_tokens: 1,
        ..Default::default()
    };
    let clip = Clip::new(&w, &opts).unwrap();

    let d = max_abs_diff(
        clip.vision.positional_embedding(),
        &fwd["clip.visual.positional_embedding_resized"],
    );
    eprintln!("parity official: pos-embed max abs err {d:.3e}");
    assert!(d <= 1e-4, "pos-embed {d}");

    // Our preprocessing of the four PNGs reproduces the official dataset's tensors.
    let imgs: Vec<Tensor> = (0..4)
        .map(|i| preprocess_file(&dir.join(format!("img{i}.png")), 80, &Device::Cpu).unwrap())
        .collect();
    let pixels = Tensor::stack(&imgs, 0).unwrap();
    let d = max_abs_diff(&pixels, &fwd["input.image"]);
    eprintln!("parity official: preprocessed image max abs err {d:.3e}");
    assert!(d <= 1e-4, "preprocessed image error {d}");

    let out = clip
        .vision
        .forward(&fwd["input.image"], &[3, 6, 9, 12])
        .unwrap();
    for k in [3, 6, 9, 12] {
        let r = &fwd[&format!("vision.patch_tokens.layer{k:02}")];
        let d = max_abs_diff(out.layer(k).unwrap(), r);
        let scale = max_abs(r);
        eprintln!("parity official: layer {k} max abs err {d:.3e} (max |x| {scale:.2})");
        assert!(
            d <= 1e-4 * scale.max(1.0),
            "layer {k}: error {d} (scale {scale})"
        );
    }
    let d = max_abs_diff(&out.global, &fwd["vision.global_embedding"]);
    eprintln!("parity official: global max abs err {d:.3e}");
    assert!(d <= 1e-4, "global {d}");
    let _ = out.global.i(0).unwrap();
}

#[test]
fn official_token_ids_match() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(official().join("tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    let tok = vcp_clip::Tokenizer::vcp().unwrap();
    let mut checked = 0;
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let bpe: Vec<u32> = case["bpe_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text), bpe, "bpe ids of {text:?}");
        if let Some(ids) = case["tokenize_default"].as_array() {
            let ids: Vec<u32> = ids.iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.tokenize(text, 77, false).unwrap(), ids, "{text:?}");
        } else {
            assert!(
                tok.tokenize(text, 77, false).is_err(),
                "{text:?} should be too long"
            );
        }
        let trunc: Vec<u32> = case["tokenize_truncate"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.tokenize(text, 77, true).unwrap(),
            trunc,
            "truncated {text:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, 22);
    // The fixture's two prompt token tensors.
    let fwd = load(official().join("forward.safetensors"));
    for (name, text) in [
        ("text.tokens_normal", "a photo of a good <|class|>"),
        ("text.tokens_abnormal", "a photo of a damaged <|class|>"),
    ] {
        let want: Vec<u32> = fwd[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<i32>()
            .unwrap()
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(tok.tokenize(text, 77, false).unwrap(), want);
    }
}

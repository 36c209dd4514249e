//! Weight formats and strict loading: OpenAI-format safetensors, a `torch.save` state dict and a
//! TorchScript archive give identical weights and reproduce open_clip's outputs; bad files give
//! errors that name the file or tensor.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use std::collections::HashMap;
use vcp_clip::{Activation, Clip, ClipError, ClipOptions, ClipWeights};

fn micro() -> std::path::PathBuf {
    fixtures().join("openai_micro")
}

#[test]
fn three_openai_formats_agree_and_match_open_clip() {
    let refs = load(micro().join("reference.safetensors"));
    let a = ClipWeights::load(micro().join("micro.safetensors"), &Device::Cpu).unwrap();
    let b = ClipWeights::load(micro().join("micro_state_dict.pth"), &Device::Cpu).unwrap();
    let c = ClipWeights::load(micro().join("micro_torchscript.pt"), &Device::Cpu).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(a.config, c.config);
    assert_eq!(a.config.text.vocab_size, 1000);
    for (name, t) in a.tensors() {
        assert_eq!(
            max_abs_diff(t, b.get(name).unwrap()),
            0.0,
            "{name} (pickle)"
        );
        assert_eq!(
            max_abs_diff(t, c.get(name).unwrap()),
            0.0,
            "{name} (torchscript)"
        );
    }
    // open_clip built this model with exact GELU; OpenAI files default to quick_gelu.
    let opts = ClipOptions {
        activation: Some(Activation::Gelu),
        extra_tokens: 0,
        ..Default::default()
    };
    let clip = Clip::new(&c, &opts).unwrap();
    let out = clip.vision.forward(&refs["pixels"], &[2]).unwrap();
    assert!(max_abs_diff(&out.global, &refs["image_global"]) <= 1e-4);
    let ids = refs["ids"].to_dtype(DType::U32).unwrap();
    assert!(max_abs_diff(&clip.text.forward_ids(&ids).unwrap(), &refs["text_embeds"]) <= 1e-4);
}

fn openai_tensors() -> HashMap<String, Tensor> {
    load(micro().join("micro.safetensors"))
}

fn write(dir: &std::path::Path, name: &str, t: &HashMap<String, Tensor>) -> std::path::PathBuf {
    let p = dir.join(name);
    candle_core::safetensors::save(t, &p).unwrap();
    p
}

#[test]
fn strict_loading_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = openai_tensors();
    t.remove("visual.ln_post.bias");
    let err =
        ClipWeights::load(write(dir.path(), "missing.safetensors", &t), &Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("vision_model.post_layernorm.bias"),
        "{err}"
    );
    assert!(err.to_string().contains("missing.safetensors"), "{err}");

    let mut t = openai_tensors();
    t.insert(
        "visual.extra_thing".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let err =
        ClipWeights::load(write(dir.path(), "extra.safetensors", &t), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("visual.extra_thing"), "{err}");

    let mut t = openai_tensors();
    t.insert(
        "visual.ln_pre.weight".into(),
        Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
    );
    let err =
        ClipWeights::load(write(dir.path(), "shape.safetensors", &t), &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, ClipError::File { msg, .. } if msg.contains("pre_layrnorm.weight") && msg.contains("[7]")),
        "{err}"
    );
}

#[test]
fn corrupt_and_missing_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(micro().join("micro.safetensors")).unwrap();
    let trunc = dir.path().join("truncated.safetensors");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let err = ClipWeights::load(&trunc, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truncated.safetensors") && !err.contains('\n'),
        "{err}"
    );

    let garbage = dir.path().join("garbage.pt");
    std::fs::write(&garbage, b"not a zip").unwrap();
    let err = ClipWeights::load(&garbage, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("garbage.pt"), "{err}");

    let err = ClipWeights::load(dir.path().join("nope.safetensors"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.safetensors") && err.contains("no such file"),
        "{err}"
    );

    // A directory without config.json.
    let err = ClipWeights::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn random_weights_roundtrip_through_hf_directory() {
    let cfg = vcp_clip::ClipConfig::tiny();
    let w = ClipWeights::random(&cfg, 3, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    w.save_hf_dir(dir.path()).unwrap();
    let r = ClipWeights::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(r.config, cfg);
    for (name, t) in w.tensors() {
        assert_eq!(max_abs_diff(t, r.get(name).unwrap()), 0.0, "{name}");
    }
    // Deterministic for a seed, different across seeds.
    let w2 = ClipWeights::random(&cfg, 3, &Device::Cpu).unwrap();
    let w3 = ClipWeights::random(&cfg, 4, &Device::Cpu).unwrap();
    let k = "visual_projection.weight";
    assert_eq!(max_abs_diff(w.get(k).unwrap(), w2.get(k).unwrap()), 0.0);
    assert!(max_abs_diff(w.get(k).unwrap(), w3.get(k).unwrap()) > 0.0);
}

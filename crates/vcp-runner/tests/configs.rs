//! Every experiment file parses strictly and builds a model; unknown keys and invalid
//! combinations are rejected with a message naming the key/file; presets build and run.

use candle_core::{Device, Tensor};
use std::path::PathBuf;
use vcp_clip::{ClipConfig, ClipWeights};
use vcp_model::{presets, VcpModel};
use vcp_runner::config::ExperimentConfig;

/// The binary's registry (the example crate's experiment file lives in experiments/ too).
fn reg() -> vcp_model::Registry {
    vcp_model::standard_registry().with(vcp_example_refiner::register)
}

fn experiments() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../experiments")
}

#[test]
fn every_experiment_file_parses_and_builds() {
    let mut n = 0;
    for e in std::fs::read_dir(experiments()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        // Ablation files (base + variants) are expanded and checked by vcp-runner's tests.
        let raw: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        if raw.contains_key("base") {
            continue;
        }
        // Pretraining recipes (`vcp pretrain-clip`) are checked by vcp-pretrain's tests.
        if raw.contains_key("corpus") {
            continue;
        }
        let exp = ExperimentConfig::load(&reg(), &p).unwrap_or_else(|e| panic!("{e}"));
        // Build on random weights of the preset (real weights are not available in CI), small input.
        let mut cfg = exp.model.clone();
        let c = ClipConfig::preset(&cfg.backbone.preset).unwrap();
        let mut small = c.clone();
        small.vision.layers = c
            .vision
            .layers
            .min(*cfg.backbone.taps.iter().max().unwrap());
        small.vision.width = 64;
        small.vision.heads = 2;
        small.vision.mlp_dim = 128;
        small.text.width = 64;
        small.text.heads = 2;
        small.text.mlp_dim = 128;
        small.embed_dim = 64;
        cfg.backbone.image_size = c.vision.patch_size * 4;
        let w = ClipWeights::random(&small, 0, &Device::Cpu).unwrap();
        let m = VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 0, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(m.parameter_count() > 0);
        n += 1;
    }
    assert!(n >= 3);
}

#[test]
fn unknown_keys_and_bad_combinations_are_named() {
    let text = std::fs::read_to_string(experiments().join("vcp_clip_tiny.toml")).unwrap();
    let bad = text.replace("heads = 8", "heads = 8\nnum_heads = 4");
    let e = ExperimentConfig::from_toml(&reg(), &bad, std::path::Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.toml") && e.contains("num_heads") && e.contains("line"),
        "{e}"
    );
    let bad = text.replace("kind = \"post_vcp\"", "kind = \"post_vpc\"");
    let e = ExperimentConfig::from_toml(&reg(), &bad, std::path::Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("post_vpc"), "{e}");
    // UTP without category tokens cannot work.
    let exp = ExperimentConfig::from_toml(
        &reg(),
        &text.replace(
            "kind = \"pre_vcp\"\ntokens = 2\nmap = \"conv1d\"",
            "kind = \"none\"",
        ),
        std::path::Path::new("x.toml"),
    )
    .unwrap();
    let w = ClipWeights::random(&ClipConfig::tiny(), 0, &Device::Cpu).unwrap();
    let e = VcpModel::new(
        &vcp_model::standard_registry(),
        &exp.model,
        &w,
        0,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("category"), "{e}");
}

#[test]
fn presets_build_and_give_maps() {
    let w = ClipWeights::random(&ClipConfig::tiny(), 0, &Device::Cpu).unwrap();
    let bb = presets::tiny(64);
    let mut all = vec![
        ("april_gan", presets::april_gan(bb.clone())),
        ("anomaly_clip", presets::anomaly_clip(bb.clone(), 4)),
    ];
    all.extend(presets::component_ablation(bb, 4));
    let x = vcp_clip::testing::seeded_randn(3, &[2, 3, 64, 64], &Device::Cpu);
    for (name, cfg) in all {
        let m = VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 1, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let f = m.encode_images(&x).unwrap();
        let lg = m.logits(&f, "screw", false, false).unwrap();
        assert_eq!(lg.raw.len(), 4, "{name}");
        assert_eq!(
            lg.refined.is_empty(),
            cfg.refiner.kind() != "post_vcp",
            "{name}"
        );
        let maps = m.image_maps(&lg, 64).unwrap();
        assert_eq!(maps.len(), 2);
        assert!(maps[0].raw.iter().all(|v| v.is_finite() && *v >= 0.0));
        // Gradients reach every trainable tensor of every preset, and are not all zero.
        let mut gt = vec![0f32; 2 * 64 * 64];
        for y in 16..40 {
            for x in 24..48 {
                gt[64 * 64 + y * 64 + x] = 1.0;
            }
        }
        let gt = Tensor::from_vec(gt, (2, 64, 64), &Device::Cpu).unwrap();
        let lg = m.logits(&f, "screw", true, false).unwrap();
        let (loss, _) = m.loss(&lg, &gt).unwrap();
        let grads = loss.backward().unwrap();
        for (n, v) in m.params.vars() {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {n}"));
            let s = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                s > 0.0 && s.is_finite(),
                "{name}: gradient of {n} sums to {s}"
            );
        }
    }
}

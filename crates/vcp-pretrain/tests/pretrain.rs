//! Pretraining on a tiny model: the loss by hand, AdamW by hand, the loss decreasing, gradients
//! in every tensor of both towers, the logit-scale clamp, checkpoint/resume identity, bad input.

use candle_core::{Device, Tensor};
use std::path::Path;
use vcp_pretrain::optim::{adamw_cpu_in_place, adamw_tensor, AdamHyper};
use vcp_pretrain::trainer::LOGIT_SCALE_MAX;
use vcp_pretrain::{clip_loss, PretrainConfig, Trainer};

const TINY: &str = r#"
name = "test_tiny"
[model]
embed_dim = 16
activation = "quick_gelu"
[model.vision]
width = 32
layers = 2
heads = 2
mlp_dim = 64
patch_size = 8
image_size = 32
ln_eps = 1e-5
[model.text]
width = 32
layers = 2
heads = 2
mlp_dim = 64
context_length = 24
vocab_size = 49408
ln_eps = 1e-5
[corpus]
seed = 5
pairs = 2
[train]
steps = 20
batch_size = 8
lr = 2e-3
warmup = 1
checkpoint_every = 10
eval_every = 10
[eval]
heldout = 16
"#;

fn cfg() -> PretrainConfig {
    PretrainConfig::from_toml(TINY, Path::new("tiny.toml")).unwrap()
}

#[test]
fn loss_equals_hand_computed_symmetric_infonce() {
    let (b, d) = (4usize, 3usize);
    let img: Vec<f32> = (0..b * d)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
        .collect();
    let txt: Vec<f32> = (0..b * d)
        .map(|i| ((i * 5 % 13) as f32 - 6.0) / 4.0)
        .collect();
    let ls = 1.3f32;
    let got = clip_loss(
        &Tensor::from_vec(img.clone(), (b, d), &Device::Cpu).unwrap(),
        &Tensor::from_vec(txt.clone(), (b, d), &Device::Cpu).unwrap(),
        &Tensor::new(&[ls], &Device::Cpu).unwrap(),
    )
    .unwrap()
    .to_scalar::<f32>()
    .unwrap() as f64;
    // f64 by hand: normalise, scale * cosines, cross-entropy both ways, mean.
    let norm = |v: &[f32]| -> Vec<Vec<f64>> {
        v.chunks(d)
            .map(|r| {
                let n = r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                r.iter().map(|&x| x as f64 / n).collect()
            })
            .collect()
    };
    let (i, t) = (norm(&img), norm(&txt));
    let s = (ls as f64).exp();
    let logit = |a: usize, c: usize| s * (0..d).map(|k| i[a][k] * t[c][k]).sum::<f64>();
    let ce = |row: &dyn Fn(usize) -> f64, target: usize| {
        let lse = (0..b).map(row).map(f64::exp).sum::<f64>().ln();
        lse - row(target)
    };
    let mut want = 0.0;
    for a in 0..b {
        want += ce(&|c| logit(a, c), a) / b as f64 / 2.0;
        want += ce(&|c| logit(c, a), a) / b as f64 / 2.0;
    }
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn adamw_matches_hand_computation_on_both_paths() {
    let w = [0.5f32, -1.0, 2.0, 0.0];
    let g = [0.1f32, -0.3, 0.0, 2.0];
    let m = [0.01f32, 0.0, -0.2, 0.3];
    let v = [0.001f32, 0.002, 0.0, 0.5];
    let h = AdamHyper {
        lr: 1e-2,
        b1: 0.9,
        b2: 0.98,
        c1: 1.0 - 0.9f64.powi(3),
        c2: 1.0 - 0.98f64.powi(3),
        eps: 1e-6,
        wd: 0.1,
    };
    let t = |x: &[f32]| Tensor::new(x, &Device::Cpu).unwrap();
    let (tw, tg, tm, tv) = (t(&w), t(&g), t(&m), t(&v));
    // In place: the weights and moments are updated where they are.
    let (iw, im, iv) = (t(&w), t(&m), t(&v));
    adamw_cpu_in_place(&iw, &tg, &im, &iv, h).unwrap();
    for (name, (m2, v2, w2)) in [
        ("cpu in place", (im, iv, iw)),
        ("tensor", adamw_tensor(&tw, &tg, &tm, &tv, h).unwrap()),
    ] {
        let (m2, v2, w2) = (
            m2.to_vec1::<f32>().unwrap(),
            v2.to_vec1::<f32>().unwrap(),
            w2.to_vec1::<f32>().unwrap(),
        );
        for k in 0..4 {
            let mm = 0.9 * m[k] as f64 + 0.1 * g[k] as f64;
            let vv = 0.98 * v[k] as f64 + 0.02 * (g[k] as f64).powi(2);
            let ww =
                w[k] as f64 * (1.0 - 1e-2 * 0.1) - 1e-2 * (mm / h.c1) / ((vv / h.c2).sqrt() + 1e-6);
            assert!((m2[k] as f64 - mm).abs() < 1e-7, "{name} m[{k}]");
            assert!((v2[k] as f64 - vv).abs() < 1e-7, "{name} v[{k}]");
            let rel = (w2[k] as f64 - ww).abs() / ww.abs().max(1e-3);
            assert!(rel < 1e-6, "{name} w[{k}] {} vs {ww}", w2[k]);
        }
    }
}

#[test]
fn loss_decreases_gradients_reach_every_tensor_and_the_clamp_holds() {
    let mut tr = Trainer::new(cfg(), Device::Cpu).unwrap();
    let batch = tr.batch_for_step(0).unwrap();
    let missing = tr.params_without_gradient(&batch).unwrap();
    assert!(missing.is_empty(), "no gradient: {missing:?}");
    assert!(
        tr.params.len() > 30,
        "both towers: {} tensors",
        tr.params.len()
    );
    let first = tr.train_step(&batch).unwrap();
    let mut last = first;
    for _ in 0..6 {
        last = tr.train_step(&batch).unwrap();
    }
    assert!(last < first - 0.05, "loss {first} -> {last}");
    // The logit scale is clamped at ln 100 after a step, as CLIP does.
    let ls = tr.params.iter().find(|p| p.name == "logit_scale").unwrap();
    ls.var
        .set(&Tensor::new(7.0f32, &Device::Cpu).unwrap())
        .unwrap();
    tr.train_step(&batch).unwrap();
    let v = tr.logit_scale().unwrap() as f64;
    assert!(v <= LOGIT_SCALE_MAX + 1e-6 && v > 4.5, "{v}");
}

#[test]
fn resumed_checkpoint_continues_with_identical_losses() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Trainer::new(cfg(), Device::Cpu).unwrap();
    for s in 0..3 {
        let b = a.batch_for_step(s).unwrap();
        a.train_step(&b).unwrap();
    }
    a.save_checkpoint(dir.path()).unwrap();
    let mut b = Trainer::resume(cfg(), Device::Cpu, dir.path()).unwrap();
    assert_eq!(b.step, 3);
    for s in 3..5 {
        let la = a.train_step(&a.batch_for_step(s).unwrap()).unwrap();
        let lb = b.train_step(&b.batch_for_step(s).unwrap()).unwrap();
        // The second step after resuming also checks the restored AdamW moments.
        assert_eq!(la.to_bits(), lb.to_bits(), "step {s}: {la} vs {lb}");
    }
}

#[test]
fn bad_input_gives_one_line_errors_naming_file_or_key() {
    // Unknown key: named with its line and the file.
    let bad = TINY.replace("pairs = 2", "pairs = 2\npears = 3");
    let e = PretrainConfig::from_toml(&bad, Path::new("recipe.toml"))
        .unwrap_err()
        .to_string();
    let line = bad.lines().position(|l| l.starts_with("pears")).unwrap() + 1;
    assert!(
        e.contains("recipe.toml") && e.contains("pears") && e.contains(&format!("line {line}:")),
        "{e} (want line {line})"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    // Resume from a checkpoint of another architecture.
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(cfg(), Device::Cpu)
        .unwrap()
        .save_checkpoint(dir.path())
        .unwrap();
    let mut other = cfg();
    other.model.vision.layers = 3;
    let e = Trainer::resume(other, Device::Cpu, dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("checkpoint.json") && e.contains("model.vision.layers"),
        "{e}"
    );
    // A truncated checkpoint.
    let st = dir.path().join("checkpoint.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 3]).unwrap();
    let e = Trainer::resume(cfg(), Device::Cpu, dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("checkpoint.safetensors"), "{e}");
    // A corrupt or truncated weight file given as a CLIP.
    let w = dir.path().join("clip.safetensors");
    std::fs::write(&w, b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}").unwrap();
    let e = vcp_clip::ClipWeights::load(&w, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("clip.safetensors"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn embedded_weights_reproduce_the_model_card() {
    let card = vcp_clip::pretrained::card().unwrap();
    let w = vcp_clip::ClipWeights::from_preset("tiny_pretrained", 0, &Device::Cpu).unwrap();
    let seed = card["corpus_seed"]
        .as_u64()
        .expect("card records the corpus seed");
    let r = vcp_pretrain::heldout::card_check(&w, seed).unwrap();
    let want = &card["card_check"];
    for (k, got) in [
        ("defect_auroc", r.defect_auroc),
        ("kind_accuracy", r.kind_accuracy),
        ("recall1_t2i", r.recall1_t2i),
        ("image_auroc_seen", r.image_auroc_seen),
        ("pixel_auroc_seen", r.pixel_auroc_seen),
        ("pixel_auroc_heldout", r.pixel_auroc_heldout),
    ] {
        let w = want[k].as_f64().unwrap();
        assert!((got - w).abs() < 1e-4, "{k}: {got} vs card {w}");
    }
    // ... and the numbers are those of a model that learned something: it tells defects from
    // clean images and its patches point at the defects, also on kinds it never got masks for.
    assert!(r.defect_auroc > 0.7 && r.kind_accuracy > 0.3, "{r:?}");
    assert!(
        r.pixel_auroc_seen > 0.6 && r.pixel_auroc_heldout > 0.6,
        "{r:?}"
    );
}

#[test]
fn the_committed_recipe_parses_and_describes_the_embedded_model() {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../experiments/pretrain_tiny_clip_v2.toml");
    let cfg = PretrainConfig::load(&p).unwrap();
    let embedded = vcp_clip::pretrained::tiny_pretrained_config().unwrap();
    assert_eq!(
        cfg.model_after(cfg.train.steps),
        embedded,
        "the recipe's architecture (after its final phase) is the embedded model's"
    );
    // v1's recipe still parses (v2 warm-starts from its weights).
    let v1 = PretrainConfig::load(&p.with_file_name("pretrain_tiny_clip.toml")).unwrap();
    assert_eq!(v1.model, cfg.model);
    let card = vcp_clip::pretrained::card().unwrap();
    assert_eq!(card["corpus_seed"].as_u64(), Some(cfg.corpus.seed));
    assert_eq!(card["steps"].as_u64(), Some(cfg.train.steps as u64));
}

//! The components beyond VCP-CLIP (issue 7) and the mixed-precision model (issue 8): shapes,
//! gradient flow, and hand-computed or reference checks where a formula exists.

use candle_core::{DType, Device, Tensor};
use vcp_clip::testing::{max_abs, max_abs_diff};
use vcp_clip::{ClipConfig, ClipWeights};
use vcp_model::config::{ComputeDtype, ModelConfig, VisionAttention};
use vcp_model::{presets, SlotConfig, VcpModel};

fn weights() -> ClipWeights {
    ClipWeights::random(&ClipConfig::tiny(), 0, &Device::Cpu).unwrap()
}

fn base() -> ModelConfig {
    let mut cfg = presets::vcp_clip(presets::tiny(64), 4);
    cfg.deep_prompt.set("dropout", 0.0);
    cfg
}

fn batch(b: usize) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let x = vcp_clip::testing::seeded_randn(b as u64, &[b, 3, 64, 64], &dev);
    // Image 0 normal, the others with a square defect.
    let mut gt = vec![0f32; b * 64 * 64];
    for i in 1..b {
        for y in 20..36 {
            for xx in 10..30 {
                gt[i * 4096 + y * 64 + xx] = 1.0;
            }
        }
    }
    (x, Tensor::from_vec(gt, (b, 64, 64), &dev).unwrap())
}

/// Every trainable tensor whose name starts with one of `prefixes` gets a non-zero gradient.
fn assert_grads(m: &VcpModel, loss: &Tensor, prefixes: &[&str]) {
    let g = loss.backward().unwrap();
    let mut seen = 0;
    for (name, v) in m.params.vars() {
        if prefixes.iter().any(|p| name.starts_with(p)) {
            let gv = g
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            assert!(max_abs(gv) > 0.0, "{name}: zero gradient");
            assert!(
                gv.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .all(|x| x.is_finite()),
                "{name}: non-finite gradient"
            );
            seen += 1;
        }
    }
    assert!(seen > 0, "no parameter matched {prefixes:?}");
}

fn decoder_cfg(text_queries: bool) -> ModelConfig {
    let mut cfg = base();
    cfg.head = SlotConfig::of("decoder")
        .with("queries", 5)
        .with("layers", 2)
        .with("heads", 4)
        .with("dim", 32)
        .with("text_queries", text_queries);
    cfg.refiner = SlotConfig::of("identity");
    cfg
}

#[test]
fn decoder_head_shapes_losses_and_gradients() {
    let w = weights();
    let (x, gt) = batch(3);
    for tq in [false, true] {
        let m = VcpModel::new(
            &vcp_model::standard_registry(),
            &decoder_cfg(tq),
            &w,
            1,
            &Device::Cpu,
        )
        .unwrap();
        let f = m.encode_images(&x).unwrap();
        let lg = m.logits(&f, "x", true, false).unwrap();
        assert_eq!(lg.raw.len(), 4);
        for r in &lg.raw {
            assert_eq!(r.dims(), &[3, 2, 4, 4]);
        }
        assert!(lg.refined.is_empty());
        assert_eq!(lg.cls.dims(), &[3, 2]);
        // The image logit enters as [0, z]: softmax = sigmoid(z).
        let c = lg.cls.to_vec2::<f32>().unwrap();
        assert!(c.iter().all(|r| r[0] == 0.0));
        let (loss, terms) = m.loss(&lg, &gt).unwrap();
        let bce = terms.iter().find(|(n, _)| n == "image.bce").unwrap().1;
        // BCE by hand: labels [0, 1, 1].
        let sig = |z: f32| 1.0 / (1.0 + (-z).exp());
        let want = -((1.0 - sig(c[0][1])).ln() + sig(c[1][1]).ln() + sig(c[2][1]).ln()) / 3.0;
        assert!((bce - want).abs() < 1e-5, "{bce} vs {want}");
        let mut prefixes = vec!["decoder."];
        if tq {
            // Text-conditioned queries: the prompt components learn through the decoder.
            prefixes.extend(["category.", "prompt.", "dtp."]);
        }
        let names: Vec<String> = m.params.vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.iter().any(|n| n.starts_with("decoder.text_proj")), tq);
        let prefixes: Vec<&str> = prefixes
            .into_iter()
            .filter(|p| names.iter().any(|n| n.starts_with(p)))
            .collect();
        assert_grads(&m, &loss, &prefixes);
        // Maps go through the shared fusion.
        let maps = m.image_maps(&lg, 64).unwrap();
        assert_eq!(maps.len(), 3);
        assert!((maps[1].cls_score - sig(c[1][1])).abs() < 1e-6);
    }
    // Decoder + Post-VCP refiner is refused with a message naming the key.
    let mut bad = decoder_cfg(false);
    bad.refiner = base().refiner;
    let e = VcpModel::new(&vcp_model::standard_registry(), &bad, &w, 1, &Device::Cpu)
        .err()
        .unwrap();
    assert!(e.to_string().contains("refiner.kind"), "{e}");
}

fn with_states(normal: toml::Value, learnable: bool) -> ModelConfig {
    let mut cfg = base();
    cfg.prompt = SlotConfig::of("utp")
        .with("template", "a photo of a {state} <|class|>")
        .with("normal_state", normal)
        .with("abnormal_state", "damaged")
        .with("learnable_states", learnable);
    cfg
}

#[test]
fn state_word_ensembles_and_learnable_states() {
    let w = weights();
    let (x, gt) = batch(2);
    let dev = Device::Cpu;
    let text = |cfg: &ModelConfig| {
        let m = VcpModel::new(&vcp_model::standard_registry(), cfg, &w, 5, &dev).unwrap();
        let f = m.encode_images(&x).unwrap();
        m.text_embeddings(&f, "x", false).unwrap().0
    };
    // The ensemble is the normalised mean of the single-word embeddings (same seed → same
    // category tokens and deep prompts).
    let good = text(&with_states("good".into(), false));
    let perfect = text(&with_states("perfect".into(), false));
    let both = text(&with_states(
        toml::Value::Array(vec!["good".into(), "perfect".into()]),
        false,
    ));
    let n0 = (good.narrow(1, 0, 1).unwrap() + perfect.narrow(1, 0, 1).unwrap()).unwrap();
    let n0 = vcp_core::l2norm(&n0).unwrap();
    let err = max_abs_diff(&both.narrow(1, 0, 1).unwrap(), &n0);
    println!("ensemble vs normalised mean of single words: {err:.2e}");
    assert!(err < 1e-6);
    // The abnormal state is untouched by the normal synonyms.
    assert!(
        max_abs_diff(
            &both.narrow(1, 1, 1).unwrap(),
            &good.narrow(1, 1, 1).unwrap()
        ) < 1e-6
    );
    // Learnable states start as the words: same embeddings before training.
    let cfg = with_states(
        toml::Value::Array(vec!["good".into(), "flawless".into()]),
        true,
    );
    let fixed = text(&with_states(
        toml::Value::Array(vec!["good".into(), "flawless".into()]),
        false,
    ));
    let m = VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 5, &dev).unwrap();
    let names: Vec<String> = m.params.vars().into_iter().map(|(n, _)| n).collect();
    for n in [
        "prompt.state_normal.0",
        "prompt.state_normal.1",
        "prompt.state_abnormal.0",
    ] {
        assert!(names.contains(&n.to_string()), "{n} missing in {names:?}");
    }
    let f = m.encode_images(&x).unwrap();
    let t = m.text_embeddings(&f, "x", false).unwrap().0;
    assert!(max_abs_diff(&t, &fixed) < 1e-6);
    let lg = m.logits(&f, "x", true, false).unwrap();
    let (loss, _) = m.loss(&lg, &gt).unwrap();
    assert_grads(&m, &loss, &["prompt.state_"]);
    // Empty word lists are refused.
    let e = VcpModel::new(
        &vcp_model::standard_registry(),
        &with_states(toml::Value::Array(vec![]), false),
        &w,
        5,
        &dev,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("prompt.normal_state"), "{e}");
}

#[test]
fn reference_conditioned_normal_prompt() {
    let w = weights();
    let (x, _) = batch(2);
    let dev = Device::Cpu;
    let mut cfg = base();
    cfg.refiner = SlotConfig::of("identity");
    cfg.fewshot = Some(
        SlotConfig::of("references")
            .with("k", 2)
            .with("normal_prompt", 1.0),
    );
    let m = VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 2, &dev).unwrap();
    let (refs_px, _) = batch(2);
    let refs = m
        .references(
            &m.encode_images(&refs_px).unwrap(),
            vec!["a".into(), "b".into()],
        )
        .unwrap();
    let f = m.encode_images(&x).unwrap();
    let zs = m.logits(&f, "x", false, false).unwrap();
    let fs = m.logits_with(&f, "x", false, true, Some(&refs)).unwrap();
    let scale = cfg.temperature.init.exp();
    let l2 = vcp_core::l2norm;
    for i in 0..4 {
        // Abnormal channel unchanged.
        let a = zs.raw[i].narrow(1, 1, 1).unwrap();
        assert!(max_abs_diff(&a, &fs.raw[i].narrow(1, 1, 1).unwrap()) < 1e-6);
        // Normal channel = scale * cos(projected patch, pooled references of this layer).
        let pooled = &refs.pooled[i];
        let norm = pooled
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((norm - 1.0).abs() < 1e-5);
        let proj = &fs.trace.as_ref().unwrap().raw_linear[i]; // [B, N, D]
        let want = (l2(proj)
            .unwrap()
            .broadcast_matmul(&pooled.unsqueeze(1).unwrap())
            .unwrap()
            * scale)
            .unwrap()
            .flatten_all()
            .unwrap();
        let got = fs.raw[i].narrow(1, 0, 1).unwrap().flatten_all().unwrap();
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-4, "layer {i}: {err}");
    }
    // The pooled vector by hand for layer 0: mean of the normalised projected patches of both
    // references, normalised.
    let rf = m.encode_images(&refs_px).unwrap();
    let lg = m.logits(&rf, "x", false, true).unwrap();
    let e = l2(&lg.trace.unwrap().raw_linear[0]).unwrap(); // [2, 16, D]
    let want = l2(&e.reshape((32, 64)).unwrap().mean_keepdim(0).unwrap()).unwrap();
    assert!(max_abs_diff(&refs.pooled[0].unsqueeze(0).unwrap(), &want) < 1e-6);
    // alpha = 0.5 lies between (after normalisation the normal channel moves towards refs).
    let mut half = cfg.clone();
    half.fewshot.as_mut().unwrap().set("normal_prompt", 0.5);
    let m2 = VcpModel::new(&vcp_model::standard_registry(), &half, &w, 2, &dev).unwrap();
    let h = m2.logits_with(&f, "x", false, false, Some(&refs)).unwrap();
    let d_full = max_abs_diff(&zs.raw[0], &fs.raw[0]);
    let d_half = max_abs_diff(&zs.raw[0], &h.raw[0]);
    assert!(d_half > 0.0 && d_half < d_full, "{d_half} {d_full}");
}

#[test]
fn dense_backbone_in_the_model_and_its_errors() {
    let w = weights();
    let (x, gt) = batch(2);
    let mut cfg = base();
    cfg.backbone.attention = VisionAttention::ValueValue;
    let e = VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 0, &Device::Cpu)
        .err()
        .unwrap();
    assert!(e.to_string().contains("backbone.dense_blocks"), "{e}");
    cfg.backbone.dense_blocks = Some(4);
    let m = VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 0, &Device::Cpu).unwrap();
    let std = VcpModel::new(
        &vcp_model::standard_registry(),
        &base(),
        &w,
        0,
        &Device::Cpu,
    )
    .unwrap();
    let (a, b) = (m.encode_images(&x).unwrap(), std.encode_images(&x).unwrap());
    // taps 3, 6 from CLIP's path; 9, 12 from the dense path (blocks 9-12); global unchanged.
    assert_eq!(max_abs_diff(&a.layers[0], &b.layers[0]), 0.0);
    assert_eq!(max_abs_diff(&a.layers[1], &b.layers[1]), 0.0);
    assert!(max_abs_diff(&a.layers[3], &b.layers[3]) > 1e-2);
    assert_eq!(max_abs_diff(&a.global, &b.global), 0.0);
    let (loss, _) = m
        .loss(&m.logits(&a, "x", true, false).unwrap(), &gt)
        .unwrap();
    assert_grads(&m, &loss, &["head.", "post_vcp."]);
    // Round trip of the config through TOML keeps the new keys.
    let toml = toml::to_string(&cfg).unwrap();
    assert!(toml.contains("attention = \"value_value\"") && toml.contains("dense_blocks = 4"));
}

/// The VCP-CLIP model on the official fixture weights in bf16/f16 against f32: text embeddings,
/// the final probabilities and the loss within stated tolerances; gradients still reach every
/// trainable tensor (the frozen towers compute in low precision, heads and losses in f32).
#[test]
fn mixed_precision_model_matches_f32() {
    // The low-precision arithmetic itself is under test (by default a CPU runs it in f32).
    vcp_clip::model::allow_low_precision_on_cpu(true);
    let dev = Device::Cpu;
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/official-dev");
    let w = ClipWeights::load(dir.join("clip_openai.safetensors"), &dev).unwrap();
    let mut bb = presets::vit_l_14_336_at_518("");
    bb.image_size = 80;
    bb.taps = vec![3, 6, 9, 12];
    let f = candle_core::safetensors::load(dir.join("forward.safetensors"), &dev).unwrap();
    let x = &f["input.image"];
    let gt = Tensor::zeros((x.dim(0).unwrap(), 80, 80), DType::F32, &dev)
        .unwrap()
        .slice_assign(
            &[0..1, 20..50, 30..60],
            &Tensor::ones((1, 30, 30), DType::F32, &dev).unwrap(),
        )
        .unwrap();
    let run = |dt: ComputeDtype| {
        let mut b = bb.clone();
        b.dtype = dt;
        let mut cfg = presets::vcp_clip(b, w.config.text.layers);
        cfg.deep_prompt.set("dropout", 0.0);
        let m = VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 0, &dev).unwrap();
        vcp_model::checkpoint::load_into(&m, &dir.join("vcp_trainables.safetensors")).unwrap();
        let feats = m.encode_images(x).unwrap();
        let lg = m.logits(&feats, "widget", true, false).unwrap();
        let probs: Vec<Tensor> = lg
            .raw
            .iter()
            .chain(&lg.refined)
            .map(|l| vcp_model::fusion::probs(l, 80, m.cfg.fusion.upsample).unwrap())
            .collect();
        let (loss, _) = m.loss(&lg, &gt).unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<(String, Tensor)> = m
            .params
            .vars()
            .into_iter()
            .map(|(n, v)| (n, grads.get(v.as_tensor()).expect("grad").clone()))
            .collect();
        (lg.text, probs, loss.to_scalar::<f32>().unwrap(), g)
    };
    let (t32, p32, l32, g32) = run(ComputeDtype::F32);
    // Tolerances (absolute on unit vectors / probabilities, relative on the loss).
    // Gradients: the worst is the Post-VCP temperature's, a sum with heavy cancellation
    // (measured 0.14 relative in bf16, 0.04 in f16); all others are within a few percent.
    for (dt, tol_t, tol_p, tol_l, tol_g) in [
        (ComputeDtype::Bf16, 3e-2f32, 5e-2f32, 2e-2f32, 0.3f32),
        (ComputeDtype::F16, 5e-3, 1e-2, 3e-3, 0.15),
    ] {
        let (t, p, l, g) = run(dt);
        let et = max_abs_diff(&t, &t32);
        let ep = p
            .iter()
            .zip(&p32)
            .map(|(a, b)| max_abs_diff(a, b))
            .fold(0f32, f32::max);
        let el = (l - l32).abs() / l32.abs();
        // Relative to each gradient's scale; gradients that are mathematically zero in f32
        // (Pre-VCP conv bias, Post-VCP key bias: |g| < 1e-5) are compared in absolute terms.
        let eg = g
            .iter()
            .zip(&g32)
            .map(|((n, a), (_, b))| {
                let s = max_abs(b);
                let e = if s < 1e-5 {
                    max_abs_diff(a, b)
                } else {
                    max_abs_diff(a, b) / s
                };
                if e > 0.1 {
                    println!("  {n}: scale {s:.2e} err {e:.2e}");
                }
                e
            })
            .fold(0f32, f32::max);
        println!(
            "{dt:?}: text {et:.2e} probs {ep:.2e} loss rel {el:.2e} (f32 {l32:.6}, {l:.6}) grads rel {eg:.2e}"
        );
        assert!(et < tol_t && ep < tol_p && el < tol_l, "{dt:?}");
        assert!(et > 0.0, "{dt:?} must compute in low precision");
        assert_eq!(g.len(), g32.len());
        assert!(eg < tol_g, "{dt:?}: gradients far from f32 ({eg})");
    }
}

/// An image's frozen features do not depend on the other images of its batch (the feature cache
/// fills entries from whatever batch first needs an image, so this keeps runs reproducible).
#[test]
fn features_do_not_depend_on_the_batch() {
    let w = weights();
    let m = VcpModel::new(
        &vcp_model::standard_registry(),
        &base(),
        &w,
        0,
        &Device::Cpu,
    )
    .unwrap();
    let (x, _) = batch(5);
    let all = m.encode_images(&x).unwrap();
    let one = m.encode_images(&x.narrow(0, 2, 1).unwrap()).unwrap();
    let three = m.encode_images(&x.narrow(0, 1, 3).unwrap()).unwrap();
    for i in 0..4 {
        let a = all.layers[i].narrow(0, 2, 1).unwrap();
        assert_eq!(
            max_abs_diff(&a, &one.layers[i]),
            0.0,
            "tap {i}: batch 5 vs 1"
        );
        assert_eq!(
            max_abs_diff(&a, &three.layers[i].narrow(0, 1, 1).unwrap()),
            0.0,
            "tap {i}: batch 5 vs 3"
        );
    }
    assert_eq!(
        max_abs_diff(&all.global.narrow(0, 2, 1).unwrap(), &one.global),
        0.0
    );
}

/// The UTP checks that the category tokens fit its context (the EOT moves by r - 1): the
/// prompt asks the category slot how many tokens it gives.
#[test]
fn category_tokens_must_fit_the_text_context() {
    let w = weights();
    let ctx = w.config.text.context_length;
    let mut cfg = base();
    // start, "a photo of a good", <|class|>, end: the EOT at index 7, so r <= ctx - 7.
    cfg.category.set("tokens", (ctx - 7) as i64);
    assert!(VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 0, &Device::Cpu).is_ok());
    cfg.category.set("tokens", (ctx - 6) as i64);
    let e = VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 0, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&format!("category.tokens = {}", ctx - 6))
            && e.contains(&format!("{ctx} positions")),
        "{e}"
    );
}

/// AnomalyCLIP's training loss (its `train.py`): `4 x` per map (focal, Dice(anomalous, mask),
/// Dice(normal, 1 - mask)) plus the cross-entropy of the normalised class token against the
/// two text embeddings at scale 1/0.07. Checked against a float64 hand computation of the
/// image term and of the extra Dice, on top of the per-map terms the loss reports.
#[test]
fn anomaly_clip_loss_adds_normal_dice_and_the_image_cross_entropy() {
    let w = weights();
    let (x, gt) = batch(3);
    let cfg = presets::anomaly_clip(presets::tiny(64), 4);
    let lc = cfg.loss.clone().expect("the preset has AnomalyCLIP's loss");
    assert_eq!(
        (lc.map_weight, lc.normal_dice, lc.image_ce),
        (4.0, true, 1.0)
    );
    let m = VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 1, &Device::Cpu).unwrap();
    let f = m.encode_images(&x).unwrap();
    let lg = m.logits(&f, "x", true, false).unwrap();
    let (total, terms) = m.loss(&lg, &gt).unwrap();

    // Hand computation in f64 from the model's own embeddings and maps.
    let to64 = |t: &Tensor| -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    let (b, d) = f.global.dims2().unwrap();
    let g = to64(&f.global);
    let t = to64(&lg.text); // [B, 2, D]
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let gts = to64(&gt);
    let px = gts.len() / b;
    let mut ce = 0.0;
    for i in 0..b {
        let gi = &g[i * d..(i + 1) * d];
        let label = usize::from(gts[i * px..(i + 1) * px].iter().any(|&v| v > 0.5));
        let z: Vec<f64> = (0..2)
            .map(|s| {
                let ts = &t[(i * 2 + s) * d..(i * 2 + s + 1) * d];
                let dot: f64 = gi.iter().zip(ts).map(|(a, c)| a * c).sum();
                dot / (norm(gi) * norm(ts)) / 0.07
            })
            .collect();
        let lse = (z[0].exp() + z[1].exp()).ln();
        ce += lse - z[label];
    }
    ce /= b as f64;
    let image = terms.iter().find(|(n, _)| n == "image.ce").unwrap().1 as f64;
    assert!(
        (image - ce).abs() < 1e-4 * ce.max(1.0),
        "image CE {image} vs {ce}"
    );

    // Dice on the normal channel, by hand from the upsampled probabilities of tap 0:
    // 1 - (2 sum(p_n (1 - gt)) + 1) / (sum p_n + sum (1 - gt) + 1) per image, averaged.
    let p = vcp_model::fusion::probs(&lg.raw[0], 64, cfg.fusion.upsample).unwrap();
    let pv = to64(&p); // [B, 2, 64, 64]
    let mut dn = 0.0;
    for i in 0..b {
        let (mut inter, mut sp, mut sg) = (0.0, 0.0, 0.0);
        for k in 0..px {
            let pn = pv[(i * 2) * px + k];
            let ng = 1.0 - gts[i * px + k];
            inter += pn * ng;
            sp += pn;
            sg += ng;
        }
        dn += 1.0 - (2.0 * inter + 1.0) / (sp + sg + 1.0);
    }
    dn /= b as f64;
    let tap = cfg.backbone.taps[0];
    let got = terms
        .iter()
        .find(|(n, _)| *n == format!("raw.dice_normal.layer{tap:02}"))
        .unwrap()
        .1 as f64;
    assert!((got - dn).abs() < 1e-4, "normal Dice {got} vs {dn}");

    // The total: 4 x (every per-map term) + the image term.
    let maps: f64 = terms
        .iter()
        .filter(|(n, _)| !n.starts_with("image."))
        .map(|(_, v)| *v as f64)
        .sum();
    let want = 4.0 * maps + ce;
    let got = total.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-4 * want, "total {got} vs {want}");
    // The image term trains the prompts (the text), as in the reference.
    assert_grads(&m, &total, &["prompt."]);
}

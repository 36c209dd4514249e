//! The v2 objective (patch and state terms): targets from known pixels, both losses against a
//! float64 hand computation, gradients through the dense readout into the vision tower, the
//! held-out kinds contributing nothing, warm start and the final phase at another size.

use candle_core::{Device, Tensor};
use std::path::Path;
use vcp_data::corpus::CorpusSample;
use vcp_pretrain::objective::{interp_matrix, patch_loss, state_loss, DenseTargets};
use vcp_pretrain::{PretrainConfig, Trainer};

const TINY: &str = r#"
name = "test_tiny_v2"
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
[objective]
patch_weight = 1.0
state_weight = 0.5
"#;

fn cfg() -> PretrainConfig {
    PretrainConfig::from_toml(TINY, Path::new("tiny_v2.toml")).unwrap()
}

fn sample(
    kind: &'static str,
    size: usize,
    defect: Option<(usize, usize, usize, usize)>,
) -> CorpusSample {
    let mut mask = vec![false; size * size];
    if let Some((y0, y1, x0, x1)) = defect {
        for y in y0..y1 {
            for x in x0..x1 {
                mask[y * size + x] = true;
            }
        }
    }
    CorpusSample {
        image: vec![128; size * size * 3],
        size,
        caption: format!("a photo of a {kind}"),
        kind,
        colour: None,
        defects: if defect.is_some() {
            vec!["scratch"]
        } else {
            vec![]
        },
        mask,
    }
}

#[test]
fn targets_of_a_defect_drawn_into_known_pixels() {
    // A 3x2-pixel defect at rows 1..4, columns 5..7 of an 8x8 woven image; a normal woven
    // image; a defective grid (held out); a normal pill.
    let s = [
        sample("woven", 8, Some((1, 4, 5, 7))),
        sample("woven", 8, None),
        sample("grid", 8, Some((0, 8, 0, 8))),
        sample("pill", 8, None),
    ];
    let t = DenseTargets::build(&s, |k| k == "grid");
    assert_eq!(t.rows, vec![0, 1, 3]);
    assert_eq!(t.prompt_kinds, vec!["woven", "pill"]);
    assert_eq!(t.kind_index, vec![0, 0, 1]);
    assert_eq!(t.labels, vec![1, 0, 0]);
    assert_eq!(t.size, 8);
    let mut want = vec![0f32; 3 * 64];
    for y in 1..4 {
        for x in 5..7 {
            want[y * 8 + x] = 1.0;
        }
    }
    assert_eq!(t.masks, want);
    assert_eq!(t.masks.iter().sum::<f32>(), 6.0);
}

#[test]
fn the_corpus_masks_are_the_pixels_the_defect_changed() {
    // Twin pairs share scene and camera: every mask pixel lies where the twins differ, and
    // every difference lies within one pixel of the mask (a quarter of images get a 3x3 blur).
    for i in 0..20 {
        let (clean, defective) = vcp_data::corpus::pair(3, i, 64);
        let t = DenseTargets::build(&[clean.clone(), defective.clone()], |_| false);
        assert_eq!(t.labels, vec![0, 1]);
        assert!(t.masks[..64 * 64].iter().all(|&m| m == 0.0));
        let m = &defective.mask;
        let s = 64usize;
        let near = |y: usize, x: usize| {
            (y.saturating_sub(1)..(y + 2).min(s))
                .any(|yy| (x.saturating_sub(1)..(x + 2).min(s)).any(|xx| m[yy * s + xx]))
        };
        let mut masked_diff = 0;
        for y in 0..s {
            for x in 0..s {
                let p = (y * s + x) * 3;
                let differs = clean.image[p..p + 3] != defective.image[p..p + 3];
                if differs {
                    assert!(near(y, x), "pair {i}: ({y},{x}) changed away from the mask");
                }
                if m[y * s + x] && differs {
                    masked_diff += 1;
                }
            }
        }
        let n = m.iter().filter(|&&b| b).count();
        assert!(
            n > 0 && masked_diff * 10 >= n * 9,
            "pair {i}: {masked_diff} of {n} mask pixels changed"
        );
    }
}

/// Bilinear upsampling, align corners, written out per output pixel (independent of the
/// matrix form the loss uses).
fn bilinear_f64(m: &[f64], g: usize, s: usize) -> Vec<f64> {
    let mut out = vec![0.0; s * s];
    let c = |i: usize| i as f64 * (g as f64 - 1.0) / (s as f64 - 1.0);
    for y in 0..s {
        for x in 0..s {
            let (sy, sx) = (c(y), c(x));
            let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(g - 1), (x0 + 1).min(g - 1));
            let (fy, fx) = (sy - y0 as f64, sx - x0 as f64);
            out[y * s + x] = (1.0 - fy) * (1.0 - fx) * m[y0 * g + x0]
                + (1.0 - fy) * fx * m[y0 * g + x1]
                + fy * (1.0 - fx) * m[y1 * g + x0]
                + fy * fx * m[y1 * g + x1];
        }
    }
    out
}

fn norm(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rand_vec(seed: u64, n: usize) -> Vec<f64> {
    let mut r = vcp_data::rng::SplitMix64(seed);
    (0..n)
        .map(|_| (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        .collect()
}

#[test]
fn interpolation_matrix_is_bilinear_with_aligned_corners() {
    let m = [1.0, 2.0, 4.0, 8.0, 3.0, 5.0, 0.0, -1.0, 7.0];
    let want = bilinear_f64(&m, 3, 7);
    let u: Vec<f64> = interp_matrix(7, 3).into_iter().map(f64::from).collect();
    for y in 0..7 {
        for x in 0..7 {
            let mut v = 0.0;
            for a in 0..3 {
                for b in 0..3 {
                    v += u[y * 3 + a] * m[a * 3 + b] * u[x * 3 + b];
                }
            }
            assert!(
                (v - want[y * 7 + x]).abs() < 1e-6,
                "({y},{x}) {v} vs {}",
                want[y * 7 + x]
            );
        }
    }
}

#[test]
fn patch_and_state_losses_equal_a_float64_hand_computation() {
    // R = 2 images (kinds 1 and 0 of K = 2), grid 2x2, D = 3, output 5x5.
    let (r, g, d, s, k) = (2usize, 2usize, 3usize, 5usize, 2usize);
    let patches = rand_vec(1, r * g * g * d);
    let prompts = rand_vec(2, 2 * k * d);
    let global = rand_vec(3, r * d);
    let tau = 1.3f64;
    let mut masks = vec![0f32; r * s * s];
    for (y, x) in [(0, 0), (0, 1), (1, 1), (3, 4)] {
        masks[y * s + x] = 1.0; // image 0 defective
    }
    let t = DenseTargets {
        rows: vec![0, 1],
        kind_index: vec![1, 0],
        prompt_kinds: vec!["woven", "pill"],
        labels: vec![1, 0],
        masks: masks.clone(),
        size: s,
    };
    let dev = Device::Cpu;
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let pt = Tensor::from_vec(f32s(&patches), (r, g * g, d), &dev).unwrap();
    let qt = Tensor::from_vec(f32s(&prompts), (2 * k, d), &dev).unwrap();
    let ls = Tensor::new(&[tau as f32], &dev).unwrap();
    let got = patch_loss(&pt, &qt, &ls, &t)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;

    // By hand.
    let prm: Vec<Vec<f64>> = (0..2 * k)
        .map(|j| norm(&prompts[j * d..(j + 1) * d]))
        .collect();
    let (mut focal, mut dice_a, mut dice_n) = (0.0, 0.0, 0.0);
    for i in 0..r {
        let kk = t.kind_index[i] as usize;
        let mut ln = vec![0.0; g * g];
        let mut la = vec![0.0; g * g];
        for p in 0..g * g {
            let v = norm(&patches[(i * g * g + p) * d..(i * g * g + p + 1) * d]);
            ln[p] = tau.exp() * dot(&v, &prm[2 * kk]);
            la[p] = tau.exp() * dot(&v, &prm[2 * kk + 1]);
        }
        let (un, ua) = (bilinear_f64(&ln, g, s), bilinear_f64(&la, g, s));
        let (mut inter_a, mut sum_a, mut sum_m) = (0.0, 0.0, 0.0);
        let (mut inter_n, mut sum_n, mut sum_mn) = (0.0, 0.0, 0.0);
        for q in 0..s * s {
            let pa = 1.0 / (1.0 + (un[q] - ua[q]).exp());
            let pn = 1.0 - pa;
            let m = masks[i * s * s + q] as f64;
            // vcp_model::loss::focal: one-hot clamped to [1e-5, 1 - 1e-5], pt + 1e-5, gamma 2.
            let (oh1, oh0) = (m.clamp(1e-5, 1.0 - 1e-5), (1.0 - m).clamp(1e-5, 1.0 - 1e-5));
            let ptv = oh0 * pn + oh1 * pa + 1e-5;
            focal += -(1.0 - ptv).powi(2) * ptv.ln();
            inter_a += pa * m;
            sum_a += pa;
            sum_m += m;
            inter_n += pn * (1.0 - m);
            sum_n += pn;
            sum_mn += 1.0 - m;
        }
        dice_a += (2.0 * inter_a + 1.0) / (sum_a + sum_m + 1.0);
        dice_n += (2.0 * inter_n + 1.0) / (sum_n + sum_mn + 1.0);
    }
    let want = focal / (r * s * s) as f64 + (1.0 - dice_a / r as f64) + (1.0 - dice_n / r as f64);
    assert!(
        (got - want).abs() <= 1e-5 * want.abs(),
        "patch loss {got} vs {want}"
    );

    let gt = Tensor::from_vec(f32s(&global), (r, d), &dev).unwrap();
    let got = state_loss(&gt, &qt, 1.0 / 0.07, &t)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let mut ce = 0.0;
    for i in 0..r {
        let kk = t.kind_index[i] as usize;
        let v = norm(&global[i * d..(i + 1) * d]);
        let (zn, za) = (
            dot(&v, &prm[2 * kk]) / 0.07,
            dot(&v, &prm[2 * kk + 1]) / 0.07,
        );
        let lse = zn.max(za) + ((zn - zn.max(za)).exp() + (za - zn.max(za)).exp()).ln();
        ce += lse - if t.labels[i] == 1 { za } else { zn };
    }
    let want = ce / r as f64;
    assert!(
        (got - want).abs() <= 1e-5 * want.abs(),
        "state loss {got} vs {want}"
    );
}

#[test]
fn the_patch_term_reaches_the_vision_tower_through_the_dense_readout() {
    let tr = Trainer::new(cfg(), Device::Cpu).unwrap();
    let batch = tr.batch_for_step(0).unwrap();
    let parts = tr.loss_parts(&batch).unwrap();
    let grads = parts.patch.expect("a patch term").backward().unwrap();
    let norm_of = |name: &str| {
        let p = tr.params.iter().find(|p| p.name == name).unwrap();
        grads
            .get(p.var.as_tensor())
            .map(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0)
    };
    // Through ln_post and the projection into every block of the vision tower, and into the
    // text tower (the prompts are encoded with the captions, not detached), and its own scale.
    for name in [
        "visual_projection.weight",
        "vision_model.post_layernorm.weight",
        "vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "vision_model.encoder.layers.1.mlp.fc2.weight",
        "vision_model.embeddings.patch_embedding.weight",
        "text_projection.weight",
        "text_model.encoder.layers.0.mlp.fc1.weight",
        "patch_logit_scale",
    ] {
        let n = norm_of(name);
        assert!(n.is_finite() && n > 0.0, "{name}: gradient {n}");
    }
    // The patch term never reads the contrastive logit scale.
    assert_eq!(norm_of("logit_scale"), 0.0);
}

#[test]
fn held_out_kinds_never_contribute_to_the_patch_and_state_terms() {
    let c = cfg();
    let o = c.objective.clone().unwrap();
    let tok = vcp_clip::Tokenizer::clip().unwrap();
    let mut seen_heldout_rows = 0;
    for step in 0..150 {
        let b = vcp_pretrain::trainer::make_batch(&c, &tok, step).unwrap();
        let samples = vcp_data::corpus::batch(c.corpus.seed, step as u64, 8, 2, 32);
        let t = b.dense.unwrap();
        for (i, s) in samples.iter().enumerate() {
            let in_rows = t.rows.contains(&(i as u32));
            assert_eq!(
                in_rows,
                !o.is_heldout(s.kind),
                "step {step} row {i} ({})",
                s.kind
            );
            seen_heldout_rows += usize::from(o.is_heldout(s.kind));
        }
        for k in &t.prompt_kinds {
            assert!(
                !o.is_heldout(k),
                "step {step}: prompt for held-out kind {k}"
            );
        }
    }
    assert!(
        seen_heldout_rows > 20,
        "the check saw {seen_heldout_rows} held-out rows"
    );

    // Functionally: repainting the pixels of a held-out row changes neither term.
    let tr = Trainer::new(c.clone(), Device::Cpu).unwrap();
    let (step, row) = (0..150)
        .find_map(|st| {
            let s = vcp_data::corpus::batch(c.corpus.seed, st as u64, 8, 2, 32);
            s.iter().position(|x| o.is_heldout(x.kind)).map(|r| (st, r))
        })
        .unwrap();
    let mut b = tr.batch_for_step(step).unwrap();
    let p0 = tr.loss_parts(&b).unwrap();
    let hw = 3 * 32 * 32;
    for v in &mut b.pixels[row * hw..(row + 1) * hw] {
        *v = -*v + 0.5;
    }
    let p1 = tr.loss_parts(&b).unwrap();
    let val = |t: &Option<Tensor>| t.as_ref().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(val(&p0.patch), val(&p1.patch));
    assert_eq!(val(&p0.state), val(&p1.state));
    let c0 = p0.contrastive.to_scalar::<f32>().unwrap();
    let c1 = p1.contrastive.to_scalar::<f32>().unwrap();
    assert_ne!(
        c0, c1,
        "the held-out image still takes part in the contrastive term"
    );
}

#[test]
fn v2_training_lowers_the_patch_term_and_resumes_bit_identically() {
    let mut a = Trainer::new(cfg(), Device::Cpu).unwrap();
    let b0 = a.batch_for_step(0).unwrap();
    let patch = |t: &Trainer| -> f32 {
        t.loss_parts(&b0)
            .unwrap()
            .patch
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let first = patch(&a);
    for _ in 0..8 {
        a.train_step(&b0).unwrap();
    }
    let last = patch(&a);
    assert!(last < first - 0.02, "patch term {first} -> {last}");

    let dir = tempfile::tempdir().unwrap();
    let mut a = Trainer::new(cfg(), Device::Cpu).unwrap();
    for s in 0..2 {
        let b = a.batch_for_step(s).unwrap();
        a.train_step(&b).unwrap();
    }
    a.save_checkpoint(dir.path()).unwrap();
    let mut b = Trainer::resume(cfg(), Device::Cpu, dir.path()).unwrap();
    for s in 2..4 {
        let la = a.train_step(&a.batch_for_step(s).unwrap()).unwrap();
        let lb = b.train_step(&b.batch_for_step(s).unwrap()).unwrap();
        assert_eq!(la.to_bits(), lb.to_bits(), "step {s}: {la} vs {lb}");
    }
    // A v1 config cannot resume a v2 checkpoint (the patch scale would be dropped silently).
    let mut v1 = cfg();
    v1.objective = None;
    let e = Trainer::resume(v1, Device::Cpu, dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("[objective]"), "{e}");
}

#[test]
fn warm_start_and_a_final_phase_at_another_size() {
    // Phase 1 (32 px) trains 2 steps and exports; phase 2 warm-starts from the export, runs 2
    // steps at 32 px and 2 at 48 px (positional embedding resized at the switch).
    let dir = tempfile::tempdir().unwrap();
    let mut c1 = cfg();
    c1.train.steps = 2;
    let mut a = Trainer::new(c1, Device::Cpu).unwrap();
    for s in 0..2 {
        let b = a.batch_for_step(s).unwrap();
        a.train_step(&b).unwrap();
    }
    a.export(dir.path(), serde_json::json!({})).unwrap();
    let file = dir.path().join("test_tiny_v2.safetensors");
    let text = TINY.replace(
        "[eval]",
        &format!(
            "final_size = 48\nfinal_steps = 2\n[init]\nweights = {:?}\n[eval]",
            file.display().to_string()
        ),
    );
    let text = text.replace("steps = 20", "steps = 4");
    let c2 = PretrainConfig::from_toml(&text, Path::new("phase2.toml")).unwrap();
    let mut b = Trainer::new(c2.clone(), Device::Cpu).unwrap();
    // The warm start is the exported model (f16-rounded), not a random init.
    let w_export = vcp_pretrain::checkpoint::load_exported(&file, &cfg().model).unwrap();
    let q = "vision_model.encoder.layers.0.self_attn.q_proj.weight";
    let wb = b
        .params
        .iter()
        .find(|p| p.name == q)
        .unwrap()
        .var
        .as_tensor()
        .clone();
    let diff = (wb - w_export.get(q).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    for s in 0..4 {
        let batch = b.batch_for_step(s).unwrap();
        assert_eq!(batch.size, if s < 2 { 32 } else { 48 }, "step {s}");
        b.train_step(&batch).unwrap();
    }
    let pos = b
        .params
        .iter()
        .find(|p| p.name == "vision_model.embeddings.position_embedding.weight")
        .unwrap();
    assert_eq!(pos.var.as_tensor().dims(), &[37, 32]);
    assert_eq!(b.weights().unwrap().config.vision.image_size, 48);
    b.export(dir.path(), serde_json::json!({})).unwrap();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("test_tiny_v2.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["config"]["vision"]["image_size"], 48);

    // Another architecture is refused, naming the key.
    let bad = text.replace(
        "width = 32\nlayers = 2\nheads = 2\nmlp_dim = 64\ncontext",
        "width = 64\nlayers = 2\nheads = 2\nmlp_dim = 64\ncontext",
    );
    let c3 = PretrainConfig::from_toml(&bad, Path::new("bad.toml")).unwrap();
    let e = Trainer::new(c3, Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("text.width"), "{e}");
}

/// Issue 25 (8): one `pretrain-clip` per folder. A lock of a live process refuses a second run
/// (naming it); a lock left by a process that is gone is taken over; the lock is removed at the
/// end; and bounded optimiser settings are load-time errors naming the key.
#[test]
fn one_pretraining_per_folder_and_bounded_settings() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let mut c = cfg();
    c.train.steps = 1;
    c.train.checkpoint_every = 1;
    c.train.eval_every = 1;
    let opts = vcp_pretrain::run::RunOptions {
        out: out.clone(),
        resume: false,
        device: candle_core::Device::Cpu,
        provenance: serde_json::json!({}),
        progress: false,
    };
    // This test process holds the lock: refused.
    std::fs::write(out.join("pretrain.lock"), vcp_data::process::me_line()).unwrap();
    let e = format!(
        "{:#}",
        vcp_pretrain::run::run(c.clone(), &opts).err().unwrap()
    );
    assert!(
        e.contains("another vcp pretrain-clip") && e.contains(&std::process::id().to_string()),
        "{e}"
    );
    assert!(
        !out.join("log.csv").exists(),
        "nothing written by the refused run"
    );
    // A lock whose process is gone (a pid that exited) is taken over, and removed at the end.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    std::fs::write(
        out.join("pretrain.lock"),
        format!(
            "{} {dead} 1 {}",
            vcp_data::process::hostname(),
            vcp_data::process::boot_id().unwrap_or_default()
        ),
    )
    .unwrap();
    vcp_pretrain::run::run(c.clone(), &opts).unwrap();
    assert!(!out.join("pretrain.lock").exists());
    assert!(out.join("log.csv").exists());
    // Settings that cannot work, named at load time.
    for (key, from, to, want) in [
        ("heldout", "heldout = 16", "heldout = 0", "eval.heldout"),
        (
            "betas",
            "warmup = 1",
            "warmup = 1\nbetas = [nan, 0.98]",
            "train.betas[0]",
        ),
        ("eps", "warmup = 1", "warmup = 1\neps = 0.0", "train.eps"),
        ("lr", "lr = 2e-3", "lr = -1e-3", "train.lr"),
        (
            "width",
            "width = 32\nlayers = 2\nheads = 2\nmlp_dim = 64\npatch_size",
            "width = 1099511627776\nlayers = 2\nheads = 2\nmlp_dim = 64\npatch_size",
            "width",
        ),
        (
            "image_size",
            "image_size = 32",
            "image_size = 0",
            "image_size",
        ),
        (
            "context",
            "context_length = 24",
            "context_length = 0",
            "context_length",
        ),
    ] {
        let text = TINY.replacen(from, to, 1);
        assert_ne!(text, TINY, "{key}: the replacement did not apply");
        let e = format!(
            "{:#}",
            PretrainConfig::from_toml(&text, Path::new("bad.toml")).unwrap_err()
        );
        assert!(e.contains(want) && e.contains("bad.toml"), "{key}: {e}");
    }
}

/// The boundary of the final phase: after the last step of the main phase the weights are still
/// at the main size (the held-out evaluation and the checkpoint there read them as such), the
/// next step resizes them, a resume from the boundary's checkpoint goes on, and the export is
/// at the final size. (A recipe whose evaluation fell on the boundary once stopped here.)
#[test]
fn evaluation_checkpoint_and_resume_at_the_final_phase_boundary() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let mut c = cfg();
    c.train.steps = 4;
    c.train.final_size = Some(48);
    c.train.final_steps = 2;
    c.train.final_batch_size = Some(4);
    c.train.checkpoint_every = 2;
    c.train.eval_every = 2;
    let opts = |resume| vcp_pretrain::run::RunOptions {
        out: out.clone(),
        resume,
        device: candle_core::Device::Cpu,
        provenance: serde_json::json!({}),
        progress: false,
    };
    // Stop at the boundary (2 steps), as an interruption would, then resume across it.
    let mut first = c.clone();
    first.train.steps = 2;
    first.train.final_size = None;
    first.train.final_steps = 0;
    first.train.final_batch_size = None;
    vcp_pretrain::run::run(first, &opts(false)).unwrap();
    let s = vcp_pretrain::run::run(c.clone(), &opts(true)).unwrap();
    assert_eq!(s.steps, 4);
    assert_eq!(heldout_sizes(&out), ["32", "48"]);
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("test_tiny_v2.json")).unwrap())
            .unwrap();
    assert_eq!(card["config"]["vision"]["image_size"], 48);
    // The export is readable by others, as any file the user writes (it was 0600, a temporary
    // file's mode).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["test_tiny_v2.safetensors", "test_tiny_v2.json"] {
            let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{f}");
        }
    }
    // The same recipe in one go: the eval at the boundary (step 2) is at the main size.
    let out2 = d.path().join("run2");
    let o2 = vcp_pretrain::run::RunOptions {
        out: out2.clone(),
        ..opts(false)
    };
    vcp_pretrain::run::run(c, &o2).unwrap();
    assert_eq!(heldout_sizes(&out2), ["32", "48"]);
}

/// The input size of every held-out evaluation in a run's `heldout.csv` (its last column).
fn heldout_sizes(out: &Path) -> Vec<String> {
    let held = std::fs::read_to_string(out.join("heldout.csv")).unwrap();
    held.lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().to_string())
        .collect()
}

/// Issue 25 (8): state files of ours damaged without a panic. A killed run's short last line of
/// `log.csv` is skipped by the reader and ended before a resumed run appends, so the new step is
/// a complete line; a checkpoint whose AdamW moment has another shape than its parameter is an
/// error naming the file and the tensor.
#[test]
fn a_short_log_line_and_misshapen_adam_moments_are_handled() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let mut c = cfg();
    c.train.steps = 2;
    c.train.checkpoint_every = 1;
    c.train.eval_every = 2;
    let opts = |resume| vcp_pretrain::run::RunOptions {
        out: out.clone(),
        resume,
        device: Device::Cpu,
        provenance: serde_json::json!({}),
        progress: false,
    };
    vcp_pretrain::run::run(c.clone(), &opts(false)).unwrap();
    let log = out.join("log.csv");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let cols = lines[0].split(',').count();
    // Killed while writing step 2: the line stops after its third value.
    let short: String = lines[2].split(',').take(3).collect::<Vec<_>>().join(",");
    std::fs::write(&log, format!("{}\n{}\n{short}", lines[0], lines[1])).unwrap();
    let (h, rows) = vcp_pretrain::run::read_log(&log).unwrap();
    assert_eq!((h.len(), rows.len()), (cols, 1));
    assert_eq!(rows[0][0], 1.0);
    // Resume for one more step: its line stands alone and is read back.
    c.train.steps = 3;
    vcp_pretrain::run::run(c.clone(), &opts(true)).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("\n{short}\n3,")), "{text}");
    let (_, rows) = vcp_pretrain::run::read_log(&log).unwrap();
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        vec![1.0, 3.0]
    );
    // An AdamW moment with the wrong shape.
    let ck = out.join("checkpoint/checkpoint.safetensors");
    let mut all = candle_core::safetensors::load(&ck, &Device::Cpu).unwrap();
    let key = all
        .keys()
        .find(|k| k.starts_with("adam_m/") && k.ends_with("ln_final.weight"))
        .or_else(|| all.keys().find(|k| k.starts_with("adam_m/")))
        .unwrap()
        .clone();
    let n = all[&key].elem_count();
    all.insert(
        key.clone(),
        Tensor::zeros((n + 1,), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&all, &ck).unwrap();
    let e = format!(
        "{:#}",
        Trainer::resume(c.clone(), Device::Cpu, &out.join("checkpoint"))
            .err()
            .unwrap()
    );
    assert!(
        e.contains("checkpoint.safetensors")
            && e.contains(&format!("`{key}` has shape [{}]", n + 1)),
        "{e}"
    );
}

/// Issue 25 (7): a `pretrain-clip --config` that is a FIFO or `/dev/zero` is refused before it is
/// opened (reading either would block or never end).
#[test]
fn special_config_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("recipe.toml");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for f in [fifo.as_path(), Path::new("/dev/zero")] {
        let e = format!("{:#}", PretrainConfig::load(f).unwrap_err());
        assert!(
            e.contains(&f.display().to_string()) && e.contains("not a regular file"),
            "{e}"
        );
    }
}

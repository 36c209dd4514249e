//! The example refiner plugged into the standard registry with one line: its table is parsed
//! strictly with defaults filled in, a VCP-CLIP model takes it in the refiner slot, the refined
//! branch appears, and the loss reaches every one of its parameters (the closed gate included).

use candle_core::{DType, Device, Tensor};
use vcp_clip::{ClipConfig, ClipWeights};
use vcp_model::{presets, SlotConfig, VcpModel};

#[test]
fn registered_with_one_line_and_trained_through_the_model() {
    let reg = vcp_model::standard_registry().with(vcp_example_refiner::register);
    let n = reg
        .refiner
        .normalize(&SlotConfig::of("gated_cross_attention"))
        .unwrap();
    assert_eq!(n.get("heads").and_then(|v| v.as_integer()), Some(4));
    assert_eq!(n.get("gate_init").and_then(|v| v.as_float()), Some(0.0));
    let e = reg
        .refiner
        .normalize(&SlotConfig::of("gated_cross_attention").with("gate", 1.0))
        .unwrap_err();
    assert!(e.to_string().contains("unknown field `gate`"), "{e}");
    assert_eq!((e.slot(), e.key()), ("refiner", Some("gate")));
    // Without the line, the kind is unknown.
    let e = vcp_model::standard_registry()
        .refiner
        .normalize(&SlotConfig::of("gated_cross_attention"))
        .unwrap_err();
    assert!(e.to_string().contains("not a registered kind"), "{e}");
    assert_eq!(e.key(), Some("kind"));

    let dev = Device::Cpu;
    let w = ClipWeights::random(&ClipConfig::tiny(), 0, &dev).unwrap();
    let x = vcp_clip::testing::seeded_randn(7, &[2, 3, 64, 64], &dev);
    let mut gt = vec![0f32; 2 * 64 * 64];
    for y in 20..40 {
        for xx in 10..30 {
            gt[64 * 64 + y * 64 + xx] = 1.0;
        }
    }
    let gt = Tensor::from_vec(gt, (2, 64, 64), &dev).unwrap();
    // Gradient magnitude of every parameter of the refiner, for a gate starting at `gate`.
    let grads_of = |gate: f64| {
        let mut cfg = presets::vcp_clip(presets::tiny(64), 4);
        cfg.deep_prompt.set("dropout", 0.0);
        cfg.refiner = SlotConfig::of("gated_cross_attention")
            .with("heads", 2)
            .with("gate_init", gate);
        let m = VcpModel::new(&reg, &cfg, &w, 1, &dev).unwrap();
        let names: Vec<String> = m.params.vars().into_iter().map(|(n, _)| n).collect();
        assert!(names.iter().any(|n| n == "temperature.post"), "{names:?}");
        let f = m.encode_images(&x).unwrap();
        let lg = m.logits(&f, "widget", true, false).unwrap();
        assert_eq!(lg.refined.len(), 4);
        assert_eq!(lg.refined[0].dims(), &[2, 2, 4, 4]);
        let (loss, _) = m.loss(&lg, &gt).unwrap();
        let grads = loss.backward().unwrap();
        m.params
            .vars()
            .into_iter()
            .filter(|(n, _)| n.starts_with("gated_xattn."))
            .map(|(n, v)| {
                let s = grads
                    .get(v.as_tensor())
                    .map(|g| {
                        g.abs()
                            .unwrap()
                            .to_dtype(DType::F64)
                            .unwrap()
                            .sum_all()
                            .unwrap()
                            .to_scalar::<f64>()
                            .unwrap()
                    })
                    .unwrap_or(0.0);
                (n, s)
            })
            .collect::<Vec<_>>()
    };
    // Gate closed: tanh(0) = 0 cuts the attention off, so its weights get exactly zero
    // gradient while the gate itself and the text projection learn.
    let closed = grads_of(0.0);
    assert_eq!(closed.len(), 11, "{closed:?}");
    for (n, s) in &closed {
        assert!(s.is_finite(), "{n}");
        if n.starts_with("gated_xattn.attn.") {
            assert_eq!(*s, 0.0, "{n}");
        } else {
            assert!(*s > 0.0, "{n}: {s}");
        }
    }
    // Gate open: every parameter learns.
    for (n, s) in grads_of(0.5) {
        assert!(s > 0.0 && s.is_finite(), "{n}: {s}");
    }
}

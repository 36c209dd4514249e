//! The training loop's own optimiser (`vcp_runner::train::Optimiser`) against three steps of
//! PyTorch's `torch.optim.Adam` configured as the official train.py (betas 0.5/0.999, lr 4e-5,
//! temperatures 0.01), on parameters and gradients from `tools/fixtures/make_adam_reference.py`.
//! Each step's *update* (not the parameters, which barely move at lr 4e-5) is compared per
//! tensor, relative to the update's size: a wrong learning rate, beta or bias correction moves
//! it by far more than the tolerance.

use candle_core::{Device, Tensor, Var};
use std::path::PathBuf;
use vcp_runner::config::TrainConfig;
use vcp_runner::train::Optimiser;

fn fixture() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adam_3steps.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn three_adam_steps_match_pytorch() {
    let fx = fixture();
    let dev = Device::Cpu;
    let params = fx["params"].as_object().unwrap();
    let mut vars: Vec<(String, Var, Vec<usize>)> = Vec::new();
    for (name, p) in params {
        let shape: Vec<usize> = p["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let t = Tensor::from_vec(floats(&p["init"]), shape.as_slice(), &dev).unwrap();
        vars.push((name.clone(), Var::from_tensor(&t).unwrap(), shape));
    }
    let named = |temps: bool| -> Vec<(String, Var)> {
        vars.iter()
            .filter(|(n, _, _)| n.starts_with("temperature.") == temps)
            .map(|(n, v, _)| (n.clone(), v.clone()))
            .collect()
    };
    let tc = TrainConfig {
        data: "synth:alpha".into(),
        root: None,
        epochs: 1,
        batch_size: 1,
        lr: 4e-5,
        lr_temperature: 0.01,
        betas: [0.5, 0.999],
        augment: false,
        mosaic_rate: 0.0,
        loss_chunk: None,
        val_data: None,
    };
    let mut opt = Optimiser::new(&named(false), &named(true), &tc).unwrap();
    for step in 0..3 {
        // Gradient of sum(param * g) is exactly g.
        let mut loss: Option<Tensor> = None;
        let before: Vec<Vec<f32>> = vars
            .iter()
            .map(|(_, v, _)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        for (name, v, shape) in &vars {
            let g = Tensor::from_vec(floats(&params[name]["grads"][step]), shape.as_slice(), &dev)
                .unwrap();
            let term = (v.as_tensor() * g).unwrap().sum_all().unwrap();
            loss = Some(match loss {
                Some(l) => (l + term).unwrap(),
                None => term,
            });
        }
        let grads = loss.unwrap().backward().unwrap();
        opt.step(&grads).unwrap();
        for (k, (name, v, _)) in vars.iter().enumerate() {
            let got: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let want = floats(&params[name]["after"][step]);
            let prev: Vec<f32> = if step == 0 {
                floats(&params[name]["init"])
            } else {
                floats(&params[name]["after"][step - 1])
            };
            // Same starting point as PyTorch (within f32 rounding of earlier steps).
            let drift = before[k]
                .iter()
                .zip(&prev)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let (mut err, mut size) = (0f64, 0f64);
            for i in 0..got.len() {
                let ours = got[i] as f64 - before[k][i] as f64;
                let theirs = want[i] as f64 - prev[i] as f64;
                err = err.max((ours - theirs).abs());
                size = size.max(theirs.abs());
            }
            // Every step starts where PyTorch's did: the earlier updates agree to f32 rounding
            // (measured: bit for bit), so the comparison of this update is not of two paths
            // that have already parted.
            let scale = prev.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                drift <= 1e-6 * scale + 1e-9,
                "step {} {name}: starts {drift:.1e} away from PyTorch's weights",
                step + 1
            );
            assert!(size > 0.0, "{name}: PyTorch did not move it");
            assert!(
                err <= 1e-3 * size + 1e-9,
                "step {} {name}: update error {err:.3e} vs size {size:.3e}",
                step + 1
            );
        }
    }
}

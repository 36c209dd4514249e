//! Whole-tower timing split: embedding vs blocks (ViT-B/16, 224, random weights).
//! `RAYON_NUM_THREADS=2 cargo run --release -p vcp-clip --example profile_vit`
use candle_core::{Device, Tensor};
use std::time::Instant;
use vcp_clip::{Clip, ClipConfig, ClipOptions, ClipWeights};

fn main() {
    let d = Device::Cpu;
    let w = ClipWeights::random(&ClipConfig::vit_b_16(), 0, &d).unwrap();
    let clip = Clip::new(&w, &ClipOptions::default()).unwrap();
    let x = Tensor::randn(0f32, 1., (1, 3, 224, 224), &d).unwrap();
    let n = 10;
    clip.vision.forward(&x, &[12]).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        clip.vision.embed(&x).unwrap();
    }
    println!(
        "embed   {:8.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        clip.vision.forward(&x, &[12]).unwrap();
    }
    println!(
        "forward {:8.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
}

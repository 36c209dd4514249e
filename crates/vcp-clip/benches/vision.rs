//! Vision forward throughput (CPU, f32, batch 1): the tiny preset and ViT-B/16 at 224 with random
//! weights. `cargo bench -p vcp-clip --bench vision`.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use vcp_clip::{Clip, ClipConfig, ClipOptions, ClipWeights};

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("vision_forward");
    g.sample_size(10);
    for (name, cfg, taps) in [
        ("tiny_224", ClipConfig::tiny(), vec![3, 6, 9, 12]),
        ("vit_b_16_224", ClipConfig::vit_b_16(), vec![3, 6, 9, 12]),
    ] {
        let w = ClipWeights::random(&cfg, 0, &dev).unwrap();
        let clip = Clip::new(&w, &ClipOptions::default()).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &dev).unwrap();
        g.bench_function(name, |b| b.iter(|| clip.vision.forward(&x, &taps).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Pixel metrics of one category of 100 maps at 518x518 (27M pixels), all metrics at once.
//! `cargo bench -p vcp-metrics --bench metrics`. The side-by-side comparison with the Python
//! reference is tools/bench_metrics.sh (results/bench/metrics.md).

use criterion::{criterion_group, criterion_main, Criterion};
use vcp_metrics::{pixel_metrics, MapRef};

fn synth(n: usize, size: usize) -> (Vec<Vec<f32>>, Vec<Vec<bool>>) {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut maps = Vec::new();
    let mut masks = Vec::new();
    for i in 0..n {
        let (cy, cx, r) = ((i * 37) % size, (i * 91) % size, 20 + i % 40);
        let mask: Vec<bool> = (0..size * size)
            .map(|p| {
                i % 2 == 0
                    && (p / size).abs_diff(cy).pow(2) + (p % size).abs_diff(cx).pow(2) <= r * r
            })
            .collect();
        let map: Vec<f32> = mask
            .iter()
            .map(|&m| next() * 0.7 + if m { 0.5 } else { 0.0 })
            .collect();
        maps.push(map);
        masks.push(mask);
    }
    (maps, masks)
}

fn bench(c: &mut Criterion) {
    let (maps, masks) = synth(100, 518);
    let refs: Vec<MapRef> = maps
        .iter()
        .zip(&masks)
        .map(|(s, m)| MapRef {
            scores: s,
            mask: m,
            height: 518,
            width: 518,
        })
        .collect();
    let mut g = c.benchmark_group("pixel_metrics");
    g.sample_size(10);
    g.bench_function("100x518x518", |b| b.iter(|| pixel_metrics(&refs).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

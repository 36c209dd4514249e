//! The disk feature cache: features read back from disk are bit-identical to freshly computed
//! ones, a second process (a second cache over the same folder) reads instead of computing, a
//! damaged entry is recomputed, and the size limit stops writing (reading goes on).

use candle_core::Device;
use vcp_runner::cache::{DiskOptions, FeatureCache};

fn model() -> vcp_model::VcpModel {
    let dev = Device::Cpu;
    let w = vcp_clip::ClipWeights::random(&vcp_clip::ClipConfig::tiny(), 0, &dev).unwrap();
    let cfg = vcp_model::presets::vcp_clip(vcp_model::presets::tiny(64), 4);
    vcp_model::VcpModel::new(&cfg, &w, 0, &dev).unwrap()
}

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(files(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
fn disk_features_are_exact_shared_repaired_and_bounded() {
    let m = model();
    let dev = Device::Cpu;
    let px = vcp_clip::testing::seeded_randn(3, &[3, 3, 64, 64], &dev);
    let keys: Vec<Option<String>> = (0..3).map(|i| Some(format!("img{i}"))).collect();
    let d = tempfile::tempdir().unwrap();
    let disk = || {
        Some(DiskOptions {
            dir: d.path().join("fc"),
            max_bytes: 1 << 30,
        })
    };
    let fresh = m.encode_images(&px).unwrap();
    let a = FeatureCache::new(1 << 30).with_disk(disk());
    let fa = a.features(&m, &px, &keys, &dev).unwrap();
    assert_eq!(files(&d.path().join("fc")).len(), 3);
    // Another process: nothing in memory, everything from disk, bit for bit.
    let b = FeatureCache::new(1 << 30).with_disk(disk());
    let fb = b.features(&m, &px, &keys, &dev).unwrap();
    assert!(
        b.disk_summary().contains("3 read, 0 written"),
        "{}",
        b.disk_summary()
    );
    for (x, y, z) in [
        (&fa.global, &fb.global, &fresh.global),
        (&fa.layers[3], &fb.layers[3], &fresh.layers[3]),
    ] {
        assert_eq!(vcp_clip::testing::max_abs_diff(x, z), 0.0);
        assert_eq!(vcp_clip::testing::max_abs_diff(y, z), 0.0);
    }
    // A damaged entry is recomputed (and rewritten).
    let f0 = files(&d.path().join("fc"))[0].clone();
    std::fs::write(&f0, b"not safetensors").unwrap();
    let c = FeatureCache::new(1 << 30).with_disk(disk());
    let fc = c.features(&m, &px, &keys, &dev).unwrap();
    assert!(
        c.disk_summary().contains("2 read, 1 written"),
        "{}",
        c.disk_summary()
    );
    assert_eq!(
        vcp_clip::testing::max_abs_diff(&fc.global, &fresh.global),
        0.0
    );
    // The size limit: a full folder is read but not written to.
    let small = FeatureCache::new(1 << 30).with_disk(Some(DiskOptions {
        dir: d.path().join("fc"),
        max_bytes: 1,
    }));
    let more: Vec<Option<String>> = (0..3).map(|i| Some(format!("other{i}"))).collect();
    small.features(&m, &px, &more, &dev).unwrap();
    assert!(
        small.disk_summary().contains("0 written"),
        "{}",
        small.disk_summary()
    );
    assert_eq!(files(&d.path().join("fc")).len(), 3);
}

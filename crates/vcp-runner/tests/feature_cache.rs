//! The disk feature cache: features read back from disk are bit-identical to freshly computed
//! ones, a second process (a second cache over the same folder) reads instead of computing, a
//! damaged entry is recomputed, and the size limit stops writing (reading goes on).

use candle_core::Device;
use vcp_runner::cache::{DiskOptions, FeatureCache};

fn model() -> vcp_model::VcpModel {
    let dev = Device::Cpu;
    let w = vcp_clip::ClipWeights::random(&vcp_clip::ClipConfig::tiny(), 0, &dev).unwrap();
    let cfg = vcp_model::presets::vcp_clip(vcp_model::presets::tiny(64), 4);
    vcp_model::VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 0, &dev).unwrap()
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

/// A safetensors file with a valid header whose metadata lies (`layers`, `grid`) and whose
/// tensors have other shapes.
fn lying_entry(layers: &str, grid: &str, shape: Vec<usize>) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let data = vec![0u8; n * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &data).unwrap();
    let meta: std::collections::HashMap<String, String> = [
        ("layers".to_string(), layers.to_string()),
        ("grid".to_string(), grid.to_string()),
    ]
    .into();
    safetensors::serialize(
        [
            ("layer.0".to_string(), view.clone()),
            ("global".to_string(), view),
        ],
        Some(meta),
    )
    .unwrap()
}

/// Issue 25: entries that lie about their contents, special files and huge files in a shared
/// folder are misses (recomputed and rewritten, exact features), never a panic, a huge
/// allocation or a hang.
#[test]
fn a_shared_cache_cannot_be_poisoned() {
    let m = model();
    let dev = Device::Cpu;
    let px = vcp_clip::testing::seeded_randn(3, &[1, 3, 64, 64], &dev);
    let keys = vec![Some("img".to_string())];
    let d = tempfile::tempdir().unwrap();
    let disk = || {
        Some(DiskOptions {
            dir: d.path().join("fc"),
            max_bytes: 1 << 40, // the sparse 4 GiB file below counts as used
        })
    };
    let fresh = m.encode_images(&px).unwrap();
    FeatureCache::new(1 << 30)
        .with_disk(disk())
        .features(&m, &px, &keys, &dev)
        .unwrap();
    let entry = files(&d.path().join("fc"))[0].clone();
    type Poison = Box<dyn Fn(&std::path::Path)>;
    let poisons: Vec<(&str, Poison)> = vec![
        // More taps than the model has (the tensors are not there).
        (
            "tap count",
            Box::new(|p| std::fs::write(p, lying_entry("1000000", "4", vec![1, 17, 32])).unwrap()),
        ),
        // A grid that asks for a terabyte.
        (
            "grid",
            Box::new(|p| std::fs::write(p, lying_entry("4", "1000000", vec![1, 17, 32])).unwrap()),
        ),
        // Plausible metadata, wrong tensor shapes.
        (
            "shapes",
            Box::new(|p| std::fs::write(p, lying_entry("1", "8", vec![2, 3])).unwrap()),
        ),
        // A FIFO: reading it would block forever.
        (
            "fifo",
            Box::new(|p| {
                std::fs::remove_file(p).unwrap();
                assert!(std::process::Command::new("mkfifo")
                    .arg(p)
                    .status()
                    .unwrap()
                    .success());
            }),
        ),
        // A file far larger than any entry of this model.
        (
            "huge",
            Box::new(|p| {
                let f = std::fs::File::create(p).unwrap();
                f.set_len(1 << 32).unwrap(); // sparse: 4 GiB that are never read
            }),
        ),
    ];
    for (what, poison) in poisons {
        let _ = std::fs::remove_file(&entry);
        std::fs::write(&entry, b"").unwrap();
        poison(&entry);
        let c = FeatureCache::new(1 << 30).with_disk(disk());
        let f = c.features(&m, &px, &keys, &dev).unwrap();
        assert!(
            c.disk_summary().contains("0 read, 1 written"),
            "{what}: {}",
            c.disk_summary()
        );
        assert_eq!(
            vcp_clip::testing::max_abs_diff(&f.global, &fresh.global),
            0.0,
            "{what}"
        );
        assert_eq!(
            vcp_clip::testing::max_abs_diff(&f.layers[0], &fresh.layers[0]),
            0.0,
            "{what}"
        );
        // Rewritten: the next process reads a good entry.
        assert!(std::fs::metadata(&entry).unwrap().is_file(), "{what}");
        let again = FeatureCache::new(1 << 30).with_disk(disk());
        again.features(&m, &px, &keys, &dev).unwrap();
        assert!(
            again.disk_summary().contains("1 read, 0 written"),
            "{what}: {}",
            again.disk_summary()
        );
    }
    // A folder planted at one entry's name cannot be replaced: that entry is skipped, the
    // process goes on writing the others (one bad name used to stop every later write).
    std::fs::remove_file(&entry).unwrap();
    std::fs::create_dir_all(entry.join("inside")).unwrap();
    let px2 = vcp_clip::testing::seeded_randn(4, &[2, 3, 64, 64], &dev);
    let keys2 = vec![Some("img".to_string()), Some("img2".to_string())];
    let c = FeatureCache::new(1 << 30).with_disk(disk());
    c.features(&m, &px2, &keys2, &dev).unwrap();
    assert!(
        c.disk_summary().contains("0 read, 1 written"),
        "{}",
        c.disk_summary()
    );
    assert!(entry.is_dir());
}

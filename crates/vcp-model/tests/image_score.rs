//! The resolution-independent image score: `fraction` of the map's pixels gives the same score
//! as `k` pixels when `fraction x pixels = k`, and both equal a hand computation (the mean of
//! the k largest raw values plus the mean of the k largest refined values).

use vcp_model::config::{FusionConfig, ImageScoreConfig, LayerReduce, Normalize, Upsample};
use vcp_model::fusion::{finalize, ImageMaps};

fn cfg(image_score: ImageScoreConfig) -> FusionConfig {
    FusionConfig {
        layer_reduce: LayerReduce::Mean,
        raw_weight: 0.5,
        upsample: Upsample::BilinearAlignCorners,
        sigma: 1.0,
        normalize: Normalize::None,
        image_score,
    }
}

/// A deterministic map of `size^2` distinct values (a permutation of a ramp).
fn map(size: usize, salt: usize) -> Vec<f32> {
    let n = size * size;
    (0..n)
        .map(|i| ((i * 7919 + salt * 104_729) % n) as f32 / n as f32)
        .collect()
}

fn hand_topk_mean(v: &[f32], k: usize) -> f64 {
    let mut s: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    s.sort_by(|a, b| b.partial_cmp(a).unwrap());
    s[..k].iter().sum::<f64>() / k as f64
}

#[test]
fn fraction_equals_k_when_fraction_times_pixels_is_k() {
    let size = 128; // 16384 pixels
    let images: Vec<ImageMaps> = (0..3)
        .map(|i| ImageMaps {
            raw: map(size, i),
            refined: Some(map(size, i + 10)),
            size,
            cls_score: 0.0,
            fewshot: None,
        })
        .collect();
    for k in [1usize, 122, 2000] {
        let fraction = k as f64 / (size * size) as f64;
        let by_k = finalize(
            &images,
            &cfg(ImageScoreConfig::TopkMean {
                k: Some(k),
                fraction: None,
            }),
        );
        let by_f = finalize(
            &images,
            &cfg(ImageScoreConfig::TopkMean {
                k: None,
                fraction: Some(fraction),
            }),
        );
        assert_eq!(by_k.scores, by_f.scores, "k = {k}");
        for (im, s) in images.iter().zip(&by_k.scores) {
            let want = hand_topk_mean(&im.raw, k) + hand_topk_mean(im.refined.as_ref().unwrap(), k);
            assert!((*s as f64 - want).abs() < 1e-5, "k = {k}: {s} vs {want}");
        }
    }
    // The 0.00745 (2000 / 518^2) at 128 px is 122 pixels.
    assert_eq!(
        ImageScoreConfig::topk_pixels(None, Some(0.00745), 128 * 128),
        122
    );
    assert_eq!(
        ImageScoreConfig::topk_pixels(None, Some(0.00745), 518 * 518),
        1999
    );
}

#[test]
fn exactly_one_of_k_and_fraction_in_range() {
    let bad = [
        ImageScoreConfig::TopkMean {
            k: Some(10),
            fraction: Some(0.1),
        },
        ImageScoreConfig::TopkMean {
            k: None,
            fraction: None,
        },
        ImageScoreConfig::TopkMean {
            k: Some(0),
            fraction: None,
        },
        ImageScoreConfig::TopkMean {
            k: None,
            fraction: Some(0.0),
        },
        ImageScoreConfig::TopkMean {
            k: None,
            fraction: Some(1.5),
        },
        ImageScoreConfig::TopkMean {
            k: None,
            fraction: Some(f64::NAN),
        },
    ];
    for b in bad {
        let e = b.validate().unwrap_err();
        assert!(e.contains("fusion.image_score"), "{e}");
    }
    assert!(ImageScoreConfig::TopkMean {
        k: None,
        fraction: Some(1.0)
    }
    .validate()
    .is_ok());
    assert!(ImageScoreConfig::TopkMean {
        k: Some(2000),
        fraction: None
    }
    .validate()
    .is_ok());
}

//! The caption corpus: deterministic per seed, captions agree with what was drawn, and the
//! stream never reproduces the benchmark's images.

use std::collections::HashSet;
use vcp_data::corpus::{self, ABNORMAL_WORDS, NORMAL_WORDS};
use vcp_data::synth;

/// The caption's words padded with spaces; the negation "no defects" (normal template "a {s}
/// {o} with no defects") is not a defect word.
fn words_of(caption: &str) -> String {
    format!(
        " {} ",
        caption.replace([',', ':'], " ").replace(" no defects", " ")
    )
}

#[test]
fn deterministic_per_seed_and_different_across_seeds() {
    let a = corpus::batch(3, 5, 16, 4, 64);
    let b = corpus::batch(3, 5, 16, 4, 64);
    let c = corpus::batch(4, 5, 16, 4, 64);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.image, y.image);
        assert_eq!(x.caption, y.caption);
        assert_eq!(x.mask, y.mask);
    }
    let same = a.iter().zip(&c).filter(|(x, y)| x.image == y.image).count();
    assert_eq!(same, 0, "another seed gives other images");
}

#[test]
fn captions_agree_with_what_was_drawn() {
    let nouns = corpus::all_defect_nouns();
    let mut normal = 0;
    let n = 600;
    for i in 0..n {
        let s = corpus::sample(11, i, 64);
        let w = words_of(&s.caption);
        let has_state = |list: &[&str]| list.iter().any(|x| w.contains(&format!(" {x} ")));
        let named: Vec<&str> = nouns
            .iter()
            .copied()
            .filter(|x| w.contains(&format!(" {x} ")))
            .collect();
        assert!(
            w.contains(&format!(" {} ", s.kind)),
            "{:?} lacks its kind {}",
            s.caption,
            s.kind
        );
        if s.defects.is_empty() {
            normal += 1;
            assert!(!s.mask.iter().any(|&m| m), "normal image with a mask");
            assert!(
                has_state(&NORMAL_WORDS),
                "{:?}: no normal state word",
                s.caption
            );
            assert!(
                !has_state(&ABNORMAL_WORDS),
                "{:?}: abnormal word on a normal image",
                s.caption
            );
            assert!(
                named.is_empty(),
                "{:?} names a defect on a normal image",
                s.caption
            );
        } else {
            assert!(
                s.mask.iter().any(|&m| m),
                "defective image without changed pixels"
            );
            assert!(
                has_state(&ABNORMAL_WORDS),
                "{:?}: no abnormal state word",
                s.caption
            );
            assert!(
                !has_state(&NORMAL_WORDS),
                "{:?}: normal word on a defective image",
                s.caption
            );
            // Any defect noun named must be one of the kinds drawn.
            for noun in named {
                if noun == "defect" || noun == "defects" {
                    continue;
                }
                let ok = s.defects.iter().any(|d| {
                    corpus::defect_nouns(d)
                        .iter()
                        .any(|(sg, pl)| *sg == noun || *pl == noun)
                });
                assert!(
                    ok,
                    "{:?} names `{noun}` but drew {:?}",
                    s.caption, s.defects
                );
            }
        }
    }
    // About half normal.
    assert!(
        (n as f64 * 0.4..n as f64 * 0.6).contains(&(normal as f64)),
        "{normal} of {n}"
    );
    // Pairs: same scene, only the defect differs.
    let (a, d) = corpus::pair(11, 0, 64);
    assert!(a.defects.is_empty() && !d.defects.is_empty());
    assert_eq!(a.kind, d.kind);
    // They differ only where the defect was drawn (grown by one pixel: the camera may blur).
    let n = 64usize;
    let near_mask = |i: usize| {
        let (x, y) = ((i % n) as i64, (i / n) as i64);
        (-1..=1).any(|dy| {
            (-1..=1).any(|dx| {
                let (xx, yy) = (x + dx, y + dy);
                xx >= 0
                    && yy >= 0
                    && xx < n as i64
                    && yy < n as i64
                    && d.mask[yy as usize * n + xx as usize]
            })
        })
    };
    let mut differing = 0;
    for (i, (x, y)) in a.image.chunks(3).zip(d.image.chunks(3)).enumerate() {
        if x != y {
            differing += 1;
            assert!(near_mask(i), "pixel {i} differs outside the defect");
        }
    }
    assert!(differing > 0);
}

#[test]
fn never_reproduces_the_benchmark_images() {
    // Every benchmark image (both domains, default seed and size, normal and defective) ...
    let size = 128;
    let mut bench = HashSet::new();
    for (_, cats) in synth::DOMAINS {
        for c in cats {
            for i in 0..12 {
                for defective in [false, true] {
                    bench.insert(synth::sample(c, i, defective, size, 0).image);
                }
            }
        }
    }
    // ... against corpus samples rendered at the benchmark's size: no byte-identical image.
    let mut benchmark_kinds = 0;
    for i in 0..400 {
        let s = corpus::sample(1, i, size);
        if synth::domain_of(s.kind).is_some() {
            benchmark_kinds += 1;
        }
        assert!(
            !bench.contains(&s.image),
            "corpus sample {i} is a benchmark image"
        );
    }
    assert!(
        benchmark_kinds > 40,
        "the benchmark's kinds are in the corpus ({benchmark_kinds})"
    );
    // And the two streams are keyed apart.
    assert_ne!(corpus::key(0, 0), corpus::key(1, 0));
}

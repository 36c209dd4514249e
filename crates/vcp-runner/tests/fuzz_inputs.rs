//! Property tests of every parser that reads user files (issue 16): valid files mutated by
//! truncation, byte flips, inserted and duplicated bytes, huge declared sizes and deep nesting
//! must never panic or abort, must stay within bounded memory, and must fail (when they fail)
//! with an error that names the file.
//!
//! Cases per parser: `VCP_FUZZ_CASES` (default 1000: 9000 cases, about 10 s in CI);
//! `just fuzz` runs 20 000 each. Every test prints how many cases ran and how many parsed.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn cases() -> u32 {
    std::env::var("VCP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn micro() -> PathBuf {
    root().join("crates/vcp-clip/tests/fixtures/openai_micro")
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(f64),
    Flip(f64, u8),
    Insert(f64, Vec<u8>),
    Duplicate(f64, f64),
    /// Overwrite 8 bytes with a huge little-endian number, or (text) a long run of nines.
    Huge(f64),
    /// Wrap the whole input in many levels of brackets (text formats).
    Nest(u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Mutation::Truncate),
        (0.0..1.0f64, any::<u8>()).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (0.0..1.0f64, prop::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(p, v)| Mutation::Insert(p, v)),
        (0.0..1.0f64, 0.0..0.5f64).prop_map(|(p, l)| Mutation::Duplicate(p, l)),
        (0.0..1.0f64).prop_map(Mutation::Huge),
        (1u16..20_000).prop_map(Mutation::Nest),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

fn apply(seed: &[u8], ms: &[Mutation], text: bool) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in ms {
        let at = |f: f64, n: usize| ((f * n as f64) as usize).min(n);
        match m {
            Mutation::Truncate(f) => b.truncate(at(*f, b.len())),
            Mutation::Flip(f, x) => {
                if !b.is_empty() {
                    let i = at(*f, b.len() - 1);
                    b[i] ^= x | 1;
                }
            }
            Mutation::Insert(f, v) => {
                let i = at(*f, b.len());
                b.splice(i..i, v.iter().cloned());
            }
            Mutation::Duplicate(f, l) => {
                let i = at(*f, b.len());
                let n = at(*l, b.len() - i);
                let dup = b[i..i + n].to_vec();
                b.splice(i..i, dup);
            }
            Mutation::Huge(f) => {
                let i = at(*f, b.len());
                let huge: Vec<u8> = if text {
                    b"99999999999999999999".to_vec()
                } else {
                    u64::MAX.to_le_bytes().to_vec()
                };
                let end = (i + huge.len()).min(b.len());
                b.splice(i..end, huge);
            }
            Mutation::Nest(n) => {
                if text {
                    let n = *n as usize;
                    let mut v = vec![b'['; n];
                    v.extend(&b);
                    v.extend(std::iter::repeat_n(b']', n));
                    b = v;
                }
            }
        }
    }
    b
}

/// Peak resident memory of this process in MiB.
fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Run `parse` on `cases()` mutations of `seed` written to `<dir>/<name>`; returns (cases,
/// parsed). `zip_inner`: mutate the named member of a zip archive and re-zip it.
fn fuzz(
    what: &str,
    name: &str,
    seed: Vec<u8>,
    text: bool,
    zip_inner: Option<&str>,
    parse: impl Fn(&Path) -> Result<(), String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let counts = std::cell::Cell::new((0u32, 0u32));
    runner
        .run(&mutations(), |ms| {
            let bytes = match zip_inner {
                None => apply(&seed, &ms, text),
                Some(member) => rezip(&seed, member, |b| apply(b, &ms, false)),
            };
            std::fs::write(&path, &bytes).unwrap();
            let (n, ok) = counts.get();
            match parse(&path) {
                Ok(()) => counts.set((n + 1, ok + 1)),
                Err(e) => {
                    counts.set((n + 1, ok));
                    prop_assert!(
                        e.contains(name),
                        "{what}: error does not name the file: {e}"
                    );
                }
            }
            let peak = peak_mib();
            prop_assert!(peak < 4096.0, "{what}: peak memory {peak:.0} MiB");
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let (n, ok) = counts.get();
    println!(
        "fuzz {what}: {n} mutated files, {ok} parsed, {} rejected with an error naming the file; peak {:.0} MiB",
        n - ok,
        peak_mib()
    );
    assert!(n >= cases());
}

/// The archive with member `member` (suffix match) replaced by `f(bytes)`.
fn rezip(zip_bytes: &[u8], member: &str, f: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..z.len() {
        let mut e = z.by_index(i).unwrap();
        let name = e.name().unwrap().to_string();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        let b = if name.ends_with(member) { f(&b) } else { b };
        out.start_file(name.as_str(), o).unwrap();
        out.write_all(&b).unwrap();
    }
    out.finish().unwrap().into_inner()
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn clip_load(p: &Path) -> Result<(), String> {
    vcp_clip::ClipWeights::load(p, &candle_core::Device::Cpu)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn fuzz_pth_archives() {
    let seed = read(micro().join("micro_state_dict.pth"));
    fuzz(
        "pth (archive bytes)",
        "case.pth",
        seed.clone(),
        false,
        None,
        clip_load,
    );
    fuzz(
        "pth (data.pkl)",
        "case.pth",
        seed,
        false,
        Some("data.pkl"),
        clip_load,
    );
}

#[test]
fn fuzz_torchscript_archives() {
    let seed = read(micro().join("micro_torchscript.pt"));
    fuzz(
        "torchscript (data.pkl)",
        "case.pt",
        seed,
        false,
        Some("data.pkl"),
        clip_load,
    );
}

#[test]
fn fuzz_safetensors_weights() {
    let seed = read(micro().join("micro.safetensors"));
    fuzz(
        "safetensors weights",
        "case.safetensors",
        seed,
        false,
        None,
        clip_load,
    );
}

#[test]
fn fuzz_checkpoints() {
    let dev = candle_core::Device::Cpu;
    let w = vcp_clip::ClipWeights::random(&vcp_clip::ClipConfig::tiny(), 0, &dev).unwrap();
    let cfg = vcp_model::presets::vcp_clip(vcp_model::presets::tiny(64), 4);
    let model =
        vcp_model::VcpModel::new(&vcp_model::standard_registry(), &cfg, &w, 0, &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("seed.safetensors");
    vcp_model::checkpoint::save(&model, &p, &[]).unwrap();
    fuzz(
        "checkpoint",
        "case.safetensors",
        read(p),
        false,
        None,
        |p| vcp_model::checkpoint::load_into(&model, p).map_err(|e| e.to_string()),
    );
}

#[test]
fn fuzz_npy_maps() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("seed.npy");
    vcp_data::npy::write_f32_2d(
        &p,
        &vcp_data::npy::Array2 {
            height: 6,
            width: 5,
            data: (0..30).map(|i| i as f32 / 7.0).collect(),
        },
    )
    .unwrap();
    fuzz("npy", "case.npy", read(p), false, None, |p| {
        vcp_data::npy::read_f32_2d(p)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_meta_json() {
    let seed = br#"{"train": {"bottle": [{"img_path": "bottle/train/good/000.png", "mask_path": "", "cls_name": "bottle", "specie_name": "good", "anomaly": 0}]},
 "test": {"bottle": [{"img_path": "bottle/test/broken/000.png", "mask_path": "bottle/ground_truth/broken/000_mask.png", "cls_name": "bottle", "specie_name": "broken", "anomaly": 1},
  {"img_path": "bottle/test/good/001.png", "mask_path": "", "cls_name": "bottle", "specie_name": "good", "anomaly": 0}]}}"#;
    fuzz(
        "meta.json",
        "case_meta.json",
        seed.to_vec(),
        true,
        None,
        |p| {
            vcp_data::Meta::load(p)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
}

#[test]
fn fuzz_experiment_toml() {
    let seed = read(root().join("experiments/vcp_clip_tiny.toml"));
    fuzz("experiment TOML", "case_exp.toml", seed, true, None, |p| {
        vcp_runner::config::ExperimentConfig::load(&vcp_model::standard_registry(), p)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_png_masks() {
    let (w, h) = (16usize, 12usize);
    let grey: Vec<u8> = (0..w * h)
        .map(|i| if i % 7 < 3 { 255 } else { 0 })
        .collect();
    let png =
        vcp_data::io::encode_png(&grey, w as u32, h as u32, image::ExtendedColorType::L8).unwrap();
    fuzz("png mask", "case_mask.png", png, false, None, |p| {
        vcp_data::mask::load_mask(p, h, w, false)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

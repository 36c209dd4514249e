//! `vcp train`, `vcp eval`, `vcp predict`, `vcp data synth`: learning on the synthetic benchmark,
//! the official checkpoint run with no Python, and one-line errors for bad configs/checkpoints.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn vcp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vcp"))
}
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}
fn official() -> PathBuf {
    root().join("fixtures/official-dev")
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "stderr should contain `{needle}`: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
}

/// The tiny experiment, smaller: 96 px input, 4 images per category, 3 epochs.
fn small_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("experiments/vcp_clip_tiny.toml")).unwrap();
    let text = text
        .replace("image_size = 224", "image_size = 96")
        .replace("epochs = 2", "epochs = 3")
        .replace("batch_size = 8\nlr", "batch_size = 10\nlr")
        .replace("per_category = 12", "per_category = 4")
        .replace("size = 128", "size = 64")
        .replace("val_data = \"synth:beta\"\n", "");
    let p = dir.join("small.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn training_reduces_loss_then_eval_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let out = dir.path().join("run");
    ok(vcp()
        .args(["train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .env("VCP_CACHE", dir.path().join("cache")));
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 3);
    assert!(losses[2] < losses[0], "loss did not decrease: {losses:?}");
    // Reproducible: dropout masks and augmentation draws come from the seed.
    let again = dir.path().join("again");
    ok(vcp()
        .args(["train", "--epochs", "1", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&again)
        .env("VCP_CACHE", dir.path().join("cache")));
    let first: f64 = serde_json::from_str::<serde_json::Value>(
        std::fs::read_to_string(again.join("train_log.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap()["loss"]
        .as_f64()
        .unwrap();
    assert_eq!(first, losses[0], "same seed, same loss");
    for e in 1..=3 {
        assert!(out.join(format!("epoch_{e}.safetensors")).exists());
        let sha =
            std::fs::read_to_string(out.join(format!("epoch_{e}.safetensors.sha256"))).unwrap();
        assert_eq!(sha.split_whitespace().next().unwrap().len(), 64);
    }
    // Resume continues after the last epoch.
    ok(vcp()
        .args(["train", "--resume", "--epochs", "4", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .env("VCP_CACHE", dir.path().join("cache")));
    assert!(out.join("epoch_4.safetensors").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("train_log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    // Eval on the unseen domain writes the eval-maps outputs.
    let ev = dir.path().join("eval");
    ok(vcp()
        .args(["eval", "--config"])
        .arg(&cfg)
        .arg("--checkpoint")
        .arg(out.join("epoch_4.safetensors"))
        .arg("--out")
        .arg(&ev)
        .arg("--save-maps")
        .arg(dir.path().join("maps"))
        .env("VCP_CACHE", dir.path().join("cache")));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(
        m["categories"].as_object().unwrap().len(),
        5,
        "five beta categories"
    );
    assert!(dir.path().join("maps/grid/test/good/000.npy").exists());
    // The saved maps scored by `vcp eval-maps` (another code path: maps read back from .npy)
    // give the same pixel AUROC and AP per category (both invariant to the per-category
    // normalisation), and the mean is the mean of the categories.
    let synth = std::fs::read_dir(dir.path().join("cache/synth"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("meta_beta.json").exists())
        .unwrap();
    let ev2 = dir.path().join("eval_maps");
    ok(vcp()
        .args(["eval-maps", "--meta"])
        .arg(synth.join("meta_beta.json"))
        .arg("--root")
        .arg(&synth)
        .arg("--maps")
        .arg(dir.path().join("maps"))
        .arg("--out")
        .arg(&ev2));
    let m2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev2.join("metrics.json")).unwrap()).unwrap();
    let cats = m["categories"].as_object().unwrap();
    let mut sum = 0.0;
    for (c, v) in cats {
        for k in ["auroc_px", "ap_px"] {
            let (a, b) = (
                v[k].as_f64().unwrap(),
                m2["categories"][c][k].as_f64().unwrap(),
            );
            assert!((a - b).abs() < 1e-6, "{c} {k}: eval {a} vs eval-maps {b}");
        }
        sum += v["auroc_px"].as_f64().unwrap();
    }
    let mean = m["mean"]["auroc_px"].as_f64().unwrap();
    assert!((mean - sum / cats.len() as f64).abs() < 1e-12);
}

/// `vcp predict` of the official checkpoint on the fixture's CLIP and image (the fixture's setting:
/// 80 px, taps 3/6/9/12, exact GELU), writing to `out`.
fn predict_official(out: &Path) -> Command {
    let mut c = vcp();
    c.args(["predict", "--checkpoint"])
        .arg(official().join("vcp_trainables.pth"))
        .arg("--clip")
        .arg(official().join("clip_openai.safetensors"))
        .args([
            "--size",
            "80",
            "--layers",
            "3,6,9,12",
            "--activation",
            "gelu",
        ])
        .arg("--image")
        .arg(official().join("img1.png"))
        .arg("--out")
        .arg(out);
    c
}

#[test]
fn predict_official_checkpoint_reproduces_official_maps() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pred");
    ok(&mut predict_official(&out));
    for f in ["img1.npy", "img1_overlay.png", "scores.json"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let ours = vcp_data::npy::read_f32_2d(&out.join("img1.npy")).unwrap();
    let fwd = candle_core::safetensors::load(
        official().join("forward.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want = fwd["maps.gaussian"]
        .get(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let err = ours
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "map differs from the official one by {err}");
    let scores: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    let want = fwd["scores.image_unnormalized"]
        .get(1)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    assert!((scores["img1"]["score"].as_f64().unwrap() - want).abs() < 1e-4);
    let (w, h) = image::image_dimensions(out.join("img1_overlay.png")).unwrap();
    assert_eq!((w, h), (240, 80));
}

/// Few-shot on one's own images: with the test image itself as the only reference, every patch
/// is in the memory bank (anomaly 0), so the final map is exactly (1 - w) times the zero-shot map
/// (smoothing is linear) and the score (1 - w) times the zero-shot score.
#[test]
fn predict_with_references_blends_the_memory_bank() {
    let dir = tempfile::tempdir().unwrap();
    let refs = dir.path().join("refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::copy(official().join("img1.png"), refs.join("normal.png")).unwrap();
    let run = |out: &Path, with_refs: bool| {
        let mut c = predict_official(out);
        if with_refs {
            c.arg("--refs").arg(&refs).args(["--memory-bank", "0.25"]);
        }
        ok(&mut c);
        let map = vcp_data::npy::read_f32_2d(&out.join("img1.npy"))
            .unwrap()
            .data;
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap())
                .unwrap();
        (map, s["img1"]["score"].as_f64().unwrap())
    };
    let (zs, s0) = run(&dir.path().join("zs"), false);
    let (fs, s1) = run(&dir.path().join("fs"), true);
    let err = zs
        .iter()
        .zip(&fs)
        .map(|(a, b)| (0.75 * a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-5, "map: {err}");
    assert!((0.75 * s0 - s1).abs() < 1e-5, "score {s1} vs 0.75 x {s0}");
    // No references in the folder: a one-line error naming it.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(
        vcp()
            .args(["predict", "--checkpoint"])
            .arg(official().join("vcp_trainables.pth"))
            .arg("--clip")
            .arg(official().join("clip_openai.safetensors"))
            .arg("--image")
            .arg(official().join("img1.png"))
            .arg("--refs")
            .arg(&empty)
            .arg("--out")
            .arg(dir.path().join("x")),
        "no images",
    );
}

#[test]
fn bad_config_and_checkpoint_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    // Unknown key: named with the file.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("heads = 8", "heads = 8\nhedas = 3");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    fails_with(vcp().args(["train", "--config"]).arg(&bad), "hedas");
    fails_with(vcp().args(["train", "--config"]).arg(&bad), "bad.toml");
    // The official checkpoint does not fit the tiny config: the tensors are named.
    fails_with(
        vcp()
            .args(["eval", "--config"])
            .arg(&cfg)
            .arg("--checkpoint")
            .arg(official().join("vcp_trainables.pth"))
            .env("VCP_CACHE", dir.path().join("cache")),
        "head.fc.0.weight",
    );
    // Unreadable image for predict.
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"nope").unwrap();
    fails_with(
        vcp()
            .args(["predict", "--checkpoint"])
            .arg(official().join("vcp_trainables.pth"))
            .arg("--clip")
            .arg(official().join("clip_openai.safetensors"))
            .args(["--size", "80", "--layers", "3,6,9,12", "--image"])
            .arg(&junk)
            .arg("--out")
            .arg(dir.path().join("p")),
        "junk.png",
    );
    assert!(!dir.path().join("p/scores.json").exists());
}

#[test]
fn synth_command_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        ok(vcp()
            .args([
                "data",
                "synth",
                "--size",
                "48",
                "--per-category",
                "2",
                "--seed",
                "3",
                "--out",
            ])
            .arg(dir.path().join(name)));
    }
    let meta = vcp_data::Meta::load(&dir.path().join("a/meta.json")).unwrap();
    assert_eq!(meta.test.0.len(), 10);
    for (_, recs) in &meta.test.0 {
        for r in recs {
            let a = std::fs::read(dir.path().join("a").join(&r.img_path)).unwrap();
            let b = std::fs::read(dir.path().join("b").join(&r.img_path)).unwrap();
            assert_eq!(a, b, "{} differs between two runs", r.img_path);
        }
    }
    assert!(
        dir.path().join("a/meta_alpha.json").exists()
            && dir.path().join("a/meta_beta.json").exists()
    );
}

/// Issue 25 (7): a FIFO named like an image inside `--images DIR` is refused before it is opened
/// (opening one blocks until a writer comes), with one error naming it; nothing is written.
#[test]
fn predict_refuses_a_fifo_among_the_images() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::copy(official().join("img1.png"), imgs.join("a.png")).unwrap();
    assert!(Command::new("mkfifo")
        .arg(imgs.join("b.png"))
        .status()
        .unwrap()
        .success());
    let out = dir.path().join("pred");
    // The fixture's predict command with a folder of images instead of its one image.
    let args: Vec<std::ffi::OsString> = predict_official(&out)
        .get_args()
        .map(|a| a.to_owned())
        .collect();
    let at = args.iter().position(|a| a == "--image").unwrap();
    let mut c = vcp();
    c.args(&args[..at])
        .arg("--images")
        .arg(&imgs)
        .args(&args[at + 2..]);
    let o = common::output_within(&mut c, 300);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("b.png") && e.contains("not a regular file") && !e.contains("panicked"),
        "{e}"
    );
    assert_eq!(
        e.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{e}"
    );
    assert!(
        !out.join("a.npy").exists(),
        "nothing scored before the refusal"
    );
}

/// Issue 22: `vcp bench --what pretrain` on a tiny recipe gives the same losses (to 1e-6) with
/// one and with two threads (the fused kernels split rows over threads; their sums are
/// per-thread partial sums), and `--threads 0` or more than the machine has is one error.
#[test]
fn pretrain_bench_losses_do_not_depend_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("tiny.toml");
    std::fs::write(
        &recipe,
        r#"name = "tiny"
[model]
embed_dim = 16
activation = "quick_gelu"
[model.vision]
width = 24
layers = 2
heads = 2
mlp_dim = 40
patch_size = 8
image_size = 32
ln_eps = 1e-5
[model.text]
width = 24
layers = 2
heads = 2
mlp_dim = 40
context_length = 24
vocab_size = 49408
ln_eps = 1e-5
[corpus]
seed = 3
pairs = 2
[train]
steps = 4
batch_size = 16
lr = 1e-3
warmup = 1
[eval]
heldout = 16
"#,
    )
    .unwrap();
    let losses = |threads: &str| -> Vec<f64> {
        let out = ok(vcp()
            .args(["bench", "--what", "pretrain", "--config"])
            .arg(&recipe)
            .args(["--iters", "3", "--threads", threads]));
        let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(j["threads"].as_u64().unwrap().to_string(), threads);
        j["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let cores = std::thread::available_parallelism().unwrap().get();
    let (one, two) = (losses("1"), losses(&cores.min(2).to_string()));
    assert_eq!(one.len(), 3);
    for (a, b) in one.iter().zip(&two) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{one:?} vs {two:?}");
    }
    for bad in ["0".to_string(), (cores + 1).to_string()] {
        fails_with(
            vcp()
                .args(["bench", "--what", "pretrain", "--config"])
                .arg(&recipe)
                .args(["--threads", &bad]),
            &format!("--threads {bad}"),
        );
    }
}

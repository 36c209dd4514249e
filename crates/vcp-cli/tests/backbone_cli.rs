//! `vcp tokenize`, `vcp features`, `vcp text-embed`, `vcp weights fetch`: outputs and one-line errors.

use candle_core::Device;
use std::path::PathBuf;
use std::process::Command;

fn vcp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vcp"))
}
fn clip_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vcp-clip/tests/fixtures")
}
fn official() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/official-dev")
}

fn fails_with(args: &[&str], needle: &str) {
    let out = vcp().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "stderr should contain `{needle}`: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error expected: {err}"
    );
}

#[test]
fn tokenize_prints_padded_ids() {
    let out = vcp()
        .args([
            "tokenize",
            "--context",
            "10",
            "a photo of a damaged <|class|>",
            "x",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ids: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        ids[0],
        vec![49406, 320, 1125, 539, 320, 13568, 49408, 49407, 0, 0]
    );
    assert_eq!(ids[1].len(), 10);
    let out = vcp()
        .args(["tokenize", "--context", "4", "one two three four five"])
        .output()
        .unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids[0].len(), 4);
    assert_eq!(ids[0][3], 49407, "truncated text keeps EOT last");
}

#[test]
fn features_match_the_library_and_official_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.safetensors");
    let clip = official().join("clip_openai.safetensors");
    let img = official().join("img1.png");
    let st = vcp()
        .args(["features", "--clip"])
        .arg(&clip)
        .arg("--image")
        .arg(&img)
        .args([
            "--size",
            "80",
            "--layers",
            "3,12",
            "--activation",
            "gelu",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let fwd = candle_core::safetensors::load(official().join("forward.safetensors"), &Device::Cpu)
        .unwrap();
    let diff = vcp_clip::testing::max_abs_diff;
    assert_eq!(got["global"].dims(), &[128]);
    assert_eq!(got["layer_3"].dims(), &[101, 192]);
    assert!(
        diff(
            &got["global"],
            &fwd["vision.global_embedding"].get(1).unwrap()
        ) < 1e-4
    );
    assert!(
        diff(
            &got["layer_12"],
            &fwd["vision.patch_tokens.layer12"].get(1).unwrap()
        ) < 1e-4
    );
    assert_eq!(got.len(), 3);
}

#[test]
fn text_embed_writes_projected_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.safetensors");
    let hf = clip_fixtures().join("hf_quick");
    let st = vcp()
        .args(["text-embed", "--clip"])
        .arg(&hf)
        .arg("--out")
        .arg(&out)
        .args([
            "a photo of a damaged object.",
            "a photo of a flawless bottle",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let refs =
        candle_core::safetensors::load(hf.join("reference.safetensors"), &Device::Cpu).unwrap();
    // The fixture's first two prompts are the same texts.
    let want = refs["text.embeds"].narrow(0, 0, 2).unwrap();
    let d = (&got["text"] - &want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
}

#[test]
fn bad_input_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let o = out.to_str().unwrap();
    let hf = clip_fixtures().join("hf_quick");
    let h = hf.to_str().unwrap();
    let img = official().join("img0.png");
    let i = img.to_str().unwrap();
    fails_with(
        &[
            "features",
            "--clip",
            h,
            "--image",
            "/nonexistent.png",
            "--out",
            o,
        ],
        "/nonexistent.png",
    );
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG garbage").unwrap();
    fails_with(
        &[
            "features",
            "--clip",
            h,
            "--image",
            bad.to_str().unwrap(),
            "--out",
            o,
        ],
        "bad.png",
    );
    fails_with(
        &[
            "features", "--clip", h, "--image", i, "--layers", "2,9", "--out", o,
        ],
        "tap layer 9",
    );
    fails_with(
        &[
            "features", "--clip", h, "--image", i, "--size", "50", "--out", o,
        ],
        "multiple of the patch size",
    );
    fails_with(
        &[
            "features",
            "--clip",
            "/nope/model.safetensors",
            "--image",
            i,
            "--out",
            o,
        ],
        "/nope/model.safetensors",
    );
    let trunc = dir.path().join("trunc.safetensors");
    let bytes = std::fs::read(official().join("clip_openai.safetensors")).unwrap();
    std::fs::write(&trunc, &bytes[..1000]).unwrap();
    fails_with(
        &[
            "features",
            "--clip",
            trunc.to_str().unwrap(),
            "--image",
            i,
            "--out",
            o,
        ],
        "trunc.safetensors",
    );
    fails_with(
        &[
            "text-embed",
            "--clip",
            trunc.to_str().unwrap(),
            "--out",
            o,
            "x",
        ],
        "trunc.safetensors",
    );
    assert!(!out.exists(), "no output written on error");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no temporary files left"
    );
}

#[test]
fn weights_fetch_offline_explains_what_to_do() {
    let out = vcp()
        .args(["weights", "fetch", "openai/clip-vit-base-patch16"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HOME", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.json") && err.contains("--clip"),
        "{err}"
    );
    fails_with(
        &["weights", "fetch", "not-a-repo-id"],
        "not a Hugging Face repository id",
    );
}

#[test]
fn stdout_errors_never_panic() {
    // A full disk: one line on stderr, status 1.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
    if let Ok(full) = full {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vcp"))
            .args(["tokenize", "a photo of a damaged bottle"])
            .stdout(full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("standard output") && !err.contains("panicked"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A closed pipe (`| head`): quiet, status 0.
    let texts: Vec<String> = (0..20000).map(|i| format!("text number {i}")).collect();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vcp"))
        .arg("tokenize")
        .args(&texts)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before the output is written
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

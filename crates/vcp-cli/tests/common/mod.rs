//! Helpers shared by the CLI tests: the binary, success checks, and a small experiment.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `vcp` binary with its cache (synthetic data) in `cache`.
pub fn vcp(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vcp"));
    c.env("VCP_CACHE", cache);
    c
}

/// (stdout, stderr) of a successful process; its stderr otherwise.
pub fn ok_output(out: Output) -> (String, String) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub fn ok(cmd: &mut Command) -> (String, String) {
    ok_output(cmd.output().unwrap())
}

/// Exactly one line of the error output is the error.
pub fn one_error(stderr: &str) -> bool {
    stderr.lines().filter(|l| l.starts_with("error")).count() == 1
}

/// `dir/base.toml`: the embedded default experiment made small (64 px, one epoch, two 48 px
/// images per category and split, no dropout or augmentation) for tests that run it.
pub fn write_small_base(dir: &Path) {
    let base = std::fs::read_to_string(root().join("experiments/vcp_clip_tiny.toml"))
        .unwrap()
        .replace("image_size = 128", "image_size = 64")
        .replace("epochs = 2", "epochs = 1")
        .replace("per_category = 12", "per_category = 2")
        .replace("size = 128", "size = 48")
        .replace("dropout = 0.1", "dropout = 0.0")
        .replace("augment = true", "augment = false");
    std::fs::write(dir.join("base.toml"), base).unwrap();
}

/// The `utp` and `vcp_clip` variants of the component ablation, as ablation-file text.
pub const UTP_AND_VCP_CLIP: &str = r#"
[[variant]]
name = "utp"
set = { "deep_prompt" = { kind = "none" }, "category" = { kind = "static", tokens = 2 }, "refiner" = { kind = "identity" }, "fusion.raw_weight" = 1.0 }
[[variant]]
name = "vcp_clip"
set = {}
"#;

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
    let path = root().join("experiments/vcp_clip_tiny.toml");
    let mut doc: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (key, value) in [
        ("backbone.image_size", toml::Value::Integer(64)),
        ("train.epochs", toml::Value::Integer(1)),
        ("synth.per_category", toml::Value::Integer(2)),
        ("synth.size", toml::Value::Integer(48)),
        ("deep_prompt.dropout", toml::Value::Float(0.0)),
        ("train.augment", toml::Value::Boolean(false)),
    ] {
        set_existing(&mut doc, key, value);
    }
    std::fs::write(dir.join("base.toml"), toml::to_string(&doc).unwrap()).unwrap();
}

/// Overwrite `key` (dotted) in `doc`; panics naming the key when it is not there, so that a
/// renamed setting in the experiment file fails the tests instead of being silently skipped.
pub fn set_existing(doc: &mut toml::Table, key: &str, value: toml::Value) {
    let (path, last) = key.rsplit_once('.').unwrap_or(("", key));
    let mut t = doc;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        t = t
            .get_mut(part)
            .and_then(|v| v.as_table_mut())
            .unwrap_or_else(|| panic!("no table `{part}` for `{key}` in vcp_clip_tiny.toml"));
    }
    let slot = t
        .get_mut(last)
        .unwrap_or_else(|| panic!("no key `{key}` in vcp_clip_tiny.toml"));
    *slot = value;
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

/// Run `cmd` for at most `secs`: a command that opened a FIFO would block forever; here it is
/// killed and the test fails instead of hanging CI.
pub fn output_within(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed().as_secs() > secs {
            child.kill().unwrap();
            panic!("{cmd:?} still running after {secs} s (blocked on a special file?)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

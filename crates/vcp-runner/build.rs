//! Embeds the commit and the dirty flag of the code this binary is built from, so that a run
//! record names the code that produced it (not whatever the working directory holds at run time).
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Rebuild when the commit or any tracked source changes (cargo scans directories).
    for p in [
        ".git/HEAD",
        ".git/index",
        "crates",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        let path = root.join(p);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) => (!s.is_empty()).to_string(),
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=VCP_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=VCP_BUILD_DIRTY={dirty}");
}

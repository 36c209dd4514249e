//! `vcp new-component`: on a copy of the files it edits, it writes the template's crate
//! (byte-equal to `crates/vcp-scaffold-demo` for the refiner slot and `crates/vcp-scaffold-head`
//! for the head slot, which the workspace builds and tests, so the output is known to compile
//! and pass its forward test), registers it with one line in each of the three files, writes an
//! experiment comparing it with the slot's default, and refuses bad names, a slot without a
//! template and a second run without writing anything.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::*;

fn workspace() -> PathBuf {
    root()
}

/// The workspace files `new-component` reads and edits, copied into `dir`.
fn skeleton(dir: &Path) {
    for f in [
        "Cargo.toml",
        "crates/vcp-cli/Cargo.toml",
        "crates/vcp-cli/src/components.rs",
    ] {
        let to = dir.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(workspace().join(f), &to).unwrap();
    }
    std::fs::create_dir_all(dir.join("experiments")).unwrap();
}

fn new_component(cache: &Path, root: &Path, slot: &str, name: &str) -> std::process::Output {
    let mut c: Command = vcp(cache);
    c.args(["new-component", "--slot", slot, "--name", name, "--root"])
        .arg(root)
        .output()
        .unwrap()
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// `new-component --slot SLOT --name NAME` in a fresh skeleton: the crate equals the committed
/// `crates/KRATE` byte for byte, one line is added to each registering file, and the experiment
/// compares the slot's default `DEFAULT` with the new kind.
fn writes_the_committed_crate(slot: &str, name: &str, krate: &str, default: &str) {
    let d = tempfile::tempdir().unwrap();
    let (cache, ws) = (d.path().join("cache"), d.path().join("ws"));
    skeleton(&ws);
    let o = new_component(&cache, &ws, slot, name);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The crate: the committed, compiled and tested one, byte for byte (only the sources it
    // writes; a build leaves nothing in the crate folder).
    let written = tree(&ws.join("crates").join(krate));
    let committed = tree(&workspace().join("crates").join(krate));
    assert_eq!(
        written.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
        vec![PathBuf::from("Cargo.toml"), PathBuf::from("src/lib.rs")]
    );
    assert_eq!(
        written, committed,
        "regenerate crates/{krate} from the {slot} template"
    );
    // One line in each file it edits, nothing else changed.
    let text = |f: &str| std::fs::read_to_string(ws.join(f)).unwrap();
    let orig = |f: &str| std::fs::read_to_string(workspace().join(f)).unwrap();
    let ident = krate.replace('-', "_");
    for (f, line) in [
        (
            "Cargo.toml",
            format!("{krate} = {{ path = \"crates/{krate}\" }}"),
        ),
        (
            "crates/vcp-cli/Cargo.toml",
            format!("{krate}.workspace = true"),
        ),
        (
            "crates/vcp-cli/src/components.rs",
            format!("    {ident}::register(&mut reg);"),
        ),
    ] {
        let (new, old) = (text(f), orig(f));
        assert_eq!(new.matches(&line).count(), 1, "{f}: {new}");
        assert_eq!(new.replacen(&format!("{line}\n"), "", 1), old, "{f}");
    }
    // The experiment: the slot's default against the new kind.
    let exp: toml::Table = toml::from_str(&text(&format!("experiments/{name}.toml"))).unwrap();
    assert_eq!(exp["name"].as_str(), Some(name));
    assert_eq!(exp["base"].as_str(), Some("vcp_clip_tiny.toml"));
    assert_eq!(exp["baseline"].as_str(), Some(default));
    let variants = exp["variant"].as_array().unwrap();
    assert_eq!(variants[0]["name"].as_str(), Some(default));
    assert_eq!(variants[1]["set"][slot]["kind"].as_str(), Some(name));
}

#[test]
fn new_component_writes_the_head_template_crate() {
    writes_the_committed_crate("head", "scaffold_head", "vcp-scaffold-head", "linear_proj");
}

#[test]
fn new_component_writes_the_template_crate_and_registers_it() {
    writes_the_committed_crate("refiner", "scaffold_demo", "vcp-scaffold-demo", "post_vcp");
    let d = tempfile::tempdir().unwrap();
    let (cache, ws) = (d.path().join("cache"), d.path().join("ws"));
    skeleton(&ws);
    let before = tree(&ws);
    let o = new_component(&cache, &ws, "refiner", "scaffold_demo");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A second time: refused, nothing changed.
    let after = tree(&ws);
    let o = new_component(&cache, &ws, "refiner", "scaffold_demo");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && one_error(&e) && e.contains("exists already"),
        "{e}"
    );
    assert_eq!(tree(&ws), after);
    // Bad names and slots: one error each, nothing written.
    let fresh = d.path().join("fresh");
    skeleton(&fresh);
    for (slot, name, needle) in [
        ("refiner", "My-Refiner", "snake_case"),
        ("refiner", "a", "snake_case"),
        ("refiner", "x;rm -rf", "snake_case"),
        ("refiner", "ends_", "snake_case"),
        ("prompt", "my_prompt", "templates exist for refiner, head"),
    ] {
        let o = new_component(&cache, &fresh, slot, name);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && one_error(&e) && e.contains(needle),
            "{name}: {e}"
        );
    }
    assert_eq!(tree(&fresh), before, "nothing written by refused calls");
    // Not the workspace's root: one error naming the folder.
    let o = new_component(&cache, d.path(), "refiner", "other");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("not the workspace's root"),
        "{e}"
    );
}

//! `vcp new-component --slot refiner|head --name NAME [--root DIR]`: the door for a new idea.
//!
//! Writes a compiling component crate `crates/vcp-NAME/` from the workspace's template (its
//! configuration type, the module, a forward test against a hand computation), registers it in
//! this binary with one line (`crates/vcp-cli/src/components.rs`, plus one dependency line in
//! each `Cargo.toml`), and writes `experiments/NAME.toml`, which compares it with the slot's
//! default on the built-in benchmark. Everything is checked before anything is written; every
//! file is written atomically. `crates/vcp-scaffold-demo` and `crates/vcp-scaffold-head` are the
//! templates' output for `--slot refiner --name scaffold_demo` and `--slot head --name
//! scaffold_head`, built and tested with the workspace (a CLI test compares them with the
//! command's output).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The slot the component fills (templates: refiner, head).
    #[arg(long)]
    slot: String,
    /// The component's `kind` (snake_case, e.g. `my_refiner`); the crate is `vcp-my-refiner`.
    #[arg(long)]
    name: String,
    /// The workspace's root folder.
    #[arg(long, default_value = ".")]
    root: PathBuf,
}

/// Slots with a template, and its files (`Cargo.toml`, `src/lib.rs`, the experiment).
const TEMPLATES: [(&str, [&str; 3]); 2] = [
    (
        "refiner",
        [
            include_str!("../templates/refiner/Cargo.toml.tmpl"),
            include_str!("../templates/refiner/lib.rs.tmpl"),
            include_str!("../templates/refiner/experiment.toml.tmpl"),
        ],
    ),
    (
        "head",
        [
            include_str!("../templates/head/Cargo.toml.tmpl"),
            include_str!("../templates/head/lib.rs.tmpl"),
            include_str!("../templates/head/experiment.toml.tmpl"),
        ],
    ),
];

/// The names a component goes by.
struct Names {
    /// `my_refiner`: the kind, the experiment's name.
    kind: String,
    /// `vcp-my-refiner`: the crate and its folder.
    krate: String,
    /// `vcp_my_refiner`: the crate in Rust paths.
    ident: String,
}

fn names(name: &str) -> Result<Names> {
    let ok = (2..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.ends_with('_')
        && !name.contains("__");
    if !ok {
        bail!("--name `{name}`: use 2-40 characters of snake_case (a-z, 0-9, single `_`), starting with a letter, e.g. my_refiner");
    }
    Ok(Names {
        kind: name.to_string(),
        krate: format!("vcp-{}", name.replace('_', "-")),
        ident: format!("vcp_{name}"),
    })
}

fn fill(template: &str, n: &Names) -> String {
    template
        .replace("{{KIND}}", &n.kind)
        .replace("{{CRATE}}", &n.krate)
        .replace("{{IDENT}}", &n.ident)
}

/// `text` with `line` inserted after the line that starts with `anchor` (one edit, checked).
fn insert_after(text: &str, anchor: &str, line: &str, file: &Path) -> Result<String> {
    let mut out = String::with_capacity(text.len() + line.len() + 1);
    let mut done = false;
    for l in text.split_inclusive('\n') {
        out.push_str(l);
        if !done && l.trim_start().starts_with(anchor) {
            if !l.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
            done = true;
        }
    }
    if !done {
        bail!(
            "{}: no line starting with `{anchor}` to add the component after (was the file edited by hand?)",
            file.display()
        );
    }
    Ok(out)
}

/// Every file to write, as (path, contents); nothing is written yet.
fn plan(a: &Args, n: &Names, files: &[&str; 3]) -> Result<Vec<(PathBuf, String)>> {
    let root = &a.root;
    let krate_dir = root.join("crates").join(&n.krate);
    let experiment = root.join("experiments").join(format!("{}.toml", n.kind));
    for p in [&krate_dir, &experiment] {
        if p.exists() {
            bail!("{}: exists already; choose another --name", p.display());
        }
    }
    let read = |p: &Path| -> Result<String> {
        vcp_data::io::read_regular_string(p, 1 << 20)
            .with_context(|| format!("--root {}: not the workspace's root?", root.display()))
    };
    let ws = root.join("Cargo.toml");
    let cli = root.join("crates/vcp-cli/Cargo.toml");
    let comp = root.join("crates/vcp-cli/src/components.rs");
    let (ws_text, cli_text, comp_text) = (read(&ws)?, read(&cli)?, read(&comp)?);
    if comp_text.contains(&format!("{}::register", n.ident)) {
        bail!("{}: `{}` is registered already", comp.display(), n.ident);
    }
    Ok(vec![
        (krate_dir.join("Cargo.toml"), fill(files[0], n)),
        (krate_dir.join("src/lib.rs"), fill(files[1], n)),
        (experiment, fill(files[2], n)),
        (
            ws.clone(),
            insert_after(
                &ws_text,
                "vcp-example-refiner = ",
                &format!("{} = {{ path = \"crates/{}\" }}", n.krate, n.krate),
                &ws,
            )?,
        ),
        (
            cli.clone(),
            insert_after(
                &cli_text,
                "vcp-example-refiner.workspace",
                &format!("{}.workspace = true", n.krate),
                &cli,
            )?,
        ),
        (
            comp.clone(),
            insert_after(
                &comp_text,
                "// Component crates, one line each",
                &format!("    {}::register(&mut reg);", n.ident),
                &comp,
            )?,
        ),
    ])
}

pub fn run(a: Args) -> Result<()> {
    let Some((_, files)) = TEMPLATES.iter().find(|(s, _)| *s == a.slot) else {
        bail!(
            "--slot `{}`: templates exist for {} (for another slot start from that slot's crate by hand, e.g. crates/vcp-prompt)",
            a.slot,
            TEMPLATES.map(|(s, _)| s).join(", ")
        );
    };
    let n = names(&a.name)?;
    let writes = plan(&a, &n, files)?;
    for (p, text) in &writes {
        vcp_data::io::write_atomic(p, text.as_bytes())?;
    }
    outln!(
        "wrote crates/{krate} (slot {slot}, kind `{kind}`), registered it in crates/vcp-cli/src/components.rs, and experiments/{kind}.toml.\nNext: cargo test --release -p {krate}; then cargo run --release -p vcp-cli -- ablate experiments/{kind}.toml",
        krate = n.krate,
        slot = a.slot,
        kind = n.kind
    );
    Ok(())
}

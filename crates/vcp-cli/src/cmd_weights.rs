//! `vcp weights fetch <hf-repo-id>`: download a CLIP checkpoint into the usual Hugging Face cache
//! (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`) and print the directory to pass as `--clip`.

use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Download `config.json` + `model.safetensors` of a Hugging Face CLIP repository.
    Fetch {
        /// Repository id, e.g. `openai/clip-vit-large-patch14-336`.
        repo: String,
        /// Branch, tag or commit.
        #[arg(long, default_value = "main")]
        revision: String,
    },
}

const FILES: [&str; 2] = ["config.json", "model.safetensors"];

fn cache_dir() -> PathBuf {
    if let Ok(h) = std::env::var("HF_HOME") {
        return PathBuf::from(h).join("hub");
    }
    std::env::var("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/huggingface/hub")
}

pub fn run(c: Command) -> Result<()> {
    let Command::Fetch { repo, revision } = c;
    if repo.split('/').count() != 2 || repo.starts_with('/') || repo.ends_with('/') {
        bail!("`{repo}` is not a Hugging Face repository id (expected `owner/name`)");
    }
    let mut builder = hf_hub::api::sync::ApiBuilder::new().with_progress(true);
    if let Ok(ep) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(ep);
    }
    let api = builder.build()?;
    let r = api.repo(hf_hub::Repo::with_revision(
        repo.clone(),
        hf_hub::RepoType::Model,
        revision.clone(),
    ));
    let mut dir = None;
    for f in FILES {
        match r.get(f) {
            Ok(p) => dir = p.parent().map(|d| d.to_path_buf()),
            Err(e) => {
                let first = e.to_string().lines().next().unwrap_or("").to_string();
                bail!(
                    "cannot download {f} of {repo}@{revision} ({first}). Offline? Download {} from \
                     https://huggingface.co/{repo}/tree/{revision} elsewhere, put them in one folder (e.g. under {}), \
                     and pass that folder as --clip",
                    FILES.join(" and "),
                    cache_dir().display()
                );
            }
        }
    }
    let dir = dir.expect("at least one file");
    // Check that what we got loads.
    vcp_clip::ClipWeights::load(&dir, &candle_core::Device::Cpu)?;
    outln!("{}", dir.display());
    eprintln!(
        "fetched {repo}@{revision}; use it with --clip {}",
        dir.display()
    );
    Ok(())
}

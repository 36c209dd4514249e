//! Data specs: a `meta.json` path, or `synth:<domain>` for the built-in benchmark (generated on
//! first use into the cache folder).

use crate::config::SynthConfig;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use vcp_data::Meta;

/// `$VCP_CACHE`, else `~/.cache/vcp-clip-rs`.
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VCP_CACHE") {
        return PathBuf::from(d);
    }
    std::env::var("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("."))
        .join(".cache/vcp-clip-rs")
}

/// (meta, meta path, dataset root).
pub fn resolve(
    spec: &str,
    root: Option<&str>,
    synth: &SynthConfig,
) -> Result<(Meta, PathBuf, PathBuf)> {
    if let Some(domain) = spec.strip_prefix("synth:") {
        let known: Vec<&str> = vcp_data::synth::DOMAINS.iter().map(|(d, _)| *d).collect();
        if !known.contains(&domain) && domain != "all" {
            bail!(
                "data `{spec}`: unknown synthetic domain `{domain}` (known: {}, all)",
                known.join(", ")
            );
        }
        let dir = cache_dir().join(format!(
            "synth/v{}-s{}-n{}-k{}",
            vcp_data::synth::GENERATOR_VERSION,
            synth.seed,
            synth.size,
            synth.per_category
        ));
        let meta_path = if domain == "all" {
            dir.join("meta.json")
        } else {
            dir.join(format!("meta_{domain}.json"))
        };
        if !meta_path.exists() {
            eprintln!(
                "generating the synthetic benchmark into {} ...",
                dir.display()
            );
            let o = vcp_data::synth::SynthOptions {
                seed: synth.seed,
                size: synth.size,
                per_category: synth.per_category,
            };
            // A folder without its meta is a partial tree of an older, non-atomic version.
            if dir.exists() && !dir.join("meta.json").exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            }
            if let Err(e) = vcp_data::synth::generate(&dir, &o) {
                // Another process may have generated the same (deterministic) benchmark first.
                if !meta_path.exists() {
                    return Err(e.into());
                }
            }
        }
        return Ok((Meta::load(&meta_path)?, meta_path, dir));
    }
    let p = PathBuf::from(spec);
    let meta = Meta::load(&p)?;
    let root = root
        .map(PathBuf::from)
        .unwrap_or_else(|| p.parent().map(Path::to_path_buf).unwrap_or_default());
    Ok((meta, p, root))
}

//! Ablation experiments: a base experiment file plus named variants (dotted-path overrides), an
//! optional grid and a seed list. Every run's configuration is resolved to a full, strict
//! `ExperimentConfig`; the hash of its TOML names the run folder, so a finished run is found
//! again and skipped.
//!
//! ```toml
//! name = "ablate_components"
//! base = "vcp_clip_tiny.toml"          # relative to this file
//! seeds = [0, 1]
//! baseline = "utp"                     # deltas are against this variant (default: the first)
//! set = { "train.epochs" = 3 }         # applied to every variant
//! [[variant]]
//! name = "utp"
//! set = { "deep_prompt" = { kind = "none" }, "fusion.raw_weight" = 1.0 }
//! [[variant]]
//! name = "april_gan"
//! preset = "april_gan"                 # a preset's model tables replace the base's; `set` on top
//! [grid]                               # optional cartesian product on top of the variants
//! "train.lr" = [1e-3, 3e-3]
//! [[reference]]                        # numbers reported elsewhere, shown beside the table
//! name = "paper"
//! auroc_px = 0.920
//! ```

use crate::config::ExperimentConfig;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use toml::Value;
use vcp_model::Registry;

#[derive(Debug, Clone)]
pub struct RunSpec {
    pub experiment: String,
    pub variant: String,
    pub seed: u64,
    pub config: ExperimentConfig,
    pub toml: String,
    pub hash: String,
}

impl RunSpec {
    pub fn dir(&self, results: &Path) -> PathBuf {
        results.join(&self.experiment).join("runs").join(format!(
            "{}-{}",
            slug(&self.variant),
            &self.hash[..8]
        ))
    }
}

#[derive(Debug, Clone)]
pub struct Ablation {
    /// Where the runs execute (`cpu` or `cuda`): part of what a run is, so a run on another
    /// device gets its own folder and record instead of being skipped as done.
    pub device: String,
    pub name: String,
    pub baseline: Option<String>,
    pub variants: Vec<String>,
    pub reference: Vec<toml::Table>,
    pub runs: Vec<RunSpec>,
}

impl Ablation {
    /// The runs as they execute on `device` (`cpu`, `cuda`, `cuda:1` → `cuda`): the device
    /// class joins the resolved configuration in each run's hash.
    pub fn on_device(mut self, device: &str) -> Self {
        let class = if device.starts_with("cuda") {
            "cuda"
        } else {
            "cpu"
        };
        self.device = class.into();
        for r in &mut self.runs {
            r.hash = run_hash(&r.toml, class, weights_identity(&r.config).as_deref());
        }
        self
    }

    /// The runs of shard `i` of `n` (see [`shard_of`]).
    pub fn shard(&self, i: usize, n: usize) -> Vec<&RunSpec> {
        self.runs
            .iter()
            .filter(|r| shard_of(&r.hash, n) == i)
            .collect()
    }

    /// Hashes of the runs this experiment consists of (what its table may contain).
    pub fn hashes(&self) -> Vec<String> {
        self.runs.iter().map(|r| r.hash.clone()).collect()
    }
}

/// Rewrite a config error on the re-serialised TOML so it names the user's file and line: the
/// key's line in the ablation file (the variant's overrides, written as dotted keys) or else in
/// the base file.
fn locate_in_user_files(
    err: &crate::config::ConfigError,
    file: &Path,
    text: &str,
    base: Option<&(PathBuf, String)>,
    variant: &str,
) -> String {
    let msg = &err.message;
    if let Some(k) = err.key.as_deref() {
        if let Some(l) = override_line(text, k) {
            return format!("{}, line {l} (variant {variant}): {msg}", file.display());
        }
        if let Some((bp, bt)) = base {
            if let Some(l) = override_line(bt, k).or_else(|| table_key_line(bt, k)) {
                return format!("{}, line {l}: {msg}", bp.display());
            }
        }
    }
    format!("{} (variant {variant}): {msg}", file.display())
}

/// The line that sets dotted key `key` as one quoted key (`"refiner.heads" = 4`, the way
/// overrides are written) or, for a bare key, `key = ...` anywhere.
fn override_line(text: &str, key: &str) -> Option<usize> {
    if key.contains('.') {
        let quoted = format!("\"{key}\"");
        text.lines()
            .position(|l| l.contains(&quoted))
            .map(|i| i + 1)
    } else {
        vcp_model::config::key_line(text, key, 0)
    }
}

/// The line that sets `leaf` inside table `[head]` of dotted key `head.leaf`.
fn table_key_line(text: &str, key: &str) -> Option<usize> {
    let (head, leaf) = key.rsplit_once('.')?;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with(&format!("[{head}]")) {
            return vcp_model::config::key_line(text, leaf, offset);
        }
        offset += line.len();
    }
    None
}

/// The shard (of `n`) a run belongs to: a stable function of its hash, so every process given
/// the same `n` agrees without talking to the others.
pub fn shard_of(hash: &str, n: usize) -> usize {
    let v = u64::from_str_radix(&hash[..16.min(hash.len())], 16).unwrap_or(0);
    (v % n.max(1) as u64) as usize
}

/// `I/N` (0-based `I < N`) from `--shard`.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--shard `{s}`: expected I/N with 0 <= I < N, e.g. 0/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// A run's identity: its resolved configuration and the device class it runs on.
pub fn run_hash(resolved: &str, device_class: &str, weights: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(resolved.as_bytes());
    if let Some(w) = weights {
        h.update(format!("\n# weights = {w}\n").as_bytes());
    }
    if device_class != "cpu" {
        // CPU hashes stay those of earlier versions (the configuration alone).
        h.update(format!("\n# device = {device_class}\n").as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// What the resolved configuration cannot say about the backbone's weights: the embedded
/// `tiny_pretrained` is retrained under the same name (v1 → v2), so its fingerprint joins the
/// run hash and a record made with other weights is never taken for this run's. (Weight files
/// are named by path; replace a file under the same path and delete its records.)
pub fn weights_identity(c: &ExperimentConfig) -> Option<String> {
    let b = &c.model.backbone;
    (b.weights.is_empty() && b.preset == vcp_clip::pretrained::TINY_PRETRAINED)
        .then(|| format!("tiny_pretrained@{}", vcp_clip::pretrained::fingerprint()))
}

pub fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Set `path` (dotted) in a TOML table; a table value replaces the whole subtree.
pub fn set_path(root: &mut Value, path: &str, v: Value) -> Result<()> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = root;
    for p in &parts[..parts.len() - 1] {
        let t = cur
            .as_table_mut()
            .with_context(|| format!("`{path}`: `{p}` is not a table"))?;
        cur = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Default::default()));
    }
    cur.as_table_mut()
        .with_context(|| format!("`{path}`: parent is not a table"))?
        .insert(parts[parts.len() - 1].to_string(), v);
    Ok(())
}

/// `key=value` from the command line; the value is TOML (`3`, `1e-3`, `"x"`, `[1, 2]`,
/// `{ kind = "none" }`) or else a bare string.
pub fn parse_set(s: &str) -> Result<(String, Value)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("--set `{s}`: expected key=value"))?;
    let (k, v) = (k.trim(), v.trim());
    if k.is_empty() {
        bail!("--set `{s}`: the key before `=` is empty");
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(mut t) => t.remove("v").unwrap_or(Value::String(v.to_string())),
        // A bare word is a string (`--set model.head=linear`); a value that starts like a
        // TOML list, table or quoted string but does not parse is a typo, not a string.
        Err(e) if v.starts_with(['[', '{', '"', '\'']) => bail!(
            "--set {k}: `{v}` is not a valid TOML value ({})",
            e.message()
        ),
        Err(_) => Value::String(v.to_string()),
    };
    Ok((k.to_string(), value))
}

fn sets_of(v: Option<&Value>, what: &str, file: &Path) -> Result<Vec<(String, Value)>> {
    match v {
        None => Ok(vec![]),
        Some(Value::Table(t)) => Ok(t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        Some(_) => bail!(
            "{}: `{what}` must be a table of dotted keys",
            file.display()
        ),
    }
}

/// The model tables of preset `name` as (key, value) overrides; deep prompts are sized by the
/// text depth of the base's `backbone.preset`.
fn preset_sets(name: &str, base: &Value) -> Result<Vec<(String, Value)>> {
    let bb = base
        .get("backbone")
        .and_then(|b| b.get("preset"))
        .and_then(|p| p.as_str())
        .unwrap_or("tiny");
    let text_layers = vcp_clip::ClipConfig::preset(bb)
        .map(|c| c.text.layers)
        .map_err(|e| {
            anyhow::anyhow!("preset `{name}` needs the text depth of backbone.preset: {e}")
        })?;
    let t = vcp_model::presets::slot_tables(name, text_layers).with_context(|| {
        format!(
            "unknown preset `{name}` (presets: {})",
            vcp_model::presets::NAMES.join(", ")
        )
    })?;
    Ok(t.into_iter().collect())
}

/// One `[[variant]]`: its name, the preset's model tables (if it names a preset), its sets.
struct Variant {
    name: String,
    preset: Vec<(String, Value)>,
    sets: Vec<(String, Value)>,
}

/// Read an ablation file (or a plain experiment file = one variant) and expand all runs.
pub fn load(
    reg: &Registry,
    file: &Path,
    cli_sets: &[(String, Value)],
    seeds: Option<&[u64]>,
) -> Result<Ablation> {
    let text = vcp_data::io::read_regular_string(file, 64 << 20)?;
    let top: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.message()))?;
    let name = experiment_name(&top, file)?;
    if let Some((k, _)) = cli_sets.iter().find(|(k, _)| k == "seed") {
        bail!("--set {k}=...: a run's seed comes from the seed list; use --seeds N (or `seeds` in the file)");
    }
    let is_ablation = top.contains_key("base") || top.contains_key("variant");
    let (base, base_file) = read_base(&top, file, is_ablation)?;
    let global = sets_of(top.get("set"), "set", file)?;
    let variants = parse_variants(&top, file, &name, &base)?;
    let grid = parse_grid(&top, file)?;
    let seeds = parse_seeds(&top, file, seeds, &base)?;
    let reference = parse_reference(&top, file)?;
    // Counted before anything is built: variants x grid points x seeds.
    check_run_count(file, variants.len(), grid.len(), seeds.len())?;
    let baseline = parse_baseline(&top, file, &variants)?;
    let mut runs = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for v in &variants {
        for combo in &grid {
            let label = grid_label(&v.name, combo);
            // Two labels that slug to one folder name would share runs: one row would vanish.
            if let Some(other) = names.iter().find(|o| slug(o.as_str()) == slug(&label)) {
                bail!(
                    "{}: variants `{other}` and `{label}` would share the run folder `{}`; rename one",
                    file.display(),
                    slug(&label)
                );
            }
            names.push(label.clone());
            for &seed in &seeds {
                // Order: base, preset, the file's global sets, the variant's, the grid point's,
                // the command line's, the seed.
                let mut val = base.clone();
                let order = v.preset.iter().chain(&global).chain(&v.sets).chain(combo);
                for (k, x) in order.chain(cli_sets) {
                    set_path(&mut val, k, x.clone()).with_context(|| format!("variant {label}"))?;
                }
                set_path(&mut val, "seed", Value::Integer(seed as i64))?;
                let t = toml::to_string(&val)?;
                let config = ExperimentConfig::from_toml(reg, &t, file).map_err(|e| {
                    // The message names an internal, re-serialised TOML: point at the key in the
                    // user's own files instead (the ablation file's overrides, then the base).
                    anyhow::anyhow!(
                        "{}",
                        locate_in_user_files(&e, file, &text, base_file.as_ref(), &label)
                    )
                })?;
                let resolved = config.to_toml();
                let hash = run_hash(&resolved, "cpu", weights_identity(&config).as_deref());
                runs.push(RunSpec {
                    experiment: name.clone(),
                    variant: label.clone(),
                    seed,
                    config,
                    toml: resolved,
                    hash,
                });
            }
        }
    }
    Ok(Ablation {
        device: "cpu".into(),
        name,
        baseline,
        variants: names,
        reference,
        runs,
    })
}

/// More than [`MAX_RUNS`] runs (or a product that overflows) is an error, before any is built.
fn check_run_count(file: &Path, variants: usize, grid: usize, seeds: usize) -> Result<()> {
    let total = variants
        .checked_mul(grid)
        .and_then(|n| n.checked_mul(seeds))
        .filter(|&n| n <= MAX_RUNS);
    if total.is_none() {
        bail!(
            "{}: {variants} variants x {grid} grid points x {seeds} seeds is more than {MAX_RUNS} runs; split the experiment",
            file.display(),
        );
    }
    Ok(())
}

/// `baseline = "<variant>"`: must name one of the variants.
fn parse_baseline(top: &toml::Table, file: &Path, variants: &[Variant]) -> Result<Option<String>> {
    Ok(match top.get("baseline") {
        None => None,
        Some(Value::String(b)) if variants.iter().any(|v| &v.name == b) => Some(b.clone()),
        Some(Value::String(b)) => bail!(
            "{}: baseline `{b}` is not a variant (variants: {})",
            file.display(),
            variants
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(_) => bail!("{}: `baseline` must be a variant's name", file.display()),
    })
}

/// A variant's row label at one grid point: `name` or `name[k=v,k2=v2]`.
fn grid_label(name: &str, combo: &[(String, Value)]) -> String {
    if combo.is_empty() {
        return name.to_string();
    }
    let point: Vec<String> = combo.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}[{}]", point.join(","))
}

/// The experiment's name as a folder name under `--results` (never a path).
fn experiment_name(top: &toml::Table, file: &Path) -> Result<String> {
    let name = match top.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => bail!("{}: `name` must be a string", file.display()),
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "experiment".into()),
    };
    // `../x`, `/tmp/x`, `a/b` are slugged.
    let name = slug(&name).trim_start_matches(['.', '_']).to_string();
    if name.is_empty() || name.chars().all(|c| c == '.' || c == '_') {
        bail!("{}: `name` must contain a letter or digit", file.display());
    }
    Ok(name)
}

/// The base experiment (the file itself when it is not an ablation file) and, for an
/// ablation, the base file's path and text (for error lines).
fn read_base(
    top: &toml::Table,
    file: &Path,
    is_ablation: bool,
) -> Result<(Value, Option<(PathBuf, String)>)> {
    if !is_ablation {
        return Ok((Value::Table(top.clone()), None));
    }
    let allowed = [
        "name",
        "base",
        "seeds",
        "baseline",
        "set",
        "variant",
        "grid",
        "reference",
    ];
    if let Some(k) = top.keys().find(|k| !allowed.contains(&k.as_str())) {
        bail!(
            "{}: unknown key `{k}` (an ablation file has {})",
            file.display(),
            allowed.join(", ")
        );
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let b = top
        .get("base")
        .and_then(|v| v.as_str())
        .with_context(|| format!("{}: `base` (a file name) is required", file.display()))?;
    let bp = dir.join(b);
    let bt = vcp_data::io::read_regular_string(&bp, 64 << 20)?;
    let base = Value::Table(
        toml::from_str(&bt).map_err(|e| anyhow::anyhow!("{}: {}", bp.display(), e.message()))?,
    );
    Ok((base, Some((bp, bt))))
}

fn parse_variants(
    top: &toml::Table,
    file: &Path,
    name: &str,
    base: &Value,
) -> Result<Vec<Variant>> {
    let mut variants: Vec<Variant> = Vec::new();
    match top.get("variant") {
        Some(Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                let t = v
                    .as_table()
                    .with_context(|| format!("{}: variant {i} is not a table", file.display()))?;
                if let Some(k) = t
                    .keys()
                    .find(|k| !["name", "set", "preset"].contains(&k.as_str()))
                {
                    bail!(
                        "{}: variant {i}: unknown key `{k}` (expected name, preset, set)",
                        file.display()
                    );
                }
                let n = t
                    .get("name")
                    .and_then(|v| v.as_str())
                    .with_context(|| format!("{}: variant {i} has no name", file.display()))?;
                if n.trim().is_empty() {
                    bail!("{}: variant {i}: the name is empty", file.display());
                }
                if variants.iter().any(|m| m.name == n) {
                    bail!(
                        "{}: variant {i}: the name `{n}` is used twice (rows would merge)",
                        file.display()
                    );
                }
                let preset = match t.get("preset") {
                    None => vec![],
                    Some(Value::String(p)) => preset_sets(p, base)
                        .with_context(|| format!("{}: variant {n}", file.display()))?,
                    Some(_) => bail!(
                        "{}: variant {n}: `preset` must be a preset name (one of {})",
                        file.display(),
                        vcp_model::presets::NAMES.join(", ")
                    ),
                };
                variants.push(Variant {
                    name: n.to_string(),
                    preset,
                    sets: sets_of(t.get("set"), "set", file)?,
                });
            }
        }
        None => variants.push(Variant {
            name: name.to_string(),
            preset: vec![],
            sets: vec![],
        }),
        Some(_) => bail!(
            "{}: `variant` must be an array of tables ([[variant]])",
            file.display()
        ),
    }
    Ok(variants)
}

/// `[grid]`: the cartesian product of (key, values).
fn parse_grid(top: &toml::Table, file: &Path) -> Result<Vec<Vec<(String, Value)>>> {
    let mut grid: Vec<Vec<(String, Value)>> = vec![vec![]];
    if let Some(g) = top.get("grid") {
        let g = g
            .as_table()
            .with_context(|| format!("{}: `grid` must be a table", file.display()))?;
        // Count the points before building them (a grid of 10^9 would exhaust memory).
        let mut points: usize = 1;
        for (k, vals) in g {
            let n = vals.as_array().map_or(0, |a| a.len());
            if n == 0 {
                bail!("{}: grid `{k}` must be a non-empty list", file.display());
            }
            points = points
                .checked_mul(n)
                .filter(|&p| p <= MAX_RUNS)
                .with_context(|| {
                    format!(
                        "{}: the grid has more than {MAX_RUNS} points",
                        file.display()
                    )
                })?;
        }
        for (k, vals) in g {
            let vals = vals
                .as_array()
                .with_context(|| format!("{}: grid `{k}` must be a list", file.display()))?;
            grid = grid
                .into_iter()
                .flat_map(|combo| {
                    vals.iter().map(move |v| {
                        let mut c = combo.clone();
                        c.push((k.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
    }
    Ok(grid)
}

/// Most runs one experiment may expand to (variants x grid points x seeds).
pub const MAX_RUNS: usize = 100_000;

/// `--seeds`, else the file's `seeds`, else the base's `seed`.
fn parse_seeds(
    top: &toml::Table,
    file: &Path,
    cli: Option<&[u64]>,
    base: &Value,
) -> Result<Vec<u64>> {
    Ok(match cli {
        Some([]) => bail!("--seeds: give at least one seed"),
        Some(s) => {
            // Seeds live in TOML configs, whose integers are i64.
            if let Some(big) = s.iter().find(|&&v| v > i64::MAX as u64) {
                bail!(
                    "--seeds: {big} is larger than the largest seed, {}",
                    i64::MAX
                );
            }
            s.to_vec()
        }
        None => match top.get("seeds") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| v.as_integer().filter(|&i| i >= 0).map(|i| i as u64))
                .collect::<Option<_>>()
                .with_context(|| {
                    format!(
                        "{}: `seeds` must be a list of non-negative integers",
                        file.display()
                    )
                })?,
            Some(_) => bail!(
                "{}: `seeds` must be a non-empty list of integers, e.g. seeds = [0, 1, 2]",
                file.display()
            ),
            None => match base.get("seed") {
                None => vec![0],
                Some(v) => vec![v.as_integer().filter(|&i| i >= 0).with_context(|| {
                    format!("{}: `seed` must be a non-negative integer", file.display())
                })? as u64],
            },
        },
    })
}

/// `[[reference]]` rows: a name and metric values (numbers reported elsewhere).
fn parse_reference(top: &toml::Table, file: &Path) -> Result<Vec<toml::Table>> {
    Ok(match top.get("reference") {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let t = v
                    .as_table()
                    .with_context(|| format!("{}: reference {i} is not a table", file.display()))?;
                if !matches!(t.get("name"), Some(Value::String(_))) {
                    bail!("{}: reference {i} needs a `name`", file.display());
                }
                for (k, v) in t.iter().filter(|(k, _)| *k != "name" && *k != "source") {
                    if !vcp_metrics::COLUMNS.contains(&k.as_str()) {
                        bail!(
                            "{}: reference {i}: unknown key `{k}` (metrics: {})",
                            file.display(),
                            vcp_metrics::COLUMNS.join(", ")
                        );
                    }
                    let x = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
                    match x {
                        Some(x) if x.is_finite() && (0.0..=1.0).contains(&x) => {}
                        Some(x) => bail!(
                            "{}: reference {i}: `{k}` = {x}: metrics are fractions in [0, 1] (e.g. 0.92)",
                            file.display()
                        ),
                        None => bail!("{}: reference {i}: `{k}` must be a number", file.display()),
                    }
                }
                Ok(t.clone())
            })
            .collect::<Result<_>>()?,
        Some(_) => bail!(
            "{}: `reference` must be an array of tables ([[reference]])",
            file.display()
        ),
        None => vec![],
    })
}

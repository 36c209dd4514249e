//! Run settings (train, eval, the synthetic benchmark) and the experiment file that combines
//! them with a model: the model's slots as top-level tables, plus `[train]`, `[eval]`,
//! `[synth]`.

use serde::{Deserialize, Serialize};
use vcp_model::config::{
    key_line, line_of, unknown_key, BackboneConfig, FusionConfig, LossConfig, ModelConfig,
    TemperatureConfig,
};
use vcp_model::{Registry, SlotConfig};

/// Training settings (reference train.py / train.sh).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A meta.json path, or `synth:<domain>` for the built-in benchmark. Its `test` split is
    /// used, as in the reference (train on the auxiliary dataset's test split).
    pub data: String,
    /// Dataset root (default: the meta file's folder).
    #[serde(default)]
    pub root: Option<String>,
    pub epochs: usize,
    pub batch_size: usize,
    /// Learning rate of everything but the temperatures (reference 4e-5 from VisA, 2e-5 from MVTec).
    pub lr: f64,
    /// Learning rate of the temperatures (reference 0.01).
    pub lr_temperature: f64,
    /// Adam betas (reference 0.5, 0.999).
    pub betas: [f64; 2],
    /// Reference albumentations-style augmentation.
    #[serde(default)]
    pub augment: bool,
    /// Probability of replacing a sample by a 2x2 mosaic of four anomalous images of its category
    /// (the reference uses 0.2 when training on MVTec AD, 0 on VisA).
    #[serde(default)]
    pub mosaic_rate: f64,
    /// Images per backward pass (default: the whole batch). The loss is a weighted sum over
    /// images, so chunks give the same gradient while holding only one chunk's upsampled maps
    /// (the reference needs 24 GB at batch 32 and 518 px because it keeps all of them).
    #[serde(default)]
    pub loss_chunk: Option<usize>,
    /// Categories of `val_data` for the per-epoch validation log (pixel AP), empty = none.
    #[serde(default)]
    pub val_data: Option<String>,
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// A meta.json path or `synth:<domain>`; its `test` split is scored.
    pub data: String,
    #[serde(default)]
    pub root: Option<String>,
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
}

fn default_eval_batch() -> usize {
    8
}

/// Settings of the built-in synthetic benchmark (`synth:<domain>` data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_synth_size")]
    pub size: usize,
    #[serde(default = "default_synth_k")]
    pub per_category: usize,
}

/// Bounds of the run settings (see [`ExperimentConfig::check_run_values`]).
pub const MIN_SYNTH_SIZE: usize = 32;
pub const MAX_SYNTH_SIZE: usize = 2048;
pub const MAX_SYNTH_PER_CATEGORY: usize = 10_000;
pub const MAX_BATCH: usize = 4096;

fn default_synth_size() -> usize {
    128
}
fn default_synth_k() -> usize {
    12
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            size: default_synth_size(),
            per_category: default_synth_k(),
        }
    }
}

/// One experiment: the model and the run settings. In the file the model's slots are top-level
/// tables beside `name`, `seed`, `[train]`, `[eval]` and `[synth]` (see [`FlatFile`]); here the
/// model is one [`ModelConfig`], the type the model crates take.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentConfig {
    pub name: String,
    pub seed: u64,
    pub model: ModelConfig,
    pub train: Option<TrainConfig>,
    pub eval: Option<EvalConfig>,
    pub synth: SynthConfig,
}

/// The file's shape (serde only): the model's tables at the top level, in this order. The
/// resolved TOML of a run is this serialisation, and its hash names the run, so the order and
/// the skipped empty tables are part of every run's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatFile {
    #[serde(default)]
    name: String,
    #[serde(default)]
    seed: u64,
    backbone: BackboneConfig,
    prompt: SlotConfig,
    deep_prompt: SlotConfig,
    category: SlotConfig,
    refiner: SlotConfig,
    head: SlotConfig,
    temperature: TemperatureConfig,
    fusion: FusionConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fewshot: Option<SlotConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loss: Option<LossConfig>,
    train: Option<TrainConfig>,
    eval: Option<EvalConfig>,
    #[serde(default)]
    synth: SynthConfig,
}

impl From<FlatFile> for ExperimentConfig {
    fn from(f: FlatFile) -> Self {
        Self {
            name: f.name,
            seed: f.seed,
            model: ModelConfig {
                backbone: f.backbone,
                prompt: f.prompt,
                deep_prompt: f.deep_prompt,
                category: f.category,
                refiner: f.refiner,
                head: f.head,
                temperature: f.temperature,
                fusion: f.fusion,
                fewshot: f.fewshot,
                loss: f.loss,
            },
            train: f.train,
            eval: f.eval,
            synth: f.synth,
        }
    }
}

impl From<ExperimentConfig> for FlatFile {
    fn from(e: ExperimentConfig) -> Self {
        let m = e.model;
        Self {
            name: e.name,
            seed: e.seed,
            backbone: m.backbone,
            prompt: m.prompt,
            deep_prompt: m.deep_prompt,
            category: m.category,
            refiner: m.refiner,
            head: m.head,
            temperature: m.temperature,
            fusion: m.fusion,
            fewshot: m.fewshot,
            loss: m.loss,
            train: e.train,
            eval: e.eval,
            synth: e.synth,
        }
    }
}

impl Serialize for ExperimentConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FlatFile::from(self.clone()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ExperimentConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        FlatFile::deserialize(d).map(Self::from)
    }
}

/// CLIP weights of the backbone config: a file/directory, or seeded weights of a preset (random,
/// or the embedded pretrained ones).
pub fn backbone_weights(
    cfg: &BackboneConfig,
    device: &candle_core::Device,
) -> anyhow::Result<vcp_clip::ClipWeights> {
    if cfg.weights.is_empty() {
        Ok(vcp_clip::ClipWeights::from_preset(
            &cfg.preset,
            cfg.seed,
            device,
        )?)
    } else {
        Ok(vcp_clip::ClipWeights::load(&cfg.weights, device)?)
    }
}

/// An experiment file that does not load: the file, and where known the key (dotted, e.g.
/// `refiner.heads`, or a bare key serde named) and its line.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: std::path::PathBuf,
    pub key: Option<String>,
    pub line: Option<usize>,
    /// One line, starting with the key where there is one.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)?;
        match self.line {
            Some(l) => write!(f, " (line {l})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ExperimentConfig {
    /// The model of this experiment: its backbone's weights resolved and every slot built with
    /// the kinds of `reg` (the parameters seeded by `seed`). Errors are one line.
    pub fn build_model(
        &self,
        reg: &Registry,
        device: &candle_core::Device,
    ) -> anyhow::Result<vcp_model::VcpModel> {
        let w = backbone_weights(&self.model.backbone, device)?;
        vcp_model::VcpModel::new(reg, &self.model, &w, self.seed, device)
            .map_err(|e| anyhow::anyhow!("model config: {}", vcp_clip::error::first_line(&e)))
    }

    /// An experiment of `m` alone (no run settings), e.g. a checkpoint's configuration.
    pub fn from_model(name: &str, m: ModelConfig) -> Self {
        Self {
            name: name.into(),
            seed: 0,
            model: m,
            train: None,
            eval: None,
            synth: SynthConfig::default(),
        }
    }

    /// Parse a TOML experiment strictly, with every slot table normalised by `reg` (defaults
    /// filled in); errors name the file, the offending key and its line.
    pub fn from_toml(
        reg: &Registry,
        text: &str,
        path: &std::path::Path,
    ) -> Result<Self, ConfigError> {
        let err = |key: Option<String>, line: Option<usize>, message: String| ConfigError {
            file: path.to_path_buf(),
            key,
            line,
            message,
        };
        let raw: Self = toml::from_str(text).map_err(|e| {
            let msg = e.message().lines().next().unwrap_or("").to_string();
            let key = unknown_key(&msg).map(str::to_string);
            let line = e.span().map(|s| {
                let start = s.start.min(text.len());
                // An unknown key's span covers its whole table: name the key's own line.
                key.as_deref()
                    .and_then(|k| key_line(text, k, start))
                    .unwrap_or_else(|| line_of(text, start))
            });
            err(key, line, msg)
        })?;
        let model = raw.model.normalized(reg).map_err(|e| {
            // The key's line inside the slot's table; the table's `kind` line when the error
            // names no key (a wrong value type).
            let key = e.key().unwrap_or("kind");
            let from = table_start(text, e.slot());
            let line = key_line(text, key, from).or_else(|| key_line(text, "kind", from));
            err(Some(format!("{}.{key}", e.slot())), line, e.to_string())
        })?;
        // "key = value: why" (our own checks' wording) → the key and its line.
        let at_line = |msg: String| {
            let key = msg.split(" = ").next().unwrap_or("").to_string();
            let leaf = key.rsplit('.').next().unwrap_or(&key);
            let from = table_start(text, key.split('.').next().unwrap_or(""));
            let line = key_line(text, leaf, from);
            err(Some(key.clone()), line, msg)
        };
        model.check_values().map_err(at_line)?;
        raw.check_run_values().map_err(at_line)?;
        Ok(Self { model, ..raw })
    }

    /// The run settings' numbers (`[train]`, `[eval]`, `[synth]`), checked at load time as
    /// `key = value: why` (the caller adds the file and line): a zero batch, a NaN learning
    /// rate or a benchmark of 10^10 pixels fails here, not after (or during) the work.
    pub fn check_run_values(&self) -> Result<(), String> {
        let range = |k: &str, v: usize, lo: usize, hi: usize| -> Result<(), String> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{k} = {v}: must be in {lo}..={hi}"))
            }
        };
        let real = |k: &str, v: f64, lo: f64, hi: f64, why: &str| -> Result<(), String> {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{k} = {v}: {why}"))
            }
        };
        range(
            "synth.size",
            self.synth.size,
            MIN_SYNTH_SIZE,
            MAX_SYNTH_SIZE,
        )?;
        range(
            "synth.per_category",
            self.synth.per_category,
            2,
            MAX_SYNTH_PER_CATEGORY,
        )?;
        if let Some(t) = &self.train {
            // 0 epochs = the untrained model (experiments/fusion_alpha.toml uses it).
            range("train.epochs", t.epochs, 0, 100_000)?;
            range("train.batch_size", t.batch_size, 1, MAX_BATCH)?;
            if t.lr <= 0.0 {
                return Err(format!("train.lr = {}: must be a number in (0, 10]", t.lr));
            }
            real("train.lr", t.lr, 0.0, 10.0, "must be a number in (0, 10]")?;
            real(
                "train.lr_temperature",
                t.lr_temperature,
                0.0,
                10.0,
                "must be a number in [0, 10]",
            )?;
            for (i, b) in t.betas.iter().enumerate() {
                if !(b.is_finite() && (0.0..1.0).contains(b)) {
                    return Err(format!("train.betas = {b}: betas[{i}] must be in [0, 1)"));
                }
            }
            real(
                "train.mosaic_rate",
                t.mosaic_rate,
                0.0,
                1.0,
                "a probability, in [0, 1]",
            )?;
            if let Some(c) = t.loss_chunk {
                range("train.loss_chunk", c, 1, MAX_BATCH)?;
            }
        }
        if let Some(e) = &self.eval {
            range("eval.batch_size", e.batch_size, 1, MAX_BATCH)?;
        }
        Ok(())
    }

    pub fn load(reg: &Registry, path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = vcp_data::io::read_regular_string(path, 64 << 20).map_err(|e| {
            let message = match e {
                vcp_data::DataError::File { msg, .. } => msg,
                other => other.to_string(),
            };
            ConfigError {
                file: path.to_path_buf(),
                key: None,
                line: None,
                message,
            }
        })?;
        Self::from_toml(reg, &text, path)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }
}

/// Byte offset where table `[name]` (or a `name = {` inline table) starts; 0 if absent.
fn table_start(text: &str, name: &str) -> usize {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim_start();
        if l.starts_with(&format!("[{name}]")) || l.starts_with(&format!("{name} = {{")) {
            return offset;
        }
        offset += line.len();
    }
    0
}

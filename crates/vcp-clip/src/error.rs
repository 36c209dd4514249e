//! Errors of the backbone crate. Every variant names the file or tensor at fault, so the
//! CLI can print a single line that tells the user what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("weights: missing tensor `{0}`")]
    MissingTensor(String),
    #[error("weights: unexpected tensor `{0}` (not part of a CLIP model with this config)")]
    ExtraTensor(String),
    #[error("weights: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    BadShape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("input: {0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ClipError {
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        ClipError::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}

/// A bounded read of ours failed (it names its file already).
impl From<vcp_data::DataError> for ClipError {
    fn from(e: vcp_data::DataError) -> Self {
        match e {
            vcp_data::DataError::File { path, msg } => ClipError::File { path, msg },
            vcp_data::DataError::Invalid(m) => ClipError::Input(m),
        }
    }
}

pub type Result<T> = std::result::Result<T, ClipError>;

/// The first line of an error's message: candle errors may carry a backtrace (RUST_BACKTRACE
/// is set here), and one-line errors are what the CLI prints.
pub fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

/// Component code works in candle's error type: a backbone error becomes its message (a candle
/// error inside is passed through unchanged).
impl From<ClipError> for candle_core::Error {
    fn from(e: ClipError) -> Self {
        match e {
            ClipError::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

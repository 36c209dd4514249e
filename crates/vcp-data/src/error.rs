//! Data errors name the file (and record) at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        DataError::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;

//! Atomic writes (temporary name + rename), so nothing is ever half-written.

use crate::error::{DataError, Result};
use std::path::{Path, PathBuf};

pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| DataError::file(dir, e))?;
    }
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| DataError::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::file(path, e))
}

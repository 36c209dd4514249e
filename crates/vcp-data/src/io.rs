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

/// Refuse to replace anything but a regular file (a symlink, FIFO, device node or folder at
/// an output path is an error, before any work is done).
pub fn check_target(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => {
            let ft = m.file_type();
            let kind = if ft.is_symlink() {
                "a symbolic link"
            } else if ft.is_dir() {
                "a folder"
            } else {
                "not a regular file (a FIFO, socket or device)"
            };
            Err(DataError::file(
                path,
                format!("exists and is {kind}; refusing to replace it"),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataError::file(path, e)),
    }
}

/// Write `bytes` to `path` atomically: a uniquely named temporary file in the same folder
/// (removed if anything fails), then a rename. Never replaces a non-regular file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    check_target(path)?;
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| DataError::file(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".vcp-tmp-")
        .tempfile_in(dir)
        .map_err(|e| DataError::file(dir, e))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_data())
        .map_err(|e| DataError::file(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path)
        .map_err(|e| DataError::file(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_replaces_links_or_special_files_and_leaves_no_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("victim.txt");
        std::fs::write(&target, b"keep").unwrap();
        #[cfg(unix)]
        {
            let link = d.path().join("link.json");
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let e = write_atomic(&link, b"x").unwrap_err().to_string();
            assert!(
                e.contains("link.json") && e.contains("symbolic link"),
                "{e}"
            );
            assert_eq!(std::fs::read(&target).unwrap(), b"keep");
            let e = write_atomic(Path::new("/dev/null"), b"x")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/dev/null") && e.contains("not a regular file"),
                "{e}"
            );
        }
        let e = write_atomic(d.path(), b"x").unwrap_err().to_string();
        assert!(e.contains("folder"), "{e}");
        write_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().starts_with(".vcp-tmp-")),
            "{names:?}"
        );
    }
}

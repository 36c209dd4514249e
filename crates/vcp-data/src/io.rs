//! Atomic writes (temporary name + rename), so nothing is ever half-written.

use crate::error::{DataError, Result};
use image::ImageEncoder;
use std::path::Path;

/// Read a user's file that must be a regular file of at most `max` bytes: a FIFO, device
/// (`/dev/zero`), socket or folder is refused before it is opened (opening a FIFO blocks), and
/// the read stops at `max` (a file that grows meanwhile cannot exhaust memory).
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let m = std::fs::metadata(path).map_err(|e| DataError::file(path, e))?;
    if !m.is_file() {
        return Err(DataError::file(
            path,
            if m.is_dir() {
                "is a folder, not a file"
            } else {
                "is not a regular file (a FIFO, socket or device)"
            },
        ));
    }
    if m.len() > max {
        return Err(DataError::file(
            path,
            format!(
                "{} bytes is more than the {} this file may have",
                m.len(),
                max
            ),
        ));
    }
    let f = std::fs::File::open(path).map_err(|e| DataError::file(path, e))?;
    let mut buf = Vec::with_capacity(m.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| DataError::file(path, e))?;
    if buf.len() as u64 > max {
        return Err(DataError::file(
            path,
            format!("grew beyond {max} bytes while read"),
        ));
    }
    Ok(buf)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_string(path: &Path, max: u64) -> Result<String> {
    String::from_utf8(read_regular(path, max)?)
        .map_err(|_| DataError::file(path, "is not UTF-8 text"))
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
/// (removed if anything fails), then a rename. Never replaces a non-regular file. The one way
/// the workspace writes an output file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_data()
    })
}

/// [`write_atomic`] for writers that only take a path (e.g. a library's `save(path)`): `write`
/// fills a uniquely named temporary file in the target's folder (same extension), which is
/// renamed into place when it succeeds and removed when it fails.
pub fn write_atomic_with<E: std::fmt::Display>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> Result<()> {
    check_target(path)?;
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| DataError::file(dir, e))?;
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(".vcp-tmp-")
        .suffix(&ext)
        .tempfile_in(dir)
        .map_err(|e| DataError::file(dir, e))?;
    // On error `tmp` is dropped here, which removes the file.
    write(tmp.path()).map_err(|e| DataError::file(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // By path: a writer may have replaced the temporary file's inode. Temporary files
        // are created 0600; what is persisted is an ordinary 0644 file.
        let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path)
        .map_err(|e| DataError::file(path, e.error))?;
    Ok(())
}

/// Encode 8-bit pixels as PNG in memory (then [`write_atomic`] writes them).
pub fn encode_png(data: &[u8], w: u32, h: u32, color: image::ExtendedColorType) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(data, w, h, color)
        .map_err(|e| DataError::Invalid(format!("png encoding: {e}")))?;
    Ok(out)
}

/// Check an output folder before any long work: it is (or can be created as) a writable folder,
/// and none of the `files` it will receive exists as anything but a regular file. Creates the
/// folder.
pub fn prepare_out_dir(dir: &Path, files: &[&str]) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(m) if m.file_type().is_symlink() && dir.is_dir() => {}
        Ok(_) => {
            return Err(DataError::file(
                dir,
                "exists and is not a folder; choose another output folder",
            ))
        }
        Err(_) => std::fs::create_dir_all(dir).map_err(|e| DataError::file(dir, e))?,
    }
    tempfile::Builder::new()
        .prefix(".vcp-write-test-")
        .tempfile_in(dir)
        .map_err(|e| DataError::file(dir, format!("not writable ({e})")))?;
    for f in files {
        check_target(&dir.join(f))?;
    }
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

    /// A writer that fails leaves the target untouched and no temporary file behind; the
    /// temporary keeps the target's extension (libraries choose formats by it).
    #[test]
    fn a_failed_write_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("plot.png");
        std::fs::write(&target, b"old").unwrap();
        let mut seen = None;
        let e = write_atomic_with(&target, |tmp| {
            seen = Some(tmp.to_path_buf());
            std::fs::write(tmp, b"half")?;
            Err::<(), _>(std::io::Error::other("disk full"))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("plot.png") && e.contains("disk full"), "{e}");
        let seen = seen.unwrap();
        assert_eq!(seen.extension().unwrap(), "png");
        assert!(!seen.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    /// An output folder is checked before the work: a file in its place, a folder that cannot
    /// be written, or a non-regular output file inside are errors naming the path.
    #[test]
    fn output_folders_are_checked_first() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let e = prepare_out_dir(&f, &[]).unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");
        let out = d.path().join("new/out");
        prepare_out_dir(&out, &["metrics.json"]).unwrap();
        assert!(out.is_dir());
        std::fs::create_dir(out.join("metrics.json")).unwrap();
        let e = prepare_out_dir(&out, &["metrics.json"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics.json") && e.contains("folder"), "{e}");
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            1,
            "no probe left behind"
        );
    }
}

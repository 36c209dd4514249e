//! Bounded image decoding for every file a user hands us (images, masks): regular files only,
//! the size in the header checked before any pixel is decoded (a 389-KB PNG can declare
//! 100000x100000 pixels), the decoder's allocations capped, and truncated JPEGs refused (the
//! decoder would pad them with grey and the image would be scored).

use crate::error::{DataError, Result};
use std::path::Path;

/// Most pixels an input image may have (50 MP: an 8K frame is 33 MP; the benchmarks' largest
/// images are about 2 MP).
pub const MAX_PIXELS: u64 = 50_000_000;
/// Longest side.
pub const MAX_SIDE: u32 = 16_384;
/// Largest encoded file.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Decode `path` (png, jpg, bmp, tif), bounded as the module says; `what` names the file's role
/// in errors ("image", "mask").
pub fn open_image(path: &Path, what: &str) -> Result<image::DynamicImage> {
    let bytes = crate::io::read_regular(path, MAX_FILE_BYTES)?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(|e| DataError::file(path, e))?;
    let format = reader.format();
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| DataError::file(path, format!("cannot decode {what}: {e}")))?;
    if w > MAX_SIDE || h > MAX_SIDE || w as u64 * h as u64 > MAX_PIXELS {
        return Err(DataError::file(
            path,
            format!(
                "{what} of {w}x{h} pixels is larger than allowed ({MAX_PIXELS} pixels, sides up to {MAX_SIDE})"
            ),
        ));
    }
    if format == Some(image::ImageFormat::Jpeg) && !jpeg_has_end(&bytes) {
        return Err(DataError::file(
            path,
            format!("truncated JPEG {what} (no end-of-image marker)"),
        ));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(|e| DataError::file(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // 16-bit RGBA at the pixel limit, and no more.
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| DataError::file(path, format!("cannot decode {what}: {e}")))
}

/// A complete JPEG ends with the EOI marker `FF D9` (trailing bytes after it are tolerated).
/// In entropy-coded data `FF` is always followed by `00` or a restart marker, so `FF D9` near
/// the end is the end of the image and not scan data.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

//! CLIP image preprocessing as the VCP-CLIP reference does it (`_transform_test`): RGB,
//! resize to a square with Pillow's bicubic (aspect ratio not kept), `/255`, CLIP mean/std.
//! The resize is a bit-exact port of Pillow's, so our pixels equal torchvision's.

use crate::error::{ClipError, Result};
use candle_core::{Device, Tensor};
use std::path::Path;
use vcp_data::resample::{resize_u8_pil, Filter};

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
// Written exactly as the reference (OpenAI CLIP) writes them; f32 rounds the last digits.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Decode an image file (png, jpg, bmp, tif) to 8-bit RGB; errors name the file.
pub fn load_rgb(path: &Path) -> Result<image::RgbImage> {
    // One bounded decoder for every user image (size limits, regular files, truncation).
    let img = vcp_data::decode::open_image(path, "image")
        .map_err(|e| ClipError::file(path, strip_path(&e.to_string(), path)))?;
    Ok(img.to_rgb8())
}

/// Resize an RGB image to `size` x `size` exactly as `PIL.Image.resize(..., BICUBIC)`.
pub fn resize_rgb(img: &image::RgbImage, size: usize) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    resize_u8_pil(img.as_raw(), 3, (h, w), (size, size), Filter::Bicubic)
}

/// Interleaved RGB bytes `[S, S, 3]` → normalised planar tensor `[3, S, S]`.
pub fn normalize(rgb: &[u8], size: usize, device: &Device) -> Result<Tensor> {
    let mut planar = vec![0f32; 3 * size * size];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planar[c * size * size + i] = (px[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    Ok(Tensor::from_vec(planar, (3, size, size), device)?)
}

/// File → `[3, S, S]` model input.
pub fn preprocess_file(path: &Path, size: usize, device: &Device) -> Result<Tensor> {
    let img = load_rgb(path)?;
    normalize(&resize_rgb(&img, size), size, device)
}

/// `DataError`'s message without its leading `path: ` (ClipError names the file itself).
fn strip_path(msg: &str, path: &Path) -> String {
    let p = format!("{}: ", path.display());
    msg.strip_prefix(&p).unwrap_or(msg).to_string()
}

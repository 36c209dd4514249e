//! Ground-truth masks as the references read them: grey-scale, resized with Pillow's bilinear
//! filter when the size differs (torchvision `Resize` on a PIL "L" image), `/255 > 0.5`.
//! VisA-style index masks (values 1, 2, ...) count as anomalous wherever > 0 when `index_mask`.

use crate::error::Result;
use crate::resample::{resize_u8_pil, Filter};
use std::path::Path;

/// Decode a mask file to 8-bit grey values and its size (width, height).
pub fn load_grey(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let img = crate::decode::open_image(path, "mask")?;
    let g = img.to_luma8();
    let (w, h) = (g.width() as usize, g.height() as usize);
    Ok((g.into_raw(), w, h))
}

/// Binary mask at `height x width`.
pub fn load_mask(path: &Path, height: usize, width: usize, index_mask: bool) -> Result<Vec<bool>> {
    let (mut grey, w, h) = load_grey(path)?;
    if index_mask {
        grey.iter_mut()
            .for_each(|v| *v = if *v > 0 { 255 } else { 0 });
    }
    let grey = if (h, w) != (height, width) {
        resize_u8_pil(&grey, 1, (h, w), (height, width), Filter::Bilinear)
    } else {
        grey
    };
    Ok(grey.iter().map(|&v| v as f32 / 255.0 > 0.5).collect())
}

//! Samples and batches for training and evaluation (reference `utils/dataset.py`,
//! `_transform_test`): RGB, Pillow-bicubic resize to the model size (aspect not kept), CLIP
//! mean/std; masks resized bilinearly then `> 0.5` (VisA index masks: `> 0`); normal images get
//! all-zero masks. Batches are decoded in parallel and prefetched on a background thread.

use crate::error::{DataError, Result};
use crate::mask::{load_grey, load_mask};
use crate::meta::Record;
use crate::resample::{resize_u8_pil, Filter};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
// Written exactly as OpenAI CLIP writes them; f32 rounds the last digits.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Decode an image to 8-bit RGB; errors name the file.
pub fn load_rgb(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let img = crate::decode::open_image(path, "image")?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok((img.into_raw(), w, h))
}

/// Interleaved RGB `[S, S, 3]` → planar normalised `[3, S, S]`.
pub fn normalize_rgb(rgb: &[u8], size: usize) -> Vec<f32> {
    let mut out = vec![0f32; 3 * size * size];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * size * size + i] = (px[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    out
}

/// One preprocessed sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `[3, S, S]`, CLIP-normalised.
    pub image: Vec<f32>,
    /// `[S, S]` in {0, 1}.
    pub mask: Vec<f32>,
    pub label: u8,
    pub class: String,
    pub img_path: String,
    /// The resized RGB bytes `[S, S, 3]` (overlays, augmentation).
    pub rgb: Vec<u8>,
}

/// Load and preprocess one record. A mask whose size differs from its image is an error.
pub fn load_sample(root: &Path, rec: &Record, size: usize) -> Result<Sample> {
    let ip = crate::meta::resolve(root, &rec.img_path)?;
    let (rgb, w, h) = load_rgb(&ip)?;
    let rgb = resize_u8_pil(&rgb, 3, (h, w), (size, size), Filter::Bicubic);
    let mask = if rec.mask_path.is_empty() {
        vec![0f32; size * size]
    } else {
        let mp = crate::meta::resolve(root, &rec.mask_path)?;
        let (grey, mw, mh) = load_grey(&mp)?;
        if (mw, mh) != (w, h) {
            return Err(DataError::file(
                &mp,
                format!(
                    "mask is {mw}x{mh} but its image {} is {w}x{h}",
                    rec.img_path
                ),
            ));
        }
        let index = grey.iter().any(|&v| v > 0) && grey.iter().all(|&v| v < 128);
        load_mask(&mp, size, size, index)?
            .into_iter()
            .map(|b| b as u8 as f32)
            .collect()
    };
    Ok(Sample {
        image: normalize_rgb(&rgb, size),
        mask,
        label: rec.anomaly,
        class: rec.cls_name.clone(),
        img_path: rec.img_path.clone(),
        rgb,
    })
}

/// A batch in flat arrays.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// `[B, 3, S, S]`
    pub images: Vec<f32>,
    /// `[B, S, S]`
    pub masks: Vec<f32>,
    pub labels: Vec<u8>,
    pub classes: Vec<String>,
    pub paths: Vec<String>,
    pub rgb: Vec<Vec<u8>>,
    pub size: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn from_samples(samples: Vec<Sample>, size: usize) -> Batch {
        let mut b = Batch {
            size,
            ..Default::default()
        };
        for s in samples {
            b.images.extend(s.image);
            b.masks.extend(s.mask);
            b.labels.push(s.label);
            b.classes.push(s.class);
            b.paths.push(s.img_path);
            b.rgb.push(s.rgb);
        }
        b
    }
}

/// A per-sample transform applied after loading (augmentation); receives the sample index.
pub type Transform = std::sync::Arc<dyn Fn(&mut Sample, u64) + Send + Sync>;

/// Batches of `records` (in the given order) decoded in parallel on a background thread, at most
/// `prefetch` batches ahead. Errors arrive in order and stop the stream.
pub fn batches(
    root: PathBuf,
    records: Vec<Record>,
    size: usize,
    batch: usize,
    prefetch: usize,
    transform: Option<Transform>,
) -> mpsc::Receiver<Result<Batch>> {
    use rayon::prelude::*;
    let (tx, rx) = mpsc::sync_channel(prefetch.max(1));
    std::thread::spawn(move || {
        for (ci, chunk) in records.chunks(batch.max(1)).enumerate() {
            let samples: Result<Vec<Sample>> = chunk
                .par_iter()
                .enumerate()
                .map(|(j, r)| {
                    let mut s = load_sample(&root, r, size)?;
                    if let Some(t) = &transform {
                        t(&mut s, (ci * batch + j) as u64);
                    }
                    Ok(s)
                })
                .collect();
            let stop = samples.is_err();
            if tx
                .send(samples.map(|s| Batch::from_samples(s, size)))
                .is_err()
                || stop
            {
                return;
            }
        }
    });
    rx
}

/// Deterministic shuffle (Fisher-Yates with SplitMix64).
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut r = crate::synth::Rng::new(seed);
    for i in (1..v.len()).rev() {
        let j = r.int(i + 1);
        v.swap(i, j);
    }
}

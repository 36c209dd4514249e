//! Frozen-backbone feature cache. The CLIP image tower never changes, so its outputs for an image
//! are the same for every variant that shares backbone weights, input size, taps and attention;
//! they are computed once per (backbone, image, augmentation draw) and reused across variants
//! and epochs, in memory up to a size limit.

use candle_core::{Device, Result, Tensor};
use std::collections::HashMap;
use std::sync::Mutex;
use vcp_model::{Features, VcpModel};

/// Identifies what the frozen tower computes: the backbone config minus nothing it ignores.
pub fn backbone_key(model: &VcpModel) -> String {
    let b = &model.cfg.backbone;
    format!(
        "{}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}",
        b.preset,
        b.weights,
        b.seed,
        b.image_size,
        b.taps,
        b.activation,
        b.attention,
        b.dense_blocks,
        b.dtype
    )
}

/// Per-image features on the CPU: taps `[1, 1 + N, W]` each and global `[1, D]`.
struct Entry {
    layers: Vec<Tensor>,
    global: Tensor,
    grid: usize,
}

pub struct FeatureCache {
    map: Mutex<HashMap<String, Entry>>,
    bytes: Mutex<usize>,
    pub max_bytes: usize,
    pub hits: Mutex<usize>,
    pub misses: Mutex<usize>,
}

impl FeatureCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            bytes: Mutex::new(0),
            max_bytes,
            hits: Mutex::new(0),
            misses: Mutex::new(0),
        }
    }

    /// Features of a batch, computing (and caching) only the images not seen before.
    /// `keys[i]` must identify image i and its augmentation draw (`None` = do not cache).
    pub fn features(
        &self,
        model: &VcpModel,
        pixels: &Tensor,
        keys: &[Option<String>],
        device: &Device,
    ) -> Result<Features> {
        let bk = backbone_key(model);
        let full: Vec<Option<String>> = keys
            .iter()
            .map(|k| k.as_ref().map(|k| format!("{bk}#{k}")))
            .collect();
        let missing: Vec<usize> = {
            let map = self.map.lock().unwrap();
            (0..keys.len())
                .filter(|&i| full[i].as_ref().is_none_or(|k| !map.contains_key(k)))
                .collect()
        };
        *self.hits.lock().unwrap() += keys.len() - missing.len();
        *self.misses.lock().unwrap() += missing.len();
        let fresh = if missing.is_empty() {
            None
        } else {
            let ids = Tensor::from_vec(
                missing.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                missing.len(),
                pixels.device(),
            )?;
            Some(model.encode_images(&pixels.index_select(&ids, 0)?)?)
        };
        let mut map = self.map.lock().unwrap();
        if let Some(f) = &fresh {
            for (j, &i) in missing.iter().enumerate() {
                if let Some(k) = &full[i] {
                    let e = Entry {
                        layers: f
                            .layers
                            .iter()
                            .map(|t| t.narrow(0, j, 1)?.to_device(&Device::Cpu))
                            .collect::<Result<_>>()?,
                        global: f.global.narrow(0, j, 1)?.to_device(&Device::Cpu)?,
                        grid: f.grid,
                    };
                    let size: usize = e.layers.iter().map(|t| t.elem_count() * 4).sum::<usize>()
                        + e.global.elem_count() * 4;
                    let mut b = self.bytes.lock().unwrap();
                    if *b + size <= self.max_bytes {
                        *b += size;
                        map.insert(k.clone(), e);
                    }
                }
            }
        }
        // Assemble in order.
        let mut parts = Vec::with_capacity(keys.len());
        let mut fresh_pos = 0;
        for i in 0..keys.len() {
            if missing.contains(&i) {
                let f = fresh.as_ref().unwrap();
                parts.push(Features {
                    layers: f
                        .layers
                        .iter()
                        .map(|t| t.narrow(0, fresh_pos, 1))
                        .collect::<Result<_>>()?,
                    global: f.global.narrow(0, fresh_pos, 1)?,
                    grid: f.grid,
                });
                fresh_pos += 1;
            } else {
                let e = &map[full[i].as_ref().unwrap()];
                parts.push(Features {
                    layers: e
                        .layers
                        .iter()
                        .map(|t| t.to_device(device))
                        .collect::<Result<_>>()?,
                    global: e.global.to_device(device)?,
                    grid: e.grid,
                });
            }
        }
        Features::cat(&parts)
    }

    pub fn stats(&self) -> (usize, usize, usize) {
        (
            *self.hits.lock().unwrap(),
            *self.misses.lock().unwrap(),
            *self.bytes.lock().unwrap(),
        )
    }
}

/// Frozen features of a batch: from the cache when one is given (keyed by dataset root and image
/// path, i.e. un-augmented images), else computed directly.
pub fn batch_features(
    cache: Option<&FeatureCache>,
    model: &VcpModel,
    pixels: &Tensor,
    root: &std::path::Path,
    paths: &[String],
    device: &Device,
) -> Result<Features> {
    match cache {
        Some(c) => {
            let keys: Vec<Option<String>> = paths
                .iter()
                .map(|p| Some(format!("{}:{p}", root.display())))
                .collect();
            c.features(model, pixels, &keys, device)
        }
        None => model.encode_images(pixels),
    }
}

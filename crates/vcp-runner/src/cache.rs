//! Frozen-backbone feature cache. The CLIP image tower never changes, so its outputs for an image
//! are the same for every variant that shares backbone weights, input size, taps and attention;
//! they are computed once per (backbone, device class, image) and reused across variants and
//! epochs: in memory up to a size limit, and optionally on disk (`--feature-cache DIR`), where
//! every process working on an experiment (workers, Slurm array tasks) finds them.
//!
//! On disk an entry is one safetensors file named by the SHA-256 of its key, written atomically
//! (unique temporary + rename), so two processes computing the same entry at once both succeed
//! and a reader never sees half a file. Writing stops with one message when the size limit is
//! reached or the disk is full; reading goes on.

use candle_core::{DType, Device, Result, Tensor};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use vcp_model::{Features, VcpModel};

/// Where and how much the disk cache may hold.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

struct Disk {
    opts: DiskOptions,
    /// Bytes in the folder (measured at start, plus what this process wrote).
    used: AtomicU64,
    writable: AtomicBool,
    hits: AtomicUsize,
    writes: AtomicUsize,
}

impl Disk {
    fn open(opts: DiskOptions) -> Self {
        let used = dir_size(&opts.dir);
        Self {
            opts,
            used: AtomicU64::new(used),
            writable: AtomicBool::new(true),
            hits: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        let h = format!("{:x}", Sha256::digest(key.as_bytes()));
        self.opts.dir.join(&h[..2]).join(format!("{h}.safetensors"))
    }

    /// The entry of `key` when it is a regular file of the expected size whose tensors have
    /// exactly the shapes `expect` says. Anything else (a tampered or foreign file, a FIFO, a
    /// huge file) is a miss, reported once per entry, and the entry is recomputed and
    /// rewritten: a shared folder cannot make a process panic, hang or allocate beyond it.
    fn load(&self, key: &str, expect: &Expect) -> Option<Entry> {
        let p = self.path(key);
        let meta = std::fs::symlink_metadata(&p).ok()?;
        let refuse = |why: &str| {
            eprintln!(
                "feature cache: ignoring {} ({why}); recomputing it",
                p.display()
            );
        };
        if !meta.is_file() {
            refuse("not a regular file");
            return None;
        }
        // Header (names, shapes, metadata) is small: allow 64 KiB beyond the tensor bytes.
        if meta.len() > expect.bytes() + (64 << 10) {
            refuse(&format!(
                "{} bytes, expected about {}",
                meta.len(),
                expect.bytes()
            ));
            return None;
        }
        let bytes = std::fs::read(&p).ok()?;
        match self.parse(&bytes, expect) {
            Some(e) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(e)
            }
            None => {
                refuse("contents do not match the model: wrong tap count, grid or shapes");
                None
            }
        }
    }

    fn parse(&self, bytes: &[u8], expect: &Expect) -> Option<Entry> {
        let st = safetensors::SafeTensors::deserialize(bytes).ok()?;
        let get = |name: &str| -> Option<Tensor> {
            let v = st.tensor(name).ok()?;
            if v.dtype() != safetensors::Dtype::F32 {
                return None;
            }
            let data: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::from_vec(data, v.shape(), &Device::Cpu).ok()
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).ok()?;
        let meta = meta.metadata().as_ref()?;
        let grid: usize = meta.get("grid")?.parse().ok()?;
        let n: usize = meta.get("layers")?.parse().ok()?;
        if grid != expect.grid || n != expect.layers || st.len() != n + 1 {
            return None;
        }
        let tokens = [1, 1 + grid * grid, expect.width];
        let layers = (0..n)
            .map(|i| get(&format!("layer.{i}")).filter(|t| t.dims() == tokens))
            .collect::<Option<Vec<_>>>()?;
        let global = get("global").filter(|t| t.dims() == [1, expect.dim])?;
        Some(Entry {
            layers,
            global,
            grid,
        })
    }

    fn store(&self, key: &str, e: &Entry) {
        if !self.writable.load(Ordering::Relaxed) {
            return;
        }
        let Ok(bytes) = e.to_safetensors() else {
            return;
        };
        let size = bytes.len() as u64;
        if self.used.load(Ordering::Relaxed) + size > self.opts.max_bytes {
            if self.writable.swap(false, Ordering::Relaxed) {
                eprintln!(
                    "feature cache {}: reached its limit of {} MiB; new features are not written (raise --feature-cache-mib or delete the folder)",
                    self.opts.dir.display(),
                    self.opts.max_bytes >> 20
                );
            }
            return;
        }
        let path = self.path(key);
        // A FIFO or link planted at an entry's name in the shared folder is replaced (it was
        // reported and ignored on reading); `write_atomic` itself never replaces such files.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.file_type().is_file()) {
            let _ = std::fs::remove_file(&path);
        }
        match vcp_data::io::write_atomic(&path, &bytes) {
            Ok(()) => {
                self.used.fetch_add(size, Ordering::Relaxed);
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                let msg = err.to_string();
                // A full disk or an unwritable folder stops the writes of this process; a
                // problem with one entry's name (a folder planted there) only skips that entry.
                let folder_wide = msg.contains("No space left")
                    || msg.contains("Permission denied")
                    || msg.contains("Read-only file system")
                    || !self.opts.dir.is_dir();
                if !folder_wide {
                    eprintln!("feature cache: entry not written: {msg}");
                } else if self.writable.swap(false, Ordering::Relaxed) {
                    let why = if msg.contains("No space left") {
                        format!("{}: the disk is full", self.opts.dir.display())
                    } else {
                        msg
                    };
                    eprintln!(
                        "feature cache {why}; features are computed without writing them from now on"
                    );
                }
            }
        }
    }
}

/// What an entry of the current model holds: `layers` taps `[1, 1 + grid^2, width]` and the
/// global embedding `[1, dim]`.
struct Expect {
    layers: usize,
    grid: usize,
    width: usize,
    dim: usize,
}

impl Expect {
    fn of(model: &VcpModel) -> Result<Self> {
        let v = &model.clip.vision;
        Ok(Self {
            layers: model.cfg.backbone.taps.len(),
            grid: v.grid(),
            width: v.width(),
            dim: v.embed_dim()?,
        })
    }

    /// Bytes of the tensors (f32).
    fn bytes(&self) -> u64 {
        4 * (self.layers as u64 * (1 + (self.grid * self.grid) as u64) * self.width as u64
            + self.dim as u64)
    }
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += dir_size(&e.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

/// Identifies what the frozen tower computes: the backbone config minus nothing it ignores, and
/// the version of the code's arithmetic.
pub fn backbone_key(model: &VcpModel) -> String {
    let b = &model.cfg.backbone;
    // The embedded pretrained weights change under the same preset name: key them by content.
    let preset = if b.weights.is_empty() && b.preset == vcp_clip::pretrained::TINY_PRETRAINED {
        format!("{}@{}", b.preset, vcp_clip::pretrained::fingerprint())
    } else {
        b.preset.clone()
    };
    format!(
        "{}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|arithmetic {}",
        preset,
        b.weights,
        b.seed,
        b.image_size,
        b.taps,
        b.activation,
        b.attention,
        b.dense_blocks,
        b.dtype,
        vcp_clip::infer_block::ARITHMETIC_VERSION
    )
}

/// Per-image features on the CPU: taps `[1, 1 + N, W]` each and global `[1, D]`.
struct Entry {
    layers: Vec<Tensor>,
    global: Tensor,
    grid: usize,
}

impl Entry {
    fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut named: Vec<(String, Tensor)> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("layer.{i}"), t.to_dtype(DType::F32)))
            .map(|(n, t)| t.map(|t| (n, t)))
            .collect::<Result<_>>()?;
        named.push(("global".into(), self.global.to_dtype(DType::F32)?));
        let data: Vec<(String, Vec<u8>, Vec<usize>)> = named
            .iter()
            .map(|(n, t)| {
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                Ok((
                    n.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    t.dims().to_vec(),
                ))
            })
            .collect::<Result<_>>()?;
        let views = data
            .iter()
            .map(|(n, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let meta = HashMap::from([
            ("grid".to_string(), self.grid.to_string()),
            ("layers".to_string(), self.layers.len().to_string()),
        ]);
        safetensors::serialize(views, Some(meta))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

pub struct FeatureCache {
    map: Mutex<HashMap<String, Entry>>,
    disk: Option<Disk>,
    bytes: Mutex<usize>,
    pub max_bytes: usize,
    pub hits: Mutex<usize>,
    pub misses: Mutex<usize>,
}

impl FeatureCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            disk: None,
            bytes: Mutex::new(0),
            max_bytes,
            hits: Mutex::new(0),
            misses: Mutex::new(0),
        }
    }

    /// Also keep features on disk (shared with other processes).
    pub fn with_disk(mut self, opts: Option<DiskOptions>) -> Self {
        self.disk = opts.map(Disk::open);
        self
    }

    /// `, N read from / M written to DIR` (empty without a disk cache).
    pub fn disk_summary(&self) -> String {
        match &self.disk {
            Some(d) => format!(
                "; disk {}: {} read, {} written",
                d.opts.dir.display(),
                d.hits.load(Ordering::Relaxed),
                d.writes.load(Ordering::Relaxed)
            ),
            None => String::new(),
        }
    }

    // Long because memory lookup, disk lookup (with its validation) and the batched compute of the
    // misses share the batch's bookkeeping.
    /// Features of a batch, computing (and caching) only the images not seen before.
    /// `keys[i]` must identify image i and its augmentation draw (`None` = do not cache).
    pub fn features(
        &self,
        model: &VcpModel,
        pixels: &Tensor,
        keys: &[Option<String>],
        device: &Device,
    ) -> Result<Features> {
        let bk = format!(
            "{}|{}",
            backbone_key(model),
            if device.is_cuda() { "cuda" } else { "cpu" }
        );
        let full: Vec<Option<String>> = keys
            .iter()
            .map(|k| k.as_ref().map(|k| format!("{bk}#{k}")))
            .collect();
        let expect = Expect::of(model)?;
        let missing: Vec<usize> = {
            let mut map = self.map.lock().unwrap();
            (0..keys.len())
                .filter(|&i| match &full[i] {
                    None => true,
                    Some(k) if map.contains_key(k) => false,
                    Some(k) => match self.disk.as_ref().and_then(|d| d.load(k, &expect)) {
                        // From disk into memory (not counted against the memory limit: it was
                        // computed by another process and would be recomputed otherwise).
                        Some(e) => {
                            map.insert(k.clone(), e);
                            false
                        }
                        None => true,
                    },
                })
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
                    if let Some(d) = &self.disk {
                        d.store(k, &e);
                    }
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

/// Frozen features of a batch: from the cache when one is given (keyed by dataset root, image
/// path, size and modification time, i.e. un-augmented images of unchanged files), else
/// computed directly.
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
                .map(|p| {
                    let m = std::fs::metadata(root.join(p)).ok();
                    let len = m.as_ref().map(|m| m.len()).unwrap_or(0);
                    let mtime = m
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_nanos())
                        .unwrap_or(0);
                    Some(format!("{}:{p}:{len}:{mtime}", root.display()))
                })
                .collect();
            c.features(model, pixels, &keys, device)
        }
        None => model.encode_images(pixels),
    }
}

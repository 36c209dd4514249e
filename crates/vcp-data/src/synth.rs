//! A procedural defect benchmark in the MVTec AD layout, generated on demand (no downloads):
//! two disjoint domains of categories (textures and objects) so the cross-dataset protocol of
//! zero-shot segmentation (train on one domain's test split, evaluate on the other) can be run
//! anywhere. Every normal image varies (pose, colour, lighting, noise); defects are drawn on top,
//! and each mask is exactly the set of pixels the defects changed (pixel-exact by construction).
//!
//! Deterministic: the same seed, size and count give the same bytes.

use crate::error::{DataError, Result};
use crate::meta::{Meta, Record, Split};
use std::f32::consts::TAU;
use std::path::Path;

/// Categories per domain. Domain `alpha` plays VisA (train), `beta` plays MVTec (test).
pub const DOMAINS: [(&str, [&str; 5]); 2] = [
    ("alpha", ["woven", "grain", "pill", "nut", "pcb"]),
    ("beta", ["grid", "leather", "tile", "bottle", "capsule"]),
];

/// Bumped whenever the generator changes, so caches of older output are not reused.
pub const GENERATOR_VERSION: u32 = 2;

pub const DEFECTS: [&str; 7] = [
    "scratch",
    "crack",
    "hole",
    "stain",
    "contamination",
    "missing",
    "bent",
];

pub fn domain_of(category: &str) -> Option<&'static str> {
    DOMAINS
        .iter()
        .find(|(_, cs)| cs.contains(&category))
        .map(|(d, _)| *d)
}

/// The data side's generator (SplitMix64 seeded with a data-specific constant).
#[derive(Clone)]
pub struct Rng(crate::rng::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(crate::rng::SplitMix64(seed ^ 0xA076_1D64_78BD_642F))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    pub fn f(&mut self) -> f32 {
        self.0.f32()
    }
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f()
    }
    pub fn int(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

fn hash(parts: &[u64]) -> u64 {
    let mut r = Rng::new(0x1234_5678);
    let mut h = 0u64;
    for &p in parts {
        r.0 .0 ^= p.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ h;
        h = r.next_u64();
    }
    h
}

/// An RGB float image in [0, 1], row-major.
#[derive(Clone)]
pub struct Canvas {
    pub size: usize,
    pub px: Vec<[f32; 3]>,
}

impl Canvas {
    pub(crate) fn new(size: usize, c: [f32; 3]) -> Self {
        Canvas {
            size,
            px: vec![c; size * size],
        }
    }
    pub(crate) fn set(&mut self, x: i64, y: i64, c: [f32; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.size && (y as usize) < self.size {
            self.px[y as usize * self.size + x as usize] = c;
        }
    }
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.px
            .iter()
            .flat_map(|p| p.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8))
            .collect()
    }
}

/// Smooth value noise in [0, 1] at `cells` cells per side.
pub(crate) fn value_noise(rng: &mut Rng, size: usize, cells: usize) -> Vec<f32> {
    let n = cells + 2;
    let grid: Vec<f32> = (0..n * n).map(|_| rng.f()).collect();
    let mut out = vec![0f32; size * size];
    for y in 0..size {
        for x in 0..size {
            let gx = x as f32 / size as f32 * cells as f32;
            let gy = y as f32 / size as f32 * cells as f32;
            let (x0, y0) = (gx as usize, gy as usize);
            let (fx, fy) = (gx - x0 as f32, gy - y0 as f32);
            let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
            let g = |i: usize, j: usize| grid[j * n + i];
            let a = g(x0, y0) * (1.0 - sx) + g(x0 + 1, y0) * sx;
            let b = g(x0, y0 + 1) * (1.0 - sx) + g(x0 + 1, y0 + 1) * sx;
            out[y * size + x] = a * (1.0 - sy) + b * sy;
        }
    }
    out
}

pub(crate) fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

pub(crate) fn jitter(rng: &mut Rng, c: [f32; 3], amount: f32) -> [f32; 3] {
    c.map(|v| (v + rng.range(-amount, amount)).clamp(0.0, 1.0))
}

// Long because it is one procedural drawing recipe per object kind (one match arm each); the arms
// share the canvas and the random draws, whose order fixes the benchmark.
/// Render a normal sample of a category. Returns the canvas and the object's support (pixels
/// where object defects may go; all pixels for textures).
pub fn render_normal(category: &str, size: usize, rng: &mut Rng) -> (Canvas, Vec<bool>) {
    let s = size as f32;
    let light = rng.range(0.85, 1.15);
    let noise = value_noise(rng, size, 16);
    let mut support = vec![true; size * size];
    let mut c = match category {
        "woven" => {
            let base = jitter(rng, [0.55, 0.45, 0.35], 0.06);
            let (f, ph) = (rng.range(10.0, 14.0), rng.range(0.0, TAU));
            let mut c = Canvas::new(size, base);
            for y in 0..size {
                for x in 0..size {
                    let (u, v) = (x as f32 / s * f * TAU + ph, y as f32 / s * f * TAU);
                    let w = if ((u / TAU).floor() as i64 + (v / TAU).floor() as i64) % 2 == 0 {
                        u.sin()
                    } else {
                        v.sin()
                    };
                    c.px[y * size + x] = mix(base, [0.9, 0.85, 0.75], 0.5 + 0.35 * w);
                }
            }
            c
        }
        "grain" => {
            let base = jitter(rng, [0.6, 0.4, 0.22], 0.05);
            let (f, ang) = (rng.range(18.0, 26.0), rng.range(-0.3, 0.3));
            let warp = value_noise(rng, size, 4);
            let mut c = Canvas::new(size, base);
            for y in 0..size {
                for x in 0..size {
                    let t = (x as f32 * ang.cos() + y as f32 * ang.sin()) / s;
                    let r = ((t * f + warp[y * size + x] * 4.0) * TAU).sin();
                    c.px[y * size + x] = mix(base, [0.35, 0.2, 0.1], 0.5 + 0.3 * r);
                }
            }
            c
        }
        "grid" => {
            let bg = jitter(rng, [0.75, 0.75, 0.72], 0.05);
            let line = jitter(rng, [0.25, 0.25, 0.28], 0.05);
            let step = rng.range(9.0, 13.0) * s / 128.0;
            let off = rng.range(0.0, step);
            let mut c = Canvas::new(size, bg);
            for y in 0..size {
                for x in 0..size {
                    let on = ((x as f32 + off) % step) < 2.0 * s / 128.0
                        || ((y as f32 + off) % step) < 2.0 * s / 128.0;
                    if on {
                        c.px[y * size + x] = line;
                    }
                }
            }
            c
        }
        "leather" => {
            let base = jitter(rng, [0.45, 0.28, 0.18], 0.05);
            let n2 = value_noise(rng, size, 40);
            let mut c = Canvas::new(size, base);
            for (p, n) in c.px.iter_mut().zip(&n2) {
                *p = mix(base, [0.25, 0.15, 0.1], 0.6 * n);
            }
            c
        }
        "tile" => {
            let mortar = jitter(rng, [0.8, 0.8, 0.78], 0.04);
            let cell = (rng.range(28.0, 36.0) * s / 128.0) as usize;
            let mut c = Canvas::new(size, mortar);
            let mut trng = rng.clone();
            for ty in 0..=size / cell.max(1) {
                for tx in 0..=size / cell.max(1) {
                    let col = jitter(&mut trng, [0.3, 0.45, 0.6], 0.08);
                    for y in ty * cell + 2..((ty + 1) * cell).min(size) {
                        for x in tx * cell + 2..((tx + 1) * cell).min(size) {
                            c.px[y * size + x] = col;
                        }
                    }
                }
            }
            c
        }
        _ => {
            // Objects on a background; the support is the object.
            let bg = jitter(rng, [0.15, 0.15, 0.17], 0.04);
            let mut c = Canvas::new(size, bg);
            support = vec![false; size * size];
            let (cx, cy) = (
                s / 2.0 + rng.range(-0.06, 0.06) * s,
                s / 2.0 + rng.range(-0.06, 0.06) * s,
            );
            let ang = rng.range(0.0, TAU);
            let (ca, sa) = (ang.cos(), ang.sin());
            let body = match category {
                "pill" => jitter(rng, [0.92, 0.9, 0.85], 0.03),
                "nut" => jitter(rng, [0.62, 0.63, 0.66], 0.04),
                "pcb" => jitter(rng, [0.1, 0.45, 0.2], 0.04),
                "bottle" => jitter(rng, [0.35, 0.22, 0.1], 0.04),
                _ => jitter(rng, [0.8, 0.3, 0.25], 0.04),
            };
            for y in 0..size {
                for x in 0..size {
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    let (u, v) = ((dx * ca + dy * sa) / s, (-dx * sa + dy * ca) / s);
                    let inside_col: Option<[f32; 3]> = match category {
                        "pill" => ((u / 0.34).powi(2) + (v / 0.2).powi(2) <= 1.0).then_some(body),
                        "nut" => {
                            let r = (u * u + v * v).sqrt();
                            let a = v.atan2(u).rem_euclid(std::f32::consts::PI / 3.0)
                                - std::f32::consts::PI / 6.0;
                            let hex = 0.33 * (std::f32::consts::PI / 6.0).cos() / a.cos();
                            if r <= hex && r >= 0.13 {
                                Some(body)
                            } else {
                                None
                            }
                        }
                        "pcb" => {
                            if u.abs() <= 0.38 && v.abs() <= 0.3 {
                                let trace = (((u + 0.38) * 20.0).fract() < 0.12 && v.abs() < 0.22)
                                    || ((v + 0.3) * 12.0).fract() < 0.08;
                                let pad = ((u * 8.0).round() - u * 8.0).abs() < 0.18
                                    && ((v * 8.0).round() - v * 8.0).abs() < 0.18;
                                Some(if pad {
                                    [0.85, 0.75, 0.3]
                                } else if trace {
                                    [0.7, 0.6, 0.25]
                                } else {
                                    body
                                })
                            } else {
                                None
                            }
                        }
                        "bottle" => {
                            let r = (u * u + v * v).sqrt();
                            if r <= 0.4 {
                                Some(if r < 0.18 {
                                    [0.05, 0.05, 0.05]
                                } else if r < 0.22 {
                                    mix(body, [1.0, 1.0, 1.0], 0.4)
                                } else {
                                    body
                                })
                            } else {
                                None
                            }
                        }
                        _ => {
                            // capsule: rounded rectangle, two halves
                            let (hx, hy) = (0.3f32, 0.13f32);
                            let qx = (u.abs() - (hx - hy)).max(0.0);
                            if qx * qx + v * v <= hy * hy || (u.abs() <= hx - hy && v.abs() <= hy) {
                                Some(if u < 0.0 { body } else { [0.95, 0.93, 0.88] })
                            } else {
                                None
                            }
                        }
                    };
                    if let Some(col) = inside_col {
                        c.px[y * size + x] = col;
                        support[y * size + x] = true;
                    }
                }
            }
            c
        }
    };
    // Lighting, gentle shading and sensor noise.
    for (i, p) in c.px.iter_mut().enumerate() {
        let shade = 0.9 + 0.2 * noise[i];
        let grain = rng.range(-0.02, 0.02);
        *p = p.map(|v| (v * light * shade + grain).clamp(0.0, 1.0));
    }
    (c, support)
}

/// Where a defect goes: a random pixel of the support (up to 200 draws), else the centre.
pub(crate) fn defect_centre(size: usize, support: &[bool], rng: &mut Rng) -> (f32, f32) {
    for _ in 0..200 {
        let (x, y) = (rng.int(size), rng.int(size));
        if support[y * size + x] {
            return (x as f32, y as f32);
        }
    }
    (size as f32 / 2.0, size as f32 / 2.0)
}

// Long because it is one drawing recipe per defect type (one match arm each); the order of the
// random draws fixes the benchmark, so the arms stay in one place.
/// Draw one defect of `kind`; changes pixels of `c` only. `boost` scales the defect's size
/// (1 for the benchmark; the caption corpus draws larger defects on its smaller images).
pub(crate) fn draw_defect(c: &mut Canvas, support: &[bool], kind: &str, boost: f32, rng: &mut Rng) {
    let size = c.size;
    let s = size as f32;
    let (cx, cy) = defect_centre(size, support, rng);
    let scale = rng.range(0.5, 1.6) * s / 128.0 * boost;
    match kind {
        "scratch" | "crack" => {
            let col = if kind == "scratch" {
                [0.95, 0.95, 0.95]
            } else {
                [0.05, 0.04, 0.04]
            };
            let mut ang = rng.range(0.0, TAU);
            let (mut x, mut y) = (cx, cy);
            let len = (rng.range(15.0, 45.0) * scale) as usize;
            for _ in 0..len {
                if kind == "crack" {
                    ang += rng.range(-0.5, 0.5);
                }
                x += ang.cos();
                y += ang.sin();
                let w = if kind == "crack" {
                    1
                } else {
                    (scale.round() as i64).max(1)
                };
                for d in 0..w {
                    c.set(x as i64 + d, y as i64, col);
                }
            }
        }
        "hole" => {
            let (rx, ry) = (rng.range(3.0, 8.0) * scale, rng.range(3.0, 8.0) * scale);
            for y in 0..size {
                for x in 0..size {
                    let (dx, dy) = ((x as f32 - cx) / rx, (y as f32 - cy) / ry);
                    let d = dx * dx + dy * dy;
                    if d <= 1.0 {
                        c.px[y * size + x] = if d > 0.6 {
                            [0.3, 0.28, 0.26]
                        } else {
                            [0.02, 0.02, 0.02]
                        };
                    }
                }
            }
        }
        "stain" => {
            let tint = [
                rng.range(-0.35, 0.35),
                rng.range(-0.35, 0.35),
                rng.range(-0.35, 0.35),
            ];
            let r = rng.range(6.0, 14.0) * scale;
            let warp = rng.range(0.2, 0.5);
            for y in 0..size {
                for x in 0..size {
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    let a = dy.atan2(dx);
                    if (dx * dx + dy * dy).sqrt() <= r * (1.0 + warp * (3.0 * a).sin() * 0.5) {
                        let p = &mut c.px[y * size + x];
                        *p = [0, 1, 2].map(|k| (p[k] + tint[k]).clamp(0.0, 1.0));
                    }
                }
            }
        }
        "contamination" => {
            let col = [rng.f(), rng.f(), rng.f()];
            for _ in 0..rng.int(6) + 2 {
                let (px, py) = (
                    cx + rng.range(-10.0, 10.0) * scale,
                    cy + rng.range(-10.0, 10.0) * scale,
                );
                let r = rng.range(1.0, 3.0) * scale;
                for y in (py - r) as i64..=(py + r) as i64 {
                    for x in (px - r) as i64..=(px + r) as i64 {
                        if ((x as f32 - px).powi(2) + (y as f32 - py).powi(2)) <= r * r {
                            c.set(x, y, col);
                        }
                    }
                }
            }
        }
        "missing" => {
            // Replace a region with what lies outside the object (or a flat fill on textures).
            let fill = c.px[0];
            let (w, h) = (rng.range(6.0, 16.0) * scale, rng.range(6.0, 16.0) * scale);
            for y in (cy - h / 2.0).max(0.0) as usize..((cy + h / 2.0) as usize).min(size) {
                for x in (cx - w / 2.0).max(0.0) as usize..((cx + w / 2.0) as usize).min(size) {
                    if support[y * size + x] {
                        c.px[y * size + x] = fill;
                    }
                }
            }
        }
        _ => {
            // bent / deformed: a swirl displacement inside a disc.
            let r = rng.range(8.0, 16.0) * scale;
            let strength = rng.range(0.8, 1.5);
            let src = c.clone();
            for y in 0..size {
                for x in 0..size {
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    let d = (dx * dx + dy * dy).sqrt();
                    if d < r {
                        let a = strength * (1.0 - d / r);
                        let (sx, sy) = (
                            cx + dx * a.cos() - dy * a.sin(),
                            cy + dx * a.sin() + dy * a.cos(),
                        );
                        let (ix, iy) = (sx.round() as i64, sy.round() as i64);
                        if ix >= 0 && iy >= 0 && (ix as usize) < size && (iy as usize) < size {
                            c.px[y * size + x] = src.px[iy as usize * size + ix as usize];
                        }
                    }
                }
            }
        }
    }
}

/// One generated sample: the clean image, the image with defects, their types and the mask.
pub struct Sample {
    pub clean: Vec<u8>,
    pub image: Vec<u8>,
    pub defects: Vec<&'static str>,
    pub mask: Vec<bool>,
}

/// Generate sample `index` of `category` (anomalous when `defective`).
pub fn sample(category: &str, index: usize, defective: bool, size: usize, seed: u64) -> Sample {
    let cat_id = category
        .bytes()
        .fold(0u64, |a, b| a.wrapping_mul(131).wrapping_add(b as u64));
    let mut rng = Rng::new(hash(&[seed, cat_id, index as u64, defective as u64]));
    let (mut canvas, support) = render_normal(category, size, &mut rng);
    let clean = canvas.to_rgb8();
    let mut defects = Vec::new();
    if defective {
        let n = if rng.f() < 0.25 { 2 + rng.int(2) } else { 1 };
        for _ in 0..n {
            let kind = DEFECTS[rng.int(DEFECTS.len())];
            draw_defect(&mut canvas, &support, kind, 1.0, &mut rng);
            defects.push(kind);
        }
    }
    let image = canvas.to_rgb8();
    let mask: Vec<bool> = image
        .chunks_exact(3)
        .zip(clean.chunks_exact(3))
        .map(|(a, b)| a != b)
        .collect();
    if defective && !mask.iter().any(|&m| m) {
        // A defect that changed nothing (e.g. a stain on saturated pixels): draw a hole instead.
        let mut again = Canvas {
            size,
            px: canvas.px.clone(),
        };
        draw_defect(&mut again, &support, "hole", 1.0, &mut rng);
        let image = again.to_rgb8();
        let mask = image
            .chunks_exact(3)
            .zip(clean.chunks_exact(3))
            .map(|(a, b)| a != b)
            .collect();
        return Sample {
            clean,
            image,
            defects: vec!["hole"],
            mask,
        };
    }
    Sample {
        clean,
        image,
        defects,
        mask,
    }
}

fn save_png(path: &Path, data: &[u8], size: usize, color: image::ExtendedColorType) -> Result<()> {
    let png = crate::io::encode_png(data, size as u32, size as u32, color)?;
    crate::io::write_atomic(path, &png)
}

/// Options of `vcp data synth`.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub seed: u64,
    pub size: usize,
    /// Test images per category (half of them anomalous); as many normal train images.
    pub per_category: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            size: 128,
            per_category: 12,
        }
    }
}

/// Write the benchmark to `out` (MVTec layout) with `meta.json` (all categories) and
/// `meta_<domain>.json` per domain. Returns the meta of all categories.
///
/// The whole tree is written into a temporary sibling folder and renamed into place at the end,
/// so `out` either holds one complete benchmark or nothing: an interrupted run leaves no partial
/// tree, and two runs never mix (a non-empty `out` is an error, also when another process
/// finished first).
pub fn generate(out: &Path, o: &SynthOptions) -> Result<Meta> {
    if o.size < 32 || o.per_category < 2 {
        return Err(DataError::Invalid(
            "synth: --size must be >= 32 and --per-category >= 2".into(),
        ));
    }
    let not_empty = |p: &Path| {
        std::fs::read_dir(p)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    };
    if not_empty(out) {
        return Err(DataError::file(
            out,
            "already exists and is not empty (choose another --out or remove it)",
        ));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| DataError::file(&parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".synth-partial-")
        .tempdir_in(&parent)
        .map_err(|e| DataError::file(&parent, e))?;
    let meta = generate_into(tmp.path(), o)?;
    // rename(2) replaces an empty directory and fails on a non-empty one.
    match std::fs::rename(tmp.path(), out) {
        Ok(()) => {
            // The folder now lives at `out`; nothing is left for the guard to delete.
            let _ = tmp.keep();
            Ok(meta)
        }
        Err(e) => Err(DataError::file(
            out,
            format!("cannot move the finished benchmark into place ({e}); another run may have written it"),
        )),
    }
}

fn generate_into(out: &Path, o: &SynthOptions) -> Result<Meta> {
    use rayon::prelude::*;
    let mut all = Meta::default();
    let mut per_domain: Vec<(String, Meta)> = Vec::new();
    for (domain, cats) in DOMAINS {
        let mut dm = Meta::default();
        for cat in cats {
            let jobs: Vec<(bool, usize, bool)> = (0..o.per_category)
                .map(|i| (false, i, i % 2 == 1))
                .chain((0..o.per_category).map(|i| (true, i, false)))
                .collect();
            let recs: Vec<(bool, Record)> = jobs
                .par_iter()
                .map(|&(train, i, defective)| -> Result<(bool, Record)> {
                    let idx = if train { 10_000 + i } else { i };
                    let s = sample(cat, idx, defective, o.size, o.seed);
                    let specie = if defective {
                        if s.defects.len() > 1 {
                            "combined"
                        } else {
                            s.defects[0]
                        }
                    } else {
                        "good"
                    };
                    let split = if train { "train" } else { "test" };
                    let img_rel = format!("{cat}/{split}/{specie}/{i:03}.png");
                    save_png(
                        &out.join(&img_rel),
                        &s.image,
                        o.size,
                        image::ExtendedColorType::Rgb8,
                    )?;
                    let mut mask_rel = String::new();
                    if defective {
                        mask_rel = format!("{cat}/ground_truth/{specie}/{i:03}_mask.png");
                        let m: Vec<u8> = s.mask.iter().map(|&b| if b { 255 } else { 0 }).collect();
                        save_png(
                            &out.join(&mask_rel),
                            &m,
                            o.size,
                            image::ExtendedColorType::L8,
                        )?;
                    }
                    Ok((
                        train,
                        Record {
                            img_path: img_rel,
                            mask_path: mask_rel,
                            cls_name: cat.to_string(),
                            specie_name: specie.to_string(),
                            anomaly: defective as u8,
                            dataset_name: Some(domain.to_string()),
                        },
                    ))
                })
                .collect::<Result<_>>()?;
            let train: Vec<Record> = recs.iter().filter(|r| r.0).map(|r| r.1.clone()).collect();
            let test: Vec<Record> = recs.iter().filter(|r| !r.0).map(|r| r.1.clone()).collect();
            dm.train.0.push((cat.to_string(), train.clone()));
            dm.test.0.push((cat.to_string(), test.clone()));
            all.train.0.push((cat.to_string(), train));
            all.test.0.push((cat.to_string(), test));
        }
        per_domain.push((domain.to_string(), dm));
    }
    for (d, m) in &per_domain {
        m.save(&out.join(format!("meta_{d}.json")))?;
    }
    all.save(&out.join("meta.json"))?;
    let _ = Split::default();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_masks_match_defects() {
        for (_, cats) in DOMAINS {
            for cat in cats {
                let a = sample(cat, 3, true, 64, 7);
                let b = sample(cat, 3, true, 64, 7);
                assert_eq!(a.image, b.image, "{cat}: not deterministic");
                assert!(a.mask.iter().any(|&m| m), "{cat}: empty mask");
                // Mask = exactly the pixels that differ from the clean render.
                for (i, (&m, (p, q))) in a
                    .mask
                    .iter()
                    .zip(a.image.chunks_exact(3).zip(a.clean.chunks_exact(3)))
                    .enumerate()
                {
                    assert_eq!(m, p != q, "{cat}: pixel {i}");
                }
                let n1 = sample(cat, 1, false, 64, 7);
                let n2 = sample(cat, 2, false, 64, 7);
                assert_ne!(n1.image, n2.image, "{cat}: normal images should vary");
                assert_eq!(n1.image, n1.clean);
            }
        }
    }

    #[test]
    fn every_defect_type_changes_pixels() {
        for kind in DEFECTS {
            let mut rng = Rng::new(5);
            let (mut c, support) = render_normal("tile", 96, &mut rng);
            let before = c.to_rgb8();
            draw_defect(&mut c, &support, kind, 1.0, &mut rng);
            assert_ne!(before, c.to_rgb8(), "{kind} changed nothing");
        }
    }
}

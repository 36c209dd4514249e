//! An endless, seeded stream of (image, caption) pairs for pretraining a small CLIP that knows
//! what a defect is (`vcp pretrain-clip`).
//!
//! Far richer than the benchmark ([`crate::synth`]): 41 object and texture kinds (the ten
//! benchmark categories under their names, rendered by the benchmark's own renderer, plus 31
//! more), named colours, backgrounds, poses, scales, lighting, blur and noise; ten defect kinds
//! with varied size, count and position; about half the images normal. Captions come from 34
//! templates with synonyms for states, kinds and defects, and sometimes name the colour, the
//! defect's position ("near the top edge") and the count ("two scratches").
//!
//! Every caption carries an explicit state word; a normal image never gets a defect word.
//! [`pair`] renders one scene twice, clean and defective: in-batch hard negatives that kind and
//! colour alone cannot tell apart (the pretraining study's lesson).
//!
//! The stream is keyed by its own constant, so it never reproduces the benchmark's images
//! (the benchmark seeds its renderer through `synth::sample`'s hash, this one through [`key`]).

use crate::synth::{self, draw_defect, jitter, mix, render_normal, value_noise, Canvas, Rng};
use std::f32::consts::{PI, TAU};

/// Bumped whenever the generator changes (recorded in the model card and checkpoints).
pub const CORPUS_VERSION: u32 = 1;

/// Full-frame textures added to the benchmark's (`woven`, `grain`, `grid`, `leather`, `tile`).
pub const TEXTURES: [&str; 15] = [
    "carpet",
    "wood",
    "marble",
    "fabric",
    "wire mesh",
    "concrete",
    "paper",
    "brushed metal",
    "cork",
    "granite",
    "foam",
    "denim",
    "brick wall",
    "corrugated metal",
    "ceramic",
];

/// Objects on a background added to the benchmark's (`pill`, `nut`, `pcb`, `bottle`, `capsule`).
pub const OBJECTS: [&str; 16] = [
    "screw",
    "washer",
    "gear",
    "coin",
    "button",
    "o-ring",
    "battery",
    "hazelnut",
    "transistor",
    "cable",
    "chip",
    "bearing",
    "key",
    "fuse",
    "bead",
    "lid",
];

/// Every kind of the corpus: the benchmark's ten categories first.
pub fn kinds() -> Vec<&'static str> {
    let mut k: Vec<&'static str> = synth::DOMAINS
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .collect();
    k.extend(TEXTURES);
    k.extend(OBJECTS);
    k
}

/// Defect kinds: the benchmark's seven and three more.
pub const DEFECTS: [&str; 10] = [
    "scratch",
    "crack",
    "hole",
    "stain",
    "contamination",
    "missing",
    "bent",
    "colour spot",
    "cut",
    "misprint",
];

/// Named colours for the corpus's own kinds (the benchmark kinds keep their own colours).
pub const COLOURS: [(&str, [f32; 3]); 12] = [
    ("red", [0.78, 0.12, 0.1]),
    ("green", [0.15, 0.6, 0.2]),
    ("blue", [0.15, 0.3, 0.8]),
    ("yellow", [0.9, 0.8, 0.15]),
    ("orange", [0.92, 0.5, 0.1]),
    ("purple", [0.5, 0.2, 0.6]),
    ("white", [0.93, 0.93, 0.9]),
    ("black", [0.08, 0.08, 0.09]),
    ("grey", [0.5, 0.5, 0.52]),
    ("brown", [0.45, 0.28, 0.12]),
    ("pink", [0.92, 0.55, 0.65]),
    ("silver", [0.75, 0.76, 0.8]),
];

/// State words (synonyms); the first of each is the benchmark's prompt word family.
pub const NORMAL_WORDS: [&str; 10] = [
    "good",
    "flawless",
    "perfect",
    "normal",
    "intact",
    "undamaged",
    "pristine",
    "unblemished",
    "defect-free",
    "fine",
];
pub const ABNORMAL_WORDS: [&str; 8] = [
    "damaged",
    "defective",
    "broken",
    "flawed",
    "faulty",
    "anomalous",
    "imperfect",
    "abnormal",
];

/// Nouns for each defect kind: (singular, plural).
pub fn defect_nouns(kind: &str) -> &'static [(&'static str, &'static str)] {
    match kind {
        "scratch" => &[("scratch", "scratches"), ("scrape", "scrapes")],
        "crack" => &[("crack", "cracks"), ("fracture", "fractures")],
        "hole" => &[("hole", "holes"), ("puncture", "punctures")],
        "stain" => &[
            ("stain", "stains"),
            ("smudge", "smudges"),
            ("blot", "blots"),
        ],
        "contamination" => &[
            ("foreign particle", "foreign particles"),
            ("contamination", "contaminations"),
            ("speck of debris", "specks of debris"),
        ],
        "missing" => &[
            ("missing piece", "missing pieces"),
            ("missing part", "missing parts"),
        ],
        "bent" => &[("bent area", "bent areas"), ("deformation", "deformations")],
        "colour spot" => &[
            ("colour spot", "colour spots"),
            ("discoloration", "discolorations"),
        ],
        "cut" => &[("cut", "cuts"), ("gash", "gashes"), ("slit", "slits")],
        "misprint" => &[("misprint", "misprints"), ("print error", "print errors")],
        _ => &[("defect", "defects")],
    }
}

/// Every word a caption may use for a defect (for tests: a normal caption has none of them).
pub fn all_defect_nouns() -> Vec<&'static str> {
    DEFECTS
        .iter()
        .flat_map(|d| defect_nouns(d).iter().flat_map(|(s, p)| [*s, *p]))
        .chain(["defect", "defects"])
        .collect()
}

/// One (image, caption) pair.
#[derive(Clone)]
pub struct CorpusSample {
    /// RGB8, row-major, `size * size * 3`.
    pub image: Vec<u8>,
    pub size: usize,
    pub caption: String,
    pub kind: &'static str,
    pub colour: Option<&'static str>,
    /// Defect kinds drawn (empty = normal).
    pub defects: Vec<&'static str>,
    /// Pixels the defects changed.
    pub mask: Vec<bool>,
}

/// The stream's key for sample `index` of stream `seed` (separate from the benchmark's hash).
pub fn key(seed: u64, index: u64) -> u64 {
    let mut r = crate::rng::SplitMix64(seed ^ 0x5EED_C0A9_u64.wrapping_mul(0x9E37_79B9));
    let a = r.next_u64();
    let mut r = crate::rng::SplitMix64(a ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next_u64()
}

/// A scene before defects: canvas, defect support, kind, colour.
struct Scene {
    canvas: Canvas,
    support: Vec<bool>,
    kind: &'static str,
    colour: Option<&'static str>,
}

fn render_scene(size: usize, rng: &mut Rng) -> Scene {
    let all = kinds();
    let kind = all[rng.int(all.len())];
    if synth::domain_of(kind).is_some() {
        let (canvas, support) = render_normal(kind, size, rng);
        return Scene {
            canvas,
            support,
            kind,
            colour: None,
        };
    }
    let (cname, base) = COLOURS[rng.int(COLOURS.len())];
    let base = jitter(rng, base, 0.05);
    let (canvas, support) = if TEXTURES.contains(&kind) {
        (
            render_texture(kind, base, size, rng),
            vec![true; size * size],
        )
    } else {
        render_object(kind, base, size, rng)
    };
    Scene {
        canvas,
        support,
        kind,
        colour: Some(cname),
    }
}

// Long because it is a table: one texture recipe per kind; the order of the random draws fixes the
// corpus.
fn render_texture(kind: &str, base: [f32; 3], size: usize, rng: &mut Rng) -> Canvas {
    let s = size as f32;
    let noise = value_noise(rng, size, 8);
    let fine = value_noise(rng, size, (size / 3).max(4));
    let dark = mix(base, [0.0, 0.0, 0.0], 0.45);
    let light = mix(base, [1.0, 1.0, 1.0], 0.35);
    let ang = rng.range(0.0, PI);
    let (ca, sa) = (ang.cos(), ang.sin());
    let freq = rng.range(0.7, 1.4);
    let mut c = Canvas::new(size, base);
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let (u, v) = (x as f32 / s, y as f32 / s);
            let (ru, rv) = (u * ca + v * sa, -u * sa + v * ca);
            let (n, f) = (noise[i], fine[i]);
            let col = match kind {
                "carpet" => mix(dark, light, 0.3 + 0.5 * f + 0.2 * n),
                "wood" => {
                    let r = ((ru * 18.0 * freq + 3.0 * n) * TAU).sin() * 0.5 + 0.5;
                    mix(dark, base, 0.4 + 0.6 * r)
                }
                "marble" => {
                    let vein = ((ru * 6.0 * freq + 5.0 * n) * PI).sin().abs();
                    mix(light, dark, (1.0 - vein).powi(6))
                }
                "fabric" => {
                    let a = ((ru * 24.0 * freq) * TAU).sin();
                    let b = ((rv * 24.0 * freq) * TAU).sin();
                    mix(dark, light, 0.5 + 0.25 * (a * b) + 0.15 * (f - 0.5))
                }
                "wire mesh" => {
                    let gu = (ru * 10.0 * freq).rem_euclid(1.0);
                    let gv = (rv * 10.0 * freq).rem_euclid(1.0);
                    if gu < 0.18 || gv < 0.18 {
                        light
                    } else {
                        [0.08, 0.08, 0.09]
                    }
                }
                "concrete" => mix(dark, light, 0.35 + 0.3 * n + 0.35 * (f - 0.5)),
                "paper" => mix(base, light, 0.6 + 0.2 * f),
                "brushed metal" => {
                    let streak = ((rv * 90.0 + 8.0 * f) * TAU).sin() * 0.5 + 0.5;
                    mix(base, light, 0.25 + 0.35 * streak)
                }
                "cork" => mix(dark, base, if f > 0.62 { 0.1 } else { 0.8 + 0.2 * n }),
                "granite" => {
                    if f > 0.7 {
                        [0.05, 0.05, 0.05]
                    } else if f < 0.25 {
                        light
                    } else {
                        mix(base, dark, n * 0.5)
                    }
                }
                "foam" => {
                    let cell = ((ru * 14.0 * freq * TAU).sin() * (rv * 14.0 * freq * TAU).sin())
                        .abs()
                        .powf(0.3);
                    mix(dark, light, cell * (0.7 + 0.3 * n))
                }
                "denim" => {
                    let twill = (((ru + rv) * 30.0 * freq) * TAU).sin() * 0.5 + 0.5;
                    mix(dark, base, 0.5 + 0.4 * twill * f)
                }
                "brick wall" => {
                    let row = (v * 6.0 * freq).floor();
                    let bu = (u * 3.0 * freq + 0.5 * (row % 2.0)).rem_euclid(1.0);
                    let bv = (v * 6.0 * freq).rem_euclid(1.0);
                    if bu < 0.06 || bv < 0.1 {
                        [0.75, 0.73, 0.7]
                    } else {
                        mix(base, dark, 0.3 * n)
                    }
                }
                "corrugated metal" => {
                    let w = ((ru * 9.0 * freq) * TAU).sin() * 0.5 + 0.5;
                    mix(dark, light, w)
                }
                _ => {
                    // ceramic: glazed tiles with thin joints and a soft highlight.
                    let (gu, gv) = (
                        (u * 2.0 * freq).rem_euclid(1.0),
                        (v * 2.0 * freq).rem_euclid(1.0),
                    );
                    if gu < 0.03 || gv < 0.03 {
                        [0.85, 0.85, 0.82]
                    } else {
                        mix(base, light, 0.3 * n)
                    }
                }
            };
            c.px[i] = col;
        }
    }
    c
}

// Long because it is a table: one colour recipe per object kind, read top to bottom.
/// Objects: a silhouette in pose-normalised coordinates `(u, v)` (object-centred, rotated,
/// divided by the object's scale) and inner details; returns the colour inside or `None`.
fn object_colour(kind: &str, u: f32, v: f32, base: [f32; 3]) -> Option<[f32; 3]> {
    let r = (u * u + v * v).sqrt();
    let dark = mix(base, [0.0, 0.0, 0.0], 0.5);
    let light = mix(base, [1.0, 1.0, 1.0], 0.45);
    let metal = [0.7, 0.71, 0.74];
    let round_rect = |hx: f32, hy: f32, rr: f32| {
        let qx = (u.abs() - (hx - rr)).max(0.0);
        let qy = (v.abs() - (hy - rr)).max(0.0);
        qx * qx + qy * qy <= rr * rr
    };
    match kind {
        "screw" => {
            if r <= 0.16 {
                Some(if u.abs() < 0.025 { dark } else { light })
            } else if u.abs() <= 0.07 && v > 0.0 && v <= 0.45 {
                let thread = ((v * 40.0).rem_euclid(1.0) < 0.4) as u8 as f32;
                Some(mix(base, dark, 0.4 * thread))
            } else {
                None
            }
        }
        "washer" => (0.16..=0.36)
            .contains(&r)
            .then(|| mix(base, light, 0.3 * (r - 0.16) / 0.2)),
        "gear" => {
            let a = v.atan2(u);
            let tooth = ((a * 10.0 / TAU).rem_euclid(1.0) < 0.5) as u8 as f32;
            let outer = 0.3 + 0.07 * tooth;
            (r <= outer && r >= 0.08).then_some(if r < 0.14 { dark } else { base })
        }
        "coin" => (r <= 0.33).then(|| {
            if r > 0.3 {
                dark
            } else if ((u * 9.0).round() as i32 + (v * 9.0).round() as i32) % 3 == 0 && r < 0.2 {
                light
            } else {
                base
            }
        }),
        "button" => (r <= 0.3).then(|| {
            let hole = [(-0.07, -0.07), (0.07, -0.07), (-0.07, 0.07), (0.07, 0.07)]
                .iter()
                .any(|&(hx, hy)| (u - hx).powi(2) + (v - hy).powi(2) < 0.03f32.powi(2));
            if hole {
                [0.05, 0.05, 0.05]
            } else if r > 0.25 {
                light
            } else {
                base
            }
        }),
        "o-ring" => (0.28..=0.38).contains(&r).then_some(base),
        "battery" => {
            if round_rect(0.38, 0.15, 0.03) {
                Some(if u > 0.25 { metal } else { base })
            } else if u > 0.38 && u < 0.44 && v.abs() < 0.05 {
                Some(metal)
            } else {
                None
            }
        }
        "hazelnut" => {
            let shape = (u / 0.3).powi(2) + ((v + 0.05 * (u * 6.0).sin()) / 0.34).powi(2);
            (shape <= 1.0).then(|| {
                if v < -0.22 {
                    dark
                } else {
                    mix(base, dark, 0.3 * ((v * 20.0).sin() * 0.5 + 0.5))
                }
            })
        }
        "transistor" => {
            if round_rect(0.2, 0.16, 0.02) && v < 0.1 {
                Some(if v < -0.1 { metal } else { [0.1, 0.1, 0.1] })
            } else if (0.1..0.42).contains(&v)
                && [-0.12, 0.0, 0.12].iter().any(|&x| (u - x).abs() < 0.025)
            {
                Some(metal)
            } else {
                None
            }
        }
        "cable" => {
            let cr = ((u + 0.5 * v * v).powi(2) + 0.0).sqrt();
            (cr <= 0.13 && v.abs() < 0.48).then_some(if cr > 0.1 { dark } else { base })
        }
        "chip" => {
            if round_rect(0.22, 0.22, 0.02) {
                Some([0.12, 0.12, 0.13])
            } else if (u.abs() < 0.3 && v.abs() < 0.3)
                && ((u * 20.0).rem_euclid(1.0).abs() < 0.4
                    || (v * 20.0).rem_euclid(1.0).abs() < 0.4)
                && (u.abs() < 0.2 || v.abs() < 0.2)
            {
                Some(metal)
            } else {
                None
            }
        }
        "bearing" => {
            if (0.28..=0.36).contains(&r) {
                Some(metal)
            } else if r < 0.28 && r > 0.12 {
                let a = v.atan2(u);
                let ball =
                    ((a * 8.0 / TAU).rem_euclid(1.0) - 0.5).abs() < 0.2 && (r - 0.2).abs() < 0.05;
                Some(if ball { light } else { dark })
            } else if (0.07..=0.12).contains(&r) {
                Some(metal)
            } else {
                None
            }
        }
        "key" => {
            let head = ((u + 0.25).powi(2) + v * v).sqrt();
            // Ring-shaped head, shaft, and the bit's teeth.
            let ring = (0.05..=0.15).contains(&head);
            let shaft = u > -0.12 && u < 0.42 && v.abs() < 0.05;
            let teeth =
                u > 0.2 && u < 0.42 && (0.05..0.1).contains(&v) && (u * 30.0).rem_euclid(1.0) < 0.5;
            (ring || shaft || teeth).then_some(base)
        }
        "fuse" => {
            if u.abs() < 0.3 && v.abs() < 0.1 {
                Some(if u.abs() > 0.22 {
                    metal
                } else if v.abs() < 0.015 {
                    dark
                } else {
                    mix(base, [1.0, 1.0, 1.0], 0.6)
                })
            } else {
                None
            }
        }
        "bead" => (r <= 0.25).then(|| {
            let hl = ((u + 0.08).powi(2) + (v + 0.08).powi(2)).sqrt();
            if r < 0.05 {
                [0.05, 0.05, 0.05]
            } else if hl < 0.06 {
                light
            } else {
                base
            }
        }),
        _ => {
            // lid: a disc with a rim and a pull tab
            (r <= 0.36).then(|| {
                if r > 0.32 {
                    light
                } else if (u - 0.12).abs() < 0.08 && v.abs() < 0.04 {
                    dark
                } else {
                    base
                }
            })
        }
    }
}

const BACKGROUNDS: [[f32; 3]; 5] = [
    [0.12, 0.12, 0.13],
    [0.85, 0.85, 0.83],
    [0.4, 0.4, 0.42],
    [0.2, 0.25, 0.35],
    [0.55, 0.45, 0.33],
];

fn render_object(kind: &str, base: [f32; 3], size: usize, rng: &mut Rng) -> (Canvas, Vec<bool>) {
    let s = size as f32;
    let bg = BACKGROUNDS[rng.int(BACKGROUNDS.len())];
    let bg = jitter(rng, bg, 0.05);
    let mut c = Canvas::new(size, bg);
    let mut support = vec![false; size * size];
    let scale = rng.range(0.75, 1.25);
    let (cx, cy) = (
        s / 2.0 + rng.range(-0.1, 0.1) * s,
        s / 2.0 + rng.range(-0.1, 0.1) * s,
    );
    let ang = rng.range(0.0, TAU);
    let (ca, sa) = (ang.cos(), ang.sin());
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let (u, v) = (
                (dx * ca + dy * sa) / s / scale,
                (-dx * sa + dy * ca) / s / scale,
            );
            if let Some(col) = object_colour(kind, u, v, base) {
                c.px[y * size + x] = col;
                support[y * size + x] = true;
            }
        }
    }
    (c, support)
}

/// The three defect kinds the benchmark does not draw (the others come from [`synth`]).
fn draw_extra_defect(c: &mut Canvas, support: &[bool], kind: &str, boost: f32, rng: &mut Rng) {
    let size = c.size;
    let s = size as f32;
    let (cx, cy) = synth::defect_centre(size, support, rng);
    let scale = rng.range(0.6, 1.6) * s / 128.0 * boost;
    match kind {
        "colour spot" => {
            let col = [rng.f(), rng.f(), rng.f()];
            let r = rng.range(2.5, 6.0) * scale;
            for y in 0..size {
                for x in 0..size {
                    let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                    if d <= r && support[y * size + x] {
                        let p = &mut c.px[y * size + x];
                        *p = mix(*p, col, 0.75);
                    }
                }
            }
        }
        "cut" => {
            // A straight gash: dark core with bright torn edges.
            let ang = rng.range(0.0, TAU);
            let len = rng.range(12.0, 30.0) * scale;
            let (dx, dy) = (ang.cos(), ang.sin());
            for t in 0..(len as usize).max(2) {
                let (x, y) = (cx + dx * t as f32, cy + dy * t as f32);
                let (nx, ny) = (-dy, dx);
                for (o, col) in [
                    (-1.0, [0.9, 0.88, 0.85]),
                    (0.0, [0.03, 0.02, 0.02]),
                    (1.0, [0.9, 0.88, 0.85]),
                ] {
                    c.set(
                        (x + nx * o).round() as i64,
                        (y + ny * o).round() as i64,
                        col,
                    );
                }
            }
        }
        _ => {
            // misprint: a patch of the image shifted (pattern out of register), tinted.
            let (w, h) = (rng.range(8.0, 18.0) * scale, rng.range(8.0, 18.0) * scale);
            let (ox, oy) = (rng.range(3.0, 7.0) * scale, rng.range(-3.0, 3.0) * scale);
            let tint = rng.range(0.15, 0.35);
            let src = c.clone();
            let x0 = (cx - w / 2.0).max(0.0) as usize;
            let y0 = (cy - h / 2.0).max(0.0) as usize;
            for y in y0..((cy + h / 2.0) as usize).min(size) {
                for x in x0..((cx + w / 2.0) as usize).min(size) {
                    let sx = (x as f32 + ox).round().clamp(0.0, s - 1.0) as usize;
                    let sy = (y as f32 + oy).round().clamp(0.0, s - 1.0) as usize;
                    let p = src.px[sy * size + sx];
                    c.px[y * size + x] = mix(p, [p[2], p[0], p[1]], tint);
                }
            }
        }
    }
}

fn draw_any_defect(c: &mut Canvas, support: &[bool], kind: &str, rng: &mut Rng) {
    // Pretraining images are small (64-96 px): draw defects larger than the benchmark does at
    // 128 px so that most cover at least one patch.
    let boost = rng.range(1.2, 2.2);
    match kind {
        "colour spot" | "cut" | "misprint" => draw_extra_defect(c, support, kind, boost, rng),
        k => draw_defect(c, support, k, boost, rng),
    }
}

/// Camera effects applied to both images of a pair alike: lighting, gradient, blur, noise.
fn camera(c: &mut Canvas, rng: &mut Rng) {
    let size = c.size;
    let light = rng.range(0.75, 1.2);
    let (gx, gy) = (rng.range(-0.15, 0.15), rng.range(-0.15, 0.15));
    let blur = rng.f() < 0.25;
    let noise = rng.range(0.0, 0.05);
    if blur {
        let src = c.px.clone();
        for y in 0..size {
            for x in 0..size {
                let mut acc = [0.0f32; 3];
                let mut n = 0.0;
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (xx, yy) = (x as i64 + dx, y as i64 + dy);
                        if xx >= 0 && yy >= 0 && (xx as usize) < size && (yy as usize) < size {
                            let p = src[yy as usize * size + xx as usize];
                            acc = [acc[0] + p[0], acc[1] + p[1], acc[2] + p[2]];
                            n += 1.0;
                        }
                    }
                }
                c.px[y * size + x] = acc.map(|a| a / n);
            }
        }
    }
    let s = size as f32;
    for y in 0..size {
        for x in 0..size {
            let g = 1.0 + gx * (x as f32 / s - 0.5) + gy * (y as f32 / s - 0.5);
            let e = rng.range(-noise, noise);
            let p = &mut c.px[y * size + x];
            *p = p.map(|v| (v * light * g + e).clamp(0.0, 1.0));
        }
    }
}

/// Where the defects lie, in words, from the mask's centroid.
fn position_words(mask: &[bool], size: usize) -> &'static str {
    let (mut sx, mut sy, mut n) = (0f32, 0f32, 0f32);
    for (i, &m) in mask.iter().enumerate() {
        if m {
            sx += (i % size) as f32;
            sy += (i / size) as f32;
            n += 1.0;
        }
    }
    if n == 0.0 {
        return "";
    }
    let (x, y) = (sx / n / size as f32, sy / n / size as f32);
    let col = if x < 0.33 {
        0
    } else if x > 0.67 {
        2
    } else {
        1
    };
    let row = if y < 0.33 {
        0
    } else if y > 0.67 {
        2
    } else {
        1
    };
    match (row, col) {
        (0, 0) => "in the top left corner",
        (0, 1) => "near the top edge",
        (0, _) => "in the top right corner",
        (1, 0) => "on the left side",
        (1, 1) => "in the center",
        (1, _) => "on the right side",
        (_, 0) => "in the bottom left corner",
        (_, 1) => "near the bottom edge",
        _ => "in the bottom right corner",
    }
}

const NUMBERS: [&str; 5] = ["one", "two", "three", "four", "five"];

/// Caption templates for normal images: `{s}` state word, `{o}` object phrase.
const NORMAL_TEMPLATES: [&str; 16] = [
    "a photo of a {s} {o}",
    "a {s} {o}",
    "a close-up photo of a {s} {o}",
    "an image of a {s} {o}",
    "a picture of a {s} {o}",
    "a cropped photo of the {s} {o}",
    "a bright photo of a {s} {o}",
    "a dark photo of a {s} {o}",
    "a blurry photo of a {s} {o}",
    "an industrial photo of a {s} {o}",
    "this is a {s} {o}",
    "a {s} {o} with no defects",
    "a photo of a {s} {o} for visual inspection",
    "a {s} {o} without any damage",
    "the {o} is {s}",
    "inspection image: {s} {o}",
];

/// Caption templates for defective images: `{s}` state, `{o}` object, `{d}` defect phrase,
/// `{p}` position phrase (may be empty).
const ABNORMAL_TEMPLATES: [&str; 18] = [
    "a photo of a {s} {o}",
    "a {s} {o}",
    "a photo of a {s} {o} with {d}",
    "a {s} {o} with {d} {p}",
    "a close-up photo of a {s} {o} with {d}",
    "an image of a {s} {o} showing {d} {p}",
    "a {s} {o} that has {d}",
    "a picture of a {s} {o}: {d} {p}",
    "a blurry photo of a {s} {o}",
    "an industrial photo of a {s} {o} with {d}",
    "this {o} is {s}: it has {d}",
    "the {o} is {s}, with {d} {p}",
    "a {s} {o} with visible {d}",
    "inspection image: {s} {o}, {d}",
    "a cropped photo of the {s} {o}",
    "there is {d} {p} on this {s} {o}",
    "a {s} {o} rejected for {d}",
    "a photo of a {s} {o} with a defect {p}",
];

fn article_phrase(count: usize, singular: &str, plural: &str) -> String {
    if count == 1 {
        let an = matches!(singular.as_bytes()[0], b'a' | b'e' | b'i' | b'o' | b'u');
        format!("{} {singular}", if an { "an" } else { "a" })
    } else {
        format!("{} {plural}", NUMBERS[(count - 1).min(4)])
    }
}

fn caption(
    rng: &mut Rng,
    kind: &str,
    colour: Option<&str>,
    defects: &[&'static str],
    mask: &[bool],
    size: usize,
) -> String {
    // The object phrase: kind, sometimes with its colour.
    let o = match colour {
        Some(c) if rng.f() < 0.5 => format!("{c} {kind}"),
        _ => kind.to_string(),
    };
    let (template, s) = if defects.is_empty() {
        (
            NORMAL_TEMPLATES[rng.int(NORMAL_TEMPLATES.len())],
            NORMAL_WORDS[rng.int(NORMAL_WORDS.len())],
        )
    } else {
        (
            ABNORMAL_TEMPLATES[rng.int(ABNORMAL_TEMPLATES.len())],
            ABNORMAL_WORDS[rng.int(ABNORMAL_WORDS.len())],
        )
    };
    // Defect phrase: the most frequent kind drawn, with its count.
    let d = if let Some(first) = defects.first() {
        let count = defects.iter().filter(|k| *k == first).count();
        let nouns = defect_nouns(first);
        let (sg, pl) = nouns[rng.int(nouns.len())];
        article_phrase(count, sg, pl)
    } else {
        String::new()
    };
    let p = if rng.f() < 0.6 {
        position_words(mask, size)
    } else {
        ""
    };
    let mut text = template
        .replace("{s}", s)
        .replace("{o}", &o)
        .replace("{d}", &d)
        .replace("{p}", p);
    // "a {s}" with a vowel-initial state word.
    for w in NORMAL_WORDS.iter().chain(ABNORMAL_WORDS.iter()) {
        if matches!(w.as_bytes()[0], b'a' | b'e' | b'i' | b'o' | b'u') {
            text = text.replace(&format!(" a {w} "), &format!(" an {w} "));
            if text.starts_with(&format!("a {w} ")) {
                text = format!("an{}", &text[1..]);
            }
        }
    }
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches([' ', ','])
        .to_string()
}

fn finish(
    mut canvas: Canvas,
    clean: Option<&Canvas>,
    scene_kind: &'static str,
    colour: Option<&'static str>,
    defects: Vec<&'static str>,
    cam_seed: u64,
    rng: &mut Rng,
) -> CorpusSample {
    let size = canvas.size;
    // The mask from the defect-drawing step (before camera effects, which both images share).
    let mask: Vec<bool> = match clean {
        Some(cl) => canvas
            .to_rgb8()
            .chunks_exact(3)
            .zip(cl.to_rgb8().chunks_exact(3))
            .map(|(a, b)| a != b)
            .collect(),
        None => vec![false; size * size],
    };
    camera(&mut canvas, &mut Rng::new(cam_seed));
    let caption = caption(rng, scene_kind, colour, &defects, &mask, size);
    CorpusSample {
        image: canvas.to_rgb8(),
        size,
        caption,
        kind: scene_kind,
        colour,
        defects,
        mask,
    }
}

/// Draw 1-3 defects (same kind in most cases, so "two scratches" can be said) until pixels change.
fn add_defects(scene: &Scene, rng: &mut Rng) -> (Canvas, Vec<&'static str>) {
    let clean = scene.canvas.to_rgb8();
    for _ in 0..4 {
        let mut c = scene.canvas.clone();
        let first = DEFECTS[rng.int(DEFECTS.len())];
        let n = if rng.f() < 0.3 { 2 + rng.int(2) } else { 1 };
        let mut kinds = Vec::new();
        for i in 0..n {
            let k = if i == 0 || rng.f() < 0.75 {
                first
            } else {
                DEFECTS[rng.int(DEFECTS.len())]
            };
            draw_any_defect(&mut c, &scene.support, k, rng);
            kinds.push(k);
        }
        if c.to_rgb8() != clean {
            return (c, kinds);
        }
    }
    // Nothing changed four times (e.g. a stain on saturated pixels): a hole always shows.
    let mut c = scene.canvas.clone();
    draw_defect(&mut c, &scene.support, "hole", 2.0, rng);
    (c, vec!["hole"])
}

/// Sample `index` of stream `seed`: normal or defective with probability one half.
pub fn sample(seed: u64, index: u64, size: usize) -> CorpusSample {
    let mut rng = Rng::new(key(seed, index));
    let scene = render_scene(size, &mut rng);
    let cam = rng.next_u64();
    if rng.f() < 0.5 {
        finish(
            scene.canvas,
            None,
            scene.kind,
            scene.colour,
            vec![],
            cam,
            &mut rng,
        )
    } else {
        let (c, defects) = add_defects(&scene, &mut rng);
        finish(
            c,
            Some(&scene.canvas),
            scene.kind,
            scene.colour,
            defects,
            cam,
            &mut rng,
        )
    }
}

/// One scene twice, under the same camera: `(normal, defective)`. Hard negatives for the
/// contrastive batch: only the defect tells the two apart.
pub fn pair(seed: u64, index: u64, size: usize) -> (CorpusSample, CorpusSample) {
    let mut rng = Rng::new(key(seed, index) ^ 0x0A11_CE5E_ED00_0001);
    let scene = render_scene(size, &mut rng);
    let cam = rng.next_u64();
    let (c, defects) = add_defects(&scene, &mut rng);
    let defective = finish(
        c,
        Some(&scene.canvas),
        scene.kind,
        scene.colour,
        defects,
        cam,
        &mut rng,
    );
    let normal = finish(
        scene.canvas,
        None,
        scene.kind,
        scene.colour,
        vec![],
        cam,
        &mut rng,
    );
    (normal, defective)
}

/// Batch `b` of stream `seed`: `pairs` hard-negative pairs then independent samples, `n` in
/// all. Deterministic in (seed, b, n, pairs, size); parallel over samples.
pub fn batch(seed: u64, b: u64, n: usize, pairs: usize, size: usize) -> Vec<CorpusSample> {
    use rayon::prelude::*;
    let pairs = pairs.min(n / 2);
    let base = b.wrapping_mul(n as u64);
    let mut out: Vec<CorpusSample> = (0..pairs)
        .into_par_iter()
        .flat_map_iter(|i| {
            let (a, d) = pair(seed, base + i as u64, size);
            [a, d]
        })
        .collect();
    out.extend(
        (2 * pairs..n)
            .into_par_iter()
            .map(|i| sample(seed, base + i as u64, size))
            .collect::<Vec<_>>(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_forty_kinds_ten_defects_thirty_templates() {
        let k = kinds();
        assert!(k.len() >= 40, "{}", k.len());
        let mut dedup = k.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), k.len());
        for (_, cats) in synth::DOMAINS {
            for c in cats {
                assert!(k.contains(&c));
            }
        }
        assert!(DEFECTS.len() >= 10);
        assert!(NORMAL_TEMPLATES.len() + ABNORMAL_TEMPLATES.len() >= 30);
    }

    #[test]
    fn every_kind_and_defect_renders_and_changes_pixels() {
        let mut rng = Rng::new(7);
        for kind in TEXTURES.iter().chain(OBJECTS.iter()) {
            let (c, support) = if TEXTURES.contains(kind) {
                (
                    render_texture(kind, [0.5, 0.3, 0.2], 64, &mut rng),
                    vec![true; 64 * 64],
                )
            } else {
                render_object(kind, [0.5, 0.3, 0.2], 64, &mut rng)
            };
            let n = support.iter().filter(|&&s| s).count();
            assert!(n > 100, "{kind}: support of {n} pixels");
            for d in DEFECTS {
                let mut changed = false;
                for _ in 0..5 {
                    let mut cc = c.clone();
                    draw_any_defect(&mut cc, &support, d, &mut rng);
                    changed |= cc.to_rgb8() != c.to_rgb8();
                }
                assert!(changed, "{kind}/{d} never changed a pixel");
            }
        }
    }
}

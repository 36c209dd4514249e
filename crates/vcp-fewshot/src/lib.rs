//! # vcp-fewshot: few-shot references
//!
//! `k` normal images of the target category, used two ways.
//!
//! * **Patch memory bank** (WinCLIP+ / APRIL-GAN few-shot): per tapped layer, the L2-normalised
//!   patch tokens of the references form a bank; a test patch's anomaly is
//!   `1 - max_j cos(patch, bank_j)`, averaged over the layers, upsampled like the zero-shot maps
//!   and blended into the final map with a weight.
//! * **Reference-conditioned normal prompt** (the reading note's idea): per tapped layer, the
//!   references' patch features mapped by the patch head into the joint space and averaged
//!   (normalised) describe "normal" for this category better than a word can; the normal text
//!   embedding is blended towards it, `normalize((1 - a) t_normal + a pooled)`.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_core::ops::{upsample, Upsample};
use vcp_core::{l2norm, Features, FewShot, Registry};

/// Register `[fewshot] kind = "references"` (the default kind of the slot).
pub fn register(reg: &mut Registry) {
    reg.fewshot.register::<FewShotConfig>(
        "references",
        "k normal references: patch memory bank and/or reference-conditioned normal prompt",
        |c, _| {
            c.validate().map_err(candle_core::Error::Msg)?;
            Ok(Some(Box::new(ReferenceFewShot(c.clone()))))
        },
    );
}

/// The memory bank and the reference-conditioned normal prompt, as configured.
pub struct ReferenceFewShot(pub FewShotConfig);

impl FewShot for ReferenceFewShot {
    fn shots(&self) -> usize {
        self.0.k
    }
    fn seed(&self) -> u64 {
        self.0.seed
    }
    fn condition_text(&self, text: &Tensor, pooled: &Tensor) -> Result<Tensor> {
        condition_text(text, pooled, self.0.normal_prompt)
    }
    fn conditions_text(&self) -> bool {
        self.0.normal_prompt > 0.0
    }
    fn memory_bank_weight(&self) -> f64 {
        self.0.memory_bank
    }
}

/// `[fewshot]` (`kind = "references"`, the default): `k` normal images of the target category
/// (its `train` split), drawn with `seed` mixed with the run's seed; the images used are
/// recorded with the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FewShotConfig {
    /// Reference images per category (0 = zero-shot).
    #[serde(default)]
    pub k: usize,
    #[serde(default)]
    pub seed: u64,
    /// Weight of the patch memory-bank map in the final map (WinCLIP+ / APRIL-GAN few-shot):
    /// `(1 - w) zero_shot + w (1 - max cos(patch, bank))`; 0 = off.
    #[serde(default)]
    pub memory_bank: f64,
    /// Reference-conditioned normal prompt: the normal text embedding of each layer becomes
    /// `normalize((1 - a) t_normal + a pooled(refs))`, with the references' patch features mapped
    /// by the patch head and averaged; 0 = off, 1 = replaced.
    #[serde(default)]
    pub normal_prompt: f64,
}

impl FewShotConfig {
    pub fn is_off(&self) -> bool {
        self.k == 0
    }

    /// Values that cannot work, as one-line messages naming the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.memory_bank) || !(0.0..=1.0).contains(&self.normal_prompt) {
            return Err("fewshot.memory_bank and fewshot.normal_prompt must be in [0, 1]".into());
        }
        if self.k > 0 && self.memory_bank == 0.0 && self.normal_prompt == 0.0 {
            return Err(
                "fewshot.k > 0 but neither fewshot.memory_bank nor fewshot.normal_prompt is set"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What the references give, per tapped layer.
#[derive(Debug, Clone)]
pub struct References {
    /// `[k N, W]` normalised patch tokens.
    pub bank: Vec<Tensor>,
    /// `[D]` normalised pooled patch embeddings in the joint space (after the patch head).
    pub pooled: Vec<Tensor>,
    /// The reference images (dataset-relative paths), in order.
    pub paths: Vec<String>,
}

impl References {
    /// # Shapes
    /// `f`: features of the `k` references; `project(i, patches [k, N, W])` → `[k, N, D]`.
    pub fn new(
        f: &Features,
        paths: Vec<String>,
        project: impl Fn(usize, &Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        let n = f.grid * f.grid;
        let mut bank = Vec::new();
        let mut pooled = Vec::new();
        for (i, t) in f.layers.iter().enumerate() {
            let patches = t.narrow(1, 1, n)?; // [k, N, W]
            let (k, _, w) = patches.dims3()?;
            bank.push(l2norm(&patches.reshape((k * n, w))?)?.detach());
            let e = l2norm(&project(i, &patches)?)?; // [k, N, D]
            let d = e.dim(2)?;
            pooled.push(
                l2norm(&e.reshape((k * n, d))?.mean_keepdim(0)?)?
                    .squeeze(0)?
                    .detach(),
            );
        }
        Ok(Self {
            bank,
            pooled,
            paths,
        })
    }

    /// Memory-bank anomaly maps, mean over layers, upsampled to `size`.
    ///
    /// # Shapes
    /// `f`: test features → `[B, S, S]`.
    pub fn memory_bank_maps(&self, f: &Features, size: usize, mode: Upsample) -> Result<Tensor> {
        let g = f.grid;
        let n = g * g;
        let mut acc: Option<Tensor> = None;
        for (i, t) in f.layers.iter().enumerate() {
            let patches = l2norm(&t.narrow(1, 1, n)?)?; // [B, N, W]
            let sim = patches.broadcast_matmul(&self.bank[i].t()?)?; // [B, N, kN]
            let a = (1.0 - sim.max(2)?)?; // [B, N]
            acc = Some(match acc {
                Some(x) => (x + a)?,
                None => a,
            });
        }
        let b = f.batch()?;
        let m = (acc.expect("at least one tap") / f.layers.len() as f64)?;
        upsample(&m.reshape((b, 1, g, g))?, size, mode)?.squeeze(1)
    }
}

/// The reference-conditioned normal prompt: the normal embedding blended towards the
/// references' pooled embedding of the layer, `normalize((1 - a) t_normal + a pooled)`; the
/// abnormal embedding is kept.
///
/// # Shapes
/// `text`: [B, 2, D], `pooled`: [D] → [B, 2, D].
pub fn condition_text(text: &Tensor, pooled: &Tensor, a: f64) -> Result<Tensor> {
    if a <= 0.0 {
        return Ok(text.clone());
    }
    let normal = text.narrow(1, 0, 1)?; // [B, 1, D]
    let pooled = pooled.reshape((1, 1, ()))?;
    let normal = l2norm(&((normal * (1.0 - a))?.broadcast_add(&(pooled * a)?)?))?;
    Tensor::cat(&[&normal, &text.narrow(1, 1, 1)?], 1)
}

/// `k` distinct indices out of `n`, drawn with `seed` mixed with the category name (so each
/// category gets its own draw, and a seed fixes all of them).
pub fn select(n: usize, k: usize, seed: u64, category: &str) -> Vec<usize> {
    let h = category.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = vcp_data::rng::SplitMix64(seed ^ h);
    let mut idx: Vec<usize> = (0..n).collect();
    // Partial Fisher-Yates.
    for i in 0..k.min(n) {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(k.min(n));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A toy bank checked by hand: grid 1x2, one layer, width 2.
    #[test]
    fn memory_bank_score_by_hand() {
        let dev = Device::Cpu;
        // References: one image, tokens [cls, (1,0), (0,1)].
        let refs = Features {
            layers: vec![Tensor::new(&[[[9f32, 9.0], [2.0, 0.0], [0.0, 3.0]]], &dev).unwrap()],
            global: Tensor::zeros((1, 2), candle_core::DType::F32, &dev).unwrap(),
            grid: 1,
        };
        // grid 1 → N = 1: only the first patch is used; use grid 1 with a one-patch bank.
        let r = References::new(&refs, vec!["a.png".into()], |_, p| Ok(p.clone())).unwrap();
        assert_eq!(r.bank[0].dims(), &[1, 2]);
        // Test patch (1, 1): cos with (1, 0) = 1/sqrt 2 → anomaly 1 - 0.7071.
        let test = Features {
            layers: vec![Tensor::new(&[[[0f32, 0.0], [1.0, 1.0]]], &dev).unwrap()],
            global: Tensor::zeros((1, 2), candle_core::DType::F32, &dev).unwrap(),
            grid: 1,
        };
        let m = r
            .memory_bank_maps(&test, 2, Upsample::BilinearAlignCorners)
            .unwrap();
        let v = m.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = 1.0 - 0.5f32.sqrt();
        assert_eq!(v.len(), 4);
        for x in v {
            assert!((x - want).abs() < 1e-6, "{x} vs {want}");
        }
        // Pooled embedding of one normalised patch = that patch, normalised.
        let p = r.pooled[0].to_vec1::<f32>().unwrap();
        assert!((p[0] - 1.0).abs() < 1e-6 && p[1].abs() < 1e-6);
    }

    #[test]
    fn two_layers_and_a_larger_bank() {
        let dev = Device::Cpu;
        // grid 2 (4 patches), two references → bank of 8; a test patch equal to a bank entry
        // scores 0, its negation scores 2.
        let t = |v: Vec<f32>, b: usize| Tensor::from_vec(v, (b, 5, 3), &dev).unwrap();
        let mut refs_v = Vec::new();
        for i in 0..10 {
            refs_v.extend([i as f32 + 1.0, (i * 7 % 5) as f32, 1.0]);
        }
        let refs = Features {
            layers: vec![t(refs_v.clone(), 2), t(refs_v.clone(), 2)],
            global: Tensor::zeros((2, 2), candle_core::DType::F32, &dev).unwrap(),
            grid: 2,
        };
        let r = References::new(&refs, vec![], |_, p| Ok(p.clone())).unwrap();
        assert_eq!(r.bank[1].dims(), &[8, 3]);
        let mut test = refs_v[..15].to_vec();
        // patch 0 of the test image := minus the first reference's patch 0 (row 1)
        test[3] = -refs_v[3];
        test[4] = -refs_v[4];
        test[5] = -refs_v[5];
        let test = Features {
            layers: vec![t(test.clone(), 1), t(test, 1)],
            global: Tensor::zeros((1, 2), candle_core::DType::F32, &dev).unwrap(),
            grid: 2,
        };
        // Hand computation for patch 0: 1 - max over the bank of cos(-p, b).
        let bank: Vec<[f32; 3]> = (0..2)
            .flat_map(|im| (1..5).map(move |j| im * 5 + j))
            .map(|row| [refs_v[row * 3], refs_v[row * 3 + 1], refs_v[row * 3 + 2]])
            .collect();
        let p = [-refs_v[3], -refs_v[4], -refs_v[5]];
        let norm = |a: &[f32; 3]| (a.iter().map(|x| x * x).sum::<f32>()).sqrt();
        let best = bank
            .iter()
            .map(|b| (p[0] * b[0] + p[1] * b[1] + p[2] * b[2]) / (norm(&p) * norm(b)))
            .fold(f32::NEG_INFINITY, f32::max);
        let m = r
            .memory_bank_maps(&test, 2, Upsample::BilinearAlignCorners)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert!((m[0][0][0] - (1.0 - best)).abs() < 1e-5);
        // The other patches are in the bank exactly.
        for (y, x) in [(0, 1), (1, 0), (1, 1)] {
            assert!(m[0][y][x].abs() < 1e-5, "{}", m[0][y][x]);
        }
    }

    #[test]
    fn selection_is_seeded_distinct_and_per_category() {
        let a = select(12, 4, 0, "cat1");
        assert_eq!(a, select(12, 4, 0, "cat1"));
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 4);
        assert!(a.iter().all(|&i| i < 12));
        assert_ne!(a, select(12, 4, 1, "cat1"));
        assert_ne!(a, select(12, 4, 0, "cat2"));
        assert_eq!(select(3, 8, 0, "x").len(), 3);
    }
}

//! Both towers together, built once from [`ClipWeights`] for one input size.

use crate::config::{Activation, ClipConfig};
use crate::error::Result;
use crate::text::TextTower;
use crate::vision::{DensePath, VisionTower};
use crate::weights::ClipWeights;
use candle_core::DType;

/// Options that are not part of the checkpoint.
#[derive(Debug, Clone)]
pub struct ClipOptions {
    /// Input size of the image tower (positional embedding resized to it); `None` = native.
    pub image_size: Option<usize>,
    /// Override the checkpoint's activation (VCP-CLIP runs OpenAI weights with exact GELU).
    pub activation: Option<Activation>,
    /// Zero rows appended to the token table for added special tokens (1 for `<|class|>`).
    pub extra_tokens: usize,
    /// Compute dtype of both towers (f32, or bf16/f16 mixed precision: LayerNorm and softmax
    /// stay f32, outputs are f32).
    pub dtype: DType,
    /// Dense path of the image tower (dense-CLIP variants).
    pub dense: DensePath,
}

impl Default for ClipOptions {
    fn default() -> Self {
        Self {
            image_size: None,
            activation: None,
            extra_tokens: 1,
            dtype: DType::F32,
            dense: DensePath::None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Clip {
    pub config: ClipConfig,
    pub activation: Activation,
    pub vision: VisionTower,
    pub text: TextTower,
}

static LOW_PRECISION_ON_CPU: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Let bf16/f16 towers compute in low precision on a CPU too (off by default). candle's CPU
/// backend has no bf16/f16 matmul kernel: it widens every product to f32 and back, which makes
/// a "faster" dtype 1.2-2x *slower* than f32 (results/bench/clip_cpu.md). So by default a CPU
/// tower asked for bf16/f16 keeps its matmuls in f32 and says so once; tests of the
/// low-precision arithmetic itself switch this on.
pub fn allow_low_precision_on_cpu(on: bool) {
    LOW_PRECISION_ON_CPU.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The dtype the towers really compute in on `device` (see [`allow_low_precision_on_cpu`]).
pub fn effective_dtype(dtype: DType, device: &candle_core::Device) -> DType {
    use std::sync::atomic::Ordering::Relaxed;
    if dtype == DType::F32 || !device.is_cpu() || LOW_PRECISION_ON_CPU.load(Relaxed) {
        return dtype;
    }
    static NOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !NOTED.swap(true, Relaxed) {
        eprintln!(
            "note: {dtype:?} on a CPU: the matmuls run in f32 (candle has no fast {dtype:?} CPU kernel; f32 is faster here); low precision pays on a GPU"
        );
    }
    DType::F32
}

impl Clip {
    pub fn new(w: &ClipWeights, opts: &ClipOptions) -> Result<Self> {
        let activation = opts.activation.unwrap_or(w.config.activation);
        let size = opts.image_size.unwrap_or(w.config.vision.image_size);
        let device = w
            .tensors()
            .values()
            .next()
            .map(|t| t.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let dtype = effective_dtype(opts.dtype, &device);
        let cast;
        let w = if dtype == DType::F32 {
            w
        } else {
            cast = w.cast_compute(dtype)?;
            &cast
        };
        let mut vision = VisionTower::new(w, size, activation)?;
        vision.set_dense_path(opts.dense)?;
        Ok(Self {
            config: w.config.clone(),
            activation,
            vision,
            text: TextTower::new(w, activation, opts.extra_tokens)?,
        })
    }
}

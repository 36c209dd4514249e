//! # vcp-data: datasets for zero-shot anomaly segmentation
//!
//! No tensor library: plain arrays for images, masks and maps.
//! * [`meta`]: the `meta.json` convention (APRIL-GAN / AnomalyCLIP / VCP-CLIP), strict.
//! * [`mask`]: masks read as the references do (Pillow bilinear resize, `> 0.5`).
//! * [`npy`]: 2-D float maps in NumPy format.
//! * [`resample`]: Pillow- and PyTorch-exact antialiased resampling.
//! * [`dataset`]: samples and prefetched batches; [`synth`]: the built-in defect benchmark.

pub mod augment;
pub mod corpus;
pub mod dataset;
pub mod decode;
pub mod error;
pub mod formats;
pub mod interrupt;
pub mod io;
pub mod mask;
pub mod meta;
pub mod npy;
pub mod process;
pub mod resample;
pub mod rng;
pub mod synth;

pub use error::{DataError, Result};
pub use meta::{Meta, Record, Split};

//! # vcp-metrics: exact, fast anomaly-segmentation metrics
//!
//! Pure Rust (no tensor library). Each metric reproduces a named reference to floating-point
//! precision: scikit-learn (`roc_auc_score`, `average_precision_score`, `precision_recall_curve`
//! F1-max), the cflow-style AUPRO of the zero-shot repositories (`aupro_px`), the MVTec-official
//! AUPRO (`aupro30_px`), VCP-CLIP's IoU at the F1 threshold. Per category, all pixels of all
//! images are pooled; [`mean_over_categories`] gives the unweighted mean the papers report.
//!
//! Speed: one radix sort per category serves every threshold-sweep metric, and the 200-threshold
//! AUPRO bins each pixel once instead of re-labelling the masks 200 times; images are processed
//! in parallel (rayon).

pub mod aupro;
pub mod category;
pub mod components;
pub mod curve;

pub use category::{
    evaluate_category, image_metrics, mean_over_categories, pixel_metrics, top1_percent,
    CategoryMetrics, CategoryReport, Curves, MapRef, MetricsError, COLUMNS,
};
pub use curve::{binary_metrics, SweepResult};

//! `vcp features` and `vcp text-embed`: what the backbone computes, written to safetensors for
//! inspection and for comparison with other implementations.

use crate::util::{parse_layers, save_safetensors};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use vcp_clip::{Clip, ClipOptions};

#[derive(clap::Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    clip: crate::args::ClipArgs,
    /// Input image (png, jpg, bmp, tif).
    #[arg(long)]
    image: PathBuf,
    /// Square input size (positional embedding resized); default: the model's native size.
    #[arg(long)]
    size: Option<usize>,
    /// Blocks whose output to write (1-based); default: every quarter of the depth.
    #[arg(long)]
    layers: Option<String>,
    /// Output .safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Device: cpu, cuda, cuda:N or auto. Default cpu (not auto, unlike the model commands):
    /// the features are compared with other implementations' CPU numbers.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype of the towers: f32, bf16 or f16 (LayerNorm and softmax stay f32; the
    /// written features are f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16"])]
    dtype: String,
    /// Also time N more forwards of the same input and print the mean (benchmarks).
    #[arg(long, default_value_t = 0, hide = true)]
    bench_iters: usize,
}

#[derive(clap::Args)]
pub struct TextArgs {
    #[command(flatten)]
    clip: crate::args::ClipArgs,
    #[arg(long)]
    out: PathBuf,
    /// Texts to embed.
    #[arg(required = true)]
    text: Vec<String>,
}

pub fn run_features(a: FeaturesArgs) -> Result<()> {
    // Refuse a bad output path before the work, not after it.
    vcp_data::io::check_target(&a.out)?;
    let dev = crate::common::device(Some(&a.device))?;
    let w = a.clip.weights(&dev)?;
    let depth = w.config.vision.layers;
    let layers = match &a.layers {
        Some(s) => parse_layers(s)?,
        None => (1..=4).map(|q| (depth * q / 4).max(1)).collect(),
    };
    let size = a.size.unwrap_or(w.config.vision.image_size);
    let opts = ClipOptions {
        image_size: Some(size),
        activation: a.clip.activation()?,
        extra_tokens: 1,
        dtype: crate::common::dtype(&a.dtype)?,
        ..Default::default()
    };
    let clip = Clip::new(&w, &opts)?;
    let pixels = vcp_clip::preprocess::preprocess_file(&a.image, size, &dev)?.unsqueeze(0)?;
    let out = clip.vision.forward(&pixels, &layers)?;
    if a.bench_iters > 0 {
        let t0 = std::time::Instant::now();
        for _ in 0..a.bench_iters {
            let o = clip.vision.forward(&pixels, &layers)?;
            // Wait for the device (GPU kernels run asynchronously).
            o.global.to_device(&Device::Cpu)?;
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0 / a.bench_iters as f64;
        outln!(
            "{{\"forward_ms\": {ms:.2}, \"iters\": {}, \"threads\": {}}}",
            a.bench_iters,
            rayon::current_num_threads()
        );
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert("global".into(), out.global.squeeze(0)?);
    for (k, t) in &out.layers {
        tensors.insert(format!("layer_{k}"), t.squeeze(0)?.contiguous()?);
    }
    save_safetensors(&tensors, &a.out)?;
    eprintln!(
        "wrote {} (global [{}], layers {:?} of [{}, {}])",
        a.out.display(),
        out.global.dim(1)?,
        layers,
        1 + out.grid * out.grid,
        clip.vision.width()
    );
    Ok(())
}

pub fn run_text(a: TextArgs) -> Result<()> {
    vcp_data::io::check_target(&a.out)?;
    let dev = Device::Cpu;
    let w = a.clip.weights(&dev)?;
    let clip = Clip::new(
        &w,
        &ClipOptions {
            activation: a.clip.activation()?,
            ..Default::default()
        },
    )?;
    let tok = vcp_clip::Tokenizer::vcp()?;
    let ctx = clip.text.context_length();
    let ids: Vec<u32> = a
        .text
        .iter()
        .map(|t| tok.tokenize(t, ctx, true))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let ids = Tensor::from_vec(ids, (a.text.len(), ctx), &dev)?;
    let emb = clip.text.forward_ids(&ids).context("text forward")?;
    let mut tensors = HashMap::new();
    tensors.insert("text".to_string(), emb);
    save_safetensors(&tensors, &a.out)?;
    eprintln!(
        "wrote {} (text [{}, {}])",
        a.out.display(),
        a.text.len(),
        clip.text.embed_dim()?
    );
    Ok(())
}

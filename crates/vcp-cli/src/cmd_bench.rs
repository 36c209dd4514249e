//! `vcp bench`: throughput of the backbone, full VCP-CLIP inference and one training step on
//! random weights of a preset, on any device and dtype; one JSON line per measurement (what
//! `tools/bench_gpu.sh` collects into results/bench/gpu.md). Peak memory is measured outside
//! (nvidia-smi on a GPU, peak RSS on the CPU, also printed here).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer;
use vcp_clip::{ClipConfig, ClipWeights};
use vcp_model::Registry;
use vcp_model::{presets, VcpModel};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub threads: crate::args::ThreadArgs,
    /// CLIP preset with random weights (vit_l_14_336, vit_b_16, tiny, ...).
    #[arg(long, default_value = "vit_l_14_336")]
    preset: String,
    /// Input size (518 in VCP-CLIP).
    #[arg(long, default_value_t = 518)]
    size: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(flatten)]
    dev: crate::args::DeviceArgs,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Comma-separated: backbone, infer, train; or `pretrain` alone (one step of
    /// `vcp pretrain-clip --config`: forward, backward and AdamW on the config's batch).
    #[arg(long, default_value = "backbone,infer,train")]
    what: String,
    /// Pretraining recipe for `--what pretrain`.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Images per backward pass in the training step (default: the whole batch).
    #[arg(long)]
    loss_chunk: Option<usize>,
    /// Run candle's composed LayerNorm/softmax/QuickGELU/bias add instead of the fused CPU
    /// kernels with analytic backward (the "before" side of a comparison).
    #[arg(long)]
    plain_kernels: bool,
}

/// Seconds for `iters` calls of `f` after one warm-up call, the device synchronised around them.
fn timed(dev: &Device, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    let t = std::time::Instant::now();
    for _ in 0..iters {
        f()?;
    }
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(a: Args, reg: &Registry) -> Result<()> {
    let dev = a.dev.device()?;
    vcp_clip::fused::set_enabled(!a.plain_kernels);
    if a.what.split(',').any(|w| w.trim() == "pretrain") {
        return pretrain_step(&a, &dev);
    }
    if a.config.is_some() {
        bail!("--config is for --what pretrain");
    }
    let cfg = ClipConfig::preset(&a.preset)?;
    let mut bb = presets::vit_l_14_336_at_518("");
    bb.preset = a.preset.clone();
    bb.image_size = a.size;
    let d = cfg.vision.layers;
    bb.taps = (1..=4).map(|q| d * q / 4).collect();
    let dtype = a.dev.dtype.as_deref().unwrap_or("f32");
    bb.dtype = dtype.parse().map_err(anyhow::Error::msg)?;
    let w = ClipWeights::random(&cfg, 0, &dev)?;
    let mut mc = presets::vcp_clip(bb, cfg.text.layers);
    mc.deep_prompt.set("dropout", 0.0);
    let model = VcpModel::new(reg, &mc, &w, 0, &dev).map_err(|e| anyhow::anyhow!("{e}"))?;
    drop(w);
    let b = a.batch;
    let s = a.size;
    let px = Tensor::randn(0f32, 1.0, (b, 3, s, s), &dev)?;
    let gt = Tensor::rand(0f32, 1.0, (b, s, s), &dev)?
        .ge(0.97)?
        .to_dtype(DType::F32)?;
    let emit = |what: &str, secs: f64| {
        let ms = secs * 1000.0 / a.iters as f64;
        outln!(
            "{}",
            serde_json::json!({
                "what": what, "preset": a.preset, "size": s, "batch": b, "dtype": dtype,
                "device": format!("{:?}", dev), "iters": a.iters,
                "ms_per_batch": (ms * 100.0).round() / 100.0,
                "img_per_s": ((b as f64 / (ms / 1000.0)) * 100.0).round() / 100.0,
                "loss_chunk": a.loss_chunk,
                "peak_rss_mib": vcp_runner::train::peak_rss_mib(),
            })
        );
    };
    for what in a.what.split(',').map(str::trim) {
        match what {
            "backbone" => {
                let secs = timed(&dev, a.iters, || {
                    model.encode_images(&px)?.global.to_device(&Device::Cpu)?;
                    Ok(())
                })?;
                emit("backbone", secs);
            }
            "infer" => {
                // Backbone, text with Pre-VCP/DTP, both branches, maps at full size.
                let secs = timed(&dev, a.iters, || {
                    let feats = model.encode_images(&px)?;
                    let lg = model.logits(&feats, "object", false, false)?;
                    std::hint::black_box(model.image_maps(&lg, s)?);
                    Ok(())
                })?;
                emit("infer", secs);
            }
            "train" => {
                let secs = train_steps(&model, &px, &gt, a.loss_chunk, a.iters, &dev)?;
                emit("train", secs);
            }
            other => bail!("--what `{other}`: expected backbone, infer or train"),
        }
    }
    Ok(())
}

/// Seconds for `iters` VCP-CLIP training steps on one batch (after one warm-up): features,
/// the loss in chunks of `loss_chunk` images with gradients summed, one AdamW update.
fn train_steps(
    model: &VcpModel,
    px: &Tensor,
    gt: &Tensor,
    loss_chunk: Option<usize>,
    iters: usize,
    dev: &Device,
) -> Result<f64> {
    let b = px.dim(0)?;
    let vars: Vec<_> = model.params.vars().into_iter().map(|(_, v)| v).collect();
    let mut opt = candle_nn::AdamW::new(
        vars.clone(),
        candle_nn::ParamsAdamW {
            lr: 4e-5,
            beta1: 0.5,
            beta2: 0.999,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let chunk = loss_chunk.unwrap_or(b).max(1);
    let mut step = || -> Result<f32> {
        let feats = model.encode_images(px)?;
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        let mut total = 0f32;
        for start in (0..b).step_by(chunk) {
            let idx: Vec<usize> = (start..(start + chunk).min(b)).collect();
            let ids = Tensor::from_vec(
                idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                idx.len(),
                dev,
            )?;
            let lg = model.logits(&feats.select(&idx)?, "object", true, false)?;
            let (l, _) = model.loss(&lg, &gt.index_select(&ids, 0)?)?;
            let l = (l * (idx.len() as f64 / b as f64))?;
            total += l.to_scalar::<f32>()?;
            grads = Some(vcp_runner::train::accumulate(grads, l.backward()?, &vars)?);
        }
        opt.step(&grads.context("empty batch")?)?;
        Ok(total)
    };
    timed(dev, iters, || {
        let l = step()?;
        if !l.is_finite() {
            bail!("training step gave loss {l}");
        }
        Ok(())
    })
}

/// `--what pretrain`: seconds per pretraining step of a recipe (batches of its own corpus, made
/// before timing; the loss and AdamW update exactly as `vcp pretrain-clip` does them).
fn pretrain_step(a: &Args, dev: &Device) -> Result<()> {
    if a.what.trim() != "pretrain" {
        bail!("--what pretrain cannot be combined with other measurements");
    }
    let path = a
        .config
        .as_ref()
        .context("--what pretrain needs --config (e.g. experiments/pretrain_tiny_clip.toml)")?;
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let cfg = vcp_pretrain::PretrainConfig::load(path)?;
    let tok = vcp_clip::Tokenizer::clip()?;
    let batches: Vec<_> = (0..=a.iters)
        .map(|s| vcp_pretrain::trainer::make_batch(&cfg, &tok, s))
        .collect::<Result<_>>()?;
    let n = cfg.train.batch_size;
    let mut tr = vcp_pretrain::Trainer::new(cfg.clone(), dev.clone())?;
    tr.train_step(&batches[0])?; // warm-up
    dev.synchronize()?;
    let t = std::time::Instant::now();
    let mut losses = Vec::with_capacity(a.iters);
    for b in &batches[1..] {
        losses.push(tr.train_step(b)?);
    }
    let last = losses.last().copied().unwrap_or(0.0);
    dev.synchronize()?;
    let secs = t.elapsed().as_secs_f64() / a.iters as f64;
    outln!(
        "{}",
        serde_json::json!({
            "what": "pretrain", "config": path.display().to_string(),
            "kernels": if a.plain_kernels { "plain" } else { "fused" },
            "size": cfg.model.vision.image_size, "batch": n,
            "device": format!("{:?}", dev), "threads": rayon::current_num_threads(),
            "iters": a.iters,
            "ms_per_step": (secs * 1e5).round() / 100.0,
            "img_per_s": ((n as f64 / secs) * 100.0).round() / 100.0,
            "last_loss": last,
            "losses": losses,
            "peak_rss_mib": vcp_runner::train::peak_rss_mib(),
        })
    );
    Ok(())
}

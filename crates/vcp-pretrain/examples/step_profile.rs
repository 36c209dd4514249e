//! Where a pretraining step's time goes: batch generation, forward, backward, update.
//! `cargo run --release -p vcp-pretrain --example step_profile -- experiments/pretrain_tiny_clip.toml`
use std::time::Instant;
use vcp_pretrain::{PretrainConfig, Trainer};

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).expect("config path");
    let cfg = PretrainConfig::load(std::path::Path::new(&path))?;
    let mut tr = Trainer::new(cfg, candle_core::Device::Cpu)?;
    for i in 0..4 {
        let t = Instant::now();
        let b = tr.batch_for_step(i)?;
        let tg = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let clip = tr.model()?;
        let tb = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (img, txt) = tr.embed(&clip, &b)?;
        let _ = (
            img.sum_all()?.to_scalar::<f32>()?,
            txt.sum_all()?.to_scalar::<f32>()?,
        );
        let tf = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let l = tr.loss(&b)?;
        let g = l.backward()?;
        let tfb = t.elapsed().as_secs_f64();
        drop(g);
        let t = Instant::now();
        tr.train_step(&b)?;
        let ts = t.elapsed().as_secs_f64();
        println!("gen {tg:.3}s build {tb:.3}s fwd {tf:.3}s fwd+bwd {tfb:.3}s full step {ts:.3}s ({} img)", b.n);
    }
    Ok(())
}

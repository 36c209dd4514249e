//! `vcp`: the command line of the VCP-CLIP research workspace.

/// `println!` that never panics: a closed pipe (`vcp ... | head`) ends the program quietly with
/// status 0, any other write error (a full disk, `> /dev/full`) is a one-line error, status 1.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::util::write_stdout(&format!($($arg)*))
    };
}

mod allocator;
mod args;
mod cmd_ablate;
mod cmd_bench;
mod cmd_data;
mod cmd_demo;
mod cmd_eval;
mod cmd_eval_maps;
mod cmd_features;
mod cmd_new_component;
mod cmd_predict;
mod cmd_pretrain;
mod cmd_tokenize;
mod cmd_train;
mod cmd_weights;
mod common;
mod components;
mod util;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vcp",
    version,
    about = "CLIP-based zero-shot anomaly segmentation (VCP-CLIP) in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print CLIP token ids (JSON, one list per text).
    Tokenize(cmd_tokenize::Args),
    /// Write an image's tapped residual streams and global embedding to safetensors.
    Features(cmd_features::FeaturesArgs),
    /// Write projected text embeddings to safetensors.
    TextEmbed(cmd_features::TextArgs),
    /// Score anomaly maps (.npy) of any method against a meta.json dataset.
    EvalMaps(cmd_eval_maps::Args),
    /// Datasets: the synthetic benchmark.
    #[command(subcommand)]
    Data(cmd_data::Command),
    /// Train the trainable components (reference train.py).
    Train(cmd_train::Args),
    /// Evaluate a checkpoint on a dataset's test split.
    Eval(cmd_eval::Args),
    /// Anomaly maps, overlays and scores for single images (no dataset needed).
    Predict(cmd_predict::Args),
    /// Run an ablation (variants x seeds), resumable; writes records, tables and plots.
    Ablate(cmd_ablate::Args),
    /// Pretrain a small CLIP on the procedural defect-caption corpus (contrastive, both towers).
    PretrainClip(cmd_pretrain::Args),
    /// Regenerate an experiment's tables and plots from its run records.
    Report(cmd_ablate::ReportArgs),
    /// Download CLIP weights from the Hugging Face hub (online machines).
    #[command(subcommand)]
    Weights(cmd_weights::Command),
    /// Throughput of backbone, inference and a training step on random weights (JSON lines).
    Bench(cmd_bench::Args),
    /// End-to-end smoke run on the embedded default (tiny random CLIP, synthetic images).
    Demo(cmd_demo::Args),
    /// Start a new component: a compiling crate from the slot's template, registered in this
    /// binary with one line, and an experiment comparing it with the slot's default.
    NewComponent(cmd_new_component::Args),
}

fn main() -> ExitCode {
    // First, before anything allocates much or starts a thread (see allocator.rs).
    allocator::tune();
    let cli = Cli::parse();
    // Built once, here, and handed to every command that reads a model configuration.
    let reg = components::registry();
    let threads = match &cli.command {
        Command::Bench(a) => a.threads.threads,
        Command::Train(a) => a.threads.threads,
        Command::Ablate(a) => a.threads.threads,
        Command::PretrainClip(a) => a.threads.threads,
        _ => None,
    };
    if let Err(e) = common::set_threads(threads) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Tokenize(a) => cmd_tokenize::run(a),
        Command::Features(a) => cmd_features::run_features(a),
        Command::TextEmbed(a) => cmd_features::run_text(a),
        Command::EvalMaps(a) => cmd_eval_maps::run(a),
        Command::Demo(a) => cmd_demo::run(a),
        Command::Bench(a) => cmd_bench::run(a, &reg),
        Command::Weights(c) => cmd_weights::run(c),
        Command::Data(c) => cmd_data::run(c),
        Command::Train(a) => cmd_train::run(a, &reg),
        Command::Eval(a) => cmd_eval::run(a, &reg),
        Command::Predict(a) => cmd_predict::run(a, &reg),
        Command::Ablate(a) => cmd_ablate::run(a, &reg),
        Command::Report(a) => cmd_ablate::report(a, &reg),
        Command::PretrainClip(a) => cmd_pretrain::run(a),
        Command::NewComponent(a) => cmd_new_component::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", util::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

#!/usr/bin/env bash
# Regenerate `tiny_pretrained` v2 (the embedded preset) from its recipe:
# v1's weights are taken from git (the commit that last held them), then
#   vcp pretrain-clip --config experiments/pretrain_tiny_clip_v2.toml --out pretrain/tiny_pretrained_v2
# runs on one thread (the recipe was run so: ~70 min on a 2-core AMD EPYC; --resume continues
# an interrupted run). The export lands in pretrain/tiny_pretrained_v2/tiny_pretrained.{safetensors,json};
# copy both into crates/vcp-clip/assets/ to make it the preset.
set -euo pipefail
cd "$(dirname "$0")/.."
V1_COMMIT=${V1_COMMIT:-1b95ab4}   # the commit that added v1 (issue 12)
mkdir -p pretrain/tiny_pretrained_v1
git show "$V1_COMMIT:crates/vcp-clip/assets/tiny_pretrained.safetensors" > pretrain/tiny_pretrained_v1/tiny_pretrained.safetensors
git show "$V1_COMMIT:crates/vcp-clip/assets/tiny_pretrained.json" > pretrain/tiny_pretrained_v1/tiny_pretrained.json
cargo build --release -p vcp-cli
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456
./target/release/vcp pretrain-clip --threads 1 --config experiments/pretrain_tiny_clip_v2.toml \
    --out pretrain/tiny_pretrained_v2 "$@"

#!/usr/bin/env bash
# CPU vision-tower speed, vcp vs PyTorch eager (writes results/bench/clip_cpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv-ref/bin/python}
cargo build --release -p vcp-cli
"$PY" tools/bench_clip_cpu.py "$@"

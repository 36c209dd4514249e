#!/usr/bin/env bash
# Regenerate every committed result table on this machine from a clean, committed tree:
# the fusion setting chosen on alpha, the default ablation, the zero-shot table of the pretrained
# CLIP and the new-component experiments (3 seeds each). Prints each experiment's wall time.
# The default ablation runs as the README's main command does (one process); the others run as
# two worker processes (--workers 2: same records and tables, about twice as fast on 2 cores).
# ~60 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "the tree has uncommitted changes: commit first, so the records name the code" >&2
    exit 1
fi
cargo build --release -p vcp-cli
# From nothing: no earlier run records or cached features (each table is then compared with the
# committed one by `vcp ablate` itself).
rm -rf results/*/runs results/*/feature_cache results/*/workers
t0=$(date +%s)
./target/release/vcp ablate | tail -4
echo "== default ablation: $(( $(date +%s) - t0 )) s"
for exp in experiments/fusion_alpha.toml experiments/zero_shot.toml experiments/ablate_heads.toml \
           experiments/fewshot.toml experiments/backbones.toml experiments/state_words.toml \
           experiments/ablate_refiners.toml experiments/diagnose_transfer.toml; do
    t0=$(date +%s)
    ./target/release/vcp ablate "$exp" --workers 2 | tail -4
    echo "== $exp: $(( $(date +%s) - t0 )) s"
done

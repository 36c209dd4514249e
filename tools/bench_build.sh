#!/usr/bin/env bash
# Clean and incremental build times of two commits (results/bench/build.md), each in its own
# worktree and target folder; run with nothing else on the machine.
#   bash tools/bench_build.sh OLD_COMMIT OLD_FILE NEW_COMMIT NEW_FILE
# OLD_FILE / NEW_FILE: the component file (relative to the repository) touched for the
# incremental rebuild, e.g. crates/vcp-model/src/post_vcp.rs and crates/vcp-post-vcp/src/lib.rs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
measure() { # commit file
    local tree target
    tree=$(mktemp -d /tmp/vcp-build-tree.XXXXXX)
    target=$(mktemp -d /tmp/vcp-build-target.XXXXXX)
    git -C "$repo" worktree add -f -q "$tree" "$1"
    cd "$tree"
    local s e clean inc
    s=$(date +%s.%N); CARGO_TARGET_DIR=$target cargo build --release -q; e=$(date +%s.%N)
    clean=$(echo "$e - $s" | bc)
    echo "// touched by build-time measurement" >> "$2"
    s=$(date +%s.%N); CARGO_TARGET_DIR=$target cargo build --release -q; e=$(date +%s.%N)
    inc=$(echo "$e - $s" | bc)
    git checkout -q -- "$2"
    echo "$1: clean ${clean} s, rebuild after touching $2 ${inc} s"
    cd "$repo"
    git worktree remove --force "$tree"
    rm -rf "$target"
}
measure "$1" "$2"
measure "$3" "$4"

#!/usr/bin/env bash
# GPU benchmark (issue 8), at most ~8 minutes on an H100/H200: our CUDA `vcp` binary against
# PyTorch on the same card, ViT-L/14-336 with random weights at 518 px.
#
#   bash tools/bench_gpu.sh [path/to/vcp-cuda] [results/bench/gpu.md]
#
# (1) ours: backbone forward and full VCP-CLIP inference, f32 and bf16, batch 1 and 32; one
#     training step at batch 32 (loss_chunk 8);
# (2) PyTorch: transformers CLIPVisionModel (same architecture, random init) at 518, f32 and
#     bf16, batch 1 and 32, and a training step of the patch heads + loss in PyTorch
#     (tools/bench_gpu_torch.py);
# and writes images/s, ms per batch and peak GPU memory (nvidia-smi, sampled every 50 ms while
# each measurement runs in its own process) to the markdown file.
# Build the binary on any machine with `bash tools/build_cuda.sh` (target-cuda/vcp-cuda).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target-cuda/vcp-cuda}
OUT=${2:-results/bench/gpu.md}
PY=${PYTHON:-python3}
BUDGET=${BUDGET_S:-420}   # stop starting new measurements after this many seconds (8-minute script)
# Dry run of the plumbing on a CPU (fake nvidia-smi on PATH): DEVICE=cpu PRESET=tiny SIZE=224 BIG=4 SKIP_TORCH=1
DEVICE=${DEVICE:-cuda}; PRESET=${PRESET:-vit_l_14_336}; SIZE=${SIZE:-518}; BIG=${BIG:-32}
if [ ! -x "$BIN" ] && [ -f "$BIN.gz" ]; then
  gunzip -c "$BIN.gz" > /tmp/vcp-cuda && chmod +x /tmp/vcp-cuda && BIN=/tmp/vcp-cuda
fi
if [ -z "${LD_LIBRARY_PATH:-}" ] || ! ls ${LD_LIBRARY_PATH//:/ } 2>/dev/null | grep -q libcublas.so.13; then
  CU=$("$PY" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' 2>/dev/null || true)
  [ -n "$CU" ] && export LD_LIBRARY_PATH="$CU${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
TMP=$(mktemp -d)
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
base_mem=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)

T0=$(date +%s)
"$BIN" --version > /dev/null 2>&1 || { echo "cannot run $BIN (LD_LIBRARY_PATH=$LD_LIBRARY_PATH):"; "$BIN" --version; }

# Run one measurement in its own process while sampling GPU memory; append its JSON + peak MiB.
measure() {
  local tag=$1; shift
  if [ $(( $(date +%s) - T0 )) -gt "$BUDGET" ]; then
    echo "$tag|124|0|{\"error\": \"skipped: time budget of ${BUDGET} s spent\"}" >> "$TMP/all"; return
  fi
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$TMP/mem_$tag" 2>/dev/null &
  local smi=$!
  timeout 90 "$@" > "$TMP/out_$tag" 2> "$TMP/err_$tag"
  local rc=$?
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  local peak=$(sort -n "$TMP/mem_$tag" | tail -1)
  local used=$(( ${peak:-0} - ${base_mem:-0} ))
  while read -r line; do
    [ -n "$line" ] && echo "$tag|$rc|$used|$line" >> "$TMP/all"
  done < "$TMP/out_$tag"
  [ $rc -ne 0 ] && echo "$tag|$rc|$used|{\"error\": \"$(tail -1 "$TMP/err_$tag" | tr '"' "'")\"}" >> "$TMP/all"
  echo "$tag rc=$rc peak=${used} MiB: $(cat "$TMP/out_$tag" | tr '\n' ' ')"
}

for dt in f32 bf16; do
  for b in 1 $BIG; do
    measure "ours_${dt}_b${b}" "$BIN" bench --device $DEVICE --preset $PRESET --size $SIZE --batch $b --dtype $dt --iters 5 --what backbone,infer
  done
  measure "ours_${dt}_train" "$BIN" bench --device $DEVICE --preset $PRESET --size $SIZE --batch $BIG --dtype $dt --iters 3 --what train --loss-chunk 8
done
if [ -z "${SKIP_TORCH:-}" ]; then
  for dt in f32 bf16; do
    for b in 1 $BIG; do
      measure "torch_${dt}_b${b}" "$PY" tools/bench_gpu_torch.py --dtype $dt --batch $b --size $SIZE --iters 5 --what backbone
    done
    measure "torch_${dt}_train" "$PY" tools/bench_gpu_torch.py --dtype $dt --batch $BIG --size $SIZE --iters 3 --what train_heads
  done
fi
T1=$(date +%s)

"$PY" - "$TMP/all" "$OUT" "$GPU" "$((T1 - T0))" <<'PYEOF'
import json, sys, datetime
rows = []
for line in open(sys.argv[1]):
    tag, rc, mem, js = line.rstrip("\n").split("|", 3)
    try:
        d = json.loads(js)
    except Exception:
        d = {"error": js}
    rows.append((tag, int(rc), int(mem), d))
out = [f"# GPU benchmark: ViT-L/14-336 at 518 px, random weights",
       "",
       f"Machine: {sys.argv[3]}. Date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC. "
       f"Command: `bash tools/bench_gpu.sh` ({sys.argv[4]} s). Peak memory: nvidia-smi's used "
       "memory during the process minus before (includes the CUDA context, ~0.5 GB).",
       "",
       "| impl | what | dtype | batch | ms / batch | images / s | peak GPU MiB | note |",
       "|:--|:--|:--|--:|--:|--:|--:|:--|"]
for tag, rc, mem, d in rows:
    impl = tag.split("_")[0]
    if "error" in d:
        out.append(f"| {impl} | {tag} | | | | | {mem} | FAILED (rc {rc}): {d['error'][:120]} |")
        continue
    note = f"loss_chunk {d['loss_chunk']}" if d.get("loss_chunk") else d.get("note", "")
    out.append(f"| {impl} | {d['what']} | {d['dtype']} | {d['batch']} | {d['ms_per_batch']:.1f} | "
               f"{d['img_per_s']:.1f} | {mem} | {note} |")
open(sys.argv[2] + ".tmp", "w").write("\n".join(out) + "\n")
import os; os.replace(sys.argv[2] + ".tmp", sys.argv[2])
print("\n".join(out))
PYEOF
rm -rf "$TMP"

#!/usr/bin/env bash
# Metrics speed: `vcp eval-maps` vs the scikit-learn/scikit-image reference on one category of
# N maps at SIZE x SIZE (default 100 at 518). Writes results/bench/metrics.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv-ref/bin/python}
N=${N:-100}; SIZE=${SIZE:-518}
WORK=$(mktemp -d)
cargo build --release -p vcp-cli
"$PY" tools/metrics_reference.py --make-bench "$WORK/cat" --n "$N" --size "$SIZE"
best=""
for i in 1 2 3; do
  s=$(date +%s.%N); target/release/vcp eval-maps --meta "$WORK/cat/meta.json" --maps "$WORK/cat/maps" --out "$WORK/rs" > /dev/null; e=$(date +%s.%N)
  t=$(echo "$e - $s" | bc); best=$(echo "if ($best'' == '' || $t < $best) $t else $best" | bc 2>/dev/null || echo "$t")
done
s=$(date +%s.%N); "$PY" tools/metrics_reference.py --meta "$WORK/cat/meta.json" --maps "$WORK/cat/maps" --out "$WORK/py.json" > /dev/null; e=$(date +%s.%N)
pyt=$(echo "$e - $s" | bc)
"$PY" - "$WORK/py.json" "$WORK/rs/metrics.json" "$pyt" "$best" "$N" "$SIZE" <<'PYEOF'
import json, sys, datetime, platform, os
py = json.load(open(sys.argv[1]))["categories"]["bench"]
rs = json.load(open(sys.argv[2]))["categories"]["bench"]
pyt, rst, n, size = float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
rows = [f"| {k} | {py[k]:.10f} | {rs[k]:.10f} | {abs(py[k]-rs[k]):.2e} |" for k in py if k in rs]
md = [f"# Metrics speed: vcp eval-maps vs Python reference", "",
      f"Date: {datetime.date.today()}; {os.cpu_count()} cores; one category of {n} maps at {size}x{size}, half anomalous.",
      "Command: `bash tools/bench_metrics.sh` (whole command wall time incl. reading maps and masks; Rust best of 3).", "",
      "| | wall time (s) |", "|--|--:|",
      f"| Python (scikit-learn + scikit-image, tools/metrics_reference.py) | {pyt:.2f} |",
      f"| vcp eval-maps | {rst:.2f} |", f"| speed-up | {pyt/rst:.0f}x |", "",
      "| metric | Python | vcp | abs diff |", "|--|--:|--:|--:|"] + rows
open("results/bench/metrics.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PYEOF

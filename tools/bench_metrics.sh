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
"$PY" - "$WORK" "$N" "$SIZE" <<'PYEOF'
import datetime, json, os, platform, subprocess, sys, time
work, n, size = sys.argv[1], sys.argv[2], sys.argv[3]
meta, maps = f"{work}/cat/meta.json", f"{work}/cat/maps"
rust = []
for _ in range(3):
    t0 = time.perf_counter()
    subprocess.run(["target/release/vcp", "eval-maps", "--meta", meta, "--maps", maps, "--out", f"{work}/rs"],
                   check=True, capture_output=True)
    rust.append(time.perf_counter() - t0)
t0 = time.perf_counter()
subprocess.run([sys.executable, "tools/metrics_reference.py", "--meta", meta, "--maps", maps, "--out", f"{work}/py.json"],
               check=True, capture_output=True)
pyt = time.perf_counter() - t0
rst = min(rust)
py = json.load(open(f"{work}/py.json"))["categories"]["bench"]
rs = json.load(open(f"{work}/rs/metrics.json"))["categories"]["bench"]
rows = [f"| {k} | {py[k]:.12f} | {rs[k]:.12f} | {abs(py[k] - rs[k]):.1e} |" for k in py if k in rs]
md = ["# Metrics speed: vcp eval-maps vs the Python reference", "",
      f"Date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} cores; one category of {n} maps at "
      f"{size}x{size} (half anomalous, 1-3 regions each).",
      "Command: `bash tools/bench_metrics.sh`. Wall time of the whole command, reading maps and masks included "
      "(Rust: best of 3, 2 threads; Python: one run of tools/metrics_reference.py, which follows the reference code).", "",
      "| | wall time (s) |", "|--|--:|",
      f"| Python (scikit-learn + scikit-image) | {pyt:.2f} |",
      f"| vcp eval-maps | {rst:.2f} |", f"| speed-up | {pyt / rst:.0f}x |", "",
      "| metric | Python | vcp | abs diff |", "|--|--:|--:|--:|"] + rows
os.makedirs("results/bench", exist_ok=True)
open("results/bench/metrics.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PYEOF
rm -rf "$WORK"

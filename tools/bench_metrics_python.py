"""Python reference vs `vcp_metrics.evaluate` on the same in-memory arrays, measured in one run.

  (a) one category of N maps at SIZE x SIZE (default 100 at 518, as VCP-CLIP evaluates);
  (b) 15 categories with MVTec AD's test-image counts (1725 images) at SIZE15 x SIZE15.
The reference is tools/metrics_reference.py's `score_category` (scikit-learn, scikit-image
`cal_pro_score`, the MVTec official PRO curve). Writes results/bench/metrics_python.md.

  python tools/bench_metrics_python.py [--n 100 --size 518 --size15 160]
"""
import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics_reference as ref  # noqa: E402
import vcp_metrics  # noqa: E402

MVTEC_TEST = {"bottle": 83, "cable": 150, "capsule": 132, "carpet": 117, "grid": 78, "hazelnut": 110,
              "leather": 124, "metal_nut": 115, "pill": 167, "screw": 160, "tile": 117, "toothbrush": 42,
              "transistor": 100, "wood": 79, "zipper": 151}


def category(rng, n, size):
    yy, xx = np.mgrid[0:size, 0:size]
    maps = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        if i % 2 == 0:
            for _ in range(rng.integers(1, 4)):
                cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(3, max(4, size // 8))
                masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        maps[i] = rng.random((size, size)) * 0.7 + 0.5 * masks[i]
    labels = masks.reshape(n, -1).any(1).astype(int)
    return maps, masks, labels


def compare(got, want):
    return max(abs(got[k] - v) for k, v in want.items() if not k.endswith("_threshold"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--size15", type=int, default=160)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    lines = []

    maps, masks, labels = category(rng, a.n, a.size)
    scores = np.array([ref.top1(m) for m in maps], np.float32)
    t = time.perf_counter()
    want = ref.score_category(maps, masks, labels, scores)
    t_ref = time.perf_counter() - t
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        got = vcp_metrics.evaluate(maps, masks, scores=scores, labels=labels)
        runs.append(time.perf_counter() - t)
    t_rs = min(runs)
    err = compare(got["categories"]["all"], want)
    lines.append(f"| one category, {a.n} maps {a.size}x{a.size} | {t_ref:.2f} | {t_rs:.3f} | {t_ref / t_rs:.0f}x | {err:.1e} |")
    print(lines[-1], flush=True)

    cats = {c: category(rng, n, a.size15) for c, n in MVTEC_TEST.items()}
    t = time.perf_counter()
    wants = {}
    for c, (m, k, l) in cats.items():
        wants[c] = ref.score_category(m, k, l, np.array([ref.top1(x) for x in m], np.float32))
    t_ref = time.perf_counter() - t
    allm = np.concatenate([v[0] for v in cats.values()])
    allk = np.concatenate([v[1] for v in cats.values()])
    alll = np.concatenate([v[2] for v in cats.values()])
    names = [c for c, v in cats.items() for _ in range(len(v[0]))]
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        got = vcp_metrics.evaluate(allm, allk, labels=alll, categories=names)
        runs.append(time.perf_counter() - t)
    t_rs = min(runs)
    err = max(compare(got["categories"][c], wants[c]) for c in cats)
    lines.append(f"| 15 categories, MVTec AD test counts (1725 maps) {a.size15}x{a.size15} | {t_ref:.2f} | {t_rs:.3f} | {t_ref / t_rs:.0f}x | {err:.1e} |")
    print(lines[-1], flush=True)

    md = ["# `vcp_metrics` (Python package) vs the Python reference, same in-memory arrays", "",
          f"Date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, numpy {np.__version__}. Reference: `tools/metrics_reference.py` "
          "`score_category` (scikit-learn AUROC/AP/F1, scikit-image `cal_pro_score`, MVTec official PRO). "
          "`vcp_metrics.evaluate`: best of 3; the reference: one run.", "",
          "| case | reference s | vcp_metrics s | speed-up | max abs difference |",
          "|:--|--:|--:|--:|--:|", *lines, "",
          f"Command: `python tools/bench_metrics_python.py --n {a.n} --size {a.size} --size15 {a.size15}` "
          "(after `pip install ./crates/vcp-metrics-py scikit-learn scikit-image scipy pillow`)."]
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results", "bench", "metrics_python.md")
    open(out, "w").write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

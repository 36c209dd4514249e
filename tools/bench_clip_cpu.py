"""CPU speed of the vision tower: transformers CLIPVisionModel (PyTorch eager) vs `vcp features`, same random
ViT-B/16 weights, same input, same number of threads. Writes results/bench/clip_cpu.md.

python tools/bench_clip_cpu.py [--threads 2 1] [--dtypes f32 bf16] [--iters 10] [--vcp target/release/vcp]
       [--model vit_b_16 | vit_l_14_336] [--size PX] [--out results/bench/clip_cpu.md]

--model vit_l_14_336 --size 518 is VCP-CLIP's backbone setting (positional embedding resized on both sides:
transformers' `interpolate_pos_encoding`, `vcp features --size`).

bf16: PyTorch runs the whole tower in bf16 (`.to(torch.bfloat16)`); vcp with `--dtype bf16` (LayerNorm/softmax in f32).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--dtypes", nargs="+", default=["f32"], choices=["f32", "bf16"])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    ap.add_argument("--vcp", default="target/release/vcp")
    ap.add_argument("--out", default="results/bench/clip_cpu.md")
    ap.add_argument("--model", default="vit_b_16", choices=["vit_b_16", "vit_l_14_336"])
    ap.add_argument("--size", type=int, default=None, help="input size (default: the model's native size)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    if a.model == "vit_b_16":
        vc = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                  patch_size=16, image_size=224)
        text, proj = dict(hidden_size=512, num_attention_heads=8, intermediate_size=2048), 512
    else:
        vc = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  patch_size=14, image_size=336)
        text, proj = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072), 768
    cfg = CLIPConfig(
        projection_dim=proj,
        text_config=dict(num_hidden_layers=12, hidden_act="quick_gelu", **text),
        vision_config=dict(hidden_act="quick_gelu", **vc),
    )
    size = a.size or vc["image_size"]
    depth = vc["num_hidden_layers"]
    taps = ",".join(str(depth * q // 4) for q in range(1, 5))
    torch.manual_seed(0)
    CLIPModel(cfg).eval().save_pretrained(tmp)  # random ViT-B/16 in HF format
    img = os.path.join(tmp, "img.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(img)
    vision32 = CLIPVisionModel.from_pretrained(tmp).eval()
    rows = []
    for t, dt in [(t, d) for d in a.dtypes for t in a.threads]:
        tdt = {"f32": torch.float32, "bf16": torch.bfloat16}[dt]
        vision = vision32.to(tdt)
        x = torch.randn(1, 3, size, size).to(tdt)
        resize = dict(interpolate_pos_encoding=True) if size != vc["image_size"] else {}
        torch.set_num_threads(t)
        torch_runs, rust_runs = [], []
        for _ in range(a.rounds):  # alternate so that machine noise hits both alike
            with torch.inference_mode():
                for _ in range(2):
                    vision(pixel_values=x, output_hidden_states=True, **resize)
                t0 = time.perf_counter()
                for _ in range(a.iters):
                    vision(pixel_values=x, output_hidden_states=True, **resize)
                torch_runs.append((time.perf_counter() - t0) * 1000 / a.iters)
            time.sleep(1.0)  # let PyTorch's OpenMP workers go idle before timing the other side
            env = dict(os.environ, RAYON_NUM_THREADS=str(t))
            out = subprocess.run([a.vcp, "features", "--clip", tmp, "--image", img, "--layers", taps,
                                  "--size", str(size),
                                  "--out", os.path.join(tmp, "f.safetensors"), "--bench-iters", str(a.iters),
                                  "--dtype", dt],
                                 env=env, capture_output=True, text=True, check=True)
            rust_runs.append(json.loads(out.stdout.strip().splitlines()[-1])["forward_ms"])
            time.sleep(1.0)
        torch_ms, rust_ms = float(np.median(torch_runs)), float(np.median(rust_runs))
        print(f"{dt} threads {t}: torch runs {[round(v) for v in torch_runs]}, vcp runs {[round(v) for v in rust_runs]}")
        # Each round's own ratio (both sides timed back to back) cancels slow drifts of the machine's speed.
        paired = sorted(x / y for x, y in zip(torch_runs, rust_runs))
        rows.append((dt, t, torch_ms, rust_ms, paired))
        print(f"{dt} threads {t}: torch {torch_ms:.1f} ms, vcp {rust_ms:.1f} ms, torch/vcp = {torch_ms / rust_ms:.2f}")
    lines = [
        "# CPU vision forward: candle (vcp) vs PyTorch eager",
        "",
        f"Date: {datetime.date.today()}; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; torch {torch.__version__}; transformers {__import__('transformers').__version__}.",
        f"Command: `python tools/bench_clip_cpu.py --model {a.model} --size {size} --iters {a.iters} "
        f"--dtypes {' '.join(a.dtypes)} --threads {' '.join(map(str, a.threads))} --rounds {a.rounds}` "
        f"(random {a.model}, {size} px, batch 1, "
        f"hidden states of every block; vcp taps {taps} + global; mean over iterations after warm-up, "
        f"model load excluded; median of {a.rounds} alternating rounds; 'per round': the ratio of each round's "
        f"two timings, taken back to back, which cancels slow drifts of a shared machine's speed).",
        "",
        "| dtype | threads | PyTorch eager (ms/img) | vcp / candle (ms/img) | speed-up (PyTorch / vcp) "
        "| per round: median [min, max] |",
        "|:--|--:|--:|--:|--:|--:|",
    ]
    lines += [f"| {d} | {t} | {p:.1f} | {r:.1f} | {p / r:.2f}x "
              f"| {float(np.median(q)):.2f}x [{q[0]:.2f}, {q[-1]:.2f}] |" for d, t, p, r, q in rows]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    open(a.out, "w").write("\n".join(lines) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()

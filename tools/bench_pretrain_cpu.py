"""One pretraining step of `tiny_pretrained` on a CPU: PyTorch eager twin vs `vcp bench --what pretrain`.

Same architecture (OpenAI-CLIP layout: pre-LN ViT with class token and ln_pre/ln_post, causal text
transformer read at the EOT token, QuickGELU, projections, learnable logit scale), same loss
(symmetric InfoNCE) and optimiser (AdamW, decay on matrices only, logit-scale lr multiplier), same
batch shapes, read from the recipe file. PyTorch is a benchmark dependency only. Both sides run in
alternating rounds on the same machine with the same number of threads; medians are reported.
Writes results/bench/train_cpu.md.

python tools/bench_pretrain_cpu.py [--config experiments/pretrain_tiny_clip.toml] [--threads 1 2]
       [--iters 4] [--rounds 3] [--vcp target/release/vcp] [--label before|after]
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import time
import tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width, heads, mlp, eps):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), QuickGELU(), nn.Linear(mlp, width))

    def forward(self, x, mask=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Vision(nn.Module):
    def __init__(self, c, embed):
        super().__init__()
        w, p, s = c["width"], c["patch_size"], c["image_size"]
        self.conv1 = nn.Conv2d(3, w, p, p, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(w) * w ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn((s // p) ** 2 + 1, w) * w ** -0.5)
        self.ln_pre = nn.LayerNorm(w, eps=c["ln_eps"])
        self.blocks = nn.ModuleList(Block(w, c["heads"], c["mlp_dim"], c["ln_eps"]) for _ in range(c["layers"]))
        self.ln_post = nn.LayerNorm(w, eps=c["ln_eps"])
        self.proj = nn.Parameter(torch.randn(w, embed) * w ** -0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], 1) + self.positional_embedding)
        for b in self.blocks:
            x = b(x)
        return self.ln_post(x[:, 0]) @ self.proj


class Text(nn.Module):
    def __init__(self, c, embed):
        super().__init__()
        w, n = c["width"], c["context_length"]
        self.token_embedding = nn.Embedding(c["vocab_size"], w)
        self.positional_embedding = nn.Parameter(torch.randn(n, w) * 0.01)
        self.blocks = nn.ModuleList(Block(w, c["heads"], c["mlp_dim"], c["ln_eps"]) for _ in range(c["layers"]))
        self.ln_final = nn.LayerNorm(w, eps=c["ln_eps"])
        self.text_projection = nn.Parameter(torch.randn(w, embed) * w ** -0.5)
        self.register_buffer("mask", torch.full((n, n), float("-inf")).triu(1))

    def forward(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding
        for b in self.blocks:
            x = b(x, self.mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ self.text_projection


class Clip(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.visual = Vision(m["vision"], m["embed_dim"])
        self.text = Text(m["text"], m["embed_dim"])
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    def loss(self, images, ids):
        i = F.normalize(self.visual(images), dim=-1)
        t = F.normalize(self.text(ids), dim=-1)
        logits = self.logit_scale.exp() * i @ t.t()
        target = torch.arange(images.shape[0])
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def torch_step_ms(cfg, threads, iters):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m, t = cfg["model"], cfg["train"]
    model = Clip(m)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
                and n != "logit_scale"]
    opt = torch.optim.AdamW([
        {"params": decay, "weight_decay": t["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": [model.logit_scale], "weight_decay": 0.0, "lr": t["lr"] * t.get("logit_scale_lr_mult", 1.0)},
    ], lr=t["lr"], betas=tuple(t["betas"]), eps=t["eps"], foreach=True)
    b, s, n = t["batch_size"], m["vision"]["image_size"], m["text"]["context_length"]
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(iters + 1):
        ids = torch.randint(1, 49000, (b, n), generator=g)
        ids[:, -1] = 49407  # the EOT token ends every caption (argmax reads it)
        batches.append((torch.randn(b, 3, s, s, generator=g), ids))

    def step(x, ids):
        opt.zero_grad(set_to_none=True)
        loss = model.loss(x, ids)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        return loss.item()

    step(*batches[0])  # warm-up
    t0 = time.perf_counter()
    for x, ids in batches[1:]:
        step(x, ids)
    return (time.perf_counter() - t0) * 1000 / iters


def vcp_step_ms(vcp, config, threads, iters, plain=False, malloc_defaults=False):
    env = dict(os.environ)
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "VCP_MALLOC_DEFAULTS"):
        env.pop(k, None)
    if malloc_defaults:
        # glibc's own mmap/trim thresholds (vcp sets them otherwise: crates/vcp-cli/src/allocator.rs)
        env["VCP_MALLOC_DEFAULTS"] = "1"
    cmd = [vcp, "bench", "--what", "pretrain", "--config", config, "--threads", str(threads), "--iters", str(iters)]
    if plain:
        cmd.append("--plain-kernels")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["ms_per_step"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="experiments/pretrain_tiny_clip.toml")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vcp", default="target/release/vcp")
    ap.add_argument("--out", default="results/bench/train_cpu.md")
    a = ap.parse_args()
    with open(a.config, "rb") as f:
        cfg = tomllib.load(f)
    b = cfg["train"]["batch_size"]
    rows = []
    for t in a.threads:
        tr, vr, dr, pr = [], [], [], []
        for _ in range(a.rounds):  # alternate so that machine noise hits all sides alike
            tr.append(torch_step_ms(cfg, t, a.iters))
            time.sleep(1.0)
            vr.append(vcp_step_ms(a.vcp, a.config, t, a.iters))
            time.sleep(1.0)
            dr.append(vcp_step_ms(a.vcp, a.config, t, a.iters, malloc_defaults=True))
            time.sleep(1.0)
            pr.append(vcp_step_ms(a.vcp, a.config, t, a.iters, plain=True, malloc_defaults=True))
            time.sleep(1.0)
        med = lambda v: sorted(v)[len(v) // 2]
        tm, vm, dm, pm = med(tr), med(vr), med(dr), med(pr)
        print(f"threads {t}: torch {[round(v) for v in tr]} ms, vcp {[round(v) for v in vr]} ms, "
              f"vcp malloc defaults {[round(v) for v in dr]} ms, "
              f"vcp plain kernels + malloc defaults {[round(v) for v in pr]} ms; torch/vcp = {tm / vm:.2f}", flush=True)
        # Each round's own ratio (both sides timed back to back) cancels slow drifts of the machine's speed.
        paired = sorted(x / y for x, y in zip(tr, vr))
        rows.append((t, tm, vm, dm, pm, paired))
    m = cfg["model"]
    lines = [
        "# One pretraining step on a CPU: vcp (candle) vs PyTorch eager",
        "",
        f"Date: {datetime.date.today()}; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; torch {torch.__version__}.",
        f"Command: `python tools/bench_pretrain_cpu.py --config {a.config} --iters {a.iters} --rounds {a.rounds}` "
        f"(recipe `{cfg['name']}`: ViT {m['vision']['layers']}x{m['vision']['width']} at "
        f"{m['vision']['image_size']} px, text {m['text']['layers']}x{m['text']['width']}, batch {b}; forward, "
        "backward and AdamW; mean over iterations after one warm-up step; median of alternating rounds; "
        "'per round': the ratio of each round's two timings, taken back to back, which cancels slow drifts "
        "of a shared machine's speed).",
        "",
        "| threads | PyTorch eager (ms/step) | vcp (ms/step) | vcp, C allocator defaults (ms/step) "
        "| vcp, composed kernels + allocator defaults (ms/step) "
        "| PyTorch img/s | vcp img/s | speed-up (PyTorch / vcp) | per round: median [min, max] "
        "| before (PyTorch / composed + defaults) |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for t, tm, vm, dm, pm, paired in rows:
        lines.append(f"| {t} | {tm:.0f} | {vm:.0f} | {dm:.0f} | {pm:.0f} | {b * 1000 / tm:.0f} | {b * 1000 / vm:.0f} "
                     f"| {tm / vm:.2f}x | {med(paired):.2f}x [{paired[0]:.2f}, {paired[-1]:.2f}] "
                     f"| {tm / pm:.2f}x |")
    lines += [
        "",
        "`vcp` runs each transformer block as one autograd node with a hand-written backward "
        "(`vcp_clip::fused_block`) and the fused CPU kernels with analytic backward (`vcp_clip::fused`: "
        "LayerNorm, softmax, QuickGELU, bias add; rows split over threads, AVX2/FMA chosen at run time); the "
        "composed column is the same binary with `--plain-kernels` (candle 0.11's generic ops and autograd, what "
        "ran before this work). AdamW updates weights and moments in "
        "place on the CPU (`vcp_pretrain::optim`). `vcp` re-executes itself once at start with glibc's mmap "
        "and trim thresholds raised and one malloc arena, so that freed tensors are reused instead of returned "
        "to the kernel and "
        "faulted in again (`crates/vcp-cli/src/allocator.rs`); the allocator-defaults columns run with "
        "`VCP_MALLOC_DEFAULTS=1`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

"""PyTorch side of tools/bench_gpu.sh: the same image tower (transformers CLIPVisionModel with
ViT-L/14-336's architecture, random init, 518 px with interpolated positions) and a training step
of VCP-CLIP-like heads (per-layer Linear patch heads against two learnable text embeddings,
bilinear upsampling to 518, softmax, focal + dice) on the frozen tower's taps.
Prints one JSON line like `vcp bench`."""
import argparse, json, time
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

p = argparse.ArgumentParser()
p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
p.add_argument("--batch", type=int, default=1)
p.add_argument("--iters", type=int, default=5)
p.add_argument("--size", type=int, default=518)
p.add_argument("--what", default="backbone", choices=["backbone", "train_heads"])
a = p.parse_args()
dev = "cuda"
dt = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                       hidden_act="gelu")
torch.manual_seed(0)
model = CLIPVisionModel(cfg).to(dev).eval().to(dt)
model.requires_grad_(False)
x = torch.randn(a.batch, 3, a.size, a.size, device=dev, dtype=dt)
taps = [6, 12, 18, 24]


def backbone():
    with torch.no_grad():
        o = model(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
        return [o.hidden_states[t].float() for t in taps]


if a.what == "backbone":
    step = backbone
else:
    g = a.size // 14
    heads = torch.nn.ModuleList([torch.nn.Linear(1024, 768) for _ in taps]).to(dev)
    text = torch.nn.Parameter(torch.randn(2, 768, device=dev))
    opt = torch.optim.Adam(list(heads.parameters()) + [text], lr=4e-5, betas=(0.5, 0.999))
    gt = (torch.rand(a.batch, a.size, a.size, device=dev) > 0.97).float()

    def step():
        feats = backbone()
        loss = 0
        t = F.normalize(text, dim=-1)
        for h, f in zip(heads, feats):
            z = F.normalize(h(f[:, 1:]), dim=-1) @ t.t() * (1 / 0.07)  # [B, N, 2]
            z = z.transpose(1, 2).reshape(a.batch, 2, g, g)
            pr = torch.softmax(F.interpolate(z, a.size, mode="bilinear", align_corners=True), 1)
            pa = pr[:, 1]
            pt = torch.where(gt > 0, pa, 1 - pa).clamp_min(1e-6)
            loss = loss + (-(1 - pt) ** 2 * pt.log()).mean()
            loss = loss + 1 - (2 * (pa * gt).sum() + 1) / (pa.sum() + gt.sum() + 1)
        opt.zero_grad()
        loss.backward()
        opt.step()

step()
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
for _ in range(a.iters):
    step()
torch.cuda.synchronize()
ms = (time.perf_counter() - t0) * 1000 / a.iters
print(json.dumps({"what": a.what, "dtype": a.dtype, "batch": a.batch, "size": a.size,
                  "ms_per_batch": round(ms, 2), "img_per_s": round(a.batch / ms * 1000, 2),
                  "loss_chunk": None,
                  "note": f"torch {torch.__version__}, max_memory_allocated "
                          f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"}))

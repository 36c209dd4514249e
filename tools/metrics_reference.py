"""Reference scorer for `vcp eval-maps`, with scikit-learn and scikit-image, following the definitions the
zero-shot anomaly segmentation repositories use (see crates/vcp-metrics docs):

  auroc_px / ap_px       sklearn roc_auc_score / average_precision_score over all pixels of the category
  f1_px (+ threshold)    max over precision_recall_curve of 2PR/(P+R+1e-8); iou_px of map > threshold
  aupro_px               cflow-ad `cal_pro_score` (200 arange thresholds, skimage label/regionprops, FPR<0.3
                         min-max rescaled, sklearn auc)
  aupro30_px             MVTec AD official compute_pro + trapezoid to 0.3 / 0.3
  *_sp                   same on image scores (SCORES.csv or mean of the top 1% of each map)

Usage:
  python tools/metrics_reference.py --meta META.json --maps DIR [--root ROOT] [--scores S.csv] [--out OUT.json]
  python tools/metrics_reference.py --make-cases DIR        # test fixtures (data + expected metrics)
  python tools/metrics_reference.py --make-bench DIR [--n 100 --size 518]   # benchmark category
"""
import argparse
import bisect
import csv
import json
import os
import time

import numpy as np
from PIL import Image
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score


def cal_pro_score(masks, amaps, max_step=200, expect_fpr=0.3):
    binary_amaps = np.zeros_like(amaps, dtype=bool)
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / max_step
    pros, fprs = [], []
    inverse_masks = 1 - masks
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th], binary_amaps[amaps > th] = 0, 1
        pro = []
        for binary_amap, mask in zip(binary_amaps, masks):
            # labelled inside the loop, exactly as the reference code does (this is what makes it slow)
            for region in measure.regionprops(measure.label(mask)):
                tp_pixels = binary_amap[region.coords[:, 0], region.coords[:, 1]].sum()
                pro.append(tp_pixels / region.area)
        fp_pixels = np.logical_and(inverse_masks, binary_amaps).sum()
        pros.append(np.array(pro).mean())
        fprs.append(fp_pixels / inverse_masks.sum())
    pros, fprs = np.array(pros), np.array(fprs)
    idx = fprs < expect_fpr
    fprs = fprs[idx]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return auc(fprs, pros[idx])


def mvtec_pro_curve(amaps, masks):
    from scipy.ndimage import label

    structure = np.ones((3, 3), dtype=int)
    fp_changes = np.zeros(amaps.shape, dtype=np.uint32)
    pro_changes = np.zeros(amaps.shape, dtype=np.float64)
    num_ok, num_regions = 0, 0
    for i, m in enumerate(masks):
        labeled, n = label(m, structure)
        num_regions += n
        ok = labeled == 0
        num_ok += ok.sum()
        fp_changes[i][ok] = 1
        for k in range(n):
            r = labeled == (k + 1)
            pro_changes[i][r] = 1.0 / r.sum()
    scores = amaps.ravel()
    order = np.argsort(scores, kind="stable")[::-1]
    scores = scores[order]
    fps = np.cumsum(fp_changes.ravel()[order]) / num_ok
    pros = np.cumsum(pro_changes.ravel()[order]) / num_regions
    keep = np.append(np.diff(scores) != 0, True)
    return np.concatenate([[0], fps[keep]]), np.concatenate([[0], pros[keep]])


def trapezoid(x, y, x_max):
    x, y = np.asarray(x), np.asarray(y)
    correction = 0.0
    if x_max not in x:
        ins = bisect.bisect(x, x_max)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    mask = x <= x_max
    x, y = x[mask], y[mask]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def f1_max(gt, scores):
    p, r, t = precision_recall_curve(gt, scores)
    f1 = 2 * p * r / (p + r + 1e-8)
    i = int(np.argmax(f1))
    return float(f1[i]), float(t[min(i, len(t) - 1)])


def top1(m):
    flat = m.ravel()
    k = max(1, flat.size // 100)
    return float(np.sort(flat)[-k:].mean())


def load_mask(path, shape):
    if not path:
        return np.zeros(shape, dtype=np.uint8)
    img = Image.open(path).convert("L")
    if img.size != (shape[1], shape[0]):
        img = img.resize((shape[1], shape[0]), Image.BILINEAR)
    return (np.asarray(img, dtype=np.float32) / 255.0 > 0.5).astype(np.uint8)


def score_category(amaps, masks, labels, img_scores):
    out = {}
    gt = masks.ravel()
    if 0 < gt.sum() < gt.size:
        flat = amaps.ravel()
        out["auroc_px"] = float(roc_auc_score(gt, flat))
        out["ap_px"] = float(average_precision_score(gt, flat))
        out["f1_px"], th = f1_max(gt, flat)
        out["f1_px_threshold"] = th
        b = amaps > th
        g = masks > 0
        out["iou_px"] = float((b & g).sum() / (b | g).sum())
        out["aupro_px"] = float(cal_pro_score(masks, amaps))
        x, y = mvtec_pro_curve(amaps, masks)
        out["aupro30_px"] = trapezoid(x, y, 0.3) / 0.3
    labels = np.asarray(labels)
    if 0 < labels.sum() < len(labels):
        s = np.asarray(img_scores, dtype=np.float32)
        out["auroc_sp"] = float(roc_auc_score(labels, s))
        out["ap_sp"] = float(average_precision_score(labels, s))
        out["f1_sp"], out["f1_sp_threshold"] = f1_max(labels, s)
    return out


def score(meta_path, maps_dir, root=None, scores_csv=None):
    meta = json.load(open(meta_path))
    root = root or os.path.dirname(os.path.abspath(meta_path))
    given = {}
    if scores_csv:
        with open(scores_csv) as f:
            for row in csv.DictReader(f):
                given[row["img_path"]] = float(row["score"])
    result = {}
    for cls, recs in meta["test"].items():
        amaps, masks, labels, sc = [], [], [], []
        for r in recs:
            m = np.load(os.path.join(maps_dir, os.path.splitext(r["img_path"])[0] + ".npy")).astype(np.float32)
            amaps.append(m)
            masks.append(load_mask(os.path.join(root, r["mask_path"]) if r["mask_path"] else "", m.shape))
            labels.append(int(r["anomaly"]))
            sc.append(given[r["img_path"]] if given else top1(m))
        same = len({a.shape for a in amaps}) == 1
        if not same:
            raise SystemExit(f"{cls}: maps of different sizes are not supported by this reference script")
        result[cls] = score_category(np.stack(amaps), np.stack(masks), labels, sc)
    return result


def make_cases(out):
    rng = np.random.default_rng(2024)
    meta = {"train": {}, "test": {}}

    def blobs(h, w, n):
        m = np.zeros((h, w), np.uint8)
        for _ in range(n):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            ry, rx = rng.integers(1, max(2, h // 5)), rng.integers(1, max(2, w // 5))
            yy, xx = np.mgrid[0:h, 0:w]
            m[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 255
        return m

    def add(cls, idx, amap, mask, mask_size=None):
        stem = f"{cls}/test/{'anomaly' if mask is not None else 'good'}/{idx:03d}"
        os.makedirs(os.path.join(out, "maps", os.path.dirname(stem)), exist_ok=True)
        os.makedirs(os.path.join(out, os.path.dirname(stem)), exist_ok=True)
        np.save(os.path.join(out, "maps", stem + ".npy"), amap)
        rec = {"img_path": stem + ".png", "mask_path": "", "cls_name": cls,
               "specie_name": "anomaly" if mask is not None else "good", "anomaly": int(mask is not None)}
        if mask is not None:
            mp = f"{cls}/ground_truth/anomaly/{idx:03d}_mask.png"
            os.makedirs(os.path.join(out, os.path.dirname(mp)), exist_ok=True)
            img = Image.fromarray(mask, "L")
            if mask_size:
                img = img.resize(mask_size, Image.NEAREST)
            img.save(os.path.join(out, mp))
            rec["mask_path"] = mp
        meta["test"].setdefault(cls, []).append(rec)

    # ties: maps quantised to 8 levels, non-square 30x40, several regions incl. diagonal neighbours
    for i in range(6):
        h, w = 30, 40
        mask = blobs(h, w, 3) if i < 4 else None
        if i == 0:
            mask[5, 5] = mask[6, 6] = 255  # touching diagonally: one 8-connected region
        base = rng.random((h, w)) * 0.6 + (0.4 * (mask > 0) if mask is not None else 0)
        add("ties", i, (np.floor(base * 8) / 8).astype(np.float32), mask)
    # smooth continuous maps 33x47
    for i in range(5):
        h, w = 33, 47
        mask = blobs(h, w, 2 + i) if i < 3 else None
        base = rng.normal(0, 1, (h, w)) + (1.5 * (mask > 0) if mask is not None else 0)
        add("smooth", i, base.astype(np.float32), mask)
    # masks stored at twice the map size: resized bilinearly then > 0.5
    for i in range(4):
        mask = blobs(24, 24, 2) if i % 2 == 0 else None
        base = rng.random((24, 24)) + (0.5 * (mask > 0) if mask is not None else 0)
        add("resized", i, base.astype(np.float32), mask, mask_size=(48, 48))
    # degenerate: only normal images
    for i in range(3):
        add("allnormal", i, rng.random((16, 16)).astype(np.float32), None)
    # degenerate for image metrics: only anomalous images
    for i in range(3):
        mask = blobs(20, 20, 2)
        add("allanomalous", i, (rng.random((20, 20)) + (mask > 0)).astype(np.float32), mask)
    json.dump(meta, open(os.path.join(out, "meta.json"), "w"), indent=1)
    expected = score(os.path.join(out, "meta.json"), os.path.join(out, "maps"))
    # also with given image scores
    with open(os.path.join(out, "scores.csv"), "w") as f:
        f.write("img_path,score\n")
        for cls, recs in meta["test"].items():
            for r in recs:
                f.write(f"{r['img_path']},{rng.random():.6f}\n")
    expected_csv = score(os.path.join(out, "meta.json"), os.path.join(out, "maps"),
                         scores_csv=os.path.join(out, "scores.csv"))
    json.dump({"top1": expected, "scores_csv": expected_csv}, open(os.path.join(out, "expected.json"), "w"),
              indent=1)
    print(json.dumps(expected, indent=1))


def make_bench(out, n, size):
    """One category of n maps at size x size: smooth blobs + noise, half anomalous with several regions."""
    rng = np.random.default_rng(0)
    meta = {"train": {}, "test": {"bench": []}}
    os.makedirs(os.path.join(out, "maps", "bench"), exist_ok=True)
    os.makedirs(os.path.join(out, "gt"), exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        if i % 2 == 0:
            for _ in range(rng.integers(1, 4)):
                cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(5, size // 8)
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 255
        amap = (rng.random((size, size)) * 0.7 + 0.5 * (mask > 0)).astype(np.float32)
        np.save(os.path.join(out, "maps", "bench", f"{i:03d}.npy"), amap)
        rec = {"img_path": f"bench/{i:03d}.png", "mask_path": "", "cls_name": "bench", "specie_name": "good",
               "anomaly": 0}
        if i % 2 == 0:
            Image.fromarray(mask, "L").save(os.path.join(out, "gt", f"{i:03d}.png"))
            rec.update(mask_path=f"gt/{i:03d}.png", specie_name="anomaly", anomaly=1)
        meta["test"]["bench"].append(rec)
    json.dump(meta, open(os.path.join(out, "meta.json"), "w"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta")
    ap.add_argument("--maps")
    ap.add_argument("--root")
    ap.add_argument("--scores")
    ap.add_argument("--out")
    ap.add_argument("--make-cases")
    ap.add_argument("--make-bench")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", type=int, default=518)
    a = ap.parse_args()
    if a.make_cases:
        make_cases(a.make_cases)
    elif a.make_bench:
        make_bench(a.make_bench, a.n, a.size)
    else:
        t0 = time.time()
        res = score(a.meta, a.maps, a.root, a.scores)
        dt = time.time() - t0
        print(json.dumps({"seconds": dt, "categories": res}, indent=1))
        if a.out:
            json.dump({"seconds": dt, "categories": res}, open(a.out, "w"), indent=1)

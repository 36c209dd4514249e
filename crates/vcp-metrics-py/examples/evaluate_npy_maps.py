"""Score the anomaly maps of any run saved as .npy files (e.g. the official VCP-CLIP / AnomalyCLIP
code with `np.save` added to its test loop) against a meta.json dataset, with vcp_metrics.

  python evaluate_npy_maps.py META.json MAPS_DIR [ROOT]

MAPS_DIR/<img_path with .npy> per test image, as `vcp eval-maps` reads them.
"""
import json
import os
import sys

import numpy as np
from PIL import Image

import vcp_metrics


def mask_of(root, rec, shape):
    if not rec["mask_path"]:
        return np.zeros(shape, bool)
    m = Image.open(os.path.join(root, rec["mask_path"])).convert("L").resize(shape[::-1], Image.BILINEAR)
    return np.asarray(m, np.float32) / 255.0 > 0.5


def main(meta_path, maps_dir, root=None):
    root = root or os.path.dirname(os.path.abspath(meta_path))
    # The three lines: records, maps, metrics.
    recs = [r for rs in json.load(open(meta_path))["test"].values() for r in rs]
    maps = [np.load(os.path.join(maps_dir, os.path.splitext(r["img_path"])[0] + ".npy")) for r in recs]
    result = vcp_metrics.evaluate(maps, [mask_of(root, r, m.shape) for r, m in zip(recs, maps)],
                                  labels=[r["anomaly"] for r in recs], categories=[r["cls_name"] for r in recs])
    print(json.dumps(result["mean"], indent=1))
    return result


if __name__ == "__main__":
    main(*sys.argv[1:])

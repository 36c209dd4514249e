"""Exact, fast anomaly-segmentation metrics, from the Rust crate ``vcp-metrics``.

Every metric equals its reference: scikit-learn's ``roc_auc_score``, ``average_precision_score``
and ``precision_recall_curve`` F1-max (F1 = 2PR/(P+R+1e-8)); the AUPRO of the zero-shot
repositories (cflow-ad ``cal_pro_score``: 200 thresholds, FPR < 0.3 rescaled, ``method="cflow"``)
and the MVTec AD official one (exact PRO curve integrated to FPR 0.3, ``method="mvtec"``).
Pixel metrics pool all pixels of a category; ``evaluate`` reports each category and their
unweighted mean, as the papers do.

Inputs are numpy arrays; float32 C-contiguous maps and bool masks are read in place (other
dtypes are converted once). The GIL is released while computing. Bad input raises
``ValueError`` naming the argument and the offending index.

    >>> import numpy as np, vcp_metrics
    >>> maps = np.random.rand(8, 64, 64).astype(np.float32)
    >>> masks = np.zeros((8, 64, 64), bool); masks[4:, 20:30, 20:30] = True
    >>> r = vcp_metrics.evaluate(maps, masks)
    >>> sorted(r["mean"])[:3]
    ['ap_px', 'ap_sp', 'aupro30_px']
"""

import json

import numpy as np

from . import _core

__all__ = ["evaluate", "auroc", "average_precision", "f1_max", "aupro", "COLUMNS"]

#: The metric keys of ``metrics.json`` (and of ``evaluate(...)["mean"]``).
COLUMNS = ["auroc_px", "aupro_px", "aupro30_px", "ap_px", "f1_px", "iou_px", "auroc_sp", "ap_sp", "f1_sp"]


def _as_maps(maps, name="maps"):
    """[N, H, W] array or a sequence of 2-D arrays -> list of float32 C-contiguous 2-D arrays."""
    if isinstance(maps, np.ndarray):
        if maps.ndim != 3:
            raise ValueError(f"{name}: expected an [N, H, W] array or a list of 2-D arrays, got shape {maps.shape}")
        items = list(maps)
    elif isinstance(maps, (list, tuple)):
        items = list(maps)
    else:
        raise ValueError(f"{name}: expected a numpy array or a list of arrays, got {type(maps).__name__}")
    if not items:
        raise ValueError(f"{name}: empty (no maps)")
    out = []
    for i, m in enumerate(items):
        m = np.asarray(m)
        if m.ndim != 2:
            raise ValueError(f"{name}[{i}]: expected a 2-D map, got shape {m.shape}")
        if m.size == 0:
            raise ValueError(f"{name}[{i}]: empty map of shape {m.shape}")
        if m.dtype.kind not in "fiu":
            raise ValueError(f"{name}[{i}]: dtype {m.dtype} is not a real number type")
        if m.dtype.kind == "f" and not np.isfinite(m).all():
            bad = int(np.flatnonzero(~np.isfinite(m.ravel()))[0])
            raise ValueError(f"{name}[{i}]: non-finite value (NaN or inf) at flat index {bad}")
        out.append(np.ascontiguousarray(m, dtype=np.float32))
    return out


def _as_masks(masks, shapes, name="masks"):
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3:
            raise ValueError(f"{name}: expected an [N, H, W] array or a list of 2-D arrays, got shape {masks.shape}")
        items = list(masks)
    elif isinstance(masks, (list, tuple)):
        items = list(masks)
    else:
        raise ValueError(f"{name}: expected a numpy array or a list of arrays, got {type(masks).__name__}")
    if len(items) != len(shapes):
        raise ValueError(f"{name}: {len(items)} masks for {len(shapes)} maps")
    out = []
    for i, (m, shape) in enumerate(zip(items, shapes)):
        m = np.asarray(m)
        if m.shape != shape:
            raise ValueError(f"{name}[{i}]: shape {m.shape} differs from maps[{i}] {shape}")
        if m.dtype == np.bool_:
            out.append(np.ascontiguousarray(m))
        elif m.dtype.kind in "iu":
            out.append(np.ascontiguousarray(m > 0))
        elif m.dtype.kind == "f":
            if not np.isfinite(m).all():
                raise ValueError(f"{name}[{i}]: non-finite value (NaN or inf)")
            out.append(np.ascontiguousarray(m > 0))
        else:
            raise ValueError(f"{name}[{i}]: dtype {m.dtype} is not bool or a number type")
    return out


def _as_1d(x, n, name, kind):
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if len(a) != n:
        raise ValueError(f"{name}: {len(a)} values for {n} images")
    if kind == "score":
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{name}: dtype {a.dtype} is not a real number type")
        if not np.isfinite(a).all():
            raise ValueError(f"{name}[{int(np.flatnonzero(~np.isfinite(a))[0])}]: non-finite value (NaN or inf)")
        return np.ascontiguousarray(a, dtype=np.float32)
    if a.dtype == np.bool_:
        return np.ascontiguousarray(a)
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name}: dtype {a.dtype} is not bool or a number type")
    return np.ascontiguousarray(a > 0)


def evaluate(maps, masks, scores=None, labels=None, categories=None):
    """All metrics of ``metrics.json`` (``vcp eval-maps``), per category and their mean.

    Args:
        maps: anomaly maps, float ``[N, H, W]`` or a list of N 2-D arrays (sizes may differ).
        masks: ground truth of the same shapes; bool or any number type, ``> 0`` is anomalous.
        scores: image scores ``[N]``; default: the mean of each map's top 1% values.
        labels: image labels ``[N]`` (bool or ``> 0``); default: whether the mask has any pixel.
        categories: ``N`` category names; default: one category ``"all"``.

    Returns:
        ``{"categories": {name: {metric: value}}, "mean": {metric: value}, "warnings": {name:
        [why a metric is None]}, "notes": [...], "columns": COLUMNS}``. Values are fractions;
        a metric that is undefined for a category (e.g. an all-normal category has no pixel
        AUROC) is ``None`` and the reason is in ``warnings``; the mean leaves it out and says so
        in ``notes``. Each category also has ``f1_px_threshold`` and ``f1_sp_threshold``.
    """
    m = _as_maps(maps)
    k = _as_masks(masks, [x.shape for x in m])
    n = len(m)
    s = _core.top1_percent(m) if scores is None else _as_1d(scores, n, "scores", "score")
    s = np.ascontiguousarray(s, dtype=np.float32)
    lab = np.array([bool(x.any()) for x in k]) if labels is None else _as_1d(labels, n, "labels", "label")
    if categories is None:
        names, ids = ["all"], [0] * n
    else:
        cats = list(categories)
        if len(cats) != n:
            raise ValueError(f"categories: {len(cats)} names for {n} images")
        names = list(dict.fromkeys(str(c) for c in cats))
        pos = {c: i for i, c in enumerate(names)}
        ids = [pos[str(c)] for c in cats]
    return json.loads(_core.evaluate_json(m, k, s, lab, ids, names))


def _binary(labels, scores):
    s = np.asarray(scores).ravel()
    lab = np.asarray(labels).ravel()
    if s.size == 0:
        raise ValueError("scores: empty")
    if lab.size != s.size:
        raise ValueError(f"labels: {lab.size} values for {s.size} scores")
    return _core.binary(_as_1d(lab, s.size, "labels", "label"), _as_1d(s, s.size, "scores", "score"))


def auroc(labels, scores):
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``); None with one class only."""
    return _binary(labels, scores)[0]


def average_precision(labels, scores):
    """``sklearn.metrics.average_precision_score``; None without positives."""
    return _binary(labels, scores)[1]


def f1_max(labels, scores):
    """Best F1 over ``precision_recall_curve`` (F1 = 2PR/(P+R+1e-8)) and its threshold:
    ``(f1, threshold)``."""
    r = _binary(labels, scores)
    return r[2], r[3]


def aupro(masks, maps, method="cflow", integration_limit=0.3):
    """Per-region overlap AUPRO of one category.

    ``method="cflow"``: the zero-shot repositories' ``cal_pro_score`` (200 thresholds between the
    maps' min and max, FPR < 0.3 min-max rescaled to [0, 1], trapezoid). ``method="mvtec"``: the
    MVTec AD official evaluation (exact PRO curve, integrated to FPR 0.3, divided by 0.3).
    Regions are 8-connected components of each mask. Returns None when undefined.
    """
    if integration_limit != 0.3:
        raise ValueError("integration_limit: only 0.3 (the value both references use) is supported")
    m = _as_maps(maps)
    k = _as_masks(masks, [x.shape for x in m])
    cflow, mvtec, _ = _core.aupro_pair(m, k)
    if method == "cflow":
        return cflow
    if method == "mvtec":
        return mvtec
    raise ValueError(f"method: {method!r} is not 'cflow' or 'mvtec'")

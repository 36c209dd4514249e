"""vcp_metrics against scikit-learn and the reference AUPRO implementations (tools/metrics_reference.py),
against `vcp eval-maps` on the same files, and on bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import metrics_reference as ref  # noqa: E402
import vcp_metrics  # noqa: E402

CASES = os.path.join(ROOT, "crates", "vcp-metrics", "tests", "fixtures", "cases")
EXACT = {"auroc_px", "ap_px", "f1_px", "iou_px", "auroc_sp", "ap_sp", "f1_sp"}


def check(got, want, where):
    for k, w in want.items():
        if k.endswith("_threshold"):
            continue
        g = got[k]
        tol = 1e-6 if k in EXACT else 1e-4
        assert g is not None, f"{where} {k}: None, want {w}"
        assert abs(g - w) <= tol, f"{where} {k}: {g} vs reference {w}"
    for k in vcp_metrics.COLUMNS:
        if k not in want:
            assert got[k] is None, f"{where} {k}: {got[k]} where the reference has none"


def load_cases():
    meta = json.load(open(os.path.join(CASES, "meta.json")))
    out = {}
    for cls, recs in meta["test"].items():
        maps, masks, labels = [], [], []
        for r in recs:
            m = np.load(os.path.join(CASES, "maps", os.path.splitext(r["img_path"])[0] + ".npy"))
            maps.append(m)
            masks.append(ref.load_mask(os.path.join(CASES, r["mask_path"]) if r["mask_path"] else "", m.shape))
            labels.append(int(r["anomaly"]))
        out[cls] = (maps, masks, labels)
    return out


def stacked_cases():
    """The committed cases as flat lists (maps, masks, labels, category names)."""
    maps, masks, labels, cats = [], [], [], []
    for cls, (m, k, l) in load_cases().items():
        maps += m
        masks += k
        labels += l
        cats += [cls] * len(m)
    return maps, masks, labels, cats


def test_committed_cases_equal_the_references():
    expected = json.load(open(os.path.join(CASES, "expected.json")))["top1"]
    maps, masks, labels, cats = stacked_cases()
    r = vcp_metrics.evaluate(maps, masks, labels=labels, categories=cats)
    assert set(r["categories"]) == set(expected)
    for cls, want in expected.items():
        check(r["categories"][cls], want, cls)


def random_category(rng, n, h, w, levels=None, all_normal=False, all_anomalous=False):
    maps = rng.random((n, h, w)).astype(np.float32)
    if levels:  # many ties
        maps = (np.floor(maps * levels) / levels).astype(np.float32)
    masks = np.zeros((n, h, w), np.uint8)
    labels = np.zeros(n, int)
    for i in range(n):
        if all_normal or (not all_anomalous and i % 2 == 0):
            continue
        for _ in range(rng.integers(1, 4)):  # several regions
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            hh, ww = rng.integers(2, max(3, h // 3)), rng.integers(2, max(3, w // 3))
            masks[i, y : y + hh, x : x + ww] = 1
            maps[i, y : y + hh, x : x + ww] += np.float32(rng.random() * 0.8)
        labels[i] = 1
    return maps, masks, labels


@pytest.mark.parametrize("seed", range(6))
def test_random_maps_equal_sklearn_and_the_aupro_references(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))  # non-square
    levels = [None, 7][seed % 2]
    maps, masks, labels = random_category(rng, 8, h, w, levels)
    scores = np.array([ref.top1(m) for m in maps], np.float32)
    want = ref.score_category(maps, masks, labels, scores)
    r = vcp_metrics.evaluate(maps, masks.astype(bool) if seed % 3 == 0 else masks)
    check(r["categories"]["all"], want, f"seed {seed}")
    # The single-metric functions agree with sklearn directly.
    from sklearn.metrics import average_precision_score, roc_auc_score

    flat_m, flat_k = maps.ravel(), masks.ravel()
    assert abs(vcp_metrics.auroc(flat_k, flat_m) - roc_auc_score(flat_k, flat_m)) < 1e-6
    assert abs(vcp_metrics.average_precision(flat_k, flat_m) - average_precision_score(flat_k, flat_m)) < 1e-6
    f1, th = vcp_metrics.f1_max(flat_k, flat_m)
    rf1, rth = ref.f1_max(flat_k, flat_m)
    assert abs(f1 - rf1) < 1e-6 and abs(th - rth) < 1e-6
    assert abs(vcp_metrics.aupro(masks, maps, method="cflow") - ref.cal_pro_score(masks, maps)) < 1e-4
    x, y = ref.mvtec_pro_curve(maps, masks)
    assert abs(vcp_metrics.aupro(masks, maps, method="mvtec") - ref.trapezoid(x, y, 0.3) / 0.3) < 1e-4


def test_degenerate_categories_are_none_with_a_reason_and_left_out_of_the_mean():
    rng = np.random.default_rng(7)
    a = random_category(rng, 4, 16, 20)
    normal = random_category(rng, 4, 16, 20, all_normal=True)
    anomalous = random_category(rng, 4, 16, 20, all_anomalous=True)
    maps = list(a[0]) + list(normal[0]) + list(anomalous[0])
    masks = list(a[1]) + list(normal[1]) + list(anomalous[1])
    cats = ["a"] * 4 + ["normal"] * 4 + ["anomalous"] * 4
    r = vcp_metrics.evaluate(maps, masks, categories=cats)
    assert r["categories"]["normal"]["auroc_px"] is None and r["categories"]["normal"]["auroc_sp"] is None
    assert any("no anomalous pixels" in w for w in r["warnings"]["normal"])
    assert r["categories"]["anomalous"]["auroc_sp"] is None
    assert r["categories"]["anomalous"]["auroc_px"] is not None  # normal pixels around the regions
    # The mean of auroc_sp is over the defined categories only.
    assert abs(r["mean"]["auroc_sp"] - r["categories"]["a"]["auroc_sp"]) < 1e-12
    assert any("auroc_sp" in n for n in r["notes"])
    # Maps of different sizes in one category.
    r2 = vcp_metrics.evaluate([a[0][0], a[0][1][:10, :12]], [a[1][0], a[1][1][:10, :12]])
    assert "all" in r2["categories"]


def vcp_binary():
    for p in ("target/release/vcp", "target/debug/vcp"):
        full = os.path.join(ROOT, p)
        if os.path.exists(full):
            return full
    return None


def test_identical_to_vcp_eval_maps(tmp_path):
    # CI builds the binary before these tests (cargo test --release): a missing binary is a
    # failure, not a silent skip. Outside a checkout, VCP_METRICS_NO_CLI=1 skips it on purpose.
    if vcp_binary() is None:
        if os.environ.get("VCP_METRICS_NO_CLI") == "1":
            pytest.skip("VCP_METRICS_NO_CLI=1: the comparison with `vcp eval-maps` is skipped")
        pytest.fail("target/release/vcp is missing: build it first (cargo build --release -p vcp-cli)")
    out = tmp_path / "out"
    subprocess.run(
        [vcp_binary(), "eval-maps", "--meta", os.path.join(CASES, "meta.json"), "--maps",
         os.path.join(CASES, "maps"), "--out", str(out)],
        check=True, capture_output=True,
    )
    cli = json.load(open(out / "metrics.json"))
    maps, masks, labels, cats = stacked_cases()
    r = vcp_metrics.evaluate(maps, masks, labels=labels, categories=cats)
    for cls in cli["categories"]:
        for k in vcp_metrics.COLUMNS:
            a, b = cli["categories"][cls][k], r["categories"][cls][k]
            assert (a is None and b is None) or abs(a - b) < 1e-12, f"{cls} {k}: cli {a} vs python {b}"
    for k in vcp_metrics.COLUMNS:
        a, b = cli["mean"][k], r["mean"][k]
        assert (a is None and b is None) or abs(a - b) < 1e-12, k


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda: vcp_metrics.evaluate(np.zeros((2, 4, 4), np.complex64), np.zeros((2, 4, 4), bool)), "maps[0]"),
        (lambda: vcp_metrics.evaluate(np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 5), bool)), "masks[0]"),
        (lambda: vcp_metrics.evaluate(np.zeros((2, 4, 4), np.float32), np.zeros((3, 4, 4), bool)), "masks"),
        (lambda: vcp_metrics.evaluate(np.zeros((0, 4, 4), np.float32), np.zeros((0, 4, 4), bool)), "maps: empty"),
        (lambda: vcp_metrics.evaluate([np.zeros((0, 4), np.float32)], [np.zeros((0, 4), bool)]), "maps[0]: empty"),
        (lambda: vcp_metrics.evaluate(np.zeros((4, 4), np.float32), np.zeros((4, 4), bool)), "maps"),
        (lambda: vcp_metrics.evaluate([np.ones((3, 3)), np.array([[0, np.nan], [1, 1]])], [np.zeros((3, 3)), np.zeros((2, 2))]), "maps[1]"),
        (lambda: vcp_metrics.evaluate(np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool), scores=[0.1, np.inf]), "scores[1]"),
        (lambda: vcp_metrics.evaluate(np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool), scores=[0.1]), "scores"),
        (lambda: vcp_metrics.evaluate(np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool), labels=[1, 0, 1]), "labels"),
        (lambda: vcp_metrics.evaluate(np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), "U1")), "masks[0]"),
        (lambda: vcp_metrics.evaluate(np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool), categories=["a"]), "categories"),
        (lambda: vcp_metrics.auroc([0, 1], [0.5]), "labels"),
        (lambda: vcp_metrics.auroc([], []), "scores: empty"),
        (lambda: vcp_metrics.aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)), method="x"), "method"),
        (lambda: vcp_metrics.evaluate("maps", "masks"), "maps"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, needle):
    with pytest.raises(ValueError) as e:
        call()
    assert needle in str(e.value), str(e.value)


def test_worked_example_scores_npy_maps_like_the_reference_script():
    sys.path.insert(0, os.path.join(ROOT, "crates", "vcp-metrics-py", "examples"))
    import evaluate_npy_maps

    r = evaluate_npy_maps.main(os.path.join(CASES, "meta.json"), os.path.join(CASES, "maps"))
    want = ref.score(os.path.join(CASES, "meta.json"), os.path.join(CASES, "maps"))
    for cls, w in want.items():
        check(r["categories"][cls], w, cls)

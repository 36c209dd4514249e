//! `vcp_metrics._core`: the Rust side of the Python package. Inputs arrive already checked and
//! normalised by `python/vcp_metrics/__init__.py` (float32 maps, bool masks, C-contiguous, same
//! shapes); they are read in place (no copy) and the GIL is released while computing.

use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use vcp_metrics::{evaluate_category, mean_over_categories, pixel_metrics, MapRef, COLUMNS};

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Borrow the arrays' memory as slices (no copy). numpy's borrow checker guarantees nobody
/// writes to them while the readonly views live.
fn slices<'a, T: numpy::Element>(
    arrays: &'a [PyReadonlyArray2<'_, T>],
    what: &str,
) -> PyResult<Vec<&'a [T]>> {
    arrays
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.as_slice()
                .map_err(|_| value_error(format!("{what}[{i}]: not C-contiguous")))
        })
        .collect()
}

/// Every metric of `metrics.json`, per category and their unweighted mean. Returns the JSON text
/// of `{"categories": {name: {...}}, "mean": {...}, "warnings": {name: [...]}, "notes": [...],
/// "columns": [...]}`.
#[pyfunction]
#[pyo3(signature = (maps, masks, scores, labels, categories, names))]
fn evaluate_json(
    py: Python<'_>,
    maps: Vec<PyReadonlyArray2<'_, f32>>,
    masks: Vec<PyReadonlyArray2<'_, bool>>,
    scores: PyReadonlyArray1<'_, f32>,
    labels: PyReadonlyArray1<'_, bool>,
    categories: Vec<usize>,
    names: Vec<String>,
) -> PyResult<String> {
    let shapes: Vec<(usize, usize)> = maps.iter().map(|m| (m.shape()[0], m.shape()[1])).collect();
    let map_s = slices(&maps, "maps")?;
    let mask_s = slices(&masks, "masks")?;
    let scores = scores.as_slice().map_err(value_error)?;
    let labels = labels.as_slice().map_err(value_error)?;
    py.detach(|| -> Result<String, String> {
        let mut rows = Vec::new();
        let mut warnings = serde_json::Map::new();
        for (c, name) in names.iter().enumerate() {
            let idx: Vec<usize> = (0..map_s.len()).filter(|&i| categories[i] == c).collect();
            let refs: Vec<MapRef> = idx
                .iter()
                .map(|&i| MapRef {
                    scores: map_s[i],
                    mask: mask_s[i],
                    height: shapes[i].0,
                    width: shapes[i].1,
                })
                .collect();
            let l: Vec<bool> = idx.iter().map(|&i| labels[i]).collect();
            let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
            let r =
                evaluate_category(&refs, &l, &s).map_err(|e| format!("category {name}: {e}"))?;
            warnings.insert(name.clone(), serde_json::json!(r.warnings));
            rows.push((name.clone(), r.metrics));
        }
        let (mean, notes) = mean_over_categories(&rows);
        let mut cats = serde_json::Map::new();
        for (n, m) in &rows {
            cats.insert(
                n.clone(),
                serde_json::to_value(m).map_err(|e| e.to_string())?,
            );
        }
        let out = serde_json::json!({
            "categories": cats,
            "mean": mean,
            "warnings": warnings,
            "notes": notes,
            "columns": COLUMNS,
        });
        Ok(out.to_string())
    })
    .map_err(value_error)
}

/// Pixel-level AUPRO of one set of maps: `(cflow, mvtec)` (None where undefined) and warnings.
#[pyfunction]
fn aupro_pair(
    py: Python<'_>,
    maps: Vec<PyReadonlyArray2<'_, f32>>,
    masks: Vec<PyReadonlyArray2<'_, bool>>,
) -> PyResult<(Option<f64>, Option<f64>, Vec<String>)> {
    let shapes: Vec<(usize, usize)> = maps.iter().map(|m| (m.shape()[0], m.shape()[1])).collect();
    let map_s = slices(&maps, "maps")?;
    let mask_s = slices(&masks, "masks")?;
    py.detach(|| {
        let refs: Vec<MapRef> = (0..map_s.len())
            .map(|i| MapRef {
                scores: map_s[i],
                mask: mask_s[i],
                height: shapes[i].0,
                width: shapes[i].1,
            })
            .collect();
        pixel_metrics(&refs).map(|r| (r.metrics.aupro_px, r.metrics.aupro30_px, r.warnings))
    })
    .map_err(value_error)
}

/// `(auroc, ap, f1_max, f1_threshold)`, each None where undefined.
type Binary = (Option<f64>, Option<f64>, Option<f64>, Option<f64>);

/// AUROC, AP, F1-max and its threshold of scores against binary labels (1-D).
#[pyfunction]
fn binary(
    py: Python<'_>,
    labels: PyReadonlyArray1<'_, bool>,
    scores: PyReadonlyArray1<'_, f32>,
) -> PyResult<Binary> {
    let l = labels.as_slice().map_err(value_error)?;
    let s = scores.as_slice().map_err(value_error)?;
    Ok(py.detach(|| {
        let r = vcp_metrics::binary_metrics(l, s);
        (r.auroc, r.ap, r.f1_max, r.f1_threshold)
    }))
}

/// Mean of each map's top 1% values (the default image score of the ZSAS scripts).
#[pyfunction]
fn top1_percent(py: Python<'_>, maps: Vec<PyReadonlyArray2<'_, f32>>) -> PyResult<Vec<f32>> {
    let map_s = slices(&maps, "maps")?;
    py.detach(|| {
        map_s
            .iter()
            .enumerate()
            .map(|(i, m)| vcp_metrics::top1_percent(m).ok_or(format!("maps[{i}] is empty")))
            .collect::<Result<Vec<_>, _>>()
    })
    .map_err(value_error)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(evaluate_json, m)?)?;
    m.add_function(wrap_pyfunction!(aupro_pair, m)?)?;
    m.add_function(wrap_pyfunction!(binary, m)?)?;
    m.add_function(wrap_pyfunction!(top1_percent, m)?)?;
    Ok(())
}

//! `vcp eval-maps --meta META.json [--root ROOT] --maps MAPS_DIR [--scores SCORES.csv] [--out OUT_DIR]`
//!
//! Scores the anomaly maps of any method with the exact metrics of `vcp-metrics`: for each test
//! record, `MAPS_DIR/<img_path with .npy>` (2-D float32/float64) against the record's mask
//! (resized bilinearly to the map when sizes differ, then `> 0.5`).

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vcp_data::{mask, npy, Meta, Record};
use vcp_metrics::{evaluate_category, mean_over_categories, CategoryMetrics, MapRef, COLUMNS};

#[derive(clap::Args)]
pub struct Args {
    /// Dataset description (meta.json convention); only its `test` part is scored.
    #[arg(long)]
    meta: PathBuf,
    /// Dataset root the meta paths are relative to (default: the meta file's folder).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Folder of maps: `<img_path with its extension replaced by .npy>`.
    #[arg(long)]
    maps: PathBuf,
    /// Image scores, CSV with header `img_path,score` (default: mean of each map's top 1%).
    #[arg(long)]
    scores: Option<PathBuf>,
    /// Output folder for metrics.json / .csv / .md (default: MAPS_DIR).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip records whose map or mask is missing or invalid, and report them.
    #[arg(long)]
    skip_missing: bool,
}

fn read_scores(path: &Path) -> Result<HashMap<String, f32>> {
    let text = vcp_data::io::read_regular_string(path, 1 << 30)?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("").trim();
    if header.replace(' ', "") != "img_path,score" {
        bail!(
            "{}: header must be `img_path,score`, found `{header}`",
            path.display()
        );
    }
    let mut out = HashMap::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let (p, s) = line.rsplit_once(',').with_context(|| {
            format!(
                "{}: line {}: expected `img_path,score`",
                path.display(),
                i + 2
            )
        })?;
        let v: f32 = s.trim().parse().with_context(|| {
            format!(
                "{}: line {}: `{}` is not a number",
                path.display(),
                i + 2,
                s.trim()
            )
        })?;
        if !v.is_finite() {
            bail!("{}: line {}: score is not finite", path.display(), i + 2);
        }
        if out.insert(p.trim().to_string(), v).is_some() {
            // Two scores for one image: which one the user meant cannot be told.
            bail!(
                "{}: line {}: a second score for `{}`",
                path.display(),
                i + 2,
                p.trim()
            );
        }
    }
    Ok(out)
}

struct Loaded {
    scores: Vec<f32>,
    mask: Vec<bool>,
    height: usize,
    width: usize,
    label: bool,
    image_score: f32,
}

fn load_record(
    r: &Record,
    root: &Path,
    maps: &Path,
    given: &Option<HashMap<String, f32>>,
) -> Result<Loaded> {
    let map_path = maps.join(Path::new(&r.img_path).with_extension("npy"));
    let a = npy::read_f32_2d(&map_path)?;
    if a.data.is_empty() {
        bail!(
            "{}: empty map ({}x{})",
            map_path.display(),
            a.height,
            a.width
        );
    }
    if let Some(i) = a.data.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: non-finite value (NaN or inf) at pixel {i}",
            map_path.display()
        );
    }
    let m = if r.mask_path.is_empty() {
        vec![false; a.height * a.width]
    } else {
        let mp = vcp_data::meta::resolve(root, &r.mask_path)?;
        // VisA ships index masks (1, 2, ...): anomalous wherever > 0.
        let (grey, _, _) = mask::load_grey(&mp)?;
        let index = grey.iter().any(|&v| v > 0) && grey.iter().all(|&v| v < 128);
        mask::load_mask(&mp, a.height, a.width, index)?
    };
    let image_score = match given {
        Some(g) => *g
            .get(&r.img_path)
            .with_context(|| format!("no score for `{}` in the scores file", r.img_path))?,
        None => vcp_metrics::top1_percent(&a.data).context("empty map")?,
    };
    Ok(Loaded {
        scores: a.data,
        mask: m,
        height: a.height,
        width: a.width,
        label: r.anomaly == 1,
        image_score,
    })
}

pub fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}", x * 100.0))
        .unwrap_or_else(|| "n/a".into())
}

/// Columns as the reference repositories print them (`iou` for iou_px), plus `aupro30_px`.
pub const TABLE_COLUMNS: [(&str, &str); 9] = [
    ("auroc_px", "auroc_px"),
    ("aupro_px", "aupro_px"),
    ("aupro30_px", "aupro30_px"),
    ("ap_px", "ap_px"),
    ("f1_px", "f1_px"),
    ("iou_px", "iou"),
    ("auroc_sp", "auroc_sp"),
    ("ap_sp", "ap_sp"),
    ("f1_sp", "f1_sp"),
];

pub fn markdown_table(rows: &[(String, CategoryMetrics)], mean: &CategoryMetrics) -> String {
    let mut s = String::from("| objects |");
    for (_, h) in TABLE_COLUMNS {
        s.push_str(&format!(" {h} |"));
    }
    s.push_str(" threshold |\n|:--|");
    s.push_str(&"--:|".repeat(TABLE_COLUMNS.len() + 1));
    s.push('\n');
    for (name, m) in rows
        .iter()
        .map(|(n, m)| (n.as_str(), m))
        .chain(std::iter::once(("mean", mean)))
    {
        s.push_str(&format!("| {name} |"));
        for (k, _) in TABLE_COLUMNS {
            s.push_str(&format!(" {} |", pct(m.get(k))));
        }
        s.push_str(&format!(
            " {} |\n",
            m.f1_px_threshold
                .map(|t| format!("{t:.3}"))
                .unwrap_or_else(|| "".into())
        ));
    }
    s
}

pub fn csv_table(rows: &[(String, CategoryMetrics)], mean: &CategoryMetrics) -> String {
    let mut s = String::from("objects");
    for (_, h) in TABLE_COLUMNS {
        s.push(',');
        s.push_str(h);
    }
    s.push_str(",threshold\n");
    for (name, m) in rows
        .iter()
        .map(|(n, m)| (n.as_str(), m))
        .chain(std::iter::once(("mean", mean)))
    {
        s.push_str(name);
        for (k, _) in TABLE_COLUMNS {
            s.push(',');
            if let Some(v) = m.get(k) {
                s.push_str(&format!("{:.2}", v * 100.0));
            }
        }
        s.push(',');
        if let Some(t) = m.f1_px_threshold {
            s.push_str(&format!("{t}"));
        }
        s.push('\n');
    }
    s
}

/// Write metrics.json / metrics.csv / metrics.md atomically into `out`; returns the markdown.
pub fn write_outputs(
    out: &Path,
    rows: &[(String, CategoryMetrics)],
    notes: &[String],
    image_score: &str,
) -> Result<String> {
    let (mean, mean_notes) = mean_over_categories(rows);
    let mut all_notes = notes.to_vec();
    all_notes.extend(mean_notes);
    let mut cats = serde_json::Map::new();
    for (n, m) in rows {
        cats.insert(n.clone(), serde_json::to_value(m)?);
    }
    let json = serde_json::json!({
        "categories": cats,
        "mean": mean,
        "image_score": image_score,
        "notes": all_notes,
        "columns": COLUMNS,
    });
    vcp_data::io::write_atomic(
        &out.join("metrics.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    vcp_data::io::write_atomic(&out.join("metrics.csv"), csv_table(rows, &mean).as_bytes())?;
    let md = markdown_table(rows, &mean);
    let mut doc = md.clone();
    doc.push_str(&format!("\nValues x100. Image score: {image_score}.\n"));
    for n in &all_notes {
        doc.push_str(&format!("- {n}\n"));
    }
    vcp_data::io::write_atomic(&out.join("metrics.md"), doc.as_bytes())?;
    Ok(md)
}

/// The metrics of one category's loaded maps.
fn evaluate_loaded(ok: &[Loaded]) -> Result<vcp_metrics::CategoryReport> {
    let maps: Vec<MapRef> = ok
        .iter()
        .map(|l| MapRef {
            scores: &l.scores,
            mask: &l.mask,
            height: l.height,
            width: l.width,
        })
        .collect();
    let labels: Vec<bool> = ok.iter().map(|l| l.label).collect();
    let scores: Vec<f32> = ok.iter().map(|l| l.image_score).collect();
    Ok(evaluate_category(&maps, &labels, &scores)?)
}

pub fn run(a: Args) -> Result<()> {
    let meta = Meta::load(&a.meta)?;
    let out = a.out.clone().unwrap_or_else(|| a.maps.clone());
    if a.out.is_some() {
        vcp_data::io::prepare_out_dir(&out, &["metrics.json", "metrics.csv", "metrics.md"])?;
    }
    let root = a
        .root
        .clone()
        .unwrap_or_else(|| a.meta.parent().map(Path::to_path_buf).unwrap_or_default());
    let given = a.scores.as_deref().map(read_scores).transpose()?;
    let image_score = match &a.scores {
        Some(p) => format!("from {}", p.display()),
        None => "mean of each map's top 1% values".to_string(),
    };
    if meta.test.is_empty() {
        bail!("{}: the `test` split has no records", a.meta.display());
    }
    let bar = vcp_runner::bar(meta.test.len() as u64, "maps");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut skipped = Vec::new();
    for (cls, recs) in &meta.test.0 {
        bar.set_prefix(cls.clone());
        let loaded: Vec<(usize, Result<Loaded>)> = recs
            .par_iter()
            .enumerate()
            .map(|(i, r)| {
                let l = load_record(r, &root, &a.maps, &given)
                    .with_context(|| format!("record test.{cls}[{i}]"));
                bar.inc(1);
                (i, l)
            })
            .collect();
        let mut ok = Vec::new();
        for (i, l) in loaded {
            match l {
                Ok(l) => ok.push(l),
                Err(e) if a.skip_missing => skipped.push(format!(
                    "{} ({})",
                    recs[i].img_path,
                    crate::util::one_line(&e)
                )),
                Err(e) => return Err(e),
            }
        }
        if ok.is_empty() {
            notes.push(format!("{cls}: no usable maps; left out"));
            continue;
        }
        let report = evaluate_loaded(&ok).with_context(|| format!("category {cls}"))?;
        for w in &report.warnings {
            bar.suspend(|| eprintln!("warning: {cls}: {w}"));
            notes.push(format!("{cls}: {w}"));
        }
        rows.push((cls.clone(), report.metrics));
    }
    bar.finish_and_clear();
    if !skipped.is_empty() {
        eprintln!("skipped {} records (--skip-missing):", skipped.len());
        for s in skipped.iter().take(20) {
            eprintln!("  {s}");
        }
        notes.push(format!(
            "skipped {} records: {}",
            skipped.len(),
            skipped.join("; ")
        ));
    }
    let md = write_outputs(&out, &rows, &notes, &image_score)?;
    outln!("{md}");
    outln!(
        "Image score: {image_score}. Wrote {}/metrics.{{json,csv,md}}",
        out.display()
    );
    Ok(())
}

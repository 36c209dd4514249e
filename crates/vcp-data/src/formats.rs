//! `meta.json` from the native layouts users download, so nobody hand-writes meta files.
//!
//! * `mvtec` (MVTec AD) and `mpdd`: `<cls>/train/good/*`, `<cls>/test/<defect>/*` (`good` =
//!   normal), masks `<cls>/ground_truth/<defect>/<stem>_mask.png`.
//! * `btad`: `<cls>/train/ok/*`, `<cls>/test/{ok,ko}/*`, masks `<cls>/ground_truth/ko/<stem>.png`
//!   (or `.bmp`).
//! * `visa`: `split_csv/1cls.csv` with columns `object,split,label,image,mask` (paths relative to
//!   the root; masks are index images, anomalous where > 0).
//! * `folder` (generic): `<cls>/train/good/*` (optional), `<cls>/test/good/*`,
//!   `<cls>/test/<defect>/*`, masks `<cls>/ground_truth/<defect>/<stem>.<ext>` or
//!   `<stem>_mask.<ext>`; any image extension (png, jpg, bmp, tif).
//!
//! Every anomalous image needs a mask (pixel metrics would otherwise count its defect as normal);
//! a missing mask is an error naming the image. Categories and files are sorted by name.

use crate::error::{DataError, Result};
use crate::meta::{Meta, Record, Split};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Mvtec,
    Visa,
    Btad,
    Mpdd,
    Folder,
}

impl std::str::FromStr for Format {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "mvtec" => Format::Mvtec,
            "visa" => Format::Visa,
            "btad" => Format::Btad,
            "mpdd" => Format::Mpdd,
            "folder" => Format::Folder,
            o => {
                return Err(DataError::Invalid(format!(
                    "unknown format `{o}` (mvtec, visa, btad, mpdd, folder)"
                )))
            }
        })
    }
}

const IMAGE_EXT: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXT.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::file(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}

fn record(
    root: &Path,
    img: &Path,
    mask: Option<&Path>,
    cls: &str,
    specie: &str,
    dataset: &str,
) -> Record {
    Record {
        img_path: rel(root, img),
        mask_path: mask.map(|m| rel(root, m)).unwrap_or_default(),
        cls_name: cls.to_string(),
        specie_name: specie.to_string(),
        anomaly: mask.is_some() as u8,
        dataset_name: Some(dataset.to_string()),
    }
}

/// Find a mask for `img` in `dir`, trying the given name patterns.
fn find_mask(dir: &Path, img: &Path, suffixes: &[&str]) -> Option<PathBuf> {
    let stem = img.file_stem()?.to_string_lossy().to_string();
    for suf in suffixes {
        for ext in IMAGE_EXT {
            let p = dir.join(format!("{stem}{suf}.{ext}"));
            if p.exists() {
                return Some(p);
            }
        }
    }
    None
}

/// MVTec-like trees (mvtec, mpdd, folder, btad differ in names).
fn tree(root: &Path, fmt: Format) -> Result<Meta> {
    let (good, dataset) = match fmt {
        Format::Btad => ("ok", "btad"),
        Format::Mpdd => ("good", "mpdd"),
        Format::Folder => ("good", "folder"),
        _ => ("good", "mvtec"),
    };
    let suffixes: &[&str] = match fmt {
        Format::Btad => &[""],
        Format::Folder => &["_mask", ""],
        _ => &["_mask"],
    };
    let mut meta = Meta::default();
    for cdir in sorted_dir(root)?
        .into_iter()
        .filter(|p| p.is_dir() && p.join("test").is_dir())
    {
        let cls = cdir.file_name().unwrap().to_string_lossy().to_string();
        let mut train = Vec::new();
        let tg = cdir.join("train").join(good);
        if tg.is_dir() {
            for img in sorted_dir(&tg)?.into_iter().filter(|p| is_image(p)) {
                train.push(record(root, &img, None, &cls, "good", dataset));
            }
        }
        let mut test = Vec::new();
        for ddir in sorted_dir(&cdir.join("test"))?
            .into_iter()
            .filter(|p| p.is_dir())
        {
            let defect = ddir.file_name().unwrap().to_string_lossy().to_string();
            for img in sorted_dir(&ddir)?.into_iter().filter(|p| is_image(p)) {
                if defect == good {
                    test.push(record(root, &img, None, &cls, "good", dataset));
                } else {
                    let mdir = cdir.join("ground_truth").join(&defect);
                    let mask = find_mask(&mdir, &img, suffixes).ok_or_else(|| {
                        DataError::file(
                            &img,
                            format!(
                                "anomalous image without a mask (looked in {})",
                                mdir.display()
                            ),
                        )
                    })?;
                    test.push(record(root, &img, Some(&mask), &cls, &defect, dataset));
                }
            }
        }
        if test.is_empty() {
            return Err(DataError::file(
                cdir.join("test"),
                "category has no test images",
            ));
        }
        meta.train.0.push((cls.clone(), train));
        meta.test.0.push((cls, test));
    }
    if meta.test.0.is_empty() {
        return Err(DataError::file(
            root,
            "no category folders with a `test` directory found",
        ));
    }
    Ok(meta)
}

fn visa(root: &Path) -> Result<Meta> {
    let csv = root.join("split_csv/1cls.csv");
    let text = crate::io::read_regular_string(&csv, 256 << 20)?;
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .collect();
    let col = |n: &str| {
        header
            .iter()
            .position(|h| h == n)
            .ok_or_else(|| DataError::file(&csv, format!("missing column `{n}`")))
    };
    let (co, cs, cl, ci, cm) = (
        col("object")?,
        col("split")?,
        col("label")?,
        col("image")?,
        col("mask")?,
    );
    let mut train = Split::default();
    let mut test = Split::default();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |c: usize| {
            f.get(c)
                .copied()
                .ok_or_else(|| DataError::file(&csv, format!("line {}: too few columns", i + 2)))
        };
        let (obj, split, label, img) = (get(co)?, get(cs)?, get(cl)?, get(ci)?);
        let mask = f.get(cm).copied().unwrap_or("");
        let anomalous = label == "anomaly";
        if anomalous && mask.is_empty() {
            return Err(DataError::file(
                &csv,
                format!("line {}: anomalous image {img} without a mask", i + 2),
            ));
        }
        let rec = Record {
            img_path: img.to_string(),
            mask_path: if anomalous {
                mask.to_string()
            } else {
                String::new()
            },
            cls_name: obj.to_string(),
            specie_name: if anomalous {
                "anomaly".into()
            } else {
                "good".into()
            },
            anomaly: anomalous as u8,
            dataset_name: Some("visa".into()),
        };
        let target = match split {
            "train" => &mut train,
            "test" => &mut test,
            o => {
                return Err(DataError::file(
                    &csv,
                    format!("line {}: split `{o}` (expected train or test)", i + 2),
                ))
            }
        };
        match target.0.iter_mut().find(|(c, _)| c == obj) {
            Some((_, v)) => v.push(rec),
            None => target.0.push((obj.to_string(), vec![rec])),
        }
    }
    Ok(Meta { train, test })
}

/// Build the meta of a dataset root in a native layout.
pub fn build_meta(root: &Path, fmt: Format) -> Result<Meta> {
    if !root.is_dir() {
        return Err(DataError::file(root, "not a directory"));
    }
    match fmt {
        Format::Visa => visa(root),
        _ => tree(root, fmt),
    }
}

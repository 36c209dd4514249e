//! The `meta.json` convention of APRIL-GAN / AnomalyCLIP / VCP-CLIP:
//! `{"train": {cls: [rec]}, "test": {cls: [rec]}}` with
//! `rec = {img_path, mask_path ("" = normal), cls_name, specie_name, anomaly (0/1), dataset_name?}`,
//! paths relative to the dataset root. Category order is the file's order.

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub img_path: String,
    pub mask_path: String,
    pub cls_name: String,
    #[serde(default)]
    pub specie_name: String,
    pub anomaly: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_name: Option<String>,
}

/// Categories in file order, each with its records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split(pub Vec<(String, Vec<Record>)>);

impl Split {
    pub fn categories(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(c, _)| c.as_str())
    }
    pub fn get(&self, cls: &str) -> Option<&[Record]> {
        self.0
            .iter()
            .find(|(c, _)| c == cls)
            .map(|(_, r)| r.as_slice())
    }
    pub fn len(&self) -> usize {
        self.0.iter().map(|(_, r)| r.len()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    pub train: Split,
    pub test: Split,
}

fn parse_split(path: &Path, name: &str, v: Option<&serde_json::Value>) -> Result<Split> {
    let Some(v) = v else {
        return Ok(Split::default());
    };
    let obj = v.as_object().ok_or_else(|| {
        DataError::file(path, format!("`{name}` must be an object of categories"))
    })?;
    let mut out = Vec::new();
    for (cls, recs) in obj {
        let arr = recs.as_array().ok_or_else(|| {
            DataError::file(path, format!("`{name}.{cls}` must be a list of records"))
        })?;
        let mut records = Vec::with_capacity(arr.len());
        for (i, r) in arr.iter().enumerate() {
            let rec: Record = serde_json::from_value(r.clone())
                .map_err(|e| DataError::file(path, format!("`{name}.{cls}[{i}]`: {e}")))?;
            if rec.anomaly > 1 {
                return Err(DataError::file(
                    path,
                    format!("`{name}.{cls}[{i}]`: anomaly must be 0 or 1"),
                ));
            }
            for p in [&rec.img_path, &rec.mask_path] {
                if !p.is_empty() && !is_inside(p) {
                    return Err(DataError::file(
                        path,
                        format!("`{name}.{cls}[{i}]`: path `{p}` points outside the dataset root"),
                    ));
                }
            }
            records.push(rec);
        }
        if records.is_empty() && name == "test" {
            return Err(DataError::file(
                path,
                format!("`test.{cls}` is an empty category"),
            ));
        }
        out.push((cls.clone(), records));
    }
    Ok(Split(out))
}

/// Any JSON value; a repeated key in any object is an error (serde_json reports its line).
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !keys.insert(k.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key `{k}` appears twice"
                )));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
}

/// Relative, without `..` escaping the root.
fn is_inside(p: &str) -> bool {
    let path = Path::new(p);
    let mut depth: i64 = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

impl Meta {
    /// Read and check a meta file; label/mask disagreements are printed as warnings (see
    /// [`Meta::label_warnings`]).
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::io::read_regular_string(path, 1 << 30)?;
        let m = Self::parse(&text, path)?;
        for w in m.label_warnings() {
            eprintln!("warning: {}: {w}", path.display());
        }
        Ok(m)
    }

    /// Test records whose label and mask disagree, counted: anomalous without a mask (its
    /// pixels all count as normal in the pixel metrics) and normal with a mask (the mask is
    /// used as given).
    pub fn label_warnings(&self) -> Vec<String> {
        let mut no_mask = Vec::new();
        let mut with_mask = Vec::new();
        for (_, recs) in &self.test.0 {
            for r in recs {
                if r.anomaly == 1 && r.mask_path.is_empty() {
                    no_mask.push(r.img_path.as_str());
                }
                if r.anomaly == 0 && !r.mask_path.is_empty() {
                    with_mask.push(r.img_path.as_str());
                }
            }
        }
        let mut w = Vec::new();
        if !no_mask.is_empty() {
            w.push(format!(
                "{} anomalous test image(s) have no mask, so all their pixels count as normal (first: {})",
                no_mask.len(),
                no_mask[0]
            ));
        }
        if !with_mask.is_empty() {
            w.push(format!(
                "{} normal test image(s) (anomaly 0) have a mask, which is used as given (first: {})",
                with_mask.len(),
                with_mask[0]
            ));
        }
        w
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        // JSON objects that repeat a key parse "fine" elsewhere (the last one wins): a category
        // listed twice would silently lose its first records. Refuse them, with the line.
        serde_json::from_str::<NoDuplicateKeys>(text)
            .map_err(|e| DataError::file(path, format!("invalid JSON: {e}")))?;
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| DataError::file(path, format!("invalid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| DataError::file(path, "top level must be an object"))?;
        if let Some(k) = obj.keys().find(|k| *k != "train" && *k != "test") {
            return Err(DataError::file(
                path,
                format!("unknown key `{k}` (expected `train` and `test`)"),
            ));
        }
        // serde_json is built with `preserve_order`, so categories come in file order.
        let meta = Meta {
            train: parse_split(path, "train", obj.get("train"))?,
            test: parse_split(path, "test", obj.get("test"))?,
        };
        for (name, split) in [("train", &meta.train), ("test", &meta.test)] {
            // An image listed twice would be counted twice; two images whose paths differ only
            // in the extension (or its case) would write and read the same `.npy` map.
            let mut seen: std::collections::HashMap<String, String> = Default::default();
            let mut maps: std::collections::HashMap<String, String> = Default::default();
            for (cls, recs) in &split.0 {
                for r in recs {
                    let at = format!("{name}.{cls}");
                    if let Some(prev) = seen.insert(r.img_path.clone(), at.clone()) {
                        return Err(DataError::file(
                            path,
                            format!("`{}` is listed twice (in `{prev}` and `{at}`)", r.img_path),
                        ));
                    }
                    let map = Path::new(&r.img_path)
                        .with_extension("npy")
                        .to_string_lossy()
                        .to_lowercase();
                    if let Some(other) = maps.insert(map.clone(), r.img_path.clone()) {
                        return Err(DataError::file(
                            path,
                            format!(
                                "`{other}` and `{}` would share one map `{map}`; rename one of them",
                                r.img_path
                            ),
                        ));
                    }
                }
            }
        }
        Ok(meta)
    }

    /// Write atomically as pretty JSON, categories in order.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut s = String::from("{\n");
        for (i, (name, split)) in [("train", &self.train), ("test", &self.test)]
            .iter()
            .enumerate()
        {
            s.push_str(&format!("  \"{name}\": {{"));
            for (j, (cls, recs)) in split.0.iter().enumerate() {
                s.push_str(if j == 0 { "\n" } else { ",\n" });
                s.push_str(&format!(
                    "    {}: {}",
                    serde_json::to_string(cls).unwrap(),
                    serde_json::to_string(recs).unwrap()
                ));
            }
            s.push_str(if split.0.is_empty() { "}" } else { "\n  }" });
            s.push_str(if i == 0 { ",\n" } else { "\n" });
        }
        s.push_str("}\n");
        crate::io::write_atomic(path, s.as_bytes())
    }
}

/// Resolve a record path against the dataset root. Paths with `..` were refused when the file
/// was read; here a symbolic link inside the root that leads outside it is refused too.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = root.join(rel);
    let (Ok(real), Ok(real_root)) = (p.canonicalize(), root.canonicalize()) else {
        // Missing: the reader's error names the file.
        return Ok(p);
    };
    if !real.starts_with(&real_root) {
        return Err(DataError::file(
            &p,
            format!(
                "leads outside the dataset root {} (to {}, through a symbolic link)",
                real_root.display(),
                real.display()
            ),
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REC: &str = r#"{"img_path": "a/b.png", "mask_path": "", "cls_name": "alpha", "specie_name": "good", "anomaly": 0}"#;

    #[test]
    fn keeps_file_order_and_rejects_bad_input() {
        let text = format!(
            r#"{{"train": {{"empty": []}}, "test": {{"zeta": [{REC}], "alpha": [{}]}}}}"#,
            REC.replace("a/b.png", "a/c.png")
        );
        let m = Meta::parse(&text, Path::new("m.json")).unwrap();
        assert_eq!(
            m.test.categories().collect::<Vec<_>>(),
            vec!["zeta", "alpha"]
        );
        let bad = text.replacen("\"specie_name\"", "\"colour\": 1, \"specie_name\"", 1);
        let e = Meta::parse(&bad, Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.json") && e.contains("colour") && e.contains("test.zeta[0]"),
            "{e}"
        );
        let out = text.replacen("a/b.png", "../../etc/passwd", 1);
        assert!(Meta::parse(&out, Path::new("m.json"))
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(Meta::parse(r#"{"val": {}}"#, Path::new("m.json")).is_err());
        let empty = format!(r#"{{"test": {{"zeta": [], "alpha": [{REC}]}}}}"#);
        let e = Meta::parse(&empty, Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.zeta") && e.contains("empty"), "{e}");
        // A category given twice (JSON would keep only the last), with its line.
        let twice = format!(
            "{{\"test\": {{\"zeta\": [{REC}],\n\"zeta\": [{}]}}}}",
            REC.replace("a/b.png", "a/c.png")
        );
        let e = Meta::parse(&twice, Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`zeta` appears twice") && e.contains("line 2"),
            "{e}"
        );
        // An image listed twice; two images that would share one map.
        let dup = format!(r#"{{"test": {{"zeta": [{REC}, {REC}]}}}}"#);
        let e = Meta::parse(&dup, Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a/b.png") && e.contains("listed twice"), "{e}");
        let clash = format!(
            r#"{{"test": {{"zeta": [{REC}, {}]}}}}"#,
            REC.replace("a/b.png", "a/b.PNG")
        );
        let e = Meta::parse(&clash, Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("share one map") && e.contains("a/b.PNG"), "{e}");
    }

    #[test]
    fn save_roundtrip() {
        let text = r#"{"train": {"a": []}, "test": {"b": [{"img_path": "x.png", "mask_path": "m.png", "cls_name": "b", "specie_name": "anomaly", "anomaly": 1}]}}"#;
        let m = Meta::parse(text, Path::new("m.json")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.json");
        m.save(&p).unwrap();
        assert_eq!(Meta::load(&p).unwrap(), m);
    }

    #[test]
    fn label_mask_disagreements_are_counted() {
        let text = r#"{"test": {"c": [
            {"img_path": "a.png", "mask_path": "", "cls_name": "c", "specie_name": "x", "anomaly": 1},
            {"img_path": "b.png", "mask_path": "", "cls_name": "c", "specie_name": "x", "anomaly": 1},
            {"img_path": "d.png", "mask_path": "d_mask.png", "cls_name": "c", "specie_name": "good", "anomaly": 0},
            {"img_path": "e.png", "mask_path": "", "cls_name": "c", "specie_name": "good", "anomaly": 0}]}}"#;
        let m = Meta::parse(text, Path::new("m.json")).unwrap();
        let w = m.label_warnings();
        assert_eq!(w.len(), 2);
        assert!(
            w[0].starts_with("2 anomalous") && w[0].contains("a.png"),
            "{}",
            w[0]
        );
        assert!(
            w[1].starts_with("1 normal") && w[1].contains("d.png"),
            "{}",
            w[1]
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_out_of_the_root_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (root, outside) = (d.path().join("root"), d.path().join("outside"));
        std::fs::create_dir_all(root.join("cls")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.png"), b"x").unwrap();
        std::fs::write(root.join("cls/ok.png"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("cls/link")).unwrap();
        assert!(resolve(&root, "cls/ok.png").is_ok());
        assert!(resolve(&root, "cls/missing.png").is_ok());
        let e = resolve(&root, "cls/link/secret.png")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outside the dataset root") && e.contains("link"),
            "{e}"
        );
    }
}

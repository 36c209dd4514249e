//! `meta.json` generation from each native layout (fixture trees built here), the loader, and
//! bad inputs: missing masks, empty categories, mismatched mask sizes, corrupt images.

use std::path::Path;
use vcp_data::formats::{build_meta, Format};

fn png(path: &Path, w: u32, h: u32, value: u8, grey: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if grey {
        image::GrayImage::from_pixel(w, h, image::Luma([value]))
            .save(path)
            .unwrap();
    } else {
        image::RgbImage::from_pixel(w, h, image::Rgb([value, value / 2, 255 - value]))
            .save(path)
            .unwrap();
    }
}

fn mvtec_like(root: &Path, good: &str, mask_name: impl Fn(&str) -> String) {
    for cls in ["screw", "bottle"] {
        png(
            &root.join(format!("{cls}/train/{good}/000.png")),
            20,
            16,
            10,
            false,
        );
        png(
            &root.join(format!("{cls}/test/{good}/000.png")),
            20,
            16,
            20,
            false,
        );
        png(
            &root.join(format!("{cls}/test/crack/001.png")),
            20,
            16,
            30,
            false,
        );
        png(
            &root.join(format!("{cls}/ground_truth/crack/{}", mask_name("001"))),
            20,
            16,
            255,
            true,
        );
    }
}

#[test]
fn mvtec_mpdd_btad_folder_layouts() {
    for (fmt, good, mask) in [
        (
            Format::Mvtec,
            "good",
            Box::new(|s: &str| format!("{s}_mask.png")) as Box<dyn Fn(&str) -> String>,
        ),
        (
            Format::Mpdd,
            "good",
            Box::new(|s: &str| format!("{s}_mask.png")),
        ),
        (Format::Btad, "ok", Box::new(|s: &str| format!("{s}.png"))),
        (
            Format::Folder,
            "good",
            Box::new(|s: &str| format!("{s}.bmp")),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        mvtec_like(dir.path(), good, mask);
        let meta = build_meta(dir.path(), fmt).unwrap();
        assert_eq!(
            meta.test.categories().collect::<Vec<_>>(),
            vec!["bottle", "screw"],
            "{fmt:?}"
        );
        let recs = meta.test.get("screw").unwrap();
        assert_eq!(recs.len(), 2);
        let anomalous: Vec<_> = recs.iter().filter(|r| r.anomaly == 1).collect();
        assert_eq!(anomalous.len(), 1);
        assert_eq!(anomalous[0].specie_name, "crack");
        assert!(
            anomalous[0]
                .mask_path
                .starts_with("screw/ground_truth/crack/001"),
            "{fmt:?}: {}",
            anomalous[0].mask_path
        );
        assert_eq!(meta.train.get("bottle").unwrap().len(), 1);
        // Round trip through meta.json and load every sample.
        let p = dir.path().join("meta.json");
        meta.save(&p).unwrap();
        let back = vcp_data::Meta::load(&p).unwrap();
        assert_eq!(back, meta);
        for r in recs {
            let s = vcp_data::dataset::load_sample(dir.path(), r, 24).unwrap();
            assert_eq!(s.image.len(), 3 * 24 * 24);
            assert_eq!(s.mask.iter().any(|&v| v > 0.5), r.anomaly == 1);
        }
    }
}

#[test]
fn visa_csv_and_index_masks() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    png(
        &r.join("candle/Data/Images/Normal/0000.JPG.png"),
        30,
        20,
        50,
        false,
    );
    png(
        &r.join("candle/Data/Images/Anomaly/0001.png"),
        30,
        20,
        60,
        false,
    );
    // VisA masks are index images: 1, 2, ... where anomalous.
    let mut m = image::GrayImage::new(30, 20);
    for y in 5..12 {
        for x in 3..9 {
            m.put_pixel(x, y, image::Luma([1]));
        }
    }
    std::fs::create_dir_all(r.join("candle/Data/Masks/Anomaly")).unwrap();
    m.save(r.join("candle/Data/Masks/Anomaly/0001.png"))
        .unwrap();
    std::fs::create_dir_all(r.join("split_csv")).unwrap();
    std::fs::write(
        r.join("split_csv/1cls.csv"),
        "object,split,label,image,mask\ncandle,train,normal,candle/Data/Images/Normal/0000.JPG.png,\ncandle,test,normal,candle/Data/Images/Normal/0000.JPG.png,\ncandle,test,anomaly,candle/Data/Images/Anomaly/0001.png,candle/Data/Masks/Anomaly/0001.png\n",
    )
    .unwrap();
    let meta = build_meta(r, Format::Visa).unwrap();
    let recs = meta.test.get("candle").unwrap();
    assert_eq!(recs.len(), 2);
    let s = vcp_data::dataset::load_sample(r, &recs[1], 30).unwrap();
    let n = s.mask.iter().filter(|&&v| v > 0.5).count();
    assert!(
        n > 30,
        "index mask read as anomalous where > 0 ({n} pixels)"
    );
}

#[test]
fn bad_inputs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_like(dir.path(), "good", |s| format!("{s}_mask.png"));
    std::fs::remove_file(dir.path().join("screw/ground_truth/crack/001_mask.png")).unwrap();
    let e = build_meta(dir.path(), Format::Mvtec)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("screw/test/crack/001.png") && e.contains("without a mask"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("empty/test/good")).unwrap();
    let e = build_meta(dir.path(), Format::Mvtec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no test images"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("split_csv")).unwrap();
    std::fs::write(
        dir.path().join("split_csv/1cls.csv"),
        "object,split,label,image,mask\nx,valid,normal,a.png,\n",
    )
    .unwrap();
    let e = build_meta(dir.path(), Format::Visa)
        .unwrap_err()
        .to_string();
    assert!(e.contains("1cls.csv") && e.contains("valid"), "{e}");

    // Mask size differs from its image; corrupt image.
    let dir = tempfile::tempdir().unwrap();
    mvtec_like(dir.path(), "good", |s| format!("{s}_mask.png"));
    png(
        &dir.path().join("screw/ground_truth/crack/001_mask.png"),
        10,
        10,
        255,
        true,
    );
    let meta = build_meta(dir.path(), Format::Mvtec).unwrap();
    let rec = meta
        .test
        .get("screw")
        .unwrap()
        .iter()
        .find(|r| r.anomaly == 1)
        .unwrap()
        .clone();
    let e = vcp_data::dataset::load_sample(dir.path(), &rec, 16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("001_mask.png") && e.contains("10x10"), "{e}");
    std::fs::write(dir.path().join("screw/test/good/000.png"), b"broken").unwrap();
    let rec = meta.test.get("screw").unwrap()[1].clone();
    let e = vcp_data::dataset::load_sample(dir.path(), &rec, 16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("screw/test/good/000.png"), "{e}");
}

#[test]
fn batches_keep_order_and_report_errors() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_like(dir.path(), "good", |s| format!("{s}_mask.png"));
    let meta = build_meta(dir.path(), Format::Mvtec).unwrap();
    let recs: Vec<_> = meta.test.0.iter().flat_map(|(_, r)| r.clone()).collect();
    let got: Vec<_> =
        vcp_data::dataset::batches(dir.path().to_path_buf(), recs.clone(), 16, 3, 2, None)
            .into_iter()
            .collect();
    assert_eq!(got.len(), 2);
    let b0 = got[0].as_ref().unwrap();
    assert_eq!(b0.len(), 3);
    assert_eq!(b0.paths[0], recs[0].img_path);
    assert_eq!(b0.images.len(), 3 * 3 * 16 * 16);
    std::fs::write(dir.path().join(&recs[3].img_path), b"x").unwrap();
    let got: Vec<_> = vcp_data::dataset::batches(dir.path().to_path_buf(), recs, 16, 3, 2, None)
        .into_iter()
        .collect();
    assert!(got[1].as_ref().is_err());
}

#[test]
fn synth_never_mixes_two_benchmarks_in_one_folder() {
    use vcp_data::synth::{generate, SynthOptions};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let o = |seed| SynthOptions {
        seed,
        size: 32,
        per_category: 2,
    };
    generate(&out, &o(0)).unwrap();
    let before = std::fs::read(out.join("meta.json")).unwrap();
    let first_img = std::fs::read(out.join("woven/test/good/000.png")).unwrap();
    let e = generate(&out, &o(1)).unwrap_err().to_string();
    assert!(e.contains("bench") && e.contains("not empty"), "{e}");
    assert_eq!(std::fs::read(out.join("meta.json")).unwrap(), before);
    assert_eq!(
        std::fs::read(out.join("woven/test/good/000.png")).unwrap(),
        first_img
    );
    // Nothing half-written is left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, vec!["bench".to_string()]);
    // An existing empty folder is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    generate(&empty, &o(1)).unwrap();
    assert!(empty.join("meta.json").exists());
}

//! `vcp eval-maps` against the scikit-learn / scikit-image reference (tools/metrics_reference.py)
//! on small cases with ties, several regions per mask, non-square maps, masks needing a resize and
//! degenerate categories. Tolerances: 1e-6 (AUROC, AP, F1, IoU), 1e-4 (AUPRO).

use std::path::{Path, PathBuf};
use std::process::Command;

fn cases() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vcp-metrics/tests/fixtures/cases")
}

fn vcp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vcp"))
}

fn compare(got: &serde_json::Value, want: &serde_json::Value) -> usize {
    let mut n = 0;
    for (cls, w) in want.as_object().unwrap() {
        let g = &got["categories"][cls];
        for key in [
            "auroc_px",
            "ap_px",
            "f1_px",
            "iou_px",
            "aupro_px",
            "aupro30_px",
            "auroc_sp",
            "ap_sp",
            "f1_sp",
            "f1_px_threshold",
        ] {
            match (
                w.get(key).and_then(|v| v.as_f64()),
                g.get(key).and_then(|v| v.as_f64()),
            ) {
                (Some(a), Some(b)) => {
                    let tol = if key.starts_with("aupro") { 1e-4 } else { 1e-6 };
                    assert!((a - b).abs() <= tol, "{cls}.{key}: reference {a}, ours {b}");
                    n += 1;
                }
                (None, None) => {}
                (a, b) => panic!("{cls}.{key}: reference {a:?}, ours {b:?} (defined in only one)"),
            }
        }
    }
    n
}

fn run_eval(extra: &[&str], out: &Path) -> serde_json::Value {
    let c = cases();
    let status = vcp()
        .args(["eval-maps", "--meta"])
        .arg(c.join("meta.json"))
        .arg("--maps")
        .arg(c.join("maps"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn matches_reference_with_top1_and_given_scores() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cases().join("expected.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let got = run_eval(&[], dir.path());
    let n = compare(&got, &expected["top1"]);
    assert!(n >= 37, "only {n} values compared");
    // Degenerate categories: missing values, left out of the mean with a note.
    assert!(got["categories"]["allnormal"]["auroc_px"].is_null());
    assert!(got["categories"]["allanomalous"]["auroc_sp"].is_null());
    let notes = got["notes"].to_string();
    assert!(
        notes.contains("allnormal") && notes.contains("left out"),
        "{notes}"
    );
    let defined: Vec<f64> = ["ties", "smooth", "resized", "allanomalous"]
        .iter()
        .map(|c| got["categories"][c]["auroc_px"].as_f64().unwrap())
        .collect();
    let mean = got["mean"]["auroc_px"].as_f64().unwrap();
    assert!((mean - defined.iter().sum::<f64>() / 4.0).abs() < 1e-12);
    // CSV and markdown written, values x100 with two decimals.
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert!(csv.starts_with(
        "objects,auroc_px,aupro_px,aupro30_px,ap_px,f1_px,iou,auroc_sp,ap_sp,f1_sp,threshold"
    ));
    let ties = csv.lines().find(|l| l.starts_with("ties,")).unwrap();
    let auroc: f64 = ties.split(',').nth(1).unwrap().parse().unwrap();
    assert!((auroc - expected["top1"]["ties"]["auroc_px"].as_f64().unwrap() * 100.0).abs() < 0.006);
    assert!(std::fs::read_to_string(dir.path().join("metrics.md"))
        .unwrap()
        .contains("| mean |"));

    let dir2 = tempfile::tempdir().unwrap();
    let scores = cases().join("scores.csv");
    let got = run_eval(&["--scores", scores.to_str().unwrap()], dir2.path());
    compare(&got, &expected["scores_csv"]);
}

/// A float32 .npy of shape (2, 3, 4): wrong rank for a map.
fn vcp_npy_3d() -> Vec<u8> {
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }".to_string();
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(header.len() as u16).to_le_bytes());
    v.extend_from_slice(header.as_bytes());
    v.extend(std::iter::repeat_n(0u8, 96));
    v
}

fn copy_cases() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(cases())
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn expect_error(args: &[&str], needle: &str) {
    let out = vcp().args(args).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "stderr should name `{needle}`: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn bad_maps_are_one_line_errors_or_skipped() {
    let tmp = copy_cases();
    let c = tmp.path().join("cases");
    let meta = c.join("meta.json");
    let maps = c.join("maps");
    let (m, mp) = (meta.to_str().unwrap(), maps.to_str().unwrap());
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();

    // Missing map.
    std::fs::remove_file(maps.join("smooth/test/anomaly/000.npy")).unwrap();
    expect_error(
        &["eval-maps", "--meta", m, "--maps", mp, "--out", o],
        "smooth/test/anomaly/000.npy",
    );
    assert!(
        !out.join("metrics.json").exists(),
        "nothing written on error"
    );
    // --skip-missing reports it and scores the rest.
    let r = vcp()
        .args([
            "eval-maps",
            "--meta",
            m,
            "--maps",
            mp,
            "--out",
            o,
            "--skip-missing",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains("skipped 1 records"));

    // NaN in a map.
    let p = maps.join("ties/test/anomaly/001.npy");
    let original = std::fs::read(&p).unwrap();
    let mut a = vcp_data::npy::read_f32_2d(&p).unwrap();
    a.data[7] = f32::NAN;
    vcp_data::npy::write_f32_2d(&p, &a).unwrap();
    expect_error(
        &["eval-maps", "--meta", m, "--maps", mp, "--out", o],
        "001.npy: non-finite",
    );

    // Wrong dtype / rank, unreadable mask.
    std::fs::write(&p, b"\x93NUMPY\x01\x00\x46\x00{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }            \n").unwrap();
    expect_error(&["eval-maps", "--meta", m, "--maps", mp, "--out", o], "<i8");
    vcp_data::npy::write_f32_2d(&p, &a).unwrap();
    std::fs::write(maps.join("ties/test/anomaly/001.npy"), vcp_npy_3d()).unwrap();
    expect_error(
        &["eval-maps", "--meta", m, "--maps", mp, "--out", o],
        "expected a 2-D map",
    );
    std::fs::write(&p, &original).unwrap();
    std::fs::write(
        c.join("ties/ground_truth/anomaly/002_mask.png"),
        b"not a png",
    )
    .unwrap();
    expect_error(
        &["eval-maps", "--meta", m, "--maps", mp, "--out", o],
        "002_mask.png",
    );
    // With --skip-missing both bad records (missing map, corrupt mask) are reported, the rest scored.
    let r = vcp()
        .args([
            "eval-maps",
            "--meta",
            m,
            "--maps",
            mp,
            "--out",
            o,
            "--skip-missing",
        ])
        .output()
        .unwrap();
    assert!(r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("skipped 2 records"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    // Two scores for one image in --scores (issue 25): which one was meant cannot be told.
    let scores = c.join("scores.csv");
    let text = std::fs::read_to_string(&scores).unwrap();
    let first = text.lines().nth(1).unwrap().to_string();
    let img = first.rsplit_once(',').unwrap().0.to_string();
    std::fs::write(&scores, format!("{text}{img},0.5\n")).unwrap();
    let line = text.lines().count() + 1;
    let sp = scores.to_str().unwrap();
    expect_error(
        &[
            "eval-maps",
            "--meta",
            m,
            "--maps",
            mp,
            "--scores",
            sp,
            "--out",
            o,
        ],
        &format!("scores.csv: line {line}: a second score for `{img}`"),
    );
    // A FIFO as the scores file is refused before it is opened (opening would block).
    std::fs::remove_file(&scores).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&scores)
        .status()
        .unwrap()
        .success());
    expect_error(
        &[
            "eval-maps",
            "--meta",
            m,
            "--maps",
            mp,
            "--scores",
            sp,
            "--out",
            o,
        ],
        "not a regular file",
    );

    // Bad meta.
    std::fs::write(&meta, "{\"test\": {\"x\": [{\"img_path\": \"a.png\"}]}}").unwrap();
    expect_error(
        &["eval-maps", "--meta", m, "--maps", mp, "--out", o],
        "meta.json",
    );
}

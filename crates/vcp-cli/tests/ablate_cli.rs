//! `vcp ablate` / `vcp report` on a miniature experiment (2 variants, 2 seeds, tiny preset, a few
//! synthetic images): one table row per variant with mean and std, finished runs skipped, a run
//! without a record (killed) redone, and the report reproducing the same table from the records.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::*;

fn mini(dir: &Path) -> PathBuf {
    write_small_base(dir);
    let ab = format!(
        "name = \"mini\"\nbase = \"base.toml\"\nseeds = [0, 1]\nbaseline = \"utp\"\n{UTP_AND_VCP_CLIP}[[reference]]\nname = \"a published number\"\nauroc_px = 0.9\n"
    );
    std::fs::write(dir.join("mini.toml"), ab).unwrap();
    dir.join("mini.toml")
}

#[test]
fn ablation_runs_resumes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, results) = (dir.path().join("cache"), dir.path().join("results"));
    let file = mini(dir.path());
    let (out, _) = ok(vcp(&cache)
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(&results));
    assert!(out.contains("4 runs done, 0 already finished"), "{out}");
    let exp = results.join("mini");
    let table = std::fs::read_to_string(exp.join("table.md")).unwrap();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| utp") || l.starts_with("| vcp_clip"))
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows.iter()
            .all(|r| r.contains(" | 2 | ") && r.contains('±')),
        "{table}"
    );
    assert!(table.contains("*a published number*"));
    let csv = std::fs::read_to_string(exp.join("table.csv")).unwrap();
    assert!(
        csv.starts_with("variant,n_seeds,auroc_px_mean,auroc_px_std"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 3);
    for p in [
        "pixel_metrics.png",
        "pixel_metrics.svg",
        "deltas.png",
        "per_category_ap_px.png",
        "curves_roc.png",
        "qualitative.png",
    ] {
        assert!(exp.join("plots").join(p).exists(), "{p} missing");
    }
    // Every run folder has its files; the record carries provenance.
    let runs: Vec<PathBuf> = std::fs::read_dir(exp.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 4);
    for r in &runs {
        for f in [
            "config.resolved.toml",
            "record.json",
            "per_category.csv",
            "log.txt",
        ] {
            assert!(r.join(f).exists(), "{} missing in {}", f, r.display());
        }
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(r.join("record.json")).unwrap()).unwrap();
        for k in [
            "experiment",
            "variant",
            "seed",
            "dataset",
            "git",
            "device",
            "dtype",
            "start",
            "end",
            "wall_seconds",
            "peak_rss_mib",
            "checkpoint_sha256",
            "metrics",
        ] {
            assert!(rec.get(k).is_some(), "record lacks {k}");
        }
    }
    // Re-running skips everything.
    let (out, _) = ok(vcp(&cache)
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(&results));
    assert!(out.contains("0 runs done, 4 already finished"), "{out}");
    // A run killed before its record was written is redone, and gives the same numbers.
    std::fs::remove_file(runs[0].join("record.json")).unwrap();
    let (out, _) = ok(vcp(&cache)
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(&results));
    assert!(out.contains("1 runs done, 3 already finished"), "{out}");
    assert_eq!(
        std::fs::read_to_string(exp.join("table.md")).unwrap(),
        table
    );
    // The report alone reproduces the table from the records.
    std::fs::remove_file(exp.join("table.md")).unwrap();
    ok(vcp(&cache)
        .arg("report")
        .arg(&file)
        .arg("--results")
        .arg(&results));
    assert_eq!(
        std::fs::read_to_string(exp.join("table.md")).unwrap(),
        table
    );
}

#[test]
fn bad_ablation_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = mini(dir.path());
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("set = {}", "set = { \"refiner.hedas\" = 3 }");
    std::fs::write(&file, text).unwrap();
    let out = vcp(&dir.path().join("c"))
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(dir.path().join("r"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vcp_clip") && err.contains("hedas"), "{err}");
}

/// The issue-7/8 components through the runner: few-shot references recorded per category
/// (k distinct normal train images, different for another seed), the decoder head, a dense
/// backbone and bf16 towers all train and evaluate; `--dtype` reaches the record.
#[test]
fn new_components_run_through_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, results) = (dir.path().join("cache"), dir.path().join("results"));
    mini(dir.path());
    let ab = r#"
name = "mini_new"
base = "base.toml"
seeds = [0, 1]
baseline = "fewshot"
set = { "synth.per_category" = 4 }
[[variant]]
name = "fewshot"
set = { "fewshot" = { k = 2, memory_bank = 0.5, normal_prompt = 0.5 } }
[[variant]]
name = "decoder"
set = { "head" = { kind = "decoder", queries = 4, layers = 1, heads = 2, dim = 16 }, "refiner" = { kind = "identity" }, "fusion.image_score" = { kind = "cls_text" }, "backbone.attention" = "surgery", "backbone.dense_blocks" = 2, "prompt.normal_state" = ["good", "perfect"], "prompt.learnable_states" = true }
"#;
    std::fs::write(dir.path().join("mini_new.toml"), ab).unwrap();
    let (out, _) = ok(vcp(&cache)
        .arg("ablate")
        .arg(dir.path().join("mini_new.toml"))
        .arg("--results")
        .arg(&results)
        .args(["--dtype", "bf16"]));
    assert!(out.contains("4 runs done"), "{out}");
    let mut refs_by_seed = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(results.join("mini_new/runs")).unwrap() {
        let d = e.unwrap().path();
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("record.json")).unwrap()).unwrap();
        assert_eq!(r["dtype"], "bf16");
        // The mean is the unweighted mean of the categories, and per_category.csv holds the
        // same numbers (x100).
        let cats = r["metrics"]["categories"].as_object().unwrap();
        let vals: Vec<f64> = cats
            .values()
            .map(|c| c["auroc_px"].as_f64().unwrap())
            .collect();
        let mean = r["metrics"]["mean"]["auroc_px"].as_f64().unwrap();
        assert!((mean - vals.iter().sum::<f64>() / vals.len() as f64).abs() < 1e-12);
        let csv = std::fs::read_to_string(d.join("per_category.csv")).unwrap();
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let col = header.iter().position(|h| *h == "auroc_px").unwrap();
        for line in csv.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let want = cats[f[0]]["auroc_px"].as_f64().unwrap() * 100.0;
            let got: f64 = f[col].parse().unwrap();
            assert!((got - want).abs() < 1e-9, "{line}");
        }
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("fewshot") {
            let refs = r["fewshot_references"].as_object().unwrap();
            assert_eq!(refs.len(), 5, "one entry per test category");
            for (cat, list) in refs {
                let l: Vec<&str> = list
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert_eq!(l.len(), 2);
                assert_ne!(l[0], l[1]);
                assert!(l.iter().all(|p| p.starts_with(&format!("{cat}/train/"))));
            }
            refs_by_seed.insert(r["seed"].as_u64().unwrap(), refs.clone());
        } else {
            assert!(r.get("fewshot_references").is_none());
        }
    }
    assert_eq!(refs_by_seed.len(), 2);
    assert_ne!(
        refs_by_seed[&0], refs_by_seed[&1],
        "draws differ between seeds"
    );
}

/// The example component crate (registered in the binary with one line) runs through
/// `vcp ablate` from an experiment file: the resolved config holds its table with defaults
/// filled in, and its gate, initialised at 0, was trained (the saved checkpoint holds a
/// non-zero gate).
#[test]
fn example_component_crate_runs_through_vcp_ablate() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, results) = (dir.path().join("cache"), dir.path().join("results"));
    mini(dir.path());
    let ab = r#"
name = "mini_refiner"
base = "base.toml"
seeds = [0]
[[variant]]
name = "gated"
set = { "refiner" = { kind = "gated_cross_attention" } }
"#;
    std::fs::write(dir.path().join("mini_refiner.toml"), ab).unwrap();
    let (out, _) = ok(vcp(&cache)
        .arg("ablate")
        .arg(dir.path().join("mini_refiner.toml"))
        .arg("--results")
        .arg(&results));
    assert!(out.contains("1 runs done"), "{out}");
    let run = std::fs::read_dir(results.join("mini_refiner/runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let resolved: toml::Table =
        toml::from_str(&std::fs::read_to_string(run.join("config.resolved.toml")).unwrap())
            .unwrap();
    let r = resolved["refiner"].as_table().unwrap();
    assert_eq!(r["kind"].as_str(), Some("gated_cross_attention"));
    assert_eq!(r["heads"].as_integer(), Some(4), "default filled in");
    assert_eq!(r["gate_init"].as_float(), Some(0.0), "default filled in");
    let ckpt = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .expect("a checkpoint in the run folder");
    let bytes = std::fs::read(&ckpt).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let gate = st.tensor("gated_xattn.gate").unwrap();
    let v = f32::from_le_bytes(gate.data()[..4].try_into().unwrap());
    assert!(v.is_finite() && v.abs() > 1e-4, "gate {v} was not trained");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("record.json")).unwrap()).unwrap();
    // The record's number is the trained checkpoint's: `vcp eval` of the run's resolved config
    // and checkpoint (a separate path through the CLI) gives the same pixel AUROC.
    let ev = dir.path().join("eval");
    ok(vcp(&cache)
        .args(["eval", "--config"])
        .arg(run.join("config.resolved.toml"))
        .arg("--checkpoint")
        .arg(&ckpt)
        .arg("--out")
        .arg(&ev));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev.join("metrics.json")).unwrap()).unwrap();
    let (recorded, evaluated) = (
        rec["metrics"]["mean"]["auroc_px"].as_f64().unwrap(),
        m["mean"]["auroc_px"].as_f64().unwrap(),
    );
    assert!(
        (recorded - evaluated).abs() < 1e-9,
        "record {recorded} vs vcp eval {evaluated}"
    );
}

/// Ctrl-C (SIGINT) to a real `vcp ablate`: a one-line message, no record for the interrupted
/// run, and a rerun completes the ablation.
#[test]
fn sigint_stops_cleanly_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, results) = (dir.path().join("cache"), dir.path().join("results"));
    let file = mini(dir.path());
    let child = vcp(&cache)
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(&results)
        .arg("--set")
        .arg("train.epochs=3")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first run has started (its folder exists), then interrupt.
    let runs = results.join("mini").join("runs");
    let t0 = std::time::Instant::now();
    while !runs.exists() || std::fs::read_dir(&runs).unwrap().next().is_none() {
        assert!(t0.elapsed().as_secs() < 120, "no run started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The process the test started is the one running, with the allocator's thresholds raised
    // (it re-executed itself in place: same pid, crates/vcp-cli/src/allocator.rs).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let env = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        for want in [
            &b"MALLOC_MMAP_THRESHOLD_=1073741824"[..],
            &b"MALLOC_TRIM_THRESHOLD_=4294967296"[..],
            &b"MALLOC_ARENA_MAX=1"[..],
        ] {
            assert!(vars.contains(&want), "{}", String::from_utf8_lossy(want));
        }
    }
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let last = err
        .lines()
        .rev()
        .find(|l| l.contains("error"))
        .unwrap_or("");
    assert!(last.contains("interrupted"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let records = std::fs::read_dir(&runs)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("record.json").exists())
        .count();
    assert!(
        records < 4,
        "the interrupted run left no record ({records} of 4)"
    );
    let (out, _) = ok(vcp(&cache)
        .arg("ablate")
        .arg(&file)
        .arg("--results")
        .arg(&results)
        .arg("--set")
        .arg("train.epochs=3"));
    assert!(
        out.contains(&format!(
            "{} runs done, {records} already finished",
            4 - records
        )),
        "{out}"
    );
}

/// An ablation whose weights are missing says where to get them and where to put them before
/// any run starts (nothing is written).
#[test]
fn missing_weights_are_reported_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let out = vcp(&dir.path().join("cache"))
        .current_dir(dir.path())
        .arg("ablate")
        .arg(root().join("experiments/paper_visa_to_mvtec.toml"))
        .arg("--results")
        .arg(&results)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    let err: Vec<&str> = e.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(err.len(), 1, "{e}");
    assert!(
        err[0].contains("weights/ViT-L-14-336px.pt")
            && err[0].contains("vcp weights fetch")
            && err[0].contains("no run was started"),
        "{e}"
    );
    assert!(!results.exists(), "nothing written");
}

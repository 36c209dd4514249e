//! Every ablation file in experiments/ expands into valid runs (strict configs, distinct hashes).

use std::path::PathBuf;

#[test]
fn every_ablation_file_expands() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") || !text.contains("\nbase = ") {
            continue;
        }
        let ab = vcp_runner::experiment::load(&p, &[], None)
            .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        assert!(!ab.runs.is_empty());
        let mut hashes: Vec<&str> = ab.runs.iter().map(|r| r.hash.as_str()).collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(
            hashes.len(),
            ab.runs.len(),
            "{}: two runs resolve to the same config",
            p.display()
        );
        n += 1;
    }
    assert!(n >= 3, "found {n} ablation files");
    // --set and --seeds apply to every run.
    let ab = vcp_runner::experiment::load(
        &dir.join("ablate_default.toml"),
        &[vcp_runner::experiment::parse_set("train.epochs=1").unwrap()],
        Some(&[5]),
    )
    .unwrap();
    assert_eq!(ab.runs.len(), 7);
    assert!(ab
        .runs
        .iter()
        .all(|r| r.seed == 5 && r.config.train.as_ref().unwrap().epochs == 1));
}

//! Every ablation file in experiments/ expands into valid runs (strict configs, distinct hashes).

use std::path::PathBuf;

/// The binary's registry: the standard components plus the example crate (its experiment file
/// lives in experiments/ too). Each test builds its own: none depends on another's order.
fn reg() -> vcp_model::Registry {
    vcp_model::standard_registry().with(vcp_example_refiner::register)
}

/// The one-line error of a plain experiment file `text` named `exp.toml` (it must not load).
fn config_error(text: &str) -> String {
    vcp_runner::config::ExperimentConfig::from_toml(&reg(), text, std::path::Path::new("exp.toml"))
        .unwrap_err()
        .to_string()
}

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
        let ab = vcp_runner::experiment::load(&reg(), &p, &[], None)
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
        &reg(),
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

/// Presets are written once: a variant saying `preset = "..."` resolves to exactly the run
/// configuration of the default ablation's spelled-out variant.
#[test]
fn presets_and_their_experiment_file_forms_agree() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
    let spelled =
        vcp_runner::experiment::load(&reg(), &dir.join("ablate_default.toml"), &[], None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pairs = [
        ("utp", "utp"),
        ("+dtp", "utp+dtp"),
        ("+dtp+pre_vcp", "utp+dtp+pre_vcp"),
        ("vcp_clip", "vcp_clip"),
        ("april_gan", "april_gan"),
        ("anomaly_clip", "anomaly_clip"),
    ];
    // The presets keep the paper's resolution-dependent fusion (top 2000 pixels, sigma 4 at
    // 518 px); the benchmark's file sets its own for 128 px maps, for every variant.
    let base: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("vcp_clip_tiny.toml")).unwrap()).unwrap();
    let fusion = base["fusion"].as_table().unwrap();
    let sigma = fusion["sigma"].as_float().unwrap();
    let score = toml::Value::Table(fusion["image_score"].as_table().unwrap().clone());
    let ablation: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("ablate_default.toml")).unwrap()).unwrap();
    let mut text = format!(
        "name = \"ablate_default\"\nbase = {:?}\nseeds = [0, 1, 2]\nset = {}\n",
        dir.join("vcp_clip_tiny.toml").display().to_string(),
        toml::Value::Table(ablation["set"].as_table().unwrap().clone())
    );
    for (variant, preset) in pairs {
        let own_score = matches!(preset, "april_gan" | "anomaly_clip");
        let set = if own_score {
            format!("{{ \"fusion.sigma\" = {sigma:?} }}")
        } else {
            format!("{{ \"fusion.sigma\" = {sigma:?}, \"fusion.image_score\" = {score} }}")
        };
        text += &format!("[[variant]]\nname = {variant:?}\npreset = {preset:?}\nset = {set}\n");
    }
    let p = tmp.path().join("by_preset.toml");
    std::fs::write(&p, text).unwrap();
    let by_preset = vcp_runner::experiment::load(&reg(), &p, &[], None).unwrap();
    assert_eq!(by_preset.runs.len(), 18);
    for r in &by_preset.runs {
        let s = spelled
            .runs
            .iter()
            .find(|s| s.variant == r.variant && s.seed == r.seed)
            .unwrap();
        assert_eq!(s.toml, r.toml, "variant {} differs", r.variant);
        assert_eq!(s.hash, r.hash);
    }
    // An unknown preset is an error naming it and the known ones.
    std::fs::write(
        &p,
        format!(
            "base = {:?}\n[[variant]]\nname = \"x\"\npreset = \"winclip\"\n",
            dir.join("vcp_clip_tiny.toml").display().to_string()
        ),
    )
    .unwrap();
    let e = format!(
        "{:#}",
        vcp_runner::experiment::load(&reg(), &p, &[], None).unwrap_err()
    );
    assert!(
        e.contains("unknown preset `winclip`") && e.contains("april_gan"),
        "{e}"
    );
}

fn write_ablation(dir: &std::path::Path, head: &str, tail: &str) -> PathBuf {
    let base = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../experiments/vcp_clip_tiny.toml"),
    )
    .unwrap();
    std::fs::write(dir.join("base.toml"), base).unwrap();
    let p = dir.join("ab.toml");
    std::fs::write(
        &p,
        format!("{head}\nbase = \"base.toml\"\n[[variant]]\nname = \"a\"\nset = {{}}\n{tail}"),
    )
    .unwrap();
    p
}

#[test]
fn malformed_experiment_files_are_errors_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let err = |head: &str, tail: &str| {
        let p = write_ablation(d.path(), head, tail);
        format!(
            "{:#}",
            vcp_runner::experiment::load(&reg(), &p, &[], None).unwrap_err()
        )
    };
    let e = err("name = \"x\"\nseeds = \"1\"", "");
    assert!(e.contains("seeds") && e.contains("ab.toml"), "{e}");
    let e = err("name = \"x\"\nseeds = []", "");
    assert!(e.contains("seeds") && e.contains("non-empty"), "{e}");
    let e = err("name = \"x\"\nseeds = [0, \"a\"]", "");
    assert!(e.contains("seeds"), "{e}");
    let e = err("name = \"x\"", "[[variant]]\nname = \"a\"\nset = {}\n");
    assert!(e.contains("`a` is used twice"), "{e}");
    let e = err("name = \"x\"", "[[reference]]\nauroc_px = 0.9\n");
    assert!(e.contains("reference 0") && e.contains("name"), "{e}");
    let e = err(
        "name = \"x\"",
        "[[reference]]\nname = \"paper\"\nauroc = 0.9\n",
    );
    assert!(e.contains("reference 0") && e.contains("`auroc`"), "{e}");
    let e = err(
        "name = \"x\"",
        "[[reference]]\nname = \"paper\"\nauroc_px = \"high\"\n",
    );
    assert!(e.contains("must be a number"), "{e}");
    // A name that is a path stays a folder name under --results.
    let p = write_ablation(d.path(), "name = \"../../etc/x\"", "");
    let ab = vcp_runner::experiment::load(&reg(), &p, &[], None).unwrap();
    assert!(
        !ab.name.contains('/') && !ab.name.starts_with(".."),
        "{}",
        ab.name
    );
    let run_dir = ab.runs[0].dir(std::path::Path::new("results"));
    assert!(run_dir.starts_with("results"), "{}", run_dir.display());
    assert!(!run_dir
        .components()
        .any(|c| c == std::path::Component::ParentDir));
}

/// A complete record of a run with one metric set.
fn record(variant: &str, seed: u64, hash: &str, auroc: f64) -> vcp_runner::record::Record {
    use vcp_runner::record::*;
    Record {
        experiment: "x".into(),
        variant: variant.into(),
        seed,
        hash: hash.into(),
        dataset: Datasets {
            train: None,
            eval: "synth:beta".into(),
        },
        git: Git {
            commit: None,
            dirty: None,
        },
        command: "vcp ablate x.toml".into(),
        device: "Cpu".into(),
        dtype: Default::default(),
        start: String::new(),
        end: String::new(),
        wall_seconds: WallSeconds {
            total: 1.0,
            train: 0.0,
            eval: 1.0,
            backbone: 0.5,
        },
        peak_rss_mib: None,
        trainable_parameters: 0,
        checkpoint_sha256: None,
        train_loss: vec![],
        metrics: Metrics {
            mean: vcp_metrics::CategoryMetrics {
                auroc_px: Some(auroc),
                ..Default::default()
            },
            categories: OrderedMap::default(),
        },
        notes: vec![],
        qualitative: vec![],
        fewshot_references: OrderedMap::default(),
        test_images: OrderedMap::default(),
        worker: None,
    }
}

#[test]
fn the_device_class_is_part_of_a_run_and_stale_records_are_left_out() {
    let d = tempfile::tempdir().unwrap();
    let p = write_ablation(d.path(), "name = \"x\"\nseeds = [0, 1]", "");
    let cpu = vcp_runner::experiment::load(&reg(), &p, &[], None).unwrap();
    let cpu2 = cpu.clone().on_device("cpu");
    let cuda = cpu.clone().on_device("cuda:1");
    assert_eq!(cpu.hashes(), cpu2.hashes());
    assert!(cpu.hashes().iter().all(|h| !cuda.hashes().contains(h)));
    // Records of the current runs are kept; others (an edited variant, another device) are not.
    let exp = d.path().join("res/x");
    let write = |dir: &str, hash: &str, auroc: f64| {
        let r = exp.join("runs").join(dir);
        std::fs::create_dir_all(&r).unwrap();
        std::fs::write(
            r.join("record.json"),
            serde_json::to_string(&record("a", 0, hash, auroc)).unwrap(),
        )
        .unwrap();
    };
    write("a-current0", &cpu.runs[0].hash, 0.9);
    write("a-current1", &cpu.runs[1].hash, 0.8);
    write("a-edited", "0123456789abcdef", 0.1);
    write("a-cuda", &cuda.runs[0].hash, 0.2);
    let (recs, stale) = vcp_runner::report::load_records(&exp, Some(&cpu.hashes())).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(stale, vec!["a-cuda".to_string(), "a-edited".to_string()]);
    let mean: f64 = recs
        .iter()
        .map(|r| r.metrics.mean.auroc_px.unwrap())
        .sum::<f64>()
        / 2.0;
    assert!((mean - 0.85).abs() < 1e-12);
}

#[test]
fn unknown_keys_are_reported_at_their_own_line_in_the_users_file() {
    let d = tempfile::tempdir().unwrap();
    // In a variant's overrides: the ablation file's line of that override.
    let p = write_ablation(
        d.path(),
        "name = \"x\"",
        "\n[[variant]]\nname = \"b\"\nset = { \"fusion.raw_weigth\" = 1.0 }\n",
    );
    let text = std::fs::read_to_string(&p).unwrap();
    let line = text.lines().position(|l| l.contains("raw_weigth")).unwrap() + 1;
    let e = format!(
        "{:#}",
        vcp_runner::experiment::load(&reg(), &p, &[], None).unwrap_err()
    );
    assert!(
        e.contains("ab.toml") && e.contains(&format!("line {line}")) && e.contains("raw_weigth"),
        "{e} (want line {line})"
    );
    // A slot's unknown key and a value out of range, set by a variant: the line of that
    // override (the registry's typed error carries slot and key; nothing is re-parsed).
    for (set, key) in [
        ("\"refiner.head_count\" = 4", "head_count"),
        ("\"fusion.sigma\" = 1000.0", "fusion.sigma = 1000"),
    ] {
        let p = write_ablation(
            d.path(),
            "name = \"x\"",
            &format!("\n[[variant]]\nname = \"b\"\n\nset = {{ {set} }}\n"),
        );
        let text = std::fs::read_to_string(&p).unwrap();
        let line = text.lines().position(|l| l.contains(set)).unwrap() + 1;
        let e = format!(
            "{:#}",
            vcp_runner::experiment::load(&reg(), &p, &[], None).unwrap_err()
        );
        assert!(
            e.contains(&format!("ab.toml, line {line} (variant b)")) && e.contains(key),
            "{e} (want line {line})"
        );
    }
    // In a plain experiment file: the key's own line, not the table's preceding blank line.
    let base = std::fs::read_to_string(d.path().join("base.toml")).unwrap();
    let bad = base.replacen("\nsigma = ", "\nsigmaa = 2.0\nsigma = ", 1);
    assert_ne!(bad, base, "the base file has a `sigma` line");
    let line = bad.lines().position(|l| l.starts_with("sigmaa")).unwrap() + 1;
    let e = config_error(&bad);
    assert!(
        e.contains(&format!("(line {line})")) && e.contains("sigmaa"),
        "{e} (want line {line})"
    );
}

/// Issue 25 (5, 3): results never silently merge or vanish, and sizes are counted before they
/// are built. Each case is one error naming the file and the offending name or key.
#[test]
fn colliding_names_bad_baselines_huge_grids_and_ignored_seeds_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let err = |head: &str, tail: &str, sets: &[(String, toml::Value)], seeds: Option<&[u64]>| {
        let p = write_ablation(d.path(), head, tail);
        format!(
            "{:#}",
            vcp_runner::experiment::load(&reg(), &p, sets, seeds).unwrap_err()
        )
    };
    // `a/b` and `a_b` (and any two non-ASCII names of one length) slug to one folder.
    let e = err(
        "name = \"x\"",
        "[[variant]]\nname = \"a/b\"\nset = {}\n[[variant]]\nname = \"a_b\"\nset = {}\n",
        &[],
        None,
    );
    assert!(
        e.contains("`a/b`") && e.contains("`a_b`") && e.contains("run folder"),
        "{e}"
    );
    let e = err(
        "name = \"x\"",
        "[[variant]]\nname = \"é\"\nset = {}\n[[variant]]\nname = \"ü\"\nset = {}\n",
        &[],
        None,
    );
    assert!(e.contains("run folder"), "{e}");
    let e = err(
        "name = \"x\"",
        "[[variant]]\nname = \"  \"\nset = {}\n",
        &[],
        None,
    );
    assert!(e.contains("variant 1") && e.contains("empty"), "{e}");
    let e = err("name = \"x\"\nbaseline = \"nope\"", "", &[], None);
    assert!(
        e.contains("baseline `nope`") && e.contains("variants: a"),
        "{e}"
    );
    // A grid of 10^10 points is refused before it is built (this returns at once).
    let t = std::time::Instant::now();
    let e = err(
        "name = \"x\"",
        &format!(
            "[grid]\n\"train.lr\" = [{}]\n\"train.epochs\" = [{}]\n",
            vec!["0.001"; 100_000].join(","),
            vec!["1"; 100_000].join(",")
        ),
        &[],
        None,
    );
    assert!(e.contains("more than 100000"), "{e}");
    assert!(t.elapsed().as_secs() < 60);
    let e = err("name = \"x\"", "[grid]\n\"train.lr\" = []\n", &[], None);
    assert!(
        e.contains("grid `train.lr`") && e.contains("non-empty"),
        "{e}"
    );
    // 10^6 seeds x 1 variant: counted, refused.
    let many: Vec<u64> = (0..1_000_000).collect();
    let e = err(
        "name = \"x\"",
        "[[variant]]\nname = \"b\"\nset = {}\n",
        &[],
        Some(&many),
    );
    assert!(
        e.contains("2 variants x 1 grid points x 1000000 seeds"),
        "{e}"
    );
    // `--set seed=N` would be overwritten by the seed list: refused, pointing at --seeds.
    let e = err(
        "name = \"x\"",
        "",
        &[("seed".into(), toml::Value::Integer(5))],
        None,
    );
    assert!(e.contains("--seeds"), "{e}");
    // Reference numbers are finite fractions.
    for bad in ["nan", "inf", "-0.5", "92.0"] {
        let e = err(
            "name = \"x\"",
            &format!("[[reference]]\nname = \"paper\"\nauroc_px = {bad}\n"),
            &[],
            None,
        );
        assert!(
            e.contains("`auroc_px`") && e.contains("[0, 1]"),
            "{bad}: {e}"
        );
    }
}

/// Issue 25 (5, 10): a damaged record (a negative or >1 score, a category twice) is an error
/// naming its file, never averaged in; a variant of the file without a record of its current
/// settings is named under the table; `--seeds` beyond TOML's integers and a `--set` value that
/// is broken TOML are errors naming the seed and the key.
#[test]
fn damaged_records_absent_variants_big_seeds_and_broken_set_values() {
    let d = tempfile::tempdir().unwrap();
    let p = write_ablation(
        d.path(),
        "name = \"x\"",
        "[[variant]]\nname = \"b\"\nset = { \"fusion.sigma\" = 2.0 }\n",
    );
    let ab = vcp_runner::experiment::load(&reg(), &p, &[], None).unwrap();
    let exp = d.path().join("res/x");
    let put = |dir: &str, r: &vcp_runner::record::Record| {
        let f = exp.join("runs").join(dir);
        std::fs::create_dir_all(&f).unwrap();
        std::fs::write(f.join("record.json"), serde_json::to_string(r).unwrap()).unwrap();
        f.join("record.json")
    };
    // Only variant `a` has a record of its current settings.
    put("a-0", &record("a", ab.runs[0].seed, &ab.runs[0].hash, 0.75));
    let (md, _) =
        vcp_runner::report::report(&exp, &ab.variants, None, &[], Some(&ab.hashes())).unwrap();
    assert!(md.contains("| a | 1 | 75.00 |"), "{md}");
    let file = std::fs::read_to_string(exp.join("table.md")).unwrap();
    assert!(
        file.contains("Not in the table (no record of their current settings): `b`"),
        "{file}"
    );
    // A negative AUROC in a record: refused, naming the file and the value.
    let bad = put("a-neg", &record("a", 7, "feedbeef", -0.25));
    let e = format!(
        "{:#}",
        vcp_runner::report::load_records(&exp, None).unwrap_err()
    );
    assert!(
        e.contains(&bad.display().to_string()) && e.contains("auroc_px = -0.25"),
        "{e}"
    );
    // A category twice.
    let mut twice = record("a", 7, "feedbeef", 0.5);
    let m = twice.metrics.mean.clone();
    twice.metrics.categories =
        vcp_runner::record::OrderedMap(vec![("cable".into(), m.clone()), ("cable".into(), m)]);
    put("a-neg", &twice);
    let e = format!(
        "{:#}",
        vcp_runner::report::load_records(&exp, None).unwrap_err()
    );
    assert!(e.contains("`cable` appears twice"), "{e}");
    // Seeds are TOML integers (i64).
    let e = format!(
        "{:#}",
        vcp_runner::experiment::load(&reg(), &p, &[], Some(&[u64::MAX])).unwrap_err()
    );
    assert!(
        e.contains("18446744073709551615") && e.contains("9223372036854775807"),
        "{e}"
    );
    // A broken TOML value names its key; a bare word stays a string.
    let e = format!(
        "{:#}",
        vcp_runner::experiment::parse_set("train.lr=[1,").unwrap_err()
    );
    assert!(e.contains("--set train.lr") && e.contains("`[1,`"), "{e}");
    let (k, v) = vcp_runner::experiment::parse_set("model.head = linear").unwrap();
    assert_eq!(
        (k.as_str(), v),
        ("model.head", toml::Value::String("linear".into()))
    );
    assert!(vcp_runner::experiment::parse_set("=1").is_err());
}

/// Issue 25 (4, 7): the run settings' numbers are checked at load time, naming the key (a zero
/// batch, a NaN or negative learning rate, a benchmark of 10^10 pixels used to fail, or pass,
/// only when the run got there); an experiment file that is a FIFO or `/dev/zero` is refused
/// before it is opened.
#[test]
fn run_settings_are_bounded_at_load_time_and_special_files_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = write_ablation(d.path(), "name = \"x\"", "");
    for (set, want) in [
        (
            "synth.size=100000",
            "synth.size = 100000: must be in 32..=2048",
        ),
        ("synth.per_category=0", "synth.per_category = 0"),
        ("train.epochs=1000000", "train.epochs = 1000000"),
        ("train.batch_size=0", "train.batch_size = 0"),
        ("eval.batch_size=0", "eval.batch_size = 0"),
        ("train.lr=nan", "train.lr = NaN"),
        ("train.lr=-1e-3", "train.lr = -0.001"),
        ("train.lr_temperature=inf", "train.lr_temperature = inf"),
        ("train.betas=[1.5, 0.9]", "betas[0] must be in [0, 1)"),
        ("train.mosaic_rate=2", "train.mosaic_rate = 2"),
        ("train.loss_chunk=0", "train.loss_chunk = 0"),
    ] {
        let s = vcp_runner::experiment::parse_set(set).unwrap();
        let e = format!(
            "{:#}",
            vcp_runner::experiment::load(&reg(), &p, &[s], None).unwrap_err()
        );
        assert!(e.contains(want), "{set}: {e}");
    }
    // The same key in a plain experiment file: named with its line.
    let base = std::fs::read_to_string(d.path().join("base.toml")).unwrap();
    let bad = base.replacen("batch_size = ", "batch_size = 0 # was ", 1);
    assert_ne!(bad, base);
    let line = bad
        .lines()
        .position(|l| l.contains("batch_size = 0"))
        .unwrap()
        + 1;
    let e = config_error(&bad);
    assert!(
        e.contains("batch_size = 0") && e.contains(&format!("(line {line})")),
        "{e} (want line {line})"
    );
    let fifo = d.path().join("x.toml");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for f in [fifo.as_path(), std::path::Path::new("/dev/zero")] {
        let e = format!(
            "{:#}",
            vcp_runner::experiment::load(&reg(), f, &[], None).unwrap_err()
        );
        assert!(e.contains("not a regular file"), "{e}");
    }
}

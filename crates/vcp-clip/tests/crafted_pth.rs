//! Crafted `.pth` archives (issue 16.6) never crash the reader: each case below used to panic,
//! abort on a huge allocation, overflow the stack or grow without bound; now each is a one-line
//! error naming the file, and a compressed (deflate) archive loads like a stored one.

mod common;
use candle_core::Device;
use common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use vcp_clip::ClipWeights;

fn micro_pth() -> PathBuf {
    fixtures().join("openai_micro/micro_state_dict.pth")
}

/// The members of a zip archive, in order.
fn members(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().unwrap().to_string(), b)
        })
        .collect()
}

fn write_zip(path: &Path, members: &[(String, Vec<u8>)], deflate: bool) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let o = zip::write::SimpleFileOptions::default().compression_method(method);
    for (n, b) in members {
        w.start_file(n.as_str(), o).unwrap();
        w.write_all(b).unwrap();
    }
    w.finish().unwrap();
}

/// The archive with `data.pkl` replaced and one 16-byte storage `data/0`.
fn with_pickle(dir: &Path, name: &str, pkl: Vec<u8>) -> PathBuf {
    let prefix = members(&micro_pth())
        .iter()
        .find(|(n, _)| n.ends_with("/data.pkl"))
        .map(|(n, _)| n.trim_end_matches("data.pkl").to_string())
        .unwrap();
    let p = dir.join(name);
    write_zip(
        &p,
        &[
            (format!("{prefix}data.pkl"), pkl),
            (format!("{prefix}data/0"), vec![0u8; 16]),
        ],
        false,
    );
    p
}

fn unicode(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((s.len() as u32).to_le_bytes());
    v.extend(s.as_bytes());
    v
}

/// `{"w": _rebuild_tensor_v2(persid, 0, size, stride, ...)}` with `args` items (4 or more is
/// well-formed) and the given size.
fn rebuild_pickle(args: usize, size: [u32; 2]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}'];
    p.extend(unicode("w"));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
    p.push(b'(');
    // persistent id: ('storage', FloatStorage, '0', 'cpu', 4)
    p.push(b'(');
    p.extend(unicode("storage"));
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend(unicode("0"));
    p.extend(unicode("cpu"));
    p.extend([b'K', 4]);
    p.push(b't');
    p.push(b'Q');
    let rest: Vec<Vec<u8>> = vec![
        vec![b'K', 0],
        [
            vec![b'J'],
            size[0].to_le_bytes().to_vec(),
            vec![b'J'],
            size[1].to_le_bytes().to_vec(),
            vec![0x86],
        ]
        .concat(),
        [
            vec![b'J'],
            size[1].to_le_bytes().to_vec(),
            vec![b'K', 1, 0x86],
        ]
        .concat(),
        vec![0x89],
    ];
    for r in rest.iter().take(args.saturating_sub(1)) {
        p.extend(r);
    }
    p.extend([b't', b'R', b's', b'.']);
    p
}

fn load_err(p: &Path) -> String {
    let e = ClipWeights::load(p, &Device::Cpu)
        .err()
        .unwrap_or_else(|| panic!("{} loaded", p.display()))
        .to_string();
    assert!(
        e.contains(p.file_name().unwrap().to_str().unwrap()),
        "names the file: {e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn crafted_archives_are_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    // A tensor declaring 2^20 x 2^20 floats over 16 bytes: refused before allocating 4 TiB.
    let e = load_err(&with_pickle(
        d.path(),
        "huge.pth",
        rebuild_pickle(4, [1 << 20, 1 << 20]),
    ));
    assert!(e.contains("declares") && e.contains("holds 16"), "{e}");
    // The same, well-sized (2 x 2 floats = 16 bytes): it is read (and then not a CLIP).
    let e = load_err(&with_pickle(
        d.path(),
        "small.pth",
        rebuild_pickle(4, [2, 2]),
    ));
    assert!(!e.contains("declares"), "{e}");
    // Short `_rebuild_tensor_v2` tuples (panicked inside candle).
    for n in [1, 2, 3] {
        let e = load_err(&with_pickle(
            d.path(),
            &format!("short{n}.pth"),
            rebuild_pickle(n, [2, 2]),
        ));
        assert!(e.contains("malformed") || e.contains("no tensors"), "{e}");
    }
    // No tensors at all.
    let e = load_err(&with_pickle(
        d.path(),
        "empty.pth",
        vec![0x80, 2, b'}', b'.'],
    ));
    assert!(e.contains("no tensors"), "{e}");
    // 20 000 nested dicts (overflowed the stack).
    let mut deep = vec![0x80, 2];
    for _ in 0..20_000 {
        deep.push(b'}');
        deep.extend(unicode("k"));
    }
    deep.push(b'}');
    deep.extend(std::iter::repeat_n(b's', 20_000));
    deep.push(b'.');
    let e = load_err(&with_pickle(d.path(), "deep.pth", deep));
    assert!(e.contains("levels deep"), "{e}");
    // A memo-clone bomb: 2^60 objects from 400 bytes.
    let mut bomb = vec![0x80, 2, b']', b'K', 1, b'a', b'q', 0];
    for _ in 0..60 {
        bomb.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    bomb.push(b'.');
    let e = load_err(&with_pickle(d.path(), "bomb.pth", bomb));
    assert!(e.contains("memo"), "{e}");
}

#[test]
fn deflated_members_load_like_stored_ones() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("deflated.pth");
    write_zip(&p, &members(&micro_pth()), true);
    let a = ClipWeights::load(micro_pth(), &Device::Cpu).unwrap();
    let b = ClipWeights::load(&p, &Device::Cpu).unwrap();
    assert_eq!(a.tensors().len(), b.tensors().len());
    for (k, t) in a.tensors() {
        assert_eq!(max_abs_diff(t, &b.tensors()[k]), 0.0, "{k}");
    }
}

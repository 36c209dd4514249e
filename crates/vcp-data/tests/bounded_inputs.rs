//! Issue 25 (6, 7): decoding is bounded and special files are refused before they are opened.
//! Every case is an error naming the file, returned at once (no hang, no large allocation).

use std::path::Path;
use vcp_data::decode::open_image;

/// CRC-32 (IEEE), bit by bit: PNG chunks carry one.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut v = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    v.extend_from_slice(&body);
    v.extend_from_slice(&crc32(&body).to_be_bytes());
    v
}

/// A PNG of a few hundred bytes that declares `w x h` grey pixels (a decompression bomb's
/// header; its data would inflate to w x h bytes).
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend(chunk(b"IHDR", &ihdr));
    v.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    v.extend(chunk(b"IEND", &[]));
    v
}

fn err_of(p: &Path, what: &str) -> String {
    open_image(p, what).unwrap_err().to_string()
}

#[test]
fn huge_declared_sizes_are_refused_before_decoding() {
    let d = tempfile::tempdir().unwrap();
    // The bomb: 389 KB declaring ~1.2 G pixels; here a 100k x 100k header.
    let bomb = d.path().join("bomb.png");
    std::fs::write(&bomb, png_declaring(100_000, 100_000)).unwrap();
    let e = err_of(&bomb, "image");
    assert!(
        e.contains("bomb.png") && e.contains("100000x100000") && e.contains("larger than allowed"),
        "{e}"
    );
    // A 20000 x 20000 mask (1.2 GB to decode and resize): refused as a mask.
    let mask = d.path().join("mask.png");
    std::fs::write(&mask, png_declaring(20_000, 20_000)).unwrap();
    let e = vcp_data::mask::load_mask(&mask, 64, 64, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mask.png") && e.contains("mask of 20000x20000"),
        "{e}"
    );
    // Within the limits, a valid small PNG decodes.
    let ok = d.path().join("ok.png");
    image::GrayImage::from_pixel(7, 5, image::Luma([200]))
        .save(&ok)
        .unwrap();
    let img = open_image(&ok, "image").unwrap();
    assert_eq!((img.width(), img.height()), (7, 5));
}

#[test]
fn truncated_jpegs_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let full = d.path().join("full.jpg");
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 90]));
    img.save(&full).unwrap();
    assert!(open_image(&full, "image").is_ok());
    let bytes = std::fs::read(&full).unwrap();
    let cut = d.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = err_of(&cut, "image");
    assert!(e.contains("cut.jpg") && e.contains("truncated JPEG"), "{e}");
    // The dataset loader says the same.
    let e = vcp_data::dataset::load_rgb(&cut).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn fifos_devices_and_folders_are_refused_before_opening() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("pipe.png");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Opening a FIFO for reading blocks until a writer comes: these must not open it.
    let e = err_of(&fifo, "image");
    assert!(
        e.contains("pipe.png") && e.contains("not a regular file"),
        "{e}"
    );
    let e = vcp_data::mask::load_mask(&fifo, 8, 8, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let e = vcp_data::npy::read_f32_2d(&fifo).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let e = vcp_data::io::read_regular(Path::new("/dev/zero"), 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/dev/zero") && e.contains("not a regular file"),
        "{e}"
    );
    let e = vcp_data::io::read_regular(d.path(), 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a folder"), "{e}");
    // A regular file over its bound.
    let big = d.path().join("big.npy");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let e = vcp_data::io::read_regular(&big, 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(e.contains("big.npy") && e.contains("more than"), "{e}");
}

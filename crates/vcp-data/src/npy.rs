//! Minimal NumPy `.npy` reading and writing for 2-D float maps (format versions 1-3, C or
//! Fortran order, little-endian `f4`/`f8`). Hand-written because the crates that do this pull a
//! Python-literal parser in; the format is a short header followed by raw data.

use crate::error::{DataError, Result};
use std::path::Path;

/// A 2-D float32 array, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Array2 {
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    Some(rest)
}

// Long because it is a flat sequence of header checks, each with its own error naming the file.
/// Read a 2-D `.npy` of float32 or float64 (converted to f32).
pub fn read_f32_2d(path: &Path) -> Result<Array2> {
    // A map is at most 16384^2 f32 plus its header; FIFOs and devices are refused.
    let bytes = crate::io::read_regular(path, (16384u64 * 16384 * 4) + (1 << 16))?;
    let bad = |m: &str| DataError::file(path, m);
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (bad magic)"));
    }
    let major = bytes[6];
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated .npy header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(&format!("unsupported .npy version {v}"))),
    };
    let header = std::str::from_utf8(
        bytes
            .get(hstart..hstart + hlen)
            .ok_or_else(|| bad("truncated .npy header"))?,
    )
    .map_err(|_| bad("corrupt .npy header"))?;
    let descr = header_field(header, "descr").ok_or_else(|| bad("no dtype in .npy header"))?;
    let descr = descr.trim_start_matches(['\'', '"']);
    let elem = if descr.starts_with("<f4") || descr.starts_with("|f4") {
        4
    } else if descr.starts_with("<f8") {
        8
    } else {
        let d: String = descr
            .chars()
            .take_while(|c| *c != '\'' && *c != '"')
            .collect();
        return Err(bad(&format!(
            "dtype `{d}` is not float32 or float64 (little-endian)"
        )));
    };
    let fortran = header_field(header, "fortran_order").is_some_and(|v| v.starts_with("True"));
    let shape_txt = header_field(header, "shape").ok_or_else(|| bad("no shape in .npy header"))?;
    let inner = shape_txt.trim_start_matches('(');
    let inner = &inner[..inner
        .find(')')
        .ok_or_else(|| bad("corrupt shape in .npy header"))?];
    let dims: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad("corrupt shape in .npy header"))
        })
        .collect::<Result<_>>()?;
    // Accept [H, W] and singleton-padded [1, H, W] / [1, 1, H, W].
    let squeezed: Vec<usize> = {
        let mut d = dims.clone();
        while d.len() > 2 && d[0] == 1 {
            d.remove(0);
        }
        d
    };
    if squeezed.len() != 2 {
        return Err(bad(&format!(
            "expected a 2-D map (H x W), got shape {dims:?}"
        )));
    }
    let (h, w) = (squeezed[0], squeezed[1]);
    if h == 0 || w == 0 {
        return Err(bad(&format!("empty map of shape {dims:?}")));
    }
    // Checked: a crafted header may declare sizes whose product overflows.
    let need = h
        .checked_mul(w)
        .and_then(|n| n.checked_mul(elem))
        .ok_or_else(|| bad(&format!("shape {dims:?} is too large")))?;
    let body = &bytes[hstart + hlen..];
    if body.len() < need {
        return Err(bad(&format!(
            "truncated data: {} bytes for a {h}x{w} map",
            body.len()
        )));
    }
    let mut data: Vec<f32> = if elem == 4 {
        body.chunks_exact(4)
            .take(h * w)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        body.chunks_exact(8)
            .take(h * w)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()
    };
    if fortran {
        let mut t = vec![0f32; h * w];
        for y in 0..h {
            for x in 0..w {
                t[y * w + x] = data[x * h + y];
            }
        }
        data = t;
    }
    Ok(Array2 {
        height: h,
        width: w,
        data,
    })
}

/// Write a 2-D float32 `.npy` (version 1.0, C order), atomically.
pub fn write_f32_2d(path: &Path, a: &Array2) -> Result<()> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        a.height, a.width
    );
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &a.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    crate::io::write_atomic(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        let a = Array2 {
            height: 2,
            width: 3,
            data: vec![1.0, 2.0, 3.0, 4.0, 5.5, -6.0],
        };
        write_f32_2d(&p, &a).unwrap();
        assert_eq!(read_f32_2d(&p).unwrap(), a);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        assert!(read_f32_2d(&p)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        std::fs::write(&p, b"hello world").unwrap();
        assert!(read_f32_2d(&p).unwrap_err().to_string().contains("m.npy"));
    }

    /// A header as NumPy writes it, for any shape text.
    fn with_shape(shape: &str) -> Vec<u8> {
        let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend([0u8; 16]);
        out
    }

    #[test]
    fn overflowing_and_empty_shapes_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("crafted.npy");
        for (shape, want) in [
            ("(4611686018427387904, 4)", "too large"),
            ("(18446744073709551615, 18446744073709551615)", "too large"),
            ("(0, 8)", "empty map"),
            ("(8, 0)", "empty map"),
        ] {
            std::fs::write(&p, with_shape(shape)).unwrap();
            let e = read_f32_2d(&p).unwrap_err().to_string();
            assert!(
                e.contains("crafted.npy") && e.contains(want),
                "{shape}: {e}"
            );
        }
        // The helper writes valid files: a 2x2 map over the 16 bytes reads.
        std::fs::write(&p, with_shape("(2, 2)")).unwrap();
        assert_eq!(read_f32_2d(&p).unwrap().data, vec![0.0; 4]);
    }
}

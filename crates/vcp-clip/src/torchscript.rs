//! Reading tensors out of PyTorch zip archives: plain `torch.save` state dicts, nested
//! checkpoint dicts (e.g. VCP-CLIP's `{"trainable_linearlayer": {...}, ...}`), and TorchScript
//! archives such as OpenAI's `ViT-L-14-336px.pt`, whose `data.pkl` is a tree of modules rather
//! than a state dict.
//!
//! candle's pickle reader turns modules into `Build { callable, args: Dict }` objects and tensors
//! into `Reduce(_rebuild_tensor_v2, ..)`; we walk that tree and name every tensor by its path of
//! attribute/dict keys joined with dots, which is exactly `state_dict()` naming.

use crate::error::{ClipError, Result};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::Tensor;
use std::io::{BufReader, Read};
use std::path::Path;

fn walk(obj: Object, prefix: &str, dir: &Path, out: &mut Vec<TensorInfo>) {
    let name = Object::Unicode(prefix.to_string());
    match obj {
        Object::Dict(kv) => {
            for (k, v) in kv {
                let key = match k {
                    Object::Unicode(s) => s,
                    Object::Int(i) => i.to_string(),
                    Object::Long(i) => i.to_string(),
                    _ => continue,
                };
                let p = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                walk(v, &p, dir, out);
            }
        }
        Object::Build { callable, args } => {
            if let Ok(Some(info)) = callable.clone().into_tensor_info(name, dir) {
                out.push(info);
            } else {
                walk(*args, prefix, dir, out);
            }
        }
        obj @ Object::Reduce { .. } => {
            if let Ok(Some(info)) = obj.into_tensor_info(name, dir) {
                out.push(info);
            }
        }
        _ => {}
    }
}

fn load_info(path: &Path, info: &TensorInfo) -> Result<Tensor> {
    let err =
        |e: &dyn std::fmt::Display| ClipError::file(path, format!("tensor `{}`: {e}", info.name));
    let file = std::fs::File::open(path).map_err(|e| ClipError::file(path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| err(&e))?;
    let mut reader = zip.by_name(&info.path).map_err(|e| err(&e))?;
    let layout = &info.layout;
    let fortran = layout.is_fortran_contiguous() && layout.shape().rank() > 1;
    if !layout.is_contiguous() && !fortran {
        return Err(err(&"non-contiguous tensors are not supported"));
    }
    let skip = (layout.start_offset() * info.dtype.size_in_bytes()) as u64;
    std::io::copy(&mut reader.by_ref().take(skip), &mut std::io::sink()).map_err(|e| err(&e))?;
    let n = layout.shape().elem_count() * info.dtype.size_in_bytes();
    let mut bytes = vec![0u8; n];
    reader
        .read_exact(&mut bytes)
        .map_err(|e| err(&format!("truncated tensor data ({e})")))?;
    let cpu = &candle_core::Device::Cpu;
    if fortran {
        let rev: Vec<usize> = layout.dims().iter().rev().cloned().collect();
        let t = Tensor::from_raw_buffer(&bytes, info.dtype, &rev, cpu).map_err(|e| err(&e))?;
        let perm: Vec<usize> = (0..layout.shape().rank()).rev().collect();
        Ok(t.permute(perm)?.contiguous()?)
    } else {
        Tensor::from_raw_buffer(&bytes, info.dtype, layout.dims(), cpu).map_err(|e| err(&e))
    }
}

/// All tensors of a PyTorch zip archive, named as `state_dict()` would name them.
pub fn read_pickled_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).map_err(|e| ClipError::file(path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        ClipError::file(
            path,
            format!("not a PyTorch zip archive ({e}); legacy non-zip .pt files are not supported"),
        )
    })?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|s| s.ok().map(|s| s.to_string()))
        .collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .ok_or_else(|| ClipError::file(path, "no data.pkl inside the archive"))?
        .clone();
    let dir = std::path::PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(&pkl));
    let obj = {
        let reader = zip.by_name(&pkl).map_err(|e| ClipError::file(path, e))?;
        let mut reader = BufReader::new(reader);
        let mut stack = Stack::empty();
        stack.read_loop(&mut reader).map_err(|e| {
            ClipError::file(
                path,
                format!("cannot parse data.pkl: {}", crate::weights::first_line(&e)),
            )
        })?;
        stack
            .finalize()
            .map_err(|e| ClipError::file(path, crate::weights::first_line(&e)))?
    };
    let mut infos = Vec::new();
    walk(obj, "", &dir, &mut infos);
    infos
        .iter()
        .map(|i| Ok((i.name.clone(), load_info(path, i)?)))
        .collect()
}

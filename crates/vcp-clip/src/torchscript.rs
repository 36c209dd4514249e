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

/// Run `f`, turning a panic inside candle's pickle code (e.g. a tuple shorter than
/// `_rebuild_tensor_v2` expects) into an error, without printing a panic message.
fn contained<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(prev);
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "malformed object".into())
    })
}

/// A tensor's info, or `None` when `obj` is not a tensor (objects candle cannot convert are
/// skipped, as before); one that makes candle's code panic is an error.
fn tensor_info(
    obj: Object,
    name: &str,
    dir: &Path,
) -> std::result::Result<Option<TensorInfo>, String> {
    let n = Object::Unicode(name.to_string());
    match contained(|| obj.into_tensor_info(n, dir)) {
        Ok(Ok(i)) => Ok(i),
        Ok(Err(_)) => Ok(None),
        Err(p) => Err(format!("tensor `{name}`: malformed ({p})")),
    }
}

/// Every tensor of the object tree, named by its path of keys (iterative: no recursion).
fn walk(root: Object, dir: &Path) -> std::result::Result<Vec<TensorInfo>, String> {
    let mut out = Vec::new();
    let mut todo = vec![(root, String::new())];
    while let Some((obj, prefix)) = todo.pop() {
        match obj {
            Object::Dict(kv) => {
                for (k, v) in kv.into_iter().rev() {
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
                    todo.push((v, p));
                }
            }
            Object::Build { callable, args } => match tensor_info(*callable, &prefix, dir) {
                Ok(Some(info)) => out.push(info),
                _ => todo.push((*args, prefix)),
            },
            obj @ Object::Reduce { .. } => {
                if let Some(info) = tensor_info(obj, &prefix, dir)? {
                    out.push(info);
                }
            }
            _ => {}
        }
    }
    Ok(out)
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
    // Declared sizes are bounded by the data actually in the archive before anything is
    // allocated (a crafted header may declare terabytes).
    let elem = info.dtype.size_in_bytes() as u64;
    let n = layout
        .dims()
        .iter()
        .try_fold(elem, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| err(&"declared shape overflows"))?;
    let skip = (layout.start_offset() as u64)
        .checked_mul(elem)
        .ok_or_else(|| err(&"declared offset overflows"))?;
    let have = reader.size();
    if skip.checked_add(n).is_none_or(|end| end > have) {
        return Err(err(&format!(
            "declares {} bytes at offset {skip} but its data `{}` holds {have}",
            n, info.path
        )));
    }
    std::io::copy(&mut reader.by_ref().take(skip), &mut std::io::sink()).map_err(|e| err(&e))?;
    let mut bytes = vec![0u8; n as usize];
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

/// Largest `data.pkl` read (its objects, not the tensors: those are separate members).
const MAX_PICKLE_BYTES: u64 = 1 << 30;

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
    let bytes = {
        let mut reader = zip.by_name(&pkl).map_err(|e| ClipError::file(path, e))?;
        if reader.size() > MAX_PICKLE_BYTES {
            return Err(ClipError::file(path, "data.pkl is larger than 1 GiB"));
        }
        let mut b = Vec::with_capacity(reader.size() as usize);
        reader
            .by_ref()
            .take(MAX_PICKLE_BYTES)
            .read_to_end(&mut b)
            .map_err(|e| ClipError::file(path, format!("data.pkl: {e}")))?;
        b
    };
    crate::pickle_guard::check(&bytes).map_err(|e| ClipError::file(path, e))?;
    let obj = contained(|| {
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut std::io::Cursor::new(&bytes))
            .map_err(|e| format!("cannot parse data.pkl: {}", crate::error::first_line(&e)))?;
        stack
            .finalize()
            .map_err(|e| crate::error::first_line(&e).to_string())
    })
    .map_err(|p| ClipError::file(path, format!("cannot parse data.pkl ({p})")))?
    .map_err(|e| ClipError::file(path, e))?;
    let infos = walk(obj, &dir).map_err(|e| ClipError::file(path, e))?;
    if infos.is_empty() {
        return Err(ClipError::file(path, "no tensors in this archive"));
    }
    infos
        .iter()
        .map(|i| Ok((i.name.clone(), load_info(path, i)?)))
        .collect()
}

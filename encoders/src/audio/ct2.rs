//! Reader for CTranslate2's `model.bin` (what faster-whisper users hold).
//!
//! Layout, little-endian, as written by `ctranslate2/specs/model_spec.py::_serialize` and read by
//! `src/models/model.cc` (binary versions 1 to 6):
//! ```text
//! u32 binary_version
//! [version >= 2] string spec_name, u32 spec_revision
//! u32 num_variables, then per variable:
//!     string name, u8 rank, u32 dims[rank],
//!     [version >= 4] u8 dtype id, u32 num_bytes
//!     [version <  4] u8 item_size, u32 num_items        (num_bytes = item_size * num_items)
//!     u8 data[num_bytes]
//! [version >= 3] u32 num_aliases, then pairs (string alias, string target)
//! string = u16 length (including a trailing NUL) + the bytes
//! ```
//! dtype ids follow `DataType` in `include/ctranslate2/types.h`: 0 float32, 1 int8, 2 int16,
//! 3 int32, 4 float16, 5 bfloat16.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Newest binary version this reader knows (CTranslate2 4.x writes 6).
pub const MAX_BINARY_VERSION: u32 = 6;

/// A CTranslate2 model: its spec name (e.g. `WhisperSpec`), revision and variables.
#[derive(Debug)]
pub struct Ct2Model {
    pub binary_version: u32,
    pub spec: String,
    pub spec_revision: u32,
    /// Variables by name. Floating types (f32, f16, bf16) come back as f32; integer types as
    /// i64 (candle has no i8). Scalars have shape `()`. Aliases point at the same tensor.
    pub variables: HashMap<String, Tensor>,
}

impl Ct2Model {
    /// The variable `name`, or an error naming the file and the missing variable.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Tensor> {
        self.variables.get(name).ok_or_else(|| Error::Model {
            path: path.to_path_buf(),
            what: format!("variable `{name}` is missing (spec {})", self.spec),
        })
    }
}

/// A bounds-checked cursor: every read that would run past the end is a "truncated" error.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: String) -> Error {
        Error::Model {
            path: self.path.to_path_buf(),
            what,
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated: needs {n} bytes for {what} at offset {} but the file has {}",
                    self.pos,
                    self.data.len()
                ))
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u16(what)? as usize;
        let bytes = self.take(len, what)?;
        // The length counts the trailing NUL.
        let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{what} is not UTF-8 (offset {})", self.pos)))
    }
}

/// Reads `path` (a CTranslate2 `model.bin`) into tensors on `device`.
pub fn read_model_bin(path: &Path, device: &Device) -> Result<Ct2Model> {
    read_model_bin_filtered(path, device, |_| true)
}

/// Like [`read_model_bin`] but only converts the variables for which `keep(name)` is true (the
/// whole file is still checked); e.g. the Whisper encoder skips the decoder's weights.
pub fn read_model_bin_filtered(
    path: &Path,
    device: &Device,
    keep: impl Fn(&str) -> bool,
) -> Result<Ct2Model> {
    let data = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_model_bin(&data, path, device, keep)
}

/// Parses the bytes of a `model.bin`; `path` is only used in error messages; variables whose
/// name fails `keep` are skipped (aliases to them too).
pub fn parse_model_bin(
    data: &[u8],
    path: &Path,
    device: &Device,
    keep: impl Fn(&str) -> bool,
) -> Result<Ct2Model> {
    let mut c = Cursor { data, pos: 0, path };
    let binary_version = c.u32("the binary version")?;
    if binary_version == 0 || binary_version > MAX_BINARY_VERSION {
        return Err(c.err(format!(
            "binary version {binary_version} is not a CTranslate2 model.bin version this reader \
             knows (1..={MAX_BINARY_VERSION}); is this really a CTranslate2 model?"
        )));
    }
    let (spec, spec_revision) = if binary_version >= 2 {
        (c.string("the spec name")?, c.u32("the spec revision")?)
    } else {
        (String::new(), 1)
    };
    let n_vars = c.u32("the variable count")? as usize;
    let mut variables = HashMap::with_capacity(n_vars);
    for i in 0..n_vars {
        let name = c.string(&format!("the name of variable {i}"))?;
        let rank = c.u8(&format!("the rank of `{name}`"))? as usize;
        let mut dims = Vec::with_capacity(rank);
        for _ in 0..rank {
            dims.push(c.u32(&format!("the shape of `{name}`"))? as usize);
        }
        let (dtype_id, num_bytes) = if binary_version >= 4 {
            let id = c.u8(&format!("the dtype of `{name}`"))?;
            (id, c.u32(&format!("the byte count of `{name}`"))? as usize)
        } else {
            // Old files store the item size; CTranslate2 maps 4 -> float32, 2 -> int16,
            // 1 -> int8 (get_dtype_from_item_size).
            let item = c.u8(&format!("the item size of `{name}`"))?;
            let id = match item {
                4 => 0,
                2 => 2,
                1 => 1,
                other => {
                    return Err(c.err(format!(
                        "`{name}` has item size {other}, expected 1, 2 or 4"
                    )))
                }
            };
            let items = c.u32(&format!("the item count of `{name}`"))? as usize;
            (id, items * item as usize)
        };
        let (dtype, item_size) = match dtype_id {
            0 => (DType::F32, 4),
            1 => (DType::I64, 1), // integers are widened below
            2 => (DType::I64, 2),
            3 => (DType::I64, 4),
            4 => (DType::F16, 2),
            5 => (DType::BF16, 2),
            other => {
                return Err(c.err(format!(
                    "`{name}` has dtype id {other}; known ids are 0..=5 \
                     (float32, int8, int16, int32, float16, bfloat16)"
                )))
            }
        };
        let numel: usize = dims.iter().product();
        if numel * item_size != num_bytes {
            return Err(c.err(format!(
                "`{name}` has shape {dims:?} of {item_size}-byte items ({} bytes) but states \
                 {num_bytes} bytes",
                numel * item_size
            )));
        }
        let raw = c.take(num_bytes, &format!("the data of `{name}`"))?;
        if !keep(&name) {
            continue;
        }
        // Integers are widened to i64 by hand (candle has no i8, and not every backend
        // converts i16), floats go through candle's f16/bf16 -> f32 conversion.
        let ints = |v: Vec<i64>| Tensor::from_vec(v, dims.as_slice(), device);
        let t = match dtype_id {
            1 => ints(raw.iter().map(|&b| b as i8 as i64).collect())?,
            2 => ints(
                raw.chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]) as i64)
                    .collect(),
            )?,
            3 => ints(
                raw.chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                    .collect(),
            )?,
            _ => Tensor::from_raw_buffer(raw, dtype, &dims, device)?.to_dtype(DType::F32)?,
        };
        variables.insert(name, t);
    }
    if binary_version >= 3 {
        let n_alias = c.u32("the alias count")? as usize;
        for _ in 0..n_alias {
            let alias = c.string("an alias name")?;
            let target = c.string("an alias target")?;
            if !keep(&target) {
                continue;
            }
            let t = variables.get(&target).cloned().ok_or_else(|| {
                c.err(format!(
                    "alias `{alias}` points at missing variable `{target}`"
                ))
            })?;
            variables.insert(alias, t);
        }
    }
    if c.pos != data.len() {
        return Err(c.err(format!(
            "{} unexpected trailing bytes after the last record",
            data.len() - c.pos
        )));
    }
    Ok(Ct2Model {
        binary_version,
        spec,
        spec_revision,
        variables,
    })
}

/// Where a model path points: the `model.bin` inside a folder, or the file itself.
pub fn model_bin_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("model.bin")
    } else {
        path.to_path_buf()
    }
}

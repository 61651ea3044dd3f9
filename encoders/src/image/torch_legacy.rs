//! Reading `.pth` state dicts, including the legacy (pre-1.6, non-zip) `torch.save` format that
//! candle's own reader rejects ("Could not find EOCD"): torchvision's MobileNetV2 and most
//! checkpoints published before 2020 are in it.
//!
//! A legacy file is a sequence of pickles followed by raw storages:
//! 1. the magic number `0x1950a86a20f9469cfc6c`, 2. the protocol version (1001),
//! 3. `sys_info` (`little_endian`, type sizes), 4. the object itself, whose tensors refer to
//!    storages through persistent ids `('storage', StorageType, key, location, numel, view)`,
//! 5. the list of storage keys, in the order their data follows; then for each key an 8-byte
//!    little-endian element count and the elements, little-endian.
//!
//! The pickles are run through candle's pickle VM (`candle_core::pickle::Stack`); only the
//! magic number is read by hand, because candle's `LONG1` decoder shifts a 10-byte integer past
//! 64 bits. Zip-format files (torch >= 1.6) are handed to candle's reader unchanged.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// `torch.serialization.MAGIC_NUMBER`, little-endian as pickled by `LONG1`.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// `torch.serialization.PROTOCOL_VERSION`.
const PROTOCOL_VERSION: i64 = 1001;

/// The tensors of a `.pth` state dict by name, remembering the file they came from so that a
/// missing or misshapen tensor is reported against it.
pub struct StateDict {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl StateDict {
    /// Reads `path` (legacy or zip format) onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            tensors: load_pth(path, device)?.into_iter().collect(),
        })
    }

    /// The file the tensors came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The tensor `name` as f32, checked to have `shape` (`None` accepts any shape).
    pub fn get(&self, name: &str, shape: Option<&[usize]>) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| model_err(&self.path, format!("missing tensor {name}")))?;
        if let Some(shape) = shape {
            if t.dims() != shape {
                return Err(model_err(
                    &self.path,
                    format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims()),
                ));
            }
        }
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// Loads every tensor of the state dict in `path` onto `device` (in no particular order). Works on
/// legacy and zip-format `.pth` files; a checkpoint that wraps its state dict under
/// `state_dict` or `model` is unwrapped. Non-tensor entries (`_metadata`) are skipped.
pub fn load_pth(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let mut head = [0u8; 4];
    let mut file = open(path)?;
    let n = read_up_to(&mut file, &mut head).map_err(|e| io_err(path, e))?;
    if n == 4 && &head == b"PK\x03\x04" {
        // torch >= 1.6 writes a zip archive, which candle reads itself.
        return candle_core::pickle::read_all(path)
            .or_else(|_| candle_core::pickle::read_all_with_key(path, Some("state_dict")))
            .map_err(|e| model_err(path, format!("cannot read the zip-format checkpoint: {e}")))
            .and_then(|ts| {
                ts.into_iter()
                    .map(|(k, t)| Ok((k, t.to_device(device)?)))
                    .collect()
            });
    }
    read_legacy(path, device)
}

/// The storage a tensor points into, from its persistent id.
#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    kind: StorageKind,
    numel: usize,
    /// `(offset, numel)` of a view into a larger storage (torch < 0.4 only); offsets are in
    /// elements of the root storage.
    view: Option<(usize, usize)>,
}

/// A tensor as the state dict describes it: where its elements lie in its storage.
#[derive(Debug)]
struct TensorRef {
    name: String,
    storage: StorageRef,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Element types of torch storages and how they land in candle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageKind {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    /// int8: widened to i16 on load (candle has no i8).
    I8,
    U8,
    /// bool: one byte per element, loaded as u8.
    Bool,
}

impl StorageKind {
    fn from_class(class: &str) -> Option<Self> {
        Some(match class {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn elem_size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// Reads a legacy (non-zip) `torch.save` file. See the module docs for the layout.
pub fn read_legacy(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let mut r = BufReader::new(open(path)?);
    let bad = |what: String| model_err(path, what);

    read_magic(&mut r).map_err(|what| {
        bad(format!(
            "not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file): {what}"
        ))
    })?;
    let version = run_pickle(&mut r)
        .map_err(|e| bad(format!("protocol version: {e}")))?
        .int_or_long()
        .map_err(|o| bad(format!("protocol version is not an integer: {o:?}")))?;
    if version != PROTOCOL_VERSION {
        return Err(bad(format!(
            "legacy protocol version {version}, expected {PROTOCOL_VERSION}"
        )));
    }
    let sys_info = run_pickle(&mut r).map_err(|e| bad(format!("sys_info: {e}")))?;
    if let Object::Dict(entries) = &sys_info {
        for (k, v) in entries {
            // The storages are raw machine words: a big-endian writer's bytes would load as garbage.
            if matches!(k, Object::Unicode(s) if s == "little_endian") && *v != Object::Bool(true) {
                return Err(bad("written on a big-endian machine; not supported".into()));
            }
        }
    }
    let root = run_pickle(&mut r).map_err(|e| bad(format!("the pickled object: {e}")))?;
    // Every storage the object refers to, tensors of the state dict or not (an optimizer's state
    // in a training checkpoint): their types give the byte sizes needed to step over them.
    let mut storages: HashMap<String, StorageRef> = HashMap::new();
    find_storages(&root, &mut storages).map_err(bad)?;
    let tensors = collect_tensors(root).map_err(bad)?;
    let keys = match run_pickle(&mut r).map_err(|e| bad(format!("storage key list: {e}")))? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| k.unicode().map_err(|o| bad(format!("storage key {o:?}"))))
            .collect::<Result<Vec<String>>>()?,
        other => {
            return Err(bad(format!(
                "expected the storage key list, got {}",
                short(&other)
            )))
        }
    };

    let wanted: std::collections::HashSet<&str> =
        tensors.iter().map(|t| t.storage.key.as_str()).collect();
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for key in &keys {
        let mut count = [0u8; 8];
        r.read_exact(&mut count).map_err(|e| {
            bad(format!(
                "storage {key}: cannot read its size ({e}); truncated?"
            ))
        })?;
        let count = u64::from_le_bytes(count);
        let info = storages
            .get(key.as_str())
            .ok_or_else(|| bad(format!("storage {key} is listed but nothing refers to it")))?;
        if count != info.numel as u64 {
            return Err(bad(format!(
                "storage {key} holds {count} elements but its reference says {}",
                info.numel
            )));
        }
        let n_bytes = info.numel as u64 * info.kind.elem_size() as u64;
        // `take` + `read_to_end` grows the buffer with the data actually there, so a corrupt
        // size cannot make us allocate more than the file holds.
        let mut bytes = Vec::new();
        (&mut r)
            .take(n_bytes)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("storage {key}: {e}")))?;
        if bytes.len() as u64 != n_bytes {
            return Err(bad(format!(
                "storage {key}: {} of {n_bytes} bytes; the file is truncated",
                bytes.len()
            )));
        }
        if wanted.contains(key.as_str()) {
            data.insert(key.clone(), bytes);
        }
    }

    tensors
        .into_iter()
        .map(|t| {
            let bytes = data.get(&t.storage.key).ok_or_else(|| {
                bad(format!(
                    "tensor {} refers to storage {} which the file does not contain",
                    t.name, t.storage.key
                ))
            })?;
            let tensor = materialize(&t, bytes, device)
                .map_err(|what| bad(format!("tensor {}: {what}", t.name)))?;
            Ok((t.name, tensor))
        })
        .collect()
}

/// Copies the (possibly strided) elements of `t` out of its storage into a contiguous tensor.
fn materialize(
    t: &TensorRef,
    storage: &[u8],
    device: &Device,
) -> std::result::Result<Tensor, String> {
    let es = t.storage.kind.elem_size();
    let base = t.storage.view.map_or(0, |(off, _)| off) + t.offset;
    let numel: usize = t.size.iter().product();
    if t.size.len() != t.stride.len() {
        return Err(format!(
            "size {:?} and stride {:?} differ in rank",
            t.size, t.stride
        ));
    }
    // Largest element index touched; an empty tensor touches nothing.
    let last = if numel == 0 {
        0
    } else {
        base + t
            .size
            .iter()
            .zip(&t.stride)
            .map(|(&n, &s)| (n - 1) * s)
            .sum::<usize>()
    };
    if numel > 0 && (last + 1) * es > storage.len() {
        return Err(format!(
            "size {:?} stride {:?} offset {base} reaches past its storage of {} elements",
            t.size,
            t.stride,
            storage.len() / es
        ));
    }
    let mut out = Vec::with_capacity(numel * es);
    if is_contiguous(&t.size, &t.stride) {
        out.extend_from_slice(&storage[base * es..(base + numel) * es]);
    } else {
        // Row-major walk over the index space, the way torch's `.contiguous()` orders elements.
        let mut idx = vec![0usize; t.size.len()];
        for _ in 0..numel {
            let e = base + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&storage[e * es..(e + 1) * es]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
    let (dtype, out) = match t.storage.kind {
        StorageKind::F32 => (DType::F32, out),
        StorageKind::F64 => (DType::F64, out),
        StorageKind::F16 => (DType::F16, out),
        StorageKind::BF16 => (DType::BF16, out),
        StorageKind::I64 => (DType::I64, out),
        StorageKind::I32 => (DType::I32, out),
        StorageKind::I16 => (DType::I16, out),
        StorageKind::U8 | StorageKind::Bool => (DType::U8, out),
        StorageKind::I8 => (
            DType::I16,
            out.iter()
                .flat_map(|&b| (b as i8 as i16).to_le_bytes())
                .collect(),
        ),
    };
    Tensor::from_raw_buffer(&out, dtype, &t.size, device).map_err(|e| e.to_string())
}

fn is_contiguous(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&n, &s) in size.iter().zip(stride).rev() {
        // Dimensions of extent 1 may carry any stride.
        if n != 1 && s != expected {
            return false;
        }
        expected *= n;
    }
    true
}

/// Collects the storage of every persistent id anywhere in `o`.
fn find_storages(
    o: &Object,
    out: &mut HashMap<String, StorageRef>,
) -> std::result::Result<(), String> {
    match o {
        Object::PersistentLoad(_) => {
            let s = storage_ref(o.clone())?;
            out.entry(s.key.clone()).or_insert(s);
        }
        Object::Tuple(v) | Object::List(v) => {
            for x in v {
                find_storages(x, out)?;
            }
        }
        Object::Dict(kv) => {
            for (k, v) in kv {
                find_storages(k, out)?;
                find_storages(v, out)?;
            }
        }
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            find_storages(callable, out)?;
            find_storages(args, out)?;
        }
        _ => {}
    }
    Ok(())
}

/// Finds the state dict in the unpickled object and describes each tensor in it.
fn collect_tensors(root: Object) -> std::result::Result<Vec<TensorRef>, String> {
    let entries = match root {
        Object::Dict(entries) => entries,
        other => return Err(format!("the checkpoint is not a dict: {}", short(&other))),
    };
    // A training checkpoint ({"state_dict": {...}, "epoch": ...}) wraps the weights.
    let entries = if entries.iter().any(|(_, v)| is_tensor(v)) {
        entries
    } else {
        entries
            .into_iter()
            .find_map(|(k, v)| match (k, v) {
                (Object::Unicode(k), Object::Dict(inner)) if k == "state_dict" || k == "model" => {
                    Some(inner)
                }
                _ => None,
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        let Object::Unicode(name) = k else { continue };
        if !is_tensor(&v) {
            continue;
        }
        out.push(tensor_ref(name.clone(), v).map_err(|e| format!("{name}: {e}"))?);
    }
    if out.is_empty() {
        return Err("the checkpoint holds no tensors".into());
    }
    Ok(out)
}

fn is_tensor(v: &Object) -> bool {
    match v {
        Object::Reduce { callable, .. } => matches!(
            callable.as_ref(),
            Object::Class { module_name, class_name }
                if module_name == "torch._utils"
                    && (class_name == "_rebuild_tensor_v2" || class_name == "_rebuild_parameter"
                        || class_name == "_rebuild_tensor")
        ),
        _ => false,
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`, possibly inside
/// `_rebuild_parameter(tensor, requires_grad, hooks)`.
fn tensor_ref(name: String, v: Object) -> std::result::Result<TensorRef, String> {
    let (callable, args) = v
        .reduce()
        .map_err(|o| format!("not a tensor: {}", short(&o)))?;
    let class = callable
        .class()
        .map_err(|o| format!("bad callable {}", short(&o)))?;
    let mut args = args
        .tuple()
        .map_err(|o| format!("bad arguments {}", short(&o)))?;
    if class.1 == "_rebuild_parameter" {
        if args.is_empty() {
            return Err("_rebuild_parameter without arguments".into());
        }
        return tensor_ref(name, args.swap_remove(0));
    }
    if args.len() < 4 {
        return Err(format!("{} with {} arguments", class.1, args.len()));
    }
    let mut it = args.into_iter();
    let (storage, offset, size, stride) = match (it.next(), it.next(), it.next(), it.next()) {
        (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
        _ => return Err("too few arguments".into()),
    };
    let storage = storage_ref(storage)?;
    Ok(TensorRef {
        name,
        storage,
        offset: to_usize(offset)?,
        size: to_usizes(size)?,
        stride: to_usizes(stride)?,
    })
}

/// `('storage', torch.FloatStorage, key, location, numel, view_metadata)`.
fn storage_ref(pid: Object) -> std::result::Result<StorageRef, String> {
    let pid = pid
        .persistent_load()
        .and_then(|p| p.tuple())
        .map_err(|o| format!("storage is not a persistent id: {}", short(&o)))?;
    let [tag, class, key, _location, numel, view] = <[Object; 6]>::try_from(pid)
        .map_err(|p| format!("persistent id with {} fields, expected 6", p.len()))?;
    if tag != Object::Unicode("storage".into()) {
        return Err(format!("persistent id tagged {}", short(&tag)));
    }
    let (_, class) = class
        .class()
        .map_err(|o| format!("storage type {}", short(&o)))?;
    let kind = StorageKind::from_class(&class)
        .ok_or_else(|| format!("unsupported storage type {class}"))?;
    let key = key
        .unicode()
        .map_err(|o| format!("storage key {}", short(&o)))?;
    let view = match view {
        Object::None => None,
        Object::Tuple(v) if v.len() == 3 => {
            let mut v = v.into_iter();
            let _view_key = v.next();
            let off = v.next().map(to_usize).transpose()?.unwrap_or(0);
            let n = v.next().map(to_usize).transpose()?.unwrap_or(0);
            Some((off, n))
        }
        other => return Err(format!("storage view {}", short(&other))),
    };
    Ok(StorageRef {
        key,
        kind,
        numel: to_usize(numel)?,
        view,
    })
}

fn to_usize(o: Object) -> std::result::Result<usize, String> {
    o.int_or_long()
        .ok()
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| "expected a non-negative integer".to_string())
}

fn to_usizes(o: Object) -> std::result::Result<Vec<usize>, String> {
    match o {
        Object::Tuple(v) | Object::List(v) => v.into_iter().map(to_usize).collect(),
        other => Err(format!(
            "expected a tuple of integers, got {}",
            short(&other)
        )),
    }
}

/// A bounded rendering of an object for error messages (the root can be megabytes).
fn short(o: &Object) -> String {
    let s = format!("{o:?}");
    if s.len() > 120 {
        let cut = (0..=120)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

/// The first pickle: `PROTO n`, `LONG1 10 <magic>`, `STOP`, read by hand (see module docs).
fn read_magic<R: BufRead>(r: &mut R) -> std::result::Result<(), String> {
    let mut b = [0u8; 1];
    let mut next = |r: &mut R| -> std::result::Result<u8, String> {
        r.read_exact(&mut b).map_err(|e| e.to_string())?;
        Ok(b[0])
    };
    let mut op = next(r)?;
    if op == 0x80 {
        next(r)?; // protocol number
        op = next(r)?;
    }
    if op != 0x8a {
        return Err(format!("first opcode 0x{op:02x}, expected LONG1 (0x8a)"));
    }
    let n = next(r)? as usize;
    let mut magic = vec![0u8; n];
    r.read_exact(&mut magic).map_err(|e| e.to_string())?;
    if magic != MAGIC {
        return Err("wrong magic number".into());
    }
    match next(r)? {
        b'.' => Ok(()),
        op => Err(format!(
            "opcode 0x{op:02x} after the magic number, expected STOP"
        )),
    }
}

/// Runs one pickle (up to its `STOP`) through candle's VM and returns its value.
fn run_pickle<R: BufRead>(r: &mut R) -> candle_core::Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(r)?;
    stack.finalize()
}

fn open(path: &Path) -> Result<File> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(io_err(path, std::io::Error::other("is a directory")));
    }
    Ok(file)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn model_err(path: &Path, what: String) -> Error {
    Error::Model {
        path: path.to_path_buf(),
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        assert!(is_contiguous(&[1, 3], &[99, 1]));
        assert!(is_contiguous(&[], &[]));
    }

    #[test]
    fn magic_is_checked() {
        let good = [&[0x80u8, 0x02, 0x8a, 0x0a][..], &MAGIC[..], &[b'.'][..]].concat();
        assert!(read_magic(&mut &good[..]).is_ok());
        let mut bad = good.clone();
        bad[5] ^= 1;
        assert!(read_magic(&mut &bad[..]).is_err());
        assert!(read_magic(&mut &b""[..]).is_err());
    }

    /// Pickle opcodes, just enough to write a legacy checkpoint by hand.
    fn unicode(b: &mut Vec<u8>, s: &str) {
        b.push(b'X');
        b.extend((s.len() as u32).to_le_bytes());
        b.extend(s.as_bytes());
    }

    fn global(b: &mut Vec<u8>, module: &str, name: &str) {
        b.push(b'c');
        b.extend(format!("{module}\n{name}\n").as_bytes());
    }

    /// `_rebuild_tensor_v2(('storage', class, key, 'cpu', numel, None), offset, size, stride,
    /// False, OrderedDict())` with 2-d size and stride.
    fn tensor(
        b: &mut Vec<u8>,
        class: &str,
        key: &str,
        numel: u8,
        off: u8,
        size: [u8; 2],
        stride: [u8; 2],
    ) {
        global(b, "torch._utils", "_rebuild_tensor_v2");
        b.push(b'(');
        b.push(b'(');
        unicode(b, "storage");
        global(b, "torch", class);
        unicode(b, key);
        unicode(b, "cpu");
        b.extend([b'K', numel, b'N', b't', b'Q']);
        b.extend([b'K', off]);
        b.extend([b'K', size[0], b'K', size[1], 0x86]);
        b.extend([b'K', stride[0], b'K', stride[1], 0x86]);
        b.push(0x89);
        global(b, "collections", "OrderedDict");
        b.extend([b')', b'R', b't', b'R']);
    }

    /// A training checkpoint `{"state_dict": {"w": <transposed view>}, "epoch": 3,
    /// "optimizer": {"m": <int64 tensor>}}`: the weights are unwrapped, strides and offsets
    /// honoured, the optimizer's storage stepped over.
    #[test]
    fn wrapped_strided_checkpoint() {
        let mut f = vec![0x80, 0x02, 0x8a, 0x0a];
        f.extend(MAGIC);
        f.push(b'.');
        f.extend([0x80, 0x02, b'M', 0xe9, 0x03, b'.']);
        f.extend([0x80, 0x02, b'}', b'(']);
        unicode(&mut f, "little_endian");
        f.extend([0x88, b'u', b'.']);
        f.extend([0x80, 0x02, b'}', b'(']);
        unicode(&mut f, "state_dict");
        f.extend([b'}', b'(']);
        unicode(&mut f, "w");
        tensor(&mut f, "FloatStorage", "k0", 6, 1, [2, 2], [1, 2]);
        f.push(b'u');
        unicode(&mut f, "epoch");
        f.extend([b'K', 3]);
        unicode(&mut f, "optimizer");
        f.extend([b'}', b'(']);
        unicode(&mut f, "m");
        tensor(&mut f, "LongStorage", "k1", 2, 0, [1, 2], [2, 1]);
        f.extend([b'u', b'u', b'.']);
        f.extend([0x80, 0x02, b']', b'(']);
        unicode(&mut f, "k0");
        unicode(&mut f, "k1");
        f.extend([b'e', b'.']);
        f.extend(6u64.to_le_bytes());
        for v in 0..6 {
            f.extend((v as f32).to_le_bytes());
        }
        f.extend(2u64.to_le_bytes());
        f.extend(7i64.to_le_bytes());
        f.extend(8i64.to_le_bytes());

        let dir = std::env::temp_dir().join(format!("anymal-legacy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ckpt.pth");
        std::fs::write(&p, &f).unwrap();
        let ts = load_pth(&p, &Device::Cpu).unwrap();
        assert_eq!(ts.len(), 1);
        assert_eq!(ts[0].0, "w");
        // offset 1, (i, j) -> 1 + i + 2j
        assert_eq!(
            ts[0].1.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 3.0], vec![2.0, 4.0]]
        );

        // Cut inside the last storage: an error naming the file, no panic.
        std::fs::write(&p, &f[..f.len() - 3]).unwrap();
        let e = load_pth(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("ckpt.pth") && e.contains("truncated"), "{e}");
        // Cut inside the pickles.
        std::fs::write(&p, &f[..60]).unwrap();
        let e = load_pth(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("ckpt.pth"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

//! The frozen Whisper audio encoder: 16 kHz samples -> log-mel -> candle-transformers'
//! `AudioEncoder` -> `(n_frames, d_model)` features, one frame per 20 ms of audio.
//!
//! Two ways to encode a clip ([`Context`]): as Whisper was trained, each 30 s window padded with
//! silence to 30 s and all 1500 positions encoded (`window`); or only as many positions as the
//! clip needs (`clip`, whisper.cpp's `audio_ctx`): the log-mel is cut to the clip's length
//! rounded up to a bucket of 0.5 s and the positional table is cut with it, so a 3 s clip costs
//! ~1/9 of the work. Rounding to buckets keeps a clip's features independent of the batch it is
//! encoded in (clips of one bucket share a forward), which the feature cache relies on.
//!
//! Weights come from either a CTranslate2 folder (`model.bin`, what faster-whisper users hold,
//! fp16 in the fetched tiny.en) or a Hugging Face Whisper folder (`model.safetensors` +
//! `config.json`). Both are mapped onto the HF names candle expects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::{self as cw, model::AudioEncoder};

use super::ct2;
use super::mel::{LogMel, HOP_LENGTH, N_FRAMES, N_SAMPLES};
use crate::error::{Error, Result};

/// Samples per encoder frame: the mel hop (160) times conv2's stride (2) = 20 ms at 16 kHz.
pub const SAMPLES_PER_FRAME: usize = 320;
/// Encoder frames in one 30 s window.
pub const FRAMES_PER_WINDOW: usize = N_FRAMES / 2;
/// 30 s windows per encoder forward in [`WhisperEncoder::encode_batch`]; bounds memory (the
/// attention scores of one window are heads x 1500 x 1500 f32, 54 MB for tiny).
const MAX_WINDOWS_PER_FORWARD: usize = 8;
/// Encoder frames per bucket of the `clip` context: 25 frames = 0.5 s.
pub const CLIP_BUCKET_FRAMES: usize = 25;

/// How much of Whisper's 30 s window a clip is encoded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Context {
    /// The whole 30 s window, padded with silence (as Whisper was trained).
    #[default]
    Window,
    /// The clip's own length, rounded up to 0.5 s (whisper.cpp's `audio_ctx`).
    Clip,
    /// Every window's 1500 frames, the silence after the clip included, in the windows
    /// llama.cpp's `mtmd` cuts (it appends 30 s of silence and drops the last partial window,
    /// so a clip within 0.01 s of a multiple of 30 s gets one more, silent, window). A
    /// projector trained on these features gets in llama.cpp exactly the frames it trained on
    /// (`anymal export --format mmproj`).
    FullWindow,
}

impl Context {
    /// Suffix of the encoder id: features of each context are cached apart.
    fn id_suffix(self) -> &'static str {
        match self {
            Context::Window => "",
            Context::Clip => "-clip",
            Context::FullWindow => "-full",
        }
    }
}

/// Encoder frames a window of `len` samples is encoded with in `context`.
fn encoded_frames(len: usize, context: Context) -> usize {
    match context {
        Context::Window | Context::FullWindow => FRAMES_PER_WINDOW,
        Context::Clip => kept_frames(len, context)
            .div_ceil(CLIP_BUCKET_FRAMES)
            .saturating_mul(CLIP_BUCKET_FRAMES)
            .min(FRAMES_PER_WINDOW),
    }
}

/// Resolves an encoder reference to a folder or file: the short names `whisper-tiny-en` (the
/// default; also `whisper-tiny.en`) and `whisper-base` map to the fetched models under
/// `<cache>/models/`, the cache being [`anymal_util::fs::cache_dir`]; anything else is taken as
/// a path. A short name whose model was not fetched is an error naming the fetch command.
pub fn resolve_encoder_ref(reference: &str) -> Result<PathBuf> {
    resolve_encoder_ref_in(reference, &anymal_util::fs::cache_dir())
}

/// [`resolve_encoder_ref`] against an explicit cache folder.
pub fn resolve_encoder_ref_in(reference: &str, cache: &Path) -> Result<PathBuf> {
    let short = match reference {
        "" | "whisper-tiny-en" | "whisper-tiny.en" => Some(("whisper-tiny.en", "whisper-tiny-en")),
        "whisper-base" => Some(("whisper-base", "whisper-base")),
        _ => None,
    };
    match short {
        Some((dir, target)) => {
            let path = cache.join("models").join(dir);
            if path.join("model.bin").is_file() {
                Ok(path)
            } else {
                Err(Error::MissingAsset {
                    path: path.join("model.bin"),
                    fetch: format!("scripts/fetch-assets.sh {target}"),
                })
            }
        }
        None => {
            let path = PathBuf::from(reference);
            if path.exists() {
                Ok(path)
            } else {
                Err(Error::Io {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no such encoder file or folder (short names: whisper-tiny-en, whisper-base)",
                    ),
                })
            }
        }
    }
}

/// Dimensions read from the weights (CTranslate2) or `config.json` (HF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhisperDims {
    pub n_mels: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Encoder positions: 1500 for every released Whisper.
    pub n_ctx: usize,
}

/// A Whisper encoder's weights under the Hugging Face names (`model.encoder.layers.0.self_attn.
/// q_proj.weight`, ...; CTranslate2's fused attention split into q, k and v), as the encoder
/// is built from them and as `anymal export` writes them for llama.cpp.
pub struct WhisperWeights {
    pub tensors: HashMap<String, Tensor>,
    pub dims: WhisperDims,
    /// The file they were read from.
    pub file: PathBuf,
}

impl WhisperWeights {
    /// Reads `path`, as [`WhisperEncoder::load`] takes it.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (tensors, dims, file) = if path.is_dir() {
            if path.join("model.bin").is_file() {
                let f = path.join("model.bin");
                let (t, d) = load_ct2(&f, device)?;
                (t, d, f)
            } else if path.join("model.safetensors").is_file() {
                let f = path.join("model.safetensors");
                let (t, d) = load_hf(&f, &path.join("config.json"), device)?;
                (t, d, f)
            } else {
                return Err(Error::Model {
                    path: path.to_path_buf(),
                    what: "folder has neither model.bin (CTranslate2) nor model.safetensors + \
                           config.json (Hugging Face)"
                        .into(),
                });
            }
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            let cfg = path.with_file_name("config.json");
            let (t, d) = load_hf(path, &cfg, device)?;
            (t, d, path.to_path_buf())
        } else if path.is_file() {
            let (t, d) = load_ct2(path, device)?;
            (t, d, path.to_path_buf())
        } else {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        };
        Ok(Self {
            tensors,
            dims,
            file,
        })
    }
}

/// A frozen Whisper encoder.
pub struct WhisperEncoder {
    encoder: AudioEncoder,
    dims: WhisperDims,
    mel: LogMel,
    device: Device,
    id: String,
    context: Context,
}

impl WhisperEncoder {
    /// Loads from `path`: a folder holding `model.bin` (CTranslate2) or `model.safetensors` +
    /// `config.json` (Hugging Face), or a `model.bin` / `.safetensors` file itself.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let WhisperWeights {
            tensors,
            dims,
            file: weight_file,
        } = WhisperWeights::load(path, device)?;
        let encoder = build_encoder(tensors, dims, device, &weight_file)?;
        let hash = anymal_util::sha256::file_hex(&weight_file).map_err(|source| Error::Io {
            path: weight_file.clone(),
            source,
        })?;
        let id = format!("whisper-{}-{}-{}", dims.d_model, dims.n_layers, &hash[..16]);
        Ok(Self {
            encoder,
            dims,
            mel: LogMel::new(dims.n_mels)?,
            device: device.clone(),
            id,
            context: Context::Window,
        })
    }

    /// This encoder with `context`; the id of a `clip` encoder ends in `-clip`, since its
    /// features differ from the window's.
    pub fn with_context(mut self, context: Context) -> Self {
        let base = self
            .id
            .strip_suffix(self.context.id_suffix())
            .unwrap_or(&self.id);
        self.id = format!("{base}{}", context.id_suffix());
        self.context = context;
        self
    }

    pub fn context(&self) -> Context {
        self.context
    }

    /// A stable id for feature caches: `whisper-<d_model>-<layers>-<16 hex of sha256(weights)>`.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// `d_model`: the width of each output frame.
    pub fn hidden_size(&self) -> usize {
        self.dims.d_model
    }
    /// Mel bins the encoder takes (80, or 128 for large-v3).
    pub fn n_mels(&self) -> usize {
        self.dims.n_mels
    }
    pub fn dims(&self) -> WhisperDims {
        self.dims
    }

    /// Number of encoder frames [`encode`](Self::encode) returns for `n_samples` at 16 kHz:
    /// `ceil(n / 320)` per 30 s window (at least 1); 1500 per window in the `full_window`
    /// context.
    pub fn frames_for(&self, n_samples: usize) -> usize {
        windows(n_samples, self.context)
            .iter()
            .map(|&(s, e)| kept_frames(e - s, self.context))
            .sum()
    }

    /// Log-mel of one window: `(n_mels, 3000)`.
    pub fn log_mel(&self, samples_16k: &[f32]) -> Result<Tensor> {
        let m = self.mel.compute(samples_16k)?;
        Ok(Tensor::from_vec(
            m,
            (self.dims.n_mels, N_FRAMES),
            &Device::Cpu,
        )?)
    }

    /// Encodes one clip `(n,)` at 16 kHz into `(n_kept, d_model)` f32 on the CPU.
    ///
    /// Each 30 s window is padded with zeros to 30 s (as Whisper was trained), encoded to 1500
    /// frames, and only the `ceil(len / 320)` frames that carry audio are kept (frames past the
    /// end of the clip only see padding). Clips longer than 30 s are cut into consecutive 30 s
    /// windows whose kept frames are concatenated, so a 45 s clip gives 1500 + 750 frames.
    pub fn encode(&self, samples_16k: &[f32]) -> Result<Tensor> {
        let mut out = self.encode_batch(&[samples_16k])?;
        out.pop()
            .ok_or_else(|| Error::Internal("no output for the clip".into()))
    }

    /// Encodes several clips, stacking their 30 s windows into batched encoder forwards (up to
    /// 8 windows per forward). Returns one `(n_kept_i, d_model)` tensor per clip, as
    /// [`encode`](Self::encode) would.
    pub fn encode_batch(&self, clips: &[&[f32]]) -> Result<Vec<Tensor>> {
        let mels = self.log_mel_windows(clips)?;
        let lengths: Vec<usize> = clips.iter().map(|c| c.len()).collect();
        self.encode_windows(&mels, &lengths)
    }

    /// The log-mel of every clip's 30 s windows, clip after clip: `(w, n_mels, 3000)`.
    pub fn log_mel_windows(&self, clips: &[&[f32]]) -> Result<Tensor> {
        let mut mels = Vec::new();
        for (ci, clip) in clips.iter().enumerate() {
            if clip.is_empty() {
                return Err(Error::EmptyInput {
                    what: format!("clip {ci} of the batch has no samples"),
                });
            }
            for (s, e) in windows(clip.len(), self.context) {
                mels.push(self.log_mel(&clip[s..e])?);
            }
        }
        Ok(Tensor::stack(&mels, 0)?)
    }

    /// Encodes the windows of [`log_mel_windows`](Self::log_mel_windows) for clips of
    /// `lengths` samples: one `(n_kept_i, d_model)` tensor per clip. Windows encoded with the
    /// same number of positions share forwards (all of them in the `window` context; those of
    /// one 0.5 s bucket in the `clip` context), at most ~8 windows' worth of positions each.
    pub fn encode_windows(&self, mels: &Tensor, lengths: &[usize]) -> Result<Vec<Tensor>> {
        // (clip index, kept frames, encoded frames) of every window, in order.
        let jobs: Vec<(usize, usize, usize)> = lengths
            .iter()
            .enumerate()
            .flat_map(|(ci, &n)| {
                windows(n, self.context).into_iter().map(move |(s, e)| {
                    (
                        ci,
                        kept_frames(e - s, self.context),
                        encoded_frames(e - s, self.context),
                    )
                })
            })
            .collect();
        if jobs.len() != mels.dim(0)? {
            return Err(Error::ShapeMismatch {
                what: "mel windows for the clips' lengths".into(),
                expected: jobs.len().to_string(),
                got: mels.dim(0)?.to_string(),
            });
        }
        let mut sizes: Vec<usize> = jobs.iter().map(|j| j.2).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let mut per_window: Vec<Option<Tensor>> = vec![None; jobs.len()];
        for size in sizes {
            let members: Vec<usize> = (0..jobs.len()).filter(|&w| jobs[w].2 == size).collect();
            let per_forward = (MAX_WINDOWS_PER_FORWARD * FRAMES_PER_WINDOW / size).max(1);
            for group in members.chunks(per_forward) {
                let idx = Tensor::new(
                    group
                        .iter()
                        .map(|&w| w as u32)
                        .collect::<Vec<_>>()
                        .as_slice(),
                    mels.device(),
                )?;
                // (b, n_mels, 2 * size) -> (b, size, d): conv2's stride halves the mel frames.
                let xs = mels
                    .index_select(&idx, 0)?
                    .narrow(2, 0, 2 * size)?
                    .to_device(&self.device)?;
                // AudioEncoder::forward takes &mut self only for the decoder's KV cache, which
                // the encoder never fills; a clone shares the weights (Arc) and keeps `encode`
                // &self.
                let ys = self.encoder.clone().forward(&xs, true)?;
                for (b, &w) in group.iter().enumerate() {
                    let y = ys.i(b)?.narrow(0, 0, jobs[w].1)?.to_device(&Device::Cpu)?;
                    per_window[w] = Some(y.to_dtype(DType::F32)?);
                }
            }
        }
        let mut per_clip: Vec<Vec<Tensor>> = vec![Vec::new(); lengths.len()];
        for (w, y) in per_window.into_iter().enumerate() {
            let y = y.ok_or_else(|| Error::Internal(format!("window {w} was not encoded")))?;
            per_clip[jobs[w].0].push(y);
        }
        per_clip
            .into_iter()
            .map(|parts| Ok(Tensor::cat(&parts, 0)?))
            .collect()
    }
}

/// Consecutive 30 s windows `[start, end)` covering `n` samples (at least one). In the
/// `full_window` context, as many as llama.cpp's `mtmd` cuts: it appends 30 s of silence to the
/// clip, takes `(n + 480000) / 160 + 1` mel frames and keeps the whole 3000-frame windows, so a
/// window may lie past the clip's end (then it is empty: silence).
fn windows(n: usize, context: Context) -> Vec<(usize, usize)> {
    let count = match context {
        Context::FullWindow => ((n + N_SAMPLES) / HOP_LENGTH + 1) / N_FRAMES,
        Context::Window | Context::Clip => n.div_ceil(N_SAMPLES),
    }
    .max(1);
    (0..count)
        .map(|w| ((w * N_SAMPLES).min(n), ((w + 1) * N_SAMPLES).min(n)))
        .collect()
}

/// Encoder frames kept of a window with `len` samples of audio: those that carry audio,
/// `ceil(len / 320)` in 1..=1500, or all 1500 in the `full_window` context.
fn kept_frames(len: usize, context: Context) -> usize {
    match context {
        Context::FullWindow => FRAMES_PER_WINDOW,
        Context::Window | Context::Clip => {
            len.div_ceil(SAMPLES_PER_FRAME).clamp(1, FRAMES_PER_WINDOW)
        }
    }
}

fn model_err(path: &Path, what: impl Into<String>) -> Error {
    Error::Model {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Reads the encoder variables of a CTranslate2 Whisper `model.bin` and renames them to the HF
/// names candle uses.
fn load_ct2(file: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, WhisperDims)> {
    let m = ct2::read_model_bin_filtered(file, device, |n| n.starts_with("encoder/"))?;
    if m.spec != "WhisperSpec" {
        return Err(model_err(
            file,
            format!("spec is `{}`, expected `WhisperSpec`", m.spec),
        ));
    }
    let conv1 = m.get("encoder/conv1/weight", file)?;
    let (d_model, n_mels, _k) = conv1.dims3().map_err(|e| model_err(file, e.to_string()))?;
    let heads_t = m.get("encoder/num_heads", file)?;
    let n_heads = heads_t
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    let n_heads = match n_heads.as_slice() {
        [h] if *h > 0 && d_model % (*h as usize) == 0 => *h as usize,
        other => return Err(model_err(file, format!("bad encoder/num_heads {other:?}"))),
    };
    let n_layers = (0..)
        .take_while(|i| {
            m.variables
                .contains_key(&format!("encoder/layer_{i}/ffn/linear_0/weight"))
        })
        .count();
    if n_layers == 0 {
        return Err(model_err(
            file,
            "no encoder layers (encoder/layer_0/... missing)",
        ));
    }
    let n_ctx = m
        .get("encoder/position_encodings/encodings", file)?
        .dim(0)?;
    let dims = WhisperDims {
        n_mels,
        d_model,
        n_layers,
        n_heads,
        n_ctx,
    };

    let mut t = HashMap::new();
    let get = |n: &str| m.get(n, file).cloned();
    for c in ["conv1", "conv2"] {
        for p in ["weight", "bias"] {
            t.insert(
                format!("model.encoder.{c}.{p}"),
                get(&format!("encoder/{c}/{p}"))?,
            );
        }
    }
    t.insert(
        "model.encoder.layer_norm.weight".into(),
        get("encoder/layer_norm/gamma")?,
    );
    t.insert(
        "model.encoder.layer_norm.bias".into(),
        get("encoder/layer_norm/beta")?,
    );
    for i in 0..n_layers {
        let src = format!("encoder/layer_{i}");
        let dst = format!("model.encoder.layers.{i}");
        // CTranslate2 fuses q, k and v into one (3d, d) projection; candle wants them apart.
        let qkv_w = get(&format!("{src}/self_attention/linear_0/weight"))?;
        let qkv_b = get(&format!("{src}/self_attention/linear_0/bias"))?;
        if qkv_w.dims() != [3 * d_model, d_model] || qkv_b.dims() != [3 * d_model] {
            return Err(model_err(
                file,
                format!(
                    "{src}/self_attention/linear_0 has shape {:?}, expected fused qkv",
                    qkv_w.dims()
                ),
            ));
        }
        for (j, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            let w = qkv_w.narrow(0, j * d_model, d_model)?;
            t.insert(format!("{dst}.self_attn.{name}.weight"), w);
            // Whisper's key projection has no bias (the converter fills zeros): a key bias
            // adds the same q.b to every score of a query row, which softmax cancels anyway.
            if *name != "k_proj" {
                t.insert(
                    format!("{dst}.self_attn.{name}.bias"),
                    qkv_b.narrow(0, j * d_model, d_model)?,
                );
            }
        }
        let pairs = [
            ("self_attention/linear_1", "self_attn.out_proj"),
            ("ffn/linear_0", "fc1"),
            ("ffn/linear_1", "fc2"),
        ];
        for (s, d) in pairs {
            t.insert(
                format!("{dst}.{d}.weight"),
                get(&format!("{src}/{s}/weight"))?,
            );
            t.insert(format!("{dst}.{d}.bias"), get(&format!("{src}/{s}/bias"))?);
        }
        for (s, d) in [
            ("self_attention/layer_norm", "self_attn_layer_norm"),
            ("ffn/layer_norm", "final_layer_norm"),
        ] {
            t.insert(
                format!("{dst}.{d}.weight"),
                get(&format!("{src}/{s}/gamma"))?,
            );
            t.insert(format!("{dst}.{d}.bias"), get(&format!("{src}/{s}/beta"))?);
        }
    }
    // candle recomputes Whisper's sinusoidal positions; check the file agrees, so a model with
    // other positions is refused instead of silently encoded wrong.
    let stored = m.get("encoder/position_encodings/encodings", file)?;
    check_positions(stored, &dims, file)?;
    Ok((t, dims))
}

/// Whisper's sinusoidal position of channel `i` at position `p` (what candle recomputes and
/// what CTranslate2 stores): `sin` on the first half of the channels, `cos` on the second.
fn sinusoid(p: usize, i: usize, d_model: usize) -> f64 {
    let half = d_model / 2;
    let inc = (10000f64).ln() / (half as f64 - 1.0);
    let ts = (-(inc * (i % half) as f64)).exp() * p as f64;
    if i < half {
        ts.sin()
    } else {
        ts.cos()
    }
}

impl WhisperDims {
    /// The encoder's position table `(n_ctx, d_model)`, f32.
    pub fn positions(&self) -> Result<Tensor> {
        let d = self.d_model;
        let v: Vec<f32> = (0..self.n_ctx * d)
            .map(|k| sinusoid(k / d, k % d, d) as f32)
            .collect();
        Ok(Tensor::from_vec(v, (self.n_ctx, d), &Device::Cpu)?)
    }
}

fn check_positions(stored: &Tensor, dims: &WhisperDims, file: &Path) -> Result<()> {
    let s = stored.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut worst = 0f64;
    for (p, row) in s.iter().enumerate().step_by(97) {
        for (i, &v) in row.iter().enumerate() {
            worst = worst.max((sinusoid(p, i, dims.d_model) - v as f64).abs());
        }
    }
    // fp16 storage rounds to ~5e-4; a different encoding differs by O(1).
    if worst > 1e-2 {
        return Err(model_err(
            file,
            format!("encoder position encodings are not Whisper's sinusoids (max diff {worst:.3})"),
        ));
    }
    Ok(())
}

/// Reads an HF Whisper `model.safetensors` (encoder tensors only) and its `config.json`.
fn load_hf(
    file: &Path,
    config: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, WhisperDims)> {
    let text = std::fs::read_to_string(config).map_err(|source| Error::Io {
        path: config.to_path_buf(),
        source,
    })?;
    let cfg: cw::Config = serde_json::from_str(&text)
        .map_err(|e| model_err(config, format!("not a Whisper config.json: {e}")))?;
    let all = candle_core::safetensors::load(file, device)
        .map_err(|e| model_err(file, format!("cannot read safetensors: {e}")))?;
    let mut t = HashMap::new();
    for (k, v) in all {
        // Some exports drop the leading `model.`.
        let k = if k.starts_with("encoder.") {
            format!("model.{k}")
        } else {
            k
        };
        if k.starts_with("model.encoder.") {
            t.insert(k, v.to_dtype(DType::F32)?);
        }
    }
    let dims = WhisperDims {
        n_mels: cfg.num_mel_bins,
        d_model: cfg.d_model,
        n_layers: cfg.encoder_layers,
        n_heads: cfg.encoder_attention_heads,
        n_ctx: cfg.max_source_positions,
    };
    if dims.n_heads == 0 || !dims.d_model.is_multiple_of(dims.n_heads) {
        return Err(model_err(
            config,
            format!(
                "d_model {} not divisible by heads {}",
                dims.d_model, dims.n_heads
            ),
        ));
    }
    Ok((t, dims))
}

/// Builds candle's `AudioEncoder` from HF-named tensors. candle only exposes `Whisper::load`,
/// which also builds a decoder: we hand it a one-token, zero-layer decoder of placeholder
/// tensors (never run, dropped right after) so no decoder weights are needed.
fn build_encoder(
    mut t: HashMap<String, Tensor>,
    dims: WhisperDims,
    device: &Device,
    file: &Path,
) -> Result<AudioEncoder> {
    let d = dims.d_model;
    t.insert(
        "model.decoder.embed_tokens.weight".into(),
        Tensor::zeros((1, d), DType::F32, device)?,
    );
    t.insert(
        "model.decoder.embed_positions.weight".into(),
        Tensor::zeros((1, d), DType::F32, device)?,
    );
    t.insert(
        "model.decoder.layer_norm.weight".into(),
        Tensor::ones(d, DType::F32, device)?,
    );
    t.insert(
        "model.decoder.layer_norm.bias".into(),
        Tensor::zeros(d, DType::F32, device)?,
    );
    let cfg = cw::Config {
        num_mel_bins: dims.n_mels,
        max_source_positions: dims.n_ctx,
        d_model: d,
        encoder_attention_heads: dims.n_heads,
        encoder_layers: dims.n_layers,
        vocab_size: 1,
        max_target_positions: 1,
        decoder_attention_heads: dims.n_heads,
        decoder_layers: 0,
        suppress_tokens: vec![],
    };
    let vb = VarBuilder::from_tensors(t, DType::F32, device);
    let whisper = cw::model::Whisper::load(&vb, cfg)
        .map_err(|e| model_err(file, format!("weights do not fit a Whisper encoder: {e}")))?;
    Ok(whisper.encoder)
}

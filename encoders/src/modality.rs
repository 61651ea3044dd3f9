//! The plug-in API: a [`Modality`] says how to read one kind of input from a file, and builds
//! the frozen [`Encoder`] that turns a batch of such inputs into features. Everything above it
//! (feature cache, training, splicing, generation, eval) only sees the type-erased
//! [`AnyModality`] / [`FileEncoder`] pair, so a new modality is one `impl Modality` and one
//! [`ModalityRegistry::register`](crate::ModalityRegistry::register) call; nothing else names it.
//!
//! ```text
//! path or bytes --Modality::load / load_bytes--> Item --Encoder::preprocess (batch)--> Batch --Encoder::encode--> (n_i, d) per item
//! ```

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// What an encoder is built with: where short model names resolve, the device, and the
/// recipe's free-form `[encoder.options]` table (each modality reads its own fields).
#[derive(Debug, Clone)]
pub struct EncoderContext {
    /// The anymal cache folder (`$ANYMAL_CACHE` or `~/.cache/anymal`); short names such as
    /// `whisper-tiny-en` resolve below its `models/`.
    pub cache_dir: PathBuf,
    pub device: Device,
    /// `[encoder.options]` of the recipe as JSON (`{}` when absent).
    pub options: serde_json::Value,
}

impl EncoderContext {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            device: Device::Cpu,
            options: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn with_options(mut self, options: serde_json::Value) -> Self {
        self.options = options;
        self
    }

    /// The options as a modality's own (serde, `deny_unknown_fields`) struct; `{}` gives its
    /// defaults. The error names the modality and the offending field.
    pub fn parse_options<T: serde::de::DeserializeOwned>(&self, modality: &str) -> Result<T> {
        let v = match &self.options {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            v => v.clone(),
        };
        serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            let field = (path != ".").then_some(path.as_str());
            Error::bad_option(modality, field, e.inner().to_string())
        })
    }
}

/// A preprocessed batch: the encoder's input tensor and, per item, how much of it is real
/// (samples, frames, rows); padding beyond that is the encoder's business.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input: Tensor,
    pub lengths: Vec<usize>,
}

impl Batch {
    /// For a padded `(b, n_max, ...)` input: item `i`'s first `lengths[i]` rows, the padding
    /// dropped (an identity encoder's `encode`).
    pub fn unpadded_items(&self) -> Result<Vec<Tensor>> {
        self.lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| Ok(self.input.get(i)?.narrow(0, 0, n)?))
            .collect()
    }
}

/// One kind of input (audio, image, video, IMU, or your own). `Clone` because a configured
/// copy travels with its encoder (modalities are small option structs).
pub trait Modality: Clone + Send + Sync + 'static {
    /// A decoded, validated item: samples, an image, frames, a multichannel series...
    type Item: Send + 'static;

    /// Lower-case name; also the manifest key (`{"audio": "a.wav", ...}`) and the recipe's
    /// `modality`.
    fn name(&self) -> &str;

    /// The prompt placeholder the item's tokens replace.
    fn placeholder(&self) -> String {
        format!("<{}>", self.name())
    }

    /// The extension a file of this modality gets when it arrives inline without one (the
    /// server's `input_<name>` content parts); `None`: the sender must name the format.
    fn default_extension(&self) -> Option<&str> {
        None
    }

    /// This modality set up with the recipe's `[encoder.options]` (`ctx.options`): image size,
    /// frames per video, IMU rate... Parse them into your own `deny_unknown_fields` struct with
    /// [`EncoderContext::parse_options`] so a misspelt key is an error. The default accepts
    /// no options.
    fn configure(&self, ctx: &EncoderContext) -> Result<Self> {
        let empty = match &ctx.options {
            serde_json::Value::Null => true,
            serde_json::Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !empty {
            return Err(Error::bad_option(
                self.name(),
                None,
                format!("the modality takes no options (got {})", ctx.options),
            ));
        }
        Ok(self.clone())
    }

    /// Reads and validates one file. The error names the file and what is wrong with it.
    fn load(&self, path: &Path) -> Result<Self::Item>;

    /// [`load`](Self::load) on a file's bytes already in memory (a Parquet row's embedded
    /// media); `name` only names them in errors. The default refuses: a modality whose decoder
    /// needs a file on disk (video through FFmpeg) says so.
    fn load_bytes(&self, bytes: &[u8], name: &Path) -> Result<Self::Item> {
        let _ = bytes;
        Err(Error::Unsupported {
            what: format!(
                "{}: the {} modality reads files only, not media embedded in a data file",
                name.display(),
                self.name()
            ),
        })
    }

    /// Builds the frozen encoder named by `reference` (a short name resolved in
    /// `ctx.cache_dir`, or a path). Called on the [`configure`](Self::configure)d modality.
    fn build_encoder(
        &self,
        reference: &str,
        ctx: &EncoderContext,
    ) -> Result<Box<dyn Encoder<Self::Item>>>;
}

/// A frozen encoder for a modality's items.
pub trait Encoder<I>: Send + Sync {
    /// Stable id of architecture + weights + preprocessing: the feature-cache key, so two
    /// encoders that could give different features must never share it.
    fn id(&self) -> &str;
    /// Width `d` of the features.
    fn hidden_size(&self) -> usize;
    /// Items -> the encoder's input (resample, resize, normalize, pad, stack).
    fn preprocess(&self, items: &[I]) -> Result<Batch>;
    /// The batch -> one `(n_i, d)` f32 feature tensor per item, in order.
    fn encode(&self, batch: &Batch) -> Result<Vec<Tensor>>;
}

/// One input of an encoder: a file, or a file's bytes already in memory (a row of a Parquet
/// shard), with the name errors give it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MediaInput<'a> {
    File(&'a Path),
    Bytes { name: &'a Path, bytes: &'a [u8] },
}

impl<'a> MediaInput<'a> {
    /// The file, or the name the bytes go by (`train-00000.parquet#row 12`).
    pub fn name(&self) -> &'a Path {
        match *self {
            MediaInput::File(p) => p,
            MediaInput::Bytes { name, .. } => name,
        }
    }
}

/// Object-safe view of a modality, what the registry holds and the toolkit calls.
pub trait AnyModality: Send + Sync {
    fn name(&self) -> &str;
    fn placeholder(&self) -> String;
    fn default_extension(&self) -> Option<&str>;
    /// The frozen encoder behind a files-in, features-out interface.
    fn file_encoder(&self, reference: &str, ctx: &EncoderContext) -> Result<Box<dyn FileEncoder>>;
}

/// Inputs in, one `(n_i, d)` result per input out: a bad input is an error for that input only.
pub trait FileEncoder: Send + Sync {
    fn id(&self) -> &str;
    fn hidden_size(&self) -> usize;
    fn encode_inputs(&self, inputs: &[MediaInput]) -> Vec<Result<Tensor>>;
    /// [`encode_inputs`](Self::encode_inputs) on files.
    fn encode_files(&self, paths: &[&Path]) -> Vec<Result<Tensor>> {
        let inputs: Vec<MediaInput> = paths.iter().map(|p| MediaInput::File(p)).collect();
        self.encode_inputs(&inputs)
    }
}

impl<M: Modality> AnyModality for M {
    fn name(&self) -> &str {
        Modality::name(self)
    }

    fn placeholder(&self) -> String {
        Modality::placeholder(self)
    }

    fn default_extension(&self) -> Option<&str> {
        Modality::default_extension(self)
    }

    fn file_encoder(&self, reference: &str, ctx: &EncoderContext) -> Result<Box<dyn FileEncoder>> {
        let modality = self.configure(ctx)?;
        let encoder = modality.build_encoder(reference, ctx)?;
        Ok(Box::new(ModalityFileEncoder { modality, encoder }))
    }
}

struct ModalityFileEncoder<M: Modality> {
    modality: M,
    encoder: Box<dyn Encoder<M::Item>>,
}

impl<M: Modality> ModalityFileEncoder<M> {
    fn encode_items(&self, items: &[M::Item]) -> Result<Vec<Tensor>> {
        let batch = self.encoder.preprocess(items)?;
        let out = self.encoder.encode(&batch)?;
        if out.len() != items.len() {
            return Err(Error::ShapeMismatch {
                what: format!("outputs of encoder {}", self.encoder.id()),
                expected: format!("{} (one per item)", items.len()),
                got: out.len().to_string(),
            });
        }
        Ok(out)
    }
}

impl<M: Modality> FileEncoder for ModalityFileEncoder<M> {
    fn id(&self) -> &str {
        self.encoder.id()
    }

    fn hidden_size(&self) -> usize {
        self.encoder.hidden_size()
    }

    fn encode_inputs(&self, inputs: &[MediaInput]) -> Vec<Result<Tensor>> {
        let loaded: Vec<Result<M::Item>> = inputs
            .iter()
            .map(|m| match *m {
                MediaInput::File(p) => self.modality.load(p),
                MediaInput::Bytes { name, bytes } => self.modality.load_bytes(bytes, name),
            })
            .collect();
        let mut out: Vec<Option<Result<Tensor>>> = Vec::with_capacity(inputs.len());
        let mut good_idx = Vec::new();
        let mut good = Vec::new();
        for (i, r) in loaded.into_iter().enumerate() {
            match r {
                Ok(item) => {
                    out.push(None);
                    good_idx.push(i);
                    good.push(item);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        if good.is_empty() {
            return out.into_iter().flatten().collect();
        }
        match self.encode_items(&good) {
            Ok(features) => {
                for (i, f) in good_idx.into_iter().zip(features) {
                    out[i] = Some(Ok(f));
                }
            }
            // One item the loader accepted may still break the batch (a shape the encoder
            // rejects): encode them one by one so only that item fails, named by its file.
            Err(_) => {
                for (i, item) in good_idx.into_iter().zip(good) {
                    let r = self
                        .encode_items(std::slice::from_ref(&item))
                        .and_then(|mut v| {
                            v.pop()
                                .ok_or_else(|| Error::Internal("encoder returned no output".into()))
                        })
                        .map_err(|e| Error::InFile {
                            path: inputs[i].name().to_path_buf(),
                            source: Box::new(e),
                        });
                    out[i] = Some(r);
                }
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::Internal("item not encoded".into()))))
            .collect()
    }
}

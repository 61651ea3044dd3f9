//! Adding a modality from outside the toolkit: "precomputed embeddings".
//!
//! Many users already have features from an encoder anymal does not ship (a model of their
//! own, a lab's feature extractor, a Python pipeline). This file teaches anymal to read them
//! straight from disk -- one `(n, d)` float matrix per item, as `.npy` or `.safetensors` --
//! and gets the whole `anymal` CLI (align, eval, generate) for it:
//!
//! ```sh
//! cargo run --release --example custom_modality -- align --modality embedding --recipe my_recipe.toml
//! ```
//! with a recipe that says `modality = "embedding"`, `encoder.model = "precomputed"`,
//! `[encoder.options] dim = 512`, a prompt with `<embedding>`, and manifests with lines
//! `{"embedding": "feats/0001.npy", "text": "..."}`.
//!
//! The steps (also in the README, "Adding a modality"):
//! 1. a type for the modality (`EmbeddingModality`) that implements `Modality`: its name,
//!    its `[encoder.options]` (`configure`), how to load one item from a file (with an error
//!    that names the file) and which encoder to build,
//! 2. a type for its frozen encoder that implements `Encoder`: an id for the feature cache,
//!    the feature width, how to batch items (`preprocess`) and encode them (`encode`),
//! 3. register it next to the built-in ones and hand the registry to the CLI.

use std::path::Path;
use std::process::ExitCode;

use anymal_encoders::{Batch, Encoder, EncoderContext, Error, Modality, ModalityRegistry, Result};
use candle_core::{DType, Device, Tensor};

/// Options read from the recipe's `[encoder.options]`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingOptions {
    /// Width of every feature file's rows.
    dim: usize,
    /// Name of the tensor inside a `.safetensors` file (default: its only tensor).
    #[serde(default)]
    tensor: Option<String>,
}

/// The modality: files hold `(n, d)` (or `(d,)`, one token) float matrices.
#[derive(Clone, Default)]
struct EmbeddingModality {
    /// Feature width; 0 until configured.
    dim: usize,
    /// Tensor name to take from `.safetensors` files.
    tensor: Option<String>,
}

impl Modality for EmbeddingModality {
    type Item = Tensor;

    fn name(&self) -> &str {
        "embedding"
    }

    fn default_extension(&self) -> Option<&str> {
        Some("npy")
    }

    fn configure(&self, ctx: &EncoderContext) -> Result<Self> {
        let opts: EmbeddingOptions = ctx.parse_options("embedding")?;
        if opts.dim == 0 {
            return Err(Error::BadOption {
                modality: "embedding".into(),
                field: Some("dim".into()),
                what: "must be >= 1".into(),
            });
        }
        Ok(Self {
            dim: opts.dim,
            tensor: opts.tensor,
        })
    }

    fn load(&self, path: &Path) -> Result<Tensor> {
        let bad = |what: String| Error::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let t = match ext.as_str() {
            "npy" => {
                Tensor::read_npy(path).map_err(|e| bad(format!("not a readable .npy: {e}")))?
            }
            "safetensors" => {
                let mut all = candle_core::safetensors::load(path, &Device::Cpu)
                    .map_err(|e| bad(format!("not a readable .safetensors: {e}")))?;
                match &self.tensor {
                    Some(name) => all
                        .remove(name)
                        .ok_or_else(|| bad(format!("holds no tensor '{name}'")))?,
                    None if all.len() == 1 => {
                        all.into_values().next().unwrap_or_else(|| unreachable!())
                    }
                    None => {
                        return Err(bad(format!(
                            "holds {} tensors; name one with [encoder.options] tensor = \"...\"",
                            all.len()
                        )))
                    }
                }
            }
            other => {
                return Err(Error::UnsupportedCodec {
                    path: path.to_path_buf(),
                    what: format!("'.{other}' (expected .npy or .safetensors)"),
                })
            }
        };
        let t = match t.rank() {
            1 => t.unsqueeze(0).map_err(Error::from)?,
            2 => t,
            r => return Err(bad(format!("has rank {r}; expected (n, d) or (d,)"))),
        };
        if t.dim(0).map_err(Error::from)? == 0 {
            return Err(Error::Empty {
                path: path.to_path_buf(),
            });
        }
        let t = t.to_dtype(DType::F32).map_err(Error::from)?;
        // A NaN would poison every gradient of the step it lands in.
        let finite = t
            .flatten_all()
            .and_then(|f| f.to_vec1::<f32>())
            .map_err(Error::from)?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(bad("holds NaN or infinite values".into()));
        }
        Ok(t)
    }

    fn build_encoder(
        &self,
        reference: &str,
        _ctx: &EncoderContext,
    ) -> Result<Box<dyn Encoder<Tensor>>> {
        if reference != "precomputed" {
            return Err(Error::UnknownEncoder {
                modality: "embedding".into(),
                reference: reference.into(),
                what: "this modality has one encoder, 'precomputed'".into(),
            });
        }
        Ok(Box::new(Precomputed {
            id: format!("precomputed-{}", self.dim),
            dim: self.dim,
        }))
    }
}

/// The "encoder" is the identity: the features are already on disk. It still checks widths,
/// so a file from another extractor is an error for that file, not a shape panic later.
struct Precomputed {
    id: String,
    dim: usize,
}

impl Encoder<Tensor> for Precomputed {
    fn id(&self) -> &str {
        &self.id
    }

    fn hidden_size(&self) -> usize {
        self.dim
    }

    /// Items padded to the longest: `(b, n_max, d)`; lengths are the rows of each.
    fn preprocess(&self, items: &[Tensor]) -> Result<Batch> {
        let mut lengths = Vec::with_capacity(items.len());
        for t in items {
            let (n, d) = t.dims2()?;
            if d != self.dim {
                return Err(Error::ShapeMismatch {
                    what: "feature width ([encoder.options] dim)".into(),
                    expected: self.dim.to_string(),
                    got: format!("width {d}"),
                });
            }
            lengths.push(n);
        }
        let n_max = lengths.iter().copied().max().unwrap_or(0);
        let padded = items
            .iter()
            .zip(&lengths)
            .map(|(t, &n)| t.pad_with_zeros(0, 0, n_max - n))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Batch {
            input: Tensor::stack(&padded, 0)?,
            lengths,
        })
    }

    fn encode(&self, batch: &Batch) -> Result<Vec<Tensor>> {
        batch.unpadded_items()
    }
}

fn main() -> ExitCode {
    let mut registry = ModalityRegistry::with_builtins();
    if let Err(e) = registry.register(EmbeddingModality::default()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    anymal::cli::main_with(registry)
}

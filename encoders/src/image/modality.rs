//! Images as a [`Modality`]: files decode with [`load_image`]; a frozen [`ImageEncoder`]
//! (MobileNetV2, EfficientNet-Lite0, CLIP, SigLIP) turns them into a grid of tokens.
//!
//! `[encoder.options]` (all optional): `size`, `resize`, `resize_to` override the encoder's
//! own preprocessing (e.g. `resize = "pad_to_square"` to keep a whole non-square photo);
//! `grid` average-pools a square token grid to `grid x grid` tokens (fewer, coarser tokens:
//! a smaller feature cache and a cheaper projector).

use std::path::{Path, PathBuf};

use candle_core::{Tensor, D};
use image::DynamicImage;
use serde::{Deserialize, Serialize};

use super::{
    decode_bytes, load_image, load_image_encoder, preprocess, ImageEncoder, ImagePreprocessConfig,
    ResizeMode,
};
use crate::modality::{Batch, Encoder, EncoderContext, Modality};
use crate::{Error, Result};

/// Encoder settings a recipe may change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageOptions {
    /// Side of the square the encoder sees (default: the encoder's own, 224 for the CNNs).
    #[serde(default)]
    pub size: Option<usize>,
    /// How a non-square image is fitted to the square (default: the encoder's own).
    #[serde(default)]
    pub resize: Option<ResizeMode>,
    /// Shorter side before a center crop (torchvision's 256 for 224).
    #[serde(default)]
    pub resize_to: Option<usize>,
    /// Average-pool a square grid of tokens to `grid x grid`.
    #[serde(default)]
    pub grid: Option<usize>,
}

/// The built-in image modality (`<image>`, manifest key `image`).
#[derive(Debug, Clone, Default)]
pub struct ImageModality {
    options: ImageOptions,
}

impl Modality for ImageModality {
    type Item = DynamicImage;

    fn name(&self) -> &str {
        "image"
    }

    fn default_extension(&self) -> Option<&str> {
        Some("png")
    }

    fn configure(&self, ctx: &EncoderContext) -> Result<Self> {
        Ok(Self {
            options: ctx.parse_options("image")?,
        })
    }

    fn load(&self, path: &Path) -> Result<DynamicImage> {
        load_image(path)
    }

    fn load_bytes(&self, bytes: &[u8], name: &Path) -> Result<DynamicImage> {
        decode_bytes(bytes, name)
    }

    fn build_encoder(
        &self,
        reference: &str,
        ctx: &EncoderContext,
    ) -> Result<Box<dyn Encoder<DynamicImage>>> {
        Ok(Box::new(FrozenImageEncoder::build(
            self.name(),
            reference,
            &self.options,
            ctx,
        )?))
    }
}

/// Short names of the image encoders the fetch script provides, and their files.
const KNOWN: [(&str, &str, &str); 2] = [
    ("mobilenet_v2", "mobilenet_v2-b0353104.pth", "mobilenet-v2"),
    (
        "efficientnet_lite0",
        "efficientnet-lite0-57934424.pth",
        "efficientnet-lite0",
    ),
];

/// A short name (`mobilenet_v2`, `efficientnet_lite0`) in `cache/models`, or a path to a
/// `.pth` file or a Hugging Face CLIP/SigLIP folder.
pub fn resolve_image_encoder(reference: &str, cache_dir: &Path) -> Result<PathBuf> {
    let key = reference.replace('-', "_");
    if let Some((_, file, target)) = KNOWN.iter().find(|(n, _, _)| *n == key) {
        let path = cache_dir.join("models").join(file);
        if !path.is_file() {
            return Err(Error::MissingAsset {
                path,
                fetch: format!("scripts/fetch-assets.sh {target}"),
            });
        }
        return Ok(path);
    }
    let path = PathBuf::from(reference);
    if path.exists() {
        return Ok(path);
    }
    let names: Vec<&str> = KNOWN.iter().map(|(n, _, _)| *n).collect();
    Err(Error::UnknownEncoder {
        modality: "image".into(),
        reference: reference.to_string(),
        what: format!(
            "neither a file/folder nor a known name ({})",
            names.join(", ")
        ),
    })
}

/// A frozen image encoder with the preprocessing and token pooling a recipe chose; shared by
/// the image and video modalities.
pub struct FrozenImageEncoder {
    inner: Box<dyn ImageEncoder>,
    pre: ImagePreprocessConfig,
    grid: Option<usize>,
    id: String,
}

impl FrozenImageEncoder {
    /// The encoder `reference` names, set up with `options`; errors about an option name it as
    /// one of `modality`'s (`image`, or `video` for the per-frame encoder).
    pub fn build(
        modality: &str,
        reference: &str,
        options: &ImageOptions,
        ctx: &EncoderContext,
    ) -> Result<Self> {
        let path = resolve_image_encoder(reference, &ctx.cache_dir)?;
        let inner = load_image_encoder(&path, &ctx.device)?;
        let mut pre = inner.preprocess_config().clone();
        if let Some(s) = options.size {
            pre.size = s;
            // A crop size given without its pre-crop size: resize straight to it.
            if options.resize_to.is_none() {
                pre.resize_to = None;
            }
        }
        if let Some(r) = options.resize {
            pre.resize = r;
        }
        if let Some(r) = options.resize_to {
            pre.resize_to = Some(r);
        }
        if let Some((field, what)) = pre.problem() {
            return Err(Error::bad_option(modality, Some(field), what));
        }
        if options.grid == Some(0) {
            return Err(Error::bad_option(modality, Some("grid"), "must be >= 1"));
        }
        // The features depend on the weights, the preprocessing and the pooling.
        let json = serde_json::to_string(&(&pre, options.grid))
            .map_err(|e| Error::Internal(format!("image options: {e}")))?;
        let hex = &anymal_util::sha256::hex(json.as_bytes())[..12];
        Ok(Self {
            id: format!("{}-{hex}", inner.id()),
            inner,
            pre,
            grid: options.grid,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }

    /// `(b, 3, size, size)` normalized pixels.
    pub fn pixels(&self, images: &[DynamicImage]) -> Result<Tensor> {
        preprocess(images, &self.pre)
    }

    /// `(b, 3, h, w)` -> `(b, n, d)` tokens, grid-pooled when configured.
    pub fn tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        let t = self.inner.encode(pixels)?;
        match self.grid {
            None => Ok(t),
            Some(g) => pool_grid(&t, g),
        }
    }
}

impl Encoder<DynamicImage> for FrozenImageEncoder {
    fn id(&self) -> &str {
        FrozenImageEncoder::id(self)
    }

    fn hidden_size(&self) -> usize {
        FrozenImageEncoder::hidden_size(self)
    }

    fn preprocess(&self, items: &[DynamicImage]) -> Result<Batch> {
        let input = self.pixels(items)?;
        Ok(Batch {
            input,
            lengths: vec![1; items.len()],
        })
    }

    fn encode(&self, batch: &Batch) -> Result<Vec<Tensor>> {
        let t = self.tokens(&batch.input)?;
        (0..t.dim(0)?).map(|i| Ok(t.get(i)?)).collect()
    }
}

/// Average-pools `(b, n, d)` tokens laid out as a square grid (a ViT's class token first is
/// dropped) to `(b, g*g, d)`, each output cell the mean of the input cells it covers
/// (adaptive pooling: cell `i` spans `floor(i*s/g)..ceil((i+1)*s/g)`).
pub fn pool_grid(tokens: &Tensor, g: usize) -> Result<Tensor> {
    let (b, n, d) = tokens.dims3()?;
    let side_of = |m: usize| {
        let s = (m as f64).sqrt().round() as usize;
        (s * s == m).then_some(s)
    };
    let (t, s) = match (side_of(n), n.checked_sub(1).and_then(side_of)) {
        (Some(s), _) => (tokens.clone(), s),
        (None, Some(s)) => (tokens.narrow(1, 1, n - 1)?, s),
        _ => {
            return Err(Error::ShapeMismatch {
                what: "tokens for grid pooling".into(),
                expected: "a square grid (after a class token, if any)".into(),
                got: n.to_string(),
            })
        }
    };
    if g >= s {
        return Ok(t);
    }
    let grid = t.reshape((b, s, s, d))?;
    let mut cells = Vec::with_capacity(g * g);
    for i in 0..g {
        let (r0, r1) = (i * s / g, ((i + 1) * s).div_ceil(g));
        for j in 0..g {
            let (c0, c1) = (j * s / g, ((j + 1) * s).div_ceil(g));
            let cell = grid
                .narrow(1, r0, r1 - r0)?
                .narrow(2, c0, c1 - c0)?
                .reshape((b, (r1 - r0) * (c1 - c0), d))?
                .mean(D::Minus2)?;
            cells.push(cell);
        }
    }
    Ok(Tensor::stack(&cells, 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pooling_a_grid_averages_its_cells() -> Result<()> {
        // 4x4 grid, value = row*4 + col, d = 1; pooled to 2x2.
        let v: Vec<f32> = (0..16).map(|x| x as f32).collect();
        let t = Tensor::from_vec(v, (1, 16, 1), &Device::Cpu)?;
        let p = pool_grid(&t, 2)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(p, vec![2.5, 4.5, 10.5, 12.5]);
        // A class token in front is dropped; 3x3 to 2x2 overlaps the middle row/column.
        let v: Vec<f32> = std::iter::once(100.0)
            .chain((0..9).map(|x| x as f32))
            .collect();
        let t = Tensor::from_vec(v, (1, 10, 1), &Device::Cpu)?;
        let p = pool_grid(&t, 2)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(p, vec![2.0, 3.0, 5.0, 6.0]);
        assert!(pool_grid(
            &Tensor::zeros((1, 7, 1), candle_core::DType::F32, &Device::Cpu)?,
            2
        )
        .is_err());
        Ok(())
    }
}

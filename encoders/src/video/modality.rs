//! Video as a [`Modality`]: a clip decodes to frames sampled over its duration; each frame goes
//! through a frozen image encoder (its token grid pooled to `grid x grid`), and the frames'
//! tokens, in time order, are the clip's features `(frames * tokens_per_frame, d)`. The
//! projector -- a Perceiver resampler with position embeddings, as in AnyMAL/Flamingo --
//! reduces them to `k` LLM tokens.
//!
//! `[encoder.options]`: `sampling` (default `{kind = "uniform", frames = 8}`), `max_side`
//! (frames are downscaled on decode, default 448), `grid` (default 2), and the image
//! options `size`, `resize`, `resize_to`.

use std::path::Path;

use anymal_util::rng::fnv1a;
use candle_core::Tensor;
use image::DynamicImage;
use serde::{Deserialize, Serialize};

use super::{decode_frames_with, DecodeOptions, FrameSampling};
use crate::image::{FrozenImageEncoder, ImageOptions, ResizeMode};
use crate::modality::{Batch, Encoder, EncoderContext, Modality};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoOptions {
    #[serde(default = "default_sampling")]
    pub sampling: FrameSampling,
    /// Longer side of decoded frames, at most (memory; the encoder resizes anyway).
    #[serde(default = "default_max_side")]
    pub max_side: u32,
    /// Tokens per frame: the image encoder's grid pooled to `grid x grid`.
    #[serde(default = "default_grid")]
    pub grid: usize,
    // The per-frame image encoder's settings ([`Self::image_options`]), repeated here rather
    // than a flattened `ImageOptions`: serde cannot flatten into a struct that denies unknown
    // fields, and a misspelt key must stay an error.
    /// As [`ImageOptions::size`].
    #[serde(default)]
    pub size: Option<usize>,
    /// As [`ImageOptions::resize`].
    #[serde(default)]
    pub resize: Option<ResizeMode>,
    /// As [`ImageOptions::resize_to`].
    #[serde(default)]
    pub resize_to: Option<usize>,
}

fn default_sampling() -> FrameSampling {
    FrameSampling::Uniform { frames: 8 }
}
fn default_max_side() -> u32 {
    448
}
fn default_grid() -> usize {
    2
}

impl VideoOptions {
    /// What the per-frame image encoder is built with.
    pub fn image_options(&self) -> ImageOptions {
        ImageOptions {
            size: self.size,
            resize: self.resize,
            resize_to: self.resize_to,
            grid: Some(self.grid),
        }
    }
}

impl Default for VideoOptions {
    fn default() -> Self {
        Self {
            sampling: default_sampling(),
            max_side: default_max_side(),
            grid: default_grid(),
            size: None,
            resize: None,
            resize_to: None,
        }
    }
}

/// The built-in video modality (`<video>`, manifest key `video`).
#[derive(Debug, Clone, Default)]
pub struct VideoModality {
    options: VideoOptions,
}

/// A decoded clip: its sampled frames in time order.
#[derive(Debug, Clone)]
pub struct VideoFrames {
    pub frames: Vec<DynamicImage>,
}

impl Modality for VideoModality {
    type Item = VideoFrames;

    fn name(&self) -> &str {
        "video"
    }

    fn default_extension(&self) -> Option<&str> {
        Some("mp4")
    }

    fn configure(&self, ctx: &EncoderContext) -> Result<Self> {
        let name = self.name();
        let options: VideoOptions = ctx.parse_options(name)?;
        if let Some(what) = options.sampling.problem() {
            return Err(Error::bad_option(name, Some("sampling"), what));
        }
        if options.max_side == 0 {
            return Err(Error::bad_option(name, Some("max_side"), "must be >= 1"));
        }
        if options.grid == 0 {
            return Err(Error::bad_option(name, Some("grid"), "must be >= 1"));
        }
        Ok(Self { options })
    }

    fn load(&self, path: &Path) -> Result<VideoFrames> {
        let opts = DecodeOptions {
            max_side: Some(self.options.max_side),
            ..Default::default()
        };
        let v = decode_frames_with(path, &self.options.sampling, &opts)?;
        Ok(VideoFrames {
            frames: v.frames.into_iter().map(DynamicImage::ImageRgb8).collect(),
        })
    }

    /// `reference` names the per-frame image encoder (`mobilenet_v2`, a `.pth`, a CLIP folder).
    fn build_encoder(
        &self,
        reference: &str,
        ctx: &EncoderContext,
    ) -> Result<Box<dyn Encoder<VideoFrames>>> {
        let o = &self.options;
        let image = FrozenImageEncoder::build(self.name(), reference, &o.image_options(), ctx)?;
        let sampling = serde_json::to_string(&o.sampling)
            .map_err(|e| Error::Internal(format!("video options: {e}")))?;
        // Frame choice and decode size change the features too.
        let mut tagged = sampling.into_bytes();
        tagged.extend(o.max_side.to_le_bytes());
        let tag = fnv1a(&tagged);
        Ok(Box::new(FrameEncoder {
            id: format!("video-{}-{tag:016x}", image.id()),
            image,
        }))
    }
}

struct FrameEncoder {
    id: String,
    image: FrozenImageEncoder,
}

impl Encoder<VideoFrames> for FrameEncoder {
    fn id(&self) -> &str {
        &self.id
    }

    fn hidden_size(&self) -> usize {
        self.image.hidden_size()
    }

    /// Every clip's frames, clip after clip: `(total_frames, 3, s, s)`; lengths are frames.
    fn preprocess(&self, items: &[VideoFrames]) -> Result<Batch> {
        let frames: Vec<DynamicImage> = items
            .iter()
            .flat_map(|v| v.frames.iter().cloned())
            .collect();
        if frames.is_empty() {
            return Err(Error::EmptyInput {
                what: "a video batch with no frames".into(),
            });
        }
        Ok(Batch {
            input: self.image.pixels(&frames)?,
            lengths: items.iter().map(|v| v.frames.len()).collect(),
        })
    }

    /// Per clip `(frames * tokens_per_frame, d)`, frame after frame.
    fn encode(&self, batch: &Batch) -> Result<Vec<Tensor>> {
        // Frames in chunks: a batch of 8 clips x 8 frames at 224 px is 64 images.
        const CHUNK: usize = 16;
        let n = batch.input.dim(0)?;
        let mut toks = Vec::new();
        let mut start = 0;
        while start < n {
            let len = CHUNK.min(n - start);
            toks.push(self.image.tokens(&batch.input.narrow(0, start, len)?)?);
            start += len;
        }
        let toks = Tensor::cat(&toks, 0)?; // (total_frames, t, d)
        let (_, t, d) = toks.dims3()?;
        let mut out = Vec::with_capacity(batch.lengths.len());
        let mut f0 = 0;
        for &f in &batch.lengths {
            out.push(toks.narrow(0, f0, f)?.reshape((f * t, d))?);
            f0 += f;
        }
        Ok(out)
    }
}

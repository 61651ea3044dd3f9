//! Turning decoded images into the normalized `(b, 3, size, size)` f32 batch an encoder takes.
//!
//! Resampling is done in f32 on the RGB image (alpha already composited onto white, see
//! [`to_rgb_f32`]) with the `image` crate's separable filters, whose support widens with the
//! downscale factor, i.e. they antialias like PIL:
//! - [`ResizeFilter::Bilinear`]: the triangle filter = PIL's `BILINEAR`, which is what
//!   torchvision's `Resize` uses on PIL images (and on tensors with `antialias=True`).
//! - [`ResizeFilter::Bicubic`]: Catmull-Rom (a = -0.5), as PIL's `BICUBIC` that Hugging Face's
//!   CLIP and SigLIP processors use; the result is clamped to `[0, 1]` as PIL's 8-bit output is.
//!
//! Values are scaled to `[0, 1]` (8-bit `/255`, 16-bit `/65535`) and normalized per channel as
//! `(x - mean) / std`.

use image::imageops::{self, FilterType};
use image::{DynamicImage, Rgb32FImage};
use serde::{Deserialize, Serialize};

use candle_core::{Device, Tensor};

use super::decode::to_rgb_f32;
use crate::error::{Error, Result};

/// ImageNet statistics (torchvision's models).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// OpenAI CLIP's statistics.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// How an image of any aspect ratio becomes a `size x size` square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Resize so the shorter side is `resize_to` (default `size`), then cut the central
    /// `size x size` square (torchvision's `Resize(256)` + `CenterCrop(224)`; CLIP's processor).
    /// Loses the ends of the longer side.
    ShortestSideCenterCrop,
    /// Resize so the longer side is `size`, keeping the aspect ratio, and center it on a square
    /// filled with the mean colour (0 after normalization). Keeps the whole picture (LLaVA's
    /// `pad` aspect mode does the same, padding before resizing).
    PadToSquare,
    /// Resize straight to `size x size`, distorting the aspect ratio (SigLIP's processor).
    Stretch,
}

/// The resampling filter; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    #[default]
    Bilinear,
    Bicubic,
}

/// How images are resized, cropped and normalized for one encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePreprocessConfig {
    /// Side of the square the encoder sees, in pixels.
    pub size: usize,
    pub resize: ResizeMode,
    /// For [`ResizeMode::ShortestSideCenterCrop`]: the shorter side's length before the crop
    /// (torchvision's 256 for a 224 crop); `None` means `size`. Ignored by the other modes.
    #[serde(default)]
    pub resize_to: Option<usize>,
    #[serde(default)]
    pub filter: ResizeFilter,
    /// Per-channel mean and standard deviation (RGB) of pixels scaled to `[0, 1]`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImagePreprocessConfig {
    /// torchvision's ImageNet eval transform: shorter side to 256 (bilinear, antialiased),
    /// center crop 224, ImageNet mean/std.
    pub fn imagenet() -> Self {
        Self {
            size: 224,
            resize: ResizeMode::ShortestSideCenterCrop,
            resize_to: Some(256),
            filter: ResizeFilter::Bilinear,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Hugging Face's `CLIPImageProcessor`: shorter side to `size` (bicubic), center crop.
    pub fn clip(size: usize) -> Self {
        Self {
            size,
            resize: ResizeMode::ShortestSideCenterCrop,
            resize_to: None,
            filter: ResizeFilter::Bicubic,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Hugging Face's `SiglipImageProcessor`: straight to `size x size` (bicubic), to `[-1, 1]`.
    pub fn siglip(size: usize) -> Self {
        Self {
            size,
            resize: ResizeMode::Stretch,
            resize_to: None,
            filter: ResizeFilter::Bicubic,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    /// Rejects settings that cannot produce an image (zero size, a crop larger than the resized
    /// image, a zero or non-finite std).
    pub fn validate(&self) -> Result<()> {
        match self.problem() {
            Some((field, what)) => Err(Error::InvalidArgument(format!(
                "image preprocess: {field} {what}"
            ))),
            None => Ok(()),
        }
    }

    /// The first setting [`validate`](Self::validate) rejects, as (field, what is wrong with its
    /// value), so a recipe's options can be reported by field.
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        // Bounds that keep one preprocessed image under ~200 MB: the largest vision towers
        // in use take 1024-1536 px.
        if self.size == 0 || self.size > 4096 {
            return Some(("size", format!("{} (expected 1..=4096)", self.size)));
        }
        if let Some(r) = self.resize_to {
            if r < self.size || r > 8192 {
                return Some((
                    "resize_to",
                    format!("{r} must be at least size {} (and at most 8192)", self.size),
                ));
            }
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Some(("mean", format!("{:?} / std {:?}", self.mean, self.std)));
        }
        None
    }
}

/// Preprocesses a batch: `(b, 3, size, size)` f32 on the CPU, images in order.
pub fn preprocess(images: &[DynamicImage], cfg: &ImagePreprocessConfig) -> Result<Tensor> {
    cfg.validate()?;
    if images.is_empty() {
        return Err(Error::EmptyInput {
            what: "preprocess: no images".into(),
        });
    }
    let s = cfg.size;
    let mut data = Vec::with_capacity(images.len() * 3 * s * s);
    for img in images {
        data.extend(preprocess_one(img, cfg)?);
    }
    Ok(Tensor::from_vec(
        data,
        (images.len(), 3, s, s),
        &Device::Cpu,
    )?)
}

/// One image: `(3 * size * size)` f32, channel-major (CHW).
pub fn preprocess_one(img: &DynamicImage, cfg: &ImagePreprocessConfig) -> Result<Vec<f32>> {
    cfg.validate()?;
    let rgb = to_rgb_f32(img);
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::EmptyInput {
            what: format!("preprocess: a {w}x{h} image"),
        });
    }
    let s = cfg.size;
    let filter = match cfg.filter {
        ResizeFilter::Bilinear => FilterType::Triangle,
        ResizeFilter::Bicubic => FilterType::CatmullRom,
    };
    // (image, x offset, y offset) of the resized picture inside the output square; negative
    // offsets (as positive crop origins) mean cropping, positive mean padding.
    let (resized, crop, pad) = match cfg.resize {
        ResizeMode::ShortestSideCenterCrop => {
            let short = cfg.resize_to.unwrap_or(s);
            // torchvision: the long side is int(short * long / short_in), truncated.
            let (nw, nh) = if w <= h {
                (short, (short as f64 * h as f64 / w as f64) as usize)
            } else {
                ((short as f64 * w as f64 / h as f64) as usize, short)
            };
            let r = resize_for_center_crop(&rgb, (nw.max(s), nh.max(s)), s, filter);
            // torchvision's CenterCrop: round((len - size) / 2), Python's round (ties to even).
            let x0 = ((r.width() as usize - s) as f64 / 2.0).round_ties_even() as usize;
            let y0 = ((r.height() as usize - s) as f64 / 2.0).round_ties_even() as usize;
            (r, (x0, y0), (0, 0))
        }
        ResizeMode::PadToSquare => {
            let scale = s as f64 / w.max(h) as f64;
            let nw = ((w as f64 * scale).round() as usize).clamp(1, s);
            let nh = ((h as f64 * scale).round() as usize).clamp(1, s);
            let r = resize(&rgb, nw, nh, filter);
            (r, (0, 0), ((s - nw) / 2, (s - nh) / 2))
        }
        ResizeMode::Stretch => (resize(&rgb, s, s, filter), (0, 0), (0, 0)),
    };
    let clamp = cfg.filter == ResizeFilter::Bicubic;
    let (rw, rh) = (resized.width() as usize, resized.height() as usize);
    // Padding is 0 after normalization, i.e. the mean colour.
    let mut out = vec![0f32; 3 * s * s];
    let raw = resized.as_raw();
    let (cx, cy) = crop;
    let (px, py) = pad;
    let (vis_w, vis_h) = ((rw - cx).min(s - px), (rh - cy).min(s - py));
    for y in 0..vis_h {
        for x in 0..vis_w {
            let src = ((y + cy) * rw + (x + cx)) * 3;
            let dst = (y + py) * s + (x + px);
            for c in 0..3 {
                let mut v = raw[src + c];
                if clamp {
                    v = v.clamp(0.0, 1.0);
                }
                out[c * s * s + dst] = (v - cfg.mean[c]) / cfg.std[c];
            }
        }
    }
    Ok(out)
}

/// Resized pictures above this many pixels (192 MB as f32 RGB) are not made whole.
const RESIZE_BUDGET_PIXELS: usize = 16 << 20;

/// `img` resized to `full` = (width, height) for a central `s x s` crop. Normally exactly
/// that. An extreme aspect ratio (an 8000 x 1 strip whose short side goes to 256 would become
/// 2 M x 256 pixels, 6 GB) or a huge `resize_to` would build a picture of which only the
/// centre is kept: past [`RESIZE_BUDGET_PIXELS`], only the central part of the source that
/// the crop keeps (with a margin for the filter) is resized, to the same scale within one
/// source pixel. The crop's centre stays where it was.
fn resize_for_center_crop(
    img: &Rgb32FImage,
    full: (usize, usize),
    s: usize,
    filter: FilterType,
) -> Rgb32FImage {
    if full.0 * full.1 <= RESIZE_BUDGET_PIXELS {
        return resize(img, full.0, full.1, filter);
    }
    // Resized pixels kept either side of the crop, so the filter sees what it would have.
    let keep = s + 2 * (8 + s / 8);
    // Along one axis: (first source pixel, source pixels, resized length) of the window.
    let window = |src: usize, resized: usize| {
        if resized <= keep {
            return (0, src, resized);
        }
        let n = ((src as f64 * keep as f64 / resized as f64).ceil() as usize).clamp(1, src);
        let out = ((n as f64 * resized as f64 / src as f64).round() as usize).max(s);
        ((src - n) / 2, n, out)
    };
    let (x0, sw, ow) = window(img.width() as usize, full.0);
    let (y0, sh, oh) = window(img.height() as usize, full.1);
    let part = imageops::crop_imm(img, x0 as u32, y0 as u32, sw as u32, sh as u32).to_image();
    resize(&part, ow, oh, filter)
}

fn resize(img: &Rgb32FImage, w: usize, h: usize, filter: FilterType) -> Rgb32FImage {
    imageops::resize(img, w as u32, h as u32, filter)
}

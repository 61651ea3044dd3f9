//! Decoding an image file with the `image` crate (pure Rust).
//!
//! Handled: JPEG (baseline and progressive; the EXIF orientation is applied), PNG (8/16-bit,
//! gray, gray+alpha, RGB, RGBA, palette), WebP (lossy and lossless), BMP, TIFF (first page),
//! GIF (first frame). The format is detected from the bytes, not the extension, so a PNG named
//! `.jpg` still decodes. Anything else, and broken files, are errors naming the file.

use std::io::Cursor;
use std::path::Path;

use image::error::ImageError;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Rgb32FImage};

use super::tiff_float::{decode_float_tiff, FloatTiffError};

use crate::error::{Error, Result};
use crate::limits::{check_image_pixels, limits};

/// Decodes `path` into an image in its own pixel format (8/16-bit, with or without alpha),
/// upright: the orientation an EXIF block states (JPEG, and PNG/WebP/TIFF that carry one) is
/// applied, as browsers and photo viewers do, so a phone photo stored sideways comes out the way
/// it was taken.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_bytes(&bytes, path)
}

/// [`load_image`] on bytes already in memory; `path` only names the source in errors.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
    let corrupt = |what: String| Error::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    let unsupported = |what: String| Error::UnsupportedImage {
        path: path.to_path_buf(),
        what,
    };
    if bytes.is_empty() {
        return Err(corrupt("the file is empty".into()));
    }
    let max_pixels = limits().max_image_pixels;
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| corrupt(e.to_string()))?;
    // The crate's own allocation cap (512 MB by default) would refuse a 16-bit RGBA image
    // within the pixel bound; let it follow the bound instead (8 bytes a pixel at most).
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(decoder_limits);
    let Some(format) = reader.format() else {
        return Err(unsupported(
            "not a recognised image (expected JPEG, PNG, WebP, BMP, TIFF or GIF)".into(),
        ));
    };
    let classify = |e: ImageError| match e {
        ImageError::Unsupported(u) => unsupported(format!("{format:?}: {u}")),
        ImageError::Limits(l) => unsupported(format!("{format:?}: {l}")),
        other => corrupt(format!("{format:?}: {other}")),
    };
    // The JPEG decoder fills whatever a cut-off download lacks with gray and reports success;
    // a missing end-of-image marker is how such a file is recognised.
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(corrupt(
            "truncated JPEG: the data ends before the end-of-image marker".into(),
        ));
    }
    // The header's size is checked before a single pixel is allocated; `None` when the
    // float-TIFF fallback below must read the file instead.
    let decoded = match reader.into_decoder() {
        Ok(mut decoder) => {
            let (w, h) = decoder.dimensions();
            check_image_pixels(w, h, path)?;
            // A malformed EXIF block should not make an otherwise good picture unreadable:
            // fall back to the stored orientation.
            let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
            DynamicImage::from_decoder(decoder).map(|mut img| {
                img.apply_orientation(orientation);
                img
            })
        }
        Err(e) => Err(e),
    };
    let img = match decoded {
        Ok(img) => img,
        // 64-bit float TIFFs (scientific tools write them) are beyond the `image` crate.
        Err(ImageError::Unsupported(u)) if format == ImageFormat::Tiff => {
            decode_float_tiff(bytes, path).map_err(|why| match why {
                FloatTiffError::TooLarge(e) => e,
                FloatTiffError::Other(why) => {
                    unsupported(format!("Tiff: {u}; the float-TIFF fallback: {why}"))
                }
            })?
        }
        Err(e) => return Err(classify(e)),
    };
    if img.width() == 0 || img.height() == 0 {
        return Err(corrupt(format!(
            "the image is {}x{} pixels",
            img.width(),
            img.height()
        )));
    }
    Ok(img)
}

/// Whether a JPEG's marker structure runs through to its end-of-image marker (EOI, `FF D9`).
/// Segments are skipped by their lengths (so an EXIF thumbnail's own EOI is not mistaken for
/// the image's); inside entropy-coded data `FF` is only followed by `00` (stuffing), `FF`
/// (fill) or `D0..D7` (restart), so any other byte after `FF` is the next marker.
fn jpeg_is_complete(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    loop {
        // Expect a marker, tolerating fill bytes.
        if b.get(i) != Some(&0xFF) {
            return false;
        }
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&m) = b.get(i) else { return false };
        i += 1;
        match m {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
        else {
            return false;
        };
        if len < 2 {
            return false;
        }
        i += len;
        if m == 0xDA {
            // Entropy-coded data: scan to the next real marker.
            loop {
                match (b.get(i), b.get(i + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => i += 2,
                    (Some(0xFF), Some(0xFF)) => i += 1,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => i += 1,
                    (None, _) => return false,
                }
            }
        }
    }
}

/// Converts to RGB in `[0, 1]` as f32, keeping 16-bit precision. Gray is replicated to the
/// three channels. Transparent pixels are composited onto WHITE (`c * a + (1 - a)`): a logo or
/// screenshot with a transparent background is meant to be seen on a page, and dropping the
/// alpha instead would expose whatever colour the transparent pixels happen to store (often
/// black).
pub fn to_rgb_f32(img: &DynamicImage) -> Rgb32FImage {
    if !img.color().has_alpha() {
        return img.to_rgb32f();
    }
    let rgba = img.to_rgba32f();
    let (w, h) = rgba.dimensions();
    let mut out = Rgb32FImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = src.0[3].clamp(0.0, 1.0);
        for c in 0..3 {
            dst.0[c] = src.0[c] * a + (1.0 - a);
        }
    }
    out
}

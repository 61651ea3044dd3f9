//! A fallback for uncompressed floating-point TIFFs, which the `image` crate (0.25) refuses for
//! 64-bit samples ("Unhandled TIFF sample format 3 for 64 bits") and which scientific tools
//! (scikit-image, tifffile) write: 32- or 64-bit IEEE floats, gray or RGB(A), chunky or planar,
//! in strips, either byte order. Only the first page (IFD0) is read. Values are taken to be in
//! `[0, 1]`, the convention of float images in those tools, and clamped into it.

use std::path::Path;

use image::{DynamicImage, ImageBuffer, Rgb};

use crate::limits::check_image_pixels;

/// Why a TIFF was not decoded: over the pixel bound (reported as such), or anything else,
/// which the caller adds to the `image` crate's own complaint.
#[derive(Debug)]
pub(crate) enum FloatTiffError {
    TooLarge(crate::Error),
    Other(String),
}

impl From<String> for FloatTiffError {
    fn from(s: String) -> Self {
        Self::Other(s)
    }
}

impl From<&str> for FloatTiffError {
    fn from(s: &str) -> Self {
        Self::Other(s.into())
    }
}

/// Decodes `bytes` (from `path`) if they are a float TIFF this reader handles; `Err` says why
/// not.
pub(crate) fn decode_float_tiff(bytes: &[u8], path: &Path) -> Result<DynamicImage, FloatTiffError> {
    let r = Reader::new(bytes)?;
    let ifd = r.u32(4)? as usize;
    let n = r.u16(ifd)? as usize;
    let mut tags = Tags::default();
    for i in 0..n {
        let e = ifd + 2 + 12 * i;
        let tag = r.u16(e)?;
        let values = || r.values(e);
        match tag {
            256 => tags.width = first(values()?)?,
            257 => tags.height = first(values()?)?,
            258 => tags.bits = values()?,
            259 => tags.compression = first(values()?)?,
            262 => tags.photometric = first(values()?)?,
            273 => tags.offsets = values()?,
            277 => tags.samples = first(values()?)?,
            279 => tags.counts = values()?,
            284 => tags.planar = first(values()?)?,
            322 => return Err("tiled TIFF".into()),
            339 => tags.format = first(values()?)?,
            _ => {}
        }
    }
    let (Ok(w), Ok(h)) = (u32::try_from(tags.width), u32::try_from(tags.height)) else {
        return Err(FloatTiffError::Other("a size beyond TIFF's 32 bits".into()));
    };
    check_image_pixels(w, h, path).map_err(FloatTiffError::TooLarge)?;
    Ok(tags.decode(&r)?)
}

#[derive(Default)]
struct Tags {
    width: usize,
    height: usize,
    bits: Vec<usize>,
    compression: usize,
    photometric: usize,
    offsets: Vec<usize>,
    samples: usize,
    counts: Vec<usize>,
    planar: usize,
    format: usize,
}

impl Tags {
    fn decode(self, r: &Reader) -> Result<DynamicImage, String> {
        if self.format != 3 {
            return Err(format!("sample format {} is not IEEE float", self.format));
        }
        if self.compression > 1 {
            return Err(format!(
                "compression {} (only uncompressed is read)",
                self.compression
            ));
        }
        let bits = *self.bits.first().ok_or("no BitsPerSample")?;
        if bits != 32 && bits != 64 || self.bits.iter().any(|&b| b != bits) {
            return Err(format!("{:?} bits per sample", self.bits));
        }
        let spp = self.samples.max(1);
        let (w, h) = (self.width, self.height);
        let px = w
            .checked_mul(h)
            .filter(|&p| p > 0)
            .ok_or("zero or huge size")?;

        let planar = self.planar == 2 && spp > 1;
        let bps = bits / 8;
        // Concatenate the strips; planar files store all of plane 0, then plane 1, ...
        let mut data = Vec::with_capacity(px * spp * bps);
        if self.offsets.len() != self.counts.len() || self.offsets.is_empty() {
            return Err("strip offsets and byte counts disagree".into());
        }
        for (&off, &cnt) in self.offsets.iter().zip(&self.counts) {
            data.extend_from_slice(r.slice(off, cnt)?);
        }
        if data.len() < px * spp * bps {
            return Err("strips hold fewer samples than the image needs".into());
        }
        let sample = |i: usize| -> f32 {
            let b = &data[i * bps..(i + 1) * bps];
            let v = if bps == 4 {
                f32::from_bits(r.word32(b)) as f64
            } else {
                f64::from_bits(r.word64(b))
            };
            // NaN (no data) becomes black rather than poisoning the features.
            if v.is_nan() {
                0.0
            } else {
                v.clamp(0.0, 1.0) as f32
            }
        };
        let at = |p: usize, c: usize| {
            if planar {
                sample(c * px + p)
            } else {
                sample(p * spp + c)
            }
        };
        let (w32, h32) = (
            u32::try_from(w).map_err(|_| "width")?,
            u32::try_from(h).map_err(|_| "height")?,
        );
        match (self.photometric, spp) {
            (0 | 1, 1 | 2) => {
                let white_is_zero = self.photometric == 0;
                // `image` has no single-channel float buffer: gray is stored as RGB.
                Ok(DynamicImage::ImageRgb32F(ImageBuffer::from_fn(
                    w32,
                    h32,
                    |x, y| {
                        let v = at(y as usize * w + x as usize, 0);
                        let v = if white_is_zero { 1.0 - v } else { v };
                        Rgb([v, v, v])
                    },
                )))
            }
            // Extra samples (alpha) beyond the third are ignored.
            (2, 3..) => Ok(DynamicImage::ImageRgb32F(ImageBuffer::from_fn(
                w32,
                h32,
                |x, y| {
                    let p = y as usize * w + x as usize;
                    Rgb([at(p, 0), at(p, 1), at(p, 2)])
                },
            ))),
            (ph, s) => Err(format!("photometric {ph} with {s} samples per pixel")),
        }
    }
}

fn first(v: Vec<usize>) -> Result<usize, String> {
    v.first().copied().ok_or_else(|| "empty tag".into())
}

/// Bounds-checked reads in the file's byte order.
struct Reader<'a> {
    b: &'a [u8],
    little: bool,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Result<Self, String> {
        let little = match b.get(..4) {
            Some(b"II*\0") => true,
            Some(b"MM\0*") => false,
            _ => return Err("not a classic TIFF".into()),
        };
        Ok(Self { b, little })
    }

    fn slice(&self, off: usize, len: usize) -> Result<&'a [u8], String> {
        off.checked_add(len)
            .and_then(|end| self.b.get(off..end))
            .ok_or_else(|| format!("offset {off}+{len} beyond the end of the file"))
    }

    fn u16(&self, off: usize) -> Result<u16, String> {
        let s = self.slice(off, 2)?;
        let a = [s[0], s[1]];
        Ok(if self.little {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        })
    }

    fn u32(&self, off: usize) -> Result<u32, String> {
        Ok(self.word32(self.slice(off, 4)?))
    }

    fn word32(&self, s: &[u8]) -> u32 {
        let a = [s[0], s[1], s[2], s[3]];
        if self.little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }

    fn word64(&self, s: &[u8]) -> u64 {
        let a = [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]];
        if self.little {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }

    /// The SHORT or LONG values of the IFD entry at `e` (inline when they fit in 4 bytes).
    fn values(&self, e: usize) -> Result<Vec<usize>, String> {
        let ty = self.u16(e + 2)?;
        let count = self.u32(e + 4)? as usize;
        let size = match ty {
            3 => 2,
            4 => 4,
            _ => return Err(format!("tag type {ty} where SHORT or LONG was expected")),
        };
        let total = count.checked_mul(size).ok_or("tag count overflows")?;
        let base = if total <= 4 {
            e + 8
        } else {
            self.u32(e + 8)? as usize
        };
        let raw = self.slice(base, total)?;
        Ok((0..count)
            .map(|i| {
                let s = &raw[i * size..];
                if size == 2 {
                    let a = [s[0], s[1]];
                    (if self.little {
                        u16::from_le_bytes(a)
                    } else {
                        u16::from_be_bytes(a)
                    }) as usize
                } else {
                    self.word32(s) as usize
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2x1 planar RGB float32 TIFF, big-endian, built by hand.
    #[test]
    fn planar_f32_big_endian() {
        let entries: [(u16, u16, u32, u32); 9] = [
            (256, 3, 1, 2 << 16),
            (257, 3, 1, 1 << 16),
            (258, 3, 1, 32 << 16),
            (262, 3, 1, 2 << 16),
            (273, 4, 1, 200),
            (277, 3, 1, 3 << 16),
            (279, 4, 1, 24),
            (284, 3, 1, 2 << 16),
            (339, 3, 1, 3 << 16),
        ];
        let mut f = b"MM\0*".to_vec();
        f.extend(8u32.to_be_bytes());
        f.extend((entries.len() as u16).to_be_bytes());
        for (t, ty, c, v) in entries {
            f.extend(t.to_be_bytes());
            f.extend(ty.to_be_bytes());
            f.extend(c.to_be_bytes());
            f.extend(v.to_be_bytes());
        }
        f.extend(0u32.to_be_bytes());
        f.resize(200, 0);
        // R plane, G plane, B plane; 2.0 clamps to 1.
        for v in [0.25f32, 2.0, 0.5, 0.0, 0.75, 1.0] {
            f.extend(v.to_be_bytes());
        }
        let img = decode_float_tiff(&f, Path::new("f.tif"))
            .unwrap()
            .to_rgb32f();
        assert_eq!(img.dimensions(), (2, 1));
        assert_eq!(img.get_pixel(0, 0).0, [0.25, 0.5, 0.75]);
        assert_eq!(img.get_pixel(1, 0).0, [1.0, 0.0, 1.0]);
        // Cut short: an error, not a panic.
        assert!(decode_float_tiff(&f[..210], Path::new("f.tif")).is_err());
        assert!(decode_float_tiff(&f[..30], Path::new("f.tif")).is_err());
    }
}

//! Converting decoded pictures to RGB with swscale: the stream's own YUV matrix (BT.601, BT.709,
//! BT.2020...) and range (limited or full), which swscale does not pick up by itself, at the
//! coded size or downscaled so the longer side fits a limit. Pixels stay as coded: a stream with
//! non-square pixels is not stretched (the caller reports its pixel aspect instead).

use ffmpeg_next as ffmpeg;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::util::frame::video::Video as AvFrame;
use image::RgbImage;

/// Size of a `w` x `h` picture downscaled to fit `max_side` (aspect kept, never upscaled, at
/// least 1 pixel a side).
pub(super) fn output_size(w: u32, h: u32, max_side: Option<u32>) -> (u32, u32) {
    let (mut fw, mut fh) = (w as f64, h as f64);
    if let Some(m) = max_side {
        let scale = (m as f64 / fw.max(fh)).min(1.0);
        fw *= scale;
        fh *= scale;
    }
    ((fw.round() as u32).max(1), (fh.round() as u32).max(1))
}

/// swscale from one source format and size to RGB24 at the output size.
pub(super) struct Scaler {
    ctx: scaling::Context,
    src: (Pixel, u32, u32),
    out: AvFrame,
}

impl Scaler {
    pub fn new(frame: &AvFrame, ow: u32, oh: u32) -> std::result::Result<Self, String> {
        let (fmt, w, h) = (frame.format(), frame.width(), frame.height());
        let mut ctx = scaling::Context::get(
            fmt,
            w,
            h,
            Pixel::RGB24,
            ow,
            oh,
            // Bicubic for downscaling (its filter widens with the ratio); accurate rounding
            // and full chroma interpolation so colours of small, sharp shapes survive.
            scaling::Flags::BICUBIC | scaling::Flags::ACCURATE_RND | scaling::Flags::FULL_CHR_H_INT,
        )
        .map_err(|e| format!("swscale cannot convert {fmt:?} {w}x{h} to RGB {ow}x{oh}: {e}"))?;
        set_colorspace(&mut ctx, frame);
        Ok(Self {
            ctx,
            src: (fmt, w, h),
            out: AvFrame::empty(),
        })
    }

    pub fn fits(&self, frame: &AvFrame) -> bool {
        self.src == (frame.format(), frame.width(), frame.height())
    }

    pub fn run(&mut self, frame: &AvFrame) -> std::result::Result<RgbImage, String> {
        self.ctx
            .run(frame, &mut self.out)
            .map_err(|e| format!("swscale failed: {e}"))?;
        let (w, h) = (self.out.width() as usize, self.out.height() as usize);
        let stride = self.out.stride(0);
        let data = self.out.data(0);
        let row = w * 3;
        if stride < row || data.len() < stride * (h - 1) + row {
            return Err("swscale returned a short picture".into());
        }
        // Rows of an AVFrame are padded to the stride; the image wants them packed.
        let mut buf = Vec::with_capacity(row * h);
        for y in 0..h {
            buf.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        RgbImage::from_raw(w as u32, h as u32, buf).ok_or_else(|| "bad RGB buffer size".into())
    }
}

/// Tells swscale the stream's YUV matrix and range; by default it assumes BT.601 limited
/// range, which tints BT.709 (HD) video and crushes full-range (JPEG-style) video.
fn set_colorspace(ctx: &mut scaling::Context, frame: &AvFrame) {
    use ffmpeg::color::{Range, Space};
    use ffmpeg::ffi;
    let fmt = frame.format();
    let cs = match frame.color_space() {
        Space::BT709 => ffi::SWS_CS_ITU709,
        Space::FCC => ffi::SWS_CS_FCC,
        Space::SMPTE240M => ffi::SWS_CS_SMPTE240M,
        Space::BT2020NCL | Space::BT2020CL => ffi::SWS_CS_BT2020,
        _ => ffi::SWS_CS_DEFAULT,
    };
    // The yuvj* formats are full range by definition, whatever the frame's flag says.
    let full = frame.color_range() == Range::JPEG
        || matches!(
            fmt,
            Pixel::YUVJ420P | Pixel::YUVJ422P | Pixel::YUVJ444P | Pixel::YUVJ440P | Pixel::YUVJ411P
        );
    // SAFETY: the context pointer is valid for the life of `ctx`; the coefficient tables
    // are static arrays inside libswscale. For RGB input the call is a no-op that returns -1.
    unsafe {
        let _ = ffi::sws_setColorspaceDetails(
            ctx.as_mut_ptr(),
            ffi::sws_getCoefficients(cs),
            full as std::os::raw::c_int,
            ffi::sws_getCoefficients(ffi::SWS_CS_DEFAULT),
            1,
            0,
            1 << 16,
            1 << 16,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_keeps_aspect_and_never_upscales() {
        assert_eq!(output_size(1280, 720, None), (1280, 720));
        assert_eq!(output_size(1280, 720, Some(320)), (320, 180));
        assert_eq!(output_size(176, 144, Some(320)), (176, 144));
        assert_eq!(output_size(4000, 1, Some(10)), (10, 1));
    }
}

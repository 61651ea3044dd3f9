//! Picking frames as the decoder produces them: for each target time the frame whose
//! presentation time is nearest (the earlier on a tie). Frames arrive in display order and only
//! the latest is held, so memory stays at one source frame plus the chosen outputs however long
//! the clip; each chosen frame is converted to RGB ([`super::scale`]) when it is chosen.

use ffmpeg_next as ffmpeg;

use ffmpeg::format::Pixel;
use ffmpeg::util::frame::video::Video as AvFrame;
use image::RgbImage;

use super::scale::{output_size, Scaler};

/// Keeps, for each target time, the decoded frame nearest to it; frames arrive in display
/// order and only the latest one is held, so memory is one source frame plus the outputs.
pub(super) struct Picker {
    targets: Vec<f64>,
    /// Index of the first target without a frame.
    next: usize,
    /// The latest frame offered and its time.
    prev: AvFrame,
    prev_t: Option<f64>,
    /// Frames chosen so far, one per resolved target, with their times.
    pub chosen: Vec<(RgbImage, f64)>,
    max_side: Option<u32>,
    scaler: Option<Scaler>,
    /// Size of the output frames, fixed by the first frame converted.
    pub out_size: Option<(u32, u32)>,
    /// Coded size and pixel aspect of the first frame converted.
    pub source_size: (u32, u32),
    pub pixel_aspect: f64,
}

impl Picker {
    pub fn new(targets: Vec<f64>, max_side: Option<u32>) -> Self {
        Self {
            chosen: Vec::with_capacity(targets.len()),
            targets,
            next: 0,
            prev: AvFrame::empty(),
            prev_t: None,
            max_side,
            scaler: None,
            out_size: None,
            source_size: (0, 0),
            pixel_aspect: 1.0,
        }
    }

    pub fn done(&self) -> bool {
        self.next >= self.targets.len()
    }

    /// Index of the first target still without a frame.
    pub fn next_index(&self) -> usize {
        self.next
    }

    pub fn next_target(&self) -> Option<f64> {
        self.targets.get(self.next).copied()
    }

    /// Time of the latest frame offered.
    pub fn position(&self) -> Option<f64> {
        self.prev_t
    }

    /// Offers the frame at `t` (taking its data; `frame` is left holding stale data).
    pub fn offer(&mut self, t: f64, frame: &mut AvFrame) -> std::result::Result<(), String> {
        if !t.is_finite() {
            return Ok(());
        }
        // After a seek that landed before frames already seen: nothing new until past them.
        if let Some(pt) = self.prev_t {
            if t <= pt {
                return Ok(());
            }
        }
        while let Some(target) = self.next_target() {
            if target > t {
                break;
            }
            // The target lies between the previous frame and this one: the nearer wins, the
            // earlier on a tie.
            let use_prev = matches!(self.prev_t, Some(pt) if target - pt <= t - target);
            let (img, ft) = if use_prev {
                (self.convert_prev()?, self.prev_t.unwrap_or(t))
            } else {
                (self.convert(frame)?, t)
            };
            self.chosen.push((img, ft));
            self.next += 1;
        }
        std::mem::swap(&mut self.prev, frame);
        self.prev_t = Some(t);
        Ok(())
    }

    /// Resolves the targets left after the last frame with that frame.
    pub fn finish(&mut self) -> std::result::Result<(), String> {
        let Some(pt) = self.prev_t else {
            return Ok(());
        };
        while !self.done() {
            let img = self.convert_prev()?;
            self.chosen.push((img, pt));
            self.next += 1;
        }
        Ok(())
    }

    fn convert_prev(&mut self) -> std::result::Result<RgbImage, String> {
        // The same frame can be nearest to several targets (a short clip, a high rate).
        if let Some((img, t)) = self.chosen.last() {
            if Some(*t) == self.prev_t {
                return Ok(img.clone());
            }
        }
        let prev = std::mem::replace(&mut self.prev, AvFrame::empty());
        let r = self.convert(&prev);
        self.prev = prev;
        r
    }

    fn convert(&mut self, frame: &AvFrame) -> std::result::Result<RgbImage, String> {
        let (w, h) = (frame.width(), frame.height());
        if w == 0 || h == 0 || frame.format() == Pixel::None {
            return Err(format!(
                "the decoder returned an empty picture ({w}x{h}, {:?})",
                frame.format()
            ));
        }
        // The output size is fixed by the first frame, so a stream that changes resolution
        // midway still yields frames of one size.
        let (ow, oh) = match self.out_size {
            Some(s) => s,
            None => {
                let s = output_size(w, h, self.max_side);
                self.out_size = Some(s);
                self.source_size = (w, h);
                let sar = frame.aspect_ratio();
                if sar.numerator() > 0 && sar.denominator() > 0 {
                    self.pixel_aspect = f64::from(sar);
                }
                s
            }
        };
        let fits = self.scaler.as_ref().is_some_and(|s| s.fits(frame));
        if !fits {
            self.scaler = Some(Scaler::new(frame, ow, oh)?);
        }
        match self.scaler.as_mut() {
            Some(s) => s.run(frame),
            None => Err("no scaler".into()),
        }
    }
}

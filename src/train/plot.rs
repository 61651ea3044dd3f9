//! Loss-curve plots as PNG files, with no dependency beyond `std`.
//!
//! [`write_loss_png`] draws the training loss as a line and the evaluation loss as a line with
//! square markers, with axes, grid, numeric tick labels, a title and a legend, and writes the
//! image atomically. Text uses a small built-in 5x7 bitmap font (digits, A-Z, a few
//! punctuation marks; lowercase is drawn as uppercase, anything else as `?`). The PNG encoder is
//! written here too: RGB8, per-row filter choice (None/Sub/Up), and a zlib stream with one
//! fixed-Huffman deflate block using run-length matches (distance 1), which shrinks mostly-white
//! plots from ~1.2 MB raw to a few tens of KB.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Image width in pixels.
const WIDTH: usize = 800;
/// Image height in pixels.
const HEIGHT: usize = 500;
/// Plot area (pixel bounds, inclusive) inside the image; the margins hold labels.
const PLOT_LEFT: i64 = 100;
const PLOT_RIGHT: i64 = 780;
const PLOT_TOP: i64 = 44;
const PLOT_BOTTOM: i64 = 440;
/// Text is drawn at this integer scale of the 5x7 font (10x14 pixels per glyph, 12 advance).
const TEXT_SCALE: i64 = 2;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];
/// Training curve colour (blue).
pub const TRAIN_COLOUR: [u8; 3] = [31, 119, 180];
/// Evaluation curve colour (orange).
pub const EVAL_COLOUR: [u8; 3] = [230, 110, 0];

/// Draws the loss curves and writes them to `path` as an 800x500 RGB PNG.
///
/// `train` and `eval` are `(step, loss)` points, drawn in the given order; points with a
/// non-finite loss are skipped and break the line. The x range spans the steps of both series
/// and the y range (linear) the finite losses of both, padded by 5%. Empty input still gives a
/// valid image with empty axes.
///
/// The file is written to `<path>.tmp` and renamed over `path`, so a reader never sees a
/// partial image (e.g. a dashboard reloading the plot while training rewrites it).
pub fn write_loss_png(
    path: &Path,
    train: &[(u64, f64)],
    eval: &[(u64, f64)],
    title: &str,
) -> io::Result<()> {
    let canvas = render_loss_plot(train, eval, title);
    let png = encode_png(canvas.width, canvas.height, &canvas.rgb);
    write_atomically(path, &png)
}

/// Writes `bytes` to `path.tmp`, syncs it, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: do not leave a stray temporary file behind; the original error matters more.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An RGB8 image in row-major order.
struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize, fill: Rgb) -> Self {
        let mut rgb = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            rgb.extend_from_slice(&fill);
        }
        Canvas { width, height, rgb }
    }

    /// Sets one pixel; coordinates outside the image are ignored (callers may draw past edges).
    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        self.rgb[i..i + 3].copy_from_slice(&c);
    }

    #[cfg(test)]
    fn get(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0..=y1 {
            for x in x0..=x1 {
                self.set(x, y, c);
            }
        }
    }

    /// A line two pixels thick (Bresenham, each point also drawn one pixel right and down).
    fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb) {
        let dx = (x1 - x0).abs();
        let dy = -(y1 - y0).abs();
        let sx = if x0 < x1 { 1 } else { -1 };
        let sy = if y0 < y1 { 1 } else { -1 };
        let mut err = dx + dy;
        loop {
            self.fill_rect(x0, y0, x0 + 1, y0 + 1, c);
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }

    /// Draws `text` with its top-left corner at (x, y), horizontally.
    fn text(&mut self, x: i64, y: i64, text: &str, c: Rgb) {
        for (i, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            let gx = x + i as i64 * 6 * TEXT_SCALE;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0b10000 >> col) != 0 {
                        let px = gx + col * TEXT_SCALE;
                        let py = y + r as i64 * TEXT_SCALE;
                        self.fill_rect(px, py, px + TEXT_SCALE - 1, py + TEXT_SCALE - 1, c);
                    }
                }
            }
        }
    }

    /// Draws `text` rotated 90 degrees counter-clockwise (reading bottom to top), with the
    /// bottom-left corner of the first glyph at (x, y).
    fn text_vertical(&mut self, x: i64, y: i64, text: &str, c: Rgb) {
        for (i, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            let gy = y - i as i64 * 6 * TEXT_SCALE;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0b10000 >> col) != 0 {
                        // Glyph column runs up the image, glyph row runs right.
                        let px = x + r as i64 * TEXT_SCALE;
                        let py = gy - (col + 1) * TEXT_SCALE;
                        self.fill_rect(px, py, px + TEXT_SCALE - 1, py + TEXT_SCALE - 1, c);
                    }
                }
            }
        }
    }
}

/// Pixel width of `text` drawn with [`Canvas::text`].
fn text_width(text: &str) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * 6 - 1) * TEXT_SCALE
    }
}

/// 5x7 glyphs, one byte per row from the top, bit 4 = leftmost column. Drawn by hand for this
/// file. Lowercase letters use the uppercase glyph; characters without a glyph draw as `?`.
#[rustfmt::skip]
const GLYPHS: &[(char, [u8; 7])] = &[
    (' ', [0, 0, 0, 0, 0, 0, 0]),
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111]),
    ('3', [0b11110, 0b00001, 0b00001, 0b01110, 0b00001, 0b00001, 0b11110]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100]),
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110]),
    ('D', [0b11110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11110]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001]),
    ('N', [0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b10001]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001]),
    ('Y', [0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111]),
    ('.', [0, 0, 0, 0, 0, 0b01100, 0b01100]),
    ('-', [0, 0, 0, 0b11111, 0, 0, 0]),
    ('+', [0, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0]),
    (':', [0, 0b01100, 0b01100, 0, 0b01100, 0b01100, 0]),
    ('/', [0b00001, 0b00010, 0b00010, 0b00100, 0b01000, 0b01000, 0b10000]),
    ('(', [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010]),
    (')', [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000]),
    ('_', [0, 0, 0, 0, 0, 0, 0b11111]),
    (',', [0, 0, 0, 0, 0b01100, 0b00100, 0b01000]),
    ('=', [0, 0, 0b11111, 0, 0b11111, 0, 0]),
    ('%', [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011]),
    ('\'', [0b01100, 0b00100, 0b01000, 0, 0, 0, 0]),
    ('#', [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010]),
    ('?', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0, 0b00100]),
];

fn glyph(c: char) -> [u8; 7] {
    let c = c.to_ascii_uppercase();
    let find = |c: char| GLYPHS.iter().find(|(g, _)| *g == c).map(|(_, rows)| *rows);
    // '?' is in the table, so the fallback's fallback never triggers; a blank is harmless anyway.
    find(c).or_else(|| find('?')).unwrap_or([0; 7])
}

/// "Nice" tick positions (multiples of 1, 2 or 5 times a power of ten) covering [lo, hi],
/// about `target` of them. Returns the ticks and the step between them.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return (vec![lo], 1.0);
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    let mut ticks = Vec::new();
    let mut k = first;
    // Bounded loop: at most target*2.5 + 2 ticks by construction of `step`.
    while k * step <= hi + step * 1e-9 && ticks.len() < 64 {
        let v = k * step;
        // Avoid printing "-0".
        ticks.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        k += 1.0;
    }
    (ticks, step)
}

/// A tick label for `v` on an axis whose ticks are `step` apart: just enough decimals to tell
/// neighbours apart, or scientific notation (`1.5E-4`) for very large or small magnitudes.
fn format_tick(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let a = v.abs().max(step.abs());
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.1e}").to_uppercase();
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// Renders the loss plot into a canvas (see [`write_loss_png`]).
fn render_loss_plot(train: &[(u64, f64)], eval: &[(u64, f64)], title: &str) -> Canvas {
    let mut cv = Canvas::new(WIDTH, HEIGHT, WHITE);
    let finite = || train.iter().chain(eval).filter(|(_, l)| l.is_finite());

    // Data ranges; an empty or degenerate range is widened so the mapping stays defined.
    let (mut x_lo, mut x_hi) = finite()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (s, _)| {
            (lo.min(*s as f64), hi.max(*s as f64))
        });
    let (mut y_lo, mut y_hi) = finite()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, l)| {
            (lo.min(*l), hi.max(*l))
        });
    if !x_lo.is_finite() {
        (x_lo, x_hi, y_lo, y_hi) = (0.0, 1.0, 0.0, 1.0);
    }
    if x_hi <= x_lo {
        x_hi = x_lo + 1.0;
    }
    if y_hi <= y_lo {
        let pad = (y_lo.abs() * 0.1).max(1e-3);
        (y_lo, y_hi) = (y_lo - pad, y_hi + pad);
    } else {
        let pad = (y_hi - y_lo) * 0.05;
        (y_lo, y_hi) = (y_lo - pad, y_hi + pad);
    }

    let px = |x: f64| {
        PLOT_LEFT + ((x - x_lo) / (x_hi - x_lo) * (PLOT_RIGHT - PLOT_LEFT) as f64).round() as i64
    };
    let py = |y: f64| {
        PLOT_BOTTOM - ((y - y_lo) / (y_hi - y_lo) * (PLOT_BOTTOM - PLOT_TOP) as f64).round() as i64
    };

    // Grid and tick labels.
    let (yt, ystep) = nice_ticks(y_lo, y_hi, 8);
    for v in yt {
        let y = py(v);
        cv.fill_rect(PLOT_LEFT, y, PLOT_RIGHT, y, GRID);
        cv.fill_rect(PLOT_LEFT - 6, y, PLOT_LEFT - 1, y, BLACK);
        let label = format_tick(v, ystep);
        cv.text(PLOT_LEFT - 10 - text_width(&label), y - 7, &label, BLACK);
    }
    // Steps are integers: never use a tick step below 1.
    let (xt, xstep) = nice_ticks(x_lo, x_hi, 8);
    for v in xt.into_iter().filter(|v| xstep >= 1.0 || v.fract() == 0.0) {
        let x = px(v);
        cv.fill_rect(x, PLOT_TOP, x, PLOT_BOTTOM, GRID);
        cv.fill_rect(x, PLOT_BOTTOM + 1, x, PLOT_BOTTOM + 6, BLACK);
        let label = format_tick(v, xstep.max(1.0));
        cv.text(x - text_width(&label) / 2, PLOT_BOTTOM + 12, &label, BLACK);
    }

    // Axes (frame).
    cv.fill_rect(PLOT_LEFT, PLOT_TOP, PLOT_LEFT, PLOT_BOTTOM, BLACK);
    cv.fill_rect(PLOT_LEFT, PLOT_BOTTOM, PLOT_RIGHT, PLOT_BOTTOM, BLACK);
    cv.fill_rect(PLOT_RIGHT, PLOT_TOP, PLOT_RIGHT, PLOT_BOTTOM, BLACK);
    cv.fill_rect(PLOT_LEFT, PLOT_TOP, PLOT_RIGHT, PLOT_TOP, BLACK);

    // Curves: a non-finite loss breaks the line instead of being drawn.
    let mut draw_series = |pts: &[(u64, f64)], c: Rgb, markers: bool| {
        let mut prev: Option<(i64, i64)> = None;
        for &(s, l) in pts {
            if !l.is_finite() {
                prev = None;
                continue;
            }
            let p = (px(s as f64), py(l));
            if let Some(q) = prev {
                cv.line(q, p, c);
            }
            if markers {
                cv.fill_rect(p.0 - 3, p.1 - 3, p.0 + 4, p.1 + 4, c);
            }
            prev = Some(p);
        }
    };
    draw_series(train, TRAIN_COLOUR, false);
    draw_series(eval, EVAL_COLOUR, true);

    // Labels and title.
    let xl = "STEP";
    cv.text(
        (PLOT_LEFT + PLOT_RIGHT) / 2 - text_width(xl) / 2,
        PLOT_BOTTOM + 36,
        xl,
        BLACK,
    );
    let yl = "LOSS";
    cv.text_vertical(
        14,
        (PLOT_TOP + PLOT_BOTTOM) / 2 + text_width(yl) / 2,
        yl,
        BLACK,
    );
    let t: String = title.chars().filter(|c| !c.is_control()).take(60).collect();
    cv.text((WIDTH as i64 - text_width(&t)) / 2, 14, &t, BLACK);

    // Legend in the top-right corner of the plot area, one row per non-empty series.
    let entries: Vec<(&str, Rgb, bool)> = [
        ("TRAIN", TRAIN_COLOUR, false, train),
        ("EVAL", EVAL_COLOUR, true, eval),
    ]
    .into_iter()
    .filter(|e| !e.3.is_empty())
    .map(|(n, c, m, _)| (n, c, m))
    .collect();
    if !entries.is_empty() {
        let w = 30 + 8 + text_width("TRAIN") + 16;
        let h = entries.len() as i64 * 22 + 8;
        let (x0, y0) = (PLOT_RIGHT - 10 - w, PLOT_TOP + 10);
        cv.fill_rect(x0, y0, x0 + w, y0 + h, WHITE);
        for (x, y) in [(x0, y0), (x0 + w, y0)] {
            cv.fill_rect(x, y, x, y + h, BLACK);
        }
        cv.fill_rect(x0, y0, x0 + w, y0, BLACK);
        cv.fill_rect(x0, y0 + h, x0 + w, y0 + h, BLACK);
        for (i, (name, c, marker)) in entries.into_iter().enumerate() {
            let cy = y0 + 15 + i as i64 * 22;
            cv.line((x0 + 8, cy), (x0 + 38, cy), c);
            if marker {
                cv.fill_rect(x0 + 20, cy - 3, x0 + 27, cy + 4, c);
            }
            cv.text(x0 + 46, cy - 6, name, BLACK);
        }
    }
    cv
}

// ------------------------------------------------------------------------------------------
// PNG encoding
// ------------------------------------------------------------------------------------------

/// CRC-32 (IEEE, reflected polynomial 0xEDB88320) as PNG chunks use it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (n, slot) in table.iter_mut().enumerate() {
        let mut c = n as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c = table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// Adler-32 checksum that ends a zlib stream.
fn adler32(bytes: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 bytes is the longest run for which the sums cannot overflow u32 before reducing.
    for chunk in bytes.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// Appends bits least-significant first, as deflate packs them.
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    fn bits(&mut self, value: u32, count: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Huffman codes are defined most-significant bit first, so they go in reversed.
    fn code(&mut self, code: u32, len: u32) {
        self.bits(code.reverse_bits() >> (32 - len), len);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// The fixed Huffman code (RFC 1951, 3.2.6) of literal/length symbol `sym` (0..=287).
fn fixed_litlen_code(sym: u32) -> (u32, u32) {
    match sym {
        0..=143 => (0x30 + sym, 8),
        144..=255 => (0x190 + sym - 144, 9),
        256..=279 => (sym - 256, 7),
        _ => (0xC0 + sym - 280, 8),
    }
}

/// Base match lengths and extra-bit counts of length symbols 257..=285.
const LEN_BASE: [u32; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u32; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];

/// A zlib stream holding one fixed-Huffman deflate block. Runs of a repeated byte become one
/// literal plus matches at distance 1; everything else is literals. Simple, and very effective
/// on filtered plot rows, which are mostly zeros.
fn zlib_compress(data: &[u8]) -> Vec<u8> {
    let mut w = BitWriter {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    w.bits(1, 1); // BFINAL: this is the last block
    w.bits(1, 2); // BTYPE = 01: fixed Huffman codes
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        let run = data[i..].iter().take_while(|&&x| x == b).count();
        let (code, len) = fixed_litlen_code(u32::from(b));
        w.code(code, len);
        let mut rest = run - 1;
        while rest >= 3 {
            let mut m = rest.min(258);
            // Never leave a tail of 1-2 bytes after a long match when a shorter match avoids it.
            if rest > 258 && rest - 258 < 3 {
                m = rest - 3;
            }
            let idx = LEN_BASE
                .iter()
                .rposition(|&base| base as usize <= m)
                .unwrap_or(0);
            let (code, len) = fixed_litlen_code(257 + idx as u32);
            w.code(code, len);
            w.bits(m as u32 - LEN_BASE[idx], LEN_EXTRA[idx]);
            w.code(0, 5); // distance symbol 0 = distance 1, no extra bits
            rest -= m;
        }
        for _ in 0..rest {
            w.code(code, len);
        }
        i += run;
    }
    let (code, len) = fixed_litlen_code(256); // end of block
    w.code(code, len);
    let mut out = w.finish();
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// Filters each row (PNG filter types 0 None, 1 Sub, 2 Up), choosing per row the one with the
/// smallest sum of absolute signed bytes, the usual PNG heuristic.
fn filter_rows(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    let stride = width * 3;
    let mut out = Vec::with_capacity((stride + 1) * height);
    let mut cand = [vec![0u8; stride], vec![0u8; stride], vec![0u8; stride]];
    for y in 0..height {
        let row = &rgb[y * stride..(y + 1) * stride];
        for x in 0..stride {
            let left = if x >= 3 { row[x - 3] } else { 0 };
            let up = if y > 0 { rgb[(y - 1) * stride + x] } else { 0 };
            cand[0][x] = row[x];
            cand[1][x] = row[x].wrapping_sub(left);
            cand[2][x] = row[x].wrapping_sub(up);
        }
        let cost = |v: &[u8]| {
            v.iter()
                .map(|&b| u64::from((b as i8).unsigned_abs()))
                .sum::<u64>()
        };
        let best = (0..3).min_by_key(|&k| cost(&cand[k])).unwrap_or(0);
        out.push(best as u8);
        out.extend_from_slice(&cand[best]);
    }
    out
}

fn push_chunk(png: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
    png.extend_from_slice(&(body.len() as u32).to_be_bytes());
    let start = png.len();
    png.extend_from_slice(kind);
    png.extend_from_slice(body);
    let crc = crc32(&png[start..]);
    png.extend_from_slice(&crc.to_be_bytes());
}

/// Encodes an RGB8 image (`rgb.len() == width * height * 3`) as a PNG file.
fn encode_png(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate compression, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    push_chunk(&mut png, b"IHDR", &ihdr);
    push_chunk(
        &mut png,
        b"IDAT",
        &zlib_compress(&filter_rows(width, height, rgb)),
    );
    push_chunk(&mut png, b"IEND", &[]);
    png
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a PNG into (type, body) chunks, asserting every CRC.
    fn chunks(png: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut out = Vec::new();
        let mut pos = 8;
        while pos < png.len() {
            let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
            let kind: [u8; 4] = png[pos + 4..pos + 8].try_into().unwrap();
            let body = png[pos + 8..pos + 8 + len].to_vec();
            let crc = u32::from_be_bytes(png[pos + 8 + len..pos + 12 + len].try_into().unwrap());
            assert_eq!(
                crc,
                crc32(&png[pos + 4..pos + 8 + len]),
                "CRC of {:?}",
                kind
            );
            out.push((kind, body));
            pos += 12 + len;
        }
        out
    }

    /// A minimal inflater for what `zlib_compress` writes (fixed-Huffman blocks only), used to
    /// check the encoder end to end.
    fn inflate_fixed(z: &[u8]) -> Vec<u8> {
        assert_eq!(
            (u16::from(z[0]) << 8 | u16::from(z[1])) % 31,
            0,
            "zlib header check"
        );
        let data = &z[2..z.len() - 4];
        let mut pos = 0usize; // bit position
        let mut bit = || {
            let b = (data[pos / 8] >> (pos % 8)) & 1;
            pos += 1;
            u32::from(b)
        };
        let mut out: Vec<u8> = Vec::new();
        loop {
            let last = bit();
            let btype = bit() | bit() << 1;
            assert_eq!(btype, 1, "only fixed-Huffman blocks expected");
            loop {
                // Read the code MSB first and stop at the first length that forms a valid code.
                let mut code = 0u32;
                for _ in 0..7 {
                    code = code << 1 | bit();
                }
                let sym = if code <= 0b0010111 {
                    256 + code
                } else {
                    code = code << 1 | bit();
                    if (0x30..=0xBF).contains(&code) {
                        code - 0x30
                    } else if (0xC0..=0xC7).contains(&code) {
                        280 + code - 0xC0
                    } else {
                        code = code << 1 | bit();
                        144 + code - 0x190
                    }
                };
                match sym {
                    0..=255 => out.push(sym as u8),
                    256 => break,
                    _ => {
                        let idx = (sym - 257) as usize;
                        let mut extra = 0;
                        for k in 0..LEN_EXTRA[idx] {
                            extra |= bit() << k;
                        }
                        let len = (LEN_BASE[idx] + extra) as usize;
                        let mut dcode = 0;
                        for _ in 0..5 {
                            dcode = dcode << 1 | bit();
                        }
                        assert_eq!(dcode, 0, "only distance 1 expected");
                        for _ in 0..len {
                            let b = *out.last().unwrap();
                            out.push(b);
                        }
                    }
                }
            }
            if last == 1 {
                break;
            }
        }
        assert_eq!(adler32(&out).to_be_bytes(), z[z.len() - 4..]);
        out
    }

    /// Undoes `filter_rows`.
    fn unfilter(width: usize, height: usize, f: &[u8]) -> Vec<u8> {
        let stride = width * 3;
        let mut img = vec![0u8; stride * height];
        for y in 0..height {
            let kind = f[y * (stride + 1)];
            for x in 0..stride {
                let v = f[y * (stride + 1) + 1 + x];
                let left = if x >= 3 { img[y * stride + x - 3] } else { 0 };
                let up = if y > 0 { img[(y - 1) * stride + x] } else { 0 };
                img[y * stride + x] = match kind {
                    0 => v,
                    1 => v.wrapping_add(left),
                    2 => v.wrapping_add(up),
                    k => panic!("unexpected filter {k}"),
                };
            }
        }
        img
    }

    #[test]
    fn checksums_known_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        let big = vec![255u8; 100_000];
        // Reference value computed as ((1 + 255n) mod M, sum_{k=1..n}(1 + 255k) mod M).
        let (a, b) = (
            1 + 255 * 100_000u64,
            100_000u64 + 255 * 100_000 * 100_001 / 2,
        );
        assert_eq!(adler32(&big), ((b % 65_521) << 16 | (a % 65_521)) as u32);
    }

    #[test]
    fn deflate_round_trips() {
        let mut data = vec![7u8; 1000];
        data.extend((0..=255u8).cycle().take(3000));
        data.extend(vec![0u8; 258 + 1]);
        data.extend(vec![0u8; 2]);
        data.extend(vec![9u8; 261]);
        data.push(1);
        assert_eq!(inflate_fixed(&zlib_compress(&data)), data);
        assert_eq!(inflate_fixed(&zlib_compress(&[])), Vec::<u8>::new());
    }

    #[test]
    fn tick_helpers() {
        let (t, s) = nice_ticks(0.0, 10.0, 5);
        assert_eq!((t, s), (vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0], 2.0));
        let (t, s) = nice_ticks(2.13, 2.87, 8);
        assert!((s - 0.1).abs() < 1e-12);
        assert_eq!(
            t.iter().map(|v| format_tick(*v, s)).collect::<Vec<_>>(),
            ["2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8"]
        );
        assert_eq!(format_tick(0.0002, 0.0001), "2.0E-4");
        assert_eq!(format_tick(1500.0, 500.0), "1500");
        assert_eq!(format_tick(-0.5, 0.5), "-0.5");
        assert_eq!(format_tick(0.05, 0.05), "0.05");
    }

    #[test]
    fn plot_pixels_where_expected() {
        // A straight train line from (0, 4.0) to (100, 2.0) and one eval point in the middle.
        let train: Vec<(u64, f64)> = (0..=100).map(|s| (s, 4.0 - 0.02 * s as f64)).collect();
        let eval = [(50u64, 3.0)];
        let cv = render_loss_plot(&train, &eval, "unit test");
        // y range is [2, 4] padded by 5% -> [1.9, 4.1]; x range [0, 100].
        let px = |x: f64| PLOT_LEFT + (x / 100.0 * (PLOT_RIGHT - PLOT_LEFT) as f64).round() as i64;
        let py = |y: f64| {
            PLOT_BOTTOM - ((y - 1.9) / 2.2 * (PLOT_BOTTOM - PLOT_TOP) as f64).round() as i64
        };
        // The eval marker sits on top of the train line at step 50.
        assert_eq!(cv.get(px(50.0) as usize, py(3.0) as usize), EVAL_COLOUR);
        // Train line at step 25 (loss 3.5) and step 90 (loss 2.2), away from the legend.
        for (s, l) in [(25.0, 3.5), (90.0, 2.2)] {
            let (x, y) = (px(s), py(l));
            let near = (-1..=1).any(|d| cv.get(x as usize, (y + d) as usize) == TRAIN_COLOUR);
            assert!(near, "train colour near ({x}, {y})");
        }
        // Well off the curve, inside the plot: background or grid, never a curve colour.
        let off = cv.get(px(25.0) as usize, py(2.2) as usize);
        assert!(off == WHITE || off == GRID, "{off:?}");
        // Axis frame.
        assert_eq!(cv.get(PLOT_LEFT as usize, 200), BLACK);
    }

    #[test]
    fn writes_valid_png_atomically() {
        let dir = std::env::temp_dir().join(format!("anymal-plot-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("loss.png");
        let train: Vec<(u64, f64)> = (0..500)
            .map(|s| (s, 3.0 * (-(s as f64) / 150.0).exp() + 0.5))
            .collect();
        let eval: Vec<(u64, f64)> = (0..500)
            .step_by(100)
            .map(|s| (s, 3.2 * (-(s as f64) / 160.0).exp() + 0.6))
            .collect();
        write_loss_png(&path, &train, &eval, "Loss: audio projector (lr=1e-4)").unwrap();
        assert!(!dir.join("loss.png.tmp").exists());
        let png = fs::read(&path).unwrap();
        let cs = chunks(&png);
        let kinds: Vec<&[u8; 4]> = cs.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [b"IHDR", b"IDAT", b"IEND"]);
        let ihdr = &cs[0].1;
        assert_eq!(
            u32::from_be_bytes(ihdr[0..4].try_into().unwrap()),
            WIDTH as u32
        );
        assert_eq!(
            u32::from_be_bytes(ihdr[4..8].try_into().unwrap()),
            HEIGHT as u32
        );
        assert_eq!(&ihdr[8..], &[8, 2, 0, 0, 0]);
        // Decode and compare with the canvas it came from.
        let img = unfilter(WIDTH, HEIGHT, &inflate_fixed(&cs[1].1));
        assert_eq!(
            img,
            render_loss_plot(&train, &eval, "Loss: audio projector (lr=1e-4)").rgb
        );
        assert!(png.len() < 100_000, "compressed size {}", png.len());
        // Keep the file for a manual look when asked (the fixture script can check it with PIL).
        if std::env::var_os("ANYMAL_KEEP_PLOT").is_none() {
            let _ = fs::remove_dir_all(&dir);
        } else {
            eprintln!("kept {}", path.display());
        }
    }

    #[test]
    fn empty_and_nan_inputs_still_render() {
        let cv = render_loss_plot(&[], &[], "");
        assert_eq!(cv.rgb.len(), WIDTH * HEIGHT * 3);
        let cv = render_loss_plot(
            &[(5, f64::NAN), (6, 1.0), (7, f64::INFINITY)],
            &[(6, 1.0)],
            "flat",
        );
        assert_eq!(cv.rgb.len(), WIDTH * HEIGHT * 3);
    }
}

//! Crafted media for the hostile-input tests, made at test time: headers that claim huge
//! sizes or impossible rates, real small files of extreme shapes, noise.
#![allow(dead_code)]

/// Noise from a fixed seed (xorshift): the same bytes on every run.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A PCM WAV whose header states `rate`, `format_tag` and a data length of `declared` bytes
/// (the real length when `None`), holding `data`.
pub fn wav(rate: u32, format_tag: u16, data: &[u8], declared: Option<u32>) -> Vec<u8> {
    let dlen = declared.unwrap_or(data.len() as u32);
    let mut b = Vec::new();
    b.extend(b"RIFF");
    b.extend((36u32.saturating_add(dlen)).to_le_bytes());
    b.extend(b"WAVEfmt ");
    b.extend(16u32.to_le_bytes());
    b.extend(format_tag.to_le_bytes());
    b.extend(1u16.to_le_bytes()); // mono
    b.extend(rate.to_le_bytes());
    b.extend(rate.wrapping_mul(2).to_le_bytes());
    b.extend(2u16.to_le_bytes());
    b.extend(16u16.to_le_bytes());
    b.extend(b"data");
    b.extend(dlen.to_le_bytes());
    b.extend(data);
    b
}

/// A PNG whose header claims `w x h` RGB pixels, with a few bytes of image data.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.finalize().to_be_bytes());
    }
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut b, b"IHDR", &ihdr);
    // zlib of 16 zero bytes.
    let idat = [
        0x78, 0x9c, 0x63, 0x60, 0x40, 0x05, 0x00, 0x00, 0x10, 0x00, 0x01,
    ];
    chunk(&mut b, b"IDAT", &idat);
    chunk(&mut b, b"IEND", &[]);
    b
}

/// A real, complete PNG of `w x h` (a gradient), through the `image` crate.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A real 16 x 16 baseline JPEG whose frame header is patched to claim `w x h`: the scan data
/// is that of the small picture, so decoders get past the headers.
pub fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let img = image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 16) as u8, 0])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    let mut b = out.into_inner();
    // SOF0: FF C0, length (2), precision (1), height (2), width (2).
    let sof = b
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("a baseline JPEG");
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    b
}

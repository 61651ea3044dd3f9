//! scikit-learn's handwritten digits (UCI; 1,797 images of 8x8 pixels, values 0-16, with their
//! digit) as PNG files and image-caption manifests: "A handwritten digit seven.".
//!
//! Split: fixed, by a hash of the image's index (about 70% train, 10% valid, 20% test).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use anymal_util::rng::fnv1a;

pub const DIGIT_WORDS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// One labelled image: 64 row-major pixel values in 0..=16 (16 = full ink).
#[derive(Debug, Clone)]
pub struct Digit {
    pub index: usize,
    pub pixels: [u8; 64],
    pub label: u8,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DigitsSplits {
    pub train: usize,
    pub valid: usize,
    pub test: usize,
}

/// Reads `digits.csv.gz` (as shipped in scikit-learn: 64 values then the label per line).
pub fn read(path: &Path) -> Result<Vec<Digit>> {
    let f = std::fs::File::open(path).with_context(|| {
        format!(
            "{}: cannot open (fetch it with `scripts/fetch-assets.sh digits`)",
            path.display()
        )
    })?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut text)
        .with_context(|| format!("{}: not a gzip text file", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let vals: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .with_context(|| format!("{}:{}: not numbers", path.display(), i + 1))?;
        if vals.len() != 65 {
            bail!(
                "{}:{}: {} values, expected 64 pixels and a label",
                path.display(),
                i + 1,
                vals.len()
            );
        }
        let mut pixels = [0u8; 64];
        for (p, v) in pixels.iter_mut().zip(&vals[..64]) {
            if !(0.0..=16.0).contains(v) {
                bail!("{}:{}: pixel {v} outside 0..=16", path.display(), i + 1);
            }
            *p = *v as u8;
        }
        let label = vals[64];
        if !(0.0..=9.0).contains(&label) || label.fract() != 0.0 {
            bail!("{}:{}: label {label} is not a digit", path.display(), i + 1);
        }
        out.push(Digit {
            index: out.len(),
            pixels,
            label: label as u8,
        });
    }
    if out.is_empty() {
        bail!("{}: holds no digits", path.display());
    }
    Ok(out)
}

/// `train`, `valid` or `test` for an image index.
pub fn split_of(index: usize) -> &'static str {
    match fnv1a(format!("digit-{index}").as_bytes()) % 10 {
        0 | 1 => "test",
        2 => "valid",
        _ => "train",
    }
}

/// The caption for a digit.
pub fn caption(label: u8) -> String {
    format!("A handwritten digit {}.", DIGIT_WORDS[label as usize])
}

/// Writes `images/NNNN.png` (8x8 grayscale, dark ink on white as on paper) and
/// `{train,valid,test}.jsonl` with `{"image", "text", "label"}` lines into `out`.
pub fn write_dataset(csv_gz: &Path, out: &Path) -> Result<DigitsSplits> {
    let digits = read(csv_gz)?;
    let img_dir = out.join("images");
    std::fs::create_dir_all(&img_dir)
        .with_context(|| format!("{}: cannot create", img_dir.display()))?;
    let mut files = super::manifest::SplitManifests::default();
    for d in &digits {
        let rel = PathBuf::from("images").join(format!("{:04}.png", d.index));
        let path = out.join(&rel);
        let gray: Vec<u8> = d
            .pixels
            .iter()
            .map(|&v| 255 - ((v as u32 * 255 + 8) / 16) as u8)
            .collect();
        let img = image::GrayImage::from_raw(8, 8, gray).context("8x8 image buffer")?;
        // A killed build never leaves a truncated PNG behind.
        anymal_util::fs::write_atomic_with(&path, |tmp| {
            img.save_with_format(tmp, image::ImageFormat::Png)
                .map_err(anyhow::Error::from)
        })
        .with_context(|| format!("{}: cannot write", path.display()))?;
        let split = split_of(d.index);
        let line = serde_json::json!({
            "image": rel.to_string_lossy(),
            "text": caption(d.label),
            "label": DIGIT_WORDS[d.label as usize],
        });
        files.push(split, &line);
    }
    files.write(out)?;
    Ok(DigitsSplits {
        train: files.count("train"),
        valid: files.count("valid"),
        test: files.count("test"),
    })
}

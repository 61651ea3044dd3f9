//! Decoding every supported format to the right size and colours, EXIF orientation, alpha
//! compositing, the real sample photos, preprocessing modes, and errors (never panics) for
//! broken or foreign files.
mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anymal_encoders::image::{
    load_image, preprocess, to_rgb_f32, ImagePreprocessConfig, ResizeFilter, ResizeMode,
};
use anymal_encoders::Error;
use common::asset;
use image::codecs::bmp::BmpEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ColorType, DynamicImage, ImageBuffer, ImageEncoder, Luma, LumaA, Rgb, RgbImage, Rgba};

/// A fresh folder per test (tests run in parallel).
fn tmp(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anymal-image-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn photo(name: &str) -> PathBuf {
    asset(&format!("data/photos/{name}"), "photos")
}

fn load(path: &Path) -> DynamicImage {
    load_image(path).unwrap_or_else(|e| panic!("{e}"))
}

/// 6x4 test card: red top-left pixel, green top-right, blue bottom-left, white bottom-right,
/// mid gray elsewhere.
fn card() -> RgbImage {
    let mut img = RgbImage::from_pixel(6, 4, Rgb([128, 128, 128]));
    img.put_pixel(0, 0, Rgb([255, 0, 0]));
    img.put_pixel(5, 0, Rgb([0, 255, 0]));
    img.put_pixel(0, 3, Rgb([0, 0, 255]));
    img.put_pixel(5, 3, Rgb([255, 255, 255]));
    img
}

fn check_card(img: &DynamicImage, what: &str) {
    assert_eq!((img.width(), img.height()), (6, 4), "{what}");
    let rgb = img.to_rgb8();
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 0, 0], "{what}");
    assert_eq!(rgb.get_pixel(5, 0).0, [0, 255, 0], "{what}");
    assert_eq!(rgb.get_pixel(0, 3).0, [0, 0, 255], "{what}");
    assert_eq!(rgb.get_pixel(5, 3).0, [255, 255, 255], "{what}");
    assert_eq!(rgb.get_pixel(2, 2).0, [128, 128, 128], "{what}");
}

#[test]
fn lossless_formats_round_trip() {
    let dir = tmp("lossless");
    let c = card();
    let (w, h) = c.dimensions();
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(c.as_raw(), w, h, ColorType::Rgb8.into())
        .unwrap();
    let mut bmp = Vec::new();
    BmpEncoder::new(&mut bmp)
        .write_image(c.as_raw(), w, h, ColorType::Rgb8.into())
        .unwrap();
    let mut webp = Vec::new();
    WebPEncoder::new_lossless(&mut webp)
        .write_image(c.as_raw(), w, h, ColorType::Rgb8.into())
        .unwrap();
    let mut tiff = Vec::new();
    DynamicImage::ImageRgb8(c.clone())
        .write_to(&mut Cursor::new(&mut tiff), image::ImageFormat::Tiff)
        .unwrap();
    for (name, bytes) in [
        ("card.png", &png),
        ("card.bmp", &bmp),
        ("card.webp", &webp),
        ("card.tiff", &tiff),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        check_card(&load(&p), name);
    }
    // The format comes from the bytes: a PNG named .jpg and a WebP without extension decode.
    let p = dir.join("really_a_png.jpg");
    std::fs::write(&p, &png).unwrap();
    check_card(&load(&p), "png named .jpg");
    let p = dir.join("webp_no_extension");
    std::fs::write(&p, &webp).unwrap();
    check_card(&load(&p), "webp without extension");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn png_16bit_keeps_precision() {
    let dir = tmp("png16");
    // 0x8080 / 65535 differs from every 8-bit level: an 8-bit detour would give 128/255.
    let img: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(3, 2, |x, _| Rgb([0x8080, (x as u16) * 1000, 65535]));
    let p = dir.join("deep.png");
    DynamicImage::ImageRgb16(img).save(&p).unwrap();
    let got = load(&p);
    assert_eq!(got.color(), ColorType::Rgb16);
    let rgb = to_rgb_f32(&got);
    let v = rgb.get_pixel(2, 1).0;
    assert!((v[0] - 0x8080 as f32 / 65535.0).abs() < 1e-6, "{v:?}");
    assert!((v[1] - 2000.0 / 65535.0).abs() < 1e-6, "{v:?}");
    assert_eq!(v[2], 1.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn alpha_is_composited_onto_white() {
    let dir = tmp("alpha");
    // Gray + alpha: black fully transparent, black opaque, black half transparent.
    let img: ImageBuffer<LumaA<u8>, Vec<u8>> = ImageBuffer::from_fn(3, 1, |x, _| match x {
        0 => LumaA([0, 0]),
        1 => LumaA([0, 255]),
        _ => LumaA([0, 128]),
    });
    let p = dir.join("gray_alpha.png");
    DynamicImage::ImageLumaA8(img).save(&p).unwrap();
    let got = load(&p);
    assert_eq!(got.color(), ColorType::La8);
    let rgb = to_rgb_f32(&got);
    assert_eq!(rgb.get_pixel(0, 0).0, [1.0; 3], "transparent -> white");
    assert_eq!(rgb.get_pixel(1, 0).0, [0.0; 3], "opaque black stays black");
    let half = rgb.get_pixel(2, 0).0;
    assert!(
        half.iter().all(|&v| (v - 127.0 / 255.0).abs() < 1e-3),
        "{half:?}"
    );

    // RGBA with 16 bits: transparent red is white, opaque red is red.
    let img: ImageBuffer<Rgba<u16>, Vec<u16>> = ImageBuffer::from_fn(2, 1, |x, _| {
        Rgba([65535, 0, 0, if x == 0 { 0 } else { 65535 }])
    });
    let p = dir.join("rgba16.png");
    DynamicImage::ImageRgba16(img).save(&p).unwrap();
    let rgb = to_rgb_f32(&load(&p));
    assert_eq!(rgb.get_pixel(0, 0).0, [1.0; 3]);
    assert_eq!(rgb.get_pixel(1, 0).0, [1.0, 0.0, 0.0]);

    // The real RGBA photo: its background has alpha 110 over stored white; the opaque horse
    // is black. Composited: background stays white, horse black.
    let horse = load(&photo("horse.png"));
    assert_eq!((horse.width(), horse.height()), (400, 328));
    assert_eq!(horse.color(), ColorType::Rgba8);
    let rgb = to_rgb_f32(&horse);
    assert_eq!(rgb.get_pixel(0, 0).0, [1.0; 3]);
    assert_eq!(rgb.get_pixel(200, 164).0, [0.0; 3]);
    std::fs::remove_dir_all(&dir).ok();
}

/// An APP1 Exif segment holding one IFD entry: Orientation (0x0112, SHORT) = `value`.
fn exif_segment(value: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II*\0");
    tiff.extend_from_slice(&8u32.to_le_bytes()); // IFD0 right after the header
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&value.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]); // value field padding
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff);
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    seg.extend(payload);
    seg
}

/// A 40x20 JPEG, blue with a red 8x8 block in the top-left corner, with Exif orientation
/// `orientation` inserted right after SOI.
fn oriented_jpeg(orientation: Option<u16>) -> Vec<u8> {
    let img = RgbImage::from_fn(40, 20, |x, y| {
        if x < 8 && y < 8 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let mut jpg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpg, 95)
        .write_image(img.as_raw(), 40, 20, ColorType::Rgb8.into())
        .unwrap();
    assert_eq!(&jpg[..2], &[0xFF, 0xD8]);
    match orientation {
        None => jpg,
        Some(o) => [&jpg[..2], &exif_segment(o)[..], &jpg[2..]].concat(),
    }
}

fn is_red(img: &RgbImage, x: u32, y: u32) -> bool {
    let p = img.get_pixel(x, y).0;
    p[0] > 200 && p[2] < 60
}

#[test]
fn jpeg_exif_orientation_is_applied() {
    let dir = tmp("exif");
    // No Exif: as stored.
    let p = dir.join("plain.jpg");
    std::fs::write(&p, oriented_jpeg(None)).unwrap();
    let img = load(&p).to_rgb8();
    assert_eq!(img.dimensions(), (40, 20));
    assert!(is_red(&img, 3, 3) && !is_red(&img, 36, 3));

    // 6 = rotate 90 clockwise to display: 20 wide, 40 tall, the red corner now top-right.
    let p = dir.join("rot90.jpg");
    std::fs::write(&p, oriented_jpeg(Some(6))).unwrap();
    let img = load(&p).to_rgb8();
    assert_eq!(img.dimensions(), (20, 40));
    assert!(is_red(&img, 16, 3), "red corner should be top-right");
    assert!(!is_red(&img, 3, 3) && !is_red(&img, 3, 36) && !is_red(&img, 16, 36));

    // 8 = rotate 270 clockwise: the red corner goes bottom-left.
    let p = dir.join("rot270.jpg");
    std::fs::write(&p, oriented_jpeg(Some(8))).unwrap();
    let img = load(&p).to_rgb8();
    assert_eq!(img.dimensions(), (20, 40));
    assert!(is_red(&img, 3, 36) && !is_red(&img, 16, 3));

    // 3 = rotate 180: same size, red corner bottom-right.
    let p = dir.join("rot180.jpg");
    std::fs::write(&p, oriented_jpeg(Some(3))).unwrap();
    let img = load(&p).to_rgb8();
    assert_eq!(img.dimensions(), (40, 20));
    assert!(is_red(&img, 36, 16) && !is_red(&img, 3, 3));
    std::fs::remove_dir_all(&dir).ok();
}

/// The scikit-image photos decode to the sizes and colours PIL reports (lossless PNGs: the
/// exact sum of all RGB values; JPEG: decoders differ by rounding, so the mean within 0.5).
#[test]
fn real_photos() {
    for (name, (w, h), color, sum) in [
        ("chelsea.png", (451, 300), ColorType::Rgb8, 46_802_357u64),
        ("coffee.png", (600, 400), ColorType::Rgb8, 71_003_487),
        ("astronaut.png", (512, 512), ColorType::Rgb8, 90_124_324),
        (
            "motorcycle_left.png",
            (741, 500),
            ColorType::Rgb8,
            119_713_739,
        ),
        ("camera.png", (512, 512), ColorType::L8, 101_497_485),
    ] {
        let img = load(&photo(name));
        assert_eq!((img.width(), img.height()), (w, h), "{name}");
        assert_eq!(img.color(), color, "{name}");
        let s: u64 = img.to_rgb8().as_raw().iter().map(|&v| v as u64).sum();
        assert_eq!(s, sum, "{name}");
    }
    // camera.png is grayscale: every channel of the RGB conversion is the same.
    let cam = to_rgb_f32(&load(&photo("camera.png")));
    assert!(cam.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    assert!(cam
        .get_pixel(0, 0)
        .0
        .iter()
        .all(|v| (v - 200.0 / 255.0).abs() < 1e-6));

    for (name, (w, h), mean) in [
        ("rocket.jpg", (640, 427), 65.277),
        ("retina.jpg", (1411, 1411), 89.698),
    ] {
        let img = load(&photo(name));
        assert_eq!((img.width(), img.height()), (w, h), "{name}");
        let raw = img.to_rgb8().into_raw();
        let m = raw.iter().map(|&v| v as f64).sum::<f64>() / raw.len() as f64;
        assert!((m - mean).abs() < 0.5, "{name}: mean {m} vs PIL {mean}");
    }
}

#[test]
fn gif_first_frame() {
    // 24 frames, 14x25, palette; PIL's first frame has (173, 197, 187) top-left and
    // (52, 52, 40) at (7, 12).
    let img = load(&photo("no_time_for_that_tiny.gif")).to_rgb8();
    assert_eq!(img.dimensions(), (14, 25));
    assert_eq!(img.get_pixel(0, 0).0, [173, 197, 187]);
    assert_eq!(img.get_pixel(7, 12).0, [52, 52, 40]);
}

#[test]
fn tiff_float64_planar_first_page() {
    // scikit-image's multipage_rgb.tif: two 10x10 pages of float64 RGB in separate planes
    // (PIL cannot open it). Page 0's first samples, read straight from the strips:
    // R 0.12229199, G 0.15320348, B 0.75163852.
    let img = load(&photo("multipage_rgb.tif"));
    assert_eq!((img.width(), img.height()), (10, 10));
    let rgb = to_rgb_f32(&img);
    let p = rgb.get_pixel(0, 0).0;
    for (got, want) in p.iter().zip([0.122_291_99f32, 0.153_203_48, 0.751_638_5]) {
        assert!((got - want).abs() < 1e-3, "{p:?}");
    }
}

fn red_and_blue(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, _| {
        if x < w / 3 {
            Rgb([255, 0, 0])
        } else if x < 2 * w / 3 {
            Rgb([0, 255, 0])
        } else {
            Rgb([0, 0, 255])
        }
    }))
}

fn cfg(size: usize, resize: ResizeMode) -> ImagePreprocessConfig {
    ImagePreprocessConfig {
        size,
        resize,
        resize_to: None,
        filter: ResizeFilter::Bilinear,
        mean: [0.5; 3],
        std: [0.25; 3],
    }
}

/// (channel, y, x) of a (1, 3, s, s) batch.
fn px(t: &candle_core::Tensor, c: usize, y: usize, x: usize) -> f32 {
    t.get(0)
        .unwrap()
        .get(c)
        .unwrap()
        .get(y)
        .unwrap()
        .get(x)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn preprocess_modes() {
    // Batch of different sizes and kinds (gray, RGBA, RGB): one (b, 3, s, s) tensor.
    let imgs = vec![
        red_and_blue(90, 30),
        DynamicImage::ImageLuma8(ImageBuffer::from_pixel(7, 13, Luma([255]))),
        DynamicImage::ImageRgba8(ImageBuffer::from_pixel(5, 5, Rgba([0, 0, 0, 0]))),
    ];
    let t = preprocess(&imgs, &cfg(32, ResizeMode::ShortestSideCenterCrop)).unwrap();
    assert_eq!(t.dims(), &[3, 3, 32, 32]);
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // White (gray 255, and transparent black composited) normalizes to (1 - 0.5) / 0.25 = 2.
    assert!(v[3 * 32 * 32..].iter().all(|&x| (x - 2.0).abs() < 1e-5));

    // Shortest side + center crop of a 90x30 red|green|blue strip: only green survives.
    let one = |mode| preprocess(&imgs[..1], &cfg(30, mode)).unwrap();
    let t = one(ResizeMode::ShortestSideCenterCrop);
    for x in [0, 15, 29] {
        assert_eq!(px(&t, 0, 15, x), -2.0, "red channel at x={x}");
        assert_eq!(px(&t, 1, 15, x), 2.0, "green channel at x={x}");
    }

    // Pad to square keeps everything: 30x10 picture centered, 10 rows of padding above and
    // below, which is 0 (the mean colour) after normalization.
    let t = one(ResizeMode::PadToSquare);
    for y in (0..10).chain(20..30) {
        for x in [0, 15, 29] {
            for c in 0..3 {
                assert_eq!(px(&t, c, y, x), 0.0, "padding at ({y}, {x}) channel {c}");
            }
        }
    }
    assert_eq!(px(&t, 0, 15, 2), 2.0, "red on the left");
    assert_eq!(px(&t, 1, 15, 15), 2.0, "green in the middle");
    assert_eq!(px(&t, 2, 15, 27), 2.0, "blue on the right");

    // A tall picture pads left and right instead.
    let tall = DynamicImage::ImageRgb8(RgbImage::from_pixel(10, 30, Rgb([255, 255, 255])));
    let t = preprocess(&[tall], &cfg(30, ResizeMode::PadToSquare)).unwrap();
    assert_eq!(px(&t, 0, 15, 5), 0.0);
    assert_eq!(px(&t, 0, 15, 15), 2.0);
    assert_eq!(px(&t, 0, 15, 25), 0.0);

    // Stretch keeps all three colours, squeezed.
    let t = one(ResizeMode::Stretch);
    assert_eq!(px(&t, 0, 15, 2), 2.0);
    assert_eq!(px(&t, 1, 15, 15), 2.0);
    assert_eq!(px(&t, 2, 15, 27), 2.0);

    // torchvision's eval transform: 256 then 224, on a real photo.
    let img = load(&photo("chelsea.png"));
    let t = preprocess(&[img], &ImagePreprocessConfig::imagenet()).unwrap();
    assert_eq!(t.dims(), &[1, 3, 224, 224]);
}

#[test]
fn preprocess_config_serde_and_validation() {
    let c = ImagePreprocessConfig::imagenet();
    let json = serde_json::to_string(&c).unwrap();
    assert!(json.contains("\"shortest_side_center_crop\""), "{json}");
    let back: ImagePreprocessConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
    // Optional fields default; unknown ones are rejected.
    let minimal = r#"{"size": 64, "resize": "pad_to_square", "mean": [0,0,0], "std": [1,1,1]}"#;
    let m: ImagePreprocessConfig = serde_json::from_str(minimal).unwrap();
    assert_eq!((m.resize_to, m.filter), (None, ResizeFilter::Bilinear));
    let typo =
        r#"{"size": 64, "resize": "pad_to_square", "mean": [0,0,0], "std": [1,1,1], "szie": 3}"#;
    assert!(serde_json::from_str::<ImagePreprocessConfig>(typo).is_err());
    let img = red_and_blue(9, 9);
    for bad in [
        ImagePreprocessConfig {
            size: 0,
            ..c.clone()
        },
        ImagePreprocessConfig {
            resize_to: Some(100),
            ..c.clone()
        },
        ImagePreprocessConfig {
            std: [1.0, 0.0, 1.0],
            ..c.clone()
        },
    ] {
        let e = preprocess(std::slice::from_ref(&img), &bad).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
    assert!(preprocess(&[], &c).is_err());
}

/// Every broken input is an `Err` whose message names the file.
#[test]
fn bad_files_are_errors_naming_the_file() {
    let dir = tmp("bad");
    let c = card();
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(c.as_raw(), 6, 4, ColorType::Rgb8.into())
        .unwrap();
    let jpg = oriented_jpeg(None);
    let real_jpg = std::fs::read(photo("rocket.jpg")).unwrap();
    let real_png = std::fs::read(photo("chelsea.png")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.png", vec![]),
        (
            "random.jpg",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("text.png", b"this is not an image\n".to_vec()),
        ("truncated_small.png", png[..png.len() / 2].to_vec()),
        ("truncated_small.jpg", jpg[..jpg.len() / 2].to_vec()),
        (
            "truncated_photo.jpg",
            real_jpg[..real_jpg.len() / 3].to_vec(),
        ),
        (
            "truncated_photo.png",
            real_png[..real_png.len() / 3].to_vec(),
        ),
        ("header_only.jpg", real_jpg[..200].to_vec()),
        // Bytes of a format the decoder is not built for (a tiny PSD-like header).
        (
            "foreign.psd",
            b"8BPS\x00\x01\x00\x00\x00\x00\x00\x00\x00\x03".to_vec(),
        ),
        // A format `image` recognises but is not built with here (QOI).
        (
            "foreign.qoi",
            b"qoif\x00\x00\x00\x01\x00\x00\x00\x01\x03\x00\x00\x00".to_vec(),
        ),
    ];
    for (name, bytes) in &cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let r = std::panic::catch_unwind(|| load_image(&p));
        let r = r.unwrap_or_else(|_| panic!("{name}: panicked"));
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{name}: decoded without error"));
        let msg = e.to_string();
        assert!(msg.contains(name), "{name}: {msg}");
        if name.starts_with("foreign") || name.starts_with("random") {
            assert!(matches!(e, Error::UnsupportedImage { .. }), "{name}: {msg}");
        }
        println!("{name}: {msg}");
    }
    // A missing file and a folder.
    for p in [dir.join("missing.png"), dir.clone()] {
        let e = load_image(&p).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        assert!(e.to_string().contains(&*p.to_string_lossy()), "{e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

//! The frozen ImageNet CNNs against references that involve no Rust code
//! (`fixtures/image/cnn_reference.json`, written by `fixtures/image/make_reference.py`: Python's
//! pickle + a numpy float64 network + PIL doing torchvision's eval transform), and their top-1
//! on real photos (scikit-image's sample data). Together these check the legacy `.pth` reader,
//! BN folding, the depthwise convolutions, TF "same" padding and the preprocessing.
mod common;

use std::path::PathBuf;
use std::time::Instant;

use anymal_encoders::image::{
    load_image, load_image_encoder, preprocess, EfficientNetLite, ImagePreprocessConfig,
    MobileNetV2,
};
use candle_core::{DType, Device, Tensor, D};
use common::{asset, fixture};
use serde_json::Value;

fn photo(name: &str) -> PathBuf {
    asset(&format!("data/photos/{name}"), "photos")
}

fn reference() -> Value {
    let p = fixture("image/cnn_reference.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with encoders/tests/fixtures/image/make_reference.py",
            p.display()
        )
    });
    serde_json::from_str(&text).expect("cnn_reference.json parses")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The few class names the checks involve (ImageNet-1k indices).
fn class_name(i: usize) -> &'static str {
    match i {
        281 => "tabby",
        282 => "tiger cat",
        283 => "Persian cat",
        284 => "Siamese cat",
        285 => "Egyptian cat",
        287 => "lynx",
        504 => "coffee mug",
        540 => "drilling platform",
        657 => "missile",
        744 => "projectile",
        812 => "space shuttle",
        967 => "espresso",
        968 => "cup",
        _ => "",
    }
}

const CATS: &[usize] = &[281, 282, 283, 284, 285];
const COFFEE: &[usize] = &[967, 968, 504];
const ROCKET: &[usize] = &[657, 744, 812];
const PHOTOS: [&str; 3] = ["chelsea.png", "coffee.png", "rocket.jpg"];

/// The input both sides can make: `x[c, y, x] = 2 sin(0.05 x + 0.09 y + 1.3 c)`, (1, 3, 224, 224).
fn synthetic() -> Tensor {
    let mut v = Vec::with_capacity(3 * 224 * 224);
    for c in 0..3 {
        for y in 0..224 {
            for x in 0..224 {
                v.push((0.05 * x as f64 + 0.09 * y as f64 + 1.3 * c as f64).sin() as f32 * 2.0);
            }
        }
    }
    Tensor::from_vec(v, (1, 3, 224, 224), &Device::Cpu).unwrap()
}

fn top5(logits: &Tensor) -> Vec<(usize, f32)> {
    let probs = candle_nn::ops::softmax(logits, D::Minus1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    idx.into_iter().take(5).map(|i| (i, probs[i])).collect()
}

/// Same pixels in, same numbers out: logits within 2e-3 of the float64 reference.
fn check_synthetic(name: &str, logits: &Tensor, feat_mean: f32) {
    let r = &reference()["networks"][name];
    let want = f32s(&r["synthetic_logits_first10"]);
    let got = logits
        .get(0)
        .unwrap()
        .narrow(0, 0, 10)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() < 2e-3,
            "{name}: logits {got:?} vs reference {want:?}"
        );
    }
    let top: Vec<usize> = top5(&logits.get(0).unwrap()).iter().map(|t| t.0).collect();
    let want_top: Vec<usize> = r["synthetic_top5"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(top, want_top, "{name}: top-5 on the synthetic input");
    let want_mean = r["synthetic_feat_mean"].as_f64().unwrap() as f32;
    assert!(
        (feat_mean - want_mean).abs() < 1e-4,
        "{name}: feature mean {feat_mean} vs {want_mean}"
    );
}

/// Classifies the photos in one batch. Top-1 must be the reference's top-1 with a probability
/// within 0.1 of it (our resize differs from PIL's by a rounding), and in the accepted classes.
fn check_photos(
    name: &str,
    cfg: &ImagePreprocessConfig,
    classify: impl Fn(&Tensor) -> Tensor,
    accepted: [&[usize]; 3],
) {
    let r = &reference()["networks"][name]["photos_top5"];
    let images: Vec<_> = PHOTOS
        .iter()
        .map(|f| load_image(&photo(f)).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let pixels = preprocess(&images, cfg).unwrap();
    assert_eq!(pixels.dims(), &[3, 3, 224, 224]);
    let logits = classify(&pixels);
    assert_eq!(logits.dims(), &[3, 1000]);
    for (i, f) in PHOTOS.iter().enumerate() {
        let top = top5(&logits.get(i).unwrap());
        let shown: Vec<String> = top
            .iter()
            .map(|(c, p)| format!("{c} {} {p:.3}", class_name(*c)))
            .collect();
        println!("{name} {f}: {}", shown.join(" | "));
        let want = &r[*f][0];
        let (want_cls, want_p) = (
            want[0].as_u64().unwrap() as usize,
            want[1].as_f64().unwrap() as f32,
        );
        assert_eq!(
            top[0].0, want_cls,
            "{name} {f}: top-5 {shown:?}, reference top-1 {want_cls}"
        );
        assert!(
            (top[0].1 - want_p).abs() < 0.1,
            "{name} {f}: p {} vs reference {want_p}",
            top[0].1
        );
        assert!(
            top.iter().take(3).any(|(c, _)| accepted[i].contains(c)),
            "{name} {f}: no class of {:?} in the top-3 {shown:?}",
            accepted[i]
        );
    }
}

#[test]
fn mobilenet_v2_matches_reference_and_classifies_photos() {
    let path = asset("models/mobilenet_v2-b0353104.pth", "mobilenet-v2");
    let t = Instant::now();
    let model = MobileNetV2::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    println!("mobilenet_v2 load: {:?}", t.elapsed());
    assert_eq!(model.hidden_size(), 1280);
    assert_eq!(model.id(), "mobilenet_v2-b03531047ffacf1e");
    let x = synthetic();
    let feat_mean = model
        .features(&x)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    check_synthetic("mobilenet_v2", &model.classify(&x).unwrap(), feat_mean);
    // The cat and the espresso are top-1. The rocket on its launch tower is "drilling platform"
    // (540) for this network, in the float64/PIL reference too, with space shuttle second.
    check_photos(
        "mobilenet_v2",
        model.preprocess_config(),
        |x| model.classify(x).unwrap(),
        [CATS, COFFEE, ROCKET],
    );
}

#[test]
fn efficientnet_lite0_matches_reference_and_classifies_photos() {
    let path = asset(
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0",
    );
    let model = EfficientNetLite::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.hidden_size(), 1280);
    assert_eq!(model.id(), "efficientnet_lite0-579344248a93e230");
    let x = synthetic();
    let feat_mean = model
        .features(&x)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    check_synthetic(
        "efficientnet_lite0",
        &model.classify(&x).unwrap(),
        feat_mean,
    );
    // Here all three are top-1 in their classes (rocket: missile).
    let cfg = model.preprocess_config();
    check_photos(
        "efficientnet_lite0",
        cfg,
        |x| model.classify(x).unwrap(),
        [CATS, COFFEE, ROCKET],
    );
    let images: Vec<_> = PHOTOS
        .iter()
        .map(|f| load_image(&photo(f)).unwrap())
        .collect();
    let logits = model.classify(&preprocess(&images, cfg).unwrap()).unwrap();
    for (i, ok) in [CATS, COFFEE, ROCKET].iter().enumerate() {
        let top = top5(&logits.get(i).unwrap());
        assert!(ok.contains(&top[0].0), "{}: top-1 {}", PHOTOS[i], top[0].0);
    }
}

/// Our decode + resize + crop + normalize against PIL's torchvision transform, pixel by pixel
/// on a 4x4 grid of each channel: PIL rounds each resize pass to 8 bits, we resample in f32,
/// so a few 1/255 steps (0.0175 each after dividing by std 0.224) apart at most.
#[test]
fn imagenet_preprocessing_matches_pil() {
    let r = reference();
    let idx = [16usize, 72, 128, 200];
    let mut worst = 0f32;
    for f in PHOTOS {
        let img = load_image(&photo(f)).unwrap();
        let x = preprocess(&[img], &ImagePreprocessConfig::imagenet()).unwrap();
        let want = &r["preprocess"][f];
        for c in 0..3 {
            let ch = x.get(0).unwrap().get(c).unwrap();
            let mean = ch.mean_all().unwrap().to_scalar::<f32>().unwrap();
            let want_mean = want["imagenet_channel_mean"][c].as_f64().unwrap() as f32;
            assert!(
                (mean - want_mean).abs() < 0.01,
                "{f} channel {c}: mean {mean} vs PIL {want_mean}"
            );
            let rows = ch.to_vec2::<f32>().unwrap();
            for (i, &yy) in idx.iter().enumerate() {
                for (j, &xx) in idx.iter().enumerate() {
                    let w = want["imagenet_samples"][c][i][j].as_f64().unwrap() as f32;
                    let d = (rows[yy][xx] - w).abs();
                    worst = worst.max(d);
                    assert!(
                        d < 0.04,
                        "{f} c{c} ({yy},{xx}): {} vs PIL {w}",
                        rows[yy][xx]
                    );
                }
            }
        }
    }
    println!("largest difference from PIL on the sampled pixels: {worst}");
}

/// Through the generic entry point: the grid tokens of a 224 input are 7x7 = 49, and the
/// encoders are told apart by their tensor names.
#[test]
fn load_image_encoder_picks_the_architecture() {
    let img = load_image(&photo("chelsea.png")).unwrap();
    for (file, target, prefix) in [
        ("mobilenet_v2-b0353104.pth", "mobilenet-v2", "mobilenet_v2-"),
        (
            "efficientnet-lite0-57934424.pth",
            "efficientnet-lite0",
            "efficientnet_lite0-",
        ),
    ] {
        let enc = load_image_encoder(&asset(&format!("models/{file}"), target), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(enc.id().starts_with(prefix), "{}", enc.id());
        assert_eq!(enc.hidden_size(), 1280);
        let pixels = preprocess(std::slice::from_ref(&img), enc.preprocess_config()).unwrap();
        let tokens = enc.encode(&pixels).unwrap();
        assert_eq!(tokens.dims(), &[1, 49, 1280]);
        // After ReLU6 every feature lies in [0, 6], and a real photo activates a fair share.
        let v = tokens.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|&x| (0.0..=6.0).contains(&x)));
        assert!(v.iter().filter(|&&x| x > 0.0).count() > v.len() / 20);
        // A non-square input gives a non-square grid (3 x 5), row-major.
        let wide = Tensor::zeros((2, 3, 96, 160), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(enc.encode(&wide).unwrap().dims(), &[2, 15, 1280]);
        // Pixels that are not (b, 3, h, w) are an error, not a panic.
        let gray = Tensor::zeros((1, 1, 224, 224), DType::F32, &Device::Cpu).unwrap();
        assert!(enc.encode(&gray).is_err());
    }
}

/// A file that is no checkpoint, and one that is a checkpoint of something else, are errors
/// naming the file.
#[test]
fn bad_weight_files_are_errors() {
    let dir = std::env::temp_dir().join(format!("anymal-image-pth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"definitely not a pickle").unwrap();
    let e = load_image_encoder(&junk, &Device::Cpu)
        .err()
        .expect("junk must fail")
        .to_string();
    assert!(e.contains("junk.pth"), "{e}");
    // The real MobileNetV2 file cut in half: its storages are truncated.
    let real = std::fs::read(asset("models/mobilenet_v2-b0353104.pth", "mobilenet-v2")).unwrap();
    let cut = dir.join("cut.pth");
    std::fs::write(&cut, &real[..real.len() / 2]).unwrap();
    let e = MobileNetV2::load(&cut, &Device::Cpu)
        .err()
        .expect("truncated must fail")
        .to_string();
    assert!(e.contains("cut.pth") && e.contains("truncated"), "{e}");
    // EfficientNet weights offered as MobileNetV2: a missing tensor, named.
    let eff = asset(
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0",
    );
    let e = MobileNetV2::load(&eff, &Device::Cpu)
        .err()
        .expect("wrong net must fail")
        .to_string();
    assert!(
        e.contains("efficientnet-lite0") && e.contains("features.0.0.weight"),
        "{e}"
    );
    let missing = dir.join("missing.pth");
    let e = load_image_encoder(&missing, &Device::Cpu)
        .err()
        .expect("missing must fail")
        .to_string();
    assert!(e.contains("missing.pth"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Time per image (warm), printed for the report; the loose bound only catches a pathological
/// slowdown (candle's grouped conv2d on the depthwise layers takes several times longer).
#[test]
fn mobilenet_v2_speed() {
    let path = asset("models/mobilenet_v2-b0353104.pth", "mobilenet-v2");
    let model = MobileNetV2::load(&path, &Device::Cpu).unwrap();
    let x = synthetic();
    model.encode(&x).unwrap();
    let n = 5;
    let t = Instant::now();
    for _ in 0..n {
        model.encode(&x).unwrap();
    }
    let per = t.elapsed() / n;
    println!("mobilenet_v2 encode, 1x3x224x224 on CPU: {per:?} per image");
    assert!(per.as_secs_f64() < 2.0, "{per:?}");
}

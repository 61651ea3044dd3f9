//! The frozen Whisper tiny.en encoder against CTranslate2 (what faster-whisper runs) on the same
//! fetched model.bin and real speech.
mod common;

use anymal_encoders::audio::ct2::{parse_model_bin, read_model_bin};
use anymal_encoders::audio::whisper::{resolve_encoder_ref_in, Context};
use anymal_encoders::audio::{resolve_encoder_ref, WhisperEncoder};
use anymal_encoders::Error;
use anymal_util::testing::max_abs_diff;
use candle_core::{Device, IndexOp};
use common::{f32s, reference, repeat_16k};

fn encoder() -> WhisperEncoder {
    let dir = resolve_encoder_ref("whisper-tiny-en").unwrap_or_else(|e| panic!("{e}"));
    WhisperEncoder::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn matches_ctranslate2() {
    let enc = encoder();
    assert_eq!((enc.hidden_size(), enc.n_mels()), (384, 80));
    assert!(enc.id().starts_with("whisper-384-4-"), "{}", enc.id());
    let doc = reference();
    let clips: Vec<(String, Vec<f32>)> = doc["clips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let f = c["file"].as_str().unwrap().to_string();
            let x = repeat_16k(&f);
            (f, x)
        })
        .collect();
    let refs: Vec<&[f32]> = clips.iter().map(|(_, x)| x.as_slice()).collect();
    let t0 = std::time::Instant::now();
    let outs = enc.encode_batch(&refs).unwrap();
    eprintln!("encode_batch of {} clips: {:?}", refs.len(), t0.elapsed());
    for ((name, x), (clip, out)) in clips
        .iter()
        .zip(doc["clips"].as_array().unwrap().iter().zip(&outs))
    {
        let mut row0 = 0;
        let want_total: usize = clip["windows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["encoder"]["kept_frames"].as_u64().unwrap() as usize)
            .sum();
        assert_eq!(out.dims(), &[want_total, 384], "{name}");
        assert_eq!(enc.frames_for(x.len()), want_total);
        for w in clip["windows"].as_array().unwrap() {
            let e = &w["encoder"];
            let keep = e["kept_frames"].as_u64().unwrap() as usize;
            let mine = out.narrow(0, row0, keep).unwrap();
            let scale = e["kept_abs_max"].as_f64().unwrap() as f32;
            let mut worst = 0f32;
            for (f, vals) in e["frames"]
                .as_array()
                .unwrap()
                .iter()
                .zip(e["frame_values"].as_array().unwrap())
            {
                let got = mine
                    .i(f.as_u64().unwrap() as usize)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for (a, b) in got.iter().zip(f32s(vals)) {
                    worst = worst.max((a - b).abs());
                }
            }
            let means = mine.mean(1).unwrap().to_vec1::<f32>().unwrap();
            for (a, b) in means.iter().zip(f32s(&e["kept_frame_means"])) {
                worst = worst.max((a - b).abs());
            }
            eprintln!(
                "{name} @{}: max abs err {worst:.3e} (outputs up to {scale:.2})",
                w["start"]
            );
            // Outputs reach ~10-20 in magnitude; candle's tanh-GELU vs CTranslate2's erf-GELU
            // and f32 summation order leave ~1e-3 relative.
            assert!(
                worst < 2e-3 * scale,
                "{name}: max abs error {worst} vs scale {scale}"
            );
            row0 += keep;
        }
        // encode() of a single clip agrees with the batched path.
        if x.len() < 480000 {
            let single = enc.encode(x).unwrap();
            let d = max_abs_diff(&single, out);
            assert!(d < 1e-4, "{name}: encode vs encode_batch {d}");
        }
    }
}

#[test]
fn short_names_and_errors() {
    let empty = std::path::Path::new("/nonexistent-anymal-cache");
    let e = resolve_encoder_ref_in("whisper-base", empty).unwrap_err();
    assert!(
        e.to_string()
            .contains("scripts/fetch-assets.sh whisper-base"),
        "{e}"
    );
    let e = resolve_encoder_ref_in("whisper-tiny-en", empty).unwrap_err();
    assert!(
        e.to_string()
            .contains("scripts/fetch-assets.sh whisper-tiny-en"),
        "{e}"
    );
    assert!(resolve_encoder_ref("/nonexistent/encoder").is_err());
    let e = WhisperEncoder::load(std::path::Path::new("/nonexistent/model.bin"), &Device::Cpu);
    assert!(e.is_err());
}

#[test]
fn ct2_reader_reads_the_real_file_and_refuses_broken_ones() {
    let dir = resolve_encoder_ref("whisper-tiny-en").unwrap();
    let path = dir.join("model.bin");
    let m = read_model_bin(&path, &Device::Cpu).unwrap();
    assert_eq!(
        (m.binary_version, m.spec.as_str(), m.spec_revision),
        (6, "WhisperSpec", 3)
    );
    // Whisper tiny: 6 heads (stored as an int16 scalar), fused qkv of 3 x 384 rows.
    let heads = m.variables["encoder/num_heads"].to_vec0::<i64>().unwrap();
    assert_eq!(heads, 6);
    assert_eq!(
        m.variables["encoder/layer_0/self_attention/linear_0/weight"].dims(),
        &[1152, 384]
    );
    // The alias in the file resolves to the same tensor.
    assert_eq!(
        m.variables["decoder/projection/weight"].dims(),
        m.variables["decoder/embeddings/weight"].dims()
    );

    let bytes = std::fs::read(&path).unwrap();
    let fake = std::path::Path::new("cut/model.bin");
    for cut in [3usize, 40, 1000, bytes.len() - 1] {
        let e = parse_model_bin(&bytes[..cut], fake, &Device::Cpu, |_| true).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, Error::Model { .. })
                && msg.contains("cut/model.bin")
                && msg.contains("truncated"),
            "{msg}"
        );
    }
    let mut bad = bytes[..64].to_vec();
    bad[0] = 99;
    let e = parse_model_bin(&bad, fake, &Device::Cpu, |_| true).unwrap_err();
    assert!(e.to_string().contains("binary version 99"), "{e}");
}

#[test]
fn clip_context_encodes_the_clips_length_and_is_independent_of_its_batch() {
    let window = encoder();
    let clip = encoder().with_context(Context::Clip);
    assert_eq!(clip.id(), format!("{}-clip", window.id()));
    // 1.3 s, 2.9 s and 31 s (two windows) of a real clip, repeated to length.
    let doc = reference();
    let file = doc["clips"][0]["file"].as_str().unwrap().to_string();
    let long = repeat_16k(&file);
    let long: Vec<f32> = long.iter().cycle().take(16_000 * 31).copied().collect();
    let (a, b) = (&long[..20_800], &long[..46_400]);
    let outs = clip.encode_batch(&[a, b, &long]).unwrap();
    // Frames kept are the same as the window context's: one per 20 ms of audio.
    for (o, x) in outs.iter().zip([a, b, &long[..]]) {
        assert_eq!(o.dim(0).unwrap(), window.frames_for(x.len()));
    }
    // A clip's features do not depend on the clips encoded beside it.
    let alone = clip.encode_batch(&[b]).unwrap();
    let d = max_abs_diff(&alone[0], &outs[1]);
    assert!(d < 1e-4, "batch changed a clip's features by {d}");
    // They are close to, but not the same as, the 30 s window's (a shorter context).
    let full = window.encode_batch(&[b]).unwrap();
    let d = max_abs_diff(&full[0], &outs[1]);
    assert!(d > 1e-3, "clip and window contexts gave the same features");
}

/// `full_window` keeps all 1500 frames of every window, in llama.cpp's windows: the clip's own
/// frames equal the `window` context's (the same forward), the rest encode the silence after
/// it, and a clip within 0.01 s of 30 s gets a second, silent, window as in `mtmd`.
#[test]
fn full_window_keeps_every_frame_in_llama_cpp_windows() {
    let window = encoder();
    let full = encoder().with_context(Context::FullWindow);
    assert_eq!(full.id(), format!("{}-full", window.id()));
    assert_eq!(
        encoder()
            .with_context(Context::FullWindow)
            .with_context(Context::Clip)
            .id(),
        format!("{}-clip", window.id())
    );
    let doc = reference();
    let file = doc["clips"][0]["file"].as_str().unwrap().to_string();
    let x = repeat_16k(&file);
    let x: Vec<f32> = x.iter().cycle().take(46_400).copied().collect();
    let outs = full.encode_batch(&[&x]).unwrap();
    assert_eq!(outs[0].dims(), &[1500, 384]);
    assert_eq!(full.frames_for(x.len()), 1500);
    let kept = window.encode_batch(&[&x]).unwrap();
    let n = kept[0].dim(0).unwrap();
    assert_eq!(n, 145);
    let d = max_abs_diff(&kept[0], &outs[0].narrow(0, 0, n).unwrap());
    assert!(d < 1e-4, "full_window changed the clip's own frames by {d}");
    // mtmd's window count: 479,839 samples -> 1 window, 479,840 -> 2, 30 s + 1 -> 2.
    assert_eq!(full.frames_for(479_839), 1500);
    assert_eq!(full.frames_for(479_840), 3000);
    assert_eq!(full.frames_for(480_001), 3000);
    assert_eq!(window.frames_for(479_840), 1500);
}

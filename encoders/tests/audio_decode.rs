//! Decoding real files in every supported format, and errors (not panics) for broken ones.
mod common;

use anymal_encoders::audio::{decode_file, load_audio_16k};
use anymal_encoders::Error;
use common::{fixture, speech_clip};

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Frequency from upward zero crossings over `x` sampled at `sr`.
fn zero_cross_hz(x: &[f32], sr: u32) -> f64 {
    let ups: Vec<usize> = (1..x.len())
        .filter(|&i| x[i - 1] < 0.0 && x[i] >= 0.0)
        .collect();
    let span = (ups[ups.len() - 1] - ups[0]) as f64 / sr as f64;
    (ups.len() - 1) as f64 / span
}

/// A 1 s, 440 Hz, amplitude-0.5 tone: checks rate, length (within `len_tol` of 44100, the
/// slack lossy codecs' framing needs), pitch and level on the middle half second.
fn check_tone(name: &str, len_tol: usize, level_tol: f64) {
    let d = decode_file(&fixture(&format!("audio/{name}"))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.sample_rate, 44100, "{name}");
    assert_eq!(d.channels, 1, "{name}");
    let n = d.samples.len();
    assert!(n.abs_diff(44100) <= len_tol, "{name}: {n} samples");
    let mid = &d.samples[11025..33075];
    let hz = zero_cross_hz(mid, 44100);
    assert!((hz - 440.0).abs() < 1.0, "{name}: {hz} Hz");
    let level = rms(mid) * 2f64.sqrt();
    assert!((level - 0.5).abs() < level_tol, "{name}: amplitude {level}");
}

#[test]
fn pcm_wav_all_sample_formats() {
    // Lossless: the exact length; u8 carries 1/256 quantisation noise.
    for f in [
        "tone440_s16.wav",
        "tone440_s24.wav",
        "tone440_s32.wav",
        "tone440_f32.wav",
    ] {
        check_tone(f, 0, 1e-3);
    }
    check_tone("tone440_u8.wav", 0, 1e-2);
}

#[test]
fn flac() {
    check_tone("tone440.flac", 0, 1e-3);
}

#[test]
fn lossy_codecs_with_gapless_trim() {
    // MP3 (LAME header) and Vorbis state their delay/padding, which symphonia trims: the
    // length is exact up to a handful of samples.
    // Levels: ffmpeg decodes these very files to amplitudes 0.475 (MP3, LAME at 64 kb/s),
    // 0.503 (Vorbis) and 0.497 (AAC); 0.03 covers the encoders, not the decoder.
    check_tone("tone440.mp3", 8, 0.03);
    check_tone("tone440.ogg", 8, 0.03);
    // AAC in MP4: the priming is in an edit list symphonia does not apply (one 1024 frame).
    check_tone("tone440.m4a", 2048, 0.03);
}

#[test]
fn stereo_is_averaged_to_mono() {
    for f in ["stereo_left440.wav", "stereo_left440.flac"] {
        let d = decode_file(&fixture(&format!("audio/{f}"))).unwrap();
        assert_eq!(d.channels, 2);
        assert_eq!(d.samples.len(), 44100);
        // Left 0.5 sine, right silence: their mean is a 0.25 sine.
        let level = rms(&d.samples[11025..33075]) * 2f64.sqrt();
        assert!((level - 0.25).abs() < 1e-3, "{f}: {level}");
    }
}

#[test]
fn real_speech_wav_8k() {
    // Asterisk's prompt: 8 kHz, 16-bit mono, 25276 frames per its header (3.1595 s).
    let d = decode_file(&speech_clip("conf-onlyperson.wav")).unwrap();
    assert_eq!(
        (d.sample_rate, d.channels, d.samples.len()),
        (8000, 1, 25276)
    );
    assert!(d.samples.iter().all(|s| (-1.0..1.0).contains(s)));
    let x = load_audio_16k(&speech_clip("conf-onlyperson.wav")).unwrap();
    assert_eq!(x.len(), 50552);
}

#[test]
fn other_rates_resampled_to_16k() {
    for (f, sr) in [
        ("tone440_8k.wav", 8000),
        ("tone440_48k.wav", 48000),
        ("tone440.flac", 44100),
    ] {
        let p = fixture(&format!("audio/{f}"));
        assert_eq!(decode_file(&p).unwrap().sample_rate, sr);
        let x = load_audio_16k(&p).unwrap();
        assert_eq!(x.len(), 16000, "{f}");
        let hz = zero_cross_hz(&x[4000..12000], 16000);
        assert!((hz - 440.0).abs() < 1.0, "{f}: {hz}");
        let level = rms(&x[4000..12000]) * 2f64.sqrt();
        assert!((level - 0.5).abs() < 5e-3, "{f}: {level}");
    }
}

fn err_of(name: &str) -> Error {
    match decode_file(&fixture(&format!("audio/{name}"))) {
        Ok(d) => panic!(
            "{name} decoded to {} samples, expected an error",
            d.samples.len()
        ),
        Err(e) => e,
    }
}

#[test]
fn opus_is_an_unsupported_codec() {
    let e = err_of("tone440.opus");
    assert!(matches!(e, Error::UnsupportedCodec { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("unsupported codec") && msg.contains("tone440.opus"),
        "{msg}"
    );
}

#[test]
fn zero_length_clip() {
    let e = err_of("bad_zero_length.wav");
    assert!(matches!(e, Error::Empty { .. }), "{e:?}");
    assert!(e.to_string().contains("contains no audio samples"));
    let e = err_of("bad_header_only.wav");
    assert!(e.to_string().contains("bad_header_only.wav"), "{e}");
}

#[test]
fn broken_headers_are_errors() {
    for f in [
        "bad_wrong_header.wav",
        "bad_format_tag.wav",
        "bad_not_audio.wav",
        "bad_empty.wav",
        "bad_truncated.flac",
    ] {
        let e = err_of(f);
        assert!(
            matches!(e, Error::Corrupt { .. } | Error::UnsupportedCodec { .. }),
            "{f}: {e:?}"
        );
        assert!(
            e.to_string().contains(f),
            "{f}: message does not name the file: {e}"
        );
    }
}

#[test]
fn truncated_data_is_an_error() {
    // The header promises 1 s but the file stops 20000 bytes in: half a clip is not the clip.
    let e = decode_file(&fixture("audio/bad_truncated.wav")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("bad_truncated.wav") && msg.contains("truncated") && msg.contains("1.00 s"),
        "{msg}"
    );
}

#[test]
fn missing_file() {
    let e = decode_file(std::path::Path::new("/nonexistent/clip.wav")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/clip.wav"));
}

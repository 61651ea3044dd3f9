//! Opening media with FFmpeg, for both the frame decoder and the soundtrack decoder: the
//! library's one-time set-up, the container (with errors that tell a missing, empty, truncated
//! or non-media file apart, which FFmpeg's own codes do not), a stream's decoder, and the loop
//! that pulls decoded frames out of it. Kept in one place so the video and audio paths report
//! the same file problems the same way.

use std::ops::DerefMut;
use std::path::Path;
use std::sync::OnceLock;

use ffmpeg_next as ffmpeg;

use ffmpeg::format::context::Input;
use ffmpeg::Stream;

use crate::error::{Error, Result};

/// Initialises FFmpeg once per process and turns its own logging down to errors: the
/// decoder's warnings about a damaged stream reach the user through our errors instead.
fn init() -> std::result::Result<(), ffmpeg::Error> {
    static INIT: OnceLock<std::result::Result<(), ffmpeg::Error>> = OnceLock::new();
    *INIT.get_or_init(|| {
        let r = ffmpeg::init();
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
        r
    })
}

/// Opens `path` as a container and reads its stream headers.
pub(crate) fn open_input(path: &Path) -> Result<Input> {
    init().map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        what: format!("FFmpeg failed to initialise: {e}"),
    })?;
    // Checked here rather than left to FFmpeg: its message for a missing file is a bare
    // "No such file or directory", and a directory opens as an empty "file".
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("is a directory"),
        });
    }
    if meta.len() == 0 {
        return Err(Error::NotMedia {
            path: path.to_path_buf(),
            what: "the file is empty".into(),
        });
    }
    ffmpeg::format::input(path).map_err(|e| match e {
        // An MP4/MOV cut short before its index (the `moov` box, often written last) fails
        // the same way as random bytes; its `ftyp` box tells them apart.
        ffmpeg::Error::InvalidData if starts_like_mp4(path) => Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("an MP4/MOV file without a readable index (moov box): truncated? ({e})"),
        },
        ffmpeg::Error::InvalidData | ffmpeg::Error::DemuxerNotFound => Error::NotMedia {
            path: path.to_path_buf(),
            what: format!("FFmpeg reads it as no known container ({e})"),
        },
        // The file opened above, so EINVAL is the demuxer refusing its bytes (random bytes
        // named .mp3), not a failed read.
        ffmpeg::Error::Other { errno } if errno == EINVAL => Error::NotMedia {
            path: path.to_path_buf(),
            what: format!("FFmpeg cannot read it as media ({e})"),
        },
        ffmpeg::Error::Other { errno } => Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(errno),
        },
        other => Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("cannot read the container: {other}"),
        },
    })
}

/// EINVAL, the same number on Linux, macOS and the BSDs.
const EINVAL: i32 = 22;

/// Whether the file begins with an ISO-BMFF `ftyp` box (MP4, MOV, M4A, 3GP).
fn starts_like_mp4(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[4..8] == b"ftyp"
}

/// The codec context of `stream`, from the parameters the container states for it.
pub(crate) fn codec_context(stream: &Stream, path: &Path) -> Result<ffmpeg::codec::Context> {
    ffmpeg::codec::Context::from_parameters(stream.parameters()).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        what: format!("bad codec parameters: {e}"),
    })
}

/// The error for a `medium` ("video", "audio") decoder that would not open: a codec the
/// installed FFmpeg lacks is unsupported, anything else a damaged stream.
pub(crate) fn decoder_open_error(
    e: ffmpeg::Error,
    codec_id: ffmpeg::codec::Id,
    medium: &str,
    path: &Path,
) -> Error {
    match e {
        // An id of None: the container names a codec (a WAV format tag, a FourCC) that
        // FFmpeg does not know at all.
        ffmpeg::Error::DecoderNotFound if codec_id == ffmpeg::codec::Id::None => {
            Error::UnsupportedCodec {
                path: path.to_path_buf(),
                what: format!("the {medium} stream's codec is not one FFmpeg knows"),
            }
        }
        ffmpeg::Error::DecoderNotFound => Error::UnsupportedCodec {
            path: path.to_path_buf(),
            what: format!("no {codec_id:?} {medium} decoder in the installed FFmpeg"),
        },
        other => Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("cannot open the {codec_id:?} decoder: {other}"),
        },
    }
}

/// Hands every frame `decoder` has ready to `take` (through `frame`, which it refills), until
/// the decoder wants more input or is drained, or `take` answers that it wants no more frames.
/// A frame the decoder fails on is noted in `problem` (the first one only) and skipped.
pub(crate) fn receive_frames<F, E>(
    decoder: &mut ffmpeg::decoder::Opened,
    frame: &mut F,
    problem: &mut Option<String>,
    mut take: impl FnMut(&mut F) -> std::result::Result<bool, E>,
) -> std::result::Result<(), E>
where
    F: DerefMut<Target = ffmpeg::Frame>,
{
    // Each failed call consumes the broken frame; the cap only guards against a decoder
    // that keeps failing without moving on.
    let mut failures = 0;
    loop {
        match decoder.receive_frame(frame) {
            Ok(()) => {
                if !take(frame)? {
                    break;
                }
            }
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => break,
            Err(e) => {
                problem.get_or_insert_with(|| format!("the decoder failed on a frame ({e})"));
                failures += 1;
                if failures > 64 {
                    break;
                }
            }
        }
    }
    Ok(())
}

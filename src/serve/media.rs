//! Media sent inline in a request (data URLs, base64 fields) decoded into files, since every
//! encoder reads files. The files live in one temporary folder per server, named by a counter
//! (never reused while the server runs: the feature source remembers content keys by path), and
//! each is removed when the request that brought it is done.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use super::error::ApiError;

/// Standard and URL-safe alphabets, padding optional: clients differ.
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub struct MediaStore {
    dir: tempfile::TempDir,
    next: AtomicU64,
    /// Largest decoded file accepted, in bytes.
    pub max_bytes: usize,
}

/// A decoded file; removed on drop.
#[derive(Debug)]
pub struct TempMedia {
    pub path: PathBuf,
}

impl Drop for TempMedia {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl MediaStore {
    pub fn new(max_bytes: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("anymal-serve-")
            .tempdir()
            .map_err(|e| {
                anyhow::anyhow!("cannot create a temporary folder for request media: {e}")
            })?;
        Ok(Self {
            dir,
            next: AtomicU64::new(0),
            max_bytes,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Decode `data` (base64) into a new file with extension `ext`; `what` names the part in
    /// errors.
    pub fn store_base64(&self, data: &str, ext: &str, what: &str) -> Result<TempMedia, ApiError> {
        let bytes = decode_base64(data, self.max_bytes, what)?;
        self.store(&bytes, ext)
    }

    /// Write `bytes` into a new file with extension `ext` (letters and digits only).
    pub fn store(&self, bytes: &[u8], ext: &str) -> Result<TempMedia, ApiError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("{n}.{ext}"));
        std::fs::write(&path, bytes).map_err(|e| {
            ApiError::internal(format!(
                "cannot write request media to {}: {e}",
                path.display()
            ))
        })?;
        Ok(TempMedia { path })
    }
}

/// A `data:[<type>/<subtype>][;params];base64,<data>` URL: the media type and the decoded
/// bytes. `what` names the part in errors.
pub fn parse_data_url<'a>(url: &'a str, what: &str) -> Result<(&'a str, &'a str), ApiError> {
    let lower: String = url.chars().take(8).collect::<String>().to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https:/") {
        return Err(ApiError::invalid(
            "remote_url_not_supported",
            format!("{what}: remote URLs are not fetched; send the file inline as a data URL (data:image/png;base64,...)"),
        ));
    }
    if !lower.starts_with("data:") {
        return Err(ApiError::invalid(
            "invalid_url",
            format!("{what}: only data URLs are accepted (data:image/png;base64,...)"),
        ));
    }
    let rest = &url[5..];
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(ApiError::invalid(
            "invalid_url",
            format!("{what}: a data URL needs a ',' before its data"),
        ));
    };
    let mut params = meta.split(';');
    let mime = params.next().unwrap_or("").trim();
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(ApiError::invalid(
            "invalid_url",
            format!("{what}: only base64 data URLs are accepted (data:<type>;base64,...)"),
        ));
    }
    Ok((mime, data))
}

/// The file extension for a media type (`image/png` -> `png`): decoders pick the container by
/// it. Unknown subtypes are kept when they are a plain word, else `bin` (content sniffing).
pub fn extension_for_mime(mime: &str) -> String {
    let sub = mime
        .split_once('/')
        .map(|(_, s)| s)
        .unwrap_or("")
        .to_ascii_lowercase();
    let sub = sub.strip_prefix("x-").unwrap_or(&sub);
    match sub {
        "jpeg" | "pjpeg" => "jpg".into(),
        "svg+xml" => "svg".into(),
        "mpeg" | "mpeg3" | "mp3" if mime.to_ascii_lowercase().starts_with("audio") => "mp3".into(),
        "wave" | "wav" | "vnd.wave" => "wav".into(),
        "quicktime" => "mov".into(),
        "matroska" => "mkv".into(),
        "msvideo" => "avi".into(),
        "m4a" | "mp4a-latm" => "m4a".into(),
        s => sanitize_extension(s).unwrap_or_else(|| "bin".into()),
    }
}

/// `format` fields become file extensions: only short plain words.
pub fn sanitize_extension(format: &str) -> Option<String> {
    let f = format.trim().trim_start_matches('.').to_ascii_lowercase();
    (!f.is_empty() && f.len() <= 10 && f.chars().all(|c| c.is_ascii_alphanumeric())).then_some(f)
}

/// Base64 (standard or URL-safe, padding optional, line breaks allowed) into bytes, refusing
/// more than `max_bytes` before decoding.
pub fn decode_base64(data: &str, max_bytes: usize, what: &str) -> Result<Vec<u8>, ApiError> {
    let compact: String;
    let data = if data.bytes().any(|b| b.is_ascii_whitespace()) {
        compact = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        compact.as_str()
    } else {
        data
    };
    if data.is_empty() {
        return Err(ApiError::invalid(
            "invalid_media",
            format!("{what}: the data is empty"),
        ));
    }
    let estimate = data.len() / 4 * 3;
    if estimate > max_bytes {
        return Err(ApiError::too_large(format!(
            "{what}: {:.1} MB decoded, over the limit of {:.1} MB",
            estimate as f64 / 1e6,
            max_bytes as f64 / 1e6
        )));
    }
    STANDARD
        .decode(data)
        .or_else(|e| URL_SAFE.decode(data).map_err(|_| e))
        .map_err(|e| {
            ApiError::invalid(
                "invalid_base64",
                format!("{what}: the data is not valid base64: {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_base64_and_extensions() {
        let (mime, data) = parse_data_url("data:image/png;base64,aGVsbG8=", "p").unwrap();
        assert_eq!((mime, data), ("image/png", "aGVsbG8="));
        assert_eq!(decode_base64(data, 100, "p").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8", 100, "p").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs\nbG8=", 100, "p").unwrap(), b"hello");
        assert_eq!(decode_base64("_-8", 100, "p").unwrap(), vec![0xff, 0xef]);
        let e = decode_base64("not base64!!", 100, "messages[0].content[1]").unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(
            e.message.starts_with("messages[0].content[1]"),
            "{}",
            e.message
        );
        assert_eq!(
            decode_base64(&"A".repeat(400), 100, "p")
                .unwrap_err()
                .status
                .as_u16(),
            413
        );
        let e = parse_data_url("https://example.com/cat.png", "p").unwrap_err();
        assert!(
            e.message.contains("remote URLs are not fetched"),
            "{}",
            e.message
        );
        assert!(parse_data_url("data:image/png,abc", "p").is_err());
        assert!(parse_data_url("file:///etc/passwd", "p").is_err());
        assert_eq!(extension_for_mime("image/jpeg"), "jpg");
        assert_eq!(extension_for_mime("audio/mpeg"), "mp3");
        assert_eq!(extension_for_mime("audio/x-wav"), "wav");
        assert_eq!(extension_for_mime("image/../../x"), "bin");
        assert_eq!(extension_for_mime(""), "bin");
        assert_eq!(sanitize_extension("WAV").as_deref(), Some("wav"));
        assert_eq!(sanitize_extension("../x"), None);
    }

    #[test]
    fn files_are_unique_and_removed_on_drop() {
        let store = MediaStore::new(1000).unwrap();
        let a = store.store_base64("aGVsbG8=", "wav", "p").unwrap();
        let b = store.store(b"x", "wav").unwrap();
        assert_ne!(a.path, b.path);
        assert_eq!(std::fs::read(&a.path).unwrap(), b"hello");
        let p = a.path.clone();
        drop(a);
        assert!(!p.exists());
    }
}

//! Hex sha256 of a file, read in 1 MiB pieces (weight files and optimizer states can be
//! larger than is worth holding in memory), and of bytes in memory. The feature cache's
//! content keys, the encoders' ids and the checkpoints' checksums all come from here.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Hex sha256 of the file at `path`.
pub fn file_hex(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(to_hex(&h.finalize()))
}

/// Hex sha256 of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

fn to_hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_bytes_agree_with_the_known_digest() {
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hex(b"abc"), want);
        let p = std::env::temp_dir().join(format!("anymal-sha256-{}", std::process::id()));
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(file_hex(&p).unwrap(), want);
        std::fs::remove_file(&p).unwrap();
    }
}

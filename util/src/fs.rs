//! Files: atomic writes, the cache folder, relative paths.

use std::io;
use std::path::{Component, Path, PathBuf};

/// The anymal cache folder: `$ANYMAL_CACHE`, else `~/.cache/anymal`. Fetched models, corpora
/// and the feature cache live below it.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ANYMAL_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("anymal")
}

/// The temporary sibling a file is written to before it is renamed into place: same folder
/// (a rename across file systems is not atomic), a name no reader looks for.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Write `path` through `write`, which is handed a temporary sibling to fill, then rename it
/// into place: a reader (or a run resumed after a kill) sees the old file or the new one,
/// never half of one. The temporary file is removed when `write` or the rename fails.
pub fn write_atomic_with<E: From<io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temporary_sibling(path);
    let done = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(E::from));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Write `bytes` to `path` atomically (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |tmp| std::fs::write(tmp, bytes))
}

/// `target` expressed relative to the folder `base` (both absolute and normalized); `target`
/// itself when the two share nothing below the root (`/tmp/x` and `/root/.cache/...`), where a
/// relative path would climb to the root and break when either moves.
pub fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<Component> = target.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let only_root = t[..common]
        .iter()
        .all(|c| matches!(c, Component::RootDir | Component::Prefix(_)));
    if only_root {
        return target.to_path_buf();
    }
    let mut rel = PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c.as_os_str());
    }
    rel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_only_below_the_root() {
        assert_eq!(
            relative_to(Path::new("/a/b/c/x.wav"), Path::new("/a/b/d")),
            PathBuf::from("../c/x.wav")
        );
        assert_eq!(
            relative_to(Path::new("/a/b/x.wav"), Path::new("/a/b")),
            PathBuf::from("x.wav")
        );
        assert_eq!(
            relative_to(Path::new("/tmp/x.wav"), Path::new("/root/.cache")),
            PathBuf::from("/tmp/x.wav")
        );
    }

    #[test]
    fn atomic_writes_replace_and_leave_nothing_behind_on_failure() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("anymal-util-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let p = dir.join("f.json");
        write_atomic(&p, b"one")?;
        write_atomic(&p, b"two")?;
        assert_eq!(std::fs::read(&p)?, b"two");
        let failed: io::Result<()> = write_atomic_with(&p, |tmp| {
            std::fs::write(tmp, b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&p)?, b"two", "a failed write keeps the old file");
        assert_eq!(std::fs::read_dir(&dir)?.count(), 1, "no temporary file left");
        std::fs::remove_dir_all(&dir)
    }
}

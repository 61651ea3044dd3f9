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

/// Write `bytes` to `path` atomically (see [`write_atomic_with`]). The error names the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |tmp| std::fs::write(tmp, bytes))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: cannot write: {e}", path.display())))
}

/// `p` made absolute (against the current folder) and normalized lexically: `.` dropped, `..`
/// taking the component before it away. Links are not followed: the path need not exist.
pub fn absolute_normalized(p: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(p)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: cannot resolve: {e}", p.display())))?;
    Ok(normalize(&abs))
}

/// `p` with `.` dropped and each `..` taking the component before it away (lexically).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c.as_os_str()),
        }
    }
    out
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
    fn relative_paths() {
        assert_eq!(
            relative_to(Path::new("/a/b/c/x.wav"), Path::new("/a/d")),
            PathBuf::from("../b/c/x.wav")
        );
        assert_eq!(
            relative_to(Path::new("/a/x.wav"), Path::new("/a")),
            PathBuf::from("x.wav")
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./x.wav")),
            PathBuf::from("/a/c/x.wav")
        );
        assert_eq!(
            relative_to(Path::new("/a/b/x.wav"), Path::new("/a/d")),
            PathBuf::from("../b/x.wav")
        );
        assert_eq!(
            relative_to(Path::new("/root/c/x.wav"), Path::new("/tmp/out")),
            PathBuf::from("/root/c/x.wav")
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
        assert_eq!(
            std::fs::read(&p)?,
            b"two",
            "a failed write keeps the old file"
        );
        assert_eq!(
            std::fs::read_dir(&dir)?.count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir)
    }
}

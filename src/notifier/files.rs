//! The files `exec` and `notify` share, all named after the `--result` path, so the injected
//! containers agree by passing that one path:
//!
//! | path            | written by | meaning |
//! |-----------------|------------|---------|
//! | `FILE`          | `exec`     | the wrapped command's result (JSON, see [`super::result`]) |
//! | `FILE.lock`     | `exec`     | liveness lock: `flock`ed for the wrapper's whole life |
//! | `FILE.sent`     | `notify`   | claimed before the one send, so no restart sends twice |
//!
//! Temporary files are created beside their final name (same directory, so `rename` is atomic)
//! and carry the writer's pid, so two writers never share one.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Paths of one wrapped step's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepFiles {
    pub result: PathBuf,
    pub lock: PathBuf,
    pub sent: PathBuf,
}

impl StepFiles {
    pub fn for_result(result: impl Into<PathBuf>) -> Self {
        let result = result.into();
        StepFiles {
            lock: with_suffix(&result, ".lock"),
            sent: with_suffix(&result, ".sent"),
            result,
        }
    }
}

/// `path` with `suffix` appended to its last component (not an extension swap: `r.json` becomes
/// `r.json.lock`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// Sets `f`'s mode to `mode` whatever the umask: the wrapper runs with the backup's umask (077
/// in some images), and a notifier of another user must still read the result and probe the
/// lock, or it would wait for SIGTERM and then report a successful backup as failed.
pub fn readable_by_others(f: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(mode))
}

/// A temporary name beside `path`, unique to this process.
pub fn temp_sibling(path: &Path) -> PathBuf {
    with_suffix(path, &format!(".{}.tmp", std::process::id()))
}

/// Replaces `path` with `bytes` so that a reader sees either the old file or the complete new
/// one, never a partial write: write a temporary sibling, fsync it, rename it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_sibling(path);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        readable_by_others(&f, mode)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_parent(path);
    Ok(())
}

/// Makes a rename durable. Best effort: on tmpfs (the usual emptyDir) it is a no-op, and a
/// failure here does not make the already visible file any less complete.
pub fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_result_path() {
        let f = StepFiles::for_result("/backup-notifier/result.json");
        assert_eq!(f.lock, Path::new("/backup-notifier/result.json.lock"));
        assert_eq!(f.sent, Path::new("/backup-notifier/result.json.sent"));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r");
        write_atomically(&p, b"one", 0o644).unwrap();
        write_atomically(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

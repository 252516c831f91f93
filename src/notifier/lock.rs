//! The liveness lock: `exec` holds an exclusive `flock` on `FILE.lock` for its whole life. The
//! kernel drops the lock when the process ends for any reason (exit, SIGKILL, the OOM killer),
//! so a waiter that finds the lock released but no result knows the wrapper died without
//! reporting.
//!
//! The lock file is locked under a temporary name and only then renamed into place: a waiter
//! that can open `FILE.lock` at all is looking at a locked file or a released one, never at one
//! that was created but not yet locked.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

use super::files::{sync_parent, temp_sibling};

/// Held by `exec`; dropping it (or dying) releases the lock.
#[derive(Debug)]
pub struct LivenessLock {
    _file: File,
}

impl LivenessLock {
    /// Creates, locks and publishes `path`. Replaces a lock file left by an earlier run of the
    /// wrapper in the same pod (a restarted container).
    pub fn acquire(path: &Path) -> anyhow::Result<Self> {
        let tmp = temp_sibling(path);
        // std opens with O_CLOEXEC, so the wrapped command does not inherit the lock and cannot
        // keep it held after the wrapper is gone.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .with_context(|| format!("creating the lock file {}", tmp.display()))?;
        let locked = super::files::readable_by_others(&file, 0o644)
            .with_context(|| format!("making the lock file {} readable", tmp.display()))
            .and_then(|()| {
                flock(&file, libc::LOCK_EX | libc::LOCK_NB)
                    .with_context(|| format!("locking {}", tmp.display()))
            });
        let published = locked.and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming the lock file to {}", path.display()))
        });
        if let Err(e) = published {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        sync_parent(path);
        Ok(LivenessLock { _file: file })
    }
}

/// What a waiter sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockState {
    /// No lock file yet: the wrapper has not started.
    Absent,
    /// The wrapper is alive.
    Held,
    /// The wrapper has ended, with or without writing a result.
    Released,
}

/// Looks at the lock without disturbing the holder: a shared, non-blocking `flock` that is
/// dropped again at once.
pub fn probe(path: &Path) -> io::Result<LockState> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LockState::Absent),
        Err(e) => return Err(e),
    };
    match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
        Ok(()) => Ok(LockState::Released),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(LockState::Held),
        Err(e) => Err(e),
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a file descriptor that `file` keeps open for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_then_held_then_released() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("result.json.lock");
        assert_eq!(probe(&p).unwrap(), LockState::Absent);
        let lock = LivenessLock::acquire(&p).unwrap();
        assert_eq!(probe(&p).unwrap(), LockState::Held);
        // Probing twice must not steal or disturb the lock.
        assert_eq!(probe(&p).unwrap(), LockState::Held);
        drop(lock);
        assert_eq!(probe(&p).unwrap(), LockState::Released);
        // Only the lock file remains: no temporary name is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_second_wrapper_replaces_a_stale_lock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.lock");
        drop(LivenessLock::acquire(&p).unwrap());
        let _again = LivenessLock::acquire(&p).unwrap();
        assert_eq!(probe(&p).unwrap(), LockState::Held);
    }
}

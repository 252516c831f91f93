//! Waiting for the wrapped step to end, in either of the two ways the notifier can run.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::warn;

use super::files::StepFiles;
use super::lock::{self, LockState};
use super::result::StepResult;

/// How the notifier runs beside the backup container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A native sidecar (init container with `restartPolicy: Always`): the kubelet sends it
    /// SIGTERM once every main container has stopped, and restarts it whenever it exits.
    Sidecar,
    /// A regular container beside the backup container; it ends by itself.
    Container,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sidecar" => Ok(Mode::Sidecar),
            "container" => Ok(Mode::Container),
            other => Err(format!(
                "unknown mode {other:?}: expected sidecar or container"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Sidecar => "sidecar",
            Mode::Container => "container",
        })
    }
}

/// What ended the wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The wrapper is gone (its lock was released) or, in container mode, its result appeared.
    Finished,
    /// SIGTERM or SIGINT (named) arrived first.
    Terminated(&'static str),
}

/// SIGTERM and SIGINT, caught for the whole life of the process: once installed, neither
/// signal can kill the notifier, so one arriving in the middle of a send does not cut it short
/// (the send is bounded by its own timeout).
pub struct TermSignals {
    term: Signal,
    int: Signal,
}

impl TermSignals {
    pub fn install() -> io::Result<Self> {
        // A blocked mask inherited from whatever started us (supervisors and runtimes have leaked
        // one) would hold the kubelet's SIGTERM forever: unblock what we wait for. The runtime is
        // single-threaded, so this thread's mask is the one that matters.
        // SAFETY: plain libc calls on a local, initialised signal set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            // pthread functions return the error number instead of setting errno.
            let rc = libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        Ok(TermSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// How often the lock and result files are looked at. Cheap (an open and an flock), and a
/// notification a fifth of a second late matters to nobody.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Waits until the step has ended or a termination signal arrives.
///
/// - Sidecar: the step has ended when its liveness lock is released.
/// - Container: when its result file appears, or its lock is released without one.
///
/// A lock file that does not exist yet means the wrapper has not started: keep waiting.
pub async fn wait_for_step(files: &StepFiles, mode: Mode, signals: &mut TermSignals) -> Trigger {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            biased;
            name = signals.recv() => return Trigger::Terminated(name),
            _ = tick.tick() => {
                if step_ended(files, mode, &mut warned) {
                    return Trigger::Finished;
                }
            }
        }
    }
}

/// After a failed attempt in a pod whose failed containers the kubelet restarts in place: waits
/// until the next attempt has begun or ended, or a termination signal arrives, which is
/// returned. `exec` removes the old result as it starts, so a result other than `failed` means
/// a new attempt, even one that started and ended between two polls. The lock alone says so only
/// when the failed attempt left no result: in container mode the failed attempt's own wrapper
/// may still hold it for a moment after writing its result.
pub async fn wait_for_retry(
    files: &StepFiles,
    failed: Option<&StepResult>,
    signals: &mut TermSignals,
) -> Option<Trigger> {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            name = signals.recv() => return Some(Trigger::Terminated(name)),
            _ = tick.tick() => {
                let held = matches!(lock::probe(&files.lock), Ok(LockState::Held));
                // An unreadable result counts as unchanged: the next poll, or SIGTERM, decides.
                let changed = StepResult::read(&files.result)
                    .is_ok_and(|now| now.as_ref() != failed);
                if changed || (held && failed.is_none()) {
                    return None;
                }
            }
        }
    }
}

fn step_ended(files: &StepFiles, mode: Mode, warned: &mut bool) -> bool {
    match lock::probe(&files.lock) {
        Ok(LockState::Released) => return true,
        Ok(LockState::Absent | LockState::Held) => {}
        Err(e) => {
            if !*warned {
                warn!(
                    "cannot check the liveness lock {}: {e}; still waiting",
                    files.lock.display()
                );
                *warned = true;
            }
        }
    }
    // `exec` writes the result only after the command ended, atomically, so its presence alone
    // is final.
    mode == Mode::Container && files.result.exists()
}

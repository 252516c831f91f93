//! `exec`: runs the backup command as a child, passes signals on to it, and records how it
//! ended.
//!
//! The wrapper is usually PID 1 of its container, so it is written like a tiny init: every
//! signal it handles is blocked from the first line of `main` and taken synchronously with
//! `sigwait`, so that no signal arriving after that is unhandled (PID 1 ignores signals it has no
//! handler for, so an unhandled SIGTERM would be lost, not fatal; only the microseconds of the
//! loader and Rust's start-up come before), and it needs no async runtime. It also reaps orphans
//! that the container re-parents to it while the command runs.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use tracing::{error, info};

use super::files::StepFiles;
use super::lock::LivenessLock;
use super::result::{StepResult, now_rfc3339};

/// Signals passed on to the command's process group.
pub const FORWARDED_SIGNALS: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The wrapper itself failed (bad arguments, or blocking, waiting for or reaping signals and
/// children): like `env`, `timeout` and `docker run`, 125 keeps the wrapper's own failure apart
/// from the command's codes.
pub const EXIT_WRAPPER_ERROR: u8 = 125;
/// The command exists but cannot be executed (the shell's convention).
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// The command was not found (the shell's convention).
pub const EXIT_NOT_FOUND: i32 = 127;

/// Blocks every signal the wrapper takes with `sigwait`: the forwarded ones and SIGCHLD.
///
/// `main` calls it for `exec` before it parses arguments or sets up logging: as PID 1 without a
/// handler the wrapper would drop a SIGTERM that arrived in between (a pod deleted as it
/// starts), and the command would then run on to the kubelet's SIGKILL with no result written.
pub fn block_signals() -> io::Result<SignalSet> {
    let mut handled = FORWARDED_SIGNALS.to_vec();
    handled.push(libc::SIGCHLD);
    SignalSet::block(&handled)
}

/// Runs `command` and returns the exit code the wrapper should exit with.
pub fn run(result: &Path, command: &[OsString]) -> u8 {
    let started_at = now_rfc3339();
    // Held here, not in run_inner, so that a failure is recorded before the lock goes: a waiter
    // that saw the lock released first would report a killed wrapper instead of the reason.
    let mut lock = None;
    let code = match run_inner(&StepFiles::for_result(result), command, &mut lock) {
        Ok(code) => code,
        Err(e) => {
            let why = format!("{e:#}");
            error!("backup-notifier exec: {why}");
            record_wrapper_failure(result, started_at, why);
            EXIT_WRAPPER_ERROR
        }
    };
    drop(lock);
    code
}

/// Records that the wrapper itself failed (125), where it gets as far as knowing FILE: a
/// container-mode notifier waits for the result, or the release of a lock a wrapper that failed
/// this early never took, and would otherwise keep the pod running until the Job's deadline (for
/// ever in a CronJob without one).
pub fn record_wrapper_failure(result: &Path, started_at: String, why: String) {
    write_result(
        &StepFiles::for_result(result),
        StepResult {
            exit_code: i32::from(EXIT_WRAPPER_ERROR),
            signal: None,
            started_at,
            finished_at: now_rfc3339(),
            error: Some(why),
        },
    );
}

fn run_inner(
    files: &StepFiles,
    command: &[OsString],
    lock: &mut Option<LivenessLock>,
) -> anyhow::Result<u8> {
    let (program, args) = command.split_first().context("no command given after --")?;

    // An ignored SIGCHLD, inherited from whatever started the wrapper, makes the kernel reap the
    // child itself and send no SIGCHLD: the wait below would never end, and no result would
    // ever be written. The default disposition is what reaping needs (the child inherits it,
    // as children normally have it).
    // SAFETY: signal with SIG_DFL installs no handler and has no memory-safety preconditions.
    if unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error()).context("restoring the default SIGCHLD handling");
    }
    // Blocked before the child exists, so no signal between spawn and the first sigwait is lost
    // (`main` has blocked them already; blocking again is harmless and gives the set to wait on).
    let set = block_signals().context("blocking signals")?;

    // The backup runs whatever happens to the notifier's files: a notification must never
    // decide whether a backup is made. Without the lock a sidecar notifier decides at SIGTERM,
    // from whatever result there is then.
    *lock = LivenessLock::acquire(&files.lock)
        .inspect_err(|e| error!("backup-notifier exec: {e:#}; running the command anyway"))
        .ok();
    // A result left by an earlier run in the same pod (a restarted container) must not be read
    // as this run's.
    match std::fs::remove_file(&files.result) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => error!(
            "backup-notifier exec: removing the old result file {}: {e}; running the command anyway",
            files.result.display()
        ),
        _ => {}
    }

    let started_at = now_rfc3339();
    let mut cmd = Command::new(program);
    cmd.args(args).process_group(0);
    // The child must not inherit the wrapper's blocked signals, or the signals forwarded to it
    // would stay pending forever. std is meant to reset the mask, but does not on every spawn
    // path (seen with posix_spawn under gVisor), so it is done here explicitly; only the mask,
    // which the wrapper changed: inherited dispositions (e.g. nohup's SIG_IGN) pass through.
    // SAFETY: sigemptyset and pthread_sigmask are async-signal-safe, as required between fork
    // and exec, and touch only the local set.
    unsafe {
        cmd.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            match libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        });
    }
    let spawned = cmd.spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_NOT_EXECUTABLE
            };
            let why = format!("cannot run {:?}: {e}", program.to_string_lossy());
            error!("backup-notifier exec: {why}");
            write_result(
                files,
                StepResult {
                    exit_code: code,
                    signal: None,
                    started_at,
                    finished_at: now_rfc3339(),
                    error: Some(why),
                },
            );
            return Ok(code as u8);
        }
    };
    // The child is reaped below with waitpid(-1), which also collects orphans; std's Child::wait
    // would race with that, so only the pid is kept.
    let pid = child.id() as libc::pid_t;
    drop(child);

    let status = loop {
        let sig = set.wait().context("waiting for signals")?;
        if sig == libc::SIGCHLD {
            if let Some(status) = reap(pid).context("waiting for the command")? {
                break status;
            }
        } else {
            forward(pid, sig);
        }
    };

    let (exit_code, signal) = if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else {
        (libc::WEXITSTATUS(status), None)
    };
    write_result(
        files,
        StepResult {
            exit_code,
            signal,
            started_at,
            finished_at: now_rfc3339(),
            error: None,
        },
    );
    // Exit codes are 8 bits; 128+signal stays below 256 for every Linux signal.
    Ok(exit_code as u8)
}

/// A failure to record is logged, not fatal: the command's exit code still decides the
/// container's outcome, and the waiter reports a failure because no result appears.
fn write_result(files: &StepFiles, result: StepResult) {
    if let Err(e) = result.write(&files.result) {
        error!("backup-notifier exec: {e:#}");
    }
}

fn forward(pid: libc::pid_t, sig: libc::c_int) {
    info!(
        "backup-notifier exec: forwarding {} to the command",
        signal_name(sig)
    );
    // A stopped process keeps every signal but SIGKILL pending until it is continued. The
    // command stops when it reads from a terminal it does not own (a container with `tty: true`,
    // restic asking for a password): without SIGCONT it would ignore the kubelet's SIGTERM, die
    // by SIGKILL and leave no result. (It is not handed the terminal: nobody types into a backup
    // pod, and a wrapper in the background could then be stopped by its own log lines.)
    for sig in [sig, libc::SIGCONT] {
        // SAFETY: kill and getpgid have no memory-safety preconditions. The group (the command's
        // helpers get the signal too), and the command itself when it has left the group (a
        // setpgid or setsid of its own), which the group send then missed.
        unsafe {
            libc::kill(-pid, sig);
            if libc::getpgid(pid) != pid {
                libc::kill(pid, sig);
            }
        }
    }
}

/// Reaps every exited child; returns the command's wait status once it is among them.
fn reap(pid: libc::pid_t) -> io::Result<Option<libc::c_int>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes only to `status`, which outlives the call.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(Some(status));
        }
        if r > 0 {
            continue;
        }
        if r == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

pub fn signal_name(sig: libc::c_int) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGUSR2 => "SIGUSR2".into(),
        libc::SIGKILL => "SIGKILL".into(),
        other => format!("signal {other}"),
    }
}

/// A set of signals blocked for the calling thread and taken with `sigwait`.
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    fn block(signals: &[libc::c_int]) -> io::Result<Self> {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before any other use.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            Ok(SignalSet(set))
        }
    }

    fn wait(&self) -> io::Result<libc::c_int> {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: both pointers are valid for the duration of the call.
            let r = unsafe { libc::sigwait(&self.0, &mut sig) };
            match r {
                0 => return Ok(sig),
                libc::EINTR => continue,
                e => return Err(io::Error::from_raw_os_error(e)),
            }
        }
    }
}

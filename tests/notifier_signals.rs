//! A sidecar notifier must see the kubelet's SIGTERM even when it was started with SIGTERM
//! blocked (a mask leaked by whatever started it), in the path where it noticed the end of the
//! backup by itself and then waits for SIGTERM.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NOTIFIER: &str = env!("CARGO_BIN_EXE_backup-notifier");

/// Kills the notifier when the test fails part-way: with SIGTERM blocked, nothing else would.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_sidecar_started_with_sigterm_blocked_still_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("result.json");
    let mut notify = Command::new(NOTIFIER);
    notify
        .arg("notify")
        .env_clear()
        .env("NOTIFY_RESULT", &result)
        .env("NOTIFY_MODE", "sidecar")
        .env("NOTIFY_KIND", "VolumeBackup")
        .env("NOTIFY_HOST", "ns-data")
        .env("NOTIFY_VOLUME", "data")
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        notify.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut notify = KillOnDrop(notify.spawn().unwrap());
    let lines = BufReader::new(notify.0.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let status = Command::new(NOTIFIER)
        .args(["exec", "--result"])
        .arg(&result)
        .args(["--", "sh", "-c", "sleep 0.5"])
        .status()
        .unwrap();
    assert!(status.success());
    // The sidecar notices the end itself (the lock is released) before any SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no decision logged");
        if line.contains("backup command exited with code 0") {
            break;
        }
    }
    let pid = notify.0.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Some(status) = notify.0.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the sidecar ignored SIGTERM after the backup ended");
}

//! Helpers for the backup-notifier tests: run the real binary with a clean environment and a
//! hard time limit, read its output, send it signals, and give it a private /etc/hosts.
// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backup_operator::notifier::lock::{LockState, probe};

pub const BIN: &str = env!("CARGO_BIN_EXE_backup-notifier");

/// The binary with an environment holding nothing but PATH, so no NOTIFY_* variable of the
/// machine running the tests leaks in.
pub fn notifier() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

/// The binary run inside a private mount namespace whose /etc/hosts is `hosts` and whose
/// resolver points at 127.0.0.1:53 (where nothing answers), so names resolve only through the
/// test's own hosts file and no DNS query leaves the machine.
pub fn notifier_with_hosts(dir: &Path, hosts: &str) -> Command {
    let hosts_file = dir.join("hosts");
    let resolv_file = dir.join("resolv.conf");
    std::fs::write(&hosts_file, hosts).unwrap();
    std::fs::write(
        &resolv_file,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let mut c = Command::new("unshare");
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args([
            "--mount",
            "sh",
            "-c",
            r#"mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@""#,
            "sh",
        ])
        .arg(&hosts_file)
        .arg(&resolv_file)
        .arg(BIN);
    c
}

/// A process under test, with its output collected in the background.
pub struct Proc {
    pub child: Child,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
    pub started: Instant,
}

/// A finished process.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Log lines of one level (`INFO`, `WARN`, `ERROR`).
    pub fn lines(&self, level: &str) -> Vec<&str> {
        let tag = format!(" {level} ");
        self.stderr.lines().filter(|l| l.contains(&tag)).collect()
    }

    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.code(), Some(code), "unexpected exit: {self:#?}");
    }
}

pub fn spawn(cmd: &mut Command) -> Proc {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the process under test");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    Proc {
        child,
        out: Some(out),
        err: Some(err),
        started,
    }
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill failed");
    }

    /// Waits (10 s at most) until the process catches `sig`, read from `SigCgt` in
    /// /proc/PID/status: a signal sent before the handler is installed would kill it instead.
    pub fn wait_handles(&self, sig: i32) {
        let bit = 1u64 << (sig - 1);
        let caught = || {
            std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
                .ok()
                .and_then(|status| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("SigCgt:"))
                        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                })
                .is_some_and(|mask| mask & bit != 0)
        };
        assert!(
            testkit::poll(Duration::from_secs(10), Duration::from_millis(10), caught),
            "process {} does not catch signal {sig}",
            self.pid()
        );
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits at most `limit`; a process still running then is killed and the test fails, so a
    /// hang can never stall the suite.
    /// Ends a `notify` process as its pod would: a sidecar by SIGTERM, a container by itself;
    /// it exits 0 either way.
    pub fn end_notifier(self, mode: &str) -> Run {
        if mode == "sidecar" {
            self.wait_handles(libc::SIGTERM);
            self.signal(libc::SIGTERM);
        }
        let r = self.finish(Duration::from_secs(20));
        r.assert_code(0);
        r
    }

    pub fn finish(mut self, limit: Duration) -> Run {
        let deadline = self.started + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.err.take().unwrap().join().unwrap();
                panic!("process still running after {limit:?}; stderr:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        Run {
            status,
            stdout: self.out.take().unwrap().join().unwrap(),
            stderr: self.err.take().unwrap().join().unwrap(),
            elapsed,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn run(cmd: &mut Command, limit: Duration) -> Run {
    spawn(cmd).finish(limit)
}

/// A scratch directory standing in for the shared emptyDir.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn result(&self) -> PathBuf {
        self.dir.path().join("result.json")
    }

    pub fn lock(&self) -> PathBuf {
        self.dir.path().join("result.json.lock")
    }

    pub fn sent(&self) -> PathBuf {
        self.dir.path().join("result.json.sent")
    }

    pub fn result_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.result()).unwrap()).unwrap()
    }

    /// `backup-notifier exec --result <result> -- sh -c <script>`.
    pub fn exec_sh(&self, script: &str) -> Command {
        let mut c = notifier();
        c.arg("exec")
            .arg("--result")
            .arg(self.result())
            .args(["--", "sh", "-c", script]);
        c
    }

    /// Runs the wrapper to completion and returns its run.
    pub fn run_exec(&self, script: &str) -> Run {
        run(&mut self.exec_sh(script), Duration::from_secs(20))
    }

    /// `notify` with the payload settings and this result file; URLs and policy are up to the
    /// caller.
    pub fn notify(&self, mode: &str) -> Command {
        let mut c = notifier();
        self.notify_env(&mut c, mode);
        c.arg("notify");
        c
    }

    pub fn notify_env(&self, c: &mut Command, mode: &str) {
        c.env("NOTIFY_KIND", "VolumeBackup")
            .env("NOTIFY_HOST", "default-my-data-pvc")
            .env("NOTIFY_VOLUME", "my-data-pvc")
            .env("NOTIFY_RESULT", self.result())
            .env("NOTIFY_MODE", mode);
    }

    /// What an OOM kill of the backup container leaves: a wrapper (running `sleep 60`) killed
    /// by SIGKILL without writing a result, its lock released by the kernel. The orphaned
    /// command goes too.
    pub fn kill_an_attempt_without_result(&self) {
        let pidfile = self.path().join("child.pid");
        let wrapper = spawn(&mut self.exec_sh(&format!(
            "echo $$ > {p}.tmp; mv {p}.tmp {p}; exec sleep 60",
            p = pidfile.display()
        )));
        self.wait_locked();
        let child = wait_for_pid(&pidfile);
        wrapper.signal(libc::SIGKILL);
        // SAFETY: kills the orphaned `sleep`'s process group, which the test created.
        unsafe { libc::kill(-child, libc::SIGKILL) };
    }

    /// Waits until the wrapper holds its liveness lock.
    pub fn wait_locked(&self) {
        wait_until(Duration::from_secs(10), || {
            probe(&self.lock()).unwrap() == LockState::Held
        });
    }
}

#[track_caller]
/// The PID a test's script wrote to `path` (atomically, by rename), once it is there.
pub fn wait_for_pid(path: &Path) -> i32 {
    wait_until(Duration::from_secs(10), || path.exists());
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

pub fn wait_until(limit: Duration, f: impl FnMut() -> bool) {
    assert!(
        testkit::poll(limit, Duration::from_millis(20), f),
        "condition not met within {limit:?}"
    );
}

/// A loopback port on which nothing listens and nothing can start listening while the returned
/// guard lives (the port is bound but not listening, so connecting is refused).
pub struct ClosedPort {
    fd: libc::c_int,
    pub addr: SocketAddr,
}

impl ClosedPort {
    /// `None` when the port is taken on that address.
    pub fn try_on(ip: Ipv4Addr, port: u16) -> Option<ClosedPort> {
        // SAFETY: plain socket calls on a descriptor this function owns; sockaddr_in is
        // initialised completely before use.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = port.to_be();
            sa.sin_addr.s_addr = u32::from(ip).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let sa_ptr = &mut sa as *mut libc::sockaddr_in as *mut libc::sockaddr;
            if libc::bind(fd, sa_ptr, len) != 0 {
                libc::close(fd);
                return None;
            }
            let mut got = len;
            assert_eq!(libc::getsockname(fd, sa_ptr, &mut got), 0);
            Some(ClosedPort {
                fd,
                addr: SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sa.sin_port))),
            })
        }
    }

    pub fn any() -> ClosedPort {
        ClosedPort::try_on(Ipv4Addr::LOCALHOST, 0).expect("binding a loopback port")
    }
}

impl Drop for ClosedPort {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this guard owns.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// The payload api.md §3 specifies, as JSON.
pub fn expected_payload(status: &str, kind: &str, host: &str, volume: &str) -> serde_json::Value {
    let message = match (kind, status) {
        ("VolumeBackup", "success") => "Volume backup completed",
        ("VolumeBackup", "failure") => "Volume backup failed",
        ("S3Backup", "success") => "S3 backup completed",
        ("S3Backup", "failure") => "S3 backup failed",
        _ => panic!("no such payload"),
    };
    serde_json::json!({"status": status, "message": message, "host": host, "volume": volume})
}

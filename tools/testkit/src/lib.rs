//! Test tools for backup-operator. Everything here talks to real programs (kube-apiserver, etcd,
//! restic, HTTP servers); the one stand-in is the local pod runner, which runs a pod template's
//! containers as host processes because no kubelet can run on the test machines.

pub mod control_plane;
/// Runs a pod template's containers as host processes in kubelet order (a test tool, not a kubelet).
pub mod pod_runner;
/// Real HTTP and HTTPS webhook receivers on loopback that record and count requests.
pub mod receiver;
/// A real S3-compatible server (VersityGW) over TLS.
pub mod s3_server;

pub use control_plane::{ControlPlane, TestNamespace, apply_crd, apply_crd_yaml, wait_for};

use std::time::{Duration, Instant};

/// Calls `check` every `every` until it holds or `limit` has passed, and says whether it held:
/// the synchronous sibling of [`wait_for`], for tests without a runtime. The caller asserts,
/// so its failure message can carry what it knows (a log, a pid).
pub fn poll(limit: Duration, every: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// A free loopback port for a program that binds it itself, below the kernel's ephemeral range:
/// a port from binding `:0` is an ephemeral one, which any outgoing connection may take between
/// this check and the program's bind (`tools/control-plane/cp` picks its ports the same way).
pub fn free_port() -> std::io::Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .max(10001);
    // Start at a point that differs per process and call, so parallel callers spread out.
    let span = low - 10000;
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let start = (seed % u64::from(span)) as u16;
    (0..span)
        .map(|i| 10000 + (start + i) % span)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .ok_or_else(|| std::io::Error::other("no free port below the ephemeral range"))
}

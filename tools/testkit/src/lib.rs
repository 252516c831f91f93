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

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

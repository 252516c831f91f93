//! Test tools for backup-operator. Everything here talks to real programs (kube-apiserver, etcd,
//! restic, HTTP servers); the one stand-in is the local pod runner, which runs a pod template's
//! containers as host processes because no kubelet can run on the test machines.
pub mod receiver;

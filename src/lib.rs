//! backup-operator: trustworthy webhook notifications for `VolumeBackup` and `S3Backup`.
//!
//! Two binaries share this library: `backup-operator` (admission server and controller) and
//! `backup-notifier` (runs inside every backup Job pod). The notifier links only what it uses
//! (`contract`, `url_policy`, `duration`, `errors`, `notifier`), so it stays small and free of
//! any Kubernetes client.

pub mod admin;
pub mod admission;
pub mod cert_rotation;
pub mod certs;
pub mod contract;
pub mod controller;
pub mod crd;
pub mod duration;
pub mod errors;
pub mod https;
pub mod inject;
pub mod json_view;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod notifier;
pub mod pem_file;
pub mod quantity;
pub mod schedule;
pub mod serve;
pub mod text;
pub mod tls;
pub mod url_policy;
pub mod webhook_config;
pub mod write_stall;

//! backup-operator: trustworthy webhook notifications for `VolumeBackup` and `S3Backup`.
//!
//! Two binaries share this library: `backup-operator` (admission server and controller) and
//! `backup-notifier` (runs inside every backup Job pod). The notifier links only what it uses
//! (`contract`, `url_policy`, `notifier`), so it stays small and free of any Kubernetes client.

pub mod contract;
pub mod notifier;
pub mod url_policy;

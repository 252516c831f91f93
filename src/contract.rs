//! The contracts between the parts of the system (api.md §3 and §4), in one place: the label and
//! annotations the controller writes and the injector reads, the environment the injector gives
//! the notifier, and the exact notification payload.

use serde::{Deserialize, Serialize};

/// Whether a value the payload carries (`notify-host`, `notify-volume`, their env) is blank,
/// which the notifier takes as not set: admission refuses what the notifier would not send.
pub fn is_blank(v: &str) -> bool {
    v.trim().is_empty()
}

/// API group of both custom resources.
pub const GROUP: &str = "backups.k8s.bnerd.com";

/// CronJobs carrying this label with value `"true"` get the notifier injected.
pub const NOTIFY_LABEL: &str = "backups.k8s.bnerd.com/notify";

/// Annotations on a labelled CronJob (api.md §4).
pub mod annotations {
    pub const WEBHOOK_SUCCESS: &str = "backups.k8s.bnerd.com/webhook-success";
    pub const WEBHOOK_FAILURE: &str = "backups.k8s.bnerd.com/webhook-failure";
    pub const NOTIFY_KIND: &str = "backups.k8s.bnerd.com/notify-kind";
    pub const NOTIFY_HOST: &str = "backups.k8s.bnerd.com/notify-host";
    pub const NOTIFY_VOLUME: &str = "backups.k8s.bnerd.com/notify-volume";
    pub const NOTIFY_CONTAINER: &str = "backups.k8s.bnerd.com/notify-container";

    /// The annotations `/validate` checks on a labelled CronJob, and the only ones it reads: the
    /// validating webhook's `matchConditions` send an UPDATE only when one of them (or the
    /// label) changes.
    pub const VALIDATED_KEYS: [&str; 5] = [
        WEBHOOK_SUCCESS,
        WEBHOOK_FAILURE,
        NOTIFY_KIND,
        NOTIFY_HOST,
        NOTIFY_VOLUME,
    ];
}

/// Environment of the `notifier` container (read by `backup-notifier notify`).
pub mod env {
    pub const SUCCESS_URL: &str = "NOTIFY_SUCCESS_URL";
    pub const FAILURE_URL: &str = "NOTIFY_FAILURE_URL";
    pub const KIND: &str = "NOTIFY_KIND";
    pub const HOST: &str = "NOTIFY_HOST";
    pub const VOLUME: &str = "NOTIFY_VOLUME";
    pub const TIMEOUT: &str = "NOTIFY_TIMEOUT";
    pub const RESULT: &str = "NOTIFY_RESULT";
    pub const MODE: &str = "NOTIFY_MODE";
    /// The backup pod's `restartPolicy`, set only when it is `OnFailure`.
    pub const RESTART_POLICY: &str = "NOTIFY_RESTART_POLICY";
    pub const CA_FILE: &str = "NOTIFY_CA_FILE";
    /// The URL policy travels with these, so admission and send time agree.
    pub const REQUIRE_HTTPS: &str = "NOTIFY_REQUIRE_HTTPS";
    pub const DENY_PRIVATE: &str = "NOTIFY_DENY_PRIVATE_NETWORKS";
    pub const ALLOW: &str = "NOTIFY_ALLOW_DESTINATIONS";
    pub const DENY: &str = "NOTIFY_DENY_DESTINATIONS";
}

/// The pod layout the injector writes and the notifier relies on (api.md §4).
pub mod pod {
    /// The shared `emptyDir` (medium Memory) and its mount path in every injected container.
    pub const VOLUME: &str = "backup-notifier";
    pub const MOUNT_PATH: &str = "/backup-notifier";
    /// Where `notifier-install` copies the binary, for the wrapped container to run.
    pub const INSTALLED_BIN: &str = "/backup-notifier/backup-notifier";
    /// The wrapper's result; the liveness lock and the sent-marker live beside it.
    pub const RESULT_FILE: &str = "/backup-notifier/result.json";
    /// The notifier binary inside the operator image.
    pub const IMAGE_BIN: &str = "/usr/local/bin/backup-notifier";
    /// The operator image's numeric `USER` (the Dockerfile's), the default user of the injected
    /// containers.
    pub const IMAGE_USER: i64 = 65532;
    /// With `--notifier-ca-configmap`: the ConfigMap volume holding the extra CA, mounted
    /// read-only in the notifier only, and the file the notifier reads it from.
    pub const CA_VOLUME: &str = "backup-notifier-ca";
    pub const CA_MOUNT_PATH: &str = "/backup-notifier-ca";
    pub const CA_FILE_NAME: &str = "ca.crt";
    pub const CA_FILE: &str = "/backup-notifier-ca/ca.crt";
    pub const INSTALL_CONTAINER: &str = "notifier-install";
    pub const NOTIFIER_CONTAINER: &str = "notifier";

    /// A string as it must be written into a container's command, args or env value to reach
    /// the process unchanged: the kubelet expands `$(VAR)` there and `$$` is its escape.
    pub fn escape_expansion(s: &str) -> String {
        s.replace('$', "$$")
    }
}

/// Which resource a backup came from; chooses the payload's message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackupKind {
    VolumeBackup,
    S3Backup,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::VolumeBackup => "VolumeBackup",
            BackupKind::S3Backup => "S3Backup",
        }
    }

    fn message(self, outcome: Outcome) -> &'static str {
        match (self, outcome) {
            (BackupKind::VolumeBackup, Outcome::Success) => "Volume backup completed",
            (BackupKind::VolumeBackup, Outcome::Failure) => "Volume backup failed",
            (BackupKind::S3Backup, Outcome::Success) => "S3 backup completed",
            (BackupKind::S3Backup, Outcome::Failure) => "S3 backup failed",
        }
    }
}

impl std::str::FromStr for BackupKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "VolumeBackup" => Ok(BackupKind::VolumeBackup),
            "S3Backup" => Ok(BackupKind::S3Backup),
            other => Err(format!(
                "unknown kind {other:?}: expected VolumeBackup or S3Backup"
            )),
        }
    }
}

impl std::fmt::Display for BackupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a backup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "success" => Ok(Outcome::Success),
            "failure" => Ok(Outcome::Failure),
            other => Err(format!(
                "unknown status {other:?}: expected success or failure"
            )),
        }
    }
}

/// The notification body: exactly these four string keys (api.md §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub status: Outcome,
    pub message: String,
    pub host: String,
    pub volume: String,
}

impl Payload {
    pub fn new(kind: BackupKind, outcome: Outcome, host: &str, volume: &str) -> Self {
        Payload {
            status: outcome,
            message: kind.message(outcome).to_owned(),
            host: host.to_owned(),
            volume: volume.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_matches_the_seed_document() {
        let p = Payload::new(
            BackupKind::VolumeBackup,
            Outcome::Success,
            "default-my-data-pvc",
            "my-data-pvc",
        );
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"status": "success", "message": "Volume backup completed",
                               "host": "default-my-data-pvc", "volume": "my-data-pvc"})
        );
        let p = Payload::new(
            BackupKind::S3Backup,
            Outcome::Failure,
            "ns-bucket",
            "bucket",
        );
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"status": "failure", "message": "S3 backup failed",
                               "host": "ns-bucket", "volume": "bucket"})
        );
    }
}

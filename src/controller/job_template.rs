//! The CronJob a VolumeBackup or S3Backup turns into (api.md §2, §4): a pure function of the
//! resource and the controller's settings, so it can be tested without a cluster.
//!
//! User-supplied strings never reach a shell: the backup script is a constant that reads its
//! inputs from environment variables, and values are escaped against the kubelet's `$(VAR)`
//! expansion.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
    PersistentVolumeClaimVolumeSource, PodAffinityTerm, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, SecretEnvSource, SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::contract::pod::escape_expansion;
use crate::contract::{self, BackupKind, annotations};
use crate::crd::{CommonSpec, Retention, S3Backup, VolumeBackup};

/// Labels and annotations the controller puts on what it generates.
pub mod labels {
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGER: &str = "backup-operator";
    /// The kind of the owning resource; selects the Jobs a controller watches.
    pub const OWNER_KIND: &str = "backups.k8s.bnerd.com/owner-kind";
    /// `<name>` of the owning resource (an annotation: names may exceed a label's 63 bytes).
    pub const OWNER_NAME: &str = "backups.k8s.bnerd.com/owner-name";
    /// A digest of the rest of the generated CronJob (an annotation), so the controller can tell
    /// whether what it would apply changed, removals included.
    pub const TEMPLATE_HASH: &str = "backups.k8s.bnerd.com/template-hash";
}

/// Where the backed-up files are, in the backup container.
pub const SOURCE_DIR: &str = "/data";
/// The container `notify-container` names.
pub const BACKUP_CONTAINER: &str = "backup";
/// CronJob names are limited so that the Jobs' names (plus an 11-character suffix) fit 63.
const MAX_CRON_JOB_NAME: usize = 52;

/// The backup steps, fixed text: every input arrives through the environment. The script is
/// part of every CronJob the apiserver stores and sends to the webhooks, so its reasons are
/// here rather than in shell comments:
/// - restic 0.16+ can wait for another run's lock (several backups sharing one repository).
/// - No repository yet: restic 0.17+ exits 10, older versions exit 1 and ask "Is there a
///   repository at the following location?" (which some versions also ask after other failures
///   to read it, so restic's message is always shown first: init then fails with the real cause
///   beside it). Any other error (a wrong password) fails the backup with restic's own message.
/// - Concurrent `restic init`s of one new repository each write their own key and config, and
///   leave a repository that no key opens ("ciphertext verification failed", which gets a hint).
///   Backups sharing a repository therefore get delays from the operator (`BACKUP_INIT_DELAY`,
///   see [`init_delay`]) and look again after theirs.
/// - A run killed mid-way (an OOM kill, a lost node) leaves its lock behind, and forget --prune,
///   which needs the repository to itself, would fail on it every night. unlock removes only
///   stale locks: a live run keeps refreshing its own.
/// - `BACKUP_FORGET_ARGS` is built by the operator from integers only, and `BACKUP_ARGS` is one
///   of its constants; both are always listed in the container's `env`, so that no Secret key
///   can supply them.
const BACKUP_SCRIPT: &str = r#"set -eu
wait_lock=""
if restic --help 2>/dev/null | grep -q -e '--retry-lock'; then
  wait_lock="--retry-lock=30m"
fi
rc=0
err=$(restic --no-lock cat config 2>&1 >/dev/null) || rc=$?
if [ "$rc" -ne 0 ]; then
  printf '%s\n' "$err" >&2
  if [ "$rc" -eq 10 ] || { [ "$rc" -eq 1 ] && printf '%s\n' "$err" | grep -q 'Is there a repository at the following location'; }; then
    delay=${BACKUP_INIT_DELAY:-0}
    if [ "$delay" -gt 0 ]; then
      echo "backup-operator: no repository yet; other backups share it, so waiting ${delay}s before initialising it"
      sleep "$delay"
    fi
    if [ "$delay" -gt 0 ] && restic --no-lock cat config >/dev/null 2>&1; then
      echo "backup-operator: another backup initialised the repository meanwhile; using it"
    else
      echo "backup-operator: no repository at the configured URL; initialising one"
      restic init
    fi
  else
    if printf '%s\n' "$err" | grep -q 'ciphertext verification failed'; then
      echo "backup-operator: runs that initialised this new repository at once left keys that do not open its config: keep the key with which 'restic --key-hint ID cat config' works, remove the others" >&2
    fi
    exit "$rc"
  fi
fi
restic unlock
restic $wait_lock backup ${BACKUP_ARGS:-} "$BACKUP_SOURCE" --host "$BACKUP_HOST" --tag "$BACKUP_TAG"
if [ -n "${BACKUP_FORGET_ARGS:-}" ]; then
  restic $wait_lock forget --prune --host "$BACKUP_HOST" --tag "$BACKUP_TAG" $BACKUP_FORGET_ARGS || {
    rc=$?
    echo "backup-operator: the snapshot was saved, but the retention (forget --prune) failed; the run counts as failed so that a repository that keeps growing is noticed" >&2
    exit "$rc"
  }
fi
"#;

/// Controller settings that shape every generated CronJob.
#[derive(Clone, Debug, clap::Args)]
pub struct JobArgs {
    /// restic image of the backup container (a resource's spec.image overrides it).
    #[arg(
        long,
        env = "BACKUP_OPERATOR_RESTIC_IMAGE",
        default_value = "docker.io/restic/restic:0.17.3",
        value_parser = crate::names::image
    )]
    pub restic_image: String,
    /// rclone image of the S3Backup copy step.
    #[arg(
        long,
        env = "BACKUP_OPERATOR_RCLONE_IMAGE",
        default_value = "docker.io/rclone/rclone:1.68",
        value_parser = crate::names::image
    )]
    pub rclone_image: String,
    /// Longest a backup Job may run (activeDeadlineSeconds); then it is stopped and reported as
    /// failed (lastFailedTime, a BackupFailed event, and a failure notification when the pod's
    /// notifier had started). Without a bound, a
    /// Job whose pod never starts (an RWO volume attached elsewhere, an image that cannot be
    /// pulled) stays active forever, and concurrencyPolicy Forbid then skips every later run
    /// without a word. Raise it for first backups of very large volumes (at most 8760h); 0 means
    /// no limit.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = |s: &str| crate::duration::within(s, Duration::ZERO, Duration::from_secs(8760 * 3600)))]
    pub backup_deadline: Duration,
}

/// The affinity as the apiserver stores it. Its only maps are the selectors' `matchLabels`, and
/// an empty map is not stored (Go's omitempty): applied as given, the stored CronJob would never
/// look like what the controller applies ([`crate::inject::patch::contains`]), so every
/// reconcile would re-apply it, and one during a mutating-webhook outage would strip the notifier.
fn affinity_as_stored(affinity: &Affinity) -> Affinity {
    let mut a = affinity.clone();
    // Pod affinity and anti-affinity are two types of one shape.
    let lists = [
        a.pod_affinity.as_mut().map(|p| {
            (
                &mut p.required_during_scheduling_ignored_during_execution,
                &mut p.preferred_during_scheduling_ignored_during_execution,
            )
        }),
        a.pod_anti_affinity.as_mut().map(|p| {
            (
                &mut p.required_during_scheduling_ignored_during_execution,
                &mut p.preferred_during_scheduling_ignored_during_execution,
            )
        }),
    ];
    let mut terms: Vec<&mut PodAffinityTerm> = Vec::new();
    for (required, preferred) in lists.into_iter().flatten() {
        terms.extend(required.iter_mut().flatten());
        terms.extend(
            preferred
                .iter_mut()
                .flatten()
                .map(|w| &mut w.pod_affinity_term),
        );
    }
    for term in terms {
        for selector in [&mut term.label_selector, &mut term.namespace_selector]
            .into_iter()
            .flatten()
        {
            if selector
                .match_labels
                .as_ref()
                .is_some_and(BTreeMap::is_empty)
            {
                selector.match_labels = None;
            }
        }
    }
    a
}

/// What differs between the two kinds.
pub trait BackupSource: Resource<DynamicType = ()> {
    const KIND: BackupKind;
    fn common(&self) -> &CommonSpec;
    /// `host` and `volume` of the payload; `host` is also restic's `--host`.
    fn host_and_volume(&self) -> (String, String);
    /// Volumes, init containers and the source mount of the pod.
    fn source(&self, args: &JobArgs) -> (Vec<Volume>, Vec<Container>, VolumeMount);
    /// Extra `restic backup` flags (a constant).
    const BACKUP_ARGS: &'static str = "";
}

fn namespace_of<K: Resource>(r: &K) -> String {
    r.meta().namespace.clone().unwrap_or_default()
}

impl BackupSource for VolumeBackup {
    const KIND: BackupKind = BackupKind::VolumeBackup;

    fn common(&self) -> &CommonSpec {
        &self.spec.common
    }

    fn host_and_volume(&self) -> (String, String) {
        let pvc = &self.spec.volume_claim_ref.name;
        (format!("{}-{pvc}", namespace_of(self)), pvc.clone())
    }

    fn source(&self, _: &JobArgs) -> (Vec<Volume>, Vec<Container>, VolumeMount) {
        let volume = Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: self.spec.volume_claim_ref.name.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        };
        (vec![volume], vec![], mount("data", SOURCE_DIR, true))
    }
}

impl BackupSource for S3Backup {
    const KIND: BackupKind = BackupKind::S3Backup;
    // Every run copies the bucket into a new emptyDir: new inodes and ctimes each time, so
    // without this restic would read and hash every file every night. rclone keeps the mtime.
    const BACKUP_ARGS: &'static str = "--ignore-inode";

    fn common(&self) -> &CommonSpec {
        &self.spec.common
    }

    fn host_and_volume(&self) -> (String, String) {
        let bucket = &self.spec.source.bucket;
        (format!("{}-{bucket}", namespace_of(self)), bucket.clone())
    }

    fn source(&self, args: &JobArgs) -> (Vec<Volume>, Vec<Container>, VolumeMount) {
        let src = &self.spec.source;
        let scratch = Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        };
        let mut path = src.bucket.clone();
        if let Some(prefix) = src.prefix.as_deref().filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(prefix.trim_start_matches('/'));
        }
        // rclone is configured only through the environment; the credentials Secret's keys
        // (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, …) are read by env_auth.
        let mut env = vec![
            env_value("RCLONE_S3_PROVIDER", "Other"),
            env_value("RCLONE_S3_ENDPOINT", &src.endpoint),
            env_value("RCLONE_S3_ENV_AUTH", "true"),
            env_value("RCLONE_S3_FORCE_PATH_STYLE", "true"),
            env_value("RCLONE_CONFIG", "/dev/null"),
        ];
        if let Some(region) = &src.region {
            env.push(env_value("RCLONE_S3_REGION", region));
        }
        let fetch = Container {
            name: "fetch".into(),
            image: Some(args.rclone_image.clone()),
            command: Some(vec!["rclone".into()]),
            args: Some(vec![
                "copy".into(),
                // Nothing to copy (an empty bucket, a prefix that names no folder) fails the run:
                // a snapshot of an empty directory would pass for a backup, and the retention
                // would then prune the snapshots that hold the data.
                "--error-on-no-transfer".into(),
                escape_expansion(&format!(":s3:{path}")),
                SOURCE_DIR.into(),
            ]),
            env: Some(env),
            env_from: Some(vec![secret_env(&src.credentials_secret_ref.name)]),
            volume_mounts: Some(vec![mount("data", SOURCE_DIR, false)]),
            // The backup's resources: a namespace whose quota requires them refuses a pod with
            // any container without them, and copying the bucket needs about what backing it
            // up does.
            resources: self
                .spec
                .common
                .resources
                .as_ref()
                .map(crate::quantity::canonical_resources),
            ..Default::default()
        };
        (vec![scratch], vec![fetch], mount("data", SOURCE_DIR, true))
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(escape_expansion(value)),
        value_from: None,
    }
}

fn secret_env(name: &str) -> EnvFromSource {
    EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: name.into(),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

/// `<name>-backup`, shortened with a hash of the full name when too long for a CronJob.
pub fn cron_job_name(resource_name: &str) -> String {
    let full = format!("{resource_name}-backup");
    if full.len() <= MAX_CRON_JOB_NAME {
        return full;
    }
    let digest = Sha256::digest(resource_name.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let keep = MAX_CRON_JOB_NAME - "-backup".len() - 1 - hash.len();
    let head = resource_name[..keep].trim_end_matches(['-', '.']);
    format!("{head}-{hash}-backup")
}

/// Time between the first runs of backups that share a repository, should it not exist yet: far
/// more than a `restic init` takes, so each finds the repository its predecessor made.
pub const INIT_SPACING: Duration = Duration::from_secs(20);
/// The delays stop growing here (the 46th backup of one new repository and later ones share it).
const MAX_INIT_DELAY: Duration = Duration::from_secs(15 * 60);

/// The delay of the backup at `position` (0 = the oldest) among those writing to one repository.
pub fn init_delay(position: usize) -> Duration {
    u32::try_from(position)
        .ok()
        .and_then(|p| INIT_SPACING.checked_mul(p))
        .map_or(MAX_INIT_DELAY, |d| d.min(MAX_INIT_DELAY))
}

fn forget_args(r: &Retention) -> String {
    [
        ("--keep-last", r.keep_last),
        ("--keep-hourly", r.keep_hourly),
        ("--keep-daily", r.keep_daily),
        ("--keep-weekly", r.keep_weekly),
        ("--keep-monthly", r.keep_monthly),
        ("--keep-yearly", r.keep_yearly),
    ]
    .iter()
    .filter_map(|(flag, n)| n.filter(|n| *n > 0).map(|n| format!("{flag} {n}")))
    .collect::<Vec<_>>()
    .join(" ")
}

/// The CronJob for `r`, ready for server-side apply, with its [`labels::TEMPLATE_HASH`].
/// `init_delay`: how long its backups wait before initialising a repository that does not exist
/// yet (see [`init_delay`]).
pub fn cron_job<K: BackupSource>(r: &K, args: &JobArgs, init_delay: Duration) -> CronJob {
    let mut cj = unhashed_cron_job(r, args, init_delay);
    // k8s-openapi serialises fields in a fixed order and maps sorted, so equal objects hash
    // equal. Should the digest of an unchanged object change with a new version, the cost is one
    // re-apply.
    let digest = serde_json::to_vec(&cj).map(|json| Sha256::digest(&json));
    if let (Ok(digest), Some(annotations)) = (digest, cj.metadata.annotations.as_mut()) {
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        annotations.insert(labels::TEMPLATE_HASH.to_owned(), hex);
    }
    cj
}

fn unhashed_cron_job<K: BackupSource>(r: &K, args: &JobArgs, init_delay: Duration) -> CronJob {
    let meta = r.meta();
    let name = meta.name.clone().unwrap_or_default();
    let namespace = namespace_of(r);
    let spec = r.common();
    let (host, volume) = r.host_and_volume();

    let labels = BTreeMap::from([
        (labels::MANAGED_BY.to_owned(), labels::MANAGER.to_owned()),
        (contract::NOTIFY_LABEL.to_owned(), "true".to_owned()),
        (labels::OWNER_KIND.to_owned(), K::KIND.as_str().to_owned()),
    ]);
    let owner_annotation = BTreeMap::from([(labels::OWNER_NAME.to_owned(), name.clone())]);
    let mut notify = owner_annotation.clone();
    let hooks = spec.webhooks.clone().unwrap_or_default();
    for (key, url) in [
        (annotations::WEBHOOK_SUCCESS, hooks.success),
        (annotations::WEBHOOK_FAILURE, hooks.failure),
    ] {
        if let Some(url) = url.filter(|u| !u.is_empty()) {
            notify.insert(key.to_owned(), url);
        }
    }
    notify.insert(
        annotations::NOTIFY_KIND.to_owned(),
        K::KIND.as_str().to_owned(),
    );
    notify.insert(annotations::NOTIFY_HOST.to_owned(), host.clone());
    notify.insert(annotations::NOTIFY_VOLUME.to_owned(), volume);
    notify.insert(
        annotations::NOTIFY_CONTAINER.to_owned(),
        BACKUP_CONTAINER.to_owned(),
    );

    let (mut volumes, init_containers, source_mount) = r.source(args);
    volumes.push(Volume {
        name: "restic-cache".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    let repo = &spec.repository;
    let mut env = vec![
        env_value("RESTIC_REPOSITORY", &repo.url),
        EnvVar {
            name: "RESTIC_PASSWORD".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: repo.password_secret_ref.name.clone(),
                    key: repo.password_secret_ref.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        },
        env_value("RESTIC_CACHE_DIR", "/restic-cache"),
        env_value("BACKUP_SOURCE", SOURCE_DIR),
        env_value("BACKUP_HOST", &host),
        env_value(
            "BACKUP_TAG",
            &format!("{}={namespace}/{name}", K::KIND.as_str()),
        ),
    ];
    // Always listed, without a value when unused (the variable is then empty): an entry in
    // `env` wins over the credentials Secret's `envFrom`, whose keys could otherwise set them (a
    // `BACKUP_FORGET_ARGS` there would prune a repository no retention was given for).
    let operator_only = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: (!value.is_empty()).then(|| escape_expansion(&value)),
        value_from: None,
    };
    env.push(operator_only(
        "BACKUP_INIT_DELAY",
        if init_delay.is_zero() {
            String::new()
        } else {
            init_delay.as_secs().to_string()
        },
    ));
    env.push(operator_only(
        "BACKUP_FORGET_ARGS",
        spec.retention.as_ref().map(forget_args).unwrap_or_default(),
    ));
    env.push(operator_only("BACKUP_ARGS", K::BACKUP_ARGS.to_owned()));
    let backup = Container {
        name: BACKUP_CONTAINER.into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| args.restic_image.clone()),
        ),
        command: Some(vec!["/bin/sh".into(), "-c".into(), BACKUP_SCRIPT.into()]),
        env: Some(env),
        env_from: repo
            .credentials_secret_ref
            .as_ref()
            .map(|s| vec![secret_env(&s.name)]),
        // As the apiserver stores them, so the stored CronJob compares equal to this one.
        resources: spec
            .resources
            .as_ref()
            .map(crate::quantity::canonical_resources),
        volume_mounts: Some(vec![
            source_mount,
            mount("restic-cache", "/restic-cache", false),
        ]),
        ..Default::default()
    };

    CronJob {
        metadata: ObjectMeta {
            name: Some(cron_job_name(&name)),
            namespace: Some(namespace),
            labels: Some(labels.clone()),
            annotations: Some(notify),
            owner_references: Some(vec![owner_reference(r)]),
            ..Default::default()
        },
        spec: Some(CronJobSpec {
            schedule: spec.schedule.clone(),
            time_zone: spec.time_zone.clone(),
            suspend: Some(spec.suspended.unwrap_or(false)),
            // One backup at a time per resource; a run that would overlap is skipped.
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(owner_annotation),
                    ..Default::default()
                }),
                spec: Some(JobSpec {
                    // One attempt per schedule: a retry would be a second backup and a second
                    // notification.
                    backoff_limit: Some(0),
                    active_deadline_seconds: deadline_seconds(args.backup_deadline),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(labels),
                            ..Default::default()
                        }),
                        spec: Some(PodSpec {
                            restart_policy: Some("Never".into()),
                            // Nothing in the pod talks to the Kubernetes API (the notifier has
                            // no client): restic, rclone or a custom image get no token.
                            automount_service_account_token: Some(false),
                            security_context: Some(PodSecurityContext {
                                seccomp_profile: Some(SeccompProfile {
                                    type_: "RuntimeDefault".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            init_containers: (!init_containers.is_empty())
                                .then_some(init_containers),
                            containers: vec![backup],
                            volumes: Some(volumes),
                            // An empty map is not stored; applying one would never match.
                            node_selector: spec.node_selector.clone().filter(|m| !m.is_empty()),
                            tolerations: spec.tolerations.clone(),
                            affinity: spec.affinity.as_ref().map(affinity_as_stored),
                            ..Default::default()
                        }),
                    },
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn owner_reference<K: Resource<DynamicType = ()>>(r: &K) -> OwnerReference {
    let meta = r.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod spec of a CronJob's Jobs.
pub fn pod_spec(cj: &CronJob) -> Option<&PodSpec> {
    cj.spec
        .as_ref()?
        .job_template
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()
}

/// `--backup-deadline` in whole seconds (rounded up), `None` for no limit.
fn deadline_seconds(d: Duration) -> Option<i64> {
    if d.is_zero() {
        return None;
    }
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Some(i64::try_from(secs).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{S3BackupSpec, VolumeBackupSpec};

    fn args() -> JobArgs {
        JobArgs {
            restic_image: "restic:test".into(),
            rclone_image: "rclone:test".into(),
            backup_deadline: Duration::from_secs(6 * 3600),
        }
    }

    fn vb(name: &str) -> VolumeBackup {
        let spec: VolumeBackupSpec = serde_json::from_value(serde_json::json!({
            "volumeClaimRef": {"name": "data"},
            "schedule": "0 3 * * *",
            "timeZone": "Europe/Berlin",
            "suspended": true,
            "repository": {"url": "s3:https://s3.example.com/$(HOME)/repo", "passwordSecretRef": {"name": "restic", "key": "pw"}, "credentialsSecretRef": {"name": "s3-creds"}},
            "retention": {"keepLast": 3, "keepDaily": 7, "keepWeekly": 0},
            "webhooks": {"success": "https://hooks.example.com/ok", "failure": ""}
        }))
        .unwrap();
        let mut r = VolumeBackup::new(name, spec);
        r.metadata.namespace = Some("team-a".into());
        r.metadata.uid = Some("uid-1".into());
        r
    }

    #[test]
    fn names_are_deterministic_and_fit_a_cron_job() {
        assert_eq!(cron_job_name("my-backup"), "my-backup-backup");
        let long = "a".repeat(60);
        let short = cron_job_name(&long);
        assert!(short.len() <= 52, "{short}");
        assert_eq!(short, cron_job_name(&long));
        assert_ne!(short, cron_job_name(&format!("{}b", "a".repeat(59))));
        assert!(short.ends_with("-backup"));
    }

    #[test]
    fn volume_backup_cron_job_carries_the_contract() {
        let cj = cron_job(&vb("nightly"), &args(), Duration::ZERO);
        let meta = &cj.metadata;
        let ann = meta.annotations.as_ref().unwrap();
        assert_eq!(
            ann[annotations::WEBHOOK_SUCCESS],
            "https://hooks.example.com/ok"
        );
        assert!(
            !ann.contains_key(annotations::WEBHOOK_FAILURE),
            "an empty URL means none"
        );
        assert_eq!(ann[annotations::NOTIFY_KIND], "VolumeBackup");
        assert_eq!(ann[annotations::NOTIFY_HOST], "team-a-data");
        assert_eq!(ann[annotations::NOTIFY_VOLUME], "data");
        assert_eq!(ann[annotations::NOTIFY_CONTAINER], "backup");
        assert_eq!(
            meta.labels.as_ref().unwrap()[contract::NOTIFY_LABEL],
            "true"
        );
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("VolumeBackup", "uid-1", Some(true))
        );
        let spec = cj.spec.unwrap();
        assert_eq!(spec.time_zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(spec.suspend, Some(true));
        let job = spec.job_template.spec.unwrap();
        assert_eq!(job.backoff_limit, Some(0));
        assert_eq!(job.active_deadline_seconds, Some(6 * 3600));
        let unbounded = JobArgs {
            backup_deadline: Duration::ZERO,
            ..args()
        };
        let cj = cron_job(&vb("nightly"), &unbounded, Duration::ZERO);
        let job = cj.spec.unwrap().job_template.spec.unwrap();
        assert_eq!(job.active_deadline_seconds, None);
        let pod = job.template.spec.unwrap();
        let backup = &pod.containers[0];
        assert_eq!(
            backup.command.as_ref().unwrap()[..2],
            ["/bin/sh".to_owned(), "-c".to_owned()]
        );
        assert!(
            !backup.command.as_ref().unwrap()[2].contains("s3.example.com"),
            "no user string in the script"
        );
        let env: BTreeMap<_, _> = backup
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e))
            .collect();
        assert_eq!(
            env["RESTIC_REPOSITORY"].value.as_deref(),
            Some("s3:https://s3.example.com/$$(HOME)/repo")
        );
        assert_eq!(env["BACKUP_HOST"].value.as_deref(), Some("team-a-data"));
        assert_eq!(
            env["BACKUP_FORGET_ARGS"].value.as_deref(),
            Some("--keep-last 3 --keep-daily 7")
        );
        let pw = env["RESTIC_PASSWORD"]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((pw.name.as_str(), pw.key.as_str()), ("restic", "pw"));
        assert_eq!(
            backup.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "s3-creds"
        );
        let data = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "data")
            .unwrap();
        let claim = data.persistent_volume_claim.as_ref().unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("data", Some(true))
        );
        let mount = backup
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "data")
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/data", Some(true))
        );
    }

    #[test]
    fn s3_backup_copies_the_bucket_with_rclone_configured_through_env() {
        let spec: S3BackupSpec = serde_json::from_value(serde_json::json!({
            "source": {"endpoint": "https://s3.example.com", "bucket": "photos", "prefix": "/2024/$(x)", "region": "eu-1", "credentialsSecretRef": {"name": "src"}},
            "schedule": "@daily",
            "repository": {"url": "/repo", "passwordSecretRef": {"name": "restic", "key": "pw"}},
            "resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}
        }))
        .unwrap();
        let mut r = S3Backup::new("bucket-backup", spec);
        r.metadata.namespace = Some("ns".into());
        let cj = cron_job(&r, &args(), Duration::ZERO);
        let ann = cj.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[annotations::NOTIFY_HOST], "ns-photos");
        assert_eq!(ann[annotations::NOTIFY_VOLUME], "photos");
        let pod = pod_spec(&cj).unwrap();
        let fetch = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(fetch.image.as_deref(), Some("rclone:test"));
        assert_eq!(
            fetch.args.as_ref().unwrap(),
            &[
                "copy",
                "--error-on-no-transfer",
                ":s3:photos/2024/$$(x)",
                "/data"
            ]
        );
        let env: BTreeMap<_, _> = fetch
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(env["RCLONE_S3_ENDPOINT"], Some("https://s3.example.com"));
        assert_eq!(env["RCLONE_S3_REGION"], Some("eu-1"));
        // A quota that requires resources refuses the pod unless the copy step has them too.
        let backup = &pod.containers[0];
        assert_eq!(fetch.resources, backup.resources);
        assert_eq!(
            serde_json::to_value(&fetch.resources).unwrap(),
            serde_json::json!({"requests": {"cpu": "500m", "memory": "1Gi"}})
        );
        assert_eq!(
            fetch.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "src"
        );
        assert!(
            pod.volumes
                .as_ref()
                .unwrap()
                .iter()
                .any(|v| v.name == "data" && v.empty_dir.is_some())
        );
    }

    #[test]
    fn the_template_hash_is_stable_and_moves_with_any_change_removals_included() {
        let hash =
            |cj: &CronJob| cj.metadata.annotations.as_ref().unwrap()[labels::TEMPLATE_HASH].clone();
        let a = cron_job(&vb("nightly"), &args(), Duration::ZERO);
        assert_eq!(
            hash(&a),
            hash(&cron_job(&vb("nightly"), &args(), Duration::ZERO))
        );
        assert_eq!(hash(&a).len(), 32);
        let mut no_zone = vb("nightly");
        no_zone.spec.common.time_zone = None;
        assert_ne!(hash(&a), hash(&cron_job(&no_zone, &args(), Duration::ZERO)));
        let mut no_failure_url = vb("nightly");
        no_failure_url.spec.common.webhooks = None;
        assert_ne!(
            hash(&a),
            hash(&cron_job(&no_failure_url, &args(), Duration::ZERO))
        );
    }

    #[test]
    fn backups_sharing_a_new_repository_initialise_it_in_turn() {
        assert_eq!(init_delay(0), Duration::ZERO);
        assert_eq!(init_delay(1), INIT_SPACING);
        assert_eq!(init_delay(3), INIT_SPACING * 3);
        assert_eq!(init_delay(10_000), MAX_INIT_DELAY);
        assert_eq!(init_delay(usize::MAX), MAX_INIT_DELAY);
        let env = |delay, name: &str| {
            let mut nightly = vb("nightly");
            nightly.spec.common.retention = None;
            let cj = cron_job(&nightly, &args(), delay);
            pod_spec(&cj).unwrap().containers[0]
                .env
                .clone()
                .unwrap_or_default()
                .into_iter()
                .find(|e| e.name == name)
                .map(|e| (e.value, e.value_from.is_some()))
        };
        // The oldest one waits for nothing, and without retention nothing is forgotten; the
        // entries are there all the same, empty, so that the credentials Secret cannot set them.
        assert_eq!(
            env(Duration::ZERO, "BACKUP_INIT_DELAY"),
            Some((None, false))
        );
        assert_eq!(
            env(Duration::ZERO, "BACKUP_FORGET_ARGS"),
            Some((None, false))
        );
        assert_eq!(
            env(init_delay(2), "BACKUP_INIT_DELAY"),
            Some((Some("40".to_owned()), false))
        );
    }
}

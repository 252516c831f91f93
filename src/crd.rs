//! The custom resources `VolumeBackup` and `S3Backup` (`backups.k8s.bnerd.com/v1`, api.md §2).
//!
//! The schema carries what CEL and OpenAPI can check (required fields, URL schemes, name
//! patterns, non-negative retention), so those hold even while the admission webhook is down;
//! the webhook adds what they cannot express (the URL policy, cron syntax, IANA zones).

// kube's `printcolumn(...)` repeats `type_ = ...` per column, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Backs up one PersistentVolumeClaim with restic on a schedule.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "backups.k8s.bnerd.com",
    version = "v1",
    kind = "VolumeBackup",
    plural = "volumebackups",
    shortname = "vb",
    category = "backups",
    namespaced,
    status = "BackupStatus",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspended"),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupSpec {
    /// The PersistentVolumeClaim to back up, in the same namespace. Mounted read-only.
    pub volume_claim_ref: VolumeClaimRef,
    #[serde(flatten)]
    pub common: CommonSpec,
}

/// Copies an S3 bucket and backs the copy up with restic on a schedule.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "backups.k8s.bnerd.com",
    version = "v1",
    kind = "S3Backup",
    plural = "s3backups",
    shortname = "s3b",
    category = "backups",
    namespaced,
    status = "BackupStatus",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspended"),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct S3BackupSpec {
    /// The bucket to copy before each backup.
    pub source: S3Source,
    #[serde(flatten)]
    pub common: CommonSpec,
}

/// Fields both kinds share.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CommonSpec {
    /// Cron schedule: five fields, or @hourly, @daily, @weekly, @monthly, @yearly.
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// IANA time zone for the schedule (CronJob.spec.timeZone), e.g. Europe/Berlin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// The restic repository.
    pub repository: Repository,
    /// `restic forget --prune` after each successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Suspends the schedule (CronJob.spec.suspend); running Jobs are untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<bool>,
    /// Where to POST a notification after each backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Webhooks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Resources of the backup container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    // Printable ASCII without spaces, as every image reference is: the apiserver refuses
    // whitespace only when a Job creates the pod, so the CronJob would be stored and every
    // backup would fail to start (RE2's \S would still let NBSP and control characters by).
    /// restic image override: an image reference (printable ASCII, no spaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[!-~]+$"))]
    pub image: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaimRef {
    /// Name of the PersistentVolumeClaim (DNS-1123 subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    /// S3 endpoint, an https:// URL.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://')").message("must be an https:// URL"))]
    pub endpoint: String,
    /// Bucket name (S3 naming rules).
    #[schemars(
        length(min = 3, max = 63),
        regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    )]
    pub bucket: String,
    /// Only objects in this folder of the bucket are copied: a path such as `photos/2024`, not
    /// the start of a name (`photos/20` copies nothing, which fails the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the source bucket.
    pub credentials_secret_ref: SecretRef,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    /// restic repository: s3:https://…, rest:https://…, b2:…, azure:…, gs:…, sftp:…, or a path.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// The repository password.
    pub password_secret_ref: SecretKeyRef,
    /// Every key of this Secret becomes an environment variable of the backup container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// A Secret in the resource's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME))]
    pub name: String,
    /// A key of that Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    #[x_kube(validation = kube::core::Rule::new("self != '.' && !self.startsWith('..')").message("must not be '.' or start with '..'"))]
    pub key: String,
}

// What the apiserver takes in a pod's Secret references: checked on the resource, so a name it
// would refuse on the CronJob is refused when the resource is applied, naming the field.
/// A DNS-1123 subdomain.
const SECRET_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A ConfigMap or Secret key.
const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// A Secret in the resource's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME))]
    pub name: String,
}

/// How many snapshots `restic forget` keeps.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_last: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_hourly: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_daily: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_weekly: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_monthly: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_yearly: Option<i32>,
}

/// Notification targets. Both optional.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Webhooks {
    /// POSTed after a successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("self == '' || self.startsWith('https://') || self.startsWith('http://')").message("must be an http:// or https:// URL (or empty for none)"))]
    pub success: Option<String>,
    /// POSTed after a failed backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("self == '' || self.startsWith('https://') || self.startsWith('http://')").message("must be an http:// or https:// URL (or empty for none)"))]
    pub failure: Option<String>,
}

/// Status of both kinds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_time: Option<Time>,
    /// Ready, Suspended, NotifierInjected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Both CRDs, in a stable order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![VolumeBackup::crd(), S3Backup::crd()]
        .into_iter()
        .map(bound_int32)
        .collect()
}

/// Gives every `format: int32` integer of the schema (retention counts, affinity weights) the
/// bounds of an i32. Apiservers before v1.36 do not enforce the format on custom resources, and
/// one stored object the controller cannot decode would fail its whole watch list, stopping
/// the reconciles of every backup of that kind; a bound makes the apiserver itself refuse the
/// value, naming the field.
fn bound_int32(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                let int32 = map.get("type").and_then(|t| t.as_str()) == Some("integer")
                    && map.get("format").and_then(|f| f.as_str()) == Some("int32");
                if int32 {
                    map.entry("minimum").or_insert(f64::from(i32::MIN).into());
                    map.entry("maximum").or_insert(f64::from(i32::MAX).into());
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// Both CRDs as a YAML stream, as `backup-operator crds` prints them.
pub fn crds_yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(out)
}

//! Objects and small clients many tests need.

use std::net::SocketAddr;

use backup_operator::crd::BackupStatus;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Creates `obj` (JSON of a `K`) in `ns`.
pub async fn create<K>(client: &kube::Client, ns: &str, obj: Value) -> K
where
    K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    let obj: K = serde_json::from_value(obj).unwrap();
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap()
}

/// A PersistentVolumeClaim (it stays Pending: nothing provisions volumes here).
pub async fn pvc(client: &kube::Client, ns: &str, name: &str) {
    create::<PersistentVolumeClaim>(
        client,
        ns,
        json!({
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }),
    )
    .await;
}

/// The Secret `restic` with key `password`, as the tests' VolumeBackups reference it.
pub async fn restic_secret(client: &kube::Client, ns: &str) {
    create::<Secret>(
        client,
        ns,
        json!({"metadata": {"name": "restic"}, "stringData": {"password": "pw"}}),
    )
    .await;
}

/// `(status, reason)` of a condition.
pub fn condition(status: Option<&BackupStatus>, type_: &str) -> Option<(String, String)> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The sum of every series of the metric `name` (a prefix match) on an operator's admin port.
pub async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP/1.1 GET (the admin port), answered with `(status, body)`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Creates the Job the CronJob controller would create, marked as managed elsewhere so the
/// built-in job controller leaves its status to us, and reports it failed.
pub async fn job_failed(client: &kube::Client, ns: &str, cj: &CronJob) {
    let template = cj.spec.as_ref().unwrap().job_template.clone();
    let mut spec = template.spec.unwrap();
    spec.managed_by = Some("backup-operator.test/local-pod-runner".into());
    let job = Job {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{}-manual", cj.metadata.name.as_deref().unwrap())),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone()),
            // As the CronJob controller (and `kubectl create job --from=cronjob/…`) sets it.
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "CronJob".into(),
                    name: cj.metadata.name.clone().unwrap_or_default(),
                    uid: cj.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                },
            ]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let job = jobs.create(&PostParams::default(), &job).await.unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "startTime": now,
        "failed": 1,
        "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastTransitionTime": now, "lastProbeTime": now},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastTransitionTime": now, "lastProbeTime": now}
        ]
    }});
    jobs.patch_status(
        job.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
}

/// A CronJob manifest without the notify label (one container running `true`), for tests of
/// what the apiserver or a policy makes of a CronJob rather than of its injection.
pub fn plain_cron_job_yaml(ns: &str, name: &str, schedule: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata: {{name: {name}, namespace: {ns}}}
spec:
  schedule: "{schedule}"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{{name: c, image: busybox, command: ["true"]}}]
"#
    )
}

/// A minimal VolumeBackup manifest (claim `data`, repository `/repo`, Secret `restic`), for tests
/// about the controller rather than the backup.
pub fn volume_backup_yaml(ns: &str, name: &str) -> String {
    format!(
        r#"apiVersion: backups.k8s.bnerd.com/v1
kind: VolumeBackup
metadata: {{name: {name}, namespace: {ns}}}
spec:
  volumeClaimRef: {{name: data}}
  schedule: "0 3 * * *"
  repository: {{url: /repo, passwordSecretRef: {{name: restic, key: password}}}}
"#
    )
}

//! Issue 6 end to end with real backups: the controller's CronJob, with the notifier injected by
//! the live webhook, run by the local pod runner (a test tool, not a kubelet) with real restic
//! and rclone against a real S3 server (VersityGW). Snapshots are restored and compared byte for
//! byte; the receiver must get exactly one payload; a failed Job reaches the status.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use backup_operator::crd::{S3Backup, VolumeBackup};
use common::cluster::{Cluster, Mode, cluster, kubectl_stdin, wait_for_event};
use common::fixtures;
use common::notify_scenario::expected;
use common::pod_run::{inject_flags, pod_spec, runner};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{Value, json};
use testkit::pod_runner::PodPhase;
use testkit::receiver::{Receiver, Reply};
use testkit::s3_server::{ACCESS_KEY, S3Server, SECRET_KEY};
use testkit::wait_for;

const RESTIC_IMAGE: &str = "registry.test/restic:e2e";
const RCLONE_IMAGE: &str = "registry.test/rclone:e2e";
/// Where the test images carry the S3 server's CA (like a corporate CA baked into an image).
const CA_IN_IMAGE: &str = "/etc/ssl/test-ca.pem";

fn operator() -> &'static Cluster {
    cluster(
        Mode::Full,
        &inject_flags(&[
            "--restic-image",
            RESTIC_IMAGE,
            "--rclone-image",
            RCLONE_IMAGE,
        ]),
    )
}

/// Secrets of a namespace: the restic password (right and wrong) and S3 credentials whose keys
/// become env (AWS_* for restic and rclone, SSL_CERT_FILE for both Go programs).
async fn secrets(client: &kube::Client, ns: &str) {
    fixtures::create::<Secret>(client, ns, json!({"metadata": {"name": "restic"}, "stringData": {"password": "correct horse", "wrong": "battery staple"}})).await;
    fixtures::create::<Secret>(
        client,
        ns,
        json!({"metadata": {"name": "s3-credentials"}, "stringData": {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "SSL_CERT_FILE": CA_IN_IMAGE
        }}),
    )
    .await;
}

fn restic(s3: &S3Server, repo: &str, args: &[&str]) -> std::process::Output {
    restic_command(s3, repo, args)
        .output()
        .expect("restic is installed (Debian package restic)")
}

/// restic on the host against the test's S3 repository.
fn restic_command(s3: &S3Server, repo: &str, args: &[&str]) -> Command {
    let mut c = Command::new("restic");
    c.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("RESTIC_REPOSITORY", format!("s3:{}/{repo}", s3.endpoint()))
        .env("RESTIC_PASSWORD", "correct horse")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("SSL_CERT_FILE", &s3.ca_file)
        .env(
            "RESTIC_CACHE_DIR",
            std::env::temp_dir().join("restic-test-cache"),
        );
    c
}

fn locks(s3: &S3Server, repo: &str) -> usize {
    let out = restic(s3, repo, &["--no-lock", "list", "locks"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Leaves the lock of a backup killed mid-run (SIGKILL, as an OOM kill or a lost node would)
/// in the repository.
fn leave_a_stale_lock(s3: &S3Server, repo: &str) {
    let big = tempfile::tempdir().unwrap();
    std::fs::write(big.path().join("big.bin"), random_bytes(200_000_000, 7)).unwrap();
    let mut cmd = restic_command(s3, repo, &["backup", big.path().to_str().unwrap()]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Tied to the test process, so a failed assertion below does not leave it running.
    let mut child = common::spawn_tied(cmd).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while locks(s3, repo) == 0 {
        assert!(std::time::Instant::now() < deadline, "restic took no lock");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(locks(s3, repo), 1, "the killed backup's lock stays behind");
}

/// The only snapshot's host and tags, after restoring it into `target`.
fn restore_latest(s3: &S3Server, repo: &str, target: &Path) -> (String, Vec<String>) {
    let out = restic(s3, repo, &["snapshots", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshots: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snapshots.len(), 1, "{snapshots:#?}");
    let out = restic(
        s3,
        repo,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tags = snapshots[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    (snapshots[0]["hostname"].as_str().unwrap().to_owned(), tags)
}

fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((
                    path.strip_prefix(root).unwrap().display().to_string(),
                    std::fs::read(&path).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

async fn stored_cron_job(client: &kube::Client, ns: &str, name: &str) -> CronJob {
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the CronJob with the notifier",
        Duration::from_secs(60),
        || async {
            let cj = cjs
                .get_opt(&format!("{name}-backup"))
                .await?
                .ok_or_else(|| anyhow::anyhow!("no CronJob yet"))?;
            let spec = pod_spec(&cj);
            anyhow::ensure!(
                spec.init_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == "notifier"),
                "no notifier yet"
            );
            Ok(cj)
        },
    )
    .await
    .unwrap()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn volume_backup(
    ns: &str,
    name: &str,
    s3: &S3Server,
    repo: &str,
    password_key: &str,
    rx: &Receiver,
) -> String {
    format!(
        r#"apiVersion: backups.k8s.bnerd.com/v1
kind: VolumeBackup
metadata: {{name: {name}, namespace: {ns}}}
spec:
  volumeClaimRef: {{name: data}}
  schedule: "0 3 * * *"
  repository:
    url: "s3:{endpoint}/{repo}"
    passwordSecretRef: {{name: restic, key: {password_key}}}
    credentialsSecretRef: {{name: s3-credentials}}
  retention: {{keepLast: 3}}
  webhooks:
    success: "{success}"
    failure: "{failure}"
"#,
        endpoint = s3.endpoint(),
        success = rx.url("/success"),
        failure = rx.url("/failure"),
    )
}

fn apply(c: &Cluster, yaml: &str) {
    let out = kubectl_stdin(c.cp, &["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn one_payload(rx: &Receiver, what: &str) -> testkit::receiver::RecordedRequest {
    assert!(
        rx.wait_for(1, Duration::from_secs(15)),
        "{what}: no notification"
    );
    std::thread::sleep(Duration::from_secs(1));
    let requests = rx.requests();
    assert_eq!(requests.len(), 1, "{what}: {requests:#?}");
    requests.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_volume_backup_is_backed_up_restored_and_notified_and_a_failure_reaches_the_status() {
    let c = operator();
    let client = c.cp.client().await;
    let ns = c.cp.namespace("backup-vb").await;
    let ns = ns.name();
    let s3 = S3Server::start().unwrap();
    secrets(&client, ns).await;
    fixtures::pvc(&client, ns, "data").await;
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.txt"), b"first file\n").unwrap();
    std::fs::create_dir_all(data.path().join("nested/deeper")).unwrap();
    std::fs::write(data.path().join("nested/b.bin"), random_bytes(300_000, 1)).unwrap();
    std::fs::write(data.path().join("nested/deeper/c.txt"), b"third\n").unwrap();

    let rx = Receiver::http(Reply::Status(204));
    apply(
        c,
        &volume_backup(ns, "nightly", &s3, "repo-vb", "password", &rx),
    );
    let cj = stored_cron_job(&client, ns, "nightly").await;
    let out = tempfile::tempdir().unwrap();
    let kubeconfig = c.cp.kubeconfig_path().to_path_buf();
    let pod_runner = runner(out.path(), ns, Some(&kubeconfig), |cfg| {
        cfg.images
            .add_file(RESTIC_IMAGE, CA_IN_IMAGE, &s3.ca_file)
            .unwrap();
        cfg.pvcs.insert("data".into(), data.path().to_path_buf());
    });
    let report = pod_runner.run(&pod_spec(&cj)).unwrap();
    let log = |c: &str| {
        std::fs::read_to_string(&report.container(c).unwrap().log_path).unwrap_or_default()
    };
    assert_eq!(
        report.phase,
        PodPhase::Succeeded,
        "{report:#?}\nbackup log:\n{}\nS3 log:\n{}",
        log("backup"),
        s3.log()
    );
    let req = one_payload(&rx, "successful backup");
    assert_eq!(req.path, "/success");
    assert_eq!(req.json().unwrap(), expected(ns, "success"));

    let restored = tempfile::tempdir().unwrap();
    let (host, tags) = restore_latest(&s3, "repo-vb", restored.path());
    assert_eq!(host, format!("{ns}-data"));
    assert!(
        tags.contains(&format!("VolumeBackup={ns}/nightly")),
        "{tags:?}"
    );
    assert_eq!(files(&restored.path().join("data")), files(data.path()));

    // The next run after a backup that was killed mid-way: its lock would make forget --prune
    // (retention is set) fail every night; the run clears the stale lock and succeeds.
    leave_a_stale_lock(&s3, "repo-vb");
    let report = pod_runner.run(&pod_spec(&cj)).unwrap();
    assert_eq!(
        report.phase,
        PodPhase::Succeeded,
        "{report:#?}\nbackup log:\n{}",
        std::fs::read_to_string(&report.container("backup").unwrap().log_path).unwrap_or_default()
    );
    assert!(rx.wait_for(2, Duration::from_secs(15)));
    assert_eq!(rx.requests()[1].path, "/success");
    assert_eq!(locks(&s3, "repo-vb"), 0);

    // A wrong repository password: the backup fails, one failure payload.
    let rx = Receiver::http(Reply::Status(204));
    apply(
        c,
        &volume_backup(ns, "wrong-password", &s3, "repo-vb", "wrong", &rx),
    );
    let cj = stored_cron_job(&client, ns, "wrong-password").await;
    let report = pod_runner.run(&pod_spec(&cj)).unwrap();
    assert_eq!(report.phase, PodPhase::Failed, "{report:#?}");
    assert_ne!(report.container("backup").unwrap().exit_code, Some(0));
    let req = one_payload(&rx, "failed backup");
    assert_eq!(req.json().unwrap(), expected(ns, "failure"));

    // The Job object of that run, set to failed (by the test, standing in for the kubelet and
    // the job controller that cannot run here), reaches the VolumeBackup's status.
    fixtures::job_failed(&client, ns, &cj).await;
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    wait_for("lastFailedTime", Duration::from_secs(60), || async {
        let vb = vbs.get("wrong-password").await?;
        anyhow::ensure!(
            vb.status.and_then(|s| s.last_failed_time).is_some(),
            "lastFailedTime not set"
        );
        Ok(())
    })
    .await
    .unwrap();
    wait_for_event(&client, ns, "BackupFailed", None, Duration::from_secs(60)).await;

    // And the per-resource metrics say so.
    let labels = format!(r#"{{namespace="{ns}",kind="VolumeBackup",name="wrong-password"}}"#);
    let metrics = wait_for("the backup metrics", Duration::from_secs(30), || async {
        let (_, body) = fixtures::http_get(c.operator.admin, "/metrics").await;
        anyhow::ensure!(
            body.contains(&format!(
                "backup_operator_backup_last_job_success{labels} 0"
            )),
            "not yet"
        );
        Ok(body)
    })
    .await
    .unwrap();
    assert!(
        metrics.contains(&format!(
            "backup_operator_backup_last_failure_timestamp_seconds{labels} "
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "backup_operator_backup_last_job_duration_seconds{labels} "
        )),
        "{metrics}"
    );
}

fn s3_backup(ns: &str, name: &str, bucket: &str, s3: &S3Server, rx: &Receiver) -> String {
    format!(
        r#"apiVersion: backups.k8s.bnerd.com/v1
kind: S3Backup
metadata: {{name: {name}, namespace: {ns}}}
spec:
  source:
    endpoint: "{endpoint}"
    bucket: {bucket}
    credentialsSecretRef: {{name: s3-credentials}}
  schedule: "@daily"
  repository:
    url: "s3:{endpoint}/repo-s3"
    passwordSecretRef: {{name: restic, key: password}}
    credentialsSecretRef: {{name: s3-credentials}}
  webhooks:
    success: "{success}"
    failure: "{failure}"
"#,
        endpoint = s3.endpoint(),
        success = rx.url("/success"),
        failure = rx.url("/failure"),
    )
}

#[tokio::test]
async fn an_s3_backup_copies_the_bucket_backs_it_up_and_notifies() {
    let c = operator();
    let client = c.cp.client().await;
    let ns = c.cp.namespace("backup-s3").await;
    let ns = ns.name();
    let s3 = S3Server::start().unwrap();
    secrets(&client, ns).await;
    let objects: Vec<(String, Vec<u8>)> = vec![
        ("photo-1.jpg".into(), random_bytes(200_000, 7)),
        ("albums/2024/photo-2.jpg".into(), random_bytes(50_000, 8)),
        ("albums/2024/notes.txt".into(), b"summer\n".to_vec()),
        ("empty.txt".into(), Vec::new()),
    ];
    let refs: Vec<(&str, &[u8])> = objects
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let bucket = s3.bucket("photos", &refs).unwrap();

    let rx = Receiver::http(Reply::Status(200));
    apply(c, &s3_backup(ns, "bucket-backup", "photos", &s3, &rx));
    let cj = stored_cron_job(&client, ns, "bucket-backup").await;
    let out = tempfile::tempdir().unwrap();
    let kubeconfig = c.cp.kubeconfig_path().to_path_buf();
    let pod_runner = runner(out.path(), ns, Some(&kubeconfig), |cfg| {
        cfg.images
            .add_file(RESTIC_IMAGE, CA_IN_IMAGE, &s3.ca_file)
            .unwrap();
        cfg.images
            .add_file(RCLONE_IMAGE, CA_IN_IMAGE, &s3.ca_file)
            .unwrap();
    });
    let report = pod_runner.run(&pod_spec(&cj)).unwrap();
    let log = |c: &str| {
        std::fs::read_to_string(&report.container(c).unwrap().log_path).unwrap_or_default()
    };
    assert_eq!(
        report.phase,
        PodPhase::Succeeded,
        "{report:#?}\nfetch log:\n{}\nbackup log:\n{}",
        log("fetch"),
        log("backup")
    );
    let req = one_payload(&rx, "S3 backup");
    assert_eq!(
        req.json().unwrap(),
        json!({"status": "success", "message": "S3 backup completed", "host": format!("{ns}-photos"), "volume": "photos"})
    );
    let restored = tempfile::tempdir().unwrap();
    let (host, _) = restore_latest(&s3, "repo-s3", restored.path());
    assert_eq!(host, format!("{ns}-photos"));
    assert_eq!(files(&restored.path().join("data")), files(&bucket));
    assert!(files(&bucket).len() >= 3);
    let s3bs: Api<S3Backup> = Api::namespaced(client.clone(), ns);
    assert!(
        s3bs.get("bucket-backup")
            .await
            .unwrap()
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // The copy step fails (the bucket does not exist): the backup never runs, and the sidecar,
    // stopped with no result, reports one failure.
    let rx = Receiver::http(Reply::Status(200));
    apply(
        c,
        &s3_backup(ns, "missing-bucket", "no-such-bucket", &s3, &rx),
    );
    let cj = stored_cron_job(&client, ns, "missing-bucket").await;
    let report = pod_runner.run(&pod_spec(&cj)).unwrap();
    assert_eq!(report.phase, PodPhase::Failed, "{report:#?}");
    assert_ne!(report.container("fetch").unwrap().exit_code, Some(0));
    assert_eq!(
        report.container("backup").unwrap().exit_code,
        None,
        "the backup must not run"
    );
    let req = one_payload(&rx, "failed copy");
    assert_eq!(
        req.json().unwrap(),
        json!({"status": "failure", "message": "S3 backup failed", "host": format!("{ns}-no-such-bucket"), "volume": "no-such-bucket"})
    );

    // A prefix that is the start of a name, not a folder, copies nothing: that fails the run
    // instead of snapshotting an empty directory as a backup of the bucket.
    let rx = Receiver::http(Reply::Status(200));
    apply(
        c,
        &s3_backup(ns, "partial-prefix", "photos", &s3, &rx).replace(
            "    bucket: photos\n",
            "    bucket: photos\n    prefix: albums/20\n",
        ),
    );
    let cj = stored_cron_job(&client, ns, "partial-prefix").await;
    let report = pod_runner.run(&pod_spec(&cj)).unwrap();
    assert_eq!(report.phase, PodPhase::Failed, "{report:#?}");
    assert_eq!(
        report.container("backup").unwrap().exit_code,
        None,
        "the backup must not run"
    );
    let req = one_payload(&rx, "empty copy");
    assert_eq!(req.json().unwrap()["status"], "failure");
}

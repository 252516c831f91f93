//! The validating webhook fails closed, and its `matchConditions` keep that to what it checks:
//! while it is unreachable, creates and changes of checked fields are refused, but an object can
//! still be labelled, annotated, opted out of notifications, and deleted through its finalizers. Its own test binary: it
//! points the webhook configurations of its control plane at a port nobody listens on.

mod common;

use std::net::TcpListener;
use std::process::Output;
use std::time::Duration;

use common::cluster::{
    Mode, apply_webhook_configurations, cluster, kubectl, kubectl_ok, kubectl_stdin,
};
use testkit::control_plane::ControlPlane;

const NS: &str = "validate-outage";

fn volume_backup(schedule: &str) -> String {
    format!(
        r#"apiVersion: backups.k8s.bnerd.com/v1
kind: VolumeBackup
metadata:
  name: held
  namespace: {NS}
  finalizers: [example.com/hold]
spec:
  volumeClaimRef: {{name: data}}
  schedule: "{schedule}"
  repository: {{url: "/repo", passwordSecretRef: {{name: restic, key: password}}}}
  webhooks: {{success: "https://hooks.example.com/ok"}}
"#
    )
}

fn cron_job() -> String {
    format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: hand-written
  namespace: {NS}
  labels: {{backups.k8s.bnerd.com/notify: "true"}}
  annotations:
    backups.k8s.bnerd.com/webhook-success: "https://hooks.example.com/ok"
    backups.k8s.bnerd.com/notify-kind: VolumeBackup
    backups.k8s.bnerd.com/notify-host: {NS}-data
    backups.k8s.bnerd.com/notify-volume: data
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{{name: backup, image: busybox, command: ["true"]}}]
"#
    )
}

/// Runs kubectl and returns `Ok(stdout)` or `Err(stderr)`.
fn run(cp: &ControlPlane, args: &[&str]) -> Result<String, String> {
    outcome(kubectl(cp, args))
}

fn outcome(out: Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Refused because the webhook could not be called (not by the webhook's own verdict).
fn assert_refused_by_outage(what: &str, result: Result<String, String>) {
    match result {
        Ok(out) => panic!("{what} was admitted while the validating webhook was down: {out}"),
        Err(err) => assert!(
            err.contains("failed calling webhook"),
            "{what}: refused, but not for the outage: {err}"
        ),
    }
}

fn assert_admitted(what: &str, result: Result<String, String>) {
    if let Err(err) = result {
        panic!("{what} was refused while the validating webhook was down: {err}");
    }
}

#[test]
#[rustfmt::skip] // kubectl argument lists read best one command per line
fn an_outage_blocks_only_what_the_webhook_checks() {
    let c = cluster(Mode::AdmissionOnly, &[]);
    let cp = c.cp;
    kubectl_ok(cp, &["create", "namespace", NS]);
    for (what, yaml) in [
        ("the VolumeBackup", volume_backup("0 3 * * *")),
        ("the CronJob", cron_job()),
    ] {
        let out = kubectl_stdin(cp, &["apply", "-f", "-"], &yaml);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Both configurations now point at a port nobody listens on.
    let dead = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    apply_webhook_configurations(cp, &format!("https://{dead}"), Some(&c.certs.join("ca.crt")));
    // The apiserver picks the change up asynchronously; a dry-run create tells when it has.
    let new_backup = || volume_backup("0 3 * * *").replace("name: held", "name: new");
    assert!(
        testkit::poll(Duration::from_secs(60), Duration::from_millis(300), || {
            let out = kubectl_stdin(cp, &["create", "--dry-run=server", "-f", "-"], &new_backup());
            String::from_utf8_lossy(&out.stderr).contains("failed calling webhook")
        }),
        "the validating webhook configuration never pointed at the dead port"
    );

    // Fail closed for everything the webhook checks.
    assert_refused_by_outage(
        "a spec change",
        run(
            cp,
            &[
                "patch", "volumebackup", "held", "-n", NS, "--type=merge",
                "-p", r#"{"spec":{"schedule":"0 5 * * *"}}"#,
            ],
        ),
    );
    assert_refused_by_outage(
        "a new VolumeBackup",
        outcome(kubectl_stdin(
            cp,
            &["create", "-f", "-"],
            &new_backup(),
        )),
    );
    assert_refused_by_outage(
        "a changed webhook-success annotation",
        run(
            cp,
            &[
                "annotate", "cronjob", "hand-written", "-n", NS, "--overwrite",
                "backups.k8s.bnerd.com/webhook-success=https://169.254.169.254/x",
            ],
        ),
    );
    assert_refused_by_outage(
        "a removed notify-volume annotation",
        run(
            cp,
            &[
                "annotate", "cronjob", "hand-written", "-n", NS,
                "backups.k8s.bnerd.com/notify-volume-",
            ],
        ),
    );

    // Everything else goes through.
    assert_admitted(
        "a label on the VolumeBackup",
        run(cp, &["label", "volumebackup", "held", "-n", NS, "team=storage"]),
    );
    assert_admitted(
        "an unrelated annotation on the CronJob",
        run(cp, &["annotate", "cronjob", "hand-written", "-n", NS, "owner=storage"]),
    );
    assert_admitted(
        "a label on the CronJob",
        run(cp, &["label", "cronjob", "hand-written", "-n", NS, "team=storage"]),
    );
    // Opting out is never denied, so it is not sent either.
    assert_admitted(
        "opting the CronJob out",
        run(
            cp,
            &[
                "label", "cronjob", "hand-written", "-n", NS, "--overwrite",
                "backups.k8s.bnerd.com/notify=false",
            ],
        ),
    );
    assert_admitted(
        "a CronJob spec change outside the notification",
        run(
            cp,
            &[
                "patch", "cronjob", "hand-written", "-n", NS, "--type=merge",
                "-p", r#"{"spec":{"schedule":"0 6 * * *"}}"#,
            ],
        ),
    );

    // Deletion through a finalizer: the delete sets deletionTimestamp (DELETE is not sent to
    // the webhook), and removing the finalizer is an UPDATE that must not wait for it.
    assert_admitted(
        "deleting the VolumeBackup",
        run(cp, &["delete", "volumebackup", "held", "-n", NS, "--wait=false"]),
    );
    // Whatever else that UPDATE changes: an object on its way out is never checked.
    assert_admitted(
        "removing the finalizer, with a spec change",
        run(
            cp,
            &[
                "patch", "volumebackup", "held", "-n", NS, "--type=json",
                "-p", r#"[{"op":"remove","path":"/metadata/finalizers"},{"op":"replace","path":"/spec/schedule","value":"0 7 * * *"}]"#,
            ],
        ),
    );
    let gone = run(cp, &["get", "volumebackup", "held", "-n", NS]).expect_err("the VolumeBackup is still there");
    assert!(gone.contains("NotFound"), "{gone}");
}

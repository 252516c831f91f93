//! Issue 5 point 3, shared by both notifier modes: a labelled CronJob stored through the live
//! mutating webhook, its pod template run by the local pod runner, and the receiver counting.

use std::time::Duration;

use k8s_openapi::api::batch::v1::CronJob;
use kube::api::Api;
use serde_json::Value;
use testkit::receiver::{Receiver, Reply};

use super::cluster::{Cluster, kubectl_stdin};
use super::pod_run::{NOTIFIER_IMAGE, kill_when_running, pod_spec, runner};

/// A labelled, annotated CronJob whose backup container runs `script` with `sh -c`.
pub fn cron_job(ns: &str, name: &str, rx: &Receiver, script: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: {name}
  namespace: {ns}
  labels: {{backups.k8s.bnerd.com/notify: "true"}}
  annotations:
    backups.k8s.bnerd.com/webhook-success: "{success}"
    backups.k8s.bnerd.com/webhook-failure: "{failure}"
    backups.k8s.bnerd.com/notify-kind: VolumeBackup
    backups.k8s.bnerd.com/notify-host: {ns}-data
    backups.k8s.bnerd.com/notify-volume: data
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      backoffLimit: 0
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: backup
              image: busybox:1.36
              command: ["sh", "-c", "{script}"]
"#,
        success = rx.url(&path("success")),
        failure = rx.url(&path("failure")),
    )
}

/// The path each URL points at. The kubelet expands `$(VAR)` in env values (the notifier gets its
/// URLs through env) and unescapes `$$`, so the paths carry both: they must arrive as written.
pub fn path(status: &str) -> String {
    format!("/{status}/s3cr3t-token-$(NOTIFY_SUCCESS_URL)-$$x")
}

pub fn expected(ns: &str, status: &str) -> Value {
    let message = if status == "success" {
        "Volume backup completed"
    } else {
        "Volume backup failed"
    };
    serde_json::json!({"status": status, "message": message, "host": format!("{ns}-data"), "volume": "data"})
}

/// Applies the CronJob through the apiserver (and so through the mutating webhook) and returns
/// what was stored.
pub async fn store(c: &Cluster, ns: &str, name: &str, yaml: &str) -> CronJob {
    let out = kubectl_stdin(c.cp, &["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Api::<CronJob>::namespaced(c.cp.client().await, ns)
        .get(name)
        .await
        .unwrap()
}

/// Runs the three outcomes: exit 0, exit 3, and the main container killed with SIGKILL.
pub async fn three_outcomes(c: &Cluster, ns: &str, notifier_in_init_containers: bool) {
    for (name, script, kill, want_status, want_exit) in [
        ("exit-zero", "echo backing up; exit 0", false, "success", 0),
        // Long enough for the notifier to notice the end before the runner's SIGTERM.
        (
            "slow-success",
            "echo backing up; sleep 1.5; exit 0",
            false,
            "success",
            0,
        ),
        ("exit-three", "echo backing up; exit 3", false, "failure", 3),
        ("killed", "echo backing up; sleep 60", true, "failure", 137),
    ] {
        let rx = Receiver::http(Reply::Status(200));
        let stored = store(c, ns, name, &cron_job(ns, name, &rx, script)).await;
        let spec = pod_spec(&stored);
        let notifier_is_init = spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == "notifier");
        assert_eq!(
            notifier_is_init, notifier_in_init_containers,
            "{name}: notifier in the wrong list"
        );
        assert!(spec.containers[0].image.as_deref() == Some("busybox:1.36"));
        assert!(
            spec.init_containers
                .iter()
                .flatten()
                .any(|c| c.image.as_deref() == Some(NOTIFIER_IMAGE))
        );

        let out = tempfile::tempdir().unwrap();
        let runner = runner(out.path(), ns, None, |_| {});
        let handle = runner.start(&spec).unwrap();
        if kill {
            kill_when_running(&handle, "backup", libc::SIGKILL);
        }
        let report = handle.wait().unwrap();
        let backup = report.container("backup").unwrap();
        assert_eq!(backup.exit_code, Some(want_exit), "{name}: {report:#?}");
        // The pod's outcome is the backup's alone.
        let phase_ok = report.phase == testkit::pod_runner::PodPhase::Succeeded;
        assert_eq!(phase_ok, want_exit == 0, "{name}: {report:#?}");

        assert_one_notification(&rx, &report, ns, want_status, name);
        let notifier = report.container("notifier").unwrap();
        assert_eq!(
            notifier.exit_code,
            Some(0),
            "{name}: the notifier must exit 0: {report:#?}"
        );
        assert!(
            !notifier_log(&report).contains("s3cr3t-token"),
            "{name}: the URL path leaked into the log"
        );
    }
}

/// The receiver got exactly one request: the payload for `status`, at that status's URL.
pub fn assert_one_notification(
    rx: &Receiver,
    report: &testkit::pod_runner::PodReport,
    ns: &str,
    status: &str,
    name: &str,
) {
    assert!(
        rx.wait_for(1, Duration::from_secs(10)),
        "{name}: no notification; notifier log:\n{}",
        notifier_log(report)
    );
    // Exactly one: give a stray second attempt the time to show up.
    std::thread::sleep(Duration::from_secs(1));
    let requests = rx.requests();
    assert_eq!(requests.len(), 1, "{name}: {requests:#?}");
    let req = &requests[0];
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.path, path(status), "{name}: sent elsewhere");
    assert_eq!(req.json().unwrap(), expected(ns, status), "{name}");
}

pub fn notifier_log(report: &testkit::pod_runner::PodReport) -> String {
    report
        .container("notifier")
        .and_then(|c| std::fs::read_to_string(&c.log_path).ok())
        .unwrap_or_default()
}

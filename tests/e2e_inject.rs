//! Issue 5 end to end, sidecar mode: `kubectl apply` of labelled CronJobs through the live
//! mutating webhook, the stored shape, idempotency, in-place updates, warnings, and the stored
//! pod template run by the local pod runner against a counting receiver.

mod common;

use common::cluster::{Cluster, Mode, cluster, kubectl_ok, kubectl_stdin};
use common::notify_scenario::{
    assert_one_notification, cron_job, notifier_log, path, store, three_outcomes,
};
use common::pod_run::{inject_flags, pod_spec, runner};
use serde_json::Value;
use testkit::receiver::{Receiver, Reply};

fn operator() -> &'static Cluster {
    cluster(Mode::AdmissionOnly, &inject_flags(&[]))
}

fn get_json(c: &Cluster, ns: &str, name: &str) -> Value {
    serde_json::from_str(&kubectl_ok(
        c.cp,
        &["get", "cronjob", name, "-n", ns, "-o", "json"],
    ))
    .unwrap()
}

fn pod(cj: &Value) -> &Value {
    &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
}

#[tokio::test]
async fn kubectl_apply_stores_the_notifier_in_the_documented_shape_idempotently() {
    let c = operator();
    let ns = c.cp.namespace("inject").await;
    let ns = ns.name();
    let rx = Receiver::http(Reply::Status(200));
    let manifest = cron_job(ns, "nightly", &rx, "exit 0");
    store(c, ns, "nightly", &manifest).await;
    let cj = get_json(c, ns, "nightly");
    let p = pod(&cj);
    assert!(
        p["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "backup-notifier" && v["emptyDir"]["medium"] == "Memory")
    );
    let init = p["initContainers"].as_array().unwrap();
    assert_eq!(init[0]["name"], "notifier-install");
    assert_eq!(
        init[0]["command"],
        serde_json::json!([
            "/usr/local/bin/backup-notifier",
            "install",
            "/backup-notifier/backup-notifier"
        ])
    );
    assert_eq!(init[1]["name"], "notifier");
    assert_eq!(init[1]["restartPolicy"], "Always");
    assert_eq!(
        p["containers"][0]["command"],
        serde_json::json!([
            "/backup-notifier/backup-notifier",
            "exec",
            "--result",
            "/backup-notifier/result.json",
            "--",
            "sh",
            "-c",
            "exit 0"
        ])
    );
    let generation = cj["metadata"]["generation"].clone();

    // The same manifest again: nothing changes.
    store(c, ns, "nightly", &manifest).await;
    assert_eq!(
        get_json(c, ns, "nightly")["metadata"]["generation"],
        generation
    );

    // A new success URL updates the notifier's env in place; still exactly one notifier.
    let moved = manifest.replace(&rx.url(&path("success")), "https://hooks.example.com/moved");
    store(c, ns, "nightly", &moved).await;
    let cj = get_json(c, ns, "nightly");
    let notifiers: Vec<_> = pod(&cj)["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "notifier")
        .collect();
    assert_eq!(notifiers.len(), 1);
    let env = notifiers[0]["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "NOTIFY_SUCCESS_URL"
            && e["value"] == "https://hooks.example.com/moved")
    );
    assert_eq!(
        pod(&cj)["containers"][0]["command"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| *a == "exec")
            .count(),
        1
    );
}

#[tokio::test]
async fn unlabelled_and_commandless_cron_jobs_are_stored_as_sent() {
    let c = operator();
    let ns = c.cp.namespace("inject-asis").await;
    let ns = ns.name();
    let rx = Receiver::http(Reply::Status(200));
    let unlabelled = cron_job(ns, "plain", &rx, "exit 0")
        .replace("backups.k8s.bnerd.com/notify: \"true\"", "app: plain");
    store(c, ns, "plain", &unlabelled).await;
    let p = pod(&get_json(c, ns, "plain")).clone();
    assert!(p.get("initContainers").is_none() && p.get("volumes").is_none());
    assert_eq!(
        p["containers"][0]["command"],
        serde_json::json!(["sh", "-c", "exit 0"])
    );

    let no_command = cron_job(ns, "entrypoint", &rx, "x")
        .replace("              command: [\"sh\", \"-c\", \"x\"]\n", "");
    let out = kubectl_stdin(c.cp, &["apply", "-f", "-"], &no_command);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Warning: backup-operator: container \"backup\" has no command"),
        "{stderr}"
    );
    let p = pod(&get_json(c, ns, "entrypoint")).clone();
    assert!(p.get("initContainers").is_none() && p.get("volumes").is_none());
    assert!(p["containers"][0].get("command").is_none());
}

/// Through the live webhook: `kubectl apply` of an injected CronJob's manifest without the
/// backup's command, or without the label (the webhook's objectSelector matches the old object,
/// so the request still reaches /mutate), takes the whole injection out, which the three-way
/// merge alone would leave behind.
#[tokio::test]
async fn dropping_the_command_or_the_label_takes_the_notifier_out_again() {
    let c = operator();
    let ns = c.cp.namespace("inject-removal").await;
    let ns = ns.name();
    let rx = Receiver::http(Reply::Status(200));
    let command_line = "              command: [\"sh\", \"-c\", \"x\"]\n";
    for (name, drop_command) in [("no-command", true), ("opted-out", false)] {
        let manifest = cron_job(ns, name, &rx, "x");
        assert!(manifest.contains(command_line));
        store(c, ns, name, &manifest).await;
        let p = pod(&get_json(c, ns, name)).clone();
        assert_eq!(p["initContainers"].as_array().map(Vec::len), Some(2), "{p}");

        let changed = if drop_command {
            manifest.replace(command_line, "")
        } else {
            manifest.replace("backups.k8s.bnerd.com/notify: \"true\"", "app: plain")
        };
        assert_ne!(changed, manifest);
        let out = kubectl_stdin(c.cp, &["apply", "-f", "-"], &changed);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        if drop_command {
            assert!(
                stderr.contains("Warning: backup-operator: container \"backup\" has no command")
                    && stderr.contains("(the notifier injected earlier has been removed)"),
                "{stderr}"
            );
        } else {
            assert!(!stderr.contains("Warning: backup-operator:"), "{stderr}");
        }
        let p = pod(&get_json(c, ns, name)).clone();
        assert!(
            p.get("initContainers").is_none() && p.get("volumes").is_none(),
            "{name}: {p}"
        );
        let containers = p["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{name}: {p}");
        assert!(containers[0].get("volumeMounts").is_none(), "{name}: {p}");
        if drop_command {
            assert!(containers[0].get("command").is_none(), "{p}");
        } else {
            assert_eq!(
                containers[0]["command"],
                serde_json::json!(["sh", "-c", "x"]),
                "{p}"
            );
        }
    }
}

/// Through the live webhook: a Job that retries in new pods is warned about at `kubectl apply`,
/// and a pod that retries in place tells its notifier (which then waits for the last attempt).
#[tokio::test]
async fn retrying_jobs_are_warned_about_or_their_notifier_told() {
    let c = operator();
    let ns = c.cp.namespace("inject-retries").await;
    let ns = ns.name();
    let rx = Receiver::http(Reply::Status(200));
    let retries = cron_job(ns, "retries", &rx, "exit 0").replace("      backoffLimit: 0\n", "");
    let out = kubectl_stdin(c.cp, &["apply", "-f", "-"], &retries);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Warning: backup-operator: backoffLimit is unset (6) and restartPolicy is Never: every failed attempt runs in a new pod, which sends its own failure notification"),
        "{stderr}"
    );

    let in_place = cron_job(ns, "in-place", &rx, "exit 0")
        .replace("      backoffLimit: 0\n", "      backoffLimit: 3\n")
        .replace("restartPolicy: Never", "restartPolicy: OnFailure");
    let out = kubectl_stdin(c.cp, &["apply", "-f", "-"], &in_place);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("Warning: backup-operator:"), "{stderr}");
    let cj = get_json(c, ns, "in-place");
    let notifier = pod(&cj)["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "notifier")
        .unwrap()
        .clone();
    assert!(
        notifier["env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"name": "NOTIFY_RESTART_POLICY", "value": "OnFailure"})),
        "{notifier}"
    );
}

#[tokio::test]
async fn the_stored_template_notifies_exactly_once_per_outcome() {
    let c = operator();
    let ns = c.cp.namespace("inject-run").await;
    three_outcomes(c, ns.name(), true).await;
}

/// "Webhook failures do not affect the backup status": a receiver that answers 500 gets one
/// POST (no retry), the notifier warns and exits 0, and the pod's outcome is the backup's.
#[tokio::test]
async fn a_failing_receiver_does_not_change_the_backups_outcome() {
    let c = operator();
    let ns = c.cp.namespace("inject-hook-500").await;
    let ns = ns.name();
    for (name, script, want_exit, want_status) in [
        (
            "hook-500-backup-ok",
            "echo backing up; exit 0",
            0,
            "success",
        ),
        (
            "hook-500-backup-fails",
            "echo backing up; exit 3",
            3,
            "failure",
        ),
    ] {
        let rx = Receiver::http(Reply::Status(500));
        let stored = store(c, ns, name, &cron_job(ns, name, &rx, script)).await;
        let out = tempfile::tempdir().unwrap();
        let report = runner(out.path(), ns, None, |_| {})
            .start(&pod_spec(&stored))
            .unwrap()
            .wait()
            .unwrap();
        let backup = report.container("backup").unwrap();
        assert_eq!(backup.exit_code, Some(want_exit), "{name}: {report:#?}");
        assert_eq!(
            report.phase == testkit::pod_runner::PodPhase::Succeeded,
            want_exit == 0,
            "{name}: {report:#?}"
        );
        let notifier = report.container("notifier").unwrap();
        assert_eq!(notifier.exit_code, Some(0), "{name}: {report:#?}");
        assert_one_notification(&rx, &report, ns, want_status, name);
        let log = notifier_log(&report);
        let warns: Vec<_> = log.lines().filter(|l| l.contains("WARN")).collect();
        assert!(
            warns.len() == 1
                && warns[0].contains("webhook not delivered")
                && warns[0].contains("reason=\"http-status\""),
            "{name}: notifier log:\n{log}"
        );
    }
}

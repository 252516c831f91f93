//! `--notifier-ca-configmap`: a relay whose certificate a private CA signed gets its notification
//! when the backup's namespace holds that CA in the named ConfigMap; without the ConfigMap the
//! backup still runs, and the notifier says why it could not send. Stored through the live
//! mutating webhook, run by the local pod runner (a test tool, not a kubelet), which reads the
//! ConfigMap from the apiserver.

mod common;

use common::cluster::{Cluster, Mode, cluster, kubectl_ok};
use common::notify_scenario::{assert_one_notification, cron_job, notifier_log, store};
use common::pod_run::{inject_flags, pod_spec, runner};
use k8s_openapi::api::core::v1::PodSpec;
use testkit::pod_runner::{PodPhase, PodReport};
use testkit::receiver::{Receiver, Reply};

fn operator() -> &'static Cluster {
    cluster(
        Mode::AdmissionOnly,
        &inject_flags(&[
            "--notifier-ca-configmap",
            "relay-ca",
            "--notifier-ca-key",
            "bundle.pem",
        ]),
    )
}

/// Runs the pod template; the backup's own outcome must be success whatever the notifier did.
/// The logs live in the returned directory.
fn run_backup(c: &Cluster, ns: &str, spec: &PodSpec) -> (tempfile::TempDir, PodReport) {
    let out = tempfile::tempdir().unwrap();
    let report = runner(out.path(), ns, Some(c.cp.kubeconfig_path()), |_| {})
        .run(spec)
        .unwrap();
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    assert_eq!(
        report.container("notifier").and_then(|n| n.exit_code),
        Some(0),
        "{report:#?}"
    );
    (out, report)
}

#[tokio::test]
async fn the_namespaces_ca_configmap_lets_the_notifier_reach_a_private_ca_relay() {
    let c = operator();
    let ns = c.cp.namespace("notifier-ca").await;
    let ns = ns.name();
    let rx = Receiver::https(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("bundle.pem");
    std::fs::write(&pem, rx.ca_pem().unwrap()).unwrap();
    kubectl_ok(
        c.cp,
        &[
            "create",
            "configmap",
            "relay-ca",
            "-n",
            ns,
            &format!("--from-file=bundle.pem={}", pem.display()),
        ],
    );

    let manifest = cron_job(ns, "relay", &rx, "exit 0");
    let stored = store(c, ns, "relay", &manifest).await;
    // The apiserver's defaults on the CA volume do not read as drift: applying again changes
    // nothing.
    let again = store(c, ns, "relay", &manifest).await;
    assert_eq!(again.metadata.generation, stored.metadata.generation);
    let spec = pod_spec(&stored);
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "backup-notifier-ca")
        .and_then(|v| v.config_map.as_ref())
        .expect("the CA volume in the stored template");
    assert_eq!(volume.name, "relay-ca");
    assert_eq!(volume.optional, Some(true));
    let items = volume.items.as_deref().unwrap_or_default();
    assert_eq!(
        items
            .iter()
            .map(|i| (i.key.as_str(), i.path.as_str()))
            .collect::<Vec<_>>(),
        [("bundle.pem", "ca.crt")]
    );

    let (_logs, report) = run_backup(c, ns, &spec);
    assert_one_notification(&rx, &report, ns, "success", "private-CA relay");
    let log = notifier_log(&report);
    assert!(log.contains("extra_ca=/backup-notifier-ca/ca.crt"), "{log}");
    assert!(log.contains("webhook delivered"), "{log}");
    assert!(!log.contains("WARN"), "{log}");
}

#[tokio::test]
async fn without_the_configmap_the_backup_runs_and_the_notifier_warns_why_it_did_not_send() {
    let c = operator();
    let ns = c.cp.namespace("notifier-no-ca").await;
    let ns = ns.name();
    let rx = Receiver::https(Reply::Status(200));
    let stored = store(c, ns, "relay", &cron_job(ns, "relay", &rx, "exit 0")).await;

    let (_logs, report) = run_backup(c, ns, &pod_spec(&stored));
    let log = notifier_log(&report);
    // One WARN line for the failed delivery, which says why the CA was missing.
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("reason=\"tls\"")
            && warnings[0].contains("CA file /backup-notifier-ca/ca.crt")
            && warnings[0].contains("only the bundled public roots are trusted"),
        "{log}"
    );
    assert_eq!(
        rx.count(),
        0,
        "the relay's CA was not trusted, so nothing arrives"
    );
}

//! Issue 5 point 3 in container mode (`--notifier-mode container`): the notifier is a regular
//! container beside the backup; the stored template still notifies exactly once per outcome.
//! The operator here also runs with `--notifier-run-as-user none` (OpenShift's way): the
//! apiserver stores the injected containers without a user ID, non-root all the same, except in
//! a pod that runs as root, whose user they must not inherit.

mod common;

use common::cluster::{Mode, cluster};
use common::notify_scenario::{assert_one_notification, cron_job, store, three_outcomes};
use common::pod_run::{inject_flags, pod_spec, runner};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::PodSpec;
use kube::api::{Api, ListParams};
use testkit::receiver::{Receiver, Reply};

/// `runAsUser`, `runAsGroup` and `runAsNonRoot` of a container.
type Ids = (Option<i64>, Option<i64>, Option<bool>);

/// The IDs of each injected container, by name.
fn injected_users(spec: &PodSpec) -> Vec<(String, Ids)> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name.starts_with("notifier"))
        .map(|c| {
            let sc = c.security_context.clone().unwrap_or_default();
            let ids = (sc.run_as_user, sc.run_as_group, sc.run_as_non_root);
            (c.name.clone(), ids)
        })
        .collect()
}

#[tokio::test]
async fn container_mode_notifies_exactly_once_per_outcome() {
    let c = cluster(
        Mode::AdmissionOnly,
        &inject_flags(&[
            "--notifier-mode",
            "container",
            "--notifier-run-as-user",
            "none",
        ]),
    );
    let ns = c.cp.namespace("inject-container").await;
    three_outcomes(c, ns.name(), false).await;

    let stored = Api::<CronJob>::namespaced(c.cp.client().await, ns.name())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(stored.items.len(), 4, "the scenario's CronJobs");
    for cj in &stored.items {
        let users = injected_users(&pod_spec(cj));
        let names: Vec<_> = users.iter().map(|u| u.0.as_str()).collect();
        assert_eq!(names, ["notifier-install", "notifier"]);
        for (name, ids) in users {
            assert_eq!(ids, (None, None, Some(true)), "{name}");
        }
    }

    // A pod that runs as root (a backup reading root-owned files): inheriting its user would
    // make the kubelet (here the pod runner, which checks runAsNonRoot the same way) refuse the
    // injected containers and with them the backup.
    let rx = Receiver::http(Reply::Status(200));
    let yaml = cron_job(ns.name(), "root-pod", &rx, "echo backing up; exit 0").replace(
        "          restartPolicy: Never\n",
        "          restartPolicy: Never\n          securityContext: {runAsUser: 0}\n",
    );
    let spec = pod_spec(&store(c, ns.name(), "root-pod", &yaml).await);
    assert_eq!(
        spec.security_context.as_ref().and_then(|s| s.run_as_user),
        Some(0),
        "the pod's own user is kept"
    );
    let users = injected_users(&spec);
    assert_eq!(users.len(), 2, "notifier-install and notifier");
    for (name, ids) in users {
        assert_eq!(ids, (Some(65532), Some(65532), Some(true)), "{name}");
    }
    let out = tempfile::tempdir().unwrap();
    let report = runner(out.path(), ns.name(), None, |_| {})
        .start(&spec)
        .unwrap()
        .wait()
        .unwrap();
    let backup = report.container("backup").unwrap();
    assert_eq!(backup.exit_code, Some(0), "{report:#?}");
    assert_one_notification(&rx, &report, ns.name(), "success", "root-pod");
}

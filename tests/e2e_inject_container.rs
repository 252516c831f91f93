//! Issue 5 point 3 in container mode (`--notifier-mode container`): the notifier is a regular
//! container beside the backup; the stored template still notifies exactly once per outcome.
//! The operator here also runs with `--notifier-run-as-user none` (OpenShift's way): the
//! apiserver stores the injected containers without a user ID, non-root all the same.

mod common;

use common::cluster::{Mode, cluster};
use common::notify_scenario::three_outcomes;
use common::pod_run::inject_flags;
use k8s_openapi::api::batch::v1::CronJob;
use kube::api::{Api, ListParams};

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
        let spec = common::pod_run::pod_spec(cj);
        let injected: Vec<_> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .filter(|c| c.name.starts_with("notifier"))
            .collect();
        assert_eq!(injected.len(), 2, "notifier-install and notifier");
        for c in injected {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(
                (sc.run_as_user, sc.run_as_group),
                (None, None),
                "{}",
                c.name
            );
            assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
        }
    }
}

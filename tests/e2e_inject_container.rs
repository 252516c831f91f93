//! Issue 5 point 3 in container mode (`--notifier-mode container`): the notifier is a regular
//! container beside the backup; the stored template still notifies exactly once per outcome.

mod common;

use common::cluster::{Mode, cluster};
use common::notify_scenario::three_outcomes;
use common::pod_run::inject_flags;

#[tokio::test]
async fn container_mode_notifies_exactly_once_per_outcome() {
    let c = cluster(
        Mode::AdmissionOnly,
        &inject_flags(&["--notifier-mode", "container"]),
    );
    let ns = c.cp.namespace("inject-container").await;
    three_outcomes(c, ns.name(), false).await;
}

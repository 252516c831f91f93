//! Two operator replicas against one apiserver: exactly one holds the Lease and reconciles, both
//! serve admission, and when the leader is killed the other takes over within the lease duration;
//! a leader that loses the Lease without dying stops leading and drops its per-backup metrics.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{install_crds, kubectl_stdin};
use common::{Operator, dev_certs, fixtures};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use testkit::control_plane::{ControlPlane, wait_for};

const LEASE: Duration = Duration::from_secs(6);

async fn metric(op: &Operator, name: &str) -> f64 {
    fixtures::metric(op.admin, name).await
}

#[tokio::test]
async fn exactly_one_replica_reconciles_and_the_other_takes_over() {
    let cp = ControlPlane::shared();
    install_crds(cp);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path());
    let kubeconfig = cp.kubeconfig_path().as_os_str();
    let start = |id: &str| {
        Operator::start_with_env(
            &cert,
            &key,
            &["--identity", id, "--lease-duration", "6s"],
            &[("KUBECONFIG", kubeconfig)],
        )
    };
    let mut replicas = vec![
        ("replica-a", start("replica-a")),
        ("replica-b", start("replica-b")),
    ];
    let client = cp.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "backup-operator-system");
    let lease = || async {
        leases
            .get("backup-operator-leader")
            .await?
            .spec
            .ok_or_else(|| anyhow::anyhow!("the Lease has no spec"))
    };
    let holder = || async {
        lease()
            .await?
            .holder_identity
            .ok_or_else(|| anyhow::anyhow!("no holder"))
    };
    let leader = wait_for("a leader", Duration::from_secs(30), holder)
        .await
        .unwrap();
    let (li, fi) = if leader == "replica-a" {
        (0, 1)
    } else {
        (1, 0)
    };

    // Both serve admission, whatever the leadership: each answers an allowed and a denied
    // review itself.
    for (name, op) in &replicas {
        assert_eq!(fixtures::http_get(op.admin, "/readyz").await.0, 200);
        let mut conn = common::connect(op.https, common::tls_client(&ca.cert)).await;
        for (url, allowed) in [
            ("https://hooks.example.com/ok", true),
            ("http://169.254.169.254/latest", false),
        ] {
            let body = serde_json::to_vec(&common::review(
                "backups.k8s.bnerd.com",
                "VolumeBackup",
                "CREATE",
                common::volume_backup(Some(url), None),
                None,
            ))
            .unwrap();
            let (status, answer) = conn
                .request("POST", "/validate", Some("application/json"), body)
                .await;
            assert_eq!(status, 200, "{name}: {answer}");
            let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(answer["response"]["allowed"], allowed, "{name}: {answer}");
        }
    }
    let ns = cp.namespace("leader").await;
    let out = kubectl_stdin(
        cp,
        &["apply", "-f", "-"],
        &fixtures::volume_backup_yaml(ns.name(), "first"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), ns.name());
    wait_for(
        "the leader to create the CronJob",
        Duration::from_secs(30),
        || async {
            anyhow::ensure!(
                cjs.get_opt("first-backup").await?.is_some(),
                "no CronJob yet"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(metric(&replicas[li].1, "backup_operator_leader").await, 1.0);
    assert_eq!(metric(&replicas[fi].1, "backup_operator_leader").await, 0.0);
    // The CronJob appears while the reconcile that wrote it is still running; the counter
    // moves when it returns.
    let leader_op = &replicas[li].1;
    wait_for(
        "the leader's reconcile to be counted",
        Duration::from_secs(10),
        || async {
            let n = metric(leader_op, "backup_operator_reconciles_total").await;
            anyhow::ensure!(n >= 1.0, "{n} reconciles");
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        metric(&replicas[fi].1, "backup_operator_reconciles_total").await,
        0.0,
        "the follower reconciled"
    );

    // A deleted Lease is no free one: the follower keeps counting the leader's last record, and
    // the leader writes the Lease again at its next renewal.
    leases
        .delete("backup-operator-leader", &Default::default())
        .await
        .unwrap();
    let rewritten = wait_for(
        "the Lease to be written again",
        Duration::from_secs(10),
        holder,
    )
    .await
    .unwrap();
    assert_eq!(rewritten, leader, "the follower took the deleted Lease");
    for _ in 0..10 {
        assert_eq!(
            metric(&replicas[fi].1, "backup_operator_leader").await,
            0.0,
            "the follower led after the Lease was deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(&replicas[li].1, "backup_operator_leader").await, 1.0);

    // Kill the leader without a chance to release the Lease (what a node failure looks like).
    // Its last renewal is at or after this one.
    let renewed_before_kill = lease()
        .await
        .unwrap()
        .renew_time
        .expect("the leader renews");
    replicas[li].1.signal(libc::SIGKILL);
    let killed = Instant::now();
    let killed_at = std::time::SystemTime::now();
    let follower = replicas[fi].0;
    wait_for(
        "the follower to take over",
        LEASE + Duration::from_secs(10),
        || async {
            let h = holder().await?;
            anyhow::ensure!(h == follower, "holder is {h}");
            Ok(())
        },
    )
    .await
    .unwrap();
    // The Lease's acquireTime is the follower's clock (the same host's) at the moment it took
    // over; the test's own polling only adds its poll interval on top.
    let acquired = lease()
        .await
        .unwrap()
        .acquire_time
        .expect("the new holder sets acquireTime");
    let took = std::time::SystemTime::from(acquired.0)
        .duration_since(killed_at)
        .unwrap_or_default();
    eprintln!(
        "takeover {took:?} after the kill (lease duration {LEASE:?}), seen after {:?}",
        killed.elapsed()
    );
    // Liveness: the follower counts the lease from when it saw the last renewal (one retry
    // period after it at most) and looks again every retry period, so it takes over within the
    // lease duration plus two retry periods; one more second covers API round trips.
    let retry = LEASE / 10;
    assert!(
        took <= LEASE + 2 * retry + Duration::from_secs(1),
        "takeover took {took:?}, lease duration {LEASE:?}"
    );
    // Safety: never before the old leader has given up leading (renew deadline = 2/3 of the
    // lease duration after its last renewal).
    let gap = std::time::SystemTime::from(acquired.0)
        .duration_since(std::time::SystemTime::from(renewed_before_kill.0))
        .unwrap_or_default();
    assert!(
        gap >= LEASE * 2 / 3,
        "acquired {gap:?} after a renewal, before the old leader's renew deadline"
    );

    let out = kubectl_stdin(
        cp,
        &["apply", "-f", "-"],
        &fixtures::volume_backup_yaml(ns.name(), "second"),
    );
    assert!(out.status.success());
    wait_for(
        "the new leader to reconcile",
        Duration::from_secs(30),
        || async {
            anyhow::ensure!(
                cjs.get_opt("second-backup").await?.is_some(),
                "no CronJob yet"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(metric(&replicas[fi].1, "backup_operator_leader").await, 1.0);

    // The leader loses the Lease without dying (another replica took it over during a network
    // partition, as it looks from here): it stops leading, and the per-backup series it exported
    // go with it, so that only the current leader's figures reach alerts.
    let leader_op = &replicas[fi].1;
    let cj = cjs.get("second-backup").await.unwrap();
    fixtures::job_failed(&client, ns.name(), &cj).await;
    let series = format!(
        r#"backup_operator_backup_last_job_success{{namespace="{}",kind="VolumeBackup",name="second"}}"#,
        ns.name()
    );
    wait_for(
        "the leader's backup metrics",
        Duration::from_secs(30),
        || async {
            let (_, body) = fixtures::http_get(leader_op.admin, "/metrics").await;
            anyhow::ensure!(body.contains(&series), "no {series} yet");
            Ok(())
        },
    )
    .await
    .unwrap();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    let taken = serde_json::json!({"spec": {
        "holderIdentity": "replica-elsewhere", "leaseDurationSeconds": 3600,
        "acquireTime": now, "renewTime": now}});
    leases
        .patch(
            "backup-operator-leader",
            &PatchParams::default(),
            &Patch::Merge(&taken),
        )
        .await
        .unwrap();
    wait_for(
        "the old leader to step down and drop its backup series",
        Duration::from_secs(30),
        || async {
            let (_, body) = fixtures::http_get(leader_op.admin, "/metrics").await;
            anyhow::ensure!(
                body.contains("backup_operator_leader 0"),
                "still leading:\n{}",
                leader_op.log()
            );
            anyhow::ensure!(!body.contains(&series), "{series} still exported");
            Ok(())
        },
    )
    .await
    .unwrap();
    replicas.clear();
}

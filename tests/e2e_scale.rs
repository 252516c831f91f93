//! 300 VolumeBackups created at once all converge: CronJobs present (with the notifier), Ready
//! True. The time it takes is printed; BENCHMARKS.md records it (tools/bench runs this test).
//! Then every one of them is reconciled again, and the apiserver's own request counter shows
//! that reconciles read Jobs from the controller's cache, not by a LIST each.

mod common;

use std::time::{Duration, Instant};

use backup_operator::crd::VolumeBackup;
use common::cluster::{Mode, cluster, kubectl_ok};
use common::fixtures;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::CronJob;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use testkit::control_plane::wait_for;

const COUNT: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_volume_backups_converge() {
    let c = cluster(Mode::Full, &[]);
    let client = c.cp.client().await;
    let ns = c.cp.namespace("scale").await;
    let ns = ns.name().to_owned();
    fixtures::pvc(&client, &ns, "data").await;
    fixtures::restic_secret(&client, &ns).await;

    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    futures::stream::iter(0..COUNT)
        .for_each_concurrent(32, |i| {
            let vbs = vbs.clone();
            async move {
                let vb: VolumeBackup = serde_json::from_value(json!({
                    "apiVersion": "backups.k8s.bnerd.com/v1", "kind": "VolumeBackup",
                    "metadata": {"name": format!("vb-{i:03}")},
                    "spec": {
                        "volumeClaimRef": {"name": "data"},
                        "schedule": "0 3 * * *",
                        "repository": {"url": "/repo", "passwordSecretRef": {"name": "restic", "key": "password"}},
                        "webhooks": {"success": format!("https://hooks.example.com/{i}")}
                    }
                }))
                .unwrap();
                vbs.create(&PostParams::default(), &vb).await.unwrap();
            }
        })
        .await;
    let created = started.elapsed();

    let cjs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "all VolumeBackups to converge",
        Duration::from_secs(300),
        || async {
            let ready = vbs
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|vb| {
                    vb.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                            && s.conditions
                                .iter()
                                .any(|c| c.type_ == "NotifierInjected" && c.status == "True")
                    })
                })
                .count();
            let cron_jobs = cjs.list(&ListParams::default()).await?.items.len();
            anyhow::ensure!(
                ready == COUNT && cron_jobs == COUNT,
                "{ready} ready, {cron_jobs} CronJobs"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    let converged = started.elapsed();
    println!(
        "SCALE: created {COUNT} VolumeBackups in {:.1}s; all Ready with CronJobs after {:.1}s",
        created.as_secs_f64(),
        converged.as_secs_f64()
    );

    // A reconcile of each: none may list the namespace's Jobs (which grows with the number of
    // backups there), beyond a relist of the watch.
    let reconciles = || fixtures::metric(c.operator.admin, "backup_operator_reconciles_total");
    let (reconciled, listed) = (reconciles().await, apiserver_requests(c.cp, "jobs", "LIST"));
    kubectl_ok(
        c.cp,
        &["annotate", "volumebackups", "--all", "-n", &ns, "poke=1"],
    );
    wait_for(
        "a reconcile of every poked VolumeBackup",
        Duration::from_secs(120),
        || async {
            let now = reconciles().await;
            anyhow::ensure!(
                now >= reconciled + COUNT as f64,
                "{} reconciles",
                now - reconciled
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    let lists = apiserver_requests(c.cp, "jobs", "LIST") - listed;
    assert!(
        lists <= 2.0,
        "{lists} LISTs of Jobs during {COUNT} reconciles"
    );
}

/// The apiserver's count of `verb` requests on `resource`, all clients and codes together.
fn apiserver_requests(
    cp: &testkit::control_plane::ControlPlane,
    resource: &str,
    verb: &str,
) -> f64 {
    let (resource, verb) = (
        format!("resource=\"{resource}\""),
        format!("verb=\"{verb}\""),
    );
    kubectl_ok(cp, &["get", "--raw", "/metrics"])
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{") && l.contains(&resource) && l.contains(&verb)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

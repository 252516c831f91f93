//! 300 VolumeBackups created at once all converge: CronJobs present (with the notifier), Ready
//! True. The time it takes is printed; BENCHMARKS.md records it (tools/bench runs this test).

mod common;

use std::time::{Duration, Instant};

use backup_operator::crd::VolumeBackup;
use common::cluster::{Mode, cluster};
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
}

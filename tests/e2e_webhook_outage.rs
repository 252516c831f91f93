//! The mutating webhook fails open. When it is unavailable while the controller writes a
//! CronJob, the notifier is missing; `NotifierInjected` must say so (not silently lose
//! notifications), and the condition must heal once the webhook is back; a reconcile with nothing
//! to change (even one whose quantities the apiserver rewrote, or whose empty fields it dropped)
//! must not strip a correct CronJob meanwhile. Its own test binary: it unregisters the webhook
//! of its control plane for a while.

mod common;

use std::time::Duration;

use backup_operator::crd::VolumeBackup;
use backup_operator::inject;
use common::cluster::{
    Mode, cluster, kubectl_ok, kubectl_stdin, register_webhooks, wait_for_event,
    wait_until_mutating_webhook_acts,
};
use common::fixtures;
use k8s_openapi::api::batch::v1::CronJob;
use kube::api::Api;
use testkit::control_plane::wait_for;

fn manifest(ns: &str, success: &str) -> String {
    format!(
        r#"apiVersion: backups.k8s.bnerd.com/v1
kind: VolumeBackup
metadata: {{name: my-backup, namespace: {ns}}}
spec:
  volumeClaimRef: {{name: my-data-pvc}}
  schedule: "0 3 * * *"
  repository: {{url: "/repo", passwordSecretRef: {{name: restic, key: password}}}}
  webhooks: {{success: "{success}"}}
  # Spellings the apiserver stores differently ("1Gi", "500m", "1536Mi"): the controller must
  # still see that the stored CronJob is what it would apply.
  resources: {{requests: {{memory: 1024Mi, cpu: "0.5"}}, limits: {{memory: 1.5Gi}}}}
  # Empty, which the apiserver does not store at all (the empty selector itself it does store).
  nodeSelector: {{}}
  tolerations: []
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 1
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector: {{matchLabels: {{}}}}
          namespaceSelector: {{}}
"#
    )
}

async fn notifier_injected(vbs: &Api<VolumeBackup>) -> anyhow::Result<(String, String, String)> {
    let vb = vbs.get("my-backup").await?;
    let c = vb
        .status
        .and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "NotifierInjected")
        })
        .ok_or_else(|| anyhow::anyhow!("no NotifierInjected condition yet"))?;
    Ok((c.status, c.reason, c.message))
}

#[tokio::test]
async fn notifier_injected_reports_a_webhook_outage_and_heals() {
    let c = cluster(Mode::Full, &[]);
    let client = c.cp.client().await;
    let ns = c.cp.namespace("outage").await;
    let ns = ns.name();
    fixtures::pvc(&client, ns, "my-data-pvc").await;
    fixtures::restic_secret(&client, ns).await;
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    let apply = |url: &str| {
        let out = kubectl_stdin(c.cp, &["apply", "-f", "-"], &manifest(ns, url));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let wait = Duration::from_secs(90);

    apply("https://hooks.example.com/one");
    wait_for("NotifierInjected=True", wait, || async {
        let (status, ..) = notifier_injected(&vbs).await?;
        anyhow::ensure!(status == "True", "NotifierInjected is {status}");
        Ok(())
    })
    .await
    .unwrap();

    // The mutating webhook goes away; a change is written without it.
    kubectl_ok(
        c.cp,
        &["delete", "mutatingwebhookconfiguration", "backup-operator"],
    );
    wait_until_mutating_webhook_acts(c.cp, false, &|| c.operator.log());

    // A reconcile with nothing to change writes nothing: re-applying now, without the webhook,
    // would unwrap the backup command of a CronJob that is right.
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), ns);
    let before = cjs.get("my-backup-backup").await.unwrap();
    let reconciles = || fixtures::metric(c.operator.admin, "backup_operator_reconciles_total");
    let count = reconciles().await;
    kubectl_ok(
        c.cp,
        &["annotate", "volumebackup", "my-backup", "-n", ns, "poke=1"],
    );
    wait_for("a reconcile of the poked VolumeBackup", wait, || async {
        let now = reconciles().await;
        anyhow::ensure!(now > count, "{now} reconciles");
        Ok(())
    })
    .await
    .unwrap();
    let after = cjs.get("my-backup-backup").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(
        inject::inspect(&serde_json::to_value(&after).unwrap()),
        Ok(())
    );
    assert_eq!(notifier_injected(&vbs).await.unwrap().0, "True");

    apply("https://hooks.example.com/two");
    let (_, reason, message) = wait_for("NotifierInjected=False", wait, || async {
        let got = notifier_injected(&vbs).await?;
        anyhow::ensure!(got.0 == "False", "NotifierInjected is {}", got.0);
        Ok(got)
    })
    .await
    .unwrap();
    assert_eq!(reason, "NotifierMissing");
    assert!(message.contains("notifier"), "{message}");
    wait_for_event(&client, ns, "NotifierMissing", Some("Warning"), wait).await;

    // The webhook is back: the controller's backoff re-applies and the condition heals.
    register_webhooks(c.cp, &c.operator, &c.certs.join("ca.crt"));
    wait_for("NotifierInjected=True again", wait, || async {
        let (status, ..) = notifier_injected(&vbs).await?;
        anyhow::ensure!(status == "True", "NotifierInjected is {status}");
        Ok(())
    })
    .await
    .unwrap();
}

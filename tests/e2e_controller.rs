//! Issue 6 end to end on the real control plane (with kube-controller-manager): the controller
//! turns VolumeBackups into CronJobs that carry the notifier injected by the live mutating
//! webhook, follows changes, reports status and events, and lets garbage collection clean up.

mod common;

use std::time::Duration;

use backup_operator::controller::job_template;
use backup_operator::crd::VolumeBackup;
use common::cluster::{Mode, cluster, kubectl, kubectl_stdin, wait_for_event};
use common::fixtures;
use futures::TryStreamExt;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Event, ResourceQuota};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, WatchEvent, WatchParams};
use testkit::control_plane::wait_for;

const WAIT: Duration = Duration::from_secs(60);
const GC_WAIT: Duration = Duration::from_secs(180);

fn condition(vb: &VolumeBackup, type_: &str) -> Option<(String, String)> {
    fixtures::condition(vb.status.as_ref(), type_)
}

/// `(status, reason, message, observedGeneration)` of the Ready condition.
fn ready(vb: &VolumeBackup) -> Option<(String, String, String, Option<i64>)> {
    vb.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
                c.observed_generation,
            )
        })
}

async fn prerequisites(client: &kube::Client, ns: &str) {
    fixtures::pvc(client, ns, "my-data-pvc").await;
    fixtures::restic_secret(client, ns).await;
}

fn manifest(ns: &str, schedule: &str, success: &str, suspended: bool) -> String {
    format!(
        r#"apiVersion: backups.k8s.bnerd.com/v1
kind: VolumeBackup
metadata: {{name: my-backup, namespace: {ns}}}
spec:
  volumeClaimRef: {{name: my-data-pvc}}
  schedule: "{schedule}"
  suspended: {suspended}
  repository: {{url: "s3:https://s3.example.com/restic", passwordSecretRef: {{name: restic, key: password}}}}
  webhooks:
    success: "{success}"
    failure: "https://hooks.example.com/backup-failure"
"#
    )
}

fn apply(cp: &testkit::control_plane::ControlPlane, yaml: &str) {
    let out = kubectl_stdin(cp, &["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn notifier_env(cj: &CronJob, var: &str) -> Option<String> {
    let pod = job_template::pod_spec(cj)?;
    let notifiers: Vec<_> = pod
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.name == "notifier")
        .collect();
    assert_eq!(notifiers.len(), 1, "exactly one notifier");
    notifiers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == var)
        .and_then(|e| e.value.clone())
}

#[tokio::test]
async fn a_volume_backup_becomes_a_cron_job_with_the_notifier_and_follows_changes() {
    let cp = cluster(Mode::Full, &[]).cp;
    let client = cp.client().await;
    let ns = cp.namespace("ctrl").await;
    let ns = ns.name();
    prerequisites(&client, ns).await;
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), ns);

    apply(
        cp,
        &manifest(
            ns,
            "0 3 * * *",
            "https://hooks.example.com/backup-success",
            false,
        ),
    );
    let vb = wait_for("Ready and NotifierInjected", WAIT, || async {
        let vb = vbs.get("my-backup").await?;
        match (condition(&vb, "Ready"), condition(&vb, "NotifierInjected")) {
            (Some((r, _)), Some((n, _))) if r == "True" && n == "True" => Ok(vb),
            other => anyhow::bail!("conditions are {other:?}"),
        }
    })
    .await
    .unwrap();
    assert_eq!(
        vb.status.as_ref().unwrap().cron_job_name.as_deref(),
        Some("my-backup-backup")
    );
    assert_eq!(condition(&vb, "Suspended").unwrap().0, "False");
    let cj = cjs.get("my-backup-backup").await.unwrap();
    assert_eq!(cj.spec.as_ref().unwrap().schedule, "0 3 * * *");
    // --backup-deadline's default: a Job whose pod never starts cannot block later runs forever.
    assert_eq!(
        cj.spec
            .as_ref()
            .and_then(|s| s.job_template.spec.as_ref())
            .and_then(|j| j.active_deadline_seconds),
        Some(24 * 3600)
    );
    assert_eq!(
        notifier_env(&cj, "NOTIFY_SUCCESS_URL").as_deref(),
        Some("https://hooks.example.com/backup-success")
    );
    assert_eq!(
        notifier_env(&cj, "NOTIFY_HOST").as_deref(),
        Some(format!("{ns}-my-data-pvc").as_str())
    );
    let owner = &cj.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("VolumeBackup", Some(true))
    );

    // Schedule and URL changes reach the CronJob, and the notifier is updated in place.
    apply(
        cp,
        &manifest(
            ns,
            "15 4 * * *",
            "https://hooks.example.com/new-success",
            false,
        ),
    );
    wait_for("the CronJob to follow", WAIT, || async {
        let cj = cjs.get("my-backup-backup").await?;
        let schedule = cj.spec.as_ref().unwrap().schedule.clone();
        let url = notifier_env(&cj, "NOTIFY_SUCCESS_URL");
        anyhow::ensure!(
            schedule == "15 4 * * *"
                && url.as_deref() == Some("https://hooks.example.com/new-success"),
            "schedule {schedule}, url {url:?}"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Suspension.
    apply(
        cp,
        &manifest(
            ns,
            "15 4 * * *",
            "https://hooks.example.com/new-success",
            true,
        ),
    );
    wait_for("suspension", WAIT, || async {
        let cj = cjs.get("my-backup-backup").await?;
        let vb = vbs.get("my-backup").await?;
        anyhow::ensure!(
            cj.spec.as_ref().unwrap().suspend == Some(true),
            "CronJob not suspended"
        );
        anyhow::ensure!(
            condition(&vb, "Suspended").map(|c| c.0).as_deref() == Some("True"),
            "Suspended not True"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Removals reach the CronJob too: a time zone and a URL taken out of the spec (which the
    // controller must not mistake for "nothing to change").
    let suspended = manifest(
        ns,
        "15 4 * * *",
        "https://hooks.example.com/new-success",
        true,
    );
    apply(
        cp,
        &suspended.replace("  suspended:", "  timeZone: Europe/Berlin\n  suspended:"),
    );
    wait_for("the time zone", WAIT, || async {
        let cj = cjs.get("my-backup-backup").await?;
        let zone = cj.spec.as_ref().unwrap().time_zone.clone();
        anyhow::ensure!(
            zone.as_deref() == Some("Europe/Berlin"),
            "time zone {zone:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    // The time zone alone taken out: an object key the CronJob no longer has, which only the
    // template hash can tell from a default the apiserver added.
    apply(cp, &suspended);
    wait_for("the time zone to go", WAIT, || async {
        let cj = cjs.get("my-backup-backup").await?;
        let zone = cj.spec.as_ref().unwrap().time_zone.clone();
        anyhow::ensure!(zone.is_none(), "time zone {zone:?}");
        Ok(())
    })
    .await
    .unwrap();
    apply(cp, &manifest(ns, "15 4 * * *", "", true));
    wait_for("the success URL to go", WAIT, || async {
        let cj = cjs.get("my-backup-backup").await?;
        let annotation = cj
            .annotations()
            .get("backups.k8s.bnerd.com/webhook-success")
            .cloned();
        let url = notifier_env(&cj, "NOTIFY_SUCCESS_URL");
        anyhow::ensure!(
            annotation.is_none() && url.is_none(),
            "annotation {annotation:?}, env {url:?}"
        );
        anyhow::ensure!(
            notifier_env(&cj, "NOTIFY_FAILURE_URL").is_some(),
            "the failure URL went too"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Events were recorded for the resource (the namespace is this test's alone).
    wait_for_event(&client, ns, "Created", None, WAIT).await;
    wait_for_event(&client, ns, "Updated", None, WAIT).await;

    // Deleting the VolumeBackup lets the garbage collector remove the CronJob.
    vbs.delete("my-backup", &DeleteParams::background())
        .await
        .unwrap();
    let deleted = std::time::Instant::now();
    // kube-controller-manager's garbage collector learns of a new CRD on its 30 s discovery
    // sync. This binary installed the CRDs moments ago, so the owner is deleted before the GC
    // watches VolumeBackups: it then finds out only when its exponential-backoff recheck of the
    // unobserved owner comes round (about 40 s here, more on a loaded machine). In a cluster
    // whose CRDs are older than 30 s the CronJob goes at once.
    wait_for("the CronJob to be garbage-collected", GC_WAIT, || async {
        anyhow::ensure!(
            cjs.get_opt("my-backup-backup").await?.is_none(),
            "CronJob still exists"
        );
        Ok(())
    })
    .await
    .unwrap();
    eprintln!("garbage-collected {:?} after the delete", deleted.elapsed());
}

#[tokio::test]
async fn missing_dependencies_are_reported_one_by_one_and_clear_by_themselves() {
    let cp = cluster(Mode::Full, &[]).cp;
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-missing").await;
    let ns = ns.name();
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    apply(
        cp,
        &manifest(ns, "0 3 * * *", "https://hooks.example.com/ok", false),
    );
    wait_for("Ready=False VolumeClaimNotFound", WAIT, || async {
        let vb = vbs.get("my-backup").await?;
        let ready = condition(&vb, "Ready");
        anyhow::ensure!(
            ready == Some(("False".into(), "VolumeClaimNotFound".into())),
            "Ready is {ready:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    wait_for_event(&client, ns, "VolumeClaimNotFound", Some("Warning"), WAIT).await;

    // The claim appears, the Secret is still missing: Ready stays False with the new reason,
    // and a new event says so.
    fixtures::pvc(&client, ns, "my-data-pvc").await;
    wait_for("Ready=False SecretNotFound", WAIT, || async {
        let vb = vbs.get("my-backup").await?;
        let ready = condition(&vb, "Ready");
        anyhow::ensure!(
            ready == Some(("False".into(), "SecretNotFound".into())),
            "Ready is {ready:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    wait_for_event(&client, ns, "SecretNotFound", Some("Warning"), WAIT).await;

    // The Secret appears later; the condition clears without restarting anything.
    fixtures::restic_secret(&client, ns).await;
    wait_for("Ready=True", WAIT, || async {
        let vb = vbs.get("my-backup").await?;
        let ready = condition(&vb, "Ready");
        anyhow::ensure!(
            ready.as_ref().map(|r| r.0.as_str()) == Some("True"),
            "Ready is {ready:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
}

/// kube-system is excluded from the webhooks (so that the operator can always repair the
/// cluster): no webhook injects the notifier there, so the controller writes it itself, and the
/// status says that admission did not check the URLs. The operator's own namespace, excluded
/// too, refuses backups outright: its Pod Security level would refuse every backup pod.
#[tokio::test]
async fn in_the_namespaces_the_webhooks_exclude_the_controller_injects_or_refuses() {
    let cp = cluster(Mode::Full, &[]).cp;
    let client = cp.client().await;
    let backup = |ns: &str| {
        manifest(ns, "0 3 * * *", "https://hooks.example.com/ok", false)
            .replace("name: my-backup,", "name: excluded-backup,")
            // Its own repository: a shared one would give other tests' backups an init delay.
            .replace("s3.example.com/restic", &format!("s3.example.com/{ns}"))
    };
    let ns = "kube-system";
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), ns);
    apply(cp, &backup(ns));
    let vb = wait_for(
        "NotifierInjected=True InjectedByController",
        WAIT,
        || async {
            let vb = vbs.get("excluded-backup").await?;
            let injected = condition(&vb, "NotifierInjected");
            anyhow::ensure!(
                injected == Some(("True".into(), "InjectedByController".into())),
                "NotifierInjected is {injected:?}"
            );
            Ok(vb)
        },
    )
    .await
    .unwrap();
    let message = &vb
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "NotifierInjected")
        .unwrap()
        .message;
    assert!(
        message
            .contains("namespace kube-system is excluded from the operator's admission webhooks")
            && message.contains("checked only by the notifier when it sends"),
        "{message}"
    );
    let cj = cjs.get("excluded-backup-backup").await.unwrap();
    backup_operator::inject::inspect(&serde_json::to_value(&cj).unwrap()).unwrap();
    assert_eq!(
        notifier_env(&cj, "NOTIFY_SUCCESS_URL").as_deref(),
        Some("https://hooks.example.com/ok")
    );
    vbs.delete("excluded-backup", &DeleteParams::default())
        .await
        .unwrap();

    let ns = "backup-operator-system";
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), ns);
    apply(cp, &backup(ns));
    let vb = wait_for("Ready=False OperatorNamespace", WAIT, || async {
        let vb = vbs.get("excluded-backup").await?;
        let ready = condition(&vb, "Ready");
        anyhow::ensure!(
            ready == Some(("False".into(), "OperatorNamespace".into())),
            "Ready is {ready:?}"
        );
        Ok(vb)
    })
    .await
    .unwrap();
    let status = vb.status.as_ref().unwrap();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready
            .message
            .contains("backups do not run in namespace backup-operator-system")
            && ready
                .message
                .contains("create the VolumeBackup in another namespace"),
        "{}",
        ready.message
    );
    assert_eq!(status.cron_job_name, None);
    assert!(
        cjs.get_opt("excluded-backup-backup")
            .await
            .unwrap()
            .is_none()
    );
    wait_for_event(&client, ns, "OperatorNamespace", Some("Warning"), WAIT).await;
    vbs.delete("excluded-backup", &DeleteParams::default())
        .await
        .unwrap();
}

/// The backup container's value of `var` in the stored CronJob.
fn backup_env(cj: &CronJob, var: &str) -> Option<String> {
    let pod = job_template::pod_spec(cj)?;
    let backup = pod.containers.iter().find(|c| c.name == "backup")?;
    backup
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == var)?
        .value
        .clone()
}

#[tokio::test]
async fn backups_sharing_a_repository_get_their_turn_to_initialise_it() {
    let c = cluster(Mode::Full, &[]);
    let client = c.cp.client().await;
    let ns = c.cp.namespace("shared-repo").await;
    let ns = ns.name();
    prerequisites(&client, ns).await;
    let backup = |name: &str, url: &str| {
        format!(
            r#"apiVersion: backups.k8s.bnerd.com/v1
kind: VolumeBackup
metadata: {{name: {name}, namespace: {ns}}}
spec:
  volumeClaimRef: {{name: my-data-pvc}}
  schedule: "0 3 * * *"
  repository: {{url: "{url}", passwordSecretRef: {{name: restic, key: password}}}}
"#
        )
    };
    // In creation order (names break ties within a second of creation).
    apply(c.cp, &backup("a-first", "s3:https://s3.example.com/shared"));
    apply(
        c.cp,
        &backup("b-second", "s3:https://s3.example.com/shared"),
    );
    apply(c.cp, &backup("c-alone", "s3:https://s3.example.com/other"));
    apply(c.cp, &backup("d-third", "s3:https://s3.example.com/shared"));

    let cjs: Api<CronJob> = Api::namespaced(client.clone(), ns);
    for (name, delay) in [
        ("a-first", None),
        ("b-second", Some("20")),
        ("c-alone", None),
        ("d-third", Some("40")),
    ] {
        wait_for(&format!("{name}'s init delay"), WAIT, || async {
            let cj = cjs.get(&format!("{name}-backup")).await?;
            let got = backup_env(&cj, "BACKUP_INIT_DELAY");
            anyhow::ensure!(got.as_deref() == delay, "{got:?}");
            Ok(())
        })
        .await
        .unwrap();
    }
}

/// The controller's Created and Updated events in `ns`, by name, with their resourceVersion
/// (which a repeat of the event, counted into its series, changes).
async fn write_events(client: &kube::Client, ns: &str) -> Vec<(String, String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut found: Vec<_> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| matches!(e.reason.as_deref(), Some("Created" | "Updated")))
        .map(|e| {
            (
                e.name_any(),
                e.reason.clone().unwrap_or_default(),
                e.resource_version().unwrap_or_default(),
            )
        })
        .collect();
    found.sort();
    found
}

/// `kubectl delete --cascade=foreground` (Argo CD's default) keeps the backup, with a
/// deletionTimestamp, until the garbage collector has deleted its CronJob. The controller must
/// not create the CronJob again meanwhile (each deletion of it triggers a reconcile of the
/// owner), nor report having done so.
#[tokio::test]
async fn a_foreground_deletion_does_not_bring_the_cron_job_back() {
    let cp = cluster(Mode::Full, &[]).cp;
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-foreground").await;
    let ns = ns.name();
    prerequisites(&client, ns).await;
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), ns);
    apply(
        cp,
        &manifest(ns, "0 3 * * *", "https://hooks.example.com/ok", false)
            // Its own repository: a shared one would give other tests' backups an init delay.
            .replace("s3.example.com/restic", "s3.example.com/foreground"),
    );
    wait_for("Ready", WAIT, || async {
        let vb = vbs.get("my-backup").await?;
        let ready = ready(&vb);
        anyhow::ensure!(
            ready.as_ref().is_some_and(|r| r.0 == "True"),
            "Ready is {ready:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    wait_for_event(&client, ns, "Created", None, WAIT).await;
    let events_before = write_events(&client, ns).await;

    // Every CronJob of that name created from here on, as the apiserver reports it: a poll could
    // miss one that the garbage collector deletes again within moments.
    let by_name = WatchParams::default().fields("metadata.name=my-backup-backup");
    let since = cjs
        .list(&ListParams::default().fields("metadata.name=my-backup-backup"))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let stream = cjs.watch(&by_name, &since).await.unwrap();
    let created = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = created.clone();
    let watching = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Ok(Some(event)) = stream.try_next().await {
            if let WatchEvent::Added(cj) = event {
                seen.lock().unwrap().push(cj.uid());
            }
        }
    });

    let deleting = vbs
        .delete("my-backup", &DeleteParams::foreground())
        .await
        .unwrap()
        .left()
        .expect("a foreground deletion keeps the backup while its CronJob goes");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert!(
        deleting
            .finalizers()
            .iter()
            .any(|f| f == "foregroundDeletion"),
        "{:?}",
        deleting.finalizers()
    );
    // See the first test for why the garbage collector may take a while here.
    wait_for("the backup to be deleted", GC_WAIT, || async {
        anyhow::ensure!(
            vbs.get_opt("my-backup").await?.is_none(),
            "the backup is still there"
        );
        Ok(())
    })
    .await
    .unwrap();
    // A CronJob created by a reconcile still in flight would show up within moments.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !watching.is_finished(),
        "the watch ended early, so it proves nothing"
    );
    watching.abort();
    let created = created.lock().unwrap().clone();
    assert_eq!(
        created,
        Vec::<Option<String>>::new(),
        "CronJobs created after the deletion began"
    );
    assert!(cjs.get_opt("my-backup-backup").await.unwrap().is_none());
    assert_eq!(
        write_events(&client, ns).await,
        events_before,
        "Created/Updated events after the deletion began"
    );
}

/// A CronJob the apiserver refuses to create (here: a ResourceQuota allowing none) is reported
/// as Ready=False with the apiserver's reason and a Warning event, instead of no status at all;
/// once allowed, the next retry creates it.
#[tokio::test]
async fn a_refused_cron_job_is_reported_and_created_once_allowed() {
    let cp = cluster(Mode::Full, &[]).cp;
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-quota").await;
    let ns = ns.name();
    prerequisites(&client, ns).await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    fixtures::create::<ResourceQuota>(
        &client,
        ns,
        serde_json::json!({
            "metadata": {"name": "no-cronjobs"},
            "spec": {"hard": {"count/cronjobs.batch": "0"}}
        }),
    )
    .await;
    // Until kube-controller-manager has computed its usage, the quota refuses with "status
    // unknown"; the test wants the steady refusal.
    wait_for("the quota's status", WAIT, || async {
        let q = quotas.get("no-cronjobs").await?;
        anyhow::ensure!(
            q.status
                .and_then(|s| s.hard)
                .is_some_and(|h| h.contains_key("count/cronjobs.batch")),
            "no status yet"
        );
        Ok(())
    })
    .await
    .unwrap();

    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    apply(
        cp,
        &manifest(ns, "0 3 * * *", "https://hooks.example.com/ok", false)
            .replace("s3.example.com/restic", "s3.example.com/quota"),
    );
    apply_failed(&client, ns, "exceeded quota: no-cronjobs").await;
    let vb = vbs.get("my-backup").await.unwrap();
    assert_eq!(vb.status.as_ref().unwrap().cron_job_name, None);

    quotas
        .delete("no-cronjobs", &DeleteParams::default())
        .await
        .unwrap();
    // The retry after a failed reconcile comes 15 s later.
    wait_for("Ready=True", WAIT, || async {
        let vb = vbs.get("my-backup").await?;
        let ready = ready(&vb);
        anyhow::ensure!(
            ready.as_ref().is_some_and(|r| r.0 == "True"),
            "Ready is {ready:?}"
        );
        anyhow::ensure!(
            vb.status.as_ref().and_then(|s| s.cron_job_name.as_deref()) == Some("my-backup-backup"),
            "no cronJobName"
        );
        Ok(())
    })
    .await
    .unwrap();
    wait_for_event(&client, ns, "Created", None, WAIT).await;
}

/// An edit whose CronJob an admission policy refuses (a ValidatingAdmissionPolicy, as a
/// platform's policy engine would) turns Ready=False with the policy's message instead of
/// keeping Ready=True and the old message; the old CronJob stays in place, and the edit goes
/// through once the policy allows it.
#[tokio::test]
async fn a_refused_edit_turns_ready_false_and_goes_through_once_allowed() {
    let cp = cluster(Mode::Full, &[]).cp;
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-policy").await;
    let ns = ns.name();
    prerequisites(&client, ns).await;
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), ns);
    let backup = |schedule: &str| {
        manifest(ns, schedule, "https://hooks.example.com/ok", false)
            .replace("s3.example.com/restic", "s3.example.com/policy")
    };
    apply(cp, &backup("0 3 * * *"));
    wait_for("Ready=True", WAIT, || async {
        let vb = vbs.get("my-backup").await?;
        let ready = ready(&vb);
        anyhow::ensure!(
            ready.as_ref().is_some_and(|r| r.0 == "True"),
            "Ready is {ready:?}"
        );
        Ok(())
    })
    .await
    .unwrap();

    let policy = format!("deny-schedule-{ns}");
    apply(
        cp,
        &format!(
            r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [batch], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [cronjobs]}}
  validations:
  - expression: "object.spec.schedule != '15 4 * * *'"
    message: "test policy: backups may not run at 04:15"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec:
  policyName: {policy}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {ns}}}
"#
        ),
    );
    // The apiserver picks policies up asynchronously: wait until this one visibly acts.
    let probe = fixtures::plain_cron_job_yaml(ns, "probe", "15 4 * * *");
    assert!(
        testkit::poll(WAIT, Duration::from_millis(300), || {
            let out = kubectl_stdin(cp, &["apply", "--dry-run=server", "-f", "-"], &probe);
            String::from_utf8_lossy(&out.stderr).contains("test policy")
        }),
        "the admission policy did not act within {WAIT:?}"
    );

    apply(cp, &backup("15 4 * * *"));
    let generation = apply_failed(&client, ns, "test policy: backups may not run at 04:15").await;
    let vb = vbs.get("my-backup").await.unwrap();
    assert_eq!(
        generation, vb.metadata.generation,
        "Ready is about the edit"
    );
    let cj = cjs.get("my-backup-backup").await.unwrap();
    assert_eq!(cj.spec.as_ref().unwrap().schedule, "0 3 * * *");

    // The old CronJob still runs backups meanwhile: a failed one still reaches the status (and
    // so alerts on it), although every reconcile fails at the apply.
    fixtures::job_failed(&client, ns, &cj).await;
    wait_for("lastFailedTime while the apply fails", WAIT, || async {
        let vb = vbs.get("my-backup").await?;
        let ready = ready(&vb);
        anyhow::ensure!(
            ready.as_ref().is_some_and(|r| r.1 == "ApplyFailed"),
            "Ready is {ready:?}"
        );
        anyhow::ensure!(
            vb.status.and_then(|s| s.last_failed_time).is_some(),
            "lastFailedTime not set"
        );
        Ok(())
    })
    .await
    .unwrap();
    wait_for_event(&client, ns, "BackupFailed", Some("Warning"), WAIT).await;

    let deleted = kubectl(
        cp,
        &[
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            &policy,
        ],
    );
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    // The retry after a failed reconcile comes 15 s later; the apiserver may take a moment to
    // forget the policy, which costs another retry.
    wait_for("the edit to go through", WAIT, || async {
        let vb = vbs.get("my-backup").await?;
        let ready = ready(&vb);
        anyhow::ensure!(
            ready.as_ref().is_some_and(|r| r.0 == "True"),
            "Ready is {ready:?}"
        );
        let cj = cjs.get("my-backup-backup").await?;
        let schedule = &cj.spec.as_ref().unwrap().schedule;
        anyhow::ensure!(schedule == "15 4 * * *", "schedule {schedule}");
        Ok(())
    })
    .await
    .unwrap();
    wait_for_event(&client, ns, "Updated", None, WAIT).await;
}

/// Waits for `my-backup` to turn Ready=False with reason ApplyFailed, its message naming the
/// CronJob apply and containing `why` (the apiserver's refusal), and for the Warning event;
/// returns the generation the condition is about.
async fn apply_failed(client: &kube::Client, ns: &str, why: &str) -> Option<i64> {
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    let (_, _, message, generation) = wait_for("Ready=False ApplyFailed", WAIT, || async {
        let vb = vbs.get("my-backup").await?;
        match ready(&vb) {
            Some(r) if r.0 == "False" && r.1 == "ApplyFailed" => Ok(r),
            other => anyhow::bail!("Ready is {other:?}"),
        }
    })
    .await
    .unwrap();
    assert!(
        message.starts_with(&format!("applying CronJob {ns}/my-backup-backup: "))
            && message.contains(why),
        "{message}"
    );
    wait_for_event(client, ns, "ApplyFailed", Some("Warning"), WAIT).await;
    generation
}

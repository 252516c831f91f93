//! Issue 7 on the real control plane: the kustomize install (and the cert-manager overlay, for
//! every object whose API the control plane serves) passes server-side dry-run; and the
//! operator, running with nothing but the ServiceAccount and RBAC of manifests/, does its whole
//! job: leader Lease, self-managed certificate Secret, caBundle injection, CronJobs, status.

mod common;

use std::time::Duration;

use backup_operator::crd::VolumeBackup;
use common::cluster::{kubectl, kubectl_ok, kubectl_stdin};
use common::{OPERATOR, Operator, fixtures};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;
use testkit::control_plane::{ControlPlane, wait_for};

const NS: &str = "backup-operator-system";

fn repo(p: &str) -> String {
    format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))
}

/// Copies `from` (a path in the repository) to the same path under `dir`.
fn copy_from_repo(dir: &std::path::Path, from: &str) {
    let out = std::process::Command::new("cp")
        .args(["-r", &repo(from)])
        .arg(dir.join(from))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Objects of `yaml` (a stream) whose API the control plane serves.
fn served_only(cp: &ControlPlane, yaml: &str) -> (String, Vec<String>) {
    let kinds = kubectl_ok(cp, &["api-resources", "--no-headers"]);
    let mut kept = String::new();
    let mut skipped = Vec::new();
    for doc in yaml.split("\n---") {
        let kind = doc
            .lines()
            .find_map(|l| l.strip_prefix("kind: "))
            .unwrap_or("")
            .trim()
            .to_owned();
        if kind.is_empty() {
            continue;
        }
        let known = kinds
            .lines()
            .any(|l| l.split_whitespace().last() == Some(kind.as_str()));
        if known {
            kept.push_str("---\n");
            kept.push_str(doc.trim_start_matches('-').trim_start());
            kept.push('\n');
        } else {
            skipped.push(kind);
        }
    }
    (kept, skipped)
}

/// The apiserver cannot reach the in-cluster Service here: points both webhooks at the
/// process, keeping the configurations (and their caBundle, which the operator injects).
fn point_webhooks_at(cp: &ControlPlane, op: &Operator) {
    let url = format!("https://{}", op.https);
    for (kind, path) in [
        ("validatingwebhookconfiguration", "/validate"),
        ("mutatingwebhookconfiguration", "/mutate"),
    ] {
        let config: serde_json::Value = serde_json::from_str(&kubectl_ok(
            cp,
            &["get", kind, "backup-operator", "-o", "json"],
        ))
        .unwrap();
        let mut ops = Vec::new();
        for (i, hook) in config["webhooks"].as_array().unwrap().iter().enumerate() {
            if hook["clientConfig"].get("service").is_some() {
                ops.push(
                    json!({"op": "remove", "path": format!("/webhooks/{i}/clientConfig/service")}),
                );
            }
            ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/url"), "value": format!("{url}{path}")}));
        }
        kubectl_ok(
            cp,
            &[
                "patch",
                kind,
                "backup-operator",
                "--type=json",
                "-p",
                &serde_json::to_string(&ops).unwrap(),
            ],
        );
    }
}

/// Applies the JSON patch `ops` to the operator's ClusterRole.
fn patch_cluster_role(cp: &ControlPlane, ops: &str) {
    kubectl_ok(
        cp,
        &[
            "patch",
            "clusterrole",
            "backup-operator",
            "--type=json",
            "-p",
            ops,
        ],
    );
}

#[tokio::test]
async fn install_dry_runs_and_the_operator_works_with_only_its_rbac() {
    let cp = ControlPlane::shared();
    // A dry run does not create the namespace the other objects go into.
    let _ = kubectl(cp, &["create", "namespace", NS]);
    let out = kubectl(
        cp,
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-k",
            &repo("manifests"),
        ],
    );
    assert!(
        out.status.success(),
        "dry-run of manifests/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let overlay = kubectl_ok(cp, &["kustomize", &repo("manifests/overlays/cert-manager")]);
    let (kept, mut skipped) = served_only(cp, &overlay);
    skipped.sort();
    skipped.dedup();
    assert_eq!(
        skipped,
        ["Certificate", "Issuer"],
        "only cert-manager's own kinds may be skipped"
    );
    // The serving certificate comes from a CA issuer, so its renewal keeps the injected CA.
    let serving = overlay
        .split("\n---")
        .find(|doc| {
            doc.contains("kind: Certificate") && doc.contains("secretName: backup-operator-tls")
        })
        .expect("the serving Certificate");
    assert!(serving.contains("name: backup-operator-ca"), "{serving}");
    assert!(
        overlay
            .split("\n---")
            .any(|doc| doc.contains("kind: Issuer")
                && doc.contains("name: backup-operator-ca")
                && doc.contains("secretName: backup-operator-ca")),
        "no CA Issuer over the backup-operator-ca Secret"
    );
    let out = kubectl_stdin(
        cp,
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &kept,
    );
    assert!(
        out.status.success(),
        "dry-run of the cert-manager overlay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Install for real (the Deployment's pods never run here: no kubelet), then run the
    // operator locally with the ServiceAccount's token instead of admin credentials.
    let out = kubectl(cp, &["apply", "--server-side", "-k", &repo("manifests")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kubectl_ok(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/volumebackups.backups.k8s.bnerd.com",
        ],
    );
    let token = kubectl_ok(
        cp,
        &[
            "create",
            "token",
            "backup-operator",
            "-n",
            NS,
            "--duration",
            "1h",
        ],
    );
    let server = kubectl_ok(
        cp,
        &[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    );
    let ca = kubectl_ok(
        cp,
        &[
            "config",
            "view",
            "--minify",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority}",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let sa_kubeconfig = dir.path().join("sa-kubeconfig");
    std::fs::write(
        &sa_kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: {server}, certificate-authority: {ca}}}}}]\nusers: [{{name: sa, user: {{token: {}}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: sa}}}}]\ncurrent-context: c\n",
            token.trim()
        ),
    )
    .unwrap();
    // The operator as the ServiceAccount, with self-managed certificates.
    let start = || {
        Operator::start_self_managed(
            &[
                "--tls-secret",
                "backup-operator-tls",
                "--cert-ip",
                "127.0.0.1",
                "--lease-duration",
                "6s",
            ],
            &[("KUBECONFIG", sa_kubeconfig.as_os_str())],
        )
    };
    let op = start();
    point_webhooks_at(cp, &op);

    let client = cp.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    wait_for(
        "the certificate Secret",
        Duration::from_secs(30),
        || async {
            secrets
                .get_opt("backup-operator-tls")
                .await?
                .ok_or_else(|| anyhow::anyhow!("no Secret; operator log:\n{}", op.log()))
        },
    )
    .await
    .unwrap();
    let ns = cp.namespace("install").await;
    fixtures::pvc(&client, ns.name(), "data").await;
    fixtures::restic_secret(&client, ns.name()).await;
    let manifest = |failure: &str| {
        format!(
            "apiVersion: backups.k8s.bnerd.com/v1\nkind: VolumeBackup\nmetadata: {{name: nightly, namespace: {}}}\nspec:\n  volumeClaimRef: {{name: data}}\n  schedule: \"0 3 * * *\"\n  repository: {{url: /repo, passwordSecretRef: {{name: restic, key: password}}}}\n  webhooks: {{failure: \"{failure}\"}}\n",
            ns.name()
        )
    };
    // Rejected by the webhook once its CA is injected.
    wait_for(
        "the webhook to reject a bad URL",
        Duration::from_secs(60),
        || async {
            let out = kubectl_stdin(
                cp,
                &["apply", "-f", "-"],
                &manifest("https://169.254.169.254/x"),
            );
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            anyhow::ensure!(
                !out.status.success() && err.contains("notifications cannot be sent there"),
                "{err}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    let out = kubectl_stdin(
        cp,
        &["apply", "-f", "-"],
        &manifest("https://hooks.example.com/fail"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns.name());
    wait_for(
        "Ready and NotifierInjected with only the operator's RBAC",
        Duration::from_secs(60),
        || async {
            let vb = vbs.get("nightly").await?;
            let conds = vb.status.map(|s| s.conditions).unwrap_or_default();
            let ok = |t: &str| conds.iter().any(|c| c.type_ == t && c.status == "True");
            anyhow::ensure!(
                ok("Ready") && ok("NotifierInjected"),
                "conditions {conds:?}; operator log:\n{}",
                op.log()
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    assert!(
        Api::<CronJob>::namespaced(client.clone(), ns.name())
            .get_opt("nightly-backup")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        !op.log().contains("forbidden"),
        "RBAC denied something:\n{}",
        op.log()
    );

    // The Secrets rule is optional: without it a backup still becomes Ready, and the condition
    // says which Secret was not checked.
    patch_cluster_role(
        cp,
        r#"[{"op":"test","path":"/rules/8/resources","value":["secrets"]},{"op":"remove","path":"/rules/8"}]"#,
    );
    let weekly =
        manifest("https://hooks.example.com/fail").replace("name: nightly", "name: weekly");
    // RBAC changes reach the authorizer asynchronously: until the Secret is refused, "weekly"
    // may become Ready with it checked, so the message is awaited rather than read once.
    let out = kubectl_stdin(cp, &["apply", "-f", "-"], &weekly);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "Ready without reading the Secret",
        Duration::from_secs(90),
        || async {
            let vb = vbs.get("weekly").await?;
            let ready = vb
                .status
                .map(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Ready");
            match ready {
                Some(c)
                    if c.status == "True" && c.message.contains("Secret restic not checked") =>
                {
                    Ok(())
                }
                other => {
                    // Any change to the object is a new reconcile.
                    kubectl_ok(
                        cp,
                        &[
                            "annotate",
                            "--overwrite",
                            "volumebackup",
                            "weekly",
                            "-n",
                            ns.name(),
                            &format!(
                                "poke={}",
                                std::time::SystemTime::UNIX_EPOCH
                                    .elapsed()
                                    .unwrap_or_default()
                                    .as_nanos()
                            ),
                        ],
                    );
                    anyhow::bail!("Ready is {other:?}")
                }
            }
        },
    )
    .await
    .unwrap();
    assert!(
        op.log().contains("may not get Secrets in this namespace"),
        "no warning about the refused Secret read:\n{}",
        op.log()
    );

    // A watch that cannot list (here: S3Backups, by RBAC; as well a missing CRD) must not hold
    // back the other kind's backups for longer than the grace. A new process, so that its term
    // starts with the S3Backup list refused. An S3Backup on the same repository, created while
    // the webhook still serves, is older than the VolumeBackup created below.
    let bucket = format!(
        "apiVersion: backups.k8s.bnerd.com/v1\nkind: S3Backup\nmetadata: {{name: bucket, namespace: {}}}\nspec:\n  source: {{endpoint: \"https://s3.example.com\", bucket: src, credentialsSecretRef: {{name: s3}}}}\n  schedule: \"0 4 * * *\"\n  repository: {{url: /repo, passwordSecretRef: {{name: restic, key: password}}}}\n",
        ns.name()
    );
    let out = kubectl_stdin(cp, &["apply", "-f", "-"], &bucket);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(op);
    patch_cluster_role(
        cp,
        r#"[{"op":"test","path":"/rules/0/resources","value":["volumebackups","s3backups"]},{"op":"replace","path":"/rules/0/resources","value":["volumebackups"]}]"#,
    );
    let sa = format!("--as=system:serviceaccount:{NS}:backup-operator");
    wait_for(
        "RBAC to refuse listing S3Backups",
        Duration::from_secs(30),
        || async {
            let out = kubectl(
                cp,
                &[
                    "auth",
                    "can-i",
                    "list",
                    "s3backups.backups.k8s.bnerd.com",
                    &sa,
                ],
            );
            anyhow::ensure!(String::from_utf8_lossy(&out.stdout).trim() == "no");
            Ok(())
        },
    )
    .await
    .unwrap();
    let op = start();
    point_webhooks_at(cp, &op);
    let monthly =
        manifest("https://hooks.example.com/fail").replace("name: nightly", "name: monthly");
    wait_for("the webhook to admit", Duration::from_secs(30), || async {
        let out = kubectl_stdin(cp, &["apply", "-f", "-"], &monthly);
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .await
    .unwrap();
    wait_for(
        "a VolumeBackup reconciled without the S3Backup list",
        Duration::from_secs(120),
        || async {
            let created = Api::<CronJob>::namespaced(client.clone(), ns.name())
                .get_opt("monthly-backup")
                .await?;
            anyhow::ensure!(created.is_some(), "no CronJob; operator log:\n{}", op.log());
            Ok(())
        },
    )
    .await
    .unwrap();
    let log = op.log();
    assert!(
        log.contains("reconciling without the S3Backup list"),
        "no warning about the missing list:\n{log}"
    );
    let failed_watches = fixtures::metric(
        op.admin,
        "backup_operator_controller_stream_errors_total{kind=\"S3Backup\",stream=\"watch\"}",
    )
    .await;
    assert!(failed_watches > 0.0, "the failing watch is not counted");
    let volume_errors = fixtures::metric(
        op.admin,
        "backup_operator_controller_stream_errors_total{kind=\"VolumeBackup\"",
    )
    .await;
    assert_eq!(volume_errors, 0.0, "only the S3Backup watch fails");

    // Its init delay counts nightly and weekly only; once the S3Backups list, the older S3Backup on the
    // same repository moves it back at once, not at the next periodic reconcile (5 minutes).
    let init_delay = || async {
        let cj = Api::<CronJob>::namespaced(client.clone(), ns.name())
            .get("monthly-backup")
            .await?;
        let spec = cj.spec.and_then(|s| s.job_template.spec);
        let pod = spec.and_then(|s| s.template.spec).unwrap_or_default();
        let delay = pod
            .containers
            .iter()
            .flat_map(|c| c.env.iter().flatten())
            .find(|e| e.name == "BACKUP_INIT_DELAY")
            .and_then(|e| e.value.clone());
        anyhow::Ok(delay)
    };
    assert_eq!(init_delay().await.unwrap().as_deref(), Some("40"));
    patch_cluster_role(
        cp,
        r#"[{"op":"test","path":"/rules/0/resources","value":["volumebackups"]},{"op":"replace","path":"/rules/0/resources","value":["volumebackups","s3backups"]}]"#,
    );
    wait_for(
        "the late S3Backup list to reach the VolumeBackup's delay",
        Duration::from_secs(120),
        || async {
            let delay = init_delay().await?;
            anyhow::ensure!(
                delay.as_deref() == Some("60"),
                "BACKUP_INIT_DELAY {delay:?}; operator log:\n{}",
                op.log()
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    assert!(op.log().contains("listed after the grace"), "{}", op.log());
    let _ = OPERATOR;
}

/// `tools/set-image` points the install at an image (a registry with a port, a tag or a
/// digest), and the injected notifier follows it; anything else is refused without a change.
#[test]
fn set_image_points_the_operator_and_the_notifier_at_one_image() {
    let cp = ControlPlane::shared();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    copy_from_repo(dir.path(), "manifests");
    copy_from_repo(dir.path(), "tools/set-image");
    let set_image = |image: &str| {
        std::process::Command::new(dir.path().join("tools/set-image"))
            .arg(image)
            .output()
            .unwrap()
    };
    let digest = format!(
        "registry.example.com:5000/backup-operator@sha256:{}",
        "ab".repeat(32)
    );
    for image in [
        "registry.example.com:5000/backup-operator:0.1.0",
        digest.as_str(),
    ] {
        let out = set_image(image);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for kustomization in ["manifests", "manifests/overlays/cert-manager"] {
            let rendered = kubectl_ok(
                cp,
                &[
                    "kustomize",
                    dir.path().join(kustomization).to_str().unwrap(),
                ],
            );
            assert!(
                rendered.contains(&format!("image: {image}\n")),
                "{kustomization}: {rendered}"
            );
            let notifier = rendered
                .lines()
                .skip_while(|l| !l.contains("name: BACKUP_OPERATOR_NOTIFIER_IMAGE"))
                .nth(1)
                .unwrap_or_default()
                .trim();
            assert_eq!(notifier, format!("value: {image}"), "{kustomization}");
        }
    }
    let before = std::fs::read_to_string(dir.path().join("manifests/kustomization.yaml")).unwrap();
    for bad in [
        "localhost:5000/backup-operator",
        "backup-operator@sha256:abc",
        "--help",
        // Would reach the YAML, or the replacement pattern, as written.
        "registry.example.com/backup-operator:a\\1",
        "Registry.example.com/backup-operator:1",
        "registry.example.com/backup-operator:\"x\"",
    ] {
        let out = set_image(bad);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("usage: tools/set-image"), "{bad}: {stderr}");
    }
    let after = std::fs::read_to_string(dir.path().join("manifests/kustomization.yaml")).unwrap();
    assert_eq!(before, after);
}

/// The cert-manager overlay swaps only the self-managed certificate flag for the mounted files:
/// a flag a platform team adds to the base Deployment (the commented `--notifier-ca-configmap`)
/// holds in that mode too, and the Secret flag is gone (`serve` refuses both together).
#[test]
fn cert_manager_overlay_keeps_the_flags_added_to_the_base_deployment() {
    let cp = ControlPlane::shared();
    let dir = tempfile::tempdir().unwrap();
    copy_from_repo(dir.path(), "manifests");
    let deployment = dir.path().join("manifests/install/deployment.yaml");
    let base = std::fs::read_to_string(&deployment).unwrap();
    let commented = "# - --notifier-ca-configmap=notification-relay-ca";
    assert!(base.contains(commented), "{base}");
    std::fs::write(
        &deployment,
        base.replace(commented, "- --notifier-ca-configmap=notification-relay-ca"),
    )
    .unwrap();
    let overlay = dir.path().join("manifests/overlays/cert-manager");
    let rendered = kubectl_ok(cp, &["kustomize", overlay.to_str().unwrap()]);
    let args: Vec<&str> = rendered
        .lines()
        .skip_while(|l| l.trim() != "- args:")
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("- --") || l.trim() == "- serve")
        .map(|l| l.trim().trim_start_matches("- "))
        .collect();
    assert_eq!(
        args,
        [
            "serve",
            "--tls-cert=/etc/backup-operator/tls/tls.crt",
            "--tls-key=/etc/backup-operator/tls/tls.key",
            "--notifier-ca-configmap=notification-relay-ca",
        ],
        "{rendered}"
    );
}

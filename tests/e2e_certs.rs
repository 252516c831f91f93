//! Issue 7: self-managed certificates on the real control plane. The operator starts with no
//! Secret, creates it and injects the CA bundle; during forced rotations (short validity) with
//! two replicas behind one address, every admission request is answered by the webhook.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backup_operator::crd::VolumeBackup;
use common::Operator;
use common::cluster::{apply_webhook_configurations, install_crds, kubectl_stdin};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use testkit::control_plane::{ControlPlane, wait_for};

const NS: &str = "backup-operator-system";

fn start(cp: &ControlPlane, identity: &str, extra: &[&str]) -> Operator {
    let mut args = vec![
        "--tls-secret",
        "backup-operator-tls",
        "--cert-ip",
        "127.0.0.1",
        "--identity",
        identity,
        "--lease-duration",
        "6s",
    ];
    args.extend_from_slice(extra);
    let mut cmd_args: Vec<&str> = Vec::new();
    cmd_args.extend(args);
    Operator::start_self_managed(
        &cmd_args,
        &[("KUBECONFIG", cp.kubeconfig_path().as_os_str())],
    )
}

fn vb(name: &str, failure: &str) -> VolumeBackup {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "backups.k8s.bnerd.com/v1", "kind": "VolumeBackup",
        "metadata": {"name": name},
        "spec": {
            "volumeClaimRef": {"name": "data"}, "schedule": "0 3 * * *",
            "repository": {"url": "/repo", "passwordSecretRef": {"name": "restic", "key": "password"}},
            "webhooks": {"failure": failure}
        }
    }))
    .unwrap()
}

/// A TCP round-robin in front of the replicas: what a Service does for the apiserver.
async fn round_robin(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_without_a_secret_creates_it_and_rotates_without_a_failed_request() {
    let cp = ControlPlane::shared();
    install_crds(cp);
    let client = cp.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    assert!(
        secrets
            .get_opt("backup-operator-tls")
            .await
            .unwrap()
            .is_none()
    );

    // Short lifetimes force serving renewals every few seconds and a CA rotation within ~30 s.
    let short = ["--ca-validity", "36s", "--cert-validity", "9s"];
    let a = start(cp, "replica-a", &short);
    let b = start(cp, "replica-b", &short);
    let front = round_robin(vec![a.https, b.https]).await;
    // Without a caBundle: the leader must inject it.
    apply_webhook_configurations(cp, &format!("https://{front}"), None);

    let secret = wait_for(
        "the leader to create the Secret",
        Duration::from_secs(30),
        || async {
            secrets
                .get_opt("backup-operator-tls")
                .await?
                .ok_or_else(|| anyhow::anyhow!("no Secret yet"))
        },
    )
    .await
    .unwrap();
    let keys: Vec<_> = secret.data.unwrap().into_keys().collect();
    for key in [
        "ca.crt",
        "tls.crt",
        "tls.key",
        "signing-ca.crt",
        "signing-ca.key",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing in {keys:?}");
    }

    // The injected bundle makes the webhook act: a bad URL is rejected by it.
    let ns = cp.namespace("certs").await;
    let vbs: Api<VolumeBackup> = Api::namespaced(client.clone(), ns.name());
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    wait_for(
        "the webhook to be trusted",
        Duration::from_secs(30),
        || async {
            match vbs
                .create(&dry, &vb("canary", "https://169.254.169.254/x"))
                .await
            {
                Err(kube::Error::Api(e))
                    if e.message.contains("notifications cannot be sent there") =>
                {
                    Ok(())
                }
                other => anyhow::bail!("not yet answered by the webhook: {other:?}"),
            }
        },
    )
    .await
    .unwrap();
    let out = kubectl_stdin(
        cp,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: backups.k8s.bnerd.com/v1\nkind: VolumeBackup\nmetadata: {{name: bad, namespace: {}}}\nspec:\n  volumeClaimRef: {{name: data}}\n  schedule: \"0 3 * * *\"\n  repository: {{url: /repo, passwordSecretRef: {{name: restic, key: password}}}}\n  webhooks: {{failure: \"http://169.254.169.254/latest\"}}\n",
            ns.name()
        ),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("spec.webhooks.failure: host 169.254.169.254 is link-local")
    );

    // A loop of creates across rotations: every answer must come from the webhook.
    let first_ca = ca_bundle(&secrets).await;
    let started = Instant::now();
    let mut answered = 0usize;
    let mut bundles = vec![first_ca.clone()];
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(60) || bundles.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no CA rotation seen in 120s: {} bundles",
            bundles.len()
        );
        i += 1;
        let (name, url, want_ok) = if i % 2 == 0 {
            (format!("good-{i}"), "https://hooks.example.com/x", true)
        } else {
            (format!("bad-{i}"), "https://169.254.169.254/x", false)
        };
        match (vbs.create(&dry, &vb(&name, url)).await, want_ok) {
            (Ok(_), true) => {}
            (Err(kube::Error::Api(e)), false)
                if e.message.contains("notifications cannot be sent there") => {}
            (other, _) => panic!(
                "request {i} at {:?} not answered correctly by the webhook: {other:?}",
                started.elapsed()
            ),
        }
        answered += 1;
        let bundle = ca_bundle(&secrets).await;
        if bundles.last() != Some(&bundle) {
            bundles.push(bundle);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{answered} requests answered across {} CA bundle states in {:?}",
        bundles.len(),
        started.elapsed()
    );
    // old → old+new → new: a whole CA rotation happened during the loop.
    assert!(bundles.len() >= 3, "bundles seen: {}", bundles.len());
    drop((a, b));
}

async fn ca_bundle(secrets: &Api<Secret>) -> Vec<u8> {
    secrets
        .get("backup-operator-tls")
        .await
        .unwrap()
        .data
        .unwrap()["ca.crt"]
        .0
        .clone()
}

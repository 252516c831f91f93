//! Issue 7: self-managed certificates on the real control plane. The operator starts with no
//! Secret, creates it and injects the CA bundle; during forced rotations (short validity) with
//! two replicas behind one address, every admission request is answered by the webhook. A
//! rotation does not move on while the bundle cannot be written into the webhook
//! configurations; a Secret it did not write (cert-manager's) is adopted, and a deleted one
//! re-created, without a moment at which the replica serves a certificate they do not trust.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use backup_operator::cert_rotation::{CONFIRMED, PHASE};
use backup_operator::certs;
use backup_operator::crd::VolumeBackup;
use common::Operator;
use common::cluster::{
    apply_webhook_configurations, install_crds, kubectl, kubectl_ok, kubectl_stdin,
};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
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

// ---------------------------------------------------------------------------------------------
// Each test below has its own Secret, Lease and webhook configurations (named after it), so they
// run beside the test above. Their configurations match a resource that does not exist: the
// apiserver never calls them, only their caBundle matters, and what the replica serves is checked
// against it directly.

/// `serve` with self-managed certificates under the names `prefix-tls`, `prefix-leader` and
/// `prefix` (both webhook configurations), as whoever `kubeconfig` names.
fn start_isolated(prefix: &str, kubeconfig: &Path, extra: &[&str]) -> Operator {
    let secret = format!("{prefix}-tls");
    let lease = format!("{prefix}-leader");
    let mut args = vec![
        "--tls-secret",
        &secret,
        "--lease-name",
        &lease,
        "--webhook-configuration",
        prefix,
        "--cert-ip",
        "127.0.0.1",
        "--identity",
        prefix,
        "--lease-duration",
        "6s",
    ];
    args.extend_from_slice(extra);
    Operator::start_self_managed(&args, &[("KUBECONFIG", kubeconfig.as_os_str())])
}

/// Both webhook configurations named `name`, never called (see above), with `ca` as caBundle.
async fn inert_configurations(client: &kube::Client, name: &str, ca: Option<&str>) {
    let hook = |hook: &str| {
        let mut client_config = serde_json::json!({"url": "https://127.0.0.1:9/never"});
        if let Some(ca) = ca {
            client_config["caBundle"] = serde_json::json!(k8s_openapi::ByteString(ca.into()));
        }
        serde_json::json!({
            "name": format!("{hook}.{name}.example.com"),
            "clientConfig": client_config,
            "rules": [{"operations": ["CREATE"], "apiGroups": ["e2e-certs.example.com"],
                       "apiVersions": ["v1"], "resources": ["nothings"]}],
            "failurePolicy": "Ignore", "sideEffects": "None", "admissionReviewVersions": ["v1"]
        })
    };
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name}, "webhooks": [hook("first"), hook("second")]
    }))
    .unwrap();
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name}, "webhooks": [hook("only")]
    }))
    .unwrap();
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    // Left by an earlier run against an external cluster.
    let _ = v.delete(name, &DeleteParams::default()).await;
    let _ = m.delete(name, &DeleteParams::default()).await;
    v.create(&PostParams::default(), &validating).await.unwrap();
    m.create(&PostParams::default(), &mutating).await.unwrap();
}

/// The caBundle of every webhook in both configurations ("" when it has none).
async fn ca_bundles(client: &kube::Client, name: &str) -> anyhow::Result<Vec<String>> {
    let text = |b: &Option<k8s_openapi::ByteString>| {
        String::from_utf8_lossy(b.as_ref().map_or(&[][..], |b| &b.0)).into_owned()
    };
    let v = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await?;
    let m = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await?;
    Ok(v.webhooks
        .iter()
        .flatten()
        .map(|w| text(&w.client_config.ca_bundle))
        .chain(
            m.webhooks
                .iter()
                .flatten()
                .map(|w| text(&w.client_config.ca_bundle)),
        )
        .collect())
}

fn phase(s: &Secret) -> Option<String> {
    s.metadata.annotations.as_ref()?.get(PHASE).cloned()
}

fn key(s: &Secret, k: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(k))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

/// Whether PEM `bundle` holds the (first) certificate of PEM `cert`.
fn holds(bundle: &str, cert: &str) -> bool {
    let cert = certs::pem_certificates(cert.as_bytes());
    !cert.is_empty() && certs::pem_certificates(bundle.as_bytes()).contains(&cert[0])
}

/// A TLS handshake with the replica at `addr`, trusting only `bundle`; the served certificate.
async fn handshake(addr: SocketAddr, bundle: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        !bundle.is_empty(),
        "an empty caBundle trusts no certificate"
    );
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(common::tls_client(bundle)).connect(
            rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        ),
    )
    .await
    .context("the handshake timed out")??;
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .context("no certificate")?[0]
        .to_vec())
}

/// Checks, every 100 ms, that each caBundle of the configurations `name` trusts the certificate
/// the replica at `addr` serves, from the first moment all of them do.
struct TrustCheck {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl TrustCheck {
    fn start(client: kube::Client, name: &str, addr: SocketAddr) -> TrustCheck {
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_owned();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let (mut checks, mut failures) = (0usize, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let mut bundles = ca_bundles(&client, &name).await.unwrap();
                bundles.dedup();
                let mut bad = Vec::new();
                for bundle in &bundles {
                    if let Err(e) = handshake(addr, bundle).await {
                        let n = certs::pem_certificates(bundle.as_bytes()).len();
                        bad.push(format!(
                            "at {:?}: a caBundle of {n} certificate(s) does not trust the served certificate: {e:#}",
                            started.elapsed()
                        ));
                    }
                }
                if checks > 0 || bad.is_empty() {
                    checks += 1;
                    failures.extend(bad);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (checks, failures)
        });
        TrustCheck { stop, task }
    }

    /// Stops checking; asserts that every check passed, and that there were at least `min`.
    async fn finish(self, min: usize, log: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let (checks, failures) = self.task.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} of {checks} checks failed:\n{}\noperator log:\n{log}",
            failures.len(),
            failures.join("\n")
        );
        assert!(checks >= min, "only {checks} checks");
    }
}

/// Every version of the Secret `name`, as a watch delivers them.
fn record(secrets: Api<Secret>, name: &str) -> Arc<Mutex<Vec<Secret>>> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let seen = Arc::new(Mutex::new(Vec::<Secret>::new()));
    let sink = seen.clone();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut events =
            std::pin::pin!(watcher(secrets, config).default_backoff().applied_objects());
        while let Some(event) = events.next().await {
            if let Ok(secret) = event {
                let mut seen = sink.lock().unwrap();
                if seen.last().map(|s| &s.metadata.resource_version)
                    != Some(&secret.metadata.resource_version)
                {
                    seen.push(secret);
                }
            }
        }
    });
    seen
}

/// A kubeconfig like the control plane's that acts as `user` (impersonation by the admin).
fn impersonating_kubeconfig(cp: &ControlPlane, dir: &Path, user: &str) -> PathBuf {
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(cp.kubeconfig_path()).unwrap()).unwrap();
    for u in config["users"].as_sequence_mut().unwrap() {
        u["user"]["as"] = user.into();
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    path
}

fn apply_yaml(cp: &ControlPlane, yaml: &str) {
    let out = kubectl_stdin(cp, &["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Finding: the phase clock ran from the Secret write, so a rotation whose bundle never reached
/// the webhook configurations (a failed write, a term that ended between the two writes) served
/// a certificate of the new CA a step later anyway. Here the operator may not patch the
/// configurations while a rotation starts: the Secret must stay in `bundle-extended`, the
/// replica must keep serving a certificate the configurations trust, and once it may patch them
/// again the rotation completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ca_rotation_waits_until_both_webhook_configurations_hold_the_new_ca() {
    const P: &str = "e2e-certs-a";
    let cp = ControlPlane::shared();
    install_crds(cp);
    let client = cp.client().await;
    inert_configurations(&client, P, None).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let name = format!("{P}-tls");
    let _ = secrets.delete(&name, &DeleteParams::default()).await;

    // What the operator needs, as a user of its own; patching the configurations separately.
    apply_yaml(
        cp,
        &format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {P}}}
rules:
  - apiGroups: ["", "coordination.k8s.io", "batch", "events.k8s.io", "backups.k8s.bnerd.com"]
    resources: ["*"]
    verbs: ["*"]
  - apiGroups: ["admissionregistration.k8s.io"]
    resources: ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"]
    verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {P}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {P}}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {P}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {P}-inject}}
rules:
  - apiGroups: ["admissionregistration.k8s.io"]
    resources: ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"]
    resourceNames: ["{P}"]
    verbs: ["patch"]
"#
        ),
    );
    let grant = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {P}-inject}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {P}-inject}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {P}}}]
"#
    );
    let may_patch = |yes: bool| {
        let want = if yes { "yes" } else { "no" };
        testkit::poll(Duration::from_secs(10), Duration::from_millis(100), || {
            let out = kubectl(
                cp,
                &[
                    "auth",
                    "can-i",
                    "patch",
                    &format!("validatingwebhookconfigurations/{P}"),
                    "--as",
                    P,
                ],
            );
            String::from_utf8_lossy(&out.stdout).trim() == want
        })
    };
    apply_yaml(cp, &grant);
    assert!(may_patch(true));

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = impersonating_kubeconfig(cp, dir.path(), P);
    // The CA is due after ~20 s; steps of 1 s.
    let op = start_isolated(
        P,
        &kubeconfig,
        &["--ca-validity", "30s", "--cert-validity", "6s"],
    );
    wait_for(
        "the Secret, with its CA in both configurations",
        Duration::from_secs(30),
        || async {
            let s = secrets
                .get_opt(&name)
                .await?
                .with_context(|| format!("no Secret yet; log:\n{}", op.log()))?;
            anyhow::ensure!(phase(&s).as_deref() == Some("stable"));
            let bundles = ca_bundles(&client, P).await?;
            anyhow::ensure!(bundles.iter().all(|b| *b == key(&s, "ca.crt")));
            Ok(())
        },
    )
    .await
    .unwrap();
    let trust = TrustCheck::start(client.clone(), P, op.https);

    kubectl_ok(
        cp,
        &["delete", "clusterrolebinding", &format!("{P}-inject")],
    );
    assert!(may_patch(false));
    let extended = wait_phase(&secrets, &name, "bundle-extended", Duration::from_secs(40)).await;
    let (old_ca, new_ca) = (
        key(&extended, "signing-ca.crt"),
        key(&extended, "next-ca.crt"),
    );
    // Four steps: the old code switched after one.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(4) {
        let s = secrets.get(&name).await.unwrap();
        assert_eq!(
            phase(&s).as_deref(),
            Some("bundle-extended"),
            "the rotation moved on although the configurations do not hold the new CA; log:\n{}",
            op.log()
        );
        handshake(op.https, &old_ca)
            .await
            .expect("the replica serves a certificate of the old CA");
        for bundle in ca_bundles(&client, P).await.unwrap() {
            assert!(!holds(&bundle, &new_ca), "the new CA got in without patch");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        op.log()
            .contains("writing caBundle into the ValidatingWebhookConfiguration"),
        "the failed write is not logged:\n{}",
        op.log()
    );

    apply_yaml(cp, &grant);
    let switched = wait_phase(&secrets, &name, "signing-switched", Duration::from_secs(20)).await;
    // Read after the switch was written: the write came after both held old + new.
    for bundle in ca_bundles(&client, P).await.unwrap() {
        assert!(holds(&bundle, &new_ca) && holds(&bundle, &old_ca));
    }
    assert_eq!(key(&switched, "signing-ca.crt"), new_ca);
    wait_for(
        "the old CA to leave the bundle",
        Duration::from_secs(20),
        || async {
            let s = secrets.get(&name).await?;
            anyhow::ensure!(phase(&s).as_deref() == Some("stable"));
            let bundle = key(&s, "ca.crt");
            anyhow::ensure!(holds(&bundle, &new_ca) && !holds(&bundle, &old_ca));
            anyhow::ensure!(ca_bundles(&client, P).await?.iter().all(|b| *b == bundle));
            Ok(())
        },
    )
    .await
    .unwrap();
    trust.finish(20, &op.log()).await;
}

/// Finding: a Secret without `signing-ca.*` (the cert-manager overlay's: `tls.crt`, `tls.key`,
/// `ca.crt`) failed certificate management forever; and a deleted Secret was re-created with a
/// new CA and its serving certificate at once, which the replicas loaded before the new CA was
/// trusted. Both now go through extend-then-switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adopts_a_foreign_secret_and_re_creates_a_deleted_one_without_an_untrusted_moment() {
    const P: &str = "e2e-certs-c";
    let cp = ControlPlane::shared();
    install_crds(cp);
    let client = cp.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let name = format!("{P}-tls");
    let _ = secrets.delete(&name, &DeleteParams::default()).await;

    // What cert-manager leaves: its CA in ca.crt and (by cainjector) in both configurations.
    let foreign_ca = certs::generate_ca("cert-manager-ca", Duration::from_secs(3600)).unwrap();
    let foreign = certs::issue_serving(
        &foreign_ca,
        &["localhost".to_owned()],
        &["127.0.0.1".parse().unwrap()],
        Duration::from_secs(3600),
    )
    .unwrap();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "annotations": {"cert-manager.io/certificate-name": "backup-operator"}},
        "stringData": {"tls.crt": foreign.cert, "tls.key": foreign.key, "ca.crt": foreign_ca.cert}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    inert_configurations(&client, P, Some(&foreign_ca.cert)).await;
    let history = record(secrets.clone(), &name);

    // Steps of 3 s; serving certificates of 30 s, so the one a replica holds outlasts a deletion.
    let op = start_isolated(
        P,
        cp.kubeconfig_path(),
        &["--ca-validity", "1h", "--cert-validity", "30s"],
    );
    let trust = TrustCheck::start(client.clone(), P, op.https);
    let settled = |old_uid: Option<String>| {
        let (secrets, client, name, op) = (&secrets, &client, &name, &op);
        async move {
            let s = secrets.get(name).await?;
            anyhow::ensure!(s.metadata.uid != old_uid || old_uid.is_none());
            anyhow::ensure!(
                phase(&s).as_deref() == Some("stable"),
                "phase {:?}; log:\n{}",
                phase(&s),
                op.log()
            );
            let bundle = key(&s, "ca.crt");
            anyhow::ensure!(certs::pem_certificates(bundle.as_bytes()).len() == 1);
            anyhow::ensure!(ca_bundles(client, P).await?.iter().all(|b| *b == bundle));
            // The replica serves a certificate of it.
            handshake(op.https, &bundle).await?;
            Ok(s)
        }
    };
    let adopted = wait_for("the Secret to be adopted", Duration::from_secs(40), || {
        settled(None)
    })
    .await
    .unwrap();
    let ours = key(&adopted, "signing-ca.crt");
    assert!(!holds(&ours, &foreign_ca.cert));
    assert!(
        adopted
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(CONFIRMED)
    );
    {
        let seen = history.lock().unwrap();
        let first = seen
            .iter()
            .find(|s| phase(s).is_some())
            .expect("no version of ours");
        assert_eq!(phase(first).as_deref(), Some("bundle-extended"));
        assert_eq!(key(first, "tls.crt"), foreign.cert, "served before trusted");
        assert!(holds(&key(first, "ca.crt"), &foreign_ca.cert));
        assert!(holds(&key(first, "ca.crt"), &ours));
        let mut phases: Vec<_> = seen.iter().map(phase).collect();
        phases.dedup();
        assert_eq!(
            phases,
            [
                None,
                Some("bundle-extended"),
                Some("signing-switched"),
                Some("stable")
            ]
            .map(|p| p.map(str::to_owned))
        );
    }

    // Deleted: the replica keeps serving what it loaded; the new CA must be trusted first.
    secrets
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let recreated = wait_for(
        "the Secret to be re-created",
        Duration::from_secs(40),
        || settled(adopted.metadata.uid.clone()),
    )
    .await
    .unwrap();
    let newest = key(&recreated, "signing-ca.crt");
    assert_ne!(newest, ours);
    {
        let seen = history.lock().unwrap();
        let versions: Vec<_> = seen
            .iter()
            .filter(|s| s.metadata.uid == recreated.metadata.uid)
            .collect();
        let first = versions[0];
        assert_eq!(phase(first).as_deref(), Some("bundle-extended"));
        assert_eq!(
            key(first, "tls.crt"),
            "",
            "a new certificate before its CA was trusted"
        );
        assert!(holds(&key(first, "ca.crt"), &ours) && holds(&key(first, "ca.crt"), &newest));
        let served = versions
            .iter()
            .find(|s| !key(s, "tls.crt").is_empty())
            .unwrap();
        assert_eq!(phase(served).as_deref(), Some("signing-switched"));
    }

    // Edited by hand: the foreign certificate, whose CA nothing trusts any more, put back into
    // tls.crt. The replica must not serve it (the trust check runs on), and the leader must
    // reissue the serving certificate from its signing CA.
    // Retried: the leader's own writes may win the resourceVersion race.
    let edited = wait_for("the hand edit", Duration::from_secs(10), || async {
        let mut s = secrets.get(&name).await?;
        let data = s.data.get_or_insert_default();
        for (k, v) in [("tls.crt", &foreign.cert), ("tls.key", &foreign.key)] {
            data.insert(k.into(), k8s_openapi::ByteString(v.clone().into()));
        }
        Ok(secrets.replace(&name, &PostParams::default(), &s).await?)
    })
    .await
    .unwrap();
    let repaired = wait_for(
        "the serving certificate to be reissued",
        Duration::from_secs(20),
        || async {
            let s = secrets.get(&name).await?;
            let cert = key(&s, "tls.crt");
            anyhow::ensure!(cert != foreign.cert, "still the hand-edited certificate");
            Ok(s)
        },
    )
    .await
    .unwrap();
    assert_eq!(phase(&repaired).as_deref(), Some("stable"));
    assert_eq!(
        key(&repaired, "ca.crt"),
        key(&edited, "ca.crt"),
        "no new CA for a bad leaf"
    );
    assert_eq!(
        certs::signed_by(key(&repaired, "tls.crt").as_bytes(), newest.as_bytes()),
        Some(true)
    );
    let log = op.log();
    assert!(
        log.contains("tls.crt is not signed by a CA of its ca.crt")
            && log.contains("tls.crt is not signed by signing-ca.crt"),
        "the replica's refusal and the leader's reason are logged:\n{log}"
    );
    trust.finish(50, &op.log()).await;
}

/// The Secret once its rotation phase is `want`.
async fn wait_phase(secrets: &Api<Secret>, name: &str, want: &str, within: Duration) -> Secret {
    wait_for(&format!("the phase {want}"), within, || async {
        let s = secrets.get(name).await?;
        anyhow::ensure!(phase(&s).as_deref() == Some(want));
        Ok(s)
    })
    .await
    .unwrap()
}

/// `/readyz` is true only once TLS serves: a replica whose Secret does not exist yet (one that
/// will not create it, `--no-controller`) answers 503, and turns ready by itself once the Secret
/// appears.
#[tokio::test]
async fn readyz_is_false_until_the_secrets_certificate_serves() {
    let cp = ControlPlane::shared();
    let _ = kubectl(cp, &["create", "namespace", NS]);
    let op = Operator::start_self_managed(
        &["--tls-secret", "readyz-tls", "--no-controller"],
        &[("KUBECONFIG", cp.kubeconfig_path().as_os_str())],
    );
    for _ in 0..3 {
        let (status, body) = common::fixtures::http_get(op.admin, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::dev_certs(dir.path());
    let ca_file = dir.path().join("ca.crt");
    kubectl_ok(
        cp,
        &[
            "create",
            "secret",
            "generic",
            "readyz-tls",
            "-n",
            NS,
            &format!("--from-file=tls.crt={}", cert.display()),
            &format!("--from-file=tls.key={}", key.display()),
            &format!("--from-file=ca.crt={}", ca_file.display()),
        ],
    );
    wait_for("/readyz to turn 200", Duration::from_secs(30), || async {
        let (status, body) = common::fixtures::http_get(op.admin, "/readyz").await;
        anyhow::ensure!(status == 200, "{status}: {body}");
        Ok(())
    })
    .await
    .unwrap();
    // Ready means serving the Secret's certificate, not some placeholder.
    use rustls_pki_types::pem::PemObject;
    let served = handshake(op.https, &ca.cert)
        .await
        .expect("a handshake trusting only the Secret's CA");
    let want =
        rustls_pki_types::CertificateDer::from_pem_slice(&std::fs::read(&cert).unwrap()).unwrap();
    assert_eq!(served, want.as_ref());
}

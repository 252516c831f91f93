//! A leader whose term ends in the middle of a reconcile abandons it at once, so that it never
//! writes after another replica may have taken over: when the Lease is taken from it, and on
//! SIGTERM, where the Lease is released only after its controllers stopped. One test, in two
//! phases, since a second operator in the same control plane would reconcile the same objects.
//!
//! A reconcile is held in flight by a validating webhook (registered for this test's namespace
//! only) that completes the TLS handshake, reads the request and never answers, with
//! `failurePolicy: Ignore` and the longest timeout, 30 s: without the abandon, the apiserver would
//! store the CronJob 30 s after the term ended. Abandoning the reconcile closes its request, the
//! apiserver cancels the webhook call with it (the test sees its connection close), and no
//! CronJob is written. First, before the CRDs exist, SIGTERM while the controllers cannot even
//! list. Its own test binary: its operator reconciles every namespace.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backup_operator::tls;
use common::cluster::{install_crds, kubectl, kubectl_stdin};
use common::{Operator, dev_certs, fixtures};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use testkit::control_plane::{ControlPlane, wait_for};
use tokio::io::AsyncReadExt;

/// When a webhook connection was accepted and, once it was, when the apiserver closed it.
type Connection = (Instant, Option<Instant>);

#[derive(Clone, Default)]
struct Connections(Arc<Mutex<Vec<Connection>>>);

impl Connections {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// How long after it was accepted connection `i` was closed, if it was.
    fn closed_after(&self, i: usize) -> Option<Duration> {
        let c = self.0.lock().unwrap();
        let (opened, closed) = c.get(i)?;
        closed.map(|at| at.duration_since(*opened))
    }
}

/// An HTTPS server that reads whatever arrives and never answers.
async fn silent_webhook(cert: &Path, key: &Path) -> (SocketAddr, Connections) {
    let store = tls::CertStore::new(tls::load(cert, key).unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(store).unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Connections::default();
    let seen = conns.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let i = {
                let mut c = seen.0.lock().unwrap();
                c.push((Instant::now(), None));
                c.len() - 1
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4096];
                    while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
                }
                seen.0.lock().unwrap()[i].1 = Some(Instant::now());
            });
        }
    });
    (addr, conns)
}

fn register_silent_webhook(cp: &ControlPlane, ns: &str, addr: SocketAddr, ca_pem: &str) {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let config = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: silent-{ns}}}
webhooks:
- name: silent.test.example.com
  clientConfig: {{url: "https://{addr}/never", caBundle: "{ca}"}}
  rules: [{{apiGroups: [batch], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [cronjobs]}}]
  namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}
  failurePolicy: Ignore
  timeoutSeconds: 30
  sideEffects: None
  admissionReviewVersions: [v1]
"#
    );
    let out = kubectl_stdin(cp, &["apply", "-f", "-"], &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the apiserver calls the silent webhook for CronJobs in `ns`: dry-run creates that
/// give up after a second until one reaches it.
async fn wait_until_webhook_called(cp: &ControlPlane, ns: &str, conns: &Connections) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while conns.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the silent webhook is never called"
        );
        kubectl(
            cp,
            &[
                "create",
                "cronjob",
                "probe",
                "-n",
                ns,
                "--image=busybox",
                "--schedule=0 3 * * *",
                "--dry-run=server",
                "--request-timeout=1s",
            ],
        );
    }
}

const LEASE_NAME: &str = "lease-loss-leader";

fn replica(cp: &ControlPlane, cert: &Path, key: &Path, identity: &str) -> Operator {
    Operator::start_with_env(
        cert,
        key,
        &[
            "--identity",
            identity,
            "--lease-name",
            LEASE_NAME,
            "--lease-duration",
            "6s",
        ],
        &[("KUBECONFIG", cp.kubeconfig_path().as_os_str())],
    )
}

/// Sends SIGTERM and waits for a clean exit, which must come well before `serve`'s own 10 s
/// bound on the controller; returns the operator and how long it took.
async fn terminate(op: Operator) -> (Operator, Duration) {
    let signalled = Instant::now();
    op.signal(libc::SIGTERM);
    let mut op = op;
    let exited = tokio::task::spawn_blocking(move || {
        let status = op.child.wait();
        (status, op)
    });
    let (status, op) = tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("the operator did not exit within 20 s of SIGTERM")
        .unwrap();
    assert!(status.unwrap().success(), "{}", op.log());
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "exited {took:?} after SIGTERM\n{}",
        op.log()
    );
    (op, took)
}

/// The log's last `released` line comes after its last `stopped` line, and the Lease is free.
async fn assert_released_after(op: &Operator, leases: &Api<Lease>, stopped: &str) {
    let log = op.log();
    let stopped = log
        .rfind(stopped)
        .unwrap_or_else(|| panic!("no {stopped:?}:\n{log}"));
    let released = log.rfind("released the lease").expect("lease released");
    assert!(
        stopped < released,
        "the Lease was released before the controllers stopped:\n{log}"
    );
    let spec = leases.get(LEASE_NAME).await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity, None);
}

struct Scene {
    cp: &'static ControlPlane,
    client: kube::Client,
    ns: String,
    conns: Connections,
    leases: Api<Lease>,
    _dir: tempfile::TempDir,
    _ns: testkit::control_plane::TestNamespace,
}

impl Scene {
    async fn new() -> (Scene, Operator) {
        let cp = ControlPlane::shared();
        install_crds(cp);
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = dev_certs(dir.path());
        let client = cp.client().await;
        let ns = cp.namespace("lease-loss").await;
        let (addr, conns) = silent_webhook(&cert, &key).await;
        register_silent_webhook(cp, ns.name(), addr, &ca.cert);
        wait_until_webhook_called(cp, ns.name(), &conns).await;
        let op = replica(cp, &cert, &key, "replica-a");
        let scene = Scene {
            cp,
            client: client.clone(),
            ns: ns.name().to_owned(),
            conns,
            leases: Api::namespaced(client, "backup-operator-system"),
            _dir: dir,
            _ns: ns,
        };
        scene.wait_for_holder("replica-a", &op).await;
        (scene, op)
    }

    async fn wait_for_holder(&self, holder: &str, op: &Operator) {
        wait_for("the Lease holder", Duration::from_secs(30), || async {
            let h = self.leases.get(LEASE_NAME).await?.spec.unwrap_or_default();
            let h = h.holder_identity.unwrap_or_default();
            anyhow::ensure!(h == holder, "holder {h:?}\n{}", op.log());
            Ok(())
        })
        .await
        .unwrap();
    }

    /// Waits until a reconcile's CronJob apply is held by the silent webhook: a connection after
    /// the first `before`; returns its index.
    async fn wait_for_held(&self, before: usize, op: &Operator) -> usize {
        wait_for(
            "the reconcile's CronJob apply to reach the silent webhook",
            Duration::from_secs(30),
            || async {
                anyhow::ensure!(self.conns.count() > before, "not yet\n{}", op.log());
                Ok(())
            },
        )
        .await
        .unwrap();
        before
    }

    async fn lease_spec(&self, spec: serde_json::Value) {
        self.leases
            .patch(
                LEASE_NAME,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }

    /// The held call's connection is closed well before the webhook's 30 s timeout, and the
    /// apiserver stored nothing: the request was given up, not merely left to time out.
    async fn assert_abandoned(&self, conn: usize, cron_job: &str, op: &Operator) {
        wait_for(
            "the apiserver to give up the held webhook call",
            Duration::from_secs(15),
            || async {
                let closed = self.conns.closed_after(conn);
                anyhow::ensure!(closed.is_some(), "still open\n{}", op.log());
                Ok(())
            },
        )
        .await
        .unwrap();
        let closed = self.conns.closed_after(conn).unwrap();
        assert!(closed < Duration::from_secs(25), "closed after {closed:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cjs: Api<CronJob> = Api::namespaced(self.client.clone(), &self.ns);
        assert!(
            cjs.get_opt(cron_job).await.unwrap().is_none(),
            "the abandoned reconcile's CronJob was stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_term_ends_abandons_its_reconcile() {
    // Phase 0, before the CRDs exist: the leader's controllers never complete their first list,
    // and kube-runtime's runner would wait for that forever after the term ended. SIGTERM still
    // ends the term within its bound, and the Lease is released after that, not before.
    let cp = ControlPlane::shared();
    let ns = kubectl(cp, &["create", "namespace", "backup-operator-system"]);
    assert!(
        ns.status.success(),
        "{}",
        String::from_utf8_lossy(&ns.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = dev_certs(dir.path());
    let op = replica(cp, &cert, &key, "replica-0");
    let leases: Api<Lease> = Api::namespaced(cp.client().await, "backup-operator-system");
    wait_for("replica-0 to lead", Duration::from_secs(30), || async {
        let h = leases.get(LEASE_NAME).await?.spec.unwrap_or_default();
        let h = h.holder_identity.unwrap_or_default();
        anyhow::ensure!(h == "replica-0", "holder {h:?}\n{}", op.log());
        Ok(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (op, took) = terminate(op).await;
    eprintln!("phase 0: exited {took:?} after SIGTERM");
    assert!(op.log().contains("did not stop in time"), "{}", op.log());
    assert_released_after(&op, &leases, "did not stop in time").await;

    let (scene, op) = Scene::new().await;
    let abandoned = |op: &Operator| op.log().matches("reconcile abandoned").count();

    // Phase 1: another replica takes the Lease (as after a partition, seen from here).
    let before = scene.conns.count();
    let out = kubectl_stdin(
        scene.cp,
        &["apply", "-f", "-"],
        &fixtures::volume_backup_yaml(&scene.ns, "held"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = scene.wait_for_held(before, &op).await;
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    scene
        .lease_spec(serde_json::json!({
            "holderIdentity": "replica-elsewhere", "leaseDurationSeconds": 3600,
            "acquireTime": now, "renewTime": now}))
        .await;
    scene.assert_abandoned(conn, "held-backup", &op).await;
    assert_eq!(abandoned(&op), 1, "{}", op.log());
    let (_, metrics) = fixtures::http_get(op.admin, "/metrics").await;
    assert!(
        metrics.contains(
            r#"backup_operator_reconciles_total{kind="VolumeBackup",result="abandoned"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("backup_operator_leader 0"), "{metrics}");

    // Phase 2: the other replica releases the Lease; ours leads again, and its fresh controllers
    // reconcile the same backup, held again. Then SIGTERM.
    let before = scene.conns.count();
    scene
        .lease_spec(serde_json::json!({"holderIdentity": null, "leaseDurationSeconds": 6}))
        .await;
    scene.wait_for_holder("replica-a", &op).await;
    let conn = scene.wait_for_held(before, &op).await;
    let (op, took) = terminate(op).await;
    eprintln!("phase 2: exited {took:?} after SIGTERM");
    scene.assert_abandoned(conn, "held-backup", &op).await;
    // The process exit alone would also close the held request; the abandon is in the log, and
    // the controllers stopped without running into their bound.
    assert_eq!(abandoned(&op), 2, "{}", op.log());
    assert!(!op.log().contains("did not stop in time"), "{}", op.log());
    assert_released_after(&op, &scene.leases, "controllers stopped").await;
}

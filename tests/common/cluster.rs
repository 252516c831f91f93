//! The operator running against the test binary's real control plane, with both webhook
//! configurations registered by URL (`https://127.0.0.1:PORT`), as `tools/dev` does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use testkit::control_plane::ControlPlane;

use super::{OPERATOR, Operator, dev_certs};

pub struct Cluster {
    pub cp: &'static ControlPlane,
    pub operator: Operator,
    pub certs: PathBuf,
    /// The operator's flags, so a later caller asking for different ones is told.
    args: Vec<String>,
}

/// What the shared operator runs as.
pub enum Mode {
    /// Admission only (`--no-controller`).
    AdmissionOnly,
    /// Admission and the controller.
    Full,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// Starts (once per test binary) the operator with `extra` flags and registers its webhooks.
pub fn cluster(mode: Mode, extra: &[&str]) -> &'static Cluster {
    let mut args = vec![];
    if matches!(mode, Mode::AdmissionOnly) {
        args.push("--no-controller");
    }
    args.extend_from_slice(extra);
    let cluster = CLUSTER.get_or_init(|| {
        let cp = ControlPlane::shared();
        install_crds(cp);

        let certs = tempfile::tempdir().unwrap().keep();
        let (_, cert, key) = dev_certs(&certs);
        let operator = Operator::start_with_env(
            &cert,
            &key,
            &args,
            &[("KUBECONFIG", cp.kubeconfig_path().as_os_str())],
        );
        register_webhooks(cp, &operator, &certs.join("ca.crt"));
        Cluster {
            cp,
            operator,
            certs,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    });
    assert_eq!(
        cluster.args, args,
        "one operator per test binary: every test must ask for the same flags"
    );
    cluster
}

/// Installs both CRDs (waiting for Established) and the operator's namespace.
pub fn install_crds(cp: &ControlPlane) {
    kubectl_ok(
        cp,
        &[
            "apply",
            "--server-side",
            "-f",
            &repo("manifests/crds/crds.yaml"),
        ],
    );
    kubectl_ok(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/volumebackups.backups.k8s.bnerd.com",
            "crd/s3backups.backups.k8s.bnerd.com",
        ],
    );
    let ns = kubectl(cp, &["create", "namespace", "backup-operator-system"]);
    assert!(ns.status.success() || String::from_utf8_lossy(&ns.stderr).contains("AlreadyExists"));
}

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

pub fn kubectl(cp: &ControlPlane, args: &[&str]) -> std::process::Output {
    cp.kubectl().args(args).output().expect("run kubectl")
}

pub fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let out = kubectl(cp, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl apply -f -` with `yaml` on stdin.
pub fn kubectl_stdin(cp: &ControlPlane, args: &[&str], yaml: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cp
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // kubectl may exit before reading everything (a usage error); its stderr tells why.
    let _ = child.stdin.take().unwrap().write_all(yaml.as_bytes());
    child.wait_with_output().unwrap()
}

/// Each webhook probe is a kubectl run; no need to hammer the apiserver.
const WEBHOOK_POLL: Duration = Duration::from_millis(300);

/// Applies both webhook configurations (`backup-operator webhooks`) pointing at `url`, with `ca`
/// as their caBundle (none: left for the operator to inject).
pub fn apply_webhook_configurations(cp: &ControlPlane, url: &str, ca: Option<&Path>) {
    let mut webhooks = Command::new(OPERATOR);
    webhooks.args([
        "webhooks",
        "--url",
        url,
        "--namespace",
        "backup-operator-system",
    ]);
    if let Some(ca) = ca {
        webhooks.arg("--ca-bundle-file").arg(ca);
    }
    let out = webhooks.output().unwrap();
    assert!(out.status.success());
    let applied = kubectl_stdin(
        cp,
        &["apply", "-f", "-"],
        &String::from_utf8(out.stdout).unwrap(),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
}

/// Registers both webhook configurations for `op` and waits until the validating one acts.
pub fn register_webhooks(cp: &ControlPlane, op: &Operator, ca: &Path) {
    apply_webhook_configurations(cp, &format!("https://{}", op.https), Some(ca));
    // The apiserver notices webhook configurations asynchronously: wait until one visibly acts.
    let canary = r#"
apiVersion: backups.k8s.bnerd.com/v1
kind: VolumeBackup
metadata: {name: canary, namespace: default}
spec:
  volumeClaimRef: {name: canary}
  schedule: "0 3 * * *"
  repository: {url: /tmp/canary, passwordSecretRef: {name: canary, key: password}}
  webhooks: {failure: "https://169.254.169.254/canary"}
"#;
    let validating_acts = || {
        let out = kubectl_stdin(cp, &["apply", "--dry-run=server", "-f", "-"], canary);
        String::from_utf8_lossy(&out.stderr).contains("notifications cannot be sent there")
    };
    assert!(
        testkit::poll(Duration::from_secs(60), WEBHOOK_POLL, validating_acts),
        "the validating webhook did not act within 60s; operator log:\n{}",
        op.log()
    );
    // The two configurations are watched separately, so the mutating one is checked on its own.
    wait_until_mutating_webhook_acts(cp, true, &|| op.log());
}

/// Whether a server-side dry run of a labelled CronJob comes back with the notifier injected.
pub fn mutating_webhook_acts(cp: &ControlPlane) -> bool {
    let canary = r#"
apiVersion: batch/v1
kind: CronJob
metadata:
  name: canary
  namespace: default
  labels: {backups.k8s.bnerd.com/notify: "true"}
  annotations:
    backups.k8s.bnerd.com/webhook-success: "https://hooks.example.com/canary"
    backups.k8s.bnerd.com/notify-kind: VolumeBackup
    backups.k8s.bnerd.com/notify-host: default-canary
    backups.k8s.bnerd.com/notify-volume: canary
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: backup, image: busybox, command: ["true"]}]
"#;
    let out = kubectl_stdin(
        cp,
        &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
        canary,
    );
    assert!(
        out.status.success(),
        "dry run of the canary CronJob: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).contains("notifier-install")
}

/// Waits (60 s at most) until the apiserver calls the mutating webhook (`acts`) or has
/// forgotten a deleted configuration (`!acts`): it notices configuration changes
/// asynchronously.
pub fn wait_until_mutating_webhook_acts(cp: &ControlPlane, acts: bool, log: &dyn Fn() -> String) {
    assert!(
        testkit::poll(Duration::from_secs(60), WEBHOOK_POLL, || {
            mutating_webhook_acts(cp) == acts
        }),
        "the mutating webhook still {} after 60s; operator log:\n{}",
        if acts { "does not act" } else { "acts" },
        log()
    );
}

/// Waits for an Event with `reason` (and `type_`, when given) in `ns`. Events are published
/// after the status patch a test usually waits for, so they are polled too, never read once.
pub async fn wait_for_event(
    client: &kube::Client,
    ns: &str,
    reason: &str,
    type_: Option<&str>,
    within: Duration,
) {
    use k8s_openapi::api::core::v1::Event;
    use kube::api::{Api, ListParams};
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    testkit::control_plane::wait_for(&format!("a {reason} event"), within, || async {
        let found = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .any(|e| {
                e.reason.as_deref() == Some(reason)
                    && type_.is_none_or(|t| e.type_.as_deref() == Some(t))
            });
        anyhow::ensure!(found, "no {reason} event yet");
        Ok(())
    })
    .await
    .unwrap();
}

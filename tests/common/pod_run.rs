//! Running a stored CronJob's pod template with the local pod runner (a test tool, not a
//! kubelet): the operator image maps to the freshly built notifier, other images run on the
//! host's programs.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::PodSpec;
use testkit::pod_runner::{Echo, ImageMap, PodHandle, PodRunner, RunnerConfig};

/// The operator image the tests' operators inject (`--notifier-image`).
pub const NOTIFIER_IMAGE: &str = "registry.test/backup-operator:e2e";
pub const NOTIFIER: &str = env!("CARGO_BIN_EXE_backup-notifier");

/// The operator flags of every test that runs an injected pod, followed by `extra`: the loopback
/// receiver is reached through the documented allowlist, the notifier is the freshly built one,
/// and a short timeout keeps failing deliveries quick.
pub fn inject_flags(extra: &[&'static str]) -> Vec<&'static str> {
    [
        "--allow-destination",
        "127.0.0.1",
        "--notifier-image",
        NOTIFIER_IMAGE,
        "--notifier-timeout",
        "3s",
    ]
    .iter()
    .chain(extra)
    .copied()
    .collect()
}

pub fn pod_spec(cj: &CronJob) -> PodSpec {
    cj.spec
        .as_ref()
        .and_then(|s| s.job_template.spec.as_ref())
        .and_then(|j| j.template.spec.clone())
        .expect("a CronJob with a pod template")
}

/// A runner for pods of `namespace`, its logs in `out`. `extra` adds image files and PVCs.
pub fn runner(
    out: &Path,
    namespace: &str,
    kubeconfig: Option<&Path>,
    extra: impl FnOnce(&mut RunnerConfig),
) -> PodRunner {
    let mut images = ImageMap::new();
    images
        .add_file(NOTIFIER_IMAGE, "/usr/local/bin/backup-notifier", NOTIFIER)
        .unwrap()
        // The Dockerfile's USER.
        .set_user(NOTIFIER_IMAGE, 65532, 65532)
        .unwrap();
    images.add_host_image("busybox*").unwrap();
    let mut cfg = RunnerConfig::new(out);
    cfg.namespace = namespace.to_owned();
    cfg.images = images;
    cfg.kubeconfig = kubeconfig.map(Path::to_path_buf);
    cfg.echo = if std::env::var_os("SHOW_POD_LOG").is_some() {
        Echo::Inherit
    } else {
        Echo::None
    };
    cfg.active_deadline = Some(Duration::from_secs(120));
    extra(&mut cfg);
    PodRunner::new(cfg).expect("pod runner (tests run as root)")
}

/// Waits until `container` runs, then kills it with `signal`.
pub fn kill_when_running(handle: &PodHandle, container: &str, signal: i32) {
    handle
        .wait_running(container, Duration::from_secs(30))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    handle.signal(container, signal).unwrap();
}

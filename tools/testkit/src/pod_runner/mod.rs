//! A local pod runner: runs a pod template's containers as host processes, in the order a
//! kubelet would, each in its own mount namespace with a fresh root. It is a test tool, not a
//! kubelet: there is no image pulling (an image map says which host files an image provides), no
//! network or PID namespace, no cgroups or probes.
//!
//! Lifecycle, as the kubelet does it for `restartPolicy: Never`/`OnFailure` pods:
//! 1. init containers one at a time; each must exit 0 before the next starts, a failing one
//!    fails the pod and nothing after it starts. An init container with `restartPolicy: Always`
//!    is a native sidecar: it is started, the next container starts once its process has
//!    started (exec succeeded), and it is restarted with a doubling backoff if it exits while the
//!    pod runs;
//! 2. all regular containers start together; they are never restarted;
//! 3. once every regular container has exited, sidecars get SIGTERM one at a time in reverse
//!    order, each waited for, all within `terminationGracePeriodSeconds` (default 30) of the
//!    first SIGTERM but each with at least the kubelet's minimum of 2 s (so a sidecar gets its
//!    SIGTERM even after regular containers stopped at a deadline used up the grace period);
//!    whatever still runs then gets SIGKILL;
//! 4. the pod Succeeded if every regular container exited 0, else Failed.
//!
//! Differences from a kubelet that tests must keep in mind:
//! - no PID namespace: the main process is not PID 1, so a shell without a SIGTERM trap dies of
//!   SIGTERM (in a real container PID 1 ignores signals it has no handler for). Each container
//!   is its own session/process group, and what is left of the group is SIGKILLed when the main
//!   process exits, as the end of a PID namespace would;
//! - no network namespace: containers share the host's network, `localhost` included;
//! - no cgroups (resources are ignored), no `/sys`, probes are ignored (with a warning),
//!   lifecycle hooks are rejected; a sidecar counts as started when its exec succeeded;
//! - `OnFailure` does not restart failed containers (a failing init container fails the pod);
//!   `restartPolicy: Always` pods are rejected;
//! - only the main process of a container gets `PR_SET_PDEATHSIG`: a runner killed by SIGKILL
//!   (not by SIGTERM or the end of a test that drops its handle) leaves what the containers
//!   forked running, where the end of a PID namespace would kill it;
//! - `fsGroup` and `supplementalGroups` only become supplementary groups (no chown of volumes);
//!   an emptyDir with `medium: Memory` is a directory like any other;
//! - needs root, Linux >= 5.12 (pidfd, mount_setattr) and overlayfs.
//!
//! The API is synchronous (threads, no async runtime needed by the caller):
//!
//! ```no_run
//! use testkit::pod_runner::{PodRunner, RunnerConfig, PodPhase};
//! # fn main() -> anyhow::Result<()> {
//! let manifest = testkit::pod_runner::parse_manifest("containers: [{name: main, image: x, command: [sh, -c, 'exit 3']}]")?;
//! let mut config = RunnerConfig::new("/tmp/pod-out");
//! config.images.add_host_image("*")?;
//! config.apply_manifest(&manifest);
//! let runner = PodRunner::new(config)?;
//! let handle = runner.start(&manifest.spec)?;
//! handle.wait_running("main", std::time::Duration::from_secs(5))?;
//! handle.signal("main", libc::SIGKILL)?;
//! let report = handle.wait()?;
//! assert_eq!(report.phase, PodPhase::Failed);
//! # Ok(()) }
//! ```

mod cluster;
mod expand;
mod image;
mod manifest;
mod plan;
mod sandbox;
mod supervisor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::PodSpec;
use serde::{Deserialize, Serialize};

pub use expand::expand;
pub use image::{ImageFile, ImageMap, ImageSpec};
pub use manifest::{PodManifest, load_manifest, parse_manifest};
pub use supervisor::{PodAborter, PodHandle};

/// Where container output is echoed besides the log files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Echo {
    /// Only the log files.
    None,
    /// Container stdout to our stdout, container stderr to our stderr.
    #[default]
    Inherit,
    /// Both to our stderr (when our stdout carries the report).
    Stderr,
}

/// How to run a pod.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// `metadata.name` as the downward API and `HOSTNAME` see it.
    pub pod_name: String,
    /// Namespace for the downward API and for Secret/ConfigMap lookups.
    pub namespace: String,
    pub pod_uid: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Receives one `<container>.log` per container; created if missing.
    pub output_dir: PathBuf,
    /// Parent of the per-pod temporary directory (emptyDirs, materialised Secrets/ConfigMaps,
    /// root mount points), removed when the pod is done. Default: the system temp directory.
    pub work_dir: Option<PathBuf>,
    pub images: ImageMap,
    /// persistentVolumeClaim name → host directory.
    pub pvcs: BTreeMap<String, PathBuf>,
    /// Used to read Secrets and ConfigMaps the pod references; without it such references are
    /// an error.
    pub kubeconfig: Option<PathBuf>,
    pub echo: Echo,
    /// First delay before restarting a sidecar that exited; doubles per restart, capped at 30 s.
    pub sidecar_restart_backoff: Duration,
    /// Kills the pod after this long (like `activeDeadlineSeconds`; the shorter one wins).
    pub active_deadline: Option<Duration>,
}

impl RunnerConfig {
    pub fn new(output_dir: impl Into<PathBuf>) -> Self {
        Self {
            pod_name: "local-pod".to_owned(),
            namespace: "default".to_owned(),
            pod_uid: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            output_dir: output_dir.into(),
            work_dir: None,
            images: ImageMap::new(),
            pvcs: BTreeMap::new(),
            kubeconfig: None,
            echo: Echo::Inherit,
            sidecar_restart_backoff: Duration::from_secs(1),
            active_deadline: None,
        }
    }

    /// Takes name, namespace, uid, labels and annotations from a manifest where it has them.
    pub fn apply_manifest(&mut self, manifest: &PodManifest) {
        if let Some(name) = &manifest.name {
            self.pod_name = name.clone();
        }
        if let Some(namespace) = &manifest.namespace {
            self.namespace = namespace.clone();
        }
        if manifest.uid.is_some() {
            self.pod_uid = manifest.uid.clone();
        }
        self.labels = manifest.labels.clone();
        self.annotations = manifest.annotations.clone();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerKind {
    Init,
    Sidecar,
    Main,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    Succeeded,
    Failed,
}

/// The outcome of one container. For a sidecar that was restarted, the times are those of its
/// first start and its last exit, the exit status that of its last run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerReport {
    pub name: String,
    pub kind: ContainerKind,
    pub image: String,
    /// As the kubelet reports it: the exit status, or 128 + signal for a killed process.
    /// `None` if the container never ran to an end (never started, or could not start).
    pub exit_code: Option<i32>,
    /// The signal that terminated the process, if any.
    pub signal: Option<i32>,
    /// RFC 3339 times.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub restarts: u32,
    pub log_path: PathBuf,
    /// Why the container could not start.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub pod_name: String,
    pub namespace: String,
    pub phase: PodPhase,
    /// Why the pod failed.
    pub reason: Option<String>,
    pub started_at: String,
    pub finished_at: String,
    pub output_dir: PathBuf,
    /// Init containers (sidecars included) in order, then regular containers.
    pub containers: Vec<ContainerReport>,
    /// Parts of the spec that were ignored.
    pub warnings: Vec<String>,
}

impl PodReport {
    pub fn container(&self, name: &str) -> Option<&ContainerReport> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// Runs pods with one configuration. Needs root (mount namespaces, pivot_root, setuid).
pub struct PodRunner {
    config: RunnerConfig,
    layout: sandbox::HostLayout,
}

impl PodRunner {
    pub fn new(config: RunnerConfig) -> Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "the local pod runner must run as root (it uses mount namespaces and pivot_root)"
            );
        }
        let layout = sandbox::HostLayout::detect()?;
        Ok(Self { config, layout })
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// Checks and prepares the whole pod (image map, volumes, env, Secrets and ConfigMaps), then
    /// starts it in the background. Every input error is reported here, before any container
    /// starts.
    pub fn start(&self, spec: &PodSpec) -> Result<PodHandle> {
        let pod = plan::prepare(&self.config, spec, &self.layout)?;
        supervisor::start(&self.config, pod)
    }

    /// [`start`](Self::start) and [`PodHandle::wait`].
    pub fn run(&self, spec: &PodSpec) -> Result<PodReport> {
        self.start(spec)?.wait()
    }

    pub fn output_dir(&self) -> &Path {
        &self.config.output_dir
    }
}

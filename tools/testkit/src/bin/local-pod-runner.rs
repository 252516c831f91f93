//! `local-pod-runner`: the command-line face of `testkit::pod_runner`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use testkit::pod_runner::{Echo, PodAborter, PodPhase, PodRunner, RunnerConfig, load_manifest};

const ABOUT: &str = "Run a pod template's containers as host processes, in kubelet order. \
This is a test tool and not a kubelet.";

const LONG_ABOUT: &str = "\
Run a pod template's containers as host processes, in kubelet order.

This is a test tool and not a kubelet: there are no images, no image pulls, no network or PID \
namespaces, no cgroups, no probes and no lifecycle hooks. It exists so that a pod layout (init \
containers, native sidecars, regular containers, volumes, env) can be run end to end on a \
machine without a kubelet. It must run as root.

INPUT: a Pod, Job, CronJob (spec.jobTemplate.spec.template.spec), PodTemplate, PodTemplateSpec \
or bare PodSpec, as JSON or YAML ('-' reads stdin).

ORDER (restartPolicy Never; OnFailure is run the same way, without restarts):
  1. init containers one at a time; each must exit 0 before the next starts. A failing one fails \
the pod: nothing after it starts, running sidecars are stopped.
  2. native sidecars (init containers with restartPolicy: Always) are started, the next container \
starts once the sidecar's process has started, and a sidecar that exits while the pod runs is \
restarted after a doubling backoff.
  3. all regular containers start together and are never restarted.
  4. when every regular container has exited, sidecars get SIGTERM one by one in reverse order; \
whatever still runs terminationGracePeriodSeconds (default 30) after the first SIGTERM gets \
SIGKILL, except that each sidecar gets at least 2 s after its SIGTERM (the kubelet's minimum).
  5. the pod Succeeded if every regular container exited 0, else Failed.

EACH CONTAINER runs in its own mount namespace (propagation private) on a fresh tmpfs root: \
host /usr, /etc and the other top-level system directories through overlayfs (writable into \
a private layer, never into the host; read-only with readOnlyRootFilesystem), host symlinks such \
as /bin -> usr/bin recreated, /dev bound from the host, a new /proc, a private /tmp, then the \
image files and the pod's volumes at their paths; then pivot_root, setgid/setuid \
(securityContext runAsUser/runAsGroup), chdir to workingDir or /. Nothing is created on the \
host's root filesystem. command/args/env honour Kubernetes $(VAR) expansion; env supports \
value, fieldRef (metadata.name, metadata.namespace, metadata.uid, labels, annotations, \
spec.nodeName, spec.serviceAccountName, status.podIP), secretKeyRef/configMapKeyRef and \
envFrom (these need --kubeconfig).

VOLUMES: emptyDir (a per-pod temporary directory, mode 0777); persistentVolumeClaim (a host \
directory from --pvc); secret and configMap (read from the apiserver with --kubeconfig, written \
to a per-pod directory, mounted read-only). Any other type is an error.

IMAGES: there are none. --image IMAGE=CONTAINER_PATH:HOST_PATH makes a host file appear at a \
path inside containers of IMAGE (repeat for more files); --entrypoint gives the command for \
containers without one, --image-user the user of those without runAsUser. IMAGE matches with \
or without tag/digest. An image that is not mapped is an error unless --host-image matches it \
(then it runs on the host filesystem alone).

OUTPUT: each container's stdout/stderr goes to OUTPUT_DIR/<container>.log and is echoed with a \
[container] prefix; a JSON report (every container's kind, exit code, signal, start/end times, \
restarts, log path, and the pod phase) goes to --report.

EXIT STATUS: 0 the pod Succeeded, 1 the pod Failed, 2 usage or configuration error.

EXAMPLE (the operator's image gets the notifier binary; restic runs from the host):
  IMG=registry.example/backup-operator
  local-pod-runner cronjob.yaml --report - --host-image 'restic/*' --pvc data=/srv/data \\
    --image \"$IMG=/usr/local/bin/backup-notifier:target/debug/backup-notifier\"";

#[derive(Parser, Debug)]
#[command(name = "local-pod-runner", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    /// Manifest file (Pod, Job, CronJob, PodTemplate, PodTemplateSpec or PodSpec; JSON or
    /// YAML); '-' reads stdin.
    manifest: PathBuf,

    /// Directory for container logs (default: a new local-pod-runner-out-* directory in the
    /// temp directory, kept afterwards).
    #[arg(short, long, value_name = "DIR")]
    output_dir: Option<PathBuf>,

    /// Where to write the JSON report; '-' is stdout (container output is then echoed to stderr).
    /// Default: OUTPUT_DIR/report.json.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// Make HOST_PATH appear at CONTAINER_PATH in containers of IMAGE (repeatable).
    #[arg(long = "image", value_name = "IMAGE=CONTAINER_PATH:HOST_PATH")]
    images: Vec<String>,

    /// Entrypoint for containers of IMAGE that have no command: a program path, or a JSON
    /// array of strings (repeatable).
    #[arg(long = "entrypoint", value_name = "IMAGE=PROGRAM|IMAGE=[JSON]")]
    entrypoints: Vec<String>,

    /// User (and group) containers of IMAGE run as when their securityContext sets none, like
    /// the image's numeric USER (repeatable).
    #[arg(long = "image-user", value_name = "IMAGE=UID[:GID]")]
    image_users: Vec<String>,

    /// Run images matching PATTERN ('*' is a wildcard; '*' alone matches all) on the host
    /// filesystem alone (repeatable).
    #[arg(long = "host-image", value_name = "PATTERN")]
    host_images: Vec<String>,

    /// Back persistentVolumeClaim CLAIM with host directory DIR (repeatable).
    #[arg(long = "pvc", value_name = "CLAIM=DIR")]
    pvcs: Vec<String>,

    /// Kubeconfig used to read the Secrets and ConfigMaps the pod references.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    kubeconfig: Option<PathBuf>,

    /// Namespace (default: the manifest's, else "default").
    #[arg(short, long)]
    namespace: Option<String>,

    /// Pod name for the downward API and HOSTNAME (default: from the manifest).
    #[arg(long)]
    pod_name: Option<String>,

    /// Parent of the per-pod temporary directory (default: the system temp directory).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,

    /// Fail the pod after SECONDS, like activeDeadlineSeconds (the shorter one wins).
    #[arg(long, value_name = "SECONDS")]
    active_deadline: Option<u64>,

    /// First delay before restarting an exited sidecar, in milliseconds; doubles per restart.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    sidecar_restart_backoff_ms: u64,

    /// Do not echo container output (the log files still get it).
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Blocked here, before any thread exists, so every thread inherits the mask and only the
    // thread in `watch_signals` receives them (children get a clean mask from std).
    let signals = match block_termination_signals() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("local-pod-runner: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut default_output_dir = None;
    let result = run(args, signals, &mut default_output_dir);
    if result.is_err()
        && let Some(dir) = default_output_dir
    {
        // Only removes it if empty: a configuration error leaves no trace.
        let _ = std::fs::remove_dir(dir);
    }
    match result {
        Ok(PodPhase::Succeeded) => ExitCode::SUCCESS,
        Ok(PodPhase::Failed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("local-pod-runner: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(
    args: Args,
    signals: libc::sigset_t,
    default_output_dir: &mut Option<PathBuf>,
) -> Result<PodPhase> {
    let manifest = load_manifest(&args.manifest)?;
    let output_dir = match args.output_dir {
        Some(dir) => dir,
        None => {
            let dir = tempfile::Builder::new()
                .prefix("local-pod-runner-out-")
                .tempdir()
                .context("cannot create an output directory")?
                .keep();
            *default_output_dir = Some(dir.clone());
            dir
        }
    };
    let mut config = RunnerConfig::new(output_dir);
    config.apply_manifest(&manifest);
    if let Some(namespace) = args.namespace {
        config.namespace = namespace;
    }
    if let Some(name) = args.pod_name {
        config.pod_name = name;
    }
    for arg in &args.images {
        config.images.add_file_arg(arg)?;
    }
    for arg in &args.entrypoints {
        config.images.set_entrypoint_arg(arg)?;
    }
    for arg in &args.image_users {
        config.images.set_user_arg(arg)?;
    }
    for pattern in &args.host_images {
        config.images.add_host_image(pattern)?;
    }
    config.pvcs = parse_pvcs(&args.pvcs)?;
    config.kubeconfig = args.kubeconfig.filter(|p| !p.as_os_str().is_empty());
    config.work_dir = args.work_dir;
    config.active_deadline = args.active_deadline.map(Duration::from_secs);
    config.sidecar_restart_backoff = Duration::from_millis(args.sidecar_restart_backoff_ms);
    let report_to_stdout = args.report.as_deref() == Some(std::path::Path::new("-"));
    config.echo = match (args.quiet, report_to_stdout) {
        (true, _) => Echo::None,
        (false, true) => Echo::Stderr,
        (false, false) => Echo::Inherit,
    };
    let report_path = args
        .report
        .unwrap_or_else(|| config.output_dir.join("report.json"));

    let runner = PodRunner::new(config)?;
    let handle = runner.start(&manifest.spec)?;
    watch_signals(signals, handle.aborter())?;
    let report = handle.wait()?;
    let json = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
    if report_to_stdout {
        println!("{json}");
    } else {
        std::fs::write(&report_path, json + "\n")
            .with_context(|| format!("cannot write report {}", report_path.display()))?;
    }
    eprintln!(
        "local-pod-runner: pod {} {:?}{}; logs in {}; report {}",
        report.pod_name,
        report.phase,
        report
            .reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        report.output_dir.display(),
        if report_to_stdout {
            "on stdout".to_owned()
        } else {
            report_path.display().to_string()
        },
    );
    Ok(report.phase)
}

fn parse_pvcs(args: &[String]) -> Result<BTreeMap<String, PathBuf>> {
    let mut pvcs = BTreeMap::new();
    for arg in args {
        let Some((claim, dir)) = arg.split_once('=') else {
            bail!("--pvc {arg:?}: expected CLAIM=DIR");
        };
        if claim.is_empty() || dir.is_empty() {
            bail!("--pvc {arg:?}: expected CLAIM=DIR");
        }
        if pvcs.insert(claim.to_owned(), PathBuf::from(dir)).is_some() {
            bail!("--pvc: claim {claim:?} is mapped twice");
        }
    }
    Ok(pvcs)
}

const TERMINATION_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn block_termination_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the calls get valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in TERMINATION_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        let ret = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if ret != 0 {
            return Err(std::io::Error::from_raw_os_error(ret)).context("cannot block signals");
        }
        Ok(set)
    }
}

/// On SIGINT, SIGTERM or SIGHUP, kills the pod so that no container outlives the runner; the
/// report is still written.
fn watch_signals(signals: libc::sigset_t, aborter: PodAborter) -> Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: both pointers are valid for the call.
            if unsafe { libc::sigwait(&signals, &mut signal) } == 0 {
                eprintln!("local-pod-runner: signal {signal} received, killing the pod");
                aborter.abort();
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

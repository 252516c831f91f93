//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
//! started by `tools/control-plane/cp up`, one per test binary, torn down when the binary exits
//! for any reason (normal exit, panic, `SIGKILL`).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use testkit::control_plane::ControlPlane;
//! let cp = ControlPlane::shared();
//! let client = cp.client().await;
//! let ns = cp.namespace("my-test").await;
//! // … create objects in ns.name() through `client` …
//! # Ok(()) }
//! ```
//!
//! # Pointing the tests at a real cluster
//!
//! Set `BACKUP_OPERATOR_TEST_KUBECONFIG=/path/to/kubeconfig` and [`ControlPlane::shared`] uses
//! that cluster (its current context) instead of starting one. The cluster must let that user
//! create namespaces and CustomResourceDefinitions. `kubectl` is then the one built by
//! `cp build` if it exists, otherwise the `kubectl` on `PATH`. Tests that are about the local
//! control plane itself (those that call [`ControlPlane::start`]) still need the built binaries.
//!
//! # Why there are no orphans
//!
//! `cp up` runs inside a watcher shell that this process starts in its own session (so a Ctrl-C
//! aimed at the test's process group does not reach it). The watcher's stdin is a pipe whose only
//! write end lives in this process, opened close-on-exec so that no other child inherits it. When
//! this process ends — however it ends — the kernel closes that end, the watcher's `read` sees
//! end-of-file, and it runs `cp down DIR` and removes DIR. Because the watcher also runs `cp up`,
//! a test binary killed while the plane is still starting cannot race the teardown: `cp down`
//! only runs after `cp up` has returned.

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

/// Environment variable naming a kubeconfig of an existing cluster to test against.
pub const KUBECONFIG_ENV: &str = "BACKUP_OPERATOR_TEST_KUBECONFIG";

/// The field manager this harness uses for server-side apply.
const FIELD_MANAGER: &str = "backup-operator-testkit";

/// The components `cp up` starts, in the order `cp` writes them to `DIR/pids`.
pub const COMPONENTS: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// How many log lines a start-up failure quotes.
const LOG_TAIL_LINES: usize = 40;

/// The repository root (testkit lives in `<root>/tools/testkit`).
pub fn repo_root() -> PathBuf {
    let testkit = Path::new(env!("CARGO_MANIFEST_DIR"));
    match testkit.ancestors().nth(2) {
        Some(root) => root.to_owned(),
        None => testkit.join("../.."),
    }
}

/// The `cp` script that builds, starts and stops the local control plane.
pub fn cp_script() -> PathBuf {
    repo_root().join("tools/control-plane/cp")
}

/// The Kubernetes version the local control plane is built at (`tools/control-plane/version`).
pub fn pinned_version() -> Result<String> {
    let path = repo_root().join("tools/control-plane/version");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// The directory `cp build` puts the binaries in (whether or not they are built yet).
pub fn bin_dir() -> Result<PathBuf> {
    let out = Command::new(cp_script())
        .arg("bin")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} bin", cp_script().display()))?;
    if !out.status.success() {
        bail!("{} bin exited with {}", cp_script().display(), out.status);
    }
    let dir = String::from_utf8(out.stdout).context("cp bin printed a non-UTF-8 path")?;
    Ok(PathBuf::from(dir.trim()))
}

/// A Kubernetes control plane the tests talk to: either one this process started with `cp up`,
/// or an existing cluster named by [`KUBECONFIG_ENV`].
pub struct ControlPlane {
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    local: Option<Local>,
}

/// What exists only for a control plane this process started.
struct Local {
    dir: PathBuf,
    /// The watcher and the write end of its stdin. Dropping the write end tells the watcher to
    /// tear the plane down; `None` once [`ControlPlane::stop`] did so.
    watcher: Mutex<Option<(Child, ChildStdin)>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("kubeconfig", &self.kubeconfig)
            .field("kubectl", &self.kubectl)
            .field("dir", &self.local.as_ref().map(|l| &l.dir))
            .finish()
    }
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use (or the cluster named by
    /// [`KUBECONFIG_ENV`]). Panics with the reason and the tail of the relevant log when it
    /// cannot be had: a test that needs a control plane fails rather than skips.
    pub fn shared() -> &'static ControlPlane {
        // The outcome is cached, failure included, so a broken set-up costs one attempt and
        // every test reports the same reason.
        static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();
        let outcome = SHARED.get_or_init(|| {
            let plane = match std::env::var_os(KUBECONFIG_ENV) {
                Some(path) if !path.is_empty() => Self::external(PathBuf::from(path)),
                _ => Self::start(),
            };
            plane.map_err(|e| format!("{e:#}"))
        });
        match outcome {
            Ok(plane) => plane,
            Err(reason) => panic!("testkit: no control plane for the tests: {reason}"),
        }
    }

    /// Starts a new local control plane owned by the caller, ignoring [`KUBECONFIG_ENV`]. It is
    /// torn down by [`ControlPlane::stop`], or when this process exits. Most tests want
    /// [`ControlPlane::shared`]; this is for tests about the harness itself.
    pub fn start() -> Result<ControlPlane> {
        let cp = cp_script();
        if !cp.is_file() {
            bail!("{} does not exist", cp.display());
        }
        let dir = tempfile::Builder::new()
            .prefix("backup-operator-cp-")
            .tempdir()
            .context("creating a directory for the control plane")?
            // The watcher removes it, after `cp down`, even when this process is gone.
            .keep();

        // $0 is cp, $1 the directory. SIGPIPE is ignored only around the status line, which
        // this process may no longer be there to read: the watcher must survive to clean up.
        const WATCHER: &str = r#"
"$0" up "$1" </dev/null >"$1/cp-up.log" 2>&1
rc=$?
trap '' PIPE
echo "$rc"
exec >/dev/null
read _ || :
"$0" down "$1" </dev/null >/dev/null 2>&1
rm -rf "$1"
"#;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHER)
            .arg(&cp)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting the watcher that runs {} up", cp.display()))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("the watcher has no stdin pipe"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the watcher has no stdout pipe"))?;

        let mut status = String::new();
        let read = BufReader::new(stdout).read_line(&mut status);
        let up_log = dir.join("cp-up.log");
        let failure = match (read, status.trim()) {
            (Ok(_), "0") => None,
            (Ok(_), "") => Some("the watcher exited before `cp up` finished".to_owned()),
            (Ok(_), rc) => Some(format!("`cp up` exited with status {rc}")),
            (Err(e), _) => Some(format!("reading the status of `cp up`: {e}")),
        };
        if let Some(reason) = failure {
            let tail = log_tail(&up_log);
            // Let the watcher clean up what `cp up` left before the caller reports the failure.
            drop(stdin);
            let _ = child.wait();
            bail!(
                "the local control plane did not come up in {}: {reason}\n--- tail of {} ---\n{tail}",
                dir.display(),
                up_log.display()
            );
        }

        let env = read_env(&dir.join("env"))?;
        let bindir = env
            .get("bindir")
            .ok_or_else(|| anyhow!("{} names no bindir", dir.join("env").display()))?;
        Ok(ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            kubectl: Path::new(bindir).join("kubectl"),
            local: Some(Local {
                dir,
                watcher: Mutex::new(Some((child, stdin))),
            }),
        })
    }

    /// Uses an existing cluster instead of starting one.
    fn external(kubeconfig: PathBuf) -> Result<ControlPlane> {
        if !kubeconfig.is_file() {
            bail!(
                "{KUBECONFIG_ENV}={} is not a readable file",
                kubeconfig.display()
            );
        }
        let built = bin_dir().map(|d| d.join("kubectl")).ok();
        let kubectl = built
            .filter(|k| k.is_file())
            .unwrap_or_else(|| PathBuf::from("kubectl"));
        Ok(ControlPlane {
            kubeconfig,
            kubectl,
            local: None,
        })
    }

    /// Tears down a plane from [`ControlPlane::start`] and waits until `cp down` has finished and
    /// its directory is gone. A no-op for an external cluster.
    pub fn stop(&self) -> Result<()> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        let taken = local
            .watcher
            .lock()
            .map_err(|_| anyhow!("the watcher lock is poisoned"))?
            .take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let status = child
                .wait()
                .context("waiting for the watcher to run cp down")?;
            if !status.success() {
                bail!(
                    "the watcher of {} exited with {status}",
                    local.dir.display()
                );
            }
        }
        Ok(())
    }

    /// Whether this process started the plane (as opposed to using [`KUBECONFIG_ENV`]).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The `cp up` directory of a local plane (kubeconfig, env, pids/, logs/).
    pub fn dir(&self) -> Option<&Path> {
        self.local.as_ref().map(|l| l.dir.as_path())
    }

    /// Process ids of a local plane's components, by name, as `cp up` recorded them.
    pub fn pids(&self) -> Result<BTreeMap<String, i32>> {
        let dir = self
            .dir()
            .ok_or_else(|| anyhow!("an external cluster has no local processes"))?;
        let mut pids = BTreeMap::new();
        for name in COMPONENTS {
            let path = dir.join("pids").join(name);
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let pid = text
                .trim()
                .parse()
                .with_context(|| format!("{} holds no pid: {text:?}", path.display()))?;
            pids.insert(name.to_owned(), pid);
        }
        Ok(pids)
    }

    /// The admin kubeconfig of this plane.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A `kubectl` (of the control plane's version, when built) already pointed at this plane.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// A new client for this plane. A `kube::Client` belongs to the tokio runtime it was made
    /// in, and every `#[tokio::test]` has its own, so each test makes its own client.
    pub async fn try_client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading {}", self.kubeconfig.display()))?;
        Client::try_from(config)
            .with_context(|| format!("building a client from {}", self.kubeconfig.display()))
    }

    /// [`ControlPlane::try_client`] for tests: panics with the reason.
    pub async fn client(&self) -> Client {
        match self.try_client().await {
            Ok(client) => client,
            Err(e) => panic!("testkit: no client for the control plane: {e:#}"),
        }
    }

    /// Creates a namespace named `<prefix>-<random>`; panics with the reason if it cannot.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        match self.try_namespace(prefix).await {
            Ok(ns) => ns,
            Err(e) => panic!("testkit: creating a test namespace: {e:#}"),
        }
    }

    /// [`ControlPlane::namespace`], returning the error instead.
    pub async fn try_namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let client = self.try_client().await?;
        let namespaces: Api<Namespace> = Api::all(client);
        // generateName lets the apiserver pick the unique suffix, so concurrent test binaries on
        // one cluster cannot collide.
        let wanted = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some(
                    [(
                        "backup-operator.test/harness".to_owned(),
                        "testkit".to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = namespaces
            .create(&PostParams::default(), &wanted)
            .await
            .with_context(|| format!("creating a namespace with prefix {prefix:?}"))?;
        let name = created
            .metadata
            .name
            .ok_or_else(|| anyhow!("the apiserver returned a namespace without a name"))?;
        Ok(TestNamespace {
            name,
            kubectl: self.kubectl.clone(),
            kubeconfig: self.kubeconfig.clone(),
        })
    }
}

/// A namespace created for one test. Dropping it asks for its deletion without waiting.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    /// The generated name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // A separate kubectl rather than a task on the test's runtime, which is usually being
        // shut down when the guard drops and would cancel the request. Best effort: a local
        // plane is thrown away anyway, this only keeps a shared real cluster tidy.
        let spawned = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut child) = spawned {
            // Reaped on a thread so Drop does not block and no zombie is left.
            std::thread::spawn(move || child.wait());
        }
    }
}

/// Retries `attempt` every 200 ms until it returns `Ok`, for at most `timeout`. On timeout the
/// error names `what` and carries the last attempt's error.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        // A hung attempt must not stretch the bound.
        let last = match tokio::time::timeout(remaining, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("the last attempt was still running at the deadline"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(last.context(format!("timed out after {timeout:?} waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(200).min(remaining)).await;
    }
}

/// Server-side applies `crd` and waits up to `timeout` for its `Established` condition.
pub async fn apply_crd(
    client: &Client,
    crd: &CustomResourceDefinition,
    timeout: Duration,
) -> Result<CustomResourceDefinition> {
    let name = crd
        .metadata
        .name
        .as_deref()
        .ok_or_else(|| anyhow!("the CustomResourceDefinition has no metadata.name"))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(crd),
    )
    .await
    .with_context(|| format!("applying CustomResourceDefinition {name}"))?;
    let established = await_condition(crds, name, conditions::is_crd_established());
    match tokio::time::timeout(timeout, established).await {
        Ok(Ok(Some(crd))) => Ok(crd),
        Ok(Ok(None)) => {
            bail!("CustomResourceDefinition {name} was deleted while waiting for Established")
        }
        Ok(Err(e)) => Err(e).with_context(|| format!("watching CustomResourceDefinition {name}")),
        Err(_) => bail!("CustomResourceDefinition {name} was not Established within {timeout:?}"),
    }
}

/// [`apply_crd`] for a CRD given as YAML (one document).
pub async fn apply_crd_yaml(
    client: &Client,
    yaml: &str,
    timeout: Duration,
) -> Result<CustomResourceDefinition> {
    let crd: CustomResourceDefinition =
        serde_yaml_ng::from_str(yaml).context("parsing a CustomResourceDefinition from YAML")?;
    apply_crd(client, &crd, timeout).await
}

/// The `key=value` lines `cp up` writes to `DIR/env`.
fn read_env(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// The last lines of a log, or why it could not be read.
fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

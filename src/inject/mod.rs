//! The mutating webhook's logic: inject the notifier into the pod template of a labelled
//! CronJob (api.md §4), idempotently, as a JSON Patch that changes only what it needs.
//!
//! Injected into `spec.jobTemplate.spec.template.spec`:
//! - the `backup-notifier` volume (`emptyDir`, medium Memory);
//! - init container `notifier-install`, which copies the notifier binary into that volume;
//! - the `notifier`: a native sidecar (init container with `restartPolicy: Always`) that the
//!   kubelet stops only after the backup container ended, or, in container mode, a regular
//!   container that waits for the result; with the pod's `restartPolicy: OnFailure` its env says
//!   so, and it treats a failed attempt as final only when the pod is stopped;
//! - the target container's `command` wrapped as `backup-notifier exec --result … -- <command>`
//!   (its `args` are untouched);
//! - `terminationGracePeriodSeconds` raised, when lower, so a send fits after the backup ends;
//! - with `--notifier-ca-configmap`, the `backup-notifier-ca` volume (that ConfigMap, optional)
//!   mounted in the notifier, whose `NOTIFY_CA_FILE` points into it.
//!
//! The injector owns the volumes `backup-notifier` and `backup-notifier-ca` and the containers
//! `notifier-install` and `notifier`, and tells its own from a user's by their shape. A user's
//! own entry under one of these names stops the injection (with a warning), except a
//! `backup-notifier-ca` volume, which only costs the notifier the extra CA.
//!
//! Where the notifier cannot or must not be injected (the label removed, no command to wrap, an
//! unknown target, a name taken), an earlier injection is taken out again, so that no notifier
//! is left without its wrapper.

pub mod patch;

use std::time::Duration;

use json_patch::PatchOperation;
use json_patch::jsonptr::PointerBuf;
use serde_json::{Value, json};

use crate::contract::{self, annotations, env, pod};
use crate::json_view::Keep;
use patch::{PatchBuilder, pointer};

const JOB_SPEC: [&str; 3] = ["spec", "jobTemplate", "spec"];
const POD_SPEC: [&str; 5] = ["spec", "jobTemplate", "spec", "template", "spec"];

/// Everything [`mutate`] reads of a CronJob, and every path its patch touches: the labels, the
/// annotations, the Job's `backoffLimit`, and the pod spec's lists, restart policy, grace
/// period and `securityContext.runAsUser` at [`POD_SPEC`]. `/mutate` decodes only this much of
/// the object (the rest is skipped unparsed; see [`crate::json_view`]).
pub const CRON_JOB_VIEW: Keep = Keep::Members(&[
    (
        "metadata",
        Keep::Members(&[("labels", Keep::All), ("annotations", Keep::All)]),
    ),
    (
        JOB_SPEC[0],
        Keep::Path(&[JOB_SPEC[1], JOB_SPEC[2]], &JOB_SPEC_VIEW),
    ),
]);

const JOB_SPEC_VIEW: Keep = Keep::Members(&[
    ("backoffLimit", Keep::All),
    (POD_SPEC[3], Keep::Path(&[POD_SPEC[4]], &POD_SPEC_VIEW)),
]);

const POD_SPEC_VIEW: Keep = Keep::Members(&[
    ("volumes", Keep::All),
    ("initContainers", Keep::All),
    ("containers", Keep::All),
    ("terminationGracePeriodSeconds", Keep::All),
    ("restartPolicy", Keep::All),
    (
        "securityContext",
        Keep::Members(&[("runAsUser", Keep::All)]),
    ),
]);

/// The Job controller's default `backoffLimit`.
const DEFAULT_BACKOFF_LIMIT: u64 = 6;

/// Extra seconds the pod's grace period grants beyond the notifier's timeout: one grace period
/// covers the backup container's own stop (restic removing its lock, the wrapper writing the
/// result) and then the send, which starts only after it. With the default 10 s timeout this is
/// the kubelet's default of 30 s, so only a shorter one is raised.
const GRACE_MARGIN_SECS: u64 = 20;
/// The kubelet's default when `terminationGracePeriodSeconds` is absent.
const DEFAULT_GRACE_SECS: u64 = 30;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NotifierMode {
    /// A native sidecar (init container with restartPolicy: Always), stopped by the kubelet
    /// after the backup container ended. Needs native sidecars (on by default since Kubernetes
    /// 1.29, GA in 1.33).
    #[default]
    Sidecar,
    /// A regular container beside the backup container that exits 0 once it has sent.
    Container,
}

impl NotifierMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifierMode::Sidecar => "sidecar",
            NotifierMode::Container => "container",
        }
    }
}

/// `--notifier-image` when neither it nor its variable is set. Nothing is published under this
/// name, so `serve` warns when it is in use: `manifests/` set the operator's own image instead.
pub const DEFAULT_NOTIFIER_IMAGE: &str =
    concat!("ghcr.io/bnerd/backup-operator:", env!("CARGO_PKG_VERSION"));

/// The mutating webhook's flags.
#[derive(Clone, Debug, clap::Args)]
pub struct InjectorArgs {
    /// Image holding /usr/local/bin/backup-notifier (normally the operator's own image).
    #[arg(long, env = "BACKUP_OPERATOR_NOTIFIER_IMAGE", default_value = DEFAULT_NOTIFIER_IMAGE, value_parser = crate::names::image)]
    pub notifier_image: String,
    /// How the notifier runs beside the backup container.
    #[arg(long, value_enum, default_value_t = NotifierMode::Sidecar)]
    pub notifier_mode: NotifierMode,
    /// Bound on one delivery (DNS, connect, TLS, response). The pod's grace period is raised to
    /// fit it.
    #[arg(long, default_value = "10s", value_parser = parse_notifier_timeout)]
    pub notifier_timeout: Duration,
    /// CPU request of the injected containers. The four resource flags are refused at start-up
    /// when the apiserver would refuse them, and kept as it stores them ("1024Mi" as "1Gi").
    #[arg(long, default_value = "10m", value_parser = crate::quantity::resource)]
    pub notifier_cpu_request: String,
    /// Memory request of the injected containers.
    #[arg(long, default_value = "16Mi", value_parser = crate::quantity::resource)]
    pub notifier_memory_request: String,
    /// Memory limit of the injected containers.
    #[arg(long, default_value = "64Mi", value_parser = crate::quantity::resource)]
    pub notifier_memory_limit: String,
    /// CPU limit of the injected containers; none by default. Set it where a ResourceQuota on
    /// limits.cpu (without a LimitRange default) would otherwise refuse every backup pod.
    #[arg(long, value_parser = crate::quantity::resource)]
    pub notifier_cpu_limit: Option<String>,
    /// ConfigMap, in each backup's own namespace, with extra CA certificates (PEM) the notifier
    /// trusts besides the bundled public roots: for relays whose certificate a private CA signed.
    /// Mounted optional, so a namespace without it still runs its backups (the notifier then
    /// trusts the public roots only, and a failed TLS delivery says the CA file was missing).
    /// trust-manager's Bundle can write such a ConfigMap into every namespace.
    #[arg(long, value_name = "NAME", value_parser = crate::names::subdomain)]
    pub notifier_ca_configmap: Option<String>,
    /// The key of --notifier-ca-configmap that holds the PEM.
    #[arg(long, value_name = "KEY", default_value = "ca.crt", value_parser = parse_config_map_key, requires = "notifier_ca_configmap")]
    pub notifier_ca_key: String,
    /// User and group ID the injected containers run as, or `none` to leave both to the
    /// platform: OpenShift's restricted-v2 SCC refuses a fixed ID outside the namespace's range
    /// and assigns one itself. Non-root either way (runAsNonRoot stays; without an ID they take
    /// the pod's runAsUser, else the image's numeric USER, 65532 in ours; in a pod that runs as
    /// root they run as 65532).
    #[arg(long, value_name = "UID|none", default_value = "65532", value_parser = parse_run_as_user)]
    pub notifier_run_as_user: RunAsUser,
}

/// `--notifier-run-as-user`: a user ID, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAsUser(pub Option<i64>);

fn parse_run_as_user(s: &str) -> Result<RunAsUser, String> {
    if s == "none" {
        return Ok(RunAsUser(None));
    }
    match s.parse::<i64>() {
        Ok(0) => {
            Err("0 is root; the injected containers run non-root (give another ID, or none)".into())
        }
        // The field is an int64, but the apiserver's validation allows 0 to 2^31-1 only.
        Ok(id) if (1..=i64::from(i32::MAX)).contains(&id) => Ok(RunAsUser(Some(id))),
        _ => Err(format!(
            "{s:?} is not a user ID (1 to {}) or none",
            i32::MAX
        )),
    }
}

/// `--notifier-ca-key`: a ConfigMap key, as the apiserver validates one (a key could not be
/// stored under any other name, so the CA would silently never load).
fn parse_config_map_key(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s != "."
        && !s.starts_with("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(format!(
            "{s:?} is not a ConfigMap key: letters, digits, '-', '_' and '.', at most 253 characters, not '.' and not starting with '..'"
        ));
    }
    Ok(s.to_owned())
}

/// `--notifier-timeout`: refused at start-up when the notifier would refuse it in every backup
/// pod (it takes more than 0 and at most `MAX_TIMEOUT`, in whole milliseconds).
fn parse_notifier_timeout(s: &str) -> Result<Duration, String> {
    crate::duration::within(
        s,
        Duration::from_millis(1),
        crate::notifier::cli::MAX_TIMEOUT,
    )
}

/// Everything an injection needs, fixed at start-up.
#[derive(Clone, Debug)]
pub struct InjectorConfig {
    pub image: String,
    pub mode: NotifierMode,
    pub timeout: Duration,
    pub resources: Value,
    /// The operator's URL policy, passed on so send time agrees with admission.
    pub policy_env: Vec<(&'static str, String)>,
    /// Where the notifier's extra CA comes from, if anywhere.
    pub ca: Option<NotifierCa>,
    /// `runAsUser` and `runAsGroup` of the injected containers; `None` leaves them out.
    pub run_as_user: Option<i64>,
}

/// A ConfigMap key in the backup's namespace holding extra CA certificates for the notifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifierCa {
    pub config_map: String,
    pub key: String,
}

impl InjectorArgs {
    /// One line on why the apiserver would refuse every injected pod (a request above its
    /// limit), checked at start-up rather than found in every backup Job's events.
    pub fn check(&self) -> Result<(), String> {
        let pairs = [
            (
                "--notifier-memory-request",
                &self.notifier_memory_request,
                "--notifier-memory-limit",
                Some(&self.notifier_memory_limit),
            ),
            (
                "--notifier-cpu-request",
                &self.notifier_cpu_request,
                "--notifier-cpu-limit",
                self.notifier_cpu_limit.as_ref(),
            ),
        ];
        for (request_flag, request, limit_flag, limit) in pairs {
            let Some(limit) = limit else { continue };
            let (Ok(r), Ok(l)) = (
                crate::quantity::parse(request),
                crate::quantity::parse(limit),
            ) else {
                continue;
            };
            if r.exceeds(&l) {
                return Err(format!(
                    "{request_flag} {request} is above {limit_flag} {limit}; the apiserver would refuse every backup pod"
                ));
            }
        }
        Ok(())
    }
}

impl InjectorConfig {
    pub fn new(args: &InjectorArgs, policy_env: Vec<(&'static str, String)>) -> Self {
        InjectorConfig {
            image: args.notifier_image.clone(),
            mode: args.notifier_mode,
            timeout: args.notifier_timeout,
            resources: {
                let mut limits = json!({"memory": args.notifier_memory_limit});
                if let Some(cpu) = &args.notifier_cpu_limit {
                    limits["cpu"] = json!(cpu);
                }
                json!({
                    "requests": {"cpu": args.notifier_cpu_request, "memory": args.notifier_memory_request},
                    "limits": limits,
                })
            },
            policy_env,
            ca: args.notifier_ca_configmap.as_ref().map(|name| NotifierCa {
                config_map: name.clone(),
                key: args.notifier_ca_key.clone(),
            }),
            run_as_user: args.notifier_run_as_user.0,
        }
    }
}

/// The result of mutating one CronJob.
#[derive(Debug, Default)]
pub struct Mutation {
    pub patch: Vec<PatchOperation>,
    pub warnings: Vec<String>,
    /// The CronJob with the patch applied (the injector's working copy), when the notifier is
    /// (now) in its pod template.
    pub object: Option<Value>,
}

impl Mutation {
    /// The notifier is (now) in the pod template.
    pub fn injected(&self) -> bool {
        self.object.is_some()
    }
}

/// Whether the CronJob asks for notifications.
pub fn is_labelled(cron_job: &Value) -> bool {
    cron_job["metadata"]["labels"][contract::NOTIFY_LABEL].as_str() == Some("true")
}

/// A non-empty annotation of the CronJob.
fn annotation<'v>(cron_job: &'v Value, key: &str) -> Option<&'v str> {
    cron_job["metadata"]["annotations"][key]
        .as_str()
        .filter(|s| !s.is_empty())
}

/// The CronJob's pod spec (`Null` when the object has none).
fn pod_spec(cron_job: &Value) -> &Value {
    POD_SPEC.iter().fold(cron_job, |v, key| &v[*key])
}

/// The CronJob's Job spec (`Null` when the object has none).
fn job_spec(cron_job: &Value) -> &Value {
    JOB_SPEC.iter().fold(cron_job, |v, key| &v[*key])
}

/// Computes the patch for a CronJob (`cron_job` is the object as JSON; it becomes the patch's
/// working copy, so the caller's object is not copied): the notifier injected into a labelled
/// one, or, where it cannot or must not be injected, any earlier injection taken out again.
pub fn mutate(cron_job: Value, cfg: &InjectorConfig) -> Mutation {
    let target = if is_labelled(&cron_job) {
        injection_target(&cron_job)
    } else {
        // Opting out is what the user asked for, so no warning; the webhook still sees the
        // request because its objectSelector matches the old, labelled object.
        Err(None)
    };
    match target {
        Ok(target_name) => inject(cron_job, cfg, &target_name),
        Err(warning) => decline(cron_job, warning),
    }
}

/// The container whose command gets wrapped, or why nothing can be injected (the warning;
/// `None` for no warning).
fn injection_target(cron_job: &Value) -> Result<String, Option<String>> {
    let spec = pod_spec(cron_job);
    if let Some(clash) = reserved_name_taken(spec) {
        return Err(Some(format!(
            "backup-operator: the pod template has its own {clash}, a name the notifier injection reserves; rename it to receive notifications. No notification will be sent"
        )));
    }
    let Some(containers) = spec["containers"].as_array() else {
        return Err(Some(
            "backup-operator: the CronJob has no pod template containers; no notification will be sent".into(),
        ));
    };
    let target_name = match annotation(cron_job, annotations::NOTIFY_CONTAINER) {
        Some(name) => name,
        // The container already wrapped first: another webhook may have put a container of its
        // own in front since, and the injection must not move to it.
        None => containers
            .iter()
            .filter(|c| c["name"] != pod::NOTIFIER_CONTAINER)
            .find(|c| c["command"].as_array().is_some_and(|cmd| is_wrapped(cmd)))
            .or_else(|| {
                containers
                    .iter()
                    .find(|c| c["name"] != pod::NOTIFIER_CONTAINER)
            })
            .and_then(|c| c["name"].as_str())
            .ok_or_else(|| {
                Some("backup-operator: the CronJob has no container to wrap; no notification will be sent".to_owned())
            })?,
    };
    // The notifier cannot wrap itself: the next request would no longer recognise it as ours.
    if target_name == pod::NOTIFIER_CONTAINER {
        return Err(Some(format!(
            "backup-operator: annotation {} names container {target_name:?}, the notifier itself; name the backup container. No notification will be sent",
            annotations::NOTIFY_CONTAINER
        )));
    }
    let Some(target) = named(containers, target_name) else {
        return Err(Some(format!(
            "backup-operator: annotation {} names container {target_name:?}, which does not exist; no notification will be sent",
            annotations::NOTIFY_CONTAINER
        )));
    };
    // The apiserver refuses two mounts at one path, so the patched CronJob would not be stored.
    let taken = target["volumeMounts"].as_array().and_then(|mounts| {
        mounts.iter().find(|m| {
            m["name"] != pod::VOLUME
                && m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(pod::MOUNT_PATH)
        })
    });
    if let Some(m) = taken {
        return Err(Some(format!(
            "backup-operator: container {target_name:?} mounts volume {} at {}, the path the notifier's files are mounted at; mount it elsewhere to receive notifications. No notification will be sent",
            m["name"],
            pod::MOUNT_PATH
        )));
    }
    // Unwrapped first: the wrapper's words alone would wrap nothing, and every run would fail.
    let command = target["command"].as_array().map(Vec::as_slice);
    if command.is_none_or(|c| unwrapped_command(c).unwrap_or(c).is_empty()) {
        return Err(Some(format!(
            "backup-operator: container {target_name:?} has no command, so it cannot be wrapped (the image's entrypoint is unknown at admission); set command to receive notifications. No notification will be sent"
        )));
    }
    Ok(target_name.to_owned())
}

/// The first entry of the pod spec that has one of the injector's names but is not the
/// injector's (see [`RESERVED`]), described for a warning. Injecting would replace or
/// remove it.
fn reserved_name_taken(spec: &Value) -> Option<String> {
    RESERVED.into_iter().find_map(|(list, name, ours)| {
        let entries = spec[list].as_array()?;
        named(entries, name).filter(|e| !ours(e))?;
        let what = match list {
            "volumes" => "volume",
            "initContainers" => "init container",
            _ => "container",
        };
        Some(format!("{what} {name:?}"))
    })
}

/// A pod spec list, the name of an entry the injector owns in it, and how to tell an entry the
/// injector made from a user's own that happens to have the name.
type Reserved = (&'static str, &'static str, fn(&Value) -> bool);

/// The entries the injector owns by name. The CA volume is not here: a user's own of that name
/// only costs the notifier the extra CA (see [`is_ca_volume`]).
const RESERVED: [Reserved; 5] = [
    ("volumes", pod::VOLUME, is_notifier_volume),
    // Init and regular containers share one namespace of names, and the install container is
    // only ever an init container.
    ("containers", pod::INSTALL_CONTAINER, |_| false),
    (
        "initContainers",
        pod::INSTALL_CONTAINER,
        is_install_container,
    ),
    (
        "initContainers",
        pod::NOTIFIER_CONTAINER,
        is_notifier_container,
    ),
    ("containers", pod::NOTIFIER_CONTAINER, is_notifier_container),
];

/// Nothing is injected: takes out what an earlier injection left, so that the pod does not run
/// a notifier without a wrapped backup (a sidecar would report failure on every run, a
/// container-mode notifier would wait forever), and the warning's "no notification" is true.
fn decline(cron_job: Value, warning: Option<String>) -> Mutation {
    let mut b = PatchBuilder::new(cron_job);
    remove_injection(&mut b);
    let (patch, _) = b.into_ops();
    let warnings = warning
        .map(|w| {
            if patch.is_empty() {
                w
            } else {
                format!("{w} (the notifier injected earlier has been removed)")
            }
        })
        .into_iter()
        .collect();
    Mutation {
        patch,
        warnings,
        object: None,
    }
}

/// Injects the notifier into a labelled CronJob whose `target_name` container has a command.
fn inject(cron_job: Value, cfg: &InjectorConfig, target_name: &str) -> Mutation {
    let mut m = Mutation::default();
    let ann = |key: &str| annotation(&cron_job, key);
    let volumes = pod_spec(&cron_job)["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ca_volume_is_users = named(volumes, pod::CA_VOLUME).is_some_and(|v| !is_ca_volume(v));
    let ca = cfg.ca.as_ref().filter(|_| !ca_volume_is_users);
    if cfg.ca.is_some() && ca.is_none() {
        m.warnings.push(format!(
            "backup-operator: the pod template has its own volume {:?}, the name the injector mounts the notifier's CA under; the notifier trusts only public CAs here (rename that volume)",
            pod::CA_VOLUME
        ));
    }

    let retried_in_place = pod_spec(&cron_job)["restartPolicy"] == "OnFailure";
    if !retried_in_place {
        let limit = job_spec(&cron_job)["backoffLimit"].as_u64();
        let retries = match limit {
            Some(0) => None,
            Some(n) => Some(format!("backoffLimit is {n}")),
            None => Some(format!("backoffLimit is unset ({DEFAULT_BACKOFF_LIMIT})")),
        };
        if let Some(retries) = retries {
            m.warnings.push(format!(
                "backup-operator: {retries} and restartPolicy is Never: every failed attempt runs in a new pod, which sends its own failure notification; set backoffLimit: 0, or restartPolicy: OnFailure, for one notification per run"
            ));
        }
    }
    let user = containers_user(cfg, &cron_job);
    let notifier = notifier_container(cfg, user, ca, &ann, retried_in_place);
    let mut b = PatchBuilder::new(cron_job);
    ensure_named(&mut b, "volumes", pod::VOLUME, volume(), None);
    match ca {
        Some(ca) => ensure_named(&mut b, "volumes", pod::CA_VOLUME, ca_volume(ca), None),
        // The flag was dropped since this CronJob was mutated.
        None if !ca_volume_is_users => remove_named(&mut b, "volumes", pod::CA_VOLUME),
        None => {}
    }
    ensure_named(
        &mut b,
        "initContainers",
        pod::INSTALL_CONTAINER,
        install_container(cfg, user),
        Some(0),
    );
    match cfg.mode {
        NotifierMode::Sidecar => {
            remove_named(&mut b, "containers", pod::NOTIFIER_CONTAINER);
            let after_install =
                index_of(&b, "initContainers", pod::INSTALL_CONTAINER).map(|i| i + 1);
            ensure_named(
                &mut b,
                "initContainers",
                pod::NOTIFIER_CONTAINER,
                notifier,
                after_install,
            );
        }
        NotifierMode::Container => {
            remove_named(&mut b, "initContainers", pod::NOTIFIER_CONTAINER);
            ensure_named(
                &mut b,
                "containers",
                pod::NOTIFIER_CONTAINER,
                notifier,
                None,
            );
        }
    }
    wrap_target(&mut b, target_name);
    raise_grace_period(&mut b, cfg.timeout);
    let (ops, object) = b.into_ops();
    m.patch = ops;
    m.object = Some(object);
    m
}

fn list_path(list: &str) -> PointerBuf {
    let mut p = pointer(POD_SPEC);
    p.push_back(list);
    p
}

fn index_of(b: &PatchBuilder, list: &str, name: &str) -> Option<usize> {
    b.get(&list_path(list))?
        .as_array()?
        .iter()
        .position(|c| c["name"] == name)
}

/// Puts `value` into the named list under the pod spec: replaced in place when an entry of that
/// name exists but differs, inserted at `at` (or appended) when missing.
fn ensure_named(b: &mut PatchBuilder, list: &str, name: &str, value: Value, at: Option<usize>) {
    let path = list_path(list);
    if b.get(&path).is_none_or(Value::is_null) {
        b.add(path, Value::Array(vec![value]));
        return;
    }
    match index_of(b, list, name) {
        Some(i) => {
            let mut p = path;
            p.push_back(i.to_string());
            b.ensure_owned(p, value);
        }
        None => {
            let mut p = path;
            p.push_back(at.map_or_else(|| "-".to_owned(), |i| i.to_string()));
            b.add(p, value);
        }
    }
}

fn remove_named(b: &mut PatchBuilder, list: &str, name: &str) {
    if let Some(i) = index_of(b, list, name) {
        let mut p = list_path(list);
        p.push_back(i.to_string());
        b.remove(p);
    }
}

/// What [`wrap_target`] puts before the original command: unwrapping takes off exactly this.
const WRAPPER: [&str; 5] = [
    pod::INSTALLED_BIN,
    "exec",
    "--result",
    pod::RESULT_FILE,
    "--",
];

fn is_wrapped(command: &[Value]) -> bool {
    command.len() >= WRAPPER.len()
        && command
            .iter()
            .zip(WRAPPER)
            .all(|(v, w)| v.as_str() == Some(w))
}

/// The command a wrapped container ran before wrapping.
pub fn unwrapped_command(command: &[Value]) -> Option<&[Value]> {
    is_wrapped(command).then(|| &command[WRAPPER.len()..])
}

/// Whether a command starts with these words (the injector's containers are told apart from a
/// user's by their command; the words after these may change between versions).
fn command_starts_with(c: &Value, words: &[&str]) -> bool {
    c["command"].as_array().is_some_and(|cmd| {
        cmd.len() >= words.len() && cmd.iter().zip(words).all(|(v, w)| v.as_str() == Some(*w))
    })
}

/// Whether an init container is one [`install_container`] made (for any image).
fn is_install_container(c: &Value) -> bool {
    command_starts_with(c, &[pod::IMAGE_BIN, "install"])
}

/// Whether a container (init or regular) is one [`notifier_container`] made (any image, mode).
fn is_notifier_container(c: &Value) -> bool {
    command_starts_with(c, &[pod::IMAGE_BIN, "notify"])
}

/// Whether a volume is one [`volume`] made: an in-memory emptyDir and nothing else (its size
/// limit may differ, or be defaulted, in what is stored).
fn is_notifier_volume(v: &Value) -> bool {
    v["emptyDir"]["medium"] == "Memory" && v.as_object().is_some_and(|o| o.len() == 2)
}

/// Whether a volume mount is one [`mount`] made.
fn is_notifier_mount(m: &Value) -> bool {
    m["name"] == pod::VOLUME && m["mountPath"] == pod::MOUNT_PATH
}

fn element(list: &str, i: usize) -> PointerBuf {
    let mut p = list_path(list);
    p.push_back(i.to_string());
    p
}

/// Takes out of the pod spec everything an injection put there, recognising the injector's
/// entries by their shape, so that a user's own that has one of the names stays as it is.
/// `terminationGracePeriodSeconds` stays as raised: the injector does not record what it was,
/// and a longer grace period only matters when the pod is stopped.
fn remove_injection(b: &mut PatchBuilder) {
    // Containers first: a volume goes only once nothing mounts it any more.
    for (list, name, ours) in RESERVED {
        if list == "volumes" {
            continue;
        }
        if let Some(i) = index_of(b, list, name) {
            let path = element(list, i);
            // A pod needs a container: a container-mode notifier left alone in `containers` (the
            // user's own removed, or named as the target) stays, or the apiserver would refuse
            // the object that is otherwise only declined with a warning.
            let last = list == "containers"
                && b.get(&list_path(list))
                    .and_then(Value::as_array)
                    .is_some_and(|l| l.len() == 1);
            if !last && b.get(&path).is_some_and(ours) {
                b.remove(path);
            }
        }
    }
    // A mount of the user's own volume of the notifier volume's name is the user's too.
    let volume_is_users = index_of(b, "volumes", pod::VOLUME)
        .and_then(|i| b.get(&element("volumes", i)))
        .is_some_and(|v| !is_notifier_volume(v));
    // Planned while the containers are borrowed (as in `wrap_target`); each op touches only its
    // own container, and a container has at most one mount at the notifier's path.
    let mut unwrap: Vec<PointerBuf> = Vec::new();
    let mut unmount: Vec<PointerBuf> = Vec::new();
    let containers = b.get(&list_path("containers")).and_then(Value::as_array);
    for (i, c) in containers.into_iter().flatten().enumerate() {
        let base = element("containers", i);
        // A command of the wrapper's words alone stays as written: unwrapping would leave none,
        // and the container would silently run its image's entrypoint instead.
        if c["command"]
            .as_array()
            .is_some_and(|c| unwrapped_command(c).is_some_and(|inner| !inner.is_empty()))
        {
            let mut p = base.clone();
            p.push_back("command");
            unwrap.push(p);
        }
        let mounts = c["volumeMounts"].as_array();
        if let Some(j) = mounts
            .and_then(|m| m.iter().position(is_notifier_mount))
            .filter(|_| !volume_is_users)
        {
            // The only mount: the list goes too, as it was before the injection added it.
            let only = mounts.is_some_and(|m| m.len() == 1);
            let mut p = base;
            p.push_back("volumeMounts");
            if !only {
                p.push_back(j.to_string());
            }
            unmount.push(p);
        }
    }
    for command in unwrap {
        unwrap_command(b, &command);
    }
    for path in unmount {
        b.remove(path);
    }
    remove_if_empty(b, "initContainers");
    let mounted = |b: &PatchBuilder, volume: &str| {
        ["initContainers", "containers"].iter().any(|list| {
            b.get(&list_path(list))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c["volumeMounts"].as_array())
                .flatten()
                .any(|m| m["name"] == volume)
        })
    };
    for (name, ours) in [
        (pod::VOLUME, is_notifier_volume as fn(&Value) -> bool),
        (pod::CA_VOLUME, is_ca_volume),
    ] {
        if let Some(i) = index_of(b, "volumes", name) {
            let path = element("volumes", i);
            if b.get(&path).is_some_and(ours) && !mounted(b, name) {
                b.remove(path);
            }
        }
    }
    remove_if_empty(b, "volumes");
}

/// Removes a pod spec list the removal left empty, as it was before an injection added it.
fn remove_if_empty(b: &mut PatchBuilder, list: &str) {
    let path = list_path(list);
    if b.get(&path)
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        b.remove(path);
    }
}

/// An op `wrap_target` decided on while it read the containers.
enum Planned {
    Add,
    Ensure,
    /// Put the wrapper's words before the command at the path.
    Wrap,
    /// Take them off again.
    Unwrap,
    Remove,
}

// Only the wrapper's words are patched, at the front of the command as it is: the command (the
// restic script, a fifth of a generated CronJob) is neither copied into the patch nor re-encoded,
// here or by the apiserver, and nothing else of it is touched.

/// Inserts the wrapper's words before the command at `command`.
fn wrap_command(b: &mut PatchBuilder, command: &PointerBuf) {
    for (i, word) in WRAPPER.iter().enumerate() {
        let mut p = command.clone();
        p.push_back(i.to_string());
        b.add(p, json!(word));
    }
}

/// Removes the wrapper's words from the front of the (wrapped) command at `command`.
fn unwrap_command(b: &mut PatchBuilder, command: &PointerBuf) {
    for _ in WRAPPER {
        let mut p = command.clone();
        p.push_back("0");
        b.remove(p);
    }
}

fn wrap_target(b: &mut PatchBuilder, target: &str) {
    // The ops are planned while the containers are borrowed and made afterwards (cloning the
    // containers instead cost a tenth of a mutation). Each op touches only its own container, so
    // no op shifts a path another one uses.
    let mut plan: Vec<(Planned, PointerBuf, Value)> = Vec::new();
    let Some(containers) = b.get(&list_path("containers")).and_then(Value::as_array) else {
        return;
    };
    for (i, c) in containers.iter().enumerate() {
        let Some(command) = c["command"].as_array() else {
            continue;
        };
        let name = c["name"].as_str().unwrap_or_default();
        let mut base = list_path("containers");
        base.push_back(i.to_string());
        let mut p = base.clone();
        p.push_back("command");
        if name != target {
            // The target moved (annotation changed): leave no stale wrapper, or mount, behind.
            if is_wrapped(command) {
                plan.push((Planned::Unwrap, p, Value::Null));
                let mounts = c["volumeMounts"].as_array();
                if let Some(j) = mounts.and_then(|m| m.iter().position(is_notifier_mount)) {
                    // The only mount: the list goes too, as it was before the injection.
                    let mut p = base;
                    p.push_back("volumeMounts");
                    if mounts.is_some_and(|m| m.len() > 1) {
                        p.push_back(j.to_string());
                    }
                    plan.push((Planned::Remove, p, Value::Null));
                }
            }
            continue;
        }
        if !is_wrapped(command) {
            plan.push((Planned::Wrap, p, Value::Null));
        }
        let mounts = c["volumeMounts"].as_array();
        let mount = mount();
        let mut p = base;
        p.push_back("volumeMounts");
        plan.push(
            match mounts.and_then(|m| m.iter().position(|v| v["name"] == pod::VOLUME)) {
                Some(j) => {
                    p.push_back(j.to_string());
                    (Planned::Ensure, p, mount)
                }
                None if mounts.is_some() => {
                    p.push_back("-");
                    (Planned::Add, p, mount)
                }
                None => (Planned::Add, p, json!([mount])),
            },
        );
    }
    for (op, path, value) in plan {
        match op {
            Planned::Add => b.add(path, value),
            Planned::Ensure => b.ensure_owned(path, value),
            Planned::Wrap => wrap_command(b, &path),
            Planned::Unwrap => unwrap_command(b, &path),
            Planned::Remove => b.remove(path),
        }
    }
}

fn raise_grace_period(b: &mut PatchBuilder, timeout: Duration) {
    let needed = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0) + GRACE_MARGIN_SECS;
    let mut path = pointer(POD_SPEC);
    path.push_back("terminationGracePeriodSeconds");
    let current = b.get(&path).and_then(Value::as_u64);
    if current.unwrap_or(DEFAULT_GRACE_SECS) < needed {
        b.ensure(path, json!(needed));
    }
}

fn volume() -> Value {
    json!({"name": pod::VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}})
}

/// Whether a volume is one [`ca_volume`] made (for any ConfigMap and key), so that one of the
/// user's own that happens to have the name is never replaced or removed.
fn is_ca_volume(v: &Value) -> bool {
    let cm = &v["configMap"];
    cm["optional"] == true
        && cm["items"]
            .as_array()
            .is_some_and(|items| items.len() == 1 && items[0]["path"] == pod::CA_FILE_NAME)
}

/// Optional, so that a namespace without the ConfigMap (or the key) still runs its backups.
fn ca_volume(ca: &NotifierCa) -> Value {
    json!({
        "name": pod::CA_VOLUME,
        "configMap": {
            "name": ca.config_map,
            "items": [{"key": ca.key, "path": pod::CA_FILE_NAME}],
            "optional": true,
        },
    })
}

/// The user ID the injected containers run as, `None` to leave it out. Left out, they inherit
/// the pod's `runAsUser`: in a pod that runs as root (a backup reading root-owned files) their
/// `runAsNonRoot` would make the kubelet refuse them, and with them the whole backup pod. There
/// they run as the image's user instead, which a platform that admits a root pod admits too.
fn containers_user(cfg: &InjectorConfig, cron_job: &Value) -> Option<i64> {
    let pod_runs_as_root = pod_spec(cron_job)["securityContext"]["runAsUser"].as_i64() == Some(0);
    cfg.run_as_user
        .or_else(|| pod_runs_as_root.then_some(pod::IMAGE_USER))
}

/// Restricted, as the Pod Security Standards define it.
fn restricted(user: Option<i64>) -> Value {
    let mut context = json!({
        "runAsNonRoot": true,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    // Null rather than left out when there is none: what the injector compares with a stored
    // container may lack keys the stored one has (apiserver defaults), so only a null makes a
    // container injected with an ID differ, and get replaced, once the flag says none. The
    // apiserver stores a null pointer field as absent, which a null then matches.
    context["runAsUser"] = json!(user);
    context["runAsGroup"] = json!(user);
    context
}

/// The notifier volume's mount, the same in every container that has it.
fn mount() -> Value {
    json!({"name": pod::VOLUME, "mountPath": pod::MOUNT_PATH})
}

fn install_container(cfg: &InjectorConfig, user: Option<i64>) -> Value {
    json!({
        "name": pod::INSTALL_CONTAINER,
        "image": cfg.image,
        "command": [pod::IMAGE_BIN, "install", pod::INSTALLED_BIN],
        "resources": cfg.resources,
        "securityContext": restricted(user),
        "volumeMounts": [mount()],
    })
}

/// `retried_in_place`: the pod's restartPolicy is OnFailure, so a failed attempt is not final.
fn notifier_container<'a>(
    cfg: &InjectorConfig,
    user: Option<i64>,
    ca: Option<&NotifierCa>,
    ann: &impl Fn(&str) -> Option<&'a str>,
    retried_in_place: bool,
) -> Value {
    let mut vars: Vec<(&str, String)> = Vec::new();
    if let Some(url) = ann(annotations::WEBHOOK_SUCCESS) {
        vars.push((env::SUCCESS_URL, url.to_owned()));
    }
    if let Some(url) = ann(annotations::WEBHOOK_FAILURE) {
        vars.push((env::FAILURE_URL, url.to_owned()));
    }
    vars.push((
        env::KIND,
        ann(annotations::NOTIFY_KIND)
            .unwrap_or("VolumeBackup")
            .to_owned(),
    ));
    vars.push((
        env::HOST,
        ann(annotations::NOTIFY_HOST).unwrap_or_default().to_owned(),
    ));
    vars.push((
        env::VOLUME,
        ann(annotations::NOTIFY_VOLUME)
            .unwrap_or_default()
            .to_owned(),
    ));
    vars.push((env::TIMEOUT, format!("{}ms", cfg.timeout.as_millis())));
    vars.push((env::RESULT, pod::RESULT_FILE.to_owned()));
    vars.push((env::MODE, cfg.mode.as_str().to_owned()));
    if retried_in_place {
        vars.push((env::RESTART_POLICY, "OnFailure".to_owned()));
    }
    vars.extend(cfg.policy_env.iter().cloned());
    let mut mounts = vec![mount()];
    if ca.is_some() {
        vars.push((env::CA_FILE, pod::CA_FILE.to_owned()));
        mounts.push(
            json!({"name": pod::CA_VOLUME, "mountPath": pod::CA_MOUNT_PATH, "readOnly": true}),
        );
    }
    // The URLs, host and volume come from annotations and may hold `$`; unescaped, the kubelet
    // would expand or drop it before the notifier sees the value.
    let env: Vec<Value> = vars
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": pod::escape_expansion(&value)}))
        .collect();
    let mut c = json!({
        "name": pod::NOTIFIER_CONTAINER,
        "image": cfg.image,
        "command": [pod::IMAGE_BIN, "notify"],
        "env": env,
        "resources": cfg.resources,
        "securityContext": restricted(user),
        "volumeMounts": mounts,
    });
    if cfg.mode == NotifierMode::Sidecar {
        c["restartPolicy"] = json!("Always");
    }
    c
}

/// The entry of a pod spec list (containers, volumes) with that name.
fn named<'v>(list: &'v [Value], name: &str) -> Option<&'v Value> {
    list.iter().find(|c| c["name"] == name)
}

/// Checks that a stored CronJob really carries a current notifier, so a mutating webhook that
/// was down (it fails open) shows up instead of silently losing notifications. `Err` says what
/// is missing.
pub fn inspect(cron_job: &Value) -> Result<(), String> {
    let list = |name: &str| {
        pod_spec(cron_job)[name]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let (inits, containers, volumes) =
        (list("initContainers"), list("containers"), list("volumes"));
    if named(volumes, pod::VOLUME).is_none() || named(inits, pod::INSTALL_CONTAINER).is_none() {
        return Err("the pod template has no notifier (was the mutating webhook unavailable when the CronJob was written?)".into());
    }
    let notifier = named(inits, pod::NOTIFIER_CONTAINER)
        .filter(|c| c["restartPolicy"] == "Always")
        .or_else(|| named(containers, pod::NOTIFIER_CONTAINER))
        .ok_or("the pod template has no notifier container")?;
    let ann = |key: &str| annotation(cron_job, key);
    let wrapped = containers.iter().any(|c| {
        c["command"].as_array().is_some_and(|cmd| is_wrapped(cmd))
            && ann(annotations::NOTIFY_CONTAINER).is_none_or(|t| c["name"] == t)
    });
    if !wrapped {
        return Err("the backup container's command is not wrapped by the notifier".into());
    }
    let env = |name: &str| {
        notifier["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name))
            .and_then(|v| v["value"].as_str())
    };
    for (var, key) in [
        (env::SUCCESS_URL, annotations::WEBHOOK_SUCCESS),
        (env::FAILURE_URL, annotations::WEBHOOK_FAILURE),
    ] {
        if env(var).map(str::to_owned) != ann(key).map(pod::escape_expansion) {
            return Err(format!(
                "the notifier's {var} does not match annotation {key} (the mutating webhook has not seen the latest change)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notifier_timeout_is_one_the_notifier_accepts() {
        assert_eq!(parse_notifier_timeout("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["0s", "500us", "5m1s", "-1s", "ten"] {
            let e = parse_notifier_timeout(bad).unwrap_err();
            assert!(!e.contains('\n'), "{bad:?}: {e}");
        }
        let max = crate::notifier::cli::MAX_TIMEOUT;
        let limit = format!("{}s", max.as_secs());
        assert_eq!(parse_notifier_timeout(&limit), Ok(max));
        // What the injector writes into the notifier's env must parse there.
        let injected = format!("{}ms", max.as_millis());
        assert_eq!(crate::notifier::cli::parse_timeout(&injected), Ok(max));
    }

    #[test]
    fn the_ca_key_flag_takes_only_what_the_apiserver_accepts() {
        let long = "a".repeat(254);
        for good in ["ca.crt", "bundle.pem", "CA_1-x"] {
            assert_eq!(parse_config_map_key(good).as_deref(), Ok(good));
        }
        for bad in ["", ".", "..", "..data", "a/b", "a b", long.as_str()] {
            let e = parse_config_map_key(bad).unwrap_err();
            assert!(e.contains("is not a ConfigMap key"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_resource_flags_are_kept_as_the_apiserver_stores_them() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            injector: InjectorArgs,
        }
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "x",
            "--notifier-cpu-request",
            "0.01",
            "--notifier-memory-request",
            "16384Ki",
            "--notifier-memory-limit",
            "0.0625Gi",
        ])
        .unwrap();
        let i = cli.injector;
        assert_eq!(
            [
                i.notifier_cpu_request,
                i.notifier_memory_request,
                i.notifier_memory_limit
            ],
            ["10m", "16Mi", "64Mi"]
        );
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
                .unwrap()
                .injector
        };
        assert_eq!(parse(&[]).check(), Ok(()));
        assert_eq!(
            parse(&["--notifier-memory-request", "128Mi"]).check(),
            Err("--notifier-memory-request 128Mi is above --notifier-memory-limit 64Mi; the apiserver would refuse every backup pod".into())
        );
        assert_eq!(
            parse(&["--notifier-cpu-limit", "5m"]).check(),
            Err("--notifier-cpu-request 10m is above --notifier-cpu-limit 5m; the apiserver would refuse every backup pod".into())
        );
        let limited = parse(&["--notifier-cpu-limit", "0.1"]);
        assert_eq!(limited.check(), Ok(()));
        let cfg = InjectorConfig::new(&limited, Vec::new());
        assert_eq!(
            cfg.resources["limits"],
            json!({"cpu": "100m", "memory": "64Mi"})
        );
        assert_eq!(
            InjectorConfig::new(&parse(&[]), Vec::new()).resources["limits"],
            json!({"memory": "64Mi"})
        );
        assert_eq!(
            parse(&[]).notifier_run_as_user,
            RunAsUser(Some(pod::IMAGE_USER))
        );
        assert_eq!(
            parse(&["--notifier-run-as-user", "none"]).notifier_run_as_user,
            RunAsUser(None)
        );
        assert_eq!(
            parse(&["--notifier-run-as-user", "1000650000"]).notifier_run_as_user,
            RunAsUser(Some(1_000_650_000))
        );
        for (bad, why) in [
            (
                "0",
                "0 is root; the injected containers run non-root (give another ID, or none)",
            ),
            ("-1", "\"-1\" is not a user ID (1 to 2147483647) or none"),
            (
                "2147483648",
                "\"2147483648\" is not a user ID (1 to 2147483647) or none",
            ),
            (
                "nobody",
                "\"nobody\" is not a user ID (1 to 2147483647) or none",
            ),
        ] {
            assert_eq!(parse_run_as_user(bad), Err(why.to_owned()), "{bad}");
        }
        let e = Cli::try_parse_from(["x", "--notifier-memory-limit", "64MB"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.lines().next().unwrap_or_default().contains(
                "invalid value '64MB' for '--notifier-memory-limit <NOTIFIER_MEMORY_LIMIT>': \"64MB\" is not a quantity: unknown suffix \"MB\""
            ),
            "{e}"
        );
    }
}

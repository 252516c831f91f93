//! Turning a PodSpec into ready-to-spawn containers. Everything that can be wrong with the input
//! is found here, before any container starts.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, KeyToPath, PodSpec, Volume};

use super::cluster::{self, ClusterObjects, ObjectData, Wanted};
use super::expand::expand;
use super::image::ResolvedImage;
use super::sandbox::{self, BindSpec, HostLayout, SandboxSpec, Step};
use super::{ContainerKind, RunnerConfig};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// What the downward API reports as the node and the pod/host IP.
const NODE_NAME: &str = "local-pod-runner";
const LOCAL_IP: &str = "127.0.0.1";

pub(crate) struct PreparedContainer {
    pub name: String,
    pub kind: ContainerKind,
    pub image: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub steps: Arc<Vec<Step>>,
    pub log_path: PathBuf,
}

pub(crate) struct PreparedPod {
    /// Holds emptyDirs, materialised Secrets/ConfigMaps and root mount points; removed on drop.
    pub work_dir: tempfile::TempDir,
    /// Init containers (sidecars included) in order, then the regular containers.
    pub containers: Vec<PreparedContainer>,
    pub grace: Duration,
    pub active_deadline: Option<Duration>,
    pub warnings: Vec<String>,
}

struct VolumeDir {
    path: PathBuf,
    read_only: bool,
}

pub(crate) fn prepare(
    config: &RunnerConfig,
    spec: &PodSpec,
    layout: &HostLayout,
) -> Result<PreparedPod> {
    let mut warnings = Vec::new();
    validate(spec, &mut warnings)?;
    config.images.validate()?;
    let objects = cluster::fetch(
        config.kubeconfig.as_deref(),
        &config.namespace,
        wanted_objects(spec),
    )?;

    let parent = match &config.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir(),
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("work directory {} does not exist", parent.display()))?;
    let work_dir = tempfile::Builder::new()
        .prefix("local-pod-runner-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a pod directory in {}", parent.display()))?;
    std::fs::create_dir_all(&config.output_dir).with_context(|| {
        format!(
            "cannot create output directory {}",
            config.output_dir.display()
        )
    })?;
    let output_dir = config
        .output_dir
        .canonicalize()
        .with_context(|| format!("output directory {}", config.output_dir.display()))?;

    let volumes = prepare_volumes(config, spec, work_dir.path(), &objects)?;

    let init = spec.init_containers.iter().flatten().map(|c| {
        let kind = if c.restart_policy.as_deref() == Some("Always") {
            ContainerKind::Sidecar
        } else {
            ContainerKind::Init
        };
        (c, kind)
    });
    let main = spec.containers.iter().map(|c| (c, ContainerKind::Main));
    let mut containers = Vec::new();
    for (container, kind) in init.chain(main) {
        let prepared = prepare_container(
            config,
            spec,
            container,
            kind,
            &volumes,
            &objects,
            layout,
            work_dir.path(),
            &output_dir,
        )
        .with_context(|| format!("container {:?}", container.name))?;
        containers.push(prepared);
    }

    let grace = match spec.termination_grace_period_seconds {
        None => DEFAULT_GRACE,
        Some(s) if s >= 0 => Duration::from_secs(s.unsigned_abs()),
        Some(s) => bail!("spec.terminationGracePeriodSeconds is negative ({s})"),
    };
    let spec_deadline = match spec.active_deadline_seconds {
        None => None,
        Some(s) if s > 0 => Some(Duration::from_secs(s.unsigned_abs())),
        Some(s) => bail!("spec.activeDeadlineSeconds must be positive ({s})"),
    };
    let active_deadline = match (config.active_deadline, spec_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(PreparedPod {
        work_dir,
        containers,
        grace,
        active_deadline,
        warnings,
    })
}

fn validate(spec: &PodSpec, warnings: &mut Vec<String>) -> Result<()> {
    if spec.containers.is_empty() {
        bail!("spec.containers is empty");
    }
    match spec.restart_policy.as_deref() {
        None | Some("Never") | Some("OnFailure") => {}
        Some("Always") => bail!(
            "spec.restartPolicy Always is not supported: the local pod runner runs a pod to completion (use Never or OnFailure)"
        ),
        Some(other) => bail!("spec.restartPolicy {other:?} is not valid"),
    }
    let mut names = BTreeSet::new();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("spec.initContainers", c));
    let main = spec.containers.iter().map(|c| ("spec.containers", c));
    for (field, c) in init.chain(main) {
        let name = &c.name;
        if !is_dns_label(name) {
            bail!("{field}: container name {name:?} is not a DNS-1123 label");
        }
        if !names.insert(name.clone()) {
            bail!("{field}: container name {name:?} is used twice");
        }
        match (field, c.restart_policy.as_deref()) {
            (_, None) | ("spec.initContainers", Some("Always")) => {}
            ("spec.initContainers", Some(other)) => {
                bail!("{field}[{name}].restartPolicy {other:?}: only Always is allowed")
            }
            (_, Some(_)) => {
                bail!("{field}[{name}].restartPolicy is only allowed on init containers")
            }
        }
        if c.lifecycle.is_some() {
            bail!(
                "{field}[{name}].lifecycle: postStart/preStop hooks are not supported by the local pod runner"
            );
        }
        for (probe, set) in [
            ("startupProbe", c.startup_probe.is_some()),
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
        ] {
            if set {
                warnings.push(format!(
                    "{field}[{name}].{probe} is ignored: probes are not run"
                ));
            }
        }
    }
    let mut volume_names = BTreeSet::new();
    for volume in spec.volumes.iter().flatten() {
        if !is_dns_label(&volume.name) {
            bail!(
                "spec.volumes: volume name {:?} is not a DNS-1123 label",
                volume.name
            );
        }
        if !volume_names.insert(volume.name.clone()) {
            bail!("spec.volumes: volume name {:?} is used twice", volume.name);
        }
    }
    Ok(())
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

fn wanted_objects(spec: &PodSpec) -> Wanted {
    let mut wanted = Wanted::default();
    let want = |map: &mut BTreeMap<String, String>, name: &str, user: String| {
        map.entry(name.to_owned()).or_insert(user);
    };
    for c in all_containers(spec) {
        for env in c.env.iter().flatten() {
            let user = format!("container {:?} env {}", c.name, env.name);
            let Some(from) = &env.value_from else {
                continue;
            };
            if let Some(r) = &from.secret_key_ref {
                want(&mut wanted.secrets, &r.name, user.clone());
            }
            if let Some(r) = &from.config_map_key_ref {
                want(&mut wanted.config_maps, &r.name, user);
            }
        }
        for from in c.env_from.iter().flatten() {
            let user = format!("container {:?} envFrom", c.name);
            if let Some(r) = &from.secret_ref {
                want(&mut wanted.secrets, &r.name, user.clone());
            }
            if let Some(r) = &from.config_map_ref {
                want(&mut wanted.config_maps, &r.name, user);
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        let user = format!("volume {:?}", v.name);
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_ref()) {
            want(&mut wanted.secrets, name, user.clone());
        }
        if let Some(c) = &v.config_map {
            want(&mut wanted.config_maps, &c.name, user);
        }
    }
    wanted
}

/// The name of a volume's source type, from its JSON form (the one key besides `name`).
fn volume_type(volume: &Volume) -> String {
    serde_json::to_value(volume)
        .ok()
        .and_then(|v| {
            v.as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        })
        .unwrap_or_else(|| "none".to_owned())
}

fn prepare_volumes(
    config: &RunnerConfig,
    spec: &PodSpec,
    work_dir: &Path,
    objects: &ClusterObjects,
) -> Result<BTreeMap<String, VolumeDir>> {
    let mut volumes = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let name = &volume.name;
        let own_dir = work_dir.join("volumes").join(name);
        let prepared = if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&own_dir)
                .with_context(|| format!("volume {name:?}: cannot create {}", own_dir.display()))?;
            // 0777 like the kubelet's emptyDir, so containers of any user can write.
            std::fs::set_permissions(&own_dir, std::fs::Permissions::from_mode(0o777))
                .with_context(|| format!("volume {name:?}: cannot chmod {}", own_dir.display()))?;
            VolumeDir {
                path: own_dir,
                read_only: false,
            }
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let dir = config.pvcs.get(&claim.claim_name).with_context(|| {
                format!(
                    "volume {name:?}: persistentVolumeClaim {:?} is not mapped to a host directory (give --pvc {}=DIR)",
                    claim.claim_name, claim.claim_name
                )
            })?;
            let path = dir.canonicalize().with_context(|| {
                format!(
                    "volume {name:?}: host directory {} for claim {:?}",
                    dir.display(),
                    claim.claim_name
                )
            })?;
            if !path.is_dir() {
                bail!(
                    "volume {name:?}: {} for claim {:?} is not a directory",
                    path.display(),
                    claim.claim_name
                );
            }
            VolumeDir {
                path,
                read_only: claim.read_only == Some(true),
            }
        } else if let Some(secret) = &volume.secret {
            let secret_name = secret
                .secret_name
                .as_deref()
                .with_context(|| format!("volume {name:?}: secret.secretName is missing"))?;
            materialise(
                &own_dir,
                objects.secret(secret_name)?,
                secret.items.as_deref(),
                secret.default_mode,
                secret.optional == Some(true),
                &format!("volume {name:?}: secret {}/{secret_name}", config.namespace),
            )?;
            // The kubelet always mounts Secret and ConfigMap volumes read-only.
            VolumeDir {
                path: own_dir,
                read_only: true,
            }
        } else if let Some(cm) = &volume.config_map {
            materialise(
                &own_dir,
                objects.config_map(&cm.name)?,
                cm.items.as_deref(),
                cm.default_mode,
                cm.optional == Some(true),
                &format!(
                    "volume {name:?}: configmap {}/{}",
                    config.namespace, cm.name
                ),
            )?;
            VolumeDir {
                path: own_dir,
                read_only: true,
            }
        } else {
            bail!(
                "volume {name:?}: type {} is not supported by the local pod runner (supported: emptyDir, persistentVolumeClaim, secret, configMap)",
                volume_type(volume)
            );
        };
        let path = prepared
            .path
            .canonicalize()
            .with_context(|| format!("volume {name:?}"))?;
        volumes.insert(
            name.clone(),
            VolumeDir {
                path,
                read_only: prepared.read_only,
            },
        );
    }
    Ok(volumes)
}

/// A relative path without `..`, as Kubernetes requires for item paths and subPaths.
fn check_relative(path: &str, what: &str) -> Result<()> {
    let p = Path::new(path);
    if path.is_empty()
        || p.is_absolute()
        || p.components().any(|c| matches!(c, Component::ParentDir))
    {
        bail!("{what} {path:?} must be a relative path without '..'");
    }
    Ok(())
}

fn materialise(
    dir: &Path,
    data: &ObjectData,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    what: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{what}: cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("{what}: cannot chmod {}", dir.display()))?;
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        bail!("{what} does not exist");
    };
    let mode_of = |mode: Option<i32>| -> Result<u32> {
        match mode.or(default_mode) {
            None => Ok(0o644),
            Some(m) if (0..=0o777).contains(&m) => Ok(m.unsigned_abs()),
            Some(m) => bail!("{what}: mode {m} is outside 0..=0777"),
        }
    };
    let files: Vec<(String, &Vec<u8>, u32)> = match items {
        None => data
            .iter()
            .map(|(key, value)| Ok((key.clone(), value, mode_of(None)?)))
            .collect::<Result<_>>()?,
        Some(items) => {
            let mut files = Vec::new();
            for item in items {
                match data.get(&item.key) {
                    Some(value) => files.push((item.path.clone(), value, mode_of(item.mode)?)),
                    None if optional => {}
                    None => bail!("{what} has no key {:?}", item.key),
                }
            }
            files
        }
    };
    for (path, value, mode) in files {
        check_relative(&path, &format!("{what}: file path"))?;
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{what}: cannot create {}", parent.display()))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&file)
            .with_context(|| format!("{what}: cannot create {}", file.display()))?;
        std::io::Write::write_all(&mut out, value)
            .with_context(|| format!("{what}: cannot write {}", file.display()))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("{what}: cannot chmod {}", file.display()))?;
    }
    Ok(())
}

fn utf8(value: &[u8], what: &str) -> Result<String> {
    String::from_utf8(value.to_vec()).with_context(|| format!("{what} is not UTF-8"))
}

/// Sets `name` in an ordered environment, replacing an earlier value in place.
fn set_env(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(entry) => entry.1 = value,
        None => env.push((name.to_owned(), value)),
    }
}

fn lookup(env: &[(String, String)]) -> impl Fn(&str) -> Option<String> + '_ {
    |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// The container's environment from `envFrom` and `env`, as the kubelet builds it: `envFrom`
/// first, then `env` in order, each value expanded against the variables defined before it.
fn spec_env(
    config: &RunnerConfig,
    spec: &PodSpec,
    c: &Container,
    objects: &ClusterObjects,
) -> Result<Vec<(String, String)>> {
    let ns = &config.namespace;
    let mut env: Vec<(String, String)> = Vec::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (data, optional, what) = if let Some(r) = &from.secret_ref {
            (
                objects.secret(&r.name)?,
                r.optional,
                format!("envFrom secret {ns}/{}", r.name),
            )
        } else if let Some(r) = &from.config_map_ref {
            (
                objects.config_map(&r.name)?,
                r.optional,
                format!("envFrom configmap {ns}/{}", r.name),
            )
        } else {
            bail!("envFrom entry has neither secretRef nor configMapRef");
        };
        let Some(data) = data else {
            if optional == Some(true) {
                continue;
            }
            bail!("{what} does not exist");
        };
        for (key, value) in data {
            let name = format!("{prefix}{key}");
            // Like the kubelet, skip keys that cannot be variable names.
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                continue;
            }
            set_env(&mut env, &name, utf8(value, &format!("{what} key {key}"))?);
        }
    }
    for var in c.env.iter().flatten() {
        let name = &var.name;
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            bail!("env name {name:?} is not valid");
        }
        // As the kubelet: an empty value counts as none, so valueFrom decides.
        let value = match (
            var.value.as_deref().filter(|v| !v.is_empty()),
            &var.value_from,
        ) {
            (Some(value), _) => expand(value, lookup(&env)),
            (None, None) => String::new(),
            (None, Some(from)) => {
                if let Some(r) = &from.secret_key_ref {
                    let what = format!("env {name}: secret {ns}/{}", r.name);
                    match objects.secret(&r.name)? {
                        Some(data) => match data.get(&r.key) {
                            Some(v) => utf8(v, &format!("{what} key {}", r.key))?,
                            None if r.optional == Some(true) => continue,
                            None => bail!("{what} has no key {:?}", r.key),
                        },
                        None if r.optional == Some(true) => continue,
                        None => bail!("{what} does not exist"),
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    let what = format!("env {name}: configmap {ns}/{}", r.name);
                    match objects.config_map(&r.name)? {
                        Some(data) => match data.get(&r.key) {
                            Some(v) => utf8(v, &format!("{what} key {}", r.key))?,
                            None if r.optional == Some(true) => continue,
                            None => bail!("{what} has no key {:?}", r.key),
                        },
                        None if r.optional == Some(true) => continue,
                        None => bail!("{what} does not exist"),
                    }
                } else if let Some(r) = &from.field_ref {
                    field_ref(config, spec, &r.field_path)
                        .with_context(|| format!("env {name}: fieldRef"))?
                } else if from.resource_field_ref.is_some() {
                    bail!("env {name}: resourceFieldRef is not supported by the local pod runner");
                } else {
                    bail!("env {name}: valueFrom is empty");
                }
            }
        };
        set_env(&mut env, name, value);
    }
    Ok(env)
}

fn field_ref(config: &RunnerConfig, spec: &PodSpec, path: &str) -> Result<String> {
    let in_map = |map: &BTreeMap<String, String>, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.get(key).cloned().unwrap_or_default())
    };
    if let Some(v) = in_map(&config.labels, "metadata.labels['") {
        return Ok(v);
    }
    if let Some(v) = in_map(&config.annotations, "metadata.annotations['") {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => config.pod_name.clone(),
        "metadata.namespace" => config.namespace.clone(),
        "metadata.uid" => config
            .pod_uid
            .clone()
            .with_context(|| "metadata.uid is unknown (the manifest has no uid)")?,
        "spec.nodeName" => NODE_NAME.to_owned(),
        "spec.serviceAccountName" => spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => {
            LOCAL_IP.to_owned()
        }
        other => bail!("field path {other:?} is not supported"),
    })
}

fn id_of(value: Option<i64>, what: &str) -> Result<Option<u32>> {
    value
        .map(|v| u32::try_from(v).with_context(|| format!("{what} {v} is not a valid id")))
        .transpose()
}

#[allow(clippy::too_many_arguments)]
fn prepare_container(
    config: &RunnerConfig,
    spec: &PodSpec,
    c: &Container,
    kind: ContainerKind,
    volumes: &BTreeMap<String, VolumeDir>,
    objects: &ClusterObjects,
    layout: &HostLayout,
    work_dir: &Path,
    output_dir: &Path,
) -> Result<PreparedContainer> {
    let image = c.image.clone().unwrap_or_default();
    if image.is_empty() {
        bail!("image is missing");
    }
    let resolved = config.images.resolve(&image)?;

    let env = spec_env(config, spec, c, objects)?;
    let expand_all =
        |list: &[String]| -> Vec<String> { list.iter().map(|s| expand(s, lookup(&env))).collect() };
    let args = expand_all(c.args.as_deref().unwrap_or_default());
    let argv = match c.command.as_deref() {
        Some(command) if !command.is_empty() => {
            let mut argv = expand_all(command);
            argv.extend(args);
            argv
        }
        _ => {
            let entrypoint = match &resolved {
                ResolvedImage::Mapped(spec) if !spec.entrypoint.is_empty() => &spec.entrypoint,
                _ => bail!(
                    "no command, and image {image:?} has no entrypoint in the image map (give --entrypoint {image}=PROGRAM)"
                ),
            };
            let mut argv = entrypoint.clone();
            argv.extend(args);
            argv
        }
    };

    let pod_sc = spec.security_context.as_ref();
    let sc = c.security_context.as_ref();
    // As the kubelet: the securityContext's IDs, else the image's USER, else root.
    let image_user = match &resolved {
        ResolvedImage::Mapped(spec) => spec.user,
        ResolvedImage::HostOnly => None,
    };
    let run_as_user = id_of(
        sc.and_then(|s| s.run_as_user)
            .or(pod_sc.and_then(|s| s.run_as_user)),
        "runAsUser",
    )?;
    let uid = run_as_user.or(image_user.map(|(uid, _)| uid)).unwrap_or(0);
    // The image's group goes with the image's user only: the kubelet gives another runAsUser
    // without runAsGroup the group of that user in the image (root here, with no passwd file).
    let gid = id_of(
        sc.and_then(|s| s.run_as_group)
            .or(pod_sc.and_then(|s| s.run_as_group)),
        "runAsGroup",
    )?
    .or(image_user
        .filter(|_| run_as_user.is_none())
        .map(|(_, gid)| gid))
    .unwrap_or(0);
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root));
    if non_root == Some(true) && uid == 0 {
        bail!("runAsNonRoot is true but the container would run as root (set runAsUser)");
    }
    let mut groups = vec![gid];
    for g in pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
    {
        groups.extend(id_of(Some(g), "supplementalGroups")?);
    }
    groups.extend(id_of(pod_sc.and_then(|s| s.fs_group), "fsGroup")?);
    groups.sort_unstable();
    groups.dedup();

    let mut binds = Vec::new();
    if let ResolvedImage::Mapped(image_spec) = &resolved {
        for file in &image_spec.files {
            let host_path = file.host_path.canonicalize().with_context(|| {
                format!("image {image}: host file {}", file.host_path.display())
            })?;
            binds.push(BindSpec {
                container_path: file.container_path.clone(),
                host_path,
                read_only: true,
            });
        }
    }
    let mut mounts: Vec<BindSpec> = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let what = format!("volumeMount {:?} at {:?}", m.name, m.mount_path);
        let volume = volumes
            .get(&m.name)
            .with_context(|| format!("{what}: there is no volume {:?}", m.name))?;
        let container_path = PathBuf::from(&m.mount_path);
        if !container_path.is_absolute() || container_path == Path::new("/") {
            bail!("{what}: mountPath must be an absolute path other than /");
        }
        let sub_path = match (&m.sub_path, &m.sub_path_expr) {
            (Some(_), Some(_)) => bail!("{what}: subPath and subPathExpr are mutually exclusive"),
            (Some(p), None) => Some(p.clone()),
            (None, Some(e)) => {
                // As the kubelet (ExpandContainerVolumeMounts): a variable that is not set, or
                // empty, fails the container instead of naming a directory after itself.
                let missing = std::cell::RefCell::new(std::collections::BTreeSet::new());
                let expanded = expand(e, |name| {
                    let value = lookup(&env)(name).filter(|v| !v.is_empty());
                    if value.is_none() {
                        missing.borrow_mut().insert(name.to_owned());
                    }
                    Some(value.unwrap_or_default())
                });
                let missing = missing.into_inner();
                if !missing.is_empty() {
                    let names: Vec<String> = missing.into_iter().collect();
                    bail!(
                        "{what}: subPathExpr: missing value for {}",
                        names.join(", ")
                    );
                }
                Some(expanded)
            }
            (None, None) => None,
        };
        let mut host_path = volume.path.clone();
        if let Some(sub) = sub_path.filter(|s| !s.is_empty()) {
            check_relative(&sub, &format!("{what}: subPath"))?;
            host_path = volume.path.join(&sub);
            if !host_path.exists() {
                // The kubelet creates a missing subPath as a directory.
                std::fs::create_dir_all(&host_path).with_context(|| {
                    format!("{what}: cannot create subPath {}", host_path.display())
                })?;
            }
            host_path = host_path
                .canonicalize()
                .with_context(|| format!("{what}: subPath"))?;
            if !host_path.starts_with(&volume.path) {
                bail!("{what}: subPath {sub:?} leads outside the volume");
            }
        }
        mounts.push(BindSpec {
            container_path,
            host_path,
            read_only: volume.read_only || m.read_only == Some(true),
        });
    }
    // Parents before children, like container runtimes sort mounts.
    mounts.sort_by_key(|b| b.container_path.components().count());
    binds.extend(mounts);

    let working_dir = match c.working_dir.as_deref() {
        None | Some("") => PathBuf::from("/"),
        Some(dir) if Path::new(dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => bail!("workingDir {dir:?} is not absolute"),
    };
    let root_dir = work_dir.join("roots").join(&c.name);
    std::fs::create_dir_all(&root_dir)
        .with_context(|| format!("cannot create {}", root_dir.display()))?;
    let steps = sandbox::build_steps(
        &SandboxSpec {
            root_dir,
            binds,
            working_dir,
            read_only_root: sc.and_then(|s| s.read_only_root_filesystem) == Some(true),
            uid,
            gid,
            groups,
            no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        },
        layout,
    )?;

    // What the image and the runtime would provide, overridden by the pod's own variables.
    let hostname = spec
        .hostname
        .clone()
        .unwrap_or_else(|| config.pod_name.clone());
    let home = if uid == 0 { "/root" } else { "/" };
    let mut process_env = vec![
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("HOSTNAME".to_owned(), hostname),
        ("HOME".to_owned(), home.to_owned()),
    ];
    for (k, v) in env {
        set_env(&mut process_env, &k, v);
    }
    Ok(PreparedContainer {
        name: c.name.clone(),
        kind,
        image,
        argv,
        env: process_env,
        steps: Arc::new(steps),
        log_path: output_dir.join(format!("{}.log", c.name)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("notifier-install"));
        assert!(!is_dns_label("Upper"));
        assert!(!is_dns_label("../x"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(""));
    }

    #[test]
    fn relative_paths() {
        assert!(check_relative("a/b", "p").is_ok());
        assert!(check_relative("/a", "p").is_err());
        assert!(check_relative("a/../../b", "p").is_err());
        assert!(check_relative("", "p").is_err());
    }
}

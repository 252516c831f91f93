//! Reading the Secrets and ConfigMaps a pod references from a real apiserver.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Key/value data of one object; `None` when the object does not exist.
pub(crate) type ObjectData = Option<BTreeMap<String, Vec<u8>>>;

/// The objects a pod needs, by name, each with the first place that uses it (for messages).
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    pub secrets: BTreeMap<String, String>,
    pub config_maps: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub(crate) struct ClusterObjects {
    pub secrets: BTreeMap<String, ObjectData>,
    pub config_maps: BTreeMap<String, ObjectData>,
}

impl ClusterObjects {
    pub(crate) fn secret(&self, name: &str) -> Result<&ObjectData> {
        self.secrets
            .get(name)
            .with_context(|| format!("secret {name:?} was not looked up"))
    }

    pub(crate) fn config_map(&self, name: &str) -> Result<&ObjectData> {
        self.config_maps
            .get(name)
            .with_context(|| format!("configmap {name:?} was not looked up"))
    }
}

/// Fetches every wanted object of `namespace` through the kubeconfig, or fails with a message
/// that names the first reference when there is no kubeconfig.
pub(crate) fn fetch(
    kubeconfig: Option<&Path>,
    namespace: &str,
    wanted: Wanted,
) -> Result<ClusterObjects> {
    if wanted.secrets.is_empty() && wanted.config_maps.is_empty() {
        return Ok(ClusterObjects::default());
    }
    let Some(kubeconfig) = kubeconfig else {
        let (kind, name, user) = wanted
            .secrets
            .iter()
            .map(|(n, u)| ("secret", n, u))
            .chain(wanted.config_maps.iter().map(|(n, u)| ("configmap", n, u)))
            .next()
            .ok_or_else(|| anyhow!("no object wanted"))?;
        bail!(
            "{user} needs {kind} {namespace}/{name}: give --kubeconfig (or KUBECONFIG) so it can be read from the apiserver"
        );
    };
    let kubeconfig: PathBuf = kubeconfig.to_owned();
    let namespace = namespace.to_owned();
    // A thread with its own runtime: the caller may itself be inside a tokio runtime, where
    // blocking on another one would panic.
    std::thread::spawn(move || -> Result<ClusterObjects> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a tokio runtime for apiserver calls")?;
        runtime.block_on(fetch_async(&kubeconfig, &namespace, wanted))
    })
    .join()
    .map_err(|_| anyhow!("the apiserver lookup thread panicked"))?
}

async fn fetch_async(kubeconfig: &Path, namespace: &str, wanted: Wanted) -> Result<ClusterObjects> {
    // Like KUBECONFIG for kubectl, a ':'-separated list is merged, missing files skipped.
    let mut file: Option<Kubeconfig> = None;
    for path in std::env::split_paths(kubeconfig.as_os_str()) {
        if path.as_os_str().is_empty() || !path.exists() {
            continue;
        }
        let next = Kubeconfig::read_from(&path)
            .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
        file = Some(match file {
            None => next,
            Some(first) => first
                .merge(next)
                .with_context(|| format!("cannot merge kubeconfig {}", path.display()))?,
        });
    }
    let file =
        file.with_context(|| format!("kubeconfig {} does not exist", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {} is not usable", kubeconfig.display()))?;
    let client = Client::try_from(config).context("cannot build a Kubernetes client")?;
    let mut objects = ClusterObjects::default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in wanted.secrets.keys() {
        let secret = get(&secrets, name, "secret", namespace).await?;
        let data = secret.map(|s| {
            let mut data: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            data
        });
        objects.secrets.insert(name.clone(), data);
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client, namespace);
    for name in wanted.config_maps.keys() {
        let config_map = get(&config_maps, name, "configmap", namespace).await?;
        let data = config_map.map(|c| {
            let mut data: BTreeMap<String, Vec<u8>> = c
                .binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in c.data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            data
        });
        objects.config_maps.insert(name.clone(), data);
    }
    Ok(objects)
}

async fn get<K>(api: &Api<K>, name: &str, kind: &str, namespace: &str) -> Result<Option<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    tokio::time::timeout(CALL_TIMEOUT, api.get_opt(name))
        .await
        .map_err(|_| anyhow!("reading {kind} {namespace}/{name} timed out after {CALL_TIMEOUT:?}"))?
        .with_context(|| format!("cannot read {kind} {namespace}/{name}"))
}

//! Self-managed certificates, run by the leader: the CA and the serving certificate live in a
//! Secret; they are created when missing and rotated ahead of expiry, and the CA bundle is
//! written into both webhook configurations.
//!
//! A CA rotation never leaves a moment at which a replica serves a certificate the apiserver
//! does not trust:
//! 1. `stable`: the bundle is the signing CA;
//! 2. `bundle-extended`: a new CA is added to the bundle (old + new), nothing signed by it yet;
//! 3. `signing-switched`: after a step, the serving certificate is reissued by the new CA;
//!    the bundle still holds both, so old and new serving certificates are trusted;
//! 4. after another step, the old CA leaves the bundle.
//!
//! Serving certificates alone are reissued by the same CA, which the bundle already trusts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::certs::{self, PemPair};

/// Field manager of the caBundle writes (kept apart from the controller's).
pub const FIELD_MANAGER: &str = "backup-operator-ca-injector";
const PHASE: &str = "backups.k8s.bnerd.com/ca-phase";
const SINCE: &str = "backups.k8s.bnerd.com/ca-phase-since";

#[derive(Clone, Debug)]
pub struct RotationConfig {
    pub namespace: String,
    pub secret: String,
    /// Name of both webhook configurations.
    pub webhook_configuration: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
}

impl RotationConfig {
    /// Time between the phases of a CA rotation, and between checks.
    pub fn step(&self) -> Duration {
        (self.cert_validity / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }
}

fn now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

/// Renew when less than a third of the lifetime is left.
fn due(pem: &str) -> Result<bool> {
    let (from, to) = certs::validity_pem(pem)?;
    Ok(to - now() < (to - from) / 3)
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Result<String> {
    let bytes = data
        .get(key)
        .ok_or_else(|| anyhow!("the Secret has no {key}"))?;
    String::from_utf8(bytes.0.clone()).with_context(|| format!("{key} is not text"))
}

/// Runs one check: creates, renews or advances a rotation, then injects the bundle. Returns
/// when to check again.
pub async fn reconcile(client: &kube::Client, cfg: &RotationConfig) -> Result<Duration> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let issue = |ca: &PemPair| {
        let (_, ca_until) = certs::validity_pem(&ca.cert)?;
        // A serving certificate never outlives the CA that signed it.
        let left = Duration::from_secs(u64::try_from(ca_until - now()).unwrap_or(0));
        certs::issue_serving(ca, &cfg.dns_names, &cfg.ips, cfg.cert_validity.min(left))
    };
    let bundle = match secrets
        .get_opt(&cfg.secret)
        .await
        .context("reading the certificate Secret")?
    {
        None => {
            let ca = certs::generate_ca("backup-operator-ca", cfg.ca_validity)?;
            let serving = issue(&ca)?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(cfg.secret.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    annotations: Some(phase_annotations("stable")),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(data(&ca.cert, &ca, &serving, None)),
                ..Default::default()
            };
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .context("creating the certificate Secret")?;
            tracing::info!(secret = %cfg.secret, "created the CA and serving certificate");
            ca.cert
        }
        Some(mut secret) => {
            let d = secret.data.clone().unwrap_or_default();
            let signing = PemPair {
                cert: text(&d, "signing-ca.crt")?,
                key: text(&d, "signing-ca.key")?,
            };
            let bundle = text(&d, "ca.crt")?;
            let serving = PemPair {
                cert: text(&d, "tls.crt")?,
                key: text(&d, "tls.key")?,
            };
            let ann = secret.metadata.annotations.clone().unwrap_or_default();
            let phase = ann.get(PHASE).map(String::as_str).unwrap_or("stable");
            let since: i64 = ann.get(SINCE).and_then(|s| s.parse().ok()).unwrap_or(0);
            let step_done = now() - since >= i64::try_from(cfg.step().as_secs()).unwrap_or(1);
            let next = match (d.get("next-ca.crt"), d.get("next-ca.key")) {
                (Some(c), Some(k)) => Some(PemPair {
                    cert: String::from_utf8_lossy(&c.0).into_owned(),
                    key: String::from_utf8_lossy(&k.0).into_owned(),
                }),
                _ => None,
            };
            let change = match (phase, next) {
                ("stable", _) if due(&signing.cert)? => {
                    let new_ca = certs::generate_ca("backup-operator-ca", cfg.ca_validity)?;
                    tracing::info!("CA rotation 1/3: trusting the new CA beside the old one");
                    let bundle = format!("{}{}", signing.cert, new_ca.cert);
                    Some((
                        "bundle-extended",
                        data(&bundle, &signing, &serving, Some(&new_ca)),
                    ))
                }
                ("stable", _) if due(&serving.cert)? => {
                    tracing::info!("renewing the serving certificate");
                    Some(("stable", data(&bundle, &signing, &issue(&signing)?, None)))
                }
                ("bundle-extended", Some(new_ca)) if step_done => {
                    tracing::info!("CA rotation 2/3: serving a certificate of the new CA");
                    Some((
                        "signing-switched",
                        data(&bundle, &new_ca, &issue(&new_ca)?, None),
                    ))
                }
                ("signing-switched", _) if step_done => {
                    tracing::info!("CA rotation 3/3: the old CA leaves the bundle");
                    Some(("stable", data(&signing.cert, &signing, &serving, None)))
                }
                _ => None,
            };
            match change {
                Some((phase, data)) => {
                    let bundle = text(&data, "ca.crt")?;
                    secret.data = Some(data);
                    secret.metadata.annotations = Some(phase_annotations(phase));
                    // Guarded by resourceVersion: a second writer fails instead of interleaving.
                    secrets
                        .replace(&cfg.secret, &PostParams::default(), &secret)
                        .await
                        .context("updating the certificate Secret")?;
                    bundle
                }
                None => bundle,
            }
        }
    };
    inject_ca_bundle(client, &cfg.webhook_configuration, bundle.as_bytes()).await?;
    Ok(cfg.step())
}

fn phase_annotations(phase: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (PHASE.to_owned(), phase.to_owned()),
        (SINCE.to_owned(), now().to_string()),
    ])
}

fn data(
    bundle: &str,
    signing: &PemPair,
    serving: &PemPair,
    next: Option<&PemPair>,
) -> BTreeMap<String, ByteString> {
    let mut d = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        d.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
    };
    put("ca.crt", bundle);
    put("signing-ca.crt", &signing.cert);
    put("signing-ca.key", &signing.key);
    put("tls.crt", &serving.cert);
    put("tls.key", &serving.key);
    if let Some(n) = next {
        put("next-ca.crt", &n.cert);
        put("next-ca.key", &n.key);
    }
    d
}

/// Writes `bundle` as caBundle of every webhook in both configurations, by server-side apply
/// of just that field (webhooks are a list keyed by name, so nothing else is touched). Skips a
/// configuration that already carries it, and one that does not exist (not installed yet).
pub async fn inject_ca_bundle(client: &kube::Client, name: &str, bundle: &[u8]) -> Result<()> {
    inject::<ValidatingWebhookConfiguration>(client, name, bundle, |c| {
        c.webhooks
            .iter()
            .flatten()
            .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
            .collect()
    })
    .await?;
    inject::<MutatingWebhookConfiguration>(client, name, bundle, |c| {
        c.webhooks
            .iter()
            .flatten()
            .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
            .collect()
    })
    .await
}

async fn inject<K>(
    client: &kube::Client,
    name: &str,
    bundle: &[u8],
    hooks: impl Fn(&K) -> Vec<(String, Option<ByteString>)>,
) -> Result<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::all(client.clone());
    let Some(current) = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading the {kind} {name}"))?
    else {
        return Ok(());
    };
    let hooks = hooks(&current);
    if hooks
        .iter()
        .all(|(_, b)| b.as_ref().is_some_and(|b| b.0 == bundle))
    {
        return Ok(());
    }
    let encoded = json!(ByteString(bundle.to_vec()));
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": hooks.iter().map(|(n, _)| json!({"name": n, "clientConfig": {"caBundle": encoded}})).collect::<Vec<_>>(),
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .with_context(|| format!("writing caBundle into the {kind} {name}"))?;
    tracing::info!(%kind, %name, "wrote the CA bundle");
    Ok(())
}

//! The serving certificate: loaded from PEM files and reloaded without a restart.
//!
//! Kubernetes updates a mounted Secret by swapping a `..data` symlink, which a per-file inotify
//! watch misses (k8s #111947), so the files are re-read on directory events *and* on a timer.
//! A reload that fails (half-written files, a key that does not match) keeps the certificate in
//! use and is retried; the server never stops serving because of a bad rotation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::metrics::{Metrics, ResultLabels};

/// A certificate with what the logs and metrics say about it.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub not_after: i64,
    fingerprint: [u8; 32],
}

/// Reads and checks a certificate chain and its private key.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<LoadedCert> {
    let cert_pem = crate::pem_file::read(cert_path)
        .with_context(|| format!("reading TLS certificate {}", cert_path.display()))?;
    let key_pem = crate::pem_file::read(key_path)
        .with_context(|| format!("reading TLS key {}", key_path.display()))?;
    from_pem(&cert_pem, &key_pem)
        .with_context(|| format!("loading {} and {}", cert_path.display(), key_path.display()))
}

/// Builds a certificate from PEM bytes.
pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<LoadedCert> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("the certificate file is not valid PEM")?;
    let leaf = chain
        .first()
        .ok_or_else(|| anyhow!("the certificate file holds no CERTIFICATE block"))?;
    let (_, not_after) = crate::certs::validity_der(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .context("the key file holds no valid PEM private key")?;
    let signing_key = any_supported_type(&key).context("unsupported private key type")?;
    let fingerprint = Sha256::new()
        .chain_update(cert_pem)
        .chain_update(key_pem)
        .finalize()
        .into();
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .context("the private key does not belong to the certificate")?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        not_after,
        fingerprint,
    })
}

/// Hands every TLS handshake the certificate currently loaded. Empty until the first one
/// arrives (self-managed mode, before the leader has written the Secret): handshakes then fail,
/// and so does readiness.
#[derive(Clone, Default)]
pub struct CertStore {
    current: Arc<RwLock<Option<Arc<LoadedCert>>>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertStore")
    }
}

impl CertStore {
    pub fn new(cert: LoadedCert) -> Self {
        CertStore {
            current: Arc::new(RwLock::new(Some(Arc::new(cert)))),
        }
    }

    pub fn current(&self) -> Option<Arc<LoadedCert>> {
        // A poisoned lock still holds a valid certificate: keep serving it.
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the certificate when it differs; returns whether it did.
    pub fn replace(&self, cert: LoadedCert) -> bool {
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard
            .as_ref()
            .is_some_and(|c| c.fingerprint == cert.fingerprint)
        {
            return false;
        }
        *guard = Some(Arc::new(cert));
        true
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().map(|c| c.key.clone())
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3, HTTP/1.1 only (kube-apiserver speaks
/// HTTP/1.1 to webhooks, and HTTP/2 brings the rapid-reset class of attacks for nothing).
pub fn server_config(store: CertStore) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("building the TLS configuration")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(store));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Keeps `store` in step with the files: reloads on file-system events in their directories and
/// every `interval`. Runs until the process ends.
pub async fn watch(
    store: CertStore,
    cert_path: PathBuf,
    key_path: PathBuf,
    interval: Duration,
    metrics: Metrics,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    // The watcher must stay alive as long as this task runs.
    let _watcher = match dir_watcher(&cert_path, &key_path, tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot watch the certificate directories; relying on the periodic re-read");
            None
        }
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some(()) = rx.recv() => {
                // Let a writer finish both files before reading them.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        reload(&store, &cert_path, &key_path, &metrics);
    }
}

fn reload(store: &CertStore, cert_path: &Path, key_path: &Path, metrics: &Metrics) {
    install(store, load(cert_path, key_path), metrics);
}

/// Puts a freshly read certificate into `store`, or keeps the one in use when reading failed.
pub fn install(store: &CertStore, cert: Result<LoadedCert>, metrics: &Metrics) {
    match cert {
        Ok(cert) => {
            let not_after = cert.not_after;
            if store.replace(cert) {
                metrics
                    .tls_reloads
                    .get_or_create(&ResultLabels { result: "loaded" })
                    .inc();
                metrics.tls_not_after.set(not_after);
                tracing::info!(not_after = %format_unix(not_after), "loaded a new serving certificate");
            } else {
                metrics
                    .tls_reloads
                    .get_or_create(&ResultLabels {
                        result: "unchanged",
                    })
                    .inc();
            }
        }
        Err(e) => {
            metrics
                .tls_reloads
                .get_or_create(&ResultLabels { result: "failed" })
                .inc();
            tracing::warn!(error = %format!("{e:#}"), "serving certificate not reloaded; keeping the one in use");
        }
    }
}

fn dir_watcher(
    cert_path: &Path,
    key_path: &Path,
    tx: mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads of the files raise access events (inotify's IN_OPEN and friends on the
        // directory); reacting to them would reload in a loop.
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            // A full channel already holds a pending reload.
            let _ = tx.try_send(());
        }
    })
    .context("creating a file watcher")?;
    let mut dirs: Vec<PathBuf> = [cert_path, key_path]
        .iter()
        .map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.dedup();
    for dir in dirs {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
    }
    Ok(watcher)
}

pub fn format_unix(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| ts.to_string())
}

/// Self-managed mode: keeps `store` in step with the serving certificate in a Secret (keys
/// `tls.crt`, `tls.key`), through a watch, so every replica follows a rotation within a second.
pub async fn watch_secret(
    store: CertStore,
    api: kube::Api<k8s_openapi::api::core::v1::Secret>,
    name: String,
    metrics: Metrics,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    while let Some(event) = events.next().await {
        match event {
            Ok(secret) => {
                let data = secret.data.unwrap_or_default();
                // Empty while the leader has the apiserver trust a new CA before it issues the
                // serving certificate (a re-created or adopted Secret): keep serving the old one.
                let (Some(cert), Some(key)) = (
                    data.get("tls.crt").filter(|c| !c.0.is_empty()),
                    data.get("tls.key").filter(|k| !k.0.is_empty()),
                ) else {
                    tracing::info!(secret = %name, "the certificate Secret has no serving certificate yet; keeping the one in use");
                    continue;
                };
                // What the leader writes into the webhook configurations is the Secret's
                // ca.crt: a certificate none of its CAs signed (a hand edit) is not trusted by
                // the apiserver, so serving it would fail every admission call until the
                // leader has reissued it.
                let cas = data.get("ca.crt").map_or(&[][..], |c| &c.0[..]);
                // (One whose signatures cannot be checked here is loaded: the apiserver may
                // well trust it.)
                let loaded = if crate::certs::signed_by(&cert.0, cas) == Some(false) {
                    Err(anyhow!(
                        "tls.crt is not signed by a CA of its ca.crt, so the apiserver would not trust it"
                    ))
                } else {
                    from_pem(&cert.0, &key.0)
                };
                install(
                    &store,
                    loaded.with_context(|| format!("Secret {name}")),
                    &metrics,
                );
            }
            Err(e) => {
                tracing::warn!(secret = %name, error = %crate::errors::chain(&e), "watching the certificate Secret failed; retrying")
            }
        }
    }
}

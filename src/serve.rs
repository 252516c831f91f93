//! `backup-operator serve`: the admission server on every replica, the admin port, certificate
//! reloading, signal handling, and (unless `--no-controller`) the controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::sync::watch;

use crate::admin::{self, Health};
use crate::admission::{self, AdmissionState};
use crate::cert_rotation::RotationConfig;
use crate::controller::{self, ControllerArgs};
use crate::inject::{InjectorArgs, InjectorConfig};
use crate::metrics::Metrics;
use crate::url_policy::{PolicyArgs, UrlPolicy};
use crate::{duration, errors, https, tls};

#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// HTTPS address of POST /validate and POST /mutate. The default takes IPv6 and IPv4
    /// (IPv4 only where the kernel has no IPv6).
    #[arg(long, env = "BACKUP_OPERATOR_LISTEN", default_value = "[::]:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP address of GET /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "BACKUP_OPERATOR_ADMIN_LISTEN",
        default_value = "[::]:8080"
    )]
    pub admin_listen: SocketAddr,
    /// PEM certificate chain served on --listen. Reloaded when it changes (cert-manager or any
    /// mounted Secret). Either this and --tls-key, or --tls-secret.
    #[arg(
        long,
        env = "BACKUP_OPERATOR_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key",
        required_unless_present = "tls_secret"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert. Reloaded when it changes.
    #[arg(
        long,
        env = "BACKUP_OPERATOR_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Self-managed certificates: serve the certificate in this Secret (in --lease-namespace),
    /// which the leader creates, rotates ahead of expiry, and whose CA it writes into both webhook
    /// configurations.
    #[arg(long, env = "BACKUP_OPERATOR_TLS_SECRET", value_name = "NAME", conflicts_with_all = ["tls_cert", "tls_key"], value_parser = crate::names::subdomain)]
    pub tls_secret: Option<String>,
    #[command(flatten)]
    pub certs: SelfManagedArgs,
    /// How often the certificate files are re-read in addition to file events (mounted Secrets
    /// change through a symlink swap that file events can miss). 1s to 1h. Only with --tls-cert.
    #[arg(long, default_value = "10s", value_parser = |s: &str| duration::within(s, Duration::from_secs(1), Duration::from_secs(3600)), conflicts_with = "tls_secret")]
    pub tls_reload_interval: Duration,
    /// Serve admission only: no controller, and no connection to the cluster needed (unless
    /// --tls-secret, whose certificates come from the cluster).
    #[arg(long)]
    pub no_controller: bool,
    /// Largest admission request body accepted, in bytes (bigger ones get 413). At least 65536.
    #[arg(long, default_value_t = admission::DEFAULT_MAX_REQUEST_BYTES, value_parser = admission::parse_request_bytes)]
    pub max_request_bytes: usize,
    /// Bytes of admission request bodies held at once across all connections (at least
    /// --max-request-bytes); a body that would go beyond it gets 503.
    #[arg(long, default_value_t = admission::DEFAULT_BODY_BYTES_IN_FLIGHT, value_parser = admission::parse_request_bytes)]
    pub max_request_bytes_in_flight: usize,
    /// On SIGTERM, how long in-flight requests may take to finish (0 to 1h). A second signal exits
    /// at once.
    #[arg(long, default_value = "30s", value_parser = |s: &str| duration::within(s, Duration::ZERO, Duration::from_secs(3600)))]
    pub shutdown_timeout: Duration,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub injector: InjectorArgs,
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// Settings of self-managed certificates (`--tls-secret`), refused with `--tls-cert`: with files
/// (`--tls-cert`) nothing would read them, and a setting silently ignored is worse than refused.
#[derive(Clone, Debug, clap::Args)]
pub struct SelfManagedArgs {
    /// Service in front of the webhooks; its in-cluster names go into the serving certificate.
    #[arg(long, default_value = "backup-operator", value_parser = crate::names::label, conflicts_with = "tls_cert")]
    pub service_name: String,
    /// Extra DNS name for the serving certificate. Repeatable.
    #[arg(long = "cert-dns", value_name = "NAME", value_parser = crate::names::host_name, conflicts_with = "tls_cert")]
    pub cert_dns: Vec<String>,
    /// IP address for the serving certificate (for webhooks registered by URL). Repeatable.
    #[arg(long = "cert-ip", value_name = "IP", conflicts_with = "tls_cert")]
    pub cert_ips: Vec<std::net::IpAddr>,
    /// Lifetime of a generated CA; it is rotated when a third is left. 1s to 876000h.
    #[arg(long, default_value = "87600h", value_parser = parse_validity, conflicts_with = "tls_cert")]
    pub ca_validity: Duration,
    /// Lifetime of a serving certificate; it is renewed when a third is left. 1s to 876000h.
    #[arg(long, default_value = "2160h", value_parser = parse_validity, conflicts_with = "tls_cert")]
    pub cert_validity: Duration,
    /// Name of the Validating- and MutatingWebhookConfiguration that receive the CA bundle.
    #[arg(long, default_value = crate::webhook_config::NAME, value_parser = crate::names::subdomain, conflicts_with = "tls_cert")]
    pub webhook_configuration: String,
}

/// Longest validity `--ca-validity`, `--cert-validity` and `cert generate --valid-for` take: a
/// century, far inside what an X.509 date can hold.
pub const MAX_VALIDITY: Duration = Duration::from_secs(876_000 * 3600);

/// A certificate validity: at least a second (an expired-at-birth certificate would be reissued
/// every check), at most [`MAX_VALIDITY`].
pub fn parse_validity(s: &str) -> Result<Duration, String> {
    crate::duration::within(s, Duration::from_secs(1), MAX_VALIDITY)
}

pub async fn run(args: ServeArgs) -> Result<()> {
    args.injector.check().map_err(anyhow::Error::msg)?;
    let metrics = Metrics::default();
    let store = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let cert = tls::load(cert, key)?;
            metrics.tls_not_after.set(cert.not_after);
            tracing::info!(not_after = %tls::format_unix(cert.not_after), "loaded the serving certificate");
            tls::CertStore::new(cert)
        }
        // Self-managed: empty until the Secret is read, so not ready until then.
        _ => tls::CertStore::default(),
    };

    let rotation = args.tls_secret.as_ref().map(|secret| {
        let namespace = args.controller.lease_namespace.clone();
        let mut dns_names = crate::certs::service_dns_names(&args.certs.service_name, &namespace);
        dns_names.extend(args.certs.cert_dns.iter().cloned());
        RotationConfig {
            namespace,
            secret: secret.clone(),
            webhook_configuration: args.certs.webhook_configuration.clone(),
            dns_names,
            ips: args.certs.cert_ips.clone(),
            ca_validity: args.certs.ca_validity,
            cert_validity: args.certs.cert_validity,
        }
    });
    if let Some(cfg) = &rotation {
        cfg.check().map_err(anyhow::Error::msg)?;
    }
    let client = if args.no_controller && args.tls_secret.is_none() {
        None
    } else {
        let (client, version) = connect().await?;
        if args.injector.notifier_mode == crate::inject::NotifierMode::Sidecar
            && !has_native_sidecars(&version)
        {
            tracing::warn!(
                version = %version.git_version,
                "this Kubernetes predates native sidecar containers (on by default since v1.29): with --notifier-mode=sidecar a backup pod waits on its notifier forever unless the SidecarContainers feature gate is on; use --notifier-mode=container"
            );
        }
        Some(client)
    };
    if let (Some(cfg), Some(client)) = (&rotation, &client) {
        let secrets = kube::Api::namespaced(client.clone(), &cfg.namespace);
        tokio::spawn(tls::watch_secret(
            store.clone(),
            secrets,
            cfg.secret.clone(),
            metrics.clone(),
        ));
        if args.no_controller {
            tracing::warn!(
                "--tls-secret with --no-controller: this replica serves the Secret's certificate but never renews it; a replica with the controller must run"
            );
        }
    }

    let https_listener = https::bind(args.listen, "HTTPS").await?;
    let https_addr = https_listener
        .local_addr()
        .context("reading the HTTPS listener address")?;
    let admin_listener = https::bind(args.admin_listen, "admin").await?;
    let admin_addr = admin_listener
        .local_addr()
        .context("reading the admin listener address")?;

    let policy = UrlPolicy::from(args.policy.clone());
    let injector = InjectorConfig::new(&args.injector, policy.to_env());
    if injector.image == crate::inject::DEFAULT_NOTIFIER_IMAGE {
        tracing::warn!(
            image = %injector.image,
            "--notifier-image is not set, and no image is published under its default: backup pods will not start until it names the image you built (manifests/ set it to the operator's own)"
        );
    }
    let state = Arc::new(AdmissionState::new(
        policy,
        injector.clone(),
        metrics.clone(),
        args.max_request_bytes,
        args.max_request_bytes_in_flight,
    ));
    let health = Arc::new(Health::new(https_addr, metrics.clone())?);

    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        tokio::spawn(tls::watch(
            store.clone(),
            cert.clone(),
            key.clone(),
            args.tls_reload_interval,
            metrics.clone(),
        ));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(signals(stop_tx, health.clone()));
    let controller = client.filter(|_| !args.no_controller).map(|client| {
        let run = tokio::spawn(controller::run(
            client,
            args.controller.clone(),
            injector,
            rotation,
            metrics.clone(),
            stop_rx.clone(),
        ));
        let stopping = stop_rx.clone();
        tokio::spawn(async move {
            let ended = run.await;
            // The controller runs until the stop signal. Ending before it (a panic: a bug) would
            // leave a replica that serves admission and looks healthy but never leads again, nor
            // renews certificates; exiting lets the kubelet restart it, visibly.
            if !*stopping.borrow() {
                let how = match ended {
                    Err(e) if e.is_panic() => "panicked",
                    _ => "ended",
                };
                tracing::error!(
                    "the controller {how} before shutdown; exiting so the pod restarts"
                );
                std::process::exit(70);
            }
        })
    });

    let admin_router = admin::router(health.clone());
    tokio::spawn(https::serve_plain(admin_listener, admin_router));

    tracing::info!(https = %https_addr, admin = %admin_addr, "serving admission (POST /validate, POST /mutate) and admin (/healthz /readyz /metrics)");
    https::serve(
        https_listener,
        tls::server_config(store)?,
        admission::router(state),
        stop_rx,
        args.shutdown_timeout,
    )
    .await;
    if let Some(controller) = controller {
        // Bounded: the controller releases its Lease so another replica takes over at once.
        if tokio::time::timeout(Duration::from_secs(10), controller)
            .await
            .is_err()
        {
            tracing::warn!("the controller did not stop within 10s");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// First SIGTERM or SIGINT: not ready, drain. Second: exit at once.
async fn signals(stop: watch::Sender<bool>, health: Arc<Health>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            "cannot install signal handlers; SIGTERM will kill the process without draining"
        );
        // Dropping `stop` would read as a stop request and end serving at once.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: not ready, draining (a second signal exits at once)");
    health.shutting_down.store(true, Ordering::SeqCst);
    let _ = stop.send(true);
    let second = tokio::select! {
        _ = term.recv() => libc::SIGTERM,
        _ = int.recv() => libc::SIGINT,
    };
    tracing::warn!("second signal: exiting without waiting for the drain");
    // 128 + the signal, as a shell reports a process that signal ended.
    std::process::exit(128 + second);
}

/// How long the API client waits for the next bytes of a response. kube leaves it unbounded, so
/// a connection that went half-open after a request was sent (a lost apiserver node, a reset
/// load balancer) would hang that call for good; above the watcher's own idle limit (the 290 s
/// server-side watch timeout plus 5 s), so a quiet watch is never cut by it.
pub const API_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Whether the apiserver's version has native sidecars on by default (v1.29+). A minor that
/// does not parse (a vendor's spelling) is given the benefit of the doubt.
fn has_native_sidecars(v: &k8s_openapi::apimachinery::pkg::version::Info) -> bool {
    let number = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (number(&v.major), number(&v.minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= 29),
        _ => true,
    }
}

/// A client for the cluster in the environment (in-cluster or KUBECONFIG), and the apiserver's
/// version: one call with a deadline, so an unreachable cluster fails fast with one line.
pub async fn connect() -> Result<(kube::Client, k8s_openapi::apimachinery::pkg::version::Info)> {
    let hint = "run with --no-controller to serve admission only";
    let mut config = kube::Config::infer().await.map_err(|e| {
        anyhow!(
            "cannot configure a Kubernetes client ({}); {hint}",
            errors::chain(&e)
        )
    })?;
    config.read_timeout = Some(API_READ_TIMEOUT);
    // The timeout then counts from the request, not from when its pooled connection went idle.
    config.reset_reader_on_write = true;
    let client = kube::Client::try_from(config).map_err(|e| {
        anyhow!(
            "cannot configure a Kubernetes client ({}); {hint}",
            errors::chain(&e)
        )
    })?;
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(v)) => {
            tracing::info!(version = %v.git_version, "connected to the Kubernetes API");
            Ok((client, v))
        }
        Ok(Err(e)) => Err(anyhow!(
            "cannot reach the Kubernetes API ({}); {hint}",
            errors::chain(&e)
        )),
        Err(_) => Err(anyhow!(
            "the Kubernetes API did not answer within 10s; {hint}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_are_known_from_v1_29_and_assumed_for_odd_versions() {
        let info = |major: &str, minor: &str| k8s_openapi::apimachinery::pkg::version::Info {
            major: major.into(),
            minor: minor.into(),
            ..Default::default()
        };
        assert!(!has_native_sidecars(&info("1", "28")));
        assert!(!has_native_sidecars(&info("1", "27+")));
        assert!(has_native_sidecars(&info("1", "29")));
        assert!(has_native_sidecars(&info("1", "36+")));
        assert!(has_native_sidecars(&info("2", "0")));
        assert!(has_native_sidecars(&info("", "")));
    }
}

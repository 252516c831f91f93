//! The plain-HTTP admin port: `/healthz` (the process answers), `/readyz` (the HTTPS listener
//! completes a TLS handshake right now and no shutdown has begun), `/metrics`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::metrics::Metrics;

const READY: u8 = 1;
const NOT_READY: u8 = 2;

/// Shared by the admin handlers and the shutdown logic.
pub struct Health {
    pub https_addr: SocketAddr,
    pub shutting_down: AtomicBool,
    pub metrics: Metrics,
    probe: TlsConnector,
    /// What the last `/readyz` answered ([`READY`], [`NOT_READY`], 0 before the first), so
    /// that changes are logged.
    ready: AtomicU8,
}

impl Health {
    pub fn new(https_addr: SocketAddr, metrics: Metrics) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("building the readiness probe's TLS configuration")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Ok(Health {
            https_addr,
            shutting_down: AtomicBool::new(false),
            metrics,
            probe: TlsConnector::from(Arc::new(config)),
            ready: AtomicU8::new(0),
        })
    }

    /// Dials our own HTTPS listener and completes a handshake: the question is whether TLS is
    /// being served now, not who we are, so the certificate is not verified here.
    async fn tls_serving(&self) -> Result<(), String> {
        let port = self.https_addr.port();
        // A wildcard listener is dialled on loopback; `[::]` on ::1, or on 127.0.0.1 where
        // loopback has no IPv6 address (the dual-stack listener takes IPv4 too).
        let targets: &[IpAddr] = match self.https_addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            IpAddr::V6(v6) if v6.is_unspecified() => &[
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            ],
            _ => &[],
        };
        let targets: Vec<SocketAddr> = if targets.is_empty() {
            vec![self.https_addr]
        } else {
            targets
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect()
        };
        // Each address gets its own share of the 800 ms (inside the kubelet's 2 s probe
        // timeout), so one that drops packets does not keep the other from being tried.
        let share = Duration::from_millis(800) / targets.len().max(1) as u32;
        let mut failures = Vec::new();
        for target in &targets {
            let attempt = async {
                let tcp = TcpStream::connect(target)
                    .await
                    .map_err(|e| format!("connect to {target}: {e}"))?;
                let name = ServerName::IpAddress(target.ip().into());
                self.probe
                    .connect(name, tcp)
                    .await
                    .map(drop)
                    .map_err(|e| format!("TLS handshake with {target}: {e}"))
            };
            match tokio::time::timeout(share, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => failures.push(e),
                Err(_) => failures.push(format!("TLS handshake with {target} timed out")),
            }
        }
        Err(failures.join("; "))
    }
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.shutting_down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        );
    }
    let serving = h.tls_serving().await;
    // The kubelet keeps only the status code of a failed probe: the reason goes to the log,
    // once per change.
    let now = if serving.is_ok() { READY } else { NOT_READY };
    match (h.ready.swap(now, Ordering::SeqCst), &serving) {
        (READY, Ok(())) | (NOT_READY, Err(_)) => {}
        (_, Ok(())) => tracing::info!("ready: the HTTPS listener completes TLS handshakes"),
        (READY, Err(e)) => tracing::warn!(reason = %e, "not ready any more"),
        (_, Err(e)) => tracing::info!(reason = %e, "not ready yet"),
    }
    match serving {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

/// Accepts any certificate; used only by the readiness self-probe above.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

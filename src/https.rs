//! The HTTPS listener of the admission endpoints: rustls, HTTP/1.1 with keep-alive, bounded
//! handshakes and header reads, and a graceful drain that finishes in-flight requests and closes
//! idle keep-alive connections at once (the apiserver otherwise keeps reusing connections to a
//! terminating pod, k8s #127335).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

/// A client that opens a connection and never completes the handshake must not hold it forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may wait for a complete request head: the first request's, and on a
/// keep-alive connection the next one's (hyper runs one timer for both, so this is also the idle
/// timeout). Longer than the 90 s after which the apiserver's client (client-go's transport,
/// Go's `IdleConnTimeout`) drops an idle connection: the apiserver closes first, so it never
/// sends a POST into a connection we are closing (Go does not retry a POST on a reused
/// connection that failed after the request was written).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Open connections beyond this wait in the listen backlog, so a flood of idle connections costs
/// a bounded amount of memory (a TLS connection's buffers are tens of KiB).
pub const MAX_CONNECTIONS: usize = 1024;

/// Binds the listener; separate from [`serve`] so bind errors surface before anything else runs.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTPS listener on {addr}"))
}

/// Serves `router` until `shutdown` turns true, then drains for at most `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = http1().serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        "stopped accepting; draining in-flight requests"
    );
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?drain_timeout, "drain timed out; closing the remaining connections");
    }
}

/// HTTP/1.1 with keep-alive and the bounded head read of [`IDLE_TIMEOUT`], for both listeners.
fn http1() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .keep_alive(true);
    builder
}

/// Serves `router` over plain HTTP (the admin port: probes and metrics) with the same bounds on
/// connections and head reads as the admission listener; runs until the process exits.
pub async fn serve_plain(listener: TcpListener, router: Router) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = http1().serve_connection(TokioIo::new(tcp), service).await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

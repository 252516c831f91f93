//! The HTTPS listener of the admission endpoints: rustls, HTTP/1.1 with keep-alive, bounded
//! handshakes and header reads, and a graceful drain that finishes in-flight requests and closes
//! idle keep-alive connections at once (the apiserver otherwise keeps reusing connections to a
//! terminating pod, k8s #127335).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::write_stall::WriteStall;

/// A client that opens a connection and never completes the handshake must not hold it forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A new connection's first request must reach the handler within this (after the handshake):
/// the apiserver sends its review at once, and a connection that sends nothing must not hold
/// one of [`MAX_CONNECTIONS`] for the whole [`IDLE_TIMEOUT`].
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may wait for its next request head (hyper runs one timer
/// from the end of a response to the end of the next head). Longer than the 90 s after which
/// the apiserver's client (client-go's transport, Go's `IdleConnTimeout`) drops an idle
/// connection: the apiserver closes first, so it never sends a POST into a connection we are
/// closing (Go does not retry a POST on a reused connection that failed after the request was
/// written).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The admin port's idle timeout: its clients (kubelet probes, Prometheus) either open a
/// connection per request or retry at their next interval.
const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a write to a client may make no progress. hyper has no write timeout of its own: a
/// client that pipelines requests and never reads the answers would otherwise hold its
/// connection, and hyper's buffers, for good. The apiserver reads each answer at once.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections beyond this wait in the listen backlog, so a flood of idle connections costs
/// a bounded amount of memory: a TLS connection's buffers are tens of KiB, plus hyper's read
/// buffer of at most [`MAX_READ_BUFFER`].
pub const MAX_CONNECTIONS: usize = 1024;
/// hyper's read buffer per connection, which holds a request head while it arrives. Its default
/// (about 400 KiB) let a client that never ends its headers hold that much per connection; the
/// apiserver's and the probes' heads are well under 2 KiB. Bodies stream through it in pieces.
const MAX_READ_BUFFER: usize = 32 * 1024;

/// Binds the `what` listener; separate from [`serve`] so bind errors surface before anything
/// else runs. `[::]` (the default: IPv6-only clusters dial the pod's IPv6 address) takes IPv4
/// too, whatever the node's `net.ipv6.bindv6only`, and falls back to `0.0.0.0` on a node whose
/// kernel has IPv6 turned off.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    let bound = if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        dual_stack(addr)
    } else {
        TcpListener::bind(addr).await
    };
    match bound {
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            tracing::info!(%addr, fallback = %v4, error = %e, "IPv6 is not available; the {what} listener takes IPv4 only");
            TcpListener::bind(v4)
                .await
                .with_context(|| format!("binding the {what} listener on {v4}"))
        }
        bound => bound.with_context(|| format!("binding the {what} listener on {addr}")),
    }
}

/// A listener on `addr` (an IPv6 address) that also takes IPv4 connections, set up as
/// `TcpListener::bind` would (SO_REUSEADDR, a backlog of 1024).
fn dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let socket = tokio::net::TcpSocket::new_v6()?;
    let off: libc::c_int = 0;
    // SAFETY: a valid socket descriptor and a pointer to a live c_int of the length given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn ipv6_unavailable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
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
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let tcp = WriteStall::new(tcp, WRITE_STALL_TIMEOUT);
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
            serve_connection(tls, router, peer, IDLE_TIMEOUT, Some(watcher)).await;
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

/// Serves one connection with HTTP/1.1 keep-alive: closed when its first request has not
/// reached the handler within [`FIRST_REQUEST_TIMEOUT`], or a later request head within `idle`
/// of the previous response. With a `watcher`, a graceful shutdown finishes the request in
/// flight and closes an idle connection at once.
async fn serve_connection<I>(
    io: I,
    router: Router,
    peer: SocketAddr,
    idle: Duration,
    watcher: Option<Watcher>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let seen = Arc::new(AtomicBool::new(false));
    let inner = TowerToHyperService::new(router);
    let flag = seen.clone();
    let service = service_fn(move |req| {
        flag.store(true, Ordering::Relaxed);
        inner.call(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .max_buf_size(MAX_READ_BUFFER)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    let served = async move {
        match watcher {
            Some(w) => w.watch(conn).await,
            None => conn.await,
        }
    };
    let first_request = async {
        tokio::time::sleep(FIRST_REQUEST_TIMEOUT).await;
        if seen.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = served => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        // No request was ever handed to the handler, so dropping the connection loses nothing.
        () = first_request => tracing::debug!(%peer, "no request within the first-request timeout; closed"),
    }
}

/// Serves `router` over plain HTTP (the admin port: probes and metrics) with the same bound on
/// connections as the admission listener and a short idle timeout; runs until the process exits.
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
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tcp = WriteStall::new(tcp, WRITE_STALL_TIMEOUT);
            serve_connection(tcp, router, peer, ADMIN_IDLE_TIMEOUT, None).await;
        });
    }
}

//! One webhook delivery: exactly one POST, no retries, no redirects, the whole of it (DNS,
//! connect, TLS, response) bounded by one timeout.
//!
//! The URL policy is applied twice, as at admission: to the URL itself, and then to *every*
//! address its host resolves to. The connection then goes to one of exactly those addresses over
//! a socket this module dials itself, so no second lookup can swap in another address (DNS
//! rebinding) and no connection pool or proxy setting can send it elsewhere.
//!
//! Nothing here puts the URL's path, query or userinfo into a message: ping URLs are secrets.
//! Messages name the host (and the address dialled) only.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};
use url::Position;

use crate::contract::Payload;
use crate::notifier::tls::Trust;
use crate::url_policy::{CheckedUrl, UrlPolicy, redact_str};

/// Sent with every request, so receivers can tell the notifier from other clients.
pub const USER_AGENT_VALUE: &str = concat!("backup-notifier/", env!("CARGO_PKG_VERSION"));

/// The documented default for the whole delivery.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a delivery failed, as one word for logs and alerts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The URL or an address it resolves to is refused by the URL policy.
    Policy,
    Dns,
    Connect,
    Tls,
    /// The whole delivery did not finish within the timeout.
    Timeout,
    /// The receiver answered with something other than 2xx (a 3xx included: redirects are not
    /// followed).
    HttpStatus,
    /// The receiver broke the HTTP exchange (closed early, sent garbage).
    Http,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Policy => "policy",
            Reason::Dns => "dns",
            Reason::Connect => "connect",
            Reason::Tls => "tls",
            Reason::Timeout => "timeout",
            Reason::HttpStatus => "http-status",
            Reason::Http => "http",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery the receiver accepted with a 2xx status.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub status: StatusCode,
    pub elapsed: Duration,
    /// The address the request went to.
    pub peer: SocketAddr,
    /// `scheme://host[:port]` of the URL.
    pub target: String,
}

/// A delivery that failed. `detail` never holds the URL's path, query or userinfo.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DeliveryError {
    pub reason: Reason,
    pub detail: String,
    pub elapsed: Duration,
    /// `scheme://host[:port]` of the URL.
    pub target: String,
}

/// Where a delivery was when the timeout struck. An atomic rather than a `Cell` so that the
/// delivery future stays `Send` for callers on a multi-threaded runtime.
#[derive(Default)]
struct Stage(AtomicU8);

impl Stage {
    const RESOLVE: u8 = 0;
    const CONNECT: u8 = 1;
    const TLS: u8 = 2;
    const RESPONSE: u8 = 3;

    fn set(&self, stage: u8) {
        self.0.store(stage, Ordering::Relaxed);
    }

    fn doing(&self) -> &'static str {
        match self.0.load(Ordering::Relaxed) {
            Stage::RESOLVE => "resolving the host",
            Stage::CONNECT => "connecting",
            Stage::TLS => "in the TLS handshake",
            _ => "waiting for the response",
        }
    }
}

type Failure = (Reason, String);

/// The webhook client. Cheap to build; one per process is plenty.
#[derive(Clone)]
pub struct Client {
    policy: UrlPolicy,
    trust: Trust,
    timeout: Duration,
}

impl Client {
    pub fn new(policy: UrlPolicy, trust: Trust, timeout: Duration) -> Self {
        Client {
            policy,
            trust,
            timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// POSTs `payload` as JSON to `url`, once.
    pub async fn deliver(&self, url: &str, payload: &Payload) -> Result<Delivered, DeliveryError> {
        let start = Instant::now();
        match serde_json::to_vec(payload) {
            Ok(body) => self.post_json(url, body, start).await,
            // Four strings always serialise; this arm only keeps the function total.
            Err(e) => Err(DeliveryError {
                reason: Reason::Http,
                detail: format!("cannot encode the payload: {e}"),
                elapsed: start.elapsed(),
                target: redact_str(url),
            }),
        }
    }

    async fn post_json(
        &self,
        url: &str,
        body: Vec<u8>,
        start: Instant,
    ) -> Result<Delivered, DeliveryError> {
        let stage = Stage::default();
        let deadline = Instant::now() + self.timeout;
        let outcome =
            tokio::time::timeout(self.timeout, self.attempt(url, body, &stage, deadline)).await;
        let elapsed = start.elapsed();
        let target = redact_str(url);
        let (reason, detail) = match outcome {
            Ok(Ok((status, peer))) if status.is_success() => {
                return Ok(Delivered {
                    status,
                    elapsed,
                    peer,
                    target,
                });
            }
            Ok(Ok((status, peer))) => (Reason::HttpStatus, status_detail(status, peer)),
            Ok(Err(failure)) => failure,
            Err(_) => (
                Reason::Timeout,
                format!(
                    "no response within {} (timed out {})",
                    crate::duration::show(self.timeout),
                    stage.doing()
                ),
            ),
        };
        Err(DeliveryError {
            reason,
            detail,
            elapsed,
            target,
        })
    }

    async fn attempt(
        &self,
        raw: &str,
        body: Vec<u8>,
        stage: &Stage,
        deadline: Instant,
    ) -> Result<(StatusCode, SocketAddr), Failure> {
        let url = self
            .policy
            .check(raw)
            .map_err(|v| (Reason::Policy, format!("URL refused by the policy: {v}")))?;
        let addrs = self.resolve(&url).await?;

        stage.set(Stage::CONNECT);
        let (tcp, peer) = connect_first(&addrs, deadline).await?;
        // One small request: waiting to coalesce writes would only add latency.
        let _ = tcp.set_nodelay(true);
        let request = build_request(&url, body)?;

        if url.is_https() {
            stage.set(Stage::TLS);
            let name = server_name(&url)?;
            let trust = self
                .trust
                .load()
                .map_err(|e| (Reason::Tls, format!("{e:#}")))?;
            let tls = TlsConnector::from(trust.config)
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    // Said only here: with the public roots alone, the file's problem matters
                    // only when the server's certificate is not publicly trusted.
                    let ca = trust.problem.map(|p| format!(" ({p})")).unwrap_or_default();
                    (Reason::Tls, format!("TLS with {peer} failed: {e}{ca}"))
                })?;
            stage.set(Stage::RESPONSE);
            exchange(tls, request, peer).await
        } else {
            stage.set(Stage::RESPONSE);
            exchange(tcp, request, peer).await
        }
    }

    /// The addresses to dial, every one of them checked against the policy.
    async fn resolve(&self, url: &CheckedUrl) -> Result<Vec<SocketAddr>, Failure> {
        let port = url.port();
        // An address literal was fully checked by `check`; there is nothing to look up.
        if let Some(ip) = url.ip() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let host = url.host();
        let found = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| (Reason::Dns, format!("cannot resolve {host}: {e}")))?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in found {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err((Reason::Dns, format!("{host} has no addresses")));
        }
        // All or nothing: one refused address means the name points somewhere it must not, and
        // trying the others would let an attacker win by racing the order.
        for a in &addrs {
            self.policy
                .check_resolved(url, a.ip())
                .map_err(|v| (Reason::Policy, format!("URL refused by the policy: {v}")))?;
        }
        Ok(addrs)
    }
}

/// Dials the addresses in the resolver's order and keeps the first that answers. Each address
/// gets an equal share of the time left before `deadline` (the last one all of it): an address
/// that never answers, such as an AAAA record in a pod whose IPv6 egress is dropped, must not use
/// up the whole delivery timeout before a working one is tried.
async fn connect_first(
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), Failure> {
    let mut errors = Vec::new();
    for (i, &addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok((s, addr)),
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!(
                "{addr}: no answer within {}",
                crate::duration::show(share)
            )),
        }
    }
    Err((
        Reason::Connect,
        format!("cannot connect: {}", errors.join("; ")),
    ))
}

fn build_request(url: &CheckedUrl, body: Vec<u8>) -> Result<Request<Full<Bytes>>, Failure> {
    let u = url.url();
    // origin-form: the path and query, never the userinfo (which the policy refuses anyway).
    let target = &u[Position::BeforePath..Position::AfterQuery];
    let target = if target.is_empty() { "/" } else { target };
    let host = u.host_str().unwrap_or(url.host());
    let host_header = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    Request::builder()
        .method(Method::POST)
        .uri(target)
        .header(HOST, host_header)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::from(body)))
        // The http crate's message names the offending character class, not the URL.
        .map_err(|e| (Reason::Http, format!("cannot build the request: {e}")))
}

fn server_name(url: &CheckedUrl) -> Result<ServerName<'static>, Failure> {
    match url.ip() {
        Some(ip) => Ok(ServerName::IpAddress(ip.into())),
        None => ServerName::try_from(url.host().to_owned()).map_err(|e| {
            (
                Reason::Tls,
                format!("{} is not a valid TLS server name: {e}", url.host()),
            )
        }),
    }
}

/// Sends the one request and returns the response status; the body is not read (nothing in
/// it matters, and a huge or endless body must not hold the notifier).
async fn exchange<S>(
    io: S,
    request: Request<Full<Bytes>>,
    peer: SocketAddr,
) -> Result<(StatusCode, SocketAddr), Failure>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let http = |e: hyper::Error| {
        (
            Reason::Http,
            format!(
                "HTTP exchange with {peer} failed: {}",
                crate::errors::chain(&e)
            ),
        )
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender.send_request(request).await.map_err(http)?;
    Ok((response.status(), peer))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn status_detail(status: StatusCode, peer: SocketAddr) -> String {
    let reason = status.canonical_reason().unwrap_or("");
    let code = status.as_u16();
    if status.is_redirection() {
        // The Location header is not shown: it may hold a token just like the URL.
        format!("{peer} answered HTTP {code} {reason}; redirects are not followed")
    } else {
        format!("{peer} answered HTTP {code} {reason}")
    }
}

/// Delivers and writes the one log line the documentation promises: INFO with status and
/// duration on success, WARN with the reason class and detail on failure. `notify` and `send`
/// both come through here.
pub async fn deliver_logged(
    client: &Client,
    url: &str,
    payload: &Payload,
) -> Result<Delivered, DeliveryError> {
    let result = client.deliver(url, payload).await;
    match &result {
        Ok(d) => info!(
            outcome = payload.status.as_str(),
            url = %d.target,
            status = d.status.as_u16(),
            duration_ms = d.elapsed.as_millis() as u64,
            "webhook delivered"
        ),
        Err(e) => warn!(
            outcome = payload.status.as_str(),
            url = %e.target,
            reason = e.reason.as_str(),
            duration_ms = e.elapsed.as_millis() as u64,
            "webhook not delivered: {}",
            e.detail
        ),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_that_never_answers_leaves_time_for_the_next() {
        // A listener that never accepts, its backlog full: the kernel drops further SYNs, so a
        // connect to it hangs as to a firewalled address.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = socket.listen(0).unwrap();
        let silent = full.local_addr().unwrap();
        let mut queued = Vec::new();
        while let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(silent)).await
        {
            queued.push(s);
            assert!(queued.len() < 64, "the backlog never filled");
        }
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap();

        let deadline = Instant::now() + Duration::from_secs(4);
        // Bounded only against a hang: the kernel retries a SYN for about two minutes.
        let (_, peer) = tokio::time::timeout(
            Duration::from_secs(60),
            connect_first(&[silent, good_addr], deadline),
        )
        .await
        .expect("stuck on the silent address")
        .expect("no connection");
        assert_eq!(peer, good_addr);

        let (reason, detail) =
            connect_first(&[silent], Instant::now() + Duration::from_millis(500))
                .await
                .expect_err("the silent address answered");
        assert!(matches!(reason, Reason::Connect));
        assert!(
            detail.contains(&format!("{silent}: no answer within")),
            "{detail}"
        );
    }

    #[test]
    fn requests_carry_path_and_query_but_no_userinfo() {
        let url = UrlPolicy::default()
            .check("https://hooks.example.com:8443/p/SECRET?x=1")
            .unwrap();
        let req = build_request(&url, b"{}".to_vec()).unwrap();
        assert_eq!(req.uri(), "/p/SECRET?x=1");
        assert_eq!(req.headers()[HOST], "hooks.example.com:8443");
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
        assert!(
            req.headers()[USER_AGENT]
                .to_str()
                .unwrap()
                .starts_with("backup-notifier/")
        );
    }
}

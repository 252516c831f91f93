//! A real webhook receiver for tests: HTTP or HTTPS on a loopback address, answering with a
//! configurable response, recording and counting every request it gets.
//!
//! It runs on its own thread with its own runtime, so plain `#[test]` functions can use it
//! while they drive other processes synchronously. HTTPS receivers make their own CA on the fly
//! ([`Receiver::ca_pem`]); a client that is not given that CA must refuse the certificate.
//!
//! ```no_run
//! use testkit::receiver::{Receiver, Reply};
//! let rx = Receiver::http(Reply::Status(204));
//! // ... point a client at rx.url("/hook") ...
//! assert!(rx.wait_for(1, std::time::Duration::from_secs(5)));
//! let req = &rx.requests()[0];
//! assert_eq!(req.header("content-type"), Some("application/json"));
//! ```

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::LOCATION;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How the receiver answers every request (after reading it completely).
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer at once with this status and an empty body.
    Status(u16),
    /// Answer with a redirect (e.g. 302) to `location`.
    Redirect { status: u16, location: String },
    /// Wait, then answer with `status`.
    Delay { delay: Duration, status: u16 },
    /// Never answer (the connection stays open until the client gives up).
    Hang,
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent in the request line.
    pub path: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// How many times header `name` was sent.
    pub fn header_count(&self, name: &str) -> usize {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(n, _)| *n == name).count()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Where and how a receiver listens.
#[derive(Clone, Debug)]
pub struct ReceiverBuilder {
    ip: IpAddr,
    tls: bool,
    reply: Reply,
}

impl ReceiverBuilder {
    /// Listen on this loopback address instead of 127.0.0.1 (e.g. 127.0.0.2 or ::1).
    pub fn ip(mut self, ip: IpAddr) -> Self {
        assert!(ip.is_loopback(), "test receivers listen on loopback only");
        self.ip = ip;
        self
    }

    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    pub fn reply(mut self, reply: Reply) -> Self {
        self.reply = reply;
        self
    }

    pub fn start(self) -> Receiver {
        Receiver::start(self)
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    arrived: Condvar,
    connections: AtomicUsize,
    reply: Mutex<Option<Reply>>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    tls: bool,
    ca_pem: Option<String>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn builder() -> ReceiverBuilder {
        ReceiverBuilder {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tls: false,
            reply: Reply::Status(200),
        }
    }

    /// Plain HTTP on 127.0.0.1.
    pub fn http(reply: Reply) -> Receiver {
        Receiver::builder().reply(reply).start()
    }

    /// HTTPS on 127.0.0.1 with a certificate from a fresh CA, valid for 127.0.0.1, 127.0.0.2,
    /// ::1, `localhost` and `receiver.test`.
    pub fn https(reply: Reply) -> Receiver {
        Receiver::builder().tls(true).reply(reply).start()
    }

    fn start(b: ReceiverBuilder) -> Receiver {
        let listener =
            StdTcpListener::bind((b.ip, 0)).expect("binding the test receiver on loopback");
        listener
            .set_nonblocking(true)
            .expect("making the receiver socket non-blocking");
        let addr = listener.local_addr().expect("the receiver's address");
        let (acceptor, ca_pem) = if b.tls {
            let (acceptor, ca) = tls_acceptor();
            (Some(acceptor), Some(ca))
        } else {
            (None, None)
        };
        let shared = Arc::new(Shared {
            reply: Mutex::new(Some(b.reply)),
            ..Shared::default()
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("receiver-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the receiver's runtime");
                rt.block_on(serve(listener, acceptor, thread_shared, stop_rx));
                // Dropping the runtime cancels connections still open (a hanging reply).
            })
            .expect("spawning the receiver thread");
        Receiver {
            addr,
            tls: b.tls,
            ca_pem,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// `scheme://<listening address>:port<path>`.
    pub fn url(&self, path: &str) -> String {
        let host = match self.addr.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        self.url_with_host(&host, path)
    }

    /// The receiver's URL under another host name (one that resolves to its address).
    pub fn url_with_host(&self, host: &str, path: &str) -> String {
        format!("{}://{host}:{}{path}", self.scheme(), self.port())
    }

    /// The PEM of the CA that signed an HTTPS receiver's certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Changes the reply for requests from now on.
    pub fn set_reply(&self, reply: Reply) {
        *lock(&self.shared.reply) = Some(reply);
    }

    /// Every complete request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many complete requests arrived.
    pub fn count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// How many TCP connections were accepted (a failed TLS handshake counts here, not in
    /// [`Receiver::count`]).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests arrived; false on timeout.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut reqs = lock(&self.shared.requests);
        while reqs.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            reqs = self
                .shared
                .arrived
                .wait_timeout(reqs, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A poisoned lock only means another test thread panicked; the data is still good to read.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(
    listener: StdTcpListener,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("registering the receiver socket");
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    // A client that refuses the certificate ends here: counted as a connection,
                    // never as a request.
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve_connection(tls, shared).await;
                    }
                }
                None => serve_connection(stream, shared).await,
            }
        });
    }
}

async fn serve_connection<S>(io: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, shared.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    lock(&shared.requests).push(recorded);
    shared.arrived.notify_all();

    let reply = lock(&shared.reply).clone().unwrap_or(Reply::Status(200));
    let (status, location) = match reply {
        Reply::Status(s) => (s, None),
        Reply::Redirect { status, location } => (status, Some(location)),
        Reply::Delay { delay, status } => {
            tokio::time::sleep(delay).await;
            (status, None)
        }
        Reply::Hang => std::future::pending().await,
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(loc) = location
        && let Ok(v) = loc.parse()
    {
        resp.headers_mut().insert(LOCATION, v);
    }
    Ok(resp)
}

/// A fresh CA and a server certificate it signed; returns the acceptor and the CA's PEM.
fn tls_acceptor() -> (TlsAcceptor, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "testkit receiver CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");

    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "receiver.test".to_owned()])
            .expect("server certificate parameters");
    for ip in [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        leaf_params.subject_alt_names.push(SanType::IpAddress(ip));
    }
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "receiver.test");
    let leaf_key = KeyPair::generate().expect("server key");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca)
        .expect("server certificate");

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server TLS configuration");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (TlsAcceptor::from(Arc::new(config)), ca.pem())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn post(addr: SocketAddr, body: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /p?q=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn records_and_counts_and_replies() {
        let rx = Receiver::http(Reply::Status(500));
        let resp = post(rx.addr(), "{\"a\":1}");
        assert!(resp.starts_with("HTTP/1.1 500"), "{resp}");
        assert!(rx.wait_for(1, Duration::from_secs(5)));
        let r = &rx.requests()[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/p?q=1");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.json().unwrap(), serde_json::json!({"a": 1}));
        assert_eq!((rx.count(), rx.connections()), (1, 1));

        rx.set_reply(Reply::Redirect {
            status: 302,
            location: "/elsewhere".into(),
        });
        let resp = post(rx.addr(), "{}");
        assert!(resp.starts_with("HTTP/1.1 302"), "{resp}");
        assert!(resp.to_ascii_lowercase().contains("location: /elsewhere"));
    }

    #[test]
    fn https_serves_a_certificate_from_its_own_ca() {
        let rx = Receiver::https(Reply::Status(204));
        assert!(rx.url("/x").starts_with("https://127.0.0.1:"));
        assert!(rx.ca_pem().unwrap().contains("BEGIN CERTIFICATE"));
    }
}

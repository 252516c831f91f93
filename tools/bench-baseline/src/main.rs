//! `bench-baseline --listen ADDR --tls-cert PEM --tls-key PEM`: the floor that tools/bench
//! compares backup-operator's admission server with. It terminates TLS with the same rustls
//! configuration (ring provider, TLS 1.2 and 1.3, ALPN http/1.1), serves HTTP/1.1 with keep-alive
//! through hyper on a multi-threaded tokio runtime, reads every request body completely, and
//! answers one fixed "allowed" AdmissionReview. No routing, no JSON, no logging, no metrics:
//! whatever backup-operator spends beyond this is the cost of its own logic.
//!
//! Prints `listening on ADDR` on stdout once bound (port 0 picks a free one).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Same shape and size class as a real allowed answer; the uid is fixed (nothing is parsed).
const ANSWER: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"0d2e1c4a-7f4b-4f5e-9a55-3c1f4c1b2a99","allowed":true}}"#;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    listen: SocketAddr,
    cert: String,
    key: String,
}

fn parse_args() -> Result<Args, Error> {
    let usage = "usage: bench-baseline --listen ADDR --tls-cert PEM --tls-key PEM";
    let (mut listen, mut cert, mut key) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(usage)?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse()?),
            "--tls-cert" => cert = Some(value),
            "--tls-key" => key = Some(value),
            _ => return Err(usage.into()),
        }
    }
    match (listen, cert, key) {
        (Some(listen), Some(cert), Some(key)) => Ok(Args { listen, cert, key }),
        _ => Err(usage.into()),
    }
}

fn tls_config(cert: &str, key: &str) -> Result<rustls::ServerConfig, Error> {
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole review, as any real handler must, so the comparison includes receiving it.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = parse_args()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&args.cert, &args.key)?));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("bench-baseline: accept failed: {e}");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // Same as backup-operator: small responses must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), hyper::service::service_fn(answer))
                .await;
        });
    }
}

//! Shared pieces of the root crate's integration tests: the real `backup-operator` binary as a
//! child process, development certificates, a small HTTPS client, and the operator registered
//! with a real control plane.
#![allow(dead_code)]

pub mod cluster;
pub mod fixtures;
pub mod notify_scenario;
pub mod pod_run;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_operator::certs::{self, PemPair};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

pub const OPERATOR: &str = env!("CARGO_BIN_EXE_backup-operator");

/// A CA and a serving certificate for 127.0.0.1, written to `dir`.
pub fn dev_certs(dir: &Path) -> (PemPair, PathBuf, PathBuf) {
    let ca = certs::generate_ca("test-ca", Duration::from_secs(3600)).unwrap();
    let serving = certs::issue_serving(
        &ca,
        &["localhost".to_owned()],
        &["127.0.0.1".parse().unwrap()],
        Duration::from_secs(3600),
    )
    .unwrap();
    certs::write_dir(dir, &ca, &serving, true).unwrap();
    (ca, dir.join("tls.crt"), dir.join("tls.key"))
}

/// Spawns `cmd` so that it dies with the test process, however that ends: PR_SET_PDEATHSIG fires
/// when the *thread* that forked exits, so every child is forked by one thread that never does.
pub fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: std::sync::OnceLock<Mutex<mpsc::Sender<Job>>> = std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
            loop {
                std::thread::park();
            }
        });
        Mutex::new(tx)
    });
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    spawner.lock().unwrap().send((cmd, tx)).unwrap();
    rx.recv().unwrap()
}

/// `backup-operator serve` as a child process; killed on drop.
pub struct Operator {
    pub child: Child,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Operator {
    /// Starts `serve` on ephemeral loopback ports with extra `args`, and waits for the line that
    /// says it serves (it carries the bound addresses).
    pub fn start(cert: &Path, key: &Path, args: &[&str]) -> Operator {
        Self::start_with_env(cert, key, args, &[])
    }

    pub fn start_with_env(
        cert: &Path,
        key: &Path,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Operator {
        let mut all: Vec<&std::ffi::OsStr> = vec![
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        Self::spawn(&all, env)
    }

    /// Self-managed certificates: the arguments name the Secret (`--tls-secret`).
    pub fn start_self_managed(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Operator {
        let all: Vec<&std::ffi::OsStr> = args.iter().map(|a| std::ffi::OsStr::new(*a)).collect();
        Self::spawn(&all, env)
    }

    fn spawn(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> Operator {
        let mut cmd = Command::new(OPERATOR);
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_tied(cmd).expect("spawn backup-operator");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("SHOW_OPERATOR_LOG").is_some() {
                    eprintln!("[operator] {line}");
                }
                if line.contains("serving admission") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("operator did not start; log:\n{}", log.lock().unwrap()));
        let field = |name: &str| -> SocketAddr {
            let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
            line[start..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        Operator {
            https: field("https"),
            admin: field("admin"),
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS client configuration trusting only `ca_pem`.
pub fn tls_client(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// One HTTPS connection to the operator that may carry several requests (keep-alive).
pub struct Conn {
    pub sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub peer_cert: Vec<u8>,
    pub closed: tokio::task::JoinHandle<()>,
}

pub async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Conn {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    let peer_cert = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
    });
    Conn {
        sender,
        peer_cert,
        closed,
    }
}

impl Conn {
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, String) {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = self
            .sender
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// An `admission.k8s.io/v1` review of `object` for `kind` in `group`.
pub fn review(
    group: &str,
    kind: &str,
    operation: &str,
    object: serde_json::Value,
    old: Option<serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0d2e1c4a-7f4b-4f5e-9a55-3c1f4c1b2a99",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
            "name": object["metadata"]["name"],
            "namespace": "default",
            "operation": operation,
            "userInfo": {"username": "tester"},
            "object": object,
            "oldObject": old,
            "dryRun": false
        }
    })
}

/// A VolumeBackup with the given webhook URLs.
pub fn volume_backup(success: Option<&str>, failure: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "backups.k8s.bnerd.com/v1",
        "kind": "VolumeBackup",
        "metadata": {"name": "my-backup", "namespace": "default"},
        "spec": {
            "volumeClaimRef": {"name": "my-data-pvc"},
            "schedule": "0 3 * * *",
            "repository": {"url": "s3:https://s3.example.com/backups", "passwordSecretRef": {"name": "restic", "key": "password"}},
            "webhooks": {"success": success, "failure": failure}
        }
    })
}

//! A real S3-compatible server for tests: VersityGW with its posix backend, over TLS with a CA
//! made for the occasion. Built by `tools/s3-server build` (cached outside the repository);
//! a test that needs it fails, with the command to run, when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

use crate::control_plane::repo_root;

pub const ACCESS_KEY: &str = "AKIATESTKEY0000000001";
pub const SECRET_KEY: &str = "test-secret-key-for-versitygw-0000000001";

pub struct S3Server {
    child: Child,
    pub port: u16,
    /// Buckets are the directories below it; files in them are objects.
    pub root: PathBuf,
    /// PEM of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn binary() -> Result<PathBuf> {
    let script = repo_root().join("tools/s3-server");
    let out = Command::new(&script)
        .arg("bin")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.is_file() {
        bail!(
            "no S3 server binary at {}; run: {} build",
            path.display(),
            script.display()
        );
    }
    Ok(path)
}

impl S3Server {
    pub fn start() -> Result<S3Server> {
        let bin = binary()?;
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("buckets");
        std::fs::create_dir_all(&root)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "testkit S3 CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = leaf.signed_by(&key, &issuer)?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem())?;
        std::fs::write(dir.path().join("tls.crt"), cert.pem())?;
        std::fs::write(dir.path().join("tls.key"), key.serialize_pem())?;
        let port = crate::free_port()?;
        let log = std::fs::File::create(dir.path().join("versitygw.log"))?;
        let mut cmd = Command::new(bin);
        // Dies with the thread that started it (the test's), also when the test binary is killed.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .args(["--access", ACCESS_KEY, "--secret", SECRET_KEY])
            .args(["--port", &format!("127.0.0.1:{port}")])
            .arg("--cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--key")
            .arg(dir.path().join("tls.key"))
            .arg("posix")
            .arg(&root)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting versitygw")?;
        let server = S3Server {
            child,
            port,
            root,
            ca_file,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "versitygw did not listen on {port} within 20s: {}",
                    server.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket holding `objects` (key, content).
    pub fn bucket(&self, name: &str, objects: &[(&str, &[u8])]) -> Result<PathBuf> {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir)?;
        for (key, content) in objects {
            let path = dir.join(key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content)?;
        }
        Ok(dir)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("versitygw.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

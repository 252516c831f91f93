//! TLS client settings: the bundled Mozilla roots (webpki-roots), so the notifier trusts the
//! public web in any image, even one without a CA bundle (distroless, scratch), plus an optional
//! PEM file for a private CA.
//!
//! The file is read when a notification is sent, not when the notifier starts: the injector
//! mounts it from an optional ConfigMap, which the kubelet may create or update while the backup
//! runs. A file that is missing or holds no usable certificate does not stop a send; the public
//! roots still reach a public URL, and a TLS failure says what was wrong with the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// What the notifier trusts: the bundled public roots and, if set, the CAs in a PEM file.
#[derive(Clone, Debug)]
pub struct Trust {
    extra_ca: Option<PathBuf>,
}

/// The settings for one connection, and what of the extra CA file could not be used.
pub struct Loaded {
    pub config: Arc<ClientConfig>,
    /// Why some or all of the file's certificates are not trusted; `None` when all are (or
    /// there is no file).
    pub problem: Option<String>,
}

impl Trust {
    pub fn new(extra_ca: Option<PathBuf>) -> Self {
        Trust { extra_ca }
    }

    pub fn extra_ca(&self) -> Option<&Path> {
        self.extra_ca.as_deref()
    }

    /// Reads the extra CA file now and fails when it is missing or holds no usable
    /// certificate, for callers (a human running `send`) who want to hear about it at once.
    pub fn check(&self) -> anyhow::Result<()> {
        match &self.extra_ca {
            Some(path) => add_pem_file(&mut RootCertStore::empty(), path).map(|_| ()),
            None => Ok(()),
        }
    }

    /// The client settings as of now. Never fails over the extra CA file: its problem is
    /// returned beside the public roots instead.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let problem = match &self.extra_ca {
            None => None,
            Some(path) => match add_pem_file(&mut roots, path) {
                Ok(0) => None,
                Ok(skipped) => Some(format!(
                    "{skipped} certificate(s) in CA file {} could not be used",
                    path.display()
                )),
                Err(e) => Some(format!("{e:#}; only the bundled public roots are trusted")),
            },
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Only HTTP/1.1 is spoken; saying so stops a server from picking h2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Loaded {
            config: Arc::new(config),
            problem,
        })
    }
}

/// Adds the usable certificates of a PEM file to `roots` and returns how many it skipped; an
/// error when the file cannot be read or has no usable certificate.
fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> anyhow::Result<usize> {
    let pem = read_pem(path)?;
    let (added, ignored) = roots.add_parsable_certificates(pem.certs);
    if added == 0 {
        bail!("CA file {}: no usable certificate in it", path.display());
    }
    Ok(pem.skipped + ignored)
}

struct Pem {
    certs: Vec<CertificateDer<'static>>,
    /// PEM sections that did not decode.
    skipped: usize,
}

/// The certificates of a PEM file; an error when it cannot be read or has none that decode.
fn read_pem(path: &Path) -> anyhow::Result<Pem> {
    let what = || format!("CA file {}", path.display());
    // A few kilobytes from a local volume; reading them inline is cheaper than a blocking task.
    let bytes = crate::pem_file::read(path).with_context(what)?;
    let mut pem = Pem {
        certs: Vec::new(),
        skipped: 0,
    };
    // The slice iterator consumes input on errors too, so a bad section is skipped, not looped on.
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        match cert {
            Ok(c) => pem.certs.push(c.into_owned()),
            Err(_) => pem.skipped += 1,
        }
    }
    if pem.certs.is_empty() {
        bail!("{}: no PEM certificate (BEGIN CERTIFICATE) in it", what());
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_A_CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn bundled_roots_load_without_any_file() {
        let loaded = Trust::new(None).load().unwrap();
        assert!(loaded.problem.is_none());
        assert!(Trust::new(None).check().is_ok());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_reported_but_never_stops_loading() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for (path, says) in [(&missing, "nope.pem"), (&empty, "no PEM certificate")] {
            let trust = Trust::new(Some(path.clone()));
            let e = trust.check().unwrap_err();
            assert!(format!("{e:#}").contains(says), "{e:#}");
            let problem = trust.load().unwrap().problem.unwrap();
            assert!(problem.contains(says), "{problem}");
            assert!(
                problem.contains("only the bundled public roots"),
                "{problem}"
            );
        }
    }

    #[test]
    fn a_file_whose_only_certificate_is_unusable_is_refused_by_check() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, NOT_A_CERT).unwrap();
        let trust = Trust::new(Some(bad));
        let e = trust.check().unwrap_err();
        assert!(format!("{e:#}").contains("no usable certificate"), "{e:#}");
        let problem = trust.load().unwrap().problem.unwrap();
        assert!(
            problem.contains("only the bundled public roots"),
            "{problem}"
        );
    }

    #[test]
    fn a_bundle_with_a_bad_certificate_keeps_the_good_ones_and_says_how_many_were_not() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("{}{NOT_A_CERT}{}", ca_pem(), ca_pem())).unwrap();
        let trust = Trust::new(Some(bundle));
        assert!(trust.check().is_ok());
        let loaded = trust.load().unwrap();
        let problem = loaded.problem.unwrap();
        assert!(problem.starts_with("1 certificate(s)"), "{problem}");
    }
}

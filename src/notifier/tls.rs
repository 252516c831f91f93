//! TLS client settings: the bundled Mozilla roots (webpki-roots), so the notifier trusts the
//! public web in any image, even one without a CA bundle (distroless, scratch), plus an optional
//! PEM file for a private CA.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

pub fn client_config(extra_ca: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        add_pem_file(&mut roots, path)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Only HTTP/1.1 is spoken; saying so stops a server from picking h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> anyhow::Result<()> {
    let what = || format!("CA file {}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(what)?;
    let mut added = 0;
    for cert in certs {
        let cert = cert
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(what)?;
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(what)?;
        added += 1;
    }
    if added == 0 {
        bail!("{}: no PEM certificate (BEGIN CERTIFICATE) in it", what());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_roots_load_without_any_file() {
        assert!(client_config(None).is_ok());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(Some(&missing)).unwrap_err();
        assert!(format!("{e:#}").contains("nope.pem"), "{e:#}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(format!("{e:#}").contains("no PEM certificate"), "{e:#}");
    }
}

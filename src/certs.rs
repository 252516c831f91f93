//! Certificates for the admission server: a CA and a serving certificate signed by it. Used by
//! `backup-operator cert generate` (development), `tools/dev`, the tests, and the self-managed
//! certificate mode.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // Tolerate clock skew between this host and the apiserver, without stretching short-lived
    // certificates (renewal is computed from the whole lifetime).
    let skew = (valid_for / 10).min(Duration::from_secs(300));
    params.not_before = now - skew;
    params.not_after = now + valid_for;
}

/// A new self-signed CA.
pub fn generate_ca(common_name: &str, valid_for: Duration) -> Result<PemPair> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, valid_for);
    let cert = params.self_signed(&key).context("self-signing the CA")?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A serving certificate for `dns_names` and `ips`, signed by `ca`.
pub fn issue_serving(
    ca: &PemPair,
    dns_names: &[String],
    ips: &[IpAddr],
    valid_for: Duration,
) -> Result<PemPair> {
    let ca_key = KeyPair::from_pem(&ca.key).context("reading the CA key")?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert, ca_key).context("reading the CA certificate")?;
    let key = KeyPair::generate().context("generating the serving key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        dns_names
            .first()
            .map(String::as_str)
            .unwrap_or("backup-operator"),
    );
    params.distinguished_name = dn;
    for name in dns_names {
        params.subject_alt_names.push(SanType::DnsName(
            name.clone()
                .try_into()
                .with_context(|| format!("{name:?} is not a valid DNS name"))?,
        ));
    }
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, valid_for);
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the serving certificate")?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// `(not_before, not_after)` of a DER certificate, as Unix seconds.
pub fn validity_der(der: &[u8]) -> Result<(i64, i64)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("the certificate cannot be parsed: {e}"))?;
    let v = parsed.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// `(not_before, not_after)` of the first certificate in a PEM bundle.
pub fn validity_pem(pem: &str) -> Result<(i64, i64)> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).context("no PEM certificate")?;
    validity_der(&der)
}

/// The certificates of a PEM bundle, each as a PEM block of its own (LF line ends, 64 columns),
/// so that equal certificates compare equal as text. Blocks that are not certificates, and a
/// certificate that is not valid PEM, are left out.
pub fn pem_certificates(pem: &[u8]) -> Vec<String> {
    use base64::Engine;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        // The iterator goes on after a block it cannot decode; one whose END line is missing
        // runs into the next block and yields bytes that are no certificate, which the parse
        // drops (the next certificate is lost with it).
        .filter_map(Result::ok)
        .filter(|der| x509_parser::parse_x509_certificate(der).is_ok())
        .map(|der| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
            let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
            for line in b64.as_bytes().chunks(64) {
                out.push_str(&String::from_utf8_lossy(line));
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
            out
        })
        .collect()
}

/// One PEM bundle of the certificates in `bundles`, each once, in the order first seen.
pub fn pem_bundle<'a>(bundles: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut certs: Vec<String> = Vec::new();
    for cert in bundles.into_iter().flat_map(pem_certificates) {
        if !certs.contains(&cert) {
            certs.push(cert);
        }
    }
    certs.concat()
}

/// ring, which x509-parser verifies with, takes RSA keys of 2048 to 8192 bits only, and fails
/// every signature of another size; Go's TLS client (the apiserver's) also takes 1024-bit keys.
fn rsa_key_ring_cannot_use(cert: &x509_parser::prelude::X509Certificate<'_>) -> bool {
    use x509_parser::public_key::PublicKey;
    // 0 is x509-parser's answer for a modulus no client takes.
    matches!(cert.public_key().parsed(), Ok(PublicKey::RSA(rsa)) if !matches!(rsa.key_size(), 0 | 2048..=8192))
}

/// Whether the chain in PEM `chain` (a leaf, then any intermediates, as a TLS server sends it)
/// leads to a CA of the PEM bundle `cas`: each certificate names the next as issuer and carries
/// a signature the next one's key verifies, until one is in `cas` or signed by one there. What
/// a TLS client trusting `cas` checks first (validity and names aside, see [`names_missing`]).
/// `None` when that cannot be told here: a signature algorithm x509-parser does not verify
/// (P-521, say) or an RSA key size it does not take (1024 bits), which a client may well accept.
pub fn signed_by(chain: &[u8], cas: &[u8]) -> Option<bool> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::error::X509Error;
    use x509_parser::prelude::X509Certificate;
    let ders = |pem: &[u8]| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem)
            .filter_map(Result::ok)
            .collect()
    };
    let (chain_ders, ca_ders) = (ders(chain), ders(cas));
    let (chain, cas) = (parsed(&chain_ders), parsed(&ca_ders));
    let mut unsure = false;
    // `Some(true)` signed, `Some(false)` not, `None` cannot tell.
    let mut issued = |child: &X509Certificate<'_>, parent: &X509Certificate<'_>| {
        if parent.subject() != child.issuer() {
            return false;
        }
        match child.verify_signature(Some(parent.public_key())) {
            Ok(()) => true,
            Err(X509Error::SignatureUnsupportedAlgorithm) => {
                unsure = true;
                false
            }
            Err(_) if rsa_key_ring_cannot_use(parent) => {
                unsure = true;
                false
            }
            Err(_) => false,
        }
    };
    for (i, cert) in chain.iter().enumerate() {
        if cas
            .iter()
            .any(|ca| ca.as_ref() == cert.as_ref() || issued(cert, ca))
        {
            return Some(true);
        }
        // Only a link to the next certificate of the chain carries on.
        match chain.get(i + 1) {
            Some(next) if issued(cert, next) => {}
            _ => break,
        }
    }
    if unsure { None } else { Some(false) }
}

/// The certificates of `ders` that parse.
fn parsed<'a>(
    ders: &'a [rustls_pki_types::CertificateDer<'static>],
) -> Vec<x509_parser::prelude::X509Certificate<'a>> {
    ders.iter()
        .filter_map(|d| x509_parser::parse_x509_certificate(d).ok().map(|(_, c)| c))
        .collect()
}

/// The names of `dns_names` and `ips` that the first certificate of PEM `cert` does not carry
/// as a subject alternative name.
pub fn names_missing(cert: &str, dns_names: &[String], ips: &[IpAddr]) -> Result<Vec<String>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::extensions::GeneralName;
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).context("no PEM certificate")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("the certificate cannot be parsed: {e}"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| anyhow::anyhow!("the subject alternative names cannot be parsed: {e}"))?;
    let names = san.map(|s| s.value.general_names.as_slice()).unwrap_or(&[]);
    let has_dns = |want: &str| {
        names
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName(d) if d.eq_ignore_ascii_case(want)))
    };
    let has_ip = |want: &IpAddr| {
        let octets = match want {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        names
            .iter()
            .any(|n| matches!(n, GeneralName::IPAddress(b) if *b == octets.as_slice()))
    };
    Ok(dns_names
        .iter()
        .filter(|d| !has_dns(d))
        .cloned()
        .chain(ips.iter().filter(|ip| !has_ip(ip)).map(ToString::to_string))
        .collect())
}

/// The DNS names a Service's clients use: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Writes `ca.crt`, `ca.key`, `tls.crt`, `tls.key` into `dir` (keys mode 0600). All four are
/// written to temporary files first and renamed only when every one was written, so a failure
/// (a full disk) leaves an earlier set whole rather than a new CA beside an old key. An earlier
/// set is replaced only with `replace` (its CA and key would be lost), and only when each of
/// its four entries is a file.
pub fn write_dir(dir: &Path, ca: &PemPair, serving: &PemPair, replace: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("{} exists and is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        ("ca.crt", &ca.cert, 0o644),
        ("ca.key", &ca.key, 0o600),
        ("tls.crt", &serving.cert, 0o644),
        ("tls.key", &serving.key, 0o600),
    ];
    for (name, _, _) in &files {
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.is_file() && !m.is_symlink() => {
                anyhow::bail!("{} is in the way: it is not a file", path.display())
            }
            Ok(_) if !replace => anyhow::bail!(
                "{} exists: pass --force to replace the whole set (its CA and key are lost)",
                path.display()
            ),
            _ => {}
        }
    }
    let tmp = |name: &str| dir.join(format!(".{name}.tmp"));
    let written = files.iter().try_for_each(|(name, body, mode)| {
        let tmp = tmp(name);
        // A leftover (or a planted symlink) is removed and the file created anew, so a key
        // gets its mode and lands in `dir`, never where a link points.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", tmp.display()));
            }
            _ => {}
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, body.as_bytes()))
            .with_context(|| format!("writing {}", tmp.display()))
    });
    if let Err(e) = written {
        for (name, _, _) in &files {
            let _ = std::fs::remove_file(tmp(name));
        }
        return Err(e);
    }
    for (name, _, _) in &files {
        let path = dir.join(name);
        if let Err(e) = std::fs::rename(tmp(name), &path) {
            // Keys are not left behind under temporary names.
            for (name, _, _) in &files {
                let _ = std::fs::remove_file(tmp(name));
            }
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn write_dir_never_follows_a_planted_link_and_names_a_file_in_the_way() {
        use std::os::unix::fs::PermissionsExt;
        let ca = generate_ca("ours", HOUR).unwrap();
        let serving = issue_serving(&ca, &["svc".into()], &[], HOUR).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched").unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join(".ca.key.tmp")).unwrap();

        write_dir(&out, &ca, &serving, false).unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched");
        assert_eq!(std::fs::read_to_string(out.join("ca.key")).unwrap(), ca.key);
        let mode = std::fs::metadata(out.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            4,
            "no temporary file left"
        );

        let e = write_dir(&elsewhere, &ca, &serving, false).unwrap_err();
        assert!(
            format!("{e:#}").contains("exists and is not a directory"),
            "{e:#}"
        );

        // An earlier set stays unless replacing is asked for; an entry that is no file stops
        // it before anything is written.
        let other = generate_ca("other", HOUR).unwrap();
        let e = write_dir(&out, &other, &serving, false).unwrap_err();
        assert!(format!("{e:#}").contains("pass --force"), "{e:#}");
        assert_eq!(std::fs::read_to_string(out.join("ca.key")).unwrap(), ca.key);
        std::fs::remove_file(out.join("tls.crt")).unwrap();
        std::fs::create_dir(out.join("tls.crt")).unwrap();
        let e = write_dir(&out, &other, &serving, true).unwrap_err();
        assert!(format!("{e:#}").contains("not a file"), "{e:#}");
        assert_eq!(std::fs::read_to_string(out.join("ca.key")).unwrap(), ca.key);
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4);
        std::fs::remove_dir(out.join("tls.crt")).unwrap();
        write_dir(&out, &other, &serving, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("ca.key")).unwrap(),
            other.key
        );
    }

    #[test]
    fn signed_by_finds_the_issuing_ca_in_a_bundle_and_only_it() {
        let ca = generate_ca("ours", HOUR).unwrap();
        let other = generate_ca("other", HOUR).unwrap();
        let leaf = issue_serving(&ca, &["svc".into()], &[], HOUR).unwrap();
        let both = pem_bundle([other.cert.as_bytes(), ca.cert.as_bytes()]);
        let signed = |chain: &str, cas: &str| signed_by(chain.as_bytes(), cas.as_bytes());
        assert_eq!(signed(&leaf.cert, &both), Some(true));
        assert_eq!(signed(&leaf.cert, &ca.cert), Some(true));
        assert_eq!(signed(&leaf.cert, &other.cert), Some(false));
        // Same subject, another key: the name alone is not enough.
        let impostor = generate_ca("ours", HOUR).unwrap();
        assert_eq!(signed(&leaf.cert, &impostor.cert), Some(false));
        assert_eq!(signed("not pem", &ca.cert), Some(false));
        assert_eq!(signed(&leaf.cert, ""), Some(false));
    }

    /// A serving certificate from an intermediate CA, sent with it (cert-manager's CA issuer
    /// under a root, say): trusted by a client that trusts the root only.
    #[test]
    fn signed_by_follows_the_chain_to_a_trusted_ca() {
        let root = generate_ca("root", HOUR).unwrap();
        let root_key = KeyPair::from_pem(&root.key).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&root.cert, root_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let intermediate = PemPair {
            cert: params.signed_by(&key, &issuer).unwrap().pem(),
            key: key.serialize_pem(),
        };
        let leaf = issue_serving(&intermediate, &["svc".into()], &[], HOUR).unwrap();
        let chain = format!("{}{}", leaf.cert, intermediate.cert);
        let signed = |chain: &str, cas: &str| signed_by(chain.as_bytes(), cas.as_bytes());
        assert_eq!(signed(&chain, &root.cert), Some(true));
        assert_eq!(signed(&chain, &intermediate.cert), Some(true));
        assert_eq!(
            signed(&leaf.cert, &root.cert),
            Some(false),
            "the link is missing"
        );
        let stranger = generate_ca("stranger", HOUR).unwrap();
        assert_eq!(signed(&chain, &stranger.cert), Some(false));
        // A chain whose second certificate did not sign the first leads nowhere.
        let unrelated = format!("{}{}", leaf.cert, root.cert);
        assert_eq!(signed(&unrelated, &root.cert), Some(false));
    }

    /// A 1024-bit RSA CA (`openssl req -x509 -newkey rsa:1024 -sha256`, valid for a century) and
    /// a serving certificate it signed. Go's TLS client trusts the pair; ring refuses the key size.
    const RSA_1024_CA: &str = "-----BEGIN CERTIFICATE-----\nMIICGDCCAYGgAwIBAgIUM63wRpKbo88uygBhTYYP+qWU7oIwDQYJKoZIhvcNAQEL\nBQAwHTEbMBkGA1UEAwwSbGVnYWN5LXJzYS0xMDI0LWNhMCAXDTI2MTEyODEyMjgy\nMFoYDzIxMjYxMTA0MTIyODIwWjAdMRswGQYDVQQDDBJsZWdhY3ktcnNhLTEwMjQt\nY2EwgZ8wDQYJKoZIhvcNAQEBBQADgY0AMIGJAoGBAL/0nX61NgTAC/ZW52yb98+V\nwOnFgktWQaYHaTIVSt1L3bsW2U5zNVhnIQ4dHUStsUZmNc6DAg7uMpTmeMfLVfC1\narIvYOGhOc/ePkcGIemrQs1byLAvgB5FP2s8D0oQzxZlwMXRRaXw/corWm6wi8BS\nFckp7V3pGEc4zUKHk+01AgMBAAGjUzBRMB0GA1UdDgQWBBSATB/etYZO2oh0cMYr\nIDfJHZwQUDAfBgNVHSMEGDAWgBSATB/etYZO2oh0cMYrIDfJHZwQUDAPBgNVHRMB\nAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUAA4GBAIk8X6VhTjJv5rqyroYNM6SmqTWr\nL1teRaIzajqhIV2WbYvooY+FCBs9WpU4xKAnlXuEkAGFsaXYa/Suuh/HhwSEUJGX\nEGd+zbR9gHI1kfh+MpkGZwKnQC6yw0OGfsXoLZFezDlgRw/bx9Tytt+eU0W7TOrL\nVeNwBT7jDwEnVQq8\n-----END CERTIFICATE-----\n";
    const RSA_1024_SIGNED: &str = "-----BEGIN CERTIFICATE-----\nMIICPzCCAagCFD5OYt+ceJRSR2rhC5O6WbYboJLVMA0GCSqGSIb3DQEBCwUAMB0x\nGzAZBgNVBAMMEmxlZ2FjeS1yc2EtMTAyNC1jYTAgFw0yNjExMjgxMjI4MjBaGA8y\nMTI2MTEwNDEyMjgyMFowGjEYMBYGA1UEAwwPYmFja3VwLW9wZXJhdG9yMIIBIjAN\nBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA4PxVV2ZrNRbP4Ebfn70Mf1+OAqJ/\nopiGgzylUUvY8oQIF2AuWdnBTOt39u0Q8Gpdp3li6JyX37/OMZtRBKs0AVglq9km\ngjrouvWDJ7engUDHDmzLNFwNhI8b0z8E1tOrxuV22Bk9GU9nc3bZ2gR8gDPfsui8\n5OVge1ORDJZoaz2kO4NdvUeJtehr0DUKsRSeXmM++heClbTQ9heQMKJt4N3jLpuO\n3hRYGA+J+zdJXWlhj/xSrU3cbGaQ32sg3nwvyJgeyVOLKfvdZEKulXe8incF+qku\nbuMBHce9yQwYQTAbeqkfuDw/3PCluZ14vafT/NI2mNieZsQXS3ariKfDUQIDAQAB\nMA0GCSqGSIb3DQEBCwUAA4GBADblQkqqez0AHpWkeiE5gSGWy7mkqk4XJFBzDSkg\ng3ILbK9gsmsnPETwXGYQlATNJbR5ydXCSx5QMHo3BkEIv5l+ypxFU/fNx4mcFdMD\nROE2rMNgsZBsFaqOsQUbC/fcj+0d12BrHzGyAcUgWKVlwP6ZUv5pn3pArqqz7daf\n1NBo\n-----END CERTIFICATE-----\n";

    #[test]
    fn signed_by_cannot_tell_with_an_rsa_key_size_ring_does_not_take() {
        let signed = |chain: &str, cas: &str| signed_by(chain.as_bytes(), cas.as_bytes());
        assert_eq!(signed(RSA_1024_SIGNED, RSA_1024_CA), None);
        let ours = generate_ca("backup-operator-ca", HOUR).unwrap();
        let both = pem_bundle([RSA_1024_CA.as_bytes(), ours.cert.as_bytes()]);
        assert_eq!(signed(RSA_1024_SIGNED, &both), None);
        // Another issuer's name is told without verifying a signature.
        assert_eq!(signed(RSA_1024_SIGNED, &ours.cert), Some(false));
        let leaf = issue_serving(&ours, &["svc".into()], &[], HOUR).unwrap();
        assert_eq!(signed(&leaf.cert, &both), Some(true));
    }

    #[test]
    fn names_missing_lists_what_the_certificate_does_not_carry() {
        let ca = generate_ca("ca", HOUR).unwrap();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let leaf = issue_serving(&ca, &["svc".into(), "svc.ns".into()], &[ip], HOUR).unwrap();
        let none: Vec<String> = Vec::new();
        assert_eq!(
            names_missing(&leaf.cert, &["SVC.ns".into()], &[ip]).unwrap(),
            none
        );
        assert_eq!(
            names_missing(
                &leaf.cert,
                &["svc".into(), "svc.other".into()],
                &["::1".parse().unwrap()]
            )
            .unwrap(),
            ["svc.other", "::1"]
        );
        assert!(names_missing("junk", &[], &[]).is_err());
    }
}

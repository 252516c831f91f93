//! Names and references given on the command line, checked at start-up the way the apiserver
//! (or a TLS client) checks them where they end up. Without the check a bad one starts fine and
//! then makes every later write, mutation or handshake fail, far from the flag that caused it.
//! Each function is a clap `value_parser` and answers in one line.

/// A DNS-1123 label, what namespaces and Services are named with: lower-case letters, digits and
/// `-`, starting and ending with a letter or digit, at most 63 characters.
pub fn label(s: &str) -> Result<String, String> {
    if s.len() > 63 || !is_label(s, false) {
        return Err(format!(
            "{s:?} is not a namespace or Service name: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"
        ));
    }
    Ok(s.to_owned())
}

/// A DNS-1123 subdomain, what ConfigMaps, Secrets, Leases and webhook configurations are named
/// with: labels joined by `.`, at most 253 characters.
pub fn subdomain(s: &str) -> Result<String, String> {
    if s.len() > 253 || !s.split('.').all(|l| is_label(l, false)) {
        return Err(format!(
            "{s:?} is not a Kubernetes object name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"
        ));
    }
    Ok(s.to_owned())
}

/// A DNS name for a certificate's subjectAltName: a subdomain in any case, or a wildcard
/// `*.` before one. A name a TLS client never matches would make a certificate that only ever
/// fails.
pub fn host_name(s: &str) -> Result<String, String> {
    // An IP address passes as a name, but TLS clients match an address only against IP SANs.
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{s:?} is an IP address, which a TLS client matches only against an IP entry: pass it as an IP (--cert-ip, --ip)"
        ));
    }
    let rest = s.strip_prefix("*.").unwrap_or(s);
    if s.len() > 253 || !rest.split('.').all(|l| l.len() <= 63 && is_label(l, true)) {
        return Err(format!(
            "{s:?} is not a DNS name: letters, digits, '-' and '.', each label starting and ending with a letter or digit, optionally after '*.'"
        ));
    }
    Ok(s.to_owned())
}

/// A container image reference. The apiserver refuses an empty image in a pod template and
/// surrounding whitespace in a pod, so either would break every CronJob or pod it goes into;
/// whitespace or a control character anywhere is no reference a registry resolves.
pub fn image(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{s:?} is not an image reference: it is empty or holds whitespace or control characters"
        ));
    }
    Ok(s.to_owned())
}

/// A leader-election identity. An empty one reads as "nobody holds the Lease" to every other
/// replica, so two replicas could lead at once; a longer one than an Event's
/// `reportingInstance` takes (128) would get every Event the controller writes refused.
pub fn identity(s: &str) -> Result<String, String> {
    if s.trim().is_empty() || s.chars().any(char::is_control) || s.len() > 128 {
        return Err(format!(
            "{s:?} is not a leader-election identity: it is blank, longer than 128 bytes or holds control characters"
        ));
    }
    Ok(s.to_owned())
}

fn is_label(l: &str, any_case: bool) -> bool {
    let ok = |b: u8| b.is_ascii_lowercase() || (any_case && b.is_ascii_uppercase());
    !l.is_empty()
        && l.bytes().all(|b| ok(b) || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(f: fn(&str) -> Result<String, String>, bad: &str, says: &str) {
        let e = f(bad).unwrap_err();
        assert!(e.contains(says) && !e.contains('\n'), "{bad:?}: {e}");
    }

    #[test]
    fn object_names_are_taken_as_the_apiserver_takes_them() {
        for good in ["backup-operator-system", "a", "ns1"] {
            assert_eq!(label(good).as_deref(), Ok(good));
        }
        for bad in ["", "Ops", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            refused(label, bad, "is not a namespace or Service name");
        }
        for good in [
            "kube-root-ca.crt",
            "relay-ca",
            "a",
            "backup-operator-leader",
        ] {
            assert_eq!(subdomain(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "Relay",
            "-ca",
            "ca-",
            "a..b",
            "ca_bundle",
            "a/b",
            &"a".repeat(254),
        ] {
            refused(subdomain, bad, "is not a Kubernetes object name");
        }
    }

    #[test]
    fn certificate_names_are_names_a_client_can_match() {
        for good in [
            "webhook.example.com",
            "Svc.NS.svc",
            "*.example.com",
            "localhost",
        ] {
            assert_eq!(host_name(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "a b",
            "a..b",
            "-a.example.com",
            "*",
            "a.*.com",
            "x.",
            &"a".repeat(64),
        ] {
            refused(host_name, bad, "is not a DNS name");
        }
        for ip in ["10.0.0.5", "::1", "fd00::1"] {
            refused(host_name, ip, "is an IP address");
        }
    }

    #[test]
    fn images_and_identities_are_refused_when_blank() {
        for good in [
            "ghcr.io/bnerd/backup-operator:1.0",
            "restic/restic@sha256:ab",
            "r:t",
        ] {
            assert_eq!(image(good).as_deref(), Ok(good));
        }
        for bad in ["", " ", "restic:1 ", " restic", "a\tb", "a\nb"] {
            refused(image, bad, "is not an image reference");
        }
        for good in ["backup-operator-5d9f-abcde", "host-123"] {
            assert_eq!(identity(good).as_deref(), Ok(good));
        }
        for bad in ["", "  ", "a\nb", &"p".repeat(129)] {
            refused(identity, bad, "is not a leader-election identity");
        }
    }
}

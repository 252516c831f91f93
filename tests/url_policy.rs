//! Table-driven cases for the webhook URL policy: every spelling the issue lists, and the
//! interplay of allow, deny and private-network flags.

use std::net::IpAddr;

use backup_operator::url_policy::{Destination, UrlPolicy, Violation};

#[derive(Debug)]
enum Want {
    Ok,
    /// Allowed, with an admission warning.
    Warn,
    /// Refused; the message must contain this text.
    Deny(&'static str),
}
use Want::*;

fn policy(f: impl FnOnce(&mut UrlPolicy)) -> UrlPolicy {
    let mut p = UrlPolicy::default();
    f(&mut p);
    p
}

fn rules(list: &[&str]) -> Vec<Destination> {
    list.iter().map(|r| r.parse().unwrap()).collect()
}

fn run(p: &UrlPolicy, cases: &[(&str, Want)]) -> usize {
    let mut failures = Vec::new();
    for (url, want) in cases {
        let got = p.check(url);
        let ok = match (want, &got) {
            (Ok, Result::Ok(c)) => c.warnings().is_empty(),
            (Warn, Result::Ok(c)) => !c.warnings().is_empty(),
            (Deny(text), Err(v)) => v.to_string().contains(text),
            _ => false,
        };
        if !ok {
            failures.push(format!("{url:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn default_policy() {
    let p = UrlPolicy::default();
    let cases: &[(&str, Want)] = &[
        // The seed document's URLs.
        ("https://hooks.example.com/backup-success", Ok),
        ("https://hooks.example.com/backup-failure", Ok),
        ("https://hc-ping.com/your-check-uuid", Ok),
        ("https://your-relay.example.com/backup-alert", Ok),
        ("https://hooks.example.com/s3-backup-success", Ok),
        ("https://hooks.example.com:8443/x?token=abc", Ok),
        ("https://HOOKS.EXAMPLE.COM/x", Ok),
        ("https://hooks.example.com./x", Ok),
        ("https://8.8.8.8/x", Ok),
        ("https://[2001:4860:4860::8888]/x", Ok),
        ("https://relay.monitoring.svc.cluster.local/x", Ok),
        ("http://hooks.example.com/x", Warn),
        ("HTTP://hooks.example.com/x", Warn),
        // Private ranges are allowed by default: in-cluster relays are common.
        ("https://10.0.0.5/x", Ok),
        ("https://172.16.3.4/x", Ok),
        ("https://172.31.255.255/x", Ok),
        ("https://192.168.1.10/x", Ok),
        ("https://100.64.0.1/x", Ok),
        ("https://[fd12:3456::1]/x", Ok),
        ("https://172.32.0.1/x", Ok),
        // Scheme, syntax and structure.
        (
            "ftp://hooks.example.com/x",
            Deny("scheme \"ftp\" is not allowed"),
        ),
        ("file:///etc/passwd", Deny("scheme \"file\"")),
        ("gopher://hooks.example.com/", Deny("scheme \"gopher\"")),
        ("javascript:alert(1)", Deny("scheme \"javascript\"")),
        ("data:text/plain,hi", Deny("scheme \"data\"")),
        ("hooks.example.com/x", Deny("is not an absolute URL")),
        ("/relative/path", Deny("is not an absolute URL")),
        ("", Deny("is not an absolute URL")),
        ("https://", Deny("is not an absolute URL")),
        ("https://user:pw@hooks.example.com/", Deny("userinfo")),
        ("https://user@hooks.example.com/", Deny("userinfo")),
        ("https://:pw@hooks.example.com/", Deny("userinfo")),
        ("https://hooks.example.com/x#frag", Deny("fragment")),
        ("https://hooks.example.com/x#", Deny("fragment")),
        ("https://hooks.example.com/a b", Deny("whitespace")),
        (" https://hooks.example.com/", Deny("whitespace")),
        ("https://hooks.example.com/\t", Deny("whitespace")),
        ("https://hooks.exa\nmple.com/", Deny("whitespace")),
        ("https://hooks.example.com/\u{0}", Deny("control")),
        ("https://hooks.example.com/\u{7f}", Deny("control")),
        ("https://hooks.example.com/\u{a0}", Deny("whitespace")),
        (
            "https://evil.example\\@hooks.example.com/",
            Deny("backslash"),
        ),
        (
            "https://hooks.example.com:99999/",
            Deny("is not an absolute URL"),
        ),
        ("https://1.2.3.4.5/", Deny("is not an absolute URL")),
        // Loopback in every spelling.
        ("https://127.0.0.1/x", Deny("host 127.0.0.1 is loopback")),
        ("https://127.1.2.3/x", Deny("is loopback")),
        ("https://127.1/x", Deny("host 127.0.0.1 is loopback")),
        ("https://2130706433/x", Deny("host 127.0.0.1 is loopback")),
        ("https://0177.0.0.1/x", Deny("host 127.0.0.1 is loopback")),
        ("https://0x7f.0.0.1/x", Deny("host 127.0.0.1 is loopback")),
        ("https://0x7f000001/x", Deny("host 127.0.0.1 is loopback")),
        ("https://0x7F.1/x", Deny("host 127.0.0.1 is loopback")),
        ("https://017700000001/x", Deny("host 127.0.0.1 is loopback")),
        ("https://127.0.0.1./x", Deny("host 127.0.0.1 is loopback")),
        (
            "https://%31%32%37.0.0.1/x",
            Deny("host 127.0.0.1 is loopback"),
        ),
        ("https://[::1]/x", Deny("host ::1 is loopback")),
        ("https://[0:0:0:0:0:0:0:1]/x", Deny("is loopback")),
        ("https://[::ffff:127.0.0.1]/", Deny("is loopback")),
        ("https://[::ffff:7f00:1]/", Deny("is loopback")),
        ("https://[::127.0.0.1]/", Deny("is loopback")),
        ("https://[::ffff:0:127.0.0.1]/", Deny("is loopback")),
        ("https://[64:ff9b::127.0.0.1]/", Deny("is loopback")),
        ("https://[2002:7f00:1::]/", Deny("is loopback")),
        ("https://localhost/x", Deny("host localhost is loopback")),
        ("https://LOCALHOST/x", Deny("host localhost is loopback")),
        ("https://localhost./x", Deny("host localhost is loopback")),
        (
            "https://api.localhost/x",
            Deny("host api.localhost is loopback"),
        ),
        (
            "https://Api.LocalHost./x",
            Deny("host api.localhost is loopback"),
        ),
        (
            "https://%6c%6f%63%61%6c%68%6f%73%74/x",
            Deny("host localhost is loopback"),
        ),
        // Unspecified, this network.
        ("https://0.0.0.0/x", Deny("host 0.0.0.0 is unspecified")),
        ("https://0/x", Deny("host 0.0.0.0 is unspecified")),
        ("https://0.1.2.3/x", Deny("is unspecified")),
        ("https://[::]/x", Deny("host :: is unspecified")),
        ("https://[::ffff:0.0.0.0]/x", Deny("is unspecified")),
        // Link-local and cloud metadata.
        (
            "http://169.254.169.254/latest",
            Deny(
                "host 169.254.169.254 is link-local (cloud metadata); notifications cannot be sent there",
            ),
        ),
        (
            "https://169.254.169.254/latest/meta-data/",
            Deny("link-local (cloud metadata)"),
        ),
        (
            "https://2852039166/latest",
            Deny("host 169.254.169.254 is link-local (cloud metadata)"),
        ),
        (
            "https://0xa9fea9fe/latest",
            Deny("host 169.254.169.254 is link-local (cloud metadata)"),
        ),
        (
            "https://0251.0376.0251.0376/",
            Deny("host 169.254.169.254 is link-local (cloud metadata)"),
        ),
        (
            "https://169.254.43518/",
            Deny("host 169.254.169.254 is link-local (cloud metadata)"),
        ),
        ("https://[::ffff:169.254.169.254]/", Deny("cloud metadata")),
        ("https://[::ffff:a9fe:a9fe]/", Deny("cloud metadata")),
        (
            "https://[fd00:ec2::254]/latest",
            Deny("host fd00:ec2::254 is a cloud metadata address"),
        ),
        ("https://[FD00:EC2:0:0:0:0:0:254]/", Deny("cloud metadata")),
        (
            "https://169.254.170.2/v2/credentials",
            Deny("cloud metadata"),
        ),
        ("https://100.100.100.200/latest", Deny("cloud metadata")),
        (
            "https://metadata.google.internal/computeMetadata/v1/",
            Deny("host metadata.google.internal is a cloud metadata service"),
        ),
        (
            "https://METADATA.GOOGLE.INTERNAL./x",
            Deny("cloud metadata"),
        ),
        (
            "https://169.254.1.1/x",
            Deny("host 169.254.1.1 is link-local"),
        ),
        ("https://[fe80::1]/x", Deny("host fe80::1 is link-local")),
        ("https://[febf::1]/x", Deny("is link-local")),
        // Multicast, broadcast, reserved.
        ("https://224.0.0.1/x", Deny("is multicast")),
        ("https://239.255.255.250/x", Deny("is multicast")),
        ("https://[ff02::1]/x", Deny("is multicast")),
        ("https://255.255.255.255/x", Deny("is broadcast")),
        (
            "https://4294967295/x",
            Deny("host 255.255.255.255 is broadcast"),
        ),
        ("https://240.0.0.1/x", Deny("is reserved")),
    ];
    let n = run(&p, cases);
    assert!(n >= 80, "only {n} cases");
}

#[test]
fn require_https() {
    let p = policy(|p| p.require_https = true);
    run(
        &p,
        &[
            ("http://hooks.example.com/x", Deny("https:// is required")),
            ("https://hooks.example.com/x", Ok),
            ("http://10.0.0.1/x", Deny("https:// is required")),
        ],
    );
}

#[test]
fn deny_private_networks() {
    let p = policy(|p| p.deny_private = true);
    run(
        &p,
        &[
            (
                "https://10.1.2.3/x",
                Deny("private and private networks are denied"),
            ),
            ("https://012.1.2.3/x", Deny("host 10.1.2.3 is private")),
            ("https://172.20.0.1/x", Deny("private (RFC 1918)")),
            ("https://192.168.0.1/x", Deny("private (RFC 1918)")),
            ("https://[::ffff:192.168.0.1]/x", Deny("private")),
            ("https://100.64.0.1/x", Deny("CGNAT")),
            ("https://100.127.255.254/x", Deny("CGNAT")),
            ("https://100.128.0.1/x", Ok),
            ("https://[fd00::1]/x", Deny("unique local")),
            ("https://[fc00::1]/x", Deny("unique local")),
            ("https://hooks.example.com/x", Ok),
        ],
    );
    let p = policy(|p| {
        p.deny_private = true;
        p.allow = rules(&["10.20.0.0/16", "relay.internal.example"]);
    });
    run(
        &p,
        &[
            ("https://10.20.3.4/x", Ok),
            ("https://10.21.3.4/x", Deny("private")),
        ],
    );
}

#[test]
fn allowlist_opens_loopback_but_never_metadata() {
    let p = policy(|p| {
        p.allow = rules(&[
            "127.0.0.1",
            "169.254.0.0/16",
            "0.0.0.0/0",
            "::/0",
            "localhost",
            "metadata.google.internal",
        ])
    });
    run(
        &p,
        &[
            ("https://127.0.0.1:8443/x", Ok),
            ("https://localhost:8443/x", Ok),
            ("https://169.254.10.10/x", Ok),
            ("https://[::1]/x", Ok),
            ("https://169.254.169.254/latest", Deny("cloud metadata")),
            ("https://[fd00:ec2::254]/", Deny("cloud metadata")),
            ("https://[::ffff:169.254.169.254]/", Deny("cloud metadata")),
            ("https://metadata.google.internal/", Deny("cloud metadata")),
            ("https://0.0.0.0/", Deny("unspecified")),
            ("https://224.0.0.1/", Deny("multicast")),
        ],
    );
}

#[test]
fn denylist_wins_over_allowlist() {
    let p = policy(|p| {
        p.allow = rules(&["10.0.0.0/8", "*.example.com"]);
        p.deny = rules(&[
            "10.9.0.0/16",
            "bad.example.com",
            "*.evil.example",
            "203.0.113.7",
        ]);
    });
    run(
        &p,
        &[
            (
                "https://10.9.1.1/x",
                Deny("matches the denied destination 10.9.0.0/16"),
            ),
            (
                "https://bad.example.com/x",
                Deny("denied destination bad.example.com"),
            ),
            ("https://BAD.example.com./x", Deny("denied destination")),
            (
                "https://a.b.evil.example/x",
                Deny("denied destination *.evil.example"),
            ),
            ("https://evil.example/x", Ok),
            ("https://notevil.example/x", Ok),
            (
                "https://203.0.113.7/x",
                Deny("denied destination 203.0.113.7/32"),
            ),
            ("https://[::ffff:203.0.113.7]/x", Deny("denied destination")),
            ("https://good.example.com/x", Ok),
        ],
    );
}

#[test]
fn resolved_addresses_are_checked_at_send_time() {
    let p = UrlPolicy::default();
    let url = p.check("https://hooks.example.com/secret-token").unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(p.check_resolved(&url, ip("93.184.216.34")), Result::Ok(()));
    let err = p.check_resolved(&url, ip("127.0.0.1")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "host hooks.example.com resolves to 127.0.0.1, which is loopback; notifications cannot be sent there"
    );
    assert!(matches!(
        p.check_resolved(&url, ip("169.254.169.254")),
        Err(Violation::ResolvesToBlocked { .. })
    ));
    assert!(p.check_resolved(&url, ip("::ffff:127.0.0.1")).is_err());
    assert!(p.check_resolved(&url, ip("10.0.0.1")).is_ok());

    // A host name on the allowlist opens what it resolves to (loopback), never metadata.
    let p = policy(|p| p.allow = rules(&["receiver.test"]));
    let url = p.check("http://receiver.test:8080/hook").unwrap();
    assert!(p.check_resolved(&url, ip("127.0.0.1")).is_ok());
    assert!(p.check_resolved(&url, ip("169.254.169.254")).is_err());
    let other = p.check("http://other.test:8080/hook").unwrap();
    assert!(p.check_resolved(&other, ip("127.0.0.1")).is_err());
}

#[test]
fn messages_never_contain_the_path_query_or_userinfo() {
    let p = UrlPolicy::default();
    for url in [
        "https://user:s3cr3t@hooks.example.com/p/s3cr3t?k=s3cr3t",
        "https://127.0.0.1/s3cr3t?k=s3cr3t",
        "ftp://hooks.example.com/s3cr3t",
        "https://hooks.example.com/s3cr3t#s3cr3t",
    ] {
        let msg = p.check(url).unwrap_err().to_string();
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }
    let ok = p
        .check("https://hooks.example.com:8443/p/s3cr3t?k=s3cr3t")
        .unwrap();
    assert_eq!(ok.redacted(), "https://hooks.example.com:8443");
}

#[test]
fn destination_rules_parse_and_reject_garbage() {
    for good in [
        "10.0.0.0/8",
        "127.0.0.1",
        "::1",
        "[::1]",
        "fd00::/8",
        "hooks.example.com",
        "*.svc.cluster.local",
        "Relay.",
    ] {
        assert!(good.parse::<Destination>().is_ok(), "{good}");
    }
    for bad in [
        "",
        "*.",
        "a b",
        "http://x",
        "10.0.0.0/33",
        "exa_mple.com",
        "*",
    ] {
        assert!(bad.parse::<Destination>().is_err(), "{bad}");
    }
}

#[test]
fn policy_round_trips_through_the_notifier_environment() {
    let p = policy(|p| {
        p.require_https = true;
        p.deny_private = true;
        p.allow = rules(&["127.0.0.1/32", "*.svc"]);
        p.deny = rules(&["bad.example"]);
    });
    let env = p.to_env();
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    assert_eq!(get("NOTIFY_REQUIRE_HTTPS").as_deref(), Some("true"));
    assert_eq!(get("NOTIFY_DENY_PRIVATE_NETWORKS").as_deref(), Some("true"));
    assert_eq!(
        get("NOTIFY_DENY_DESTINATIONS").as_deref(),
        Some("bad.example")
    );
    assert_eq!(
        get("NOTIFY_ALLOW_DESTINATIONS").as_deref(),
        Some("127.0.0.1/32,*.svc")
    );
    let parsed: Vec<Destination> = get("NOTIFY_ALLOW_DESTINATIONS")
        .unwrap()
        .split(',')
        .map(|r| r.parse().unwrap())
        .collect();
    assert_eq!(parsed, p.allow);
}

#[test]
fn hosts_with_empty_labels_are_checked_as_the_address_they_reach() {
    // WHATWG drops one empty last label before looking for an IPv4 address, so these stay
    // names in the url crate; stripped of their dots they are the address a resolver returns.
    let not_a_name = "is not a valid host name: it has an empty label";
    run(
        &UrlPolicy::default(),
        &[
            (
                "http://169.254.169.254../latest",
                Deny(
                    "host 169.254.169.254 is link-local (cloud metadata); notifications cannot be sent there",
                ),
            ),
            (
                "http://169.254.169.254.../latest",
                Deny("host 169.254.169.254 is link-local (cloud metadata)"),
            ),
            (
                "http://2852039166../latest",
                Deny("host 169.254.169.254 is link-local (cloud metadata)"),
            ),
            ("http://127.0.0.1../", Deny("host 127.0.0.1 is loopback")),
            ("http://0x7f.1../", Deny("host 127.0.0.1 is loopback")),
            (
                "http://\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}../",
                Deny("host 127.0.0.1 is loopback"),
            ),
            ("http://0../", Deny("host 0.0.0.0 is unspecified")),
            ("http://localhost../", Deny("host localhost is loopback")),
            (
                "http://metadata.google.internal../",
                Deny("host metadata.google.internal is a cloud metadata service"),
            ),
            // Not blocked as an address or name, but no resolver takes an empty label.
            (
                "http://8.8.8.8../",
                Deny(
                    "host 8.8.8.8.. is not a valid host name: it has an empty label (\"..\" or more than one trailing dot); notifications cannot be sent there",
                ),
            ),
            ("http://10.0.0.1../", Deny("host 10.0.0.1.. ")),
            ("http://hooks.example.com../x", Deny(not_a_name)),
            ("http://hooks..example.com/x", Deny(not_a_name)),
            ("http://a..b/", Deny("host a..b ")),
            ("http://.example.com/", Deny(not_a_name)),
            ("http://1.2.3.4.5../", Deny(not_a_name)),
            // One trailing dot is the fully qualified form and stays allowed.
            ("https://hooks.example.com./x", Ok),
            ("https://8.8.8.8./x", Ok),
        ],
    );
    run(
        &policy(|p| p.deny_private = true),
        &[
            (
                "http://10.0.0.1../",
                Deny("host 10.0.0.1 is private and private networks are denied"),
            ),
            ("http://012.0.0.1../", Deny("host 10.0.0.1 is private")),
        ],
    );
    // An allowlist that opens the address does not open the malformed spelling either.
    run(
        &policy(|p| p.allow = rules(&["127.0.0.0/8"])),
        &[
            ("http://127.0.0.1/", Warn),
            ("http://127.0.0.1../", Deny("host 127.0.0.1.. ")),
        ],
    );
    // Deny rules see the address too.
    run(
        &policy(|p| p.deny = rules(&["8.8.8.8"])),
        &[(
            "https://8.8.8.8../",
            Deny("host 8.8.8.8 matches the denied destination 8.8.8.8/32"),
        )],
    );
}

#[test]
fn every_known_cloud_metadata_endpoint_is_blocked() {
    let cases: &[(&str, Want)] = &[
        (
            "http://169.254.42.42/",
            Deny(
                "host 169.254.42.42 is link-local (cloud metadata); notifications cannot be sent there",
            ),
        ),
        (
            "http://169.254.0.23/",
            Deny("host 169.254.0.23 is link-local (cloud metadata)"),
        ),
        (
            "http://168.63.129.16/machine",
            Deny(
                "host 168.63.129.16 is a cloud metadata address; notifications cannot be sent there",
            ),
        ),
        (
            "http://192.0.0.192/",
            Deny("host 192.0.0.192 is a cloud metadata address"),
        ),
        (
            "http://[fd20:ce::254]/",
            Deny("host fd20:ce::254 is a cloud metadata address"),
        ),
        (
            "http://[fd00:42::42]/",
            Deny("host fd00:42::42 is a cloud metadata address"),
        ),
        (
            "http://[::ffff:168.63.129.16]/",
            Deny("is a cloud metadata address"),
        ),
        (
            "http://[64:ff9b::a83f:8110]/",
            Deny("is a cloud metadata address"),
        ),
        (
            "http://metadata/computeMetadata/v1/",
            Deny("host metadata is a cloud metadata service; notifications cannot be sent there"),
        ),
        (
            "http://METADATA./",
            Deny("host metadata is a cloud metadata service"),
        ),
        (
            "http://instance-data/latest/meta-data/",
            Deny("host instance-data is a cloud metadata service"),
        ),
        (
            "http://Instance-Data./",
            Deny("host instance-data is a cloud metadata service"),
        ),
        // Neighbours of the new entries keep their own class.
        ("https://168.63.129.17/", Ok),
        ("https://metadata.example.com/", Ok),
        ("https://instance-data.example.com/", Ok),
    ];
    run(&UrlPolicy::default(), cases);

    // No allow rule opens them, however wide.
    let p = policy(|p| {
        p.allow = rules(&[
            "169.254.0.0/16",
            "168.63.129.16",
            "192.0.0.0/24",
            "fd00::/8",
            "0.0.0.0/0",
            "::/0",
            "metadata",
            "instance-data",
        ])
    });
    run(
        &p,
        &[
            ("https://169.254.10.10/", Ok),
            ("https://169.254.42.42/", Deny("cloud metadata")),
            ("https://169.254.0.23/", Deny("cloud metadata")),
            ("https://168.63.129.16/", Deny("cloud metadata")),
            ("https://192.0.0.192/", Deny("cloud metadata")),
            ("https://[fd20:ce::254]/", Deny("cloud metadata")),
            ("https://[fd00:42::42]/", Deny("cloud metadata")),
            ("https://metadata/", Deny("cloud metadata")),
            ("https://instance-data/", Deny("cloud metadata")),
        ],
    );
    // Nor does an allowed host name that resolves to one.
    let p = policy(|p| p.allow = rules(&["receiver.test"]));
    let url = p.check("https://receiver.test/hook").unwrap();
    for ip in [
        "168.63.129.16",
        "169.254.42.42",
        "169.254.0.23",
        "192.0.0.192",
        "fd20:ce::254",
        "fd00:42::42",
    ] {
        let err = p.check_resolved(&url, ip.parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("cloud metadata"), "{ip}: {err}");
    }
}

#[test]
fn local_use_nat64_prefix_is_unwrapped() {
    run(
        &UrlPolicy::default(),
        &[
            (
                "http://[64:ff9b:1::a9fe:a9fe]/",
                Deny("host 64:ff9b:1::a9fe:a9fe is link-local (cloud metadata)"),
            ),
            ("http://[64:ff9b:1:ab:cd::127.0.0.1]/", Deny("is loopback")),
            ("https://[64:ff9b:1::808:808]/", Ok),
            // Outside the /48 there is no embedded address.
            ("https://[64:ff9b:2::7f00:1]/", Ok),
        ],
    );
    run(
        &policy(|p| p.deny_private = true),
        &[("https://[64:ff9b:1::a00:1]/", Deny("private (RFC 1918)"))],
    );
    run(
        &policy(|p| p.deny = rules(&["10.0.0.0/8"])),
        &[(
            "https://[64:ff9b:1::a00:1]/",
            Deny("matches the denied destination 10.0.0.0/8"),
        )],
    );
}

#[test]
fn rules_in_any_ipv4_spelling_are_address_rules() {
    let net = |s: &str| Destination::Net(s.parse().unwrap());
    for (rule, want) in [
        ("127.1", "127.0.0.1/32"),
        ("0x7f000001", "127.0.0.1/32"),
        ("2130706433", "127.0.0.1/32"),
        ("0177.0.0.1", "127.0.0.1/32"),
        ("0x7F.1", "127.0.0.1/32"),
        ("127.0.0.1.", "127.0.0.1/32"),
        ("%31%32%37.1", "127.0.0.1/32"),
        ("\u{ff11}\u{ff12}\u{ff17}.\u{ff11}", "127.0.0.1/32"),
        ("::ffff:127.0.0.1", "127.0.0.1/32"),
        ("[::ffff:127.0.0.1]", "127.0.0.1/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        // Not IPv4-mapped: stays IPv6.
        ("::/0", "::/0"),
        ("::ffff:0:0/95", "::fffe:0:0/95"),
        ("::1", "::1/128"),
    ] {
        assert_eq!(rule.parse::<Destination>(), Result::Ok(net(want)), "{rule}");
    }
    assert_eq!(
        "B\u{fc}cher.Example.".parse::<Destination>(),
        Result::Ok(Destination::Host("xn--bcher-kva.example".into()))
    );

    let p = policy(|p| {
        p.allow = rules(&["127.0.0.0/8"]);
        p.deny = rules(&[
            "127.1",
            "2130706433",
            "::ffff:10.0.0.0/104",
            "b\u{fc}cher.example",
        ]);
    });
    run(
        &p,
        &[
            (
                "https://127.0.0.1/x",
                Deny("host 127.0.0.1 matches the denied destination 127.0.0.1/32"),
            ),
            ("https://0x7f.1/x", Deny("denied destination 127.0.0.1/32")),
            ("https://127.0.0.2/x", Ok),
            (
                "https://10.1.2.3/x",
                Deny("matches the denied destination 10.0.0.0/8"),
            ),
            (
                "https://[::ffff:10.1.2.3]/x",
                Deny("denied destination 10.0.0.0/8"),
            ),
            ("https://11.1.2.3/x", Ok),
            (
                "https://B\u{dc}CHER.example/x",
                Deny(
                    "host xn--bcher-kva.example matches the denied destination xn--bcher-kva.example",
                ),
            ),
        ],
    );
    let p = policy(|p| p.allow = rules(&["0x7f000001"]));
    run(
        &p,
        &[
            ("https://127.0.0.1/x", Ok),
            ("https://127.0.0.2/x", Deny("loopback")),
        ],
    );

    for (bad, want) in [
        ("*.10.0.0.1", "is a wildcard over an IP address"),
        ("*.127.1", "is a wildcard over an IP address"),
        ("*.example.123", "is neither an IP address"),
        ("1.2.3.4.5", "is neither an IP address"),
        ("127.0.0.1..", "is neither an IP address"),
        ("relay..", "is neither an IP address"),
        ("a..b", "is neither an IP address"),
        (".example.com", "is neither an IP address"),
    ] {
        let err = bad.parse::<Destination>().unwrap_err();
        assert!(err.contains(want), "{bad}: {err}");
    }
}

/// Spellings that parse but that other tools read differently, or that hide what is dialled.
#[test]
fn urls_that_do_not_show_the_host_they_reach_are_refused() {
    let p = UrlPolicy::default();
    run(
        &p,
        &[
            // WHATWG repairs a missing `//`; RFC 3986 tools would not see a host at all.
            ("http:hooks.example.com/x", Deny("must be followed by //")),
            ("https:/hooks.example.com/x", Deny("must be followed by //")),
            ("HTTPS://hooks.example.com/x", Ok),
            // An empty userinfo is dropped by the parser, but it is still userinfo.
            ("https://@hooks.example.com/x", Deny("userinfo")),
            ("https://:@hooks.example.com/x", Deny("userinfo")),
            ("https://hooks.example.com/a@b?c=@d", Ok),
            // Characters IDNA maps to nothing: checked and dialled without them.
            ("https://a\u{200b}b.example.com/x", Deny("U+200B")),
            ("https://a%E2%80%8Bb.example.com/x", Deny("U+200B")),
            ("https://local\u{ad}host/x", Deny("U+00AD")),
            ("https://hooks.example.com/\u{200b}", Ok),
            ("https://müller.example/x", Ok),
            // Loopback names from /etc/hosts.
            ("https://ip6-localhost/x", Deny("loopback")),
            ("https://ip6-loopback./x", Deny("loopback")),
            ("https://LOCALHOST.localdomain/x", Deny("loopback")),
            // 192.0.0.0/24 and fe00::/9 (the kubelet's `ip6-allnodes` is fe00::1).
            ("https://192.0.0.170/x", Deny("reserved")),
            ("https://[fe00::1]/x", Deny("reserved")),
            ("https://192.0.1.1/x", Ok),
            ("https://[fe80::1]/x", Deny("link-local")),
        ],
    );
}

/// An allow rule over an IPv6 range opens the IPv6 addresses in it, never the IPv4 addresses
/// NAT64 or 6to4 addresses in it embed: those are classified as the IPv4 address.
#[test]
fn ipv6_allow_rules_do_not_open_embedded_ipv4_addresses() {
    let p = policy(|p| p.allow = rules(&["64:ff9b::/96", "2002::/16", "::/0"]));
    run(
        &p,
        &[
            ("https://[64:ff9b::7f00:1]/x", Deny("loopback")),
            ("https://[64:ff9b::a9fe:101]/x", Deny("link-local")),
            ("https://[2002:7f00:1::1]/x", Deny("loopback")),
            ("https://[::1]/x", Ok),
            ("https://[64:ff9b::a9fe:a9fe]/x", Deny("cloud metadata")),
        ],
    );
    // An IPv4 rule does open the embedded address, as it opens the address itself.
    let p = policy(|p| p.allow = rules(&["127.0.0.1"]));
    run(&p, &[("https://[64:ff9b::7f00:1]/x", Ok)]);
}

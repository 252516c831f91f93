//! Where notifications may be sent: the one URL policy used at admission time (validating
//! webhook) and again at send time (notifier), so both always agree.
//!
//! Parsing follows the WHATWG URL standard (the `url` crate), which is also what the notifier
//! connects with. It normalises the spellings attackers use to smuggle an address past a naive
//! check (decimal `2130706433`, octal `0177.0.0.1`, hex `0x7f.1`, short `127.1`,
//! percent-encoding, upper case, a trailing dot) into one canonical host, and this module then
//! classifies that host. Addresses embedded in IPv6 (IPv4-mapped, IPv4-compatible, NAT64, 6to4)
//! are unwrapped and classified as the IPv4 address they reach. A host with an empty label
//! (`a..b`, `127.0.0.1..`) is refused: WHATWG leaves `127.0.0.1..` a name, but with its dots
//! stripped the notifier would reach the address, so it is classified as that address first.
//! Allow and deny rules go through the same host parser, so `127.1` in a rule is 127.0.0.1.
//!
//! Classes and what may open them:
//! - never: cloud metadata, unspecified, multicast, broadcast, reserved (no flag opens them);
//! - loopback and link-local: blocked unless an `--allow-destination` rule names them;
//! - private (RFC 1918, CGNAT 100.64/10, IPv6 ULA): allowed unless `--deny-private-networks`;
//! - `--deny-destination` rules win over everything.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use url::{Host, Url};

use crate::contract::env;

/// Longest URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// Host names that always reach a cloud metadata service. The single-label ones reach it through
/// the search domains clouds put into a node's resolv.conf (GCP's `google.internal`, AWS's VPC
/// domain), which pods inherit after the cluster's own.
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
];

/// The policy. `Default` is the documented default: private ranges allowed, `http://` allowed
/// with a warning, no allow or deny rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    pub require_https: bool,
    pub deny_private: bool,
    pub allow: Vec<Destination>,
    pub deny: Vec<Destination>,
}

/// One allow or deny rule: a host name, a `*.suffix`, or an address / CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Host(String),
    /// `*.example.com` matches every name below example.com, not example.com itself.
    Suffix(String),
    Net(IpNet),
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty destination rule".into());
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Destination::Net(unmap_net(net.trunc())));
        }
        let bare = s.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Destination::Net(unmap_net(IpNet::from(ip))));
        }
        let garbage =
            || format!("{s:?} is neither an IP address, a CIDR, a host name nor *.domain");
        let (wildcard, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        // The URL's host goes through this parser, which turns `127.1`, `0x7f000001` or
        // `2130706433` into an address; a rule kept as a name would then never match it.
        let name = match Host::parse(name).map_err(|_| garbage())? {
            Host::Domain(d) => d,
            Host::Ipv4(_) | Host::Ipv6(_) if wildcard => {
                return Err(format!(
                    "{s:?} is a wildcard over an IP address; use the address or a CIDR"
                ));
            }
            Host::Ipv4(v4) => return Ok(Destination::Net(IpNet::from(IpAddr::V4(v4)))),
            Host::Ipv6(v6) => return Ok(Destination::Net(unmap_net(IpNet::from(IpAddr::V6(v6))))),
        };
        if has_empty_label(&name) {
            return Err(garbage());
        }
        let name = normalize_name(&name);
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(garbage());
        }
        Ok(if wildcard {
            Destination::Suffix(name)
        } else {
            Destination::Host(name)
        })
    }
}

/// `::ffff:10.0.0.0/104` as `10.0.0.0/8`: URL hosts in that form are classified and matched as
/// the IPv4 address they embed, and a plain IPv4 host never falls inside an IPv6 network.
fn unmap_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(mapped) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(mapped);
    }
    net
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Host(h) => f.write_str(h),
            Destination::Suffix(s) => write!(f, "*.{s}"),
            Destination::Net(n) => write!(f, "{n}"),
        }
    }
}

impl Destination {
    fn matches_name(&self, name: &str) -> bool {
        match self {
            Destination::Host(h) => h == name,
            Destination::Suffix(s) => name
                .strip_suffix(s.as_str())
                .is_some_and(|head| head.ends_with('.')),
            Destination::Net(_) => false,
        }
    }

    /// Allow rules: an address embedding an IPv4 address is classified as that address, so only
    /// a rule naming the IPv4 address opens it; `--allow-destination 64:ff9b::/96` (NAT64)
    /// must not open `64:ff9b::7f00:1`, which is loopback.
    fn opens_ip(&self, ip: IpAddr) -> bool {
        match (self, embedded_ipv4(ip)) {
            (Destination::Net(net), Some(v4)) => net.contains(&IpAddr::V4(v4)),
            _ => self.matches_ip(ip),
        }
    }

    /// Deny rules: an address matches both as itself and as the IPv4 address it embeds.
    fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            Destination::Net(net) => {
                net.contains(&ip)
                    || embedded_ipv4(ip).is_some_and(|v4| net.contains(&IpAddr::V4(v4)))
            }
            _ => false,
        }
    }
}

/// What kind of address a host is, for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    CloudMetadata,
    Unspecified,
    Multicast,
    Broadcast,
    Reserved,
    Loopback,
    LinkLocal,
    Private,
    SharedCgnat,
    UniqueLocal,
    Public,
}

impl AddressClass {
    /// No rule opens these.
    fn is_never_allowed(self) -> bool {
        matches!(
            self,
            AddressClass::CloudMetadata
                | AddressClass::Unspecified
                | AddressClass::Multicast
                | AddressClass::Broadcast
                | AddressClass::Reserved
        )
    }

    fn is_private(self) -> bool {
        matches!(
            self,
            AddressClass::Private | AddressClass::SharedCgnat | AddressClass::UniqueLocal
        )
    }

    fn describe(self, ip: Option<IpAddr>) -> &'static str {
        match self {
            AddressClass::CloudMetadata
                if ip.and_then(to_v4).is_some_and(|v4| v4.is_link_local()) =>
            {
                "link-local (cloud metadata)"
            }
            AddressClass::CloudMetadata => "a cloud metadata address",
            AddressClass::Unspecified => "unspecified (it means this host)",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Reserved => "reserved (IETF special-purpose, not a destination)",
            AddressClass::Loopback => "loopback",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Private => "private (RFC 1918)",
            AddressClass::SharedCgnat => "shared address space (CGNAT 100.64.0.0/10)",
            AddressClass::UniqueLocal => "unique local (IPv6 ULA fc00::/7)",
            AddressClass::Public => "public",
        }
    }
}

/// Why a URL or an address is refused. The text never contains the URL's path, query or
/// userinfo: ping URLs are secrets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("is {0} bytes long; at most {MAX_URL_BYTES} are allowed")]
    TooLong(usize),
    #[error("contains whitespace or a control character")]
    WhitespaceOrControl,
    #[error("contains a backslash, which URL parsers disagree about")]
    Backslash,
    #[error("is not an absolute URL: {0}")]
    Unparsable(String),
    #[error("scheme {0:?} is not allowed; use https:// or http://")]
    Scheme(String),
    #[error("has no host")]
    NoHost,
    #[error("contains userinfo (user:password@), which is not allowed")]
    Userinfo,
    #[error(
        "the host contains the invisible character U+{:04X}, which host names drop; write the host without it",
        u32::from(*.0)
    )]
    Invisible(char),
    #[error("has a fragment (#...), which is not allowed")]
    Fragment,
    #[error("uses http://, and https:// is required (--require-https)")]
    InsecureScheme,
    #[error("host {host} is {what}; notifications cannot be sent there")]
    Blocked { host: String, what: &'static str },
    #[error("host {host} resolves to {ip}, which is {what}; notifications cannot be sent there")]
    ResolvesToBlocked {
        host: String,
        ip: IpAddr,
        what: &'static str,
    },
    #[error(
        "host {host} is private and private networks are denied (--deny-private-networks); it is {what}"
    )]
    PrivateDenied { host: String, what: &'static str },
    #[error("host {host} matches the denied destination {rule}")]
    Denied { host: String, rule: String },
}

/// A URL that passed the checks that need no DNS.
#[derive(Clone, Debug)]
pub struct CheckedUrl {
    url: Url,
    host: String,
    ip: Option<IpAddr>,
    /// The host name itself is on the allowlist, which opens what it resolves to.
    name_allowed: bool,
    warnings: Vec<String>,
}

impl CheckedUrl {
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The canonical host (an IP address in canonical form, or a lower-case name without a
    /// trailing dot).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Set when the host is an IP literal: no DNS lookup happens for it.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(443)
    }

    pub fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }

    /// Legal but risky properties, for admission `warnings`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Scheme and host only; never the path, query or userinfo.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

/// `scheme://host[:port]` of a URL, for logs.
pub fn redact(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{}://{h}:{p}", url.scheme()),
        (Some(h), None) => format!("{}://{h}", url.scheme()),
        _ => format!("{}://", url.scheme()),
    }
}

/// Like [`redact`] for a string that may not even parse.
pub fn redact_str(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(u) => redact(&u),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

impl UrlPolicy {
    /// Checks everything that needs no DNS: syntax, scheme, userinfo, and the host when it is an
    /// address literal or a name that is blocked as such (`localhost`, metadata names).
    pub fn check(&self, raw: &str) -> Result<CheckedUrl, Violation> {
        if raw.len() > MAX_URL_BYTES {
            return Err(Violation::TooLong(raw.len()));
        }
        // WHATWG parsing silently strips tabs and newlines and trims spaces, so these must be
        // refused before parsing, or what is stored would differ from what is checked.
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Violation::WhitespaceOrControl);
        }
        if raw.contains('\\') {
            return Err(Violation::Backslash);
        }
        let url = Url::parse(raw).map_err(|e| Violation::Unparsable(e.to_string()))?;
        let mut warnings = Vec::new();
        match url.scheme() {
            "https" => {}
            "http" if self.require_https => return Err(Violation::InsecureScheme),
            "http" => warnings.push(
                "uses http://: the payload and any token in the URL travel unencrypted".to_owned(),
            ),
            other => return Err(Violation::Scheme(other.to_owned())),
        }
        // `http:host/x` and `http:/host/x` parse (WHATWG repairs them) but are not absolute
        // URLs to other tools; the raw scheme has the parsed scheme's length (ASCII lower-cased).
        let Some(authority) = raw
            .get(url.scheme().len()..)
            .and_then(|rest| rest.strip_prefix("://"))
        else {
            return Err(Violation::Unparsable(format!(
                "{}: must be followed by //",
                url.scheme()
            )));
        };
        // The parser drops an empty userinfo (`https://@host`, `https://:@host`), so the raw
        // authority is looked at too.
        let authority = authority.split(['/', '?', '#']).next().unwrap_or_default();
        if !url.username().is_empty() || url.password().is_some() || authority.contains('@') {
            return Err(Violation::Userinfo);
        }
        // Decoded first: the parser decodes `%E2%80%8B` in a host before IDNA drops it.
        if let Some(c) = percent_encoding::percent_decode_str(authority)
            .decode_utf8_lossy()
            .chars()
            .find(|&c| is_dropped_from_host_names(c))
        {
            return Err(Violation::Invisible(c));
        }
        if url.fragment().is_some() {
            return Err(Violation::Fragment);
        }
        let (host, ip) = match url.host() {
            None => return Err(Violation::NoHost),
            Some(Host::Ipv4(v4)) => (v4.to_string(), Some(IpAddr::V4(v4))),
            Some(Host::Ipv6(v6)) => (v6.to_string(), Some(IpAddr::V6(v6))),
            // WHATWG drops only one empty last label before asking whether a host is an IPv4
            // address, so `127.0.0.1..` stays a name; with its dots stripped it is the address
            // the resolver returns, and it is checked as that address.
            Some(Host::Domain(d)) => {
                let name = normalize_name(d);
                match Host::parse(&name) {
                    Ok(Host::Ipv4(v4)) => (v4.to_string(), Some(IpAddr::V4(v4))),
                    _ => (name, None),
                }
            }
        };
        if host.is_empty() {
            return Err(Violation::NoHost);
        }
        let bad_name = match url.host() {
            Some(Host::Domain(d)) if has_empty_label(d) => Some(d.to_owned()),
            _ => None,
        };
        let name_allowed = ip.is_none() && self.allow.iter().any(|r| r.matches_name(&host));
        let checked = CheckedUrl {
            url,
            host,
            ip,
            name_allowed,
            warnings,
        };
        match ip {
            Some(ip) => self.check_address(&checked.host, ip, false, None)?,
            None => self.check_name(&checked)?,
        }
        // Last, so that a blocked address or name is named as such; resolvers refuse empty
        // labels, so such a URL could never be delivered anyway.
        if let Some(host) = bad_name {
            return Err(Violation::Blocked {
                host,
                what: "not a valid host name: it has an empty label (\"..\" or more than one trailing dot)",
            });
        }
        Ok(checked)
    }

    /// Send time: checks one address the URL's host name resolved to. Every address must pass
    /// before any is used, and the connection must go to a checked address.
    pub fn check_resolved(&self, url: &CheckedUrl, ip: IpAddr) -> Result<(), Violation> {
        self.check_address(&url.host, ip, url.name_allowed, Some(ip))
    }

    fn check_name(&self, url: &CheckedUrl) -> Result<(), Violation> {
        let host = url.host.as_str();
        if let Some(rule) = self.deny.iter().find(|r| r.matches_name(host)) {
            return Err(Violation::Denied {
                host: host.to_owned(),
                rule: rule.to_string(),
            });
        }
        if METADATA_NAMES.contains(&host) {
            return Err(Violation::Blocked {
                host: host.to_owned(),
                what: "a cloud metadata service",
            });
        }
        // The others are the names Debian's and the kubelet's /etc/hosts give ::1 and 127.0.0.1.
        let is_localhost = host == "localhost"
            || host.ends_with(".localhost")
            || matches!(
                host,
                "localhost.localdomain" | "ip6-localhost" | "ip6-loopback"
            );
        if is_localhost && !url.name_allowed {
            return Err(Violation::Blocked {
                host: host.to_owned(),
                what: "loopback (localhost)",
            });
        }
        Ok(())
    }

    /// `resolved` is set at send time, when `ip` came from DNS for the name `host`.
    fn check_address(
        &self,
        host: &str,
        ip: IpAddr,
        name_allowed: bool,
        resolved: Option<IpAddr>,
    ) -> Result<(), Violation> {
        let shown = || match resolved {
            Some(ip) => format!("{host} ({ip})"),
            None => host.to_owned(),
        };
        if let Some(rule) = self.deny.iter().find(|r| r.matches_ip(ip)) {
            return Err(Violation::Denied {
                host: shown(),
                rule: rule.to_string(),
            });
        }
        let class = classify(ip);
        let allowed = name_allowed || self.allow.iter().any(|r| r.opens_ip(ip));
        let blocked = if class.is_never_allowed() {
            true
        } else if matches!(class, AddressClass::Loopback | AddressClass::LinkLocal) {
            !allowed
        } else if class.is_private() && self.deny_private && !allowed {
            return Err(Violation::PrivateDenied {
                host: shown(),
                what: class.describe(Some(ip)),
            });
        } else {
            false
        };
        if !blocked {
            return Ok(());
        }
        let what = class.describe(Some(ip));
        Err(match resolved {
            Some(ip) => Violation::ResolvesToBlocked {
                host: host.to_owned(),
                ip,
                what,
            },
            None => Violation::Blocked {
                host: host.to_owned(),
                what,
            },
        })
    }

    /// The policy as environment for the notifier container (see [`PolicyArgs`]).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let join = |rules: &[Destination]| {
            rules
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut vars = vec![
            (env::REQUIRE_HTTPS, self.require_https.to_string()),
            (env::DENY_PRIVATE, self.deny_private.to_string()),
        ];
        // Empty lists are left out rather than passed as "", which is not a valid rule.
        if !self.allow.is_empty() {
            vars.push((env::ALLOW, join(&self.allow)));
        }
        if !self.deny.is_empty() {
            vars.push((env::DENY, join(&self.deny)));
        }
        vars
    }
}

/// The policy's command-line flags, shared by `backup-operator serve` and the notifier, and read
/// from the same environment variables in both, so admission and send time cannot drift apart.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct PolicyArgs {
    /// Refuse http:// webhook URLs (by default they are allowed with a warning).
    #[arg(long, env = env::REQUIRE_HTTPS)]
    pub require_https: bool,
    /// Refuse private destinations: RFC 1918, CGNAT 100.64.0.0/10 and IPv6 ULA (allowed by
    /// default, because in-cluster relays are common).
    #[arg(long, env = env::DENY_PRIVATE)]
    pub deny_private_networks: bool,
    /// Host name, *.domain, IP or CIDR that may be reached although it is loopback, link-local or
    /// private. Repeatable or comma-separated. Never opens cloud metadata addresses.
    #[arg(long = "allow-destination", env = env::ALLOW, value_delimiter = ',', value_name = "HOST|CIDR")]
    pub allow: Vec<Destination>,
    /// Host name, *.domain, IP or CIDR that is always refused. Wins over every allow rule.
    #[arg(long = "deny-destination", env = env::DENY, value_delimiter = ',', value_name = "HOST|CIDR")]
    pub deny: Vec<Destination>,
}

impl From<PolicyArgs> for UrlPolicy {
    fn from(a: PolicyArgs) -> Self {
        UrlPolicy {
            require_https: a.require_https,
            deny_private: a.deny_private_networks,
            allow: a.allow,
            deny: a.deny,
        }
    }
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `a..b`, `.a`, `a..`: one trailing dot is the fully qualified form, any other empty label
/// makes the name invalid in DNS.
fn has_empty_label(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.split('.').any(str::is_empty)
}

fn to_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => embedded_ipv4(ip),
    }
}

/// The IPv4 address an IPv6 address reaches: IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated
/// `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96` and the local-use
/// `64:ff9b:1::/48` (RFC 8215), and 6to4 `2002::/16`.
fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low),
        // `::` and `::1` are IPv6's own unspecified and loopback, classified as such.
        [0, 0, 0, 0, 0, 0, 0, 0] | [0, 0, 0, 0, 0, 0, 0, 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // Local-use NAT64 prefixes are carved out of the /48 as /96s in practice (RFC 6052's
        // layout that puts the IPv4 address in the last 32 bits).
        [0x64, 0xff9b, 1, ..] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Classifies an address, looking through IPv6 forms that embed an IPv4 address.
pub fn classify(ip: IpAddr) -> AddressClass {
    if let Some(v4) = embedded_ipv4(ip) {
        return classify_v4(v4);
    }
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let o = ip.octets();
    const METADATA: &[Ipv4Addr] = &[
        Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OpenStack, DigitalOcean, …
        Ipv4Addr::new(169, 254, 170, 2),   // AWS ECS task metadata
        Ipv4Addr::new(169, 254, 170, 23),  // AWS EKS pod identity
        Ipv4Addr::new(169, 254, 42, 42),   // Scaleway
        Ipv4Addr::new(169, 254, 0, 23),    // Tencent Cloud
        Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
        Ipv4Addr::new(168, 63, 129, 16),   // Azure WireServer
        Ipv4Addr::new(192, 0, 0, 192),     // Oracle Cloud Classic
    ];
    if METADATA.contains(&ip) {
        AddressClass::CloudMetadata
    } else if o[0] == 0 {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if ip.is_broadcast() {
        AddressClass::Broadcast
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if o[0] >= 240 || (o[0], o[1], o[2]) == (192, 0, 0) {
        // 240.0.0.0/4 and 192.0.0.0/24 (IETF protocol assignments: DS-Lite, NAT64 discovery).
        AddressClass::Reserved
    } else if ip.is_private() {
        AddressClass::Private
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        AddressClass::SharedCgnat
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    const METADATA: &[Ipv6Addr] = &[
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254), // AWS IMDS over IPv6
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),  // AWS EKS pod identity
        Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),  // GCP metadata over IPv6
        Ipv6Addr::new(0xfd00, 0x42, 0, 0, 0, 0, 0, 0x42),   // Scaleway metadata over IPv6
    ];
    if METADATA.contains(&ip) {
        AddressClass::CloudMetadata
    } else if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if (s[0] & 0xffc0) == 0xfe80 {
        AddressClass::LinkLocal
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if (s[0] & 0xff80) == 0xfe00 {
        // fe00::/9 is unassigned; the kubelet's /etc/hosts names fe00::1 `ip6-allnodes`.
        AddressClass::Reserved
    } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
        // fec0::/10 (deprecated site-local) is routed like ULA where it still exists.
        AddressClass::UniqueLocal
    } else {
        AddressClass::Public
    }
}

/// Characters that IDNA maps to nothing (UTS #46 "ignored"): `a\u{200b}b.example` is checked and
/// dialled as `ab.example`, so the stored URL would not show the host it reaches. (ZWNJ and ZWJ,
/// U+200C and U+200D, are kept by IDNA, under context rules, and are part of valid names.)
fn is_dropped_from_host_names(c: char) -> bool {
    matches!(
        u32::from(c),
        0xAD | 0x34F
            | 0x180B..=0x180F
            | 0x200B
            | 0x2060..=0x2064
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0x1BCA0..=0x1BCA3
            | 0xE0100..=0xE01EF
    )
}

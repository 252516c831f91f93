//! Self-managed certificates, run by the leader: the CA and the serving certificate live in a
//! Secret; they are created when missing and rotated ahead of expiry, and the CA bundle is
//! written into both webhook configurations.
//!
//! A CA rotation never leaves a moment at which a replica serves a certificate the apiserver
//! does not trust:
//! 1. `stable`: the bundle is the signing CA;
//! 2. `bundle-extended`: a new CA is added to the bundle (old + new), nothing signed by it yet;
//! 3. `signing-switched`: the serving certificate is reissued by the new CA; the bundle still
//!    holds both, so old and new serving certificates are trusted;
//! 4. `stable` again: the old CA leaves the bundle.
//!
//! A phase is left only a hold ([`RotationConfig::hold`], an hour with production validities)
//! after both webhook configurations were *seen* holding its bundle (the `ca-bundle-confirmed`
//! annotation records when, for which phase and bundle), not after the Secret was written:
//! writing the bundle into them may fail (an API error, the end of the leader's term between the
//! two writes). So the serving certificate of a new CA is written only once the apiserver has
//! trusted it for a hold, and an old CA leaves the bundle only a hold after no certificate of it
//! is in the Secret any more: the time a replica whose Secret watch lags (a failing watch backs
//! off for up to half a minute) has to load the new one, and the margin for a leader whose clock
//! runs ahead of the one that confirmed.
//!
//! A Secret this operator did not write, or cannot read (cert-manager's `tls.crt`, `tls.key`,
//! `ca.crt` only; a damaged one), is adopted by the same sequence: a new CA is trusted beside
//! every CA trusted now (the Secret's `ca.crt` and both configurations' caBundle), and served a
//! hold later. So is a Secret deleted while the configurations trust a CA: the replicas keep
//! serving the certificate they loaded (a deletion changes nothing they hold), and the new
//! Secret carries no serving certificate until the new CA is trusted.
//!
//! Serving certificates alone are reissued by the signing CA, which the bundle trusts in every
//! phase; they are renewed even while the bundle cannot be written, and reissued at once when
//! they do not fit the Secret (a hand edit: another CA's certificate, another certificate's
//! key; or names the flags no longer give). Replicas never load a `tls.crt` that no CA of the
//! Secret's `ca.crt` signed (`tls::watch_secret`), so such an edit costs no failed call. A
//! Secret whose CAs do not fit (a CA key that is not its certificate's, a signing CA missing
//! from `ca.crt`) is adopted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::certs::{self, PemPair};
use crate::duration::show;

/// Field manager of the caBundle writes (kept apart from the controller's).
pub const FIELD_MANAGER: &str = "backup-operator-ca-injector";
/// The phase of a CA rotation (see the module documentation).
pub const PHASE: &str = "backups.k8s.bnerd.com/ca-phase";
/// `<unix milliseconds> <digest>`: since when both webhook configurations have been seen holding
/// `ca.crt`, for the phase and `ca.crt` the digest was taken of. Another phase or bundle makes
/// it stale, so it needs no reset when either changes.
pub const CONFIRMED: &str = "backups.k8s.bnerd.com/ca-bundle-confirmed";
/// Written by earlier versions: when the phase was written. Removed on the next write.
const LEGACY_SINCE: &str = "backups.k8s.bnerd.com/ca-phase-since";

#[derive(Clone, Debug)]
pub struct RotationConfig {
    pub namespace: String,
    pub secret: String,
    /// Name of both webhook configurations.
    pub webhook_configuration: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
}

impl RotationConfig {
    /// Time between checks.
    pub fn step(&self) -> Duration {
        (self.cert_validity / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// How long a phase of a CA rotation holds once the configurations were seen holding its
    /// bundle: the time replicas get to follow the Secret before the old CA leaves the bundle,
    /// and the margin for a leader whose clock runs ahead of the one that confirmed. Nothing is
    /// lost by holding long (a CA rotates once in a CA lifetime, and old and new are both
    /// trusted meanwhile), so an hour with production validities; short validities (tests)
    /// shorten it with the step.
    pub fn hold(&self) -> Duration {
        (self.cert_validity / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }

    /// One line on why these validities cannot rotate a CA in time. A rotation starts when a
    /// third of the CA's lifetime is left and holds each of its two phases for [`Self::hold`];
    /// the serving certificates issued before the switch end with the old CA, so a third shorter
    /// than the holds would have the replicas serve an expired certificate for the rest of it.
    /// Two holds per third: one for the first phase, one for the confirmations and checks that
    /// come between.
    pub fn check(&self) -> Result<(), String> {
        let need = self.hold() * 6;
        if self.ca_validity < need {
            return Err(format!(
                "--ca-validity {} is too short for --cert-validity {}: a CA rotation starts when a third of the CA's lifetime is left and holds each of its two phases for {} (a tenth of --cert-validity, at most 1h); use at least {}",
                show(self.ca_validity),
                show(self.cert_validity),
                show(self.hold()),
                show(need)
            ));
        }
        Ok(())
    }

    /// A serving certificate by `ca`, never outliving it.
    fn issue(&self, ca: &PemPair) -> Result<PemPair> {
        let (_, ca_until) = certs::validity_pem(&ca.cert)?;
        let left = Duration::from_secs(u64::try_from(ca_until - now()).unwrap_or(0));
        certs::issue_serving(ca, &self.dns_names, &self.ips, self.cert_validity.min(left))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Stable,
    BundleExtended,
    SigningSwitched,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Stable => "stable",
            Phase::BundleExtended => "bundle-extended",
            Phase::SigningSwitched => "signing-switched",
        }
    }

    fn parse(s: &str) -> Option<Phase> {
        [Phase::Stable, Phase::BundleExtended, Phase::SigningSwitched]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

fn now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// Renew when less than a third of the lifetime is left. In milliseconds: in whole seconds a
/// short lifetime (the tests' 6 s) would only come due in its last second, one check interval.
fn due(pem: &str) -> Result<bool> {
    let (from, to) = certs::validity_pem(pem)?;
    let left_ms = to.saturating_mul(1000).saturating_sub(now_ms());
    Ok(left_ms < to.saturating_sub(from).saturating_mul(1000) / 3)
}

/// A new serving certificate from `signing` when `serving` is due or does not fit (see
/// [`serving_fault`]); `None` when it is good as it is. The signing CA is in the bundle in every
/// phase, so what it issues is always trusted.
fn reissued(cfg: &RotationConfig, signing: &PemPair, serving: &PemPair) -> Result<Option<PemPair>> {
    // The fault first: `due` cannot judge a certificate that does not parse.
    if let Some(fault) = serving_fault(cfg, signing, serving) {
        tracing::warn!(reason = %fault, "reissuing the serving certificate");
    } else if due(&serving.cert)? {
        tracing::info!("renewing the serving certificate");
    } else {
        return Ok(None);
    }
    cfg.issue(signing).map(Some)
}

/// The serving certificate a rotation step writes: the current one, unless it needs
/// [`reissued`] now. A step must not carry a certificate past its renewal: the bundle write that
/// follows may be retried for longer than a short-lived certificate has left.
fn kept_or_reissued(
    cfg: &RotationConfig,
    signing: &PemPair,
    serving: Option<&PemPair>,
) -> Result<Option<PemPair>> {
    let Some(current) = serving else {
        return Ok(None);
    };
    Ok(Some(
        reissued(cfg, signing, current)?.unwrap_or_else(|| current.clone()),
    ))
}

/// The contents of one of our Secrets, in a phase whose keys are all there.
#[derive(Debug)]
struct Stored {
    phase: Phase,
    /// `ca.crt`: what both webhook configurations must trust.
    bundle: String,
    /// Absent only in `bundle-extended` after an adoption or a re-creation (nothing to renew).
    signing: Option<PemPair>,
    /// `tls.crt` and `tls.key`; `None` (empty keys) after a re-creation or the adoption of a
    /// Secret without them, until the switch.
    serving: Option<PemPair>,
    /// The CA being introduced, in `bundle-extended`.
    next: Option<PemPair>,
}

/// Reads one of our Secrets, or says why it is not one (which makes it adopted).
fn parse(secret: &Secret) -> Result<Stored, String> {
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    let phase = match ann.get(PHASE) {
        None => return Err(format!("it has no {PHASE} annotation")),
        Some(p) => Phase::parse(p).ok_or_else(|| format!("unknown {PHASE} {p:?}"))?,
    };
    let d = secret.data.clone().unwrap_or_default();
    let text = |key: &str| -> Option<String> {
        d.get(key)
            .filter(|b| !b.0.is_empty())
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let pair = |cert: &str, key: &str| -> Result<Option<PemPair>, String> {
        match (text(cert), text(key)) {
            (Some(c), Some(k)) => {
                certs::validity_pem(&c).map_err(|e| format!("{cert}: {e:#}"))?;
                Ok(Some(PemPair { cert: c, key: k }))
            }
            _ => Ok(None),
        }
    };
    let bundle = text("ca.crt").ok_or("it has no ca.crt")?;
    if certs::pem_certificates(bundle.as_bytes()).is_empty() {
        return Err("its ca.crt holds no certificate".into());
    }
    let signing = pair("signing-ca.crt", "signing-ca.key")?;
    let next = pair("next-ca.crt", "next-ca.key")?;
    // Ours, yet inconsistent (edited by hand, say): what the leader would sign with such a CA,
    // or keep out of the configurations, would not be trusted, so it is adopted like a foreign
    // Secret.
    let trusted = certs::pem_certificates(bundle.as_bytes());
    for (name, ca) in [("signing-ca", &signing), ("next-ca", &next)] {
        let Some(ca) = ca else { continue };
        crate::tls::from_pem(ca.cert.as_bytes(), ca.key.as_bytes())
            .map_err(|e| format!("{name}.crt/{name}.key: {e:#}"))?;
        let cert = certs::pem_certificates(ca.cert.as_bytes());
        if !cert.first().is_some_and(|c| trusted.contains(c)) {
            return Err(format!("its ca.crt does not hold {name}.crt"));
        }
    }
    let serving = match phase {
        // Kept as they are: only ever replaced by the switch.
        Phase::BundleExtended => match (text("tls.crt"), text("tls.key")) {
            (Some(cert), Some(key)) => Some(PemPair { cert, key }),
            _ => None,
        },
        _ => pair("tls.crt", "tls.key")?,
    };
    let missing = match phase {
        Phase::BundleExtended if next.is_none() => Some("next-ca.crt/next-ca.key"),
        Phase::Stable | Phase::SigningSwitched if signing.is_none() => {
            Some("signing-ca.crt/signing-ca.key")
        }
        Phase::Stable | Phase::SigningSwitched if serving.is_none() => Some("tls.crt/tls.key"),
        _ => None,
    };
    if let Some(keys) = missing {
        return Err(format!("it is {} but has no {keys}", phase.name()));
    }
    Ok(Stored {
        phase,
        bundle,
        signing,
        serving,
        next,
    })
}

/// The Secret's keys. Without a serving certificate `tls.crt` and `tls.key` are empty (a
/// `kubernetes.io/tls` Secret must have both keys); the replicas keep the one they serve.
fn data(
    bundle: &str,
    signing: Option<&PemPair>,
    serving: Option<&PemPair>,
    next: Option<&PemPair>,
) -> BTreeMap<String, ByteString> {
    let mut d = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        d.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
    };
    put("ca.crt", bundle);
    put("tls.crt", serving.map_or("", |s| &s.cert));
    put("tls.key", serving.map_or("", |s| &s.key));
    if let Some(s) = signing {
        put("signing-ca.crt", &s.cert);
        put("signing-ca.key", &s.key);
    }
    if let Some(n) = next {
        put("next-ca.crt", &n.cert);
        put("next-ca.key", &n.key);
    }
    d
}

/// Where a new CA starts: straight to `stable` when nothing is trusted now (a fresh install: no
/// replica can serve a certificate the apiserver trusts, so none can lose that), else trusted
/// beside `trusted` first, with `serving` (what the replicas serve now, if known) kept.
fn introduce(
    cfg: &RotationConfig,
    trusted: &str,
    serving: Option<&PemPair>,
) -> Result<(Phase, BTreeMap<String, ByteString>)> {
    let ca = certs::generate_ca("backup-operator-ca", cfg.ca_validity)?;
    if trusted.is_empty() {
        let bundle = certs::pem_bundle([ca.cert.as_bytes()]);
        Ok((
            Phase::Stable,
            data(&bundle, Some(&ca), Some(&cfg.issue(&ca)?), None),
        ))
    } else {
        let bundle = certs::pem_bundle([trusted.as_bytes(), ca.cert.as_bytes()]);
        Ok((
            Phase::BundleExtended,
            data(&bundle, None, serving, Some(&ca)),
        ))
    }
}

/// The next state of a Secret, if any. `held`: both configurations have held the bundle
/// for [`RotationConfig::hold`].
fn decide(
    cfg: &RotationConfig,
    s: &Stored,
    held: bool,
) -> Result<Option<(Phase, BTreeMap<String, ByteString>)>> {
    match (s.phase, &s.signing, &s.next) {
        (Phase::Stable, Some(signing), _) if due(&signing.cert)? => {
            let new_ca = certs::generate_ca("backup-operator-ca", cfg.ca_validity)?;
            tracing::info!("CA rotation 1/3: trusting the new CA beside the old one");
            let bundle = certs::pem_bundle([s.bundle.as_bytes(), new_ca.cert.as_bytes()]);
            let serving = kept_or_reissued(cfg, signing, s.serving.as_ref())?;
            return Ok(Some((
                Phase::BundleExtended,
                data(&bundle, Some(signing), serving.as_ref(), Some(&new_ca)),
            )));
        }
        (Phase::BundleExtended, _, Some(new_ca)) if held => {
            tracing::info!("CA rotation 2/3: serving a certificate of the new CA");
            return Ok(Some((
                Phase::SigningSwitched,
                data(&s.bundle, Some(new_ca), Some(&cfg.issue(new_ca)?), None),
            )));
        }
        (Phase::SigningSwitched, Some(signing), _) if held => {
            tracing::info!("CA rotation 3/3: the old CA leaves the bundle");
            let bundle = certs::pem_bundle([signing.cert.as_bytes()]);
            let serving = kept_or_reissued(cfg, signing, s.serving.as_ref())?;
            return Ok(Some((
                Phase::Stable,
                data(&bundle, Some(signing), serving.as_ref(), None),
            )));
        }
        _ => {}
    }
    if let (Some(signing), Some(serving)) = (&s.signing, &s.serving)
        && let Some(new) = reissued(cfg, signing, serving)?
    {
        let data = data(&s.bundle, Some(signing), Some(&new), s.next.as_ref());
        return Ok(Some((s.phase, data)));
    }
    Ok(None)
}

/// Why the Secret's serving certificate must be reissued although it is not due: a hand edit
/// (another CA's certificate, a key of another certificate) or flags that name the Service
/// differently since it was issued. The replicas refuse to load one their Secret's CAs did not
/// sign (`tls::watch_secret`), so this repairs the Secret rather than an outage.
fn serving_fault(cfg: &RotationConfig, signing: &PemPair, serving: &PemPair) -> Option<String> {
    if let Err(e) = crate::tls::from_pem(serving.cert.as_bytes(), serving.key.as_bytes()) {
        return Some(format!("tls.crt/tls.key: {e:#}"));
    }
    if certs::signed_by(serving.cert.as_bytes(), signing.cert.as_bytes()) != Some(true) {
        return Some("tls.crt is not signed by signing-ca.crt".into());
    }
    // Issued by a leader whose clock was ahead (or by hand): the apiserver refuses it until then.
    if let Ok((from, _)) = certs::validity_pem(&serving.cert)
        && from > now() + CLOCK_AHEAD_MS / 1000
    {
        let at = k8s_openapi::jiff::Timestamp::from_second(from)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| from.to_string());
        return Some(format!(
            "tls.crt is not valid before {at}, which is in the future (a clock ahead where it was issued)"
        ));
    }
    match certs::names_missing(&serving.cert, &cfg.dns_names, &cfg.ips) {
        Ok(missing) if missing.is_empty() => None,
        Ok(missing) => Some(format!("tls.crt does not name {}", missing.join(", "))),
        Err(e) => Some(format!("tls.crt: {e:#}")),
    }
}

/// What the confirmation of `bundle` in `phase` is recorded under.
fn digest(phase: Phase, bundle: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::new()
        .chain_update(phase.name())
        .chain_update([0])
        .chain_update(bundle)
        .finalize();
    hash[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The time recorded in `secret` for `digest`, if any.
fn confirmed_since(secret: &Secret, digest: &str) -> Option<i64> {
    let value = secret.metadata.annotations.as_ref()?.get(CONFIRMED)?;
    let (since, recorded) = value.split_once(' ')?;
    (recorded == digest).then(|| since.parse().ok()).flatten()
}

/// Runs one check: creates, adopts, renews or advances a rotation, and writes the bundle into
/// both webhook configurations. Returns when to check again.
pub async fn reconcile(client: &kube::Client, cfg: &RotationConfig) -> Result<Duration> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut secret = match secrets
        .get_opt(&cfg.secret)
        .await
        .context("reading the certificate Secret")?
    {
        Some(secret) => secret,
        None => create(client, cfg, &secrets).await?,
    };
    let stored = match parse(&secret) {
        Ok(stored) => stored,
        Err(why) => {
            secret = adopt(client, cfg, &secrets, secret, &why).await?;
            parse(&secret).map_err(|e| anyhow!("the adopted Secret cannot be read: {e}"))?
        }
    };
    let confirmed = confirm(client, cfg, &secrets, &mut secret, &stored).await;
    let hold = i64::try_from(cfg.hold().as_millis()).unwrap_or(i64::MAX);
    let held = confirmed
        .as_ref()
        .is_ok_and(|since| now_ms().saturating_sub(*since) >= hold);
    // Renewals and the start of a rotation go on while the bundle cannot be written: neither
    // puts a certificate into the Secret that the bundle in the configurations does not trust.
    match decide(cfg, &stored, held)? {
        Some((phase, data)) => {
            write(&secrets, cfg, &mut secret, phase, data).await?;
            let stored = parse(&secret).map_err(|e| anyhow!("the written Secret: {e}"))?;
            confirm(client, cfg, &secrets, &mut secret, &stored).await?;
        }
        None => {
            confirmed?;
        }
    }
    Ok(cfg.step())
}

/// The Secret is missing: a first start, or deleted since. A first start has nothing trusted
/// and nothing served (no replica is ready), so the CA and serving certificate come at once. After
/// a deletion the configurations trust the old CA and the replicas keep serving the certificate
/// they loaded (`tls::watch_secret` acts on written Secrets, not on deletions), so creating both
/// at once would let them switch to a certificate the apiserver does not trust yet: the new CA
/// is introduced by extend-then-switch instead, and the Secret carries empty `tls.crt`/`tls.key`
/// until the switch, a hold after the configurations were seen holding the new CA (replicas
/// keep the certificate in use; one that starts meanwhile is not ready until then).
async fn create(
    client: &kube::Client,
    cfg: &RotationConfig,
    secrets: &Api<Secret>,
) -> Result<Secret> {
    let trusted = configured_bundle(client, &cfg.webhook_configuration).await?;
    let (phase, data) = introduce(cfg, &trusted, None)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(cfg.secret.clone()),
            namespace: Some(cfg.namespace.clone()),
            annotations: Some(BTreeMap::from([(
                PHASE.to_owned(),
                phase.name().to_owned(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    };
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the certificate Secret")?;
    if phase == Phase::Stable {
        tracing::info!(secret = %cfg.secret, "created the CA and serving certificate");
    } else {
        tracing::info!(secret = %cfg.secret, "re-created the certificate Secret: trusting a new CA beside the CAs the webhook configurations trust; replicas keep their certificate until it is served");
    }
    Ok(created)
}

/// A Secret without our keys (cert-manager's: `tls.crt`, `tls.key`, `ca.crt`) or one that cannot
/// be read: a new CA is trusted beside everything trusted now and served a hold later, while the
/// replicas go on serving the Secret's certificate.
async fn adopt(
    client: &kube::Client,
    cfg: &RotationConfig,
    secrets: &Api<Secret>,
    mut secret: Secret,
    why: &str,
) -> Result<Secret> {
    let d = secret.data.clone().unwrap_or_default();
    let get = |k: &str| d.get(k).map(|b| b.0.clone()).unwrap_or_default();
    let configured = configured_bundle(client, &cfg.webhook_configuration).await?;
    let trusted = certs::pem_bundle([configured.as_bytes(), &get("ca.crt")]);
    let serving = match (get("tls.crt"), get("tls.key")) {
        (c, k) if !c.is_empty() && !k.is_empty() => Some(PemPair {
            cert: String::from_utf8_lossy(&c).into_owned(),
            key: String::from_utf8_lossy(&k).into_owned(),
        }),
        _ => None,
    };
    let (phase, data) = introduce(cfg, &trusted, serving.as_ref())?;
    tracing::warn!(secret = %cfg.secret, reason = %why, phase = phase.name(), "adopting a certificate Secret this operator did not write (or cannot read): a new CA is trusted beside the CAs trusted now, then served");
    write(secrets, cfg, &mut secret, phase, data).await?;
    Ok(secret)
}

/// Replaces the Secret's keys and phase. Guarded by resourceVersion: a second writer fails
/// instead of interleaving.
async fn write(
    secrets: &Api<Secret>,
    cfg: &RotationConfig,
    secret: &mut Secret,
    phase: Phase,
    data: BTreeMap<String, ByteString>,
) -> Result<()> {
    secret.data = Some(data);
    let ann = secret.metadata.annotations.get_or_insert_default();
    ann.insert(PHASE.to_owned(), phase.name().to_owned());
    ann.remove(LEGACY_SINCE);
    *secret = secrets
        .replace(&cfg.secret, &PostParams::default(), secret)
        .await
        .context("updating the certificate Secret")?;
    Ok(())
}

/// How far ahead of this replica's clock a recorded time may be before it is distrusted: more
/// than NTP-synchronised nodes ever disagree by.
const CLOCK_AHEAD_MS: i64 = 60_000;

/// Writes the Secret's bundle into both webhook configurations and returns since when (Unix
/// milliseconds) they have held it: the time recorded in the Secret, or now (recorded) when
/// there is none for this phase and bundle, or when a configuration had to be written (someone
/// changed it, or the last write did not get through). A configuration that does not exist
/// counts as holding it: the apiserver calls none of its webhooks, and once it is created the
/// bundle is written into it, which starts the count again.
async fn confirm(
    client: &kube::Client,
    cfg: &RotationConfig,
    secrets: &Api<Secret>,
    secret: &mut Secret,
    stored: &Stored,
) -> Result<i64> {
    let wrote =
        inject_ca_bundle(client, &cfg.webhook_configuration, stored.bundle.as_bytes()).await?;
    let digest = digest(stored.phase, &stored.bundle);
    let since = now_ms();
    match confirmed_since(secret, &digest) {
        // A time ahead of this clock (recorded by a leader whose clock was ahead) would hold the
        // rotation until this clock catches up; the configurations hold the bundle now, so the
        // count starts again from now.
        Some(recorded) if recorded > since.saturating_add(CLOCK_AHEAD_MS) => tracing::warn!(
            recorded_ms = recorded,
            now_ms = since,
            "the CA bundle's confirmation time is in the future (a clock ahead where it was recorded); counting from now"
        ),
        Some(recorded) if !wrote => return Ok(recorded),
        _ => {}
    }
    secret
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(CONFIRMED.to_owned(), format!("{since} {digest}"));
    *secret = secrets
        .replace(&cfg.secret, &PostParams::default(), secret)
        .await
        .context("recording that the webhook configurations hold the CA bundle")?;
    tracing::debug!(
        phase = stored.phase.name(),
        "the webhook configurations hold the CA bundle"
    );
    Ok(since)
}

fn validating_hooks(c: &ValidatingWebhookConfiguration) -> Vec<(String, Option<ByteString>)> {
    c.webhooks
        .iter()
        .flatten()
        .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
        .collect()
}

fn mutating_hooks(c: &MutatingWebhookConfiguration) -> Vec<(String, Option<ByteString>)> {
    c.webhooks
        .iter()
        .flatten()
        .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
        .collect()
}

/// Every CA some webhook of the two configurations trusts now, as one bundle (empty: none, or
/// no configuration yet).
async fn configured_bundle(client: &kube::Client, name: &str) -> Result<String> {
    let validating = get::<ValidatingWebhookConfiguration>(client, name).await?;
    let mutating = get::<MutatingWebhookConfiguration>(client, name).await?;
    let bundles: Vec<ByteString> = validating
        .iter()
        .flat_map(validating_hooks)
        .chain(mutating.iter().flat_map(mutating_hooks))
        .filter_map(|(_, b)| b)
        .collect();
    Ok(certs::pem_bundle(bundles.iter().map(|b| b.0.as_slice())))
}

async fn get<K>(client: &kube::Client, name: &str) -> Result<Option<K>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    Api::<K>::all(client.clone())
        .get_opt(name)
        .await
        .with_context(|| format!("reading the {} {name}", K::kind(&())))
}

/// Writes `bundle` as caBundle of every webhook in both configurations, by server-side apply
/// of just that field (webhooks are a list keyed by name, so nothing else is touched), and
/// checks that the result holds it. Skips a configuration that already carries it, and one
/// that does not exist (not installed yet: the apiserver calls no webhook of it). Returns
/// whether it wrote.
pub async fn inject_ca_bundle(client: &kube::Client, name: &str, bundle: &[u8]) -> Result<bool> {
    let validating =
        inject::<ValidatingWebhookConfiguration>(client, name, bundle, validating_hooks).await?;
    let mutating =
        inject::<MutatingWebhookConfiguration>(client, name, bundle, mutating_hooks).await?;
    Ok(validating || mutating)
}

async fn inject<K>(
    client: &kube::Client,
    name: &str,
    bundle: &[u8],
    hooks: impl Fn(&K) -> Vec<(String, Option<ByteString>)>,
) -> Result<bool>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    let kind = K::kind(&());
    let holds = |hooks: &[(String, Option<ByteString>)]| {
        hooks
            .iter()
            .all(|(_, b)| b.as_ref().is_some_and(|b| b.0 == bundle))
    };
    let Some(current) = get::<K>(client, name).await? else {
        return Ok(false);
    };
    let names = hooks(&current);
    if holds(&names) {
        return Ok(false);
    }
    let encoded = json!(ByteString(bundle.to_vec()));
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": names.iter().map(|(n, _)| json!({"name": n, "clientConfig": {"caBundle": encoded}})).collect::<Vec<_>>(),
    });
    let written = Api::<K>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .with_context(|| format!("writing caBundle into the {kind} {name}"))?;
    if !holds(&hooks(&written)) {
        return Err(anyhow!(
            "the {kind} {name} does not hold the CA bundle after writing it"
        ));
    }
    tracing::info!(%kind, %name, "wrote the CA bundle");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    fn cfg() -> RotationConfig {
        RotationConfig {
            namespace: "ns".into(),
            secret: "tls".into(),
            webhook_configuration: "hooks".into(),
            dns_names: vec!["localhost".into()],
            ips: vec![],
            ca_validity: Duration::from_secs(3600),
            cert_validity: Duration::from_secs(3600),
        }
    }

    /// Whether `bundle` makes a TLS client trust `leaf`.
    fn trusts(bundle: &str, leaf: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .is_ok()
    }

    fn secret(phase: Option<Phase>, data: BTreeMap<String, ByteString>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: phase.map(|p| BTreeMap::from([(PHASE.into(), p.name().into())])),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }
    }

    fn stored(phase: Phase, data: BTreeMap<String, ByteString>) -> Stored {
        parse(&secret(Some(phase), data)).unwrap()
    }

    fn key(d: &BTreeMap<String, ByteString>, k: &str) -> String {
        String::from_utf8(d.get(k).map(|b| b.0.clone()).unwrap_or_default()).unwrap()
    }

    #[test]
    fn cert_manager_secret_is_adopted_not_an_error() {
        let ca = certs::generate_ca("foreign", Duration::from_secs(3600)).unwrap();
        let serving = cfg().issue(&ca).unwrap();
        let d = BTreeMap::from([
            ("ca.crt".to_owned(), ByteString(ca.cert.clone().into())),
            (
                "tls.crt".to_owned(),
                ByteString(serving.cert.clone().into()),
            ),
            ("tls.key".to_owned(), ByteString(serving.key.clone().into())),
        ]);
        let why = parse(&secret(None, d.clone())).unwrap_err();
        assert!(why.contains("no backups.k8s.bnerd.com/ca-phase"), "{why}");
        // Marked as ours but without a signing CA: adopted too, not a failure forever.
        let why = parse(&secret(Some(Phase::Stable), d)).unwrap_err();
        assert!(why.contains("signing-ca.crt"), "{why}");

        // Adoption: the new CA beside the one trusted now, the foreign certificate still served.
        let (phase, data) = introduce(&cfg(), &ca.cert, Some(&serving)).unwrap();
        assert_eq!(phase, Phase::BundleExtended);
        let s = stored(phase, data);
        assert_eq!(s.serving.as_ref().unwrap().cert, serving.cert);
        assert!(trusts(&s.bundle, &serving.cert));
        let next = s.next.as_ref().unwrap();
        assert!(trusts(&s.bundle, &cfg().issue(next).unwrap().cert));
        assert!(s.signing.is_none());
    }

    #[test]
    fn cert_a_phase_of_another_version_is_adopted_so_a_rollback_keeps_trust() {
        let (phase, data) = introduce(&cfg(), "", None).unwrap();
        let mut ours = secret(Some(phase), data);
        assert!(parse(&ours).is_ok());
        ours.metadata
            .annotations
            .get_or_insert_default()
            .insert(PHASE.into(), "a-phase-of-a-newer-version".into());
        let why = parse(&ours).unwrap_err();
        assert!(
            why.contains("unknown backups.k8s.bnerd.com/ca-phase \"a-phase-of-a-newer-version\""),
            "{why}"
        );
    }

    #[test]
    fn cert_re_created_secret_serves_nothing_new_before_the_new_ca_is_trusted() {
        let (phase, data) = introduce(&cfg(), "", None).unwrap();
        assert_eq!(phase, Phase::Stable, "nothing trusted: straight to stable");
        let s = stored(phase, data);
        assert!(trusts(&s.bundle, &s.serving.as_ref().unwrap().cert));

        let old = certs::generate_ca("old", Duration::from_secs(3600)).unwrap();
        let (phase, data) = introduce(&cfg(), &old.cert, None).unwrap();
        assert_eq!(phase, Phase::BundleExtended);
        assert_eq!(key(&data, "tls.crt"), "");
        assert_eq!(key(&data, "tls.key"), "");
        let s = stored(phase, data);
        assert!(s.serving.is_none());
        assert_eq!(certs::pem_certificates(s.bundle.as_bytes()).len(), 2);
        assert!(trusts(&s.bundle, &cfg().issue(&old).unwrap().cert));
        // No renewal without a signing CA, and no switch before the hold is over.
        assert!(decide(&cfg(), &s, false).unwrap().is_none());
        let (phase, data) = decide(&cfg(), &s, true).unwrap().unwrap();
        assert_eq!(phase, Phase::SigningSwitched);
        assert!(trusts(&s.bundle, &key(&data, "tls.crt")));
        assert_eq!(key(&data, "ca.crt"), s.bundle);
    }

    #[test]
    fn cert_rotation_advances_only_when_the_step_since_confirmation_is_done() {
        let c = cfg();
        let old = certs::generate_ca("old", Duration::from_secs(3600)).unwrap();
        let new = certs::generate_ca("new", Duration::from_secs(3600)).unwrap();
        let serving = c.issue(&old).unwrap();
        let bundle = certs::pem_bundle([old.cert.as_bytes(), new.cert.as_bytes()]);
        let extended = stored(
            Phase::BundleExtended,
            data(&bundle, Some(&old), Some(&serving), Some(&new)),
        );
        assert!(decide(&c, &extended, false).unwrap().is_none());
        let (phase, d) = decide(&c, &extended, true).unwrap().unwrap();
        assert_eq!(phase, Phase::SigningSwitched);
        assert_eq!(
            key(&d, "ca.crt"),
            bundle,
            "the bundle is unchanged by the switch"
        );
        assert!(trusts(&new.cert, &key(&d, "tls.crt")));
        assert_eq!(key(&d, "signing-ca.crt"), new.cert);

        let switched = stored(phase, d);
        assert!(decide(&c, &switched, false).unwrap().is_none());
        let (phase, d) = decide(&c, &switched, true).unwrap().unwrap();
        assert_eq!(phase, Phase::Stable);
        assert_eq!(key(&d, "ca.crt"), certs::pem_bundle([new.cert.as_bytes()]));
        assert!(trusts(&key(&d, "ca.crt"), &key(&d, "tls.crt")));
        let stable = stored(phase, d);
        assert!(decide(&c, &stable, true).unwrap().is_none());
    }

    /// A CA rotation that starts when the serving certificate is due too renews it in the same
    /// write: the bundle write that follows may be retried for longer than a short-lived
    /// certificate has left (seen in CI with 6 s certificates and a forbidden bundle write).
    #[test]
    fn cert_a_rotation_step_renews_a_serving_certificate_that_is_due() {
        let c = RotationConfig {
            ca_validity: Duration::from_secs(3),
            cert_validity: Duration::from_secs(2),
            ..cfg()
        };
        let ca = certs::generate_ca("old", c.ca_validity).unwrap();
        let serving = c.issue(&ca).unwrap();
        let stable = stored(
            Phase::Stable,
            data(
                &certs::pem_bundle([ca.cert.as_bytes()]),
                Some(&ca),
                Some(&serving),
                None,
            ),
        );
        // Certificates count whole seconds: after 2.3 s both are due whatever the fraction.
        std::thread::sleep(Duration::from_millis(2300));
        let (phase, d) = decide(&c, &stable, false).unwrap().unwrap();
        assert_eq!(phase, Phase::BundleExtended);
        assert_ne!(
            key(&d, "tls.crt"),
            serving.cert,
            "the serving certificate is renewed"
        );
        assert_eq!(
            certs::signed_by(key(&d, "tls.crt").as_bytes(), ca.cert.as_bytes()),
            Some(true),
            "by the CA that signs until the switch"
        );
        assert_eq!(key(&d, "signing-ca.crt"), ca.cert);
    }

    /// Our CA, another one, a serving certificate of ours and the bundle of our CA.
    fn ours_and_another() -> (PemPair, PemPair, PemPair, String) {
        let ca = certs::generate_ca("ours", Duration::from_secs(3600)).unwrap();
        let other = certs::generate_ca("other", Duration::from_secs(3600)).unwrap();
        let serving = cfg().issue(&ca).unwrap();
        let bundle = certs::pem_bundle([ca.cert.as_bytes()]);
        (ca, other, serving, bundle)
    }

    /// What a leader whose clock is a day ahead would issue.
    fn from_tomorrow(c: &RotationConfig, ca: &PemPair) -> PemPair {
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&ca.cert, rcgen::KeyPair::from_pem(&ca.key).unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(c.dns_names.clone()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(1);
        params.not_after = now + time::Duration::days(2);
        PemPair {
            cert: params.signed_by(&key, &issuer).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }

    #[test]
    fn cert_a_hand_edited_serving_certificate_is_reissued_by_the_signing_ca() {
        let c = cfg();
        let (ca, foreign_ca, good, bundle) = ours_and_another();
        let with = |serving: &PemPair| {
            stored(Phase::Stable, data(&bundle, Some(&ca), Some(serving), None))
        };
        assert!(
            decide(&c, &with(&good), true).unwrap().is_none(),
            "nothing wrong, nothing due"
        );

        let other_key = c.issue(&ca).unwrap().key;
        let renamed = RotationConfig {
            dns_names: vec!["svc.ns.svc".into()],
            ..cfg()
        };
        for (case, serving, cfg) in [
            (
                "another CA's certificate",
                c.issue(&foreign_ca).unwrap(),
                &c,
            ),
            (
                "another certificate's key",
                PemPair {
                    cert: good.cert.clone(),
                    key: other_key,
                },
                &c,
            ),
            ("a name the flags no longer give", good.clone(), &renamed),
            (
                "a certificate valid only from tomorrow",
                from_tomorrow(&c, &ca),
                &c,
            ),
        ] {
            let (phase, d) = decide(cfg, &with(&serving), false)
                .unwrap()
                .unwrap_or_else(|| panic!("{case}: not reissued"));
            assert_eq!(phase, Phase::Stable, "{case}");
            assert_eq!(key(&d, "ca.crt"), bundle, "{case}: the bundle stays");
            assert!(
                certs::signed_by(key(&d, "tls.crt").as_bytes(), ca.cert.as_bytes()) == Some(true),
                "{case}"
            );
            assert!(
                serving_fault(
                    cfg,
                    &ca,
                    &PemPair {
                        cert: key(&d, "tls.crt"),
                        key: key(&d, "tls.key")
                    }
                )
                .is_none(),
                "{case}"
            );
        }
    }

    #[test]
    fn cert_a_secret_whose_cas_do_not_fit_is_adopted() {
        let (ca, other, serving, bundle) = ours_and_another();
        let wrong_key = PemPair {
            cert: ca.cert.clone(),
            key: other.key.clone(),
        };
        let why = parse(&secret(
            Some(Phase::Stable),
            data(&bundle, Some(&wrong_key), Some(&serving), None),
        ))
        .unwrap_err();
        assert!(why.starts_with("signing-ca.crt/signing-ca.key: "), "{why}");
        let why = parse(&secret(
            Some(Phase::Stable),
            data(&other.cert, Some(&ca), Some(&serving), None),
        ))
        .unwrap_err();
        assert_eq!(why, "its ca.crt does not hold signing-ca.crt");
        let why = parse(&secret(
            Some(Phase::BundleExtended),
            data(&bundle, Some(&ca), Some(&serving), Some(&other)),
        ))
        .unwrap_err();
        assert_eq!(why, "its ca.crt does not hold next-ca.crt");
    }

    #[test]
    fn cert_confirmation_is_for_one_phase_and_bundle() {
        let a = digest(Phase::BundleExtended, "x");
        assert_ne!(a, digest(Phase::SigningSwitched, "x"));
        assert_ne!(a, digest(Phase::BundleExtended, "y"));
        let mut s = secret(Some(Phase::BundleExtended), BTreeMap::new());
        assert_eq!(confirmed_since(&s, &a), None);
        s.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(CONFIRMED.into(), format!("1700000000123 {a}"));
        assert_eq!(confirmed_since(&s, &a), Some(1_700_000_000_123));
        assert_eq!(
            confirmed_since(&s, &digest(Phase::SigningSwitched, "x")),
            None
        );
    }

    #[test]
    fn cert_pem_bundle_keeps_each_certificate_once() {
        let a = certs::generate_ca("a", Duration::from_secs(60)).unwrap();
        let b = certs::generate_ca("b", Duration::from_secs(60)).unwrap();
        let crlf = a.cert.replace('\n', "\r\n");
        let ab = certs::pem_bundle([a.cert.as_bytes(), b.cert.as_bytes()]);
        let again = certs::pem_bundle([crlf.as_bytes(), ab.as_bytes(), b"junk"]);
        assert_eq!(again, ab);
        // A damaged block in the middle costs only itself.
        let damaged = format!(
            "{}-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n{}",
            a.cert, b.cert
        );
        assert_eq!(certs::pem_bundle([damaged.as_bytes()]), ab);
        // One without its END line runs into the next block: nothing that is no certificate
        // comes out of it.
        let unterminated = format!("{}-----BEGIN CERTIFICATE-----\nAAAA\n{}", a.cert, b.cert);
        let kept = certs::pem_certificates(unterminated.as_bytes());
        assert!(kept.contains(&certs::pem_certificates(a.cert.as_bytes())[0]));
        for cert in &kept {
            assert!(certs::validity_pem(cert).is_ok(), "{cert}");
        }
        assert_eq!(certs::pem_certificates(ab.as_bytes()).len(), 2);
        assert_eq!(certs::pem_bundle([&b""[..]]), "");
    }
}

//! Leader election on a `coordination.k8s.io/v1` Lease. As in client-go, a record is judged
//! only by our own clock (no trust in other hosts' clocks, so `renewTime` is informational),
//! every write is guarded by resourceVersion, and a leader that cannot renew within the renew
//! deadline stops leading.
//!
//! Unlike client-go, a follower dates a changed record from the read *before* the one that
//! showed the change (the renewal happened after that read was served), not from the moment it
//! noticed, and it wakes exactly when the record expires instead of at its next poll. So a
//! replica takes over at most one lease duration after the dead leader's last renewal, which
//! is within one lease duration of its death, where client-go can take up to two retry
//! periods longer. Why that is still safe is on [`Observer::read`].

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The timings client-go's defaults are proportioned by (15 s, 10 s, 2 s), with a shorter
    /// retry period so that two reads of a follower stay well inside [`Self::max_read_gap`].
    pub fn new(
        namespace: String,
        name: String,
        identity: String,
        lease_duration: Duration,
    ) -> Self {
        LeaseConfig {
            namespace,
            name,
            identity,
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration / 10,
        }
    }

    /// The longest time between two reads for which a follower dates a change from the
    /// earlier one; see [`Observer::read`].
    fn max_read_gap(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_deadline) * 2 / 3
    }
}

/// What a replica knows of the record in the Lease.
#[derive(Default)]
struct Observer {
    /// The record last read, and the instant from which it counts as unchanged.
    seen: Option<(LeaseSpec, Instant)>,
    /// When the last read that was answered was sent.
    last_read: Option<Instant>,
}

impl Observer {
    /// Records a read, sent at `sent`, that returned `spec`.
    ///
    /// A changed record was written after the previous read was served, hence after that read
    /// was sent, so the follower dates it from there when that read is less than
    /// `max_read_gap` old. Safety: the holder's last successful renewal was sent at some
    /// `t ≤ now`, and the holder stops leading at `t + renew_deadline` at the latest (see
    /// [`run`]); the follower takes over no earlier than `previous read + lease_duration ≥
    /// now − max_read_gap + lease_duration`, which is a third of `lease_duration −
    /// renew_deadline` later (`max_read_gap` is the other two thirds). After a longer gap (slow
    /// or failing reads) the change is dated from now, client-go's rule.
    fn read(&mut self, spec: &LeaseSpec, sent: Instant, max_read_gap: Duration) {
        let now = Instant::now();
        if self.seen.as_ref().is_none_or(|(seen, _)| seen != spec) {
            let since = match self.last_read {
                Some(previous) if now.duration_since(previous) <= max_read_gap => previous,
                _ => now,
            };
            self.seen = Some((spec.clone(), since));
        }
        self.last_read = Some(sent);
    }

    /// Whether the record last read names us as the holder.
    fn names_us(&self, cfg: &LeaseConfig) -> bool {
        self.seen
            .as_ref()
            .is_some_and(|(spec, _)| spec.holder_identity.as_deref() == Some(cfg.identity.as_str()))
    }

    /// When the record last read stops binding us, if another replica holds it.
    fn expiry(&self, cfg: &LeaseConfig) -> Option<Instant> {
        let (spec, since) = self.seen.as_ref()?;
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        if holder.is_empty() || holder == cfg.identity {
            return None;
        }
        Some(*since + record_duration(spec, cfg))
    }
}

fn record_duration(spec: &LeaseSpec, cfg: &LeaseConfig) -> Duration {
    spec.lease_duration_seconds.map_or(cfg.lease_duration, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(0))
    })
}

/// Runs until `release` turns true, publishing whether this process leads on `leading`; then
/// the lease is released, so another replica takes over at once. The caller turns `release` only
/// once nothing of its term runs any more.
pub async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    leading: watch::Sender<bool>,
    mut release: watch::Receiver<bool>,
) {
    let mut observer = Observer::default();
    // While leading: when the last successful renewal was sent. The write landed after that,
    // so counting the deadline from here errs on the side of stepping down early.
    let mut renewed: Option<Instant> = None;
    let deadline_left =
        |renewed_at: Instant| cfg.renew_deadline.saturating_sub(renewed_at.elapsed());
    loop {
        let sent = Instant::now();
        // A leader's attempt may not outlive its deadline: a renewal stuck in a slow apiserver
        // must not keep us leading past the point where a follower may take over.
        let budget = renewed.map_or(cfg.renew_deadline, deadline_left);
        // A renewal stuck in a slow apiserver must not hold up the release at shutdown either.
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(
                budget,
                try_acquire_or_renew(&api, &cfg, &mut observer, sent),
            ) => outcome.unwrap_or_else(|_| Err(Attempt::TimedOut(budget))),
            _ = release.wait_for(|r| *r) => break,
        };
        match outcome {
            Ok(true) => {
                if renewed.is_none() {
                    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became the leader");
                    let _ = leading.send(true);
                }
                renewed = Some(sent);
            }
            Ok(false) => {
                if renewed.take().is_some() {
                    tracing::warn!(lease = %cfg.name, "lost the lease to another replica");
                    let _ = leading.send(false);
                }
            }
            Err(e) => {
                tracing::warn!(lease = %cfg.name, error = %crate::errors::chain(&e), "lease update failed")
            }
        }
        if renewed.is_some_and(|at| at.elapsed() >= cfg.renew_deadline) {
            tracing::warn!(lease = %cfg.name, "could not renew within the deadline; stepping down");
            renewed = None;
            let _ = leading.send(false);
        }
        let pause = match (renewed, observer.expiry(&cfg)) {
            (Some(at), _) => cfg.retry_period.min(deadline_left(at)),
            // Wake exactly at expiry; once it has passed (the takeover failed, say on an
            // unreachable apiserver), back to the retry period rather than a tight loop.
            (None, Some(expiry)) if expiry > Instant::now() => cfg
                .retry_period
                .min(expiry.saturating_duration_since(Instant::now())),
            (None, _) => cfg.retry_period,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = release.wait_for(|r| *r) => break,
        }
    }
    // Also after a step-down at the deadline: the record may still name us, and nothing of the
    // term runs any more (release_lease writes only a record that names us).
    if renewed.is_some() || observer.names_us(&cfg) {
        let _ = leading.send(false);
        // Bounded: a replica that cannot release leaves the Lease to expire, as if it had died.
        if tokio::time::timeout(RELEASE_TIMEOUT, release_lease(&api, &cfg))
            .await
            .is_err()
        {
            tracing::warn!(lease = %cfg.name, "could not release the lease in time; it expires by itself");
        }
    }
}

/// Bounds the release at shutdown, which the whole drain must fit in.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
enum Attempt {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// One read and, when the lease is ours or free, one guarded write. `sent` is when the read
/// goes out.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observer: &mut Observer,
    sent: Instant,
) -> Result<bool, Attempt> {
    let secs = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let ours = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(secs),
        acquire_time: acquired.or_else(|| Some(now())),
        renew_time: Some(now()),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        // A deleted Lease (by hand, say) is no free one: the holder last seen may still lead
        // until its record expires, and writes the Lease again at its next renewal.
        if observer
            .expiry(cfg)
            .is_some_and(|expiry| Instant::now() < expiry)
        {
            return Ok(false);
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(ours(0, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    observer.read(&spec, sent, cfg.max_read_gap());
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let i_hold = holder == cfg.identity;
    let expired = observer
        .expiry(cfg)
        .is_none_or(|expiry| Instant::now() >= expiry);
    if !i_hold && !expired {
        return Ok(false);
    }
    let transitions = spec
        .lease_transitions
        .unwrap_or(0)
        .saturating_add(i32::from(!i_hold));
    let acquired = if i_hold {
        spec.acquire_time.clone()
    } else {
        None
    };
    lease.spec = Some(ours(transitions, acquired));
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        // Our own renewal raced another write: a label or annotation by hand, or our previous
        // renewal that timed out here but was stored. Not a loss: the next attempt reads the
        // record again, and a real takeover shows there (no follower takes over before our
        // deadline, which still applies).
        Err(kube::Error::Api(e)) if e.code == 409 && i_hold => {
            Err(Attempt::Api(kube::Error::Api(e)))
        }
        // Someone else wrote first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn release_lease(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = Some(now());
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %cfg.name, "released the lease"),
        Err(e) => tracing::warn!(lease = %cfg.name, error = %e, "could not release the lease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(6),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..Default::default()
        }
    }

    fn cfg() -> LeaseConfig {
        LeaseConfig::new(
            "ns".into(),
            "lease".into(),
            "me".into(),
            Duration::from_secs(6),
        )
    }

    #[test]
    fn the_gap_bound_keeps_takeover_after_the_old_leaders_deadline() {
        let c = cfg();
        assert!(c.max_read_gap() + c.renew_deadline < c.lease_duration);
        assert!(c.retry_period * 2 < c.max_read_gap());
    }

    #[test]
    fn a_change_counts_from_the_previous_read_when_that_read_is_recent() {
        let c = cfg();
        let mut o = Observer::default();
        let first = Instant::now();
        o.read(
            &record("other", "2026-01-01T00:00:00Z"),
            first,
            c.max_read_gap(),
        );
        // The first record ever seen counts from now: nothing says when it was written.
        let since_first = o.seen.as_ref().unwrap().1;
        assert!(since_first >= first);

        let second = Instant::now();
        o.read(
            &record("other", "2026-01-01T00:00:01Z"),
            second,
            c.max_read_gap(),
        );
        assert_eq!(o.seen.as_ref().unwrap().1, first);
        assert_eq!(o.expiry(&c), Some(first + Duration::from_secs(6)));

        // Unchanged: still dated from the read before the change.
        o.read(
            &record("other", "2026-01-01T00:00:01Z"),
            Instant::now(),
            c.max_read_gap(),
        );
        assert_eq!(o.seen.as_ref().unwrap().1, first);
    }

    #[test]
    fn after_a_long_gap_a_change_counts_from_now() {
        let c = cfg();
        let mut o = Observer {
            seen: Some((record("other", "2026-01-01T00:00:00Z"), Instant::now())),
            last_read: Instant::now().checked_sub(c.max_read_gap() * 2),
        };
        let before = Instant::now();
        o.read(
            &record("other", "2026-01-01T00:00:05Z"),
            before,
            c.max_read_gap(),
        );
        assert!(o.seen.as_ref().unwrap().1 >= before);
    }

    #[test]
    fn our_own_or_a_released_record_never_blocks_us() {
        let c = cfg();
        let mut o = Observer::default();
        o.read(
            &record("me", "2026-01-01T00:00:00Z"),
            Instant::now(),
            c.max_read_gap(),
        );
        assert_eq!(o.expiry(&c), None);
        o.read(
            &record("", "2026-01-01T00:00:01Z"),
            Instant::now(),
            c.max_read_gap(),
        );
        assert_eq!(o.expiry(&c), None);
    }
}

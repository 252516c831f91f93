//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go does it: a lease is
//! taken over only after its record stayed unchanged for a whole lease duration *by our own
//! clock* (no trust in other hosts' clocks), and every write is guarded by resourceVersion.

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

/// Runs until `stop` turns true, publishing whether this process leads on `leading`. On stop
/// the lease is released, so another replica takes over at once.
pub async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut observed: Option<(LeaseSpec, Instant)> = None;
    let mut last_renew = Instant::now();
    loop {
        let is_leader = *leading.borrow();
        match try_acquire_or_renew(&api, &cfg, &mut observed).await {
            Ok(true) => {
                last_renew = Instant::now();
                if !is_leader {
                    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became the leader");
                    let _ = leading.send(true);
                }
            }
            Ok(false) => {
                if is_leader {
                    tracing::warn!(lease = %cfg.name, "lost the lease to another replica");
                    let _ = leading.send(false);
                }
            }
            Err(e) => {
                tracing::warn!(lease = %cfg.name, error = %e, "lease update failed");
                if is_leader && last_renew.elapsed() > cfg.renew_deadline {
                    tracing::warn!(lease = %cfg.name, "could not renew within the deadline; stepping down");
                    let _ = leading.send(false);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.retry_period) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if *leading.borrow() {
        let _ = leading.send(false);
        release(&api, &cfg).await;
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<(LeaseSpec, Instant)>,
) -> Result<bool, kube::Error> {
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
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let changed = observed.as_ref().is_none_or(|(o, _)| *o != spec);
    if changed {
        *observed = Some((spec.clone(), Instant::now()));
    }
    let held_for = observed
        .as_ref()
        .map_or(Duration::ZERO, |(_, at)| at.elapsed());
    let duration = spec.lease_duration_seconds.map_or(cfg.lease_duration, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(0))
    });
    let i_hold = holder == cfg.identity;
    let free = holder.is_empty() || held_for > duration;
    if !i_hold && !free {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!i_hold);
    let acquired = if i_hold {
        spec.acquire_time.clone()
    } else {
        None
    };
    lease.spec = Some(ours(transitions, acquired));
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(stored) => {
            *observed = stored.spec.map(|s| (s, Instant::now()));
            Ok(true)
        }
        // Someone else wrote first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
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

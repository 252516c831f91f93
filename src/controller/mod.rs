//! The thin controller: each VolumeBackup and S3Backup becomes a restic backup CronJob, and its
//! status reports the CronJob, its Jobs, and whether the notifier is really in place. Only the
//! replica holding the leader Lease reconciles; every replica serves admission.

pub mod job_template;
pub mod leader;
pub mod reconcile;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::cert_rotation::RotationConfig;
use crate::crd::{S3Backup, VolumeBackup};
use crate::inject::InjectorConfig;
use crate::metrics::{BackupLabels, Metrics};
use job_template::{JobArgs, labels};
use reconcile::{Backups, Context, Reconciled};

#[derive(Clone, Debug, clap::Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub jobs: JobArgs,
    /// Reconciles that may run at once, per kind. Bounds the API calls (each reconcile reads
    /// the CronJob and what the backup depends on, and may apply the CronJob and its status)
    /// after a leader change or when many schedules fire together.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub reconcile_concurrency: u16,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(
        long = "lease-namespace",
        env = "POD_NAMESPACE",
        default_value = "backup-operator-system",
        value_parser = crate::names::label
    )]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "backup-operator-leader", value_parser = crate::names::subdomain)]
    pub lease_name: String,
    /// How long a Lease stays valid without renewal; a new leader takes over after this. Whole
    /// seconds, 1s to 24h.
    #[arg(long, default_value = "15s", value_parser = parse_lease_duration)]
    pub lease_duration: Duration,
    /// This replica's identity in the Lease (default: the pod name, else host name and PID).
    #[arg(long, env = "POD_NAME", value_parser = crate::names::identity)]
    pub identity: Option<String>,
}

/// The Lease records whole seconds (`leaseDurationSeconds`), and the other replicas go by the
/// record, so a duration it cannot hold exactly would make them take over early.
fn parse_lease_duration(s: &str) -> Result<Duration, String> {
    let d = crate::duration::within(s, Duration::from_secs(1), Duration::from_secs(24 * 3600))?;
    if d.subsec_nanos() != 0 {
        return Err(format!(
            "{s:?} must be whole seconds (the Lease records seconds)"
        ));
    }
    Ok(d)
}

fn identity(args: &ControllerArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Resolves when the current leadership term ends: the Lease is lost (or not renewed within the
/// deadline), or the process is stopping.
pub type TermEnd = Shared<BoxFuture<'static, ()>>;

/// How long the controllers get to stop after their term ended. Their reconciles stop at once;
/// this bounds what does not: kube-runtime's runner, when the term ends before the first list of
/// its kind completed (an unreachable apiserver, a missing CRD), waits for a store that is never
/// ready. Well inside the 10 s `serve` gives the controller on SIGTERM, so the Lease is still
/// released.
const TERM_DRAIN: Duration = Duration::from_secs(3);

/// Runs leader election and, while leading, both controllers; returns once `stop` turns true.
///
/// A term's reconciles are dropped as soon as it ends (see [`reconcile::reconcile`]), and the
/// Lease is released only after both controllers have stopped, so that a replica stops writing
/// as soon as it knows its term is over, and never hands over while it still writes.
pub async fn run(
    client: kube::Client,
    args: ControllerArgs,
    injector: InjectorConfig,
    rotation: Option<RotationConfig>,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) {
    let identity = identity(&args);
    let cfg = leader::LeaseConfig::new(
        args.lease_namespace.clone(),
        args.lease_name.clone(),
        identity.clone(),
        args.lease_duration,
    );
    let (lead_tx, mut leading) = watch::channel(false);
    let (release_tx, release) = watch::channel(false);
    let leases = Api::namespaced(client.clone(), &args.lease_namespace);
    let election = tokio::spawn(leader::run(leases, cfg, lead_tx, release));
    let concurrency = args.reconcile_concurrency;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "backup-operator".into(),
            instance: Some(identity),
        },
    );
    let context = |jobs: Store<Job>, backups: &Backups, term_end: &TermEnd| {
        Arc::new(Context {
            recorder: recorder.clone(),
            client: client.clone(),
            job_args: args.jobs.clone(),
            injector: injector.clone(),
            metrics: metrics.clone(),
            jobs,
            backups: backups.clone(),
            secrets_unreadable: Default::default(),
            term_end: term_end.clone(),
            excluded_namespaces: crate::webhook_config::excluded_namespaces(&args.lease_namespace),
            own_namespace: args.lease_namespace.clone(),
            failure_writes: Default::default(),
            failing_since: Default::default(),
        })
    };
    let mut stop_wait = stop.clone();
    loop {
        tokio::select! {
            led = leading.wait_for(|l| *l) => if led.is_err() {
                // The election task is gone (only a bug ends it): without it no term would ever
                // end cleanly again, so stop, and let `serve` restart the process.
                tracing::error!("leader election ended unexpectedly; stopping the controller");
                break;
            },
            _ = stop_wait.wait_for(|s| *s) => break,
        }
        metrics.leader.set(1);
        tracing::info!("leading: starting the VolumeBackup and S3Backup controllers");
        let mut until = leading.clone();
        let mut until_stop = stop.clone();
        let done: TermEnd = async move {
            tokio::select! {
                _ = until.wait_for(|l| !*l) => {}
                _ = until_stop.wait_for(|s| *s) => {}
            }
        }
        .boxed()
        .shared();
        // Each term starts from fresh caches: a follower's would be stale.
        let (vb_jobs, vb_writer) = reflector::store();
        let (s3_jobs, s3_writer) = reflector::store();
        let started = std::time::Instant::now();
        let (vb_late, vb_late_rx) = futures::channel::mpsc::unbounded();
        let (s3_late, s3_late_rx) = futures::channel::mpsc::unbounded();
        let vb_lists = TermLists {
            started,
            late: vb_late,
            other_late: s3_late_rx,
        };
        let s3_lists = TermLists {
            started,
            late: s3_late,
            other_late: vb_late_rx,
        };
        let (vb, volume_listed) =
            controller::<VolumeBackup>(&client, vb_writer, concurrency, done.clone(), vb_lists);
        let (s3, s3_listed) =
            controller::<S3Backup>(&client, s3_writer, concurrency, done.clone(), s3_lists);
        let backups = Backups::new(vb.store(), s3.store(), volume_listed, s3_listed, started);
        let vb = run_controller(vb, context(vb_jobs, &backups, &done), done.clone());
        let s3 = run_controller(s3, context(s3_jobs, &backups, &done), done.clone());
        let certs = rotate_certificates(client.clone(), rotation.clone(), done.clone());
        let term = async {
            tokio::join!(vb, s3, certs);
        };
        let drain_bound = async {
            done.clone().await;
            tokio::time::sleep(TERM_DRAIN).await;
        };
        tokio::select! {
            () = term => {}
            // Dropping the controllers' streams aborts whatever of them still runs.
            () = drain_bound => tracing::warn!(
                bound = ?TERM_DRAIN,
                "the controllers did not stop in time after the term ended; dropped them"
            ),
        }
        metrics.leader.set(0);
        // Only the leader's per-backup series are current; a follower that kept exporting its
        // last values would keep alerts firing (or silenced) for backups it no longer watches.
        metrics.backups.retain(|_| false);
        tracing::info!("controllers stopped");
        if *stop.borrow() {
            break;
        }
    }
    // Only now: until the controllers above have stopped, another replica must not lead.
    let _ = release_tx.send(true);
    let _ = election.await;
}

/// How one kind's controller and the other kind's learn of each other's first list in a term.
struct TermLists {
    /// When the term's watches started (see [`reconcile::LIST_GRACE`]).
    started: std::time::Instant,
    /// Signalled when this kind lists only after the grace.
    late: futures::channel::mpsc::UnboundedSender<()>,
    /// The other kind's `late`.
    other_late: futures::channel::mpsc::UnboundedReceiver<()>,
}

/// The controller of `K`: its own watch, the CronJobs it owns, and the Jobs (also cached into
/// `jobs`); and a flag that turns true once its own watch has listed every `K` (the other
/// kind's reconciles need that, see [`Backups::init_delay`]).
///
/// After [`reconcile::LIST_GRACE`] the other kind's backups are reconciled without this list,
/// so their init delays leave this kind out. When the list then arrives, every backup of the
/// other kind is reconciled again at once (rather than at its periodic requeue, up to five
/// minutes later), and vice versa.
fn controller<K: Reconciled>(
    client: &kube::Client,
    jobs: Writer<Job>,
    concurrency: u16,
    done: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    lists: TermLists,
) -> (Controller<K>, Arc<AtomicBool>) {
    use futures::TryStreamExt;
    // Controller::new's own watch, with the first complete list observed on the way.
    let listed = Arc::new(AtomicBool::new(false));
    let flag = listed.clone();
    let (reader, writer) = reflector::store::<K>();
    let own = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .inspect_ok(move |event| {
        // A re-list after a desync ends in InitDone too; only the term's first one is news.
        if matches!(event, watcher::Event::InitDone)
            && !flag.swap(true, Ordering::AcqRel)
            && lists.started.elapsed() >= reconcile::LIST_GRACE
        {
            tracing::info!(
                kind = K::KIND.as_str(),
                "listed after the grace: reconciling the other kind's backups again"
            );
            let _ = lists.late.unbounded_send(());
        }
    })
    .applied_objects();
    let owned =
        watcher::Config::default().labels(&format!("{}={}", labels::OWNER_KIND, K::KIND.as_str()));
    // The Jobs are cached as well as watched, so a reconcile reads its Jobs from memory instead
    // of listing every Job of its kind in the namespace (quadratic with many backups there).
    let job_events = watcher(Api::<Job>::all(client.clone()), owned.clone())
        .modify(reconcile::slim_job)
        .default_backoff()
        .reflect(jobs)
        .touched_objects();
    let controller = Controller::for_stream(own, reader)
        .reconcile_all_on(lists.other_late)
        .owns(Api::<CronJob>::all(client.clone()), owned)
        .watches_stream(job_events, |job: Job| {
            let name = job.annotations().get(labels::OWNER_NAME)?.clone();
            Some(ObjectRef::<K>::new(&name).within(&job.namespace()?))
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(done);
    (controller, listed)
}

async fn run_controller<K: Reconciled>(
    controller: Controller<K>,
    ctx: Arc<Context>,
    done: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let pruner = tokio::spawn(prune_metrics::<K>(
        controller.store(),
        ctx.metrics.clone(),
        done,
    ));
    let kind = K::KIND.as_str();
    let mut watch_warnings = Throttle::default();
    let mut runner_warnings = Throttle::default();
    let metrics = ctx.metrics.clone();
    let results = controller.run(reconcile::reconcile::<K>, reconcile::error_policy::<K>, ctx);
    tokio::pin!(results);
    while let Some(result) = results.next().await {
        let Err(e) = result else { continue };
        let class = classify(&e);
        let stream = match class {
            StreamError::Quiet => None,
            StreamError::Watch => Some("watch"),
            StreamError::Runner => Some("cache"),
        };
        if let Some(stream) = stream {
            metrics
                .controller_stream_errors
                .get_or_create(&crate::metrics::StreamErrorLabels { kind, stream })
                .inc();
        }
        let throttle = match class {
            StreamError::Quiet => None,
            StreamError::Watch => Some(&mut watch_warnings),
            StreamError::Runner => Some(&mut runner_warnings),
        };
        match (
            class,
            throttle.and_then(|t| t.admit(std::time::Instant::now())),
        ) {
            (StreamError::Watch, Some(held_back)) => tracing::warn!(
                kind,
                error = %crate::errors::chain(&e),
                held_back,
                "a watch of the controller failed (retrying with backoff); until it recovers, changes go unnoticed"
            ),
            (StreamError::Runner, Some(held_back)) => tracing::warn!(
                kind,
                error = %crate::errors::chain(&e),
                held_back,
                "the controller's cache never filled: nothing of this kind is reconciled this term"
            ),
            _ => tracing::debug!(kind, error = %e, "controller event"),
        }
    }
    let _ = pruner.await;
}

/// How an error from a controller's stream is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamError {
    /// Logged elsewhere (a failed reconcile, by `error_policy`) or harmless (a reconcile
    /// requested for an object deleted meanwhile).
    Quiet,
    /// A list or watch failed (a missing CRD, a removed RBAC rule, an apiserver outage): until
    /// it recovers the leader misses changes, or for its own kind reconciles nothing at all.
    Watch,
    /// The runner gave up waiting for the cache: nothing of this kind is reconciled.
    Runner,
}

fn classify<R, Q>(e: &kube::runtime::controller::Error<R, Q>) -> StreamError {
    use kube::runtime::controller::Error;
    match e {
        Error::ObjectNotFound(_) | Error::ReconcilerFailed(..) => StreamError::Quiet,
        Error::QueueError(_) => StreamError::Watch,
        Error::RunnerError(_) => StreamError::Runner,
    }
}

/// At most one warning per [`Throttle::EVERY`]: a failing watch retries with a backoff of a
/// few seconds, and one line per retry would bury everything else.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(60);

    /// `Some(how many were held back since the last one)` when a warning is due at `now`.
    fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < Self::EVERY)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Longest one round of certificate management may take: a few reads and writes, each answered
/// in milliseconds. A call stuck on a half-open connection must not hold up a renewal until the
/// serving certificate has expired.
const ROTATION_DEADLINE: Duration = Duration::from_secs(60);

/// The leader's certificate duties (self-managed mode), until `done`.
async fn rotate_certificates(
    client: kube::Client,
    cfg: Option<RotationConfig>,
    done: impl std::future::Future<Output = ()>,
) {
    let Some(cfg) = cfg else { return };
    tokio::pin!(done);
    loop {
        // Abandoned with the term, like a reconcile: the next leader redoes it.
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(ROTATION_DEADLINE, crate::cert_rotation::reconcile(&client, &cfg)) => {
                outcome.unwrap_or_else(|_| Err(anyhow::anyhow!("not finished within {}s (the Kubernetes API is slow or unreachable)", ROTATION_DEADLINE.as_secs())))
            }
            _ = &mut done => return,
        };
        let next = match outcome {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "certificate management failed; retrying");
                cfg.step()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = &mut done => return,
        }
    }
}

/// Drops metric series of deleted resources (reconcile never sees a deletion). The first
/// pass waits a full period, by which time the store holds every resource.
async fn prune_metrics<K: Reconciled>(
    store: Store<K>,
    metrics: Metrics,
    done: impl std::future::Future<Output = ()>,
) {
    let period = Duration::from_secs(60);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tokio::pin!(done);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut done => return,
        }
        metrics.backups.retain(|l: &BackupLabels| {
            l.kind != K::KIND.as_str()
                || store
                    .get(&ObjectRef::new(&l.name).within(&l.namespace))
                    .is_some()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::controller::Error;
    use kube::runtime::reflector::ObjectRef;

    type E = Error<reconcile::Error, watcher::Error>;

    #[test]
    fn watch_failures_are_warnings_and_reconcile_noise_is_not() {
        let obj = || Box::new(ObjectRef::<VolumeBackup>::new("b").within("ns").erase());
        let not_found: E = Error::ObjectNotFound(obj());
        assert_eq!(classify(&not_found), StreamError::Quiet);
        let failed: E = Error::ReconcilerFailed(reconcile::Error::NoNamespace("b".into()), obj());
        assert_eq!(classify(&failed), StreamError::Quiet);
        let watch: E = Error::QueueError(watcher::Error::NoResourceVersion);
        assert_eq!(classify(&watch), StreamError::Watch);
    }

    #[test]
    fn a_failing_watch_warns_once_a_minute_and_counts_the_rest() {
        let start = std::time::Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.admit(start), Some(0));
        for s in 1..60 {
            assert_eq!(t.admit(start + Duration::from_secs(s)), None);
        }
        assert_eq!(t.admit(start + Duration::from_secs(60)), Some(59));
        assert_eq!(t.admit(start + Duration::from_secs(61)), None);
        assert_eq!(t.admit(start + Duration::from_secs(125)), Some(1));
    }
}

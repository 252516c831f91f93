//! One reconcile of a VolumeBackup or S3Backup: apply its CronJob, check what it depends on, and
//! report status, events and metrics.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::job_template::{self, BackupSource, JobArgs, labels};
use super::status::{self, Observed};
use crate::crd::{BackupStatus, S3Backup, VolumeBackup};
use crate::inject::{self, InjectorConfig};
use crate::metrics::{BackupFigures, BackupLabels, LastJob, Metrics, ReconcileLabels};

/// Field manager of everything the controller applies.
pub const FIELD_MANAGER: &str = "backup-operator";

/// Shared by every reconcile.
pub struct Context {
    pub client: kube::Client,
    pub job_args: JobArgs,
    /// What the mutating webhook injects, to tell whether a stored CronJob is already current.
    pub injector: InjectorConfig,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// This kind's Jobs (label `owner-kind`), kept by the controller's Job watch.
    pub jobs: Store<Job>,
    /// Every backup of both kinds, as the two controllers' watches have them.
    pub backups: Backups,
    /// Namespaces where reading a Secret was refused (warned about once).
    pub secrets_unreadable: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The end of the leadership term this context belongs to.
    pub term_end: super::TermEnd,
    /// Namespaces the admission webhooks never see, where the controller injects the notifier.
    pub excluded_namespaces: Vec<String>,
    /// The operator's own namespace, where backups are refused (see [`OPERATOR_NAMESPACE`]).
    pub own_namespace: String,
    /// When this term last wrote a failure status for a backup (namespace, name), to bound how
    /// often a failure whose message keeps changing is written (see [`failure_write_due`]).
    pub failure_writes: std::sync::Mutex<std::collections::HashMap<(String, String), Instant>>,
    /// Since when each backup's reconciles have failed without a success in between, for the
    /// retry backoff (see [`retry_after_error`]).
    pub failing_since: std::sync::Mutex<std::collections::HashMap<(String, String), Instant>>,
}

impl Context {
    /// Records that Secrets in `ns` may not be read; true the first time.
    fn secrets_unreadable_in(&self, ns: &str) -> bool {
        self.secrets_unreadable
            .lock()
            .map(|mut seen| seen.insert(ns.to_owned()))
            .unwrap_or(false)
    }
}

/// Both controllers' caches, for what depends on more than one backup.
#[derive(Clone)]
pub struct Backups {
    pub volume: Store<VolumeBackup>,
    pub s3: Store<S3Backup>,
    /// Whether each kind's watch has delivered its first complete list this term, set by the
    /// controller's own watch stream on `InitDone`. Not `Store::wait_until_ready`: that
    /// future's one-slot channel would take the wake-up the other kind's controller waits on.
    pub volume_listed: Arc<AtomicBool>,
    pub s3_listed: Arc<AtomicBool>,
    /// When this term's watches started (see [`LIST_GRACE`]).
    pub started: std::time::Instant,
    /// Whether this term has warned that it reconciles without a kind's list.
    pub partial_warned: Arc<AtomicBool>,
}

/// How long a reconcile waits for the other kind's first list. A list that takes longer is
/// almost always a failing watch (a missing CRD, a removed RBAC rule), which would otherwise hold
/// back every backup of this kind for as long as it fails. A merely slow one costs a rewrite of
/// the affected CronJobs' init delays once it arrives (the controllers reconcile the other
/// kind's backups again then). Until then a backup that shares a new
/// repository with one of the other kind may get no delay before it, so the two first runs
/// could initialise it at once (`job_template::init_delay`): that needs both kinds on one new
/// repository and a list that does not come, while waiting would hold back every change to
/// this kind's backups (new ones get no CronJob) for as long as it does not come.
pub const LIST_GRACE: Duration = Duration::from_secs(30);

/// Creation order, ties broken by kind, namespace and name; borrowed, since a reconcile compares
/// its backup with every other one that shares its repository.
type Age<'a> = (
    Option<Timestamp>,
    &'static str,
    Option<&'a str>,
    Option<&'a str>,
);

fn age<R: Reconciled>(r: &R) -> Age<'_> {
    let m = r.meta();
    (
        m.creation_timestamp.as_ref().map(|t| t.0),
        R::KIND.as_str(),
        m.namespace.as_deref(),
        m.name.as_deref(),
    )
}

/// How many backups in `store` that are not being deleted write to `url` and are older than `me`.
fn older<R: Reconciled>(store: &Store<R>, url: &str, me: &Age<'_>) -> usize {
    store
        .state_filter(|p| {
            p.meta().deletion_timestamp.is_none()
                && p.common().repository.url == url
                && age(p) < *me
        })
        .len()
}

impl Backups {
    /// Both caches of a term whose watches started at `started`.
    pub fn new(
        volume: Store<VolumeBackup>,
        s3: Store<S3Backup>,
        volume_listed: Arc<AtomicBool>,
        s3_listed: Arc<AtomicBool>,
        started: std::time::Instant,
    ) -> Self {
        Backups {
            volume,
            s3,
            volume_listed,
            s3_listed,
            started,
            partial_warned: Arc::default(),
        }
    }

    /// How long `r`'s backups wait before initialising a repository that does not exist yet:
    /// by its place among the backups writing to the same repository URL, oldest first, so
    /// that no two initialise one repository at once (`job_template::init_delay`). A new
    /// backup sorts after the existing ones, so their places hold; only one created in the same
    /// second under an earlier name moves an older one, at that one's next reconcile.
    ///
    /// `None` until both caches hold their first list, for up to [`LIST_GRACE`] into the term.
    /// Each leadership term starts with empty ones, and kube-runtime holds a controller's
    /// reconciles back only until its own kind's list is in: a VolumeBackup reconciled before
    /// the S3Backup list arrived would count too few older backups, and its CronJob's delay
    /// (and template hash) would flap. After the grace a missing list is a failing watch, and
    /// the delay counts the kinds that are in (warned once a term): a delay that changes once
    /// the list arrives is better than no backup of this kind reconciled until it does.
    pub fn init_delay<K: Reconciled>(&self, r: &K) -> Option<Duration> {
        // The clock before the flags: a list that arrives after this reading finds the grace
        // over too, and so has this backup reconciled again (`controller::TermLists`).
        let in_grace = self.started.elapsed() < LIST_GRACE;
        let volume = self.volume_listed.load(Ordering::Acquire);
        let s3 = self.s3_listed.load(Ordering::Acquire);
        if !(volume && s3) {
            if in_grace {
                return None;
            }
            if !self.partial_warned.swap(true, Ordering::AcqRel) {
                let missing = match (volume, s3) {
                    (true, _) => "S3Backup",
                    (_, true) => "VolumeBackup",
                    _ => "VolumeBackup and S3Backup",
                };
                tracing::warn!(
                    missing,
                    grace = ?LIST_GRACE,
                    "reconciling without the {missing} list, whose watch has not listed since the term began (see its warnings): backups that share a repository with one of them may initialise it at the same time until it lists"
                );
            }
        }
        let url = &r.common().repository.url;
        let me = age(r);
        let volume_older = if volume {
            older(&self.volume, url, &me)
        } else {
            0
        };
        let s3_older = if s3 { older(&self.s3, url, &me) } else { 0 };
        Some(job_template::init_delay(volume_older + s3_older))
    }
}

/// Whether `store` holds its watch's first complete list (and has not been dropped). Only for
/// a store nothing else waits on (the Job caches): polling takes the readiness channel's one
/// wake-up slot.
fn store_ready<R>(store: &Store<R>) -> bool
where
    R: Resource + Clone + 'static,
    R::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// How soon a reconcile that found the caches still filling tries again: the first lists of a
/// term usually take well under a second.
const CACHES_PENDING: Duration = Duration::from_secs(1);

/// What the Job cache keeps of a Job: the metadata that maps it to its backup and the status
/// the backup's status is made of. The pod template and managedFields are most of a Job.
pub fn slim_job(job: &mut Job) {
    job.spec = None;
    job.metadata.managed_fields = None;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {}", crate::errors::chain(.source))]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("not finished within {}s (the Kubernetes API is slow or unreachable)", RECONCILE_DEADLINE.as_secs())]
    Deadline,
}

/// Longest a reconcile may take: a handful of API calls that each answer in milliseconds. The
/// client's read timeout (`serve::API_READ_TIMEOUT`) is minutes, and kube-runtime never runs an
/// object again while its reconcile is in flight, so without this bound one stuck call would
/// freeze that backup for the rest of the term.
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(60);

impl Error {
    /// The error for a condition message: the apiserver's own message rather than the Debug
    /// dump of its Status that `Display` carries for logs.
    fn message(&self) -> String {
        match self {
            Error::Kube {
                action,
                source: kube::Error::Api(status),
            } if !status.message.is_empty() => format!("{action}: {}", status.message),
            other => other.to_string(),
        }
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// Something a backup needs that may be missing.
pub enum Dependency {
    VolumeClaim(String),
    Secret { name: String, key: Option<String> },
}

/// The typed resources the controller reconciles.
pub trait Reconciled:
    BackupSource
    + Resource<Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    fn status(&self) -> Option<&BackupStatus>;
    fn dependencies(&self) -> Vec<Dependency>;
}

fn common_dependencies(spec: &crate::crd::CommonSpec) -> Vec<Dependency> {
    let repo = &spec.repository;
    let mut deps = vec![Dependency::Secret {
        name: repo.password_secret_ref.name.clone(),
        key: Some(repo.password_secret_ref.key.clone()),
    }];
    if let Some(c) = &repo.credentials_secret_ref {
        deps.push(Dependency::Secret {
            name: c.name.clone(),
            key: None,
        });
    }
    deps
}

impl Reconciled for VolumeBackup {
    fn status(&self) -> Option<&BackupStatus> {
        self.status.as_ref()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        let mut deps = vec![Dependency::VolumeClaim(
            self.spec.volume_claim_ref.name.clone(),
        )];
        deps.extend(common_dependencies(&self.spec.common));
        deps
    }
}

impl Reconciled for S3Backup {
    fn status(&self) -> Option<&BackupStatus> {
        self.status.as_ref()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        let mut deps = common_dependencies(&self.spec.common);
        deps.push(Dependency::Secret {
            name: self.spec.source.credentials_secret_ref.name.clone(),
            key: None,
        });
        deps
    }
}

/// Whether the stored CronJob already is what applying `desired` leaves once the mutating
/// webhook has injected the notifier. Then nothing is written. Re-applying would be harmless
/// while the webhook is up, but it fails open: a re-apply during an outage would unwrap the
/// backup command of a CronJob that was right, and a backup run then would report failure for
/// nothing. The template hash catches what `desired` dropped (a removed time zone or URL), which
/// the containment check, tolerant of the apiserver's defaults and of what other mutating
/// webhooks add, cannot see.
fn already_applied(stored: &CronJob, desired: &CronJob, injector: &InjectorConfig) -> bool {
    let hash = |cj: &CronJob| cj.annotations().get(labels::TEMPLATE_HASH).cloned();
    if hash(desired).is_none() || hash(stored) != hash(desired) {
        return false;
    }
    let (Ok(stored), Ok(desired)) = (serde_json::to_value(stored), serde_json::to_value(desired))
    else {
        return false;
    };
    inject::mutate(desired, injector)
        .object
        .is_some_and(|expected| inject::patch::contains_by_name(&stored, &expected))
}

/// What the controller applies for `desired`. Where the admission webhooks never look (an
/// excluded namespace), no mutating webhook will inject the notifier, so the controller writes
/// the CronJob the webhook would have made: the same injector, the same configuration, and so
/// the same object a later webhook call would leave unchanged.
fn to_apply(
    desired: &CronJob,
    injector: Option<&InjectorConfig>,
) -> serde_json::Result<serde_json::Value> {
    let plain = serde_json::to_value(desired)?;
    Ok(match injector {
        Some(injector) => inject::mutate(plain.clone(), injector)
            .object
            .unwrap_or(plain),
        None => plain,
    })
}

/// What the dependency checks found.
#[derive(Default)]
struct Dependencies {
    /// The first missing dependency as a `Ready=False` observation.
    missing: Option<Observed>,
    /// Secrets the operator may not read, so their existence and keys were not checked. The
    /// `secrets` rule of the ClusterRole is the only cluster-wide read of Secrets; a platform
    /// that forbids it may remove it, and loses only these checks.
    unchecked: Vec<String>,
}

async fn check_dependencies(
    client: &kube::Client,
    ns: &str,
    deps: &[Dependency],
) -> Result<Dependencies, Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut found = Dependencies::default();
    let missing =
        |reason: &str, message: String| Some(Observed::new(status::READY, false, reason, message));
    for dep in deps {
        match dep {
            Dependency::VolumeClaim(name) => {
                if pvcs
                    .get_opt(name)
                    .await
                    .map_err(kube_err(format!(
                        "reading PersistentVolumeClaim {ns}/{name}"
                    )))?
                    .is_none()
                {
                    found.missing = missing(
                        "VolumeClaimNotFound",
                        format!("PersistentVolumeClaim {name} does not exist in namespace {ns}"),
                    );
                    return Ok(found);
                }
            }
            Dependency::Secret { name, key } => {
                let secret = match secrets.get_opt(name).await {
                    Ok(secret) => secret,
                    Err(kube::Error::Api(e)) if e.code == 403 => {
                        found.unchecked.push(name.clone());
                        continue;
                    }
                    Err(e) => return Err(kube_err(format!("reading Secret {ns}/{name}"))(e)),
                };
                let Some(secret) = secret else {
                    found.missing = missing(
                        "SecretNotFound",
                        format!("Secret {name} does not exist in namespace {ns}"),
                    );
                    return Ok(found);
                };
                if let Some(key) = key {
                    let has = secret.data.as_ref().is_some_and(|d| d.contains_key(key))
                        || secret
                            .string_data
                            .as_ref()
                            .is_some_and(|d| d.contains_key(key));
                    if !has {
                        found.missing = missing(
                            "SecretKeyNotFound",
                            format!("Secret {name} has no key {key}"),
                        );
                        return Ok(found);
                    }
                }
            }
        }
    }
    Ok(found)
}

/// One reconcile, abandoned at its next step when the leadership term ends. Once this replica
/// may have lost the Lease, another one may already be writing the same CronJob and status;
/// kube-runtime's graceful shutdown would let the reconcile run to its end, each of its later
/// writes then racing the new leader's. Dropping it closes its in-flight request, which the
/// apiserver then gives up too unless it has already stored it; the new leader reconciles
/// everything afresh.
pub async fn reconcile<K: Reconciled>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let kind = K::KIND.as_str();
    let count = |result| {
        ctx.metrics
            .reconciles
            .get_or_create(&ReconcileLabels { kind, result })
            .inc();
    };
    let result = tokio::select! {
        biased;
        () = ctx.term_end.clone() => {
            count("abandoned");
            tracing::info!(kind, namespace = obj.namespace().unwrap_or_default(), name = %obj.name_any(), "leadership ended: reconcile abandoned (the next leader reconciles again)");
            return Ok(Action::await_change());
        }
        result = tokio::time::timeout(RECONCILE_DEADLINE, reconcile_inner(obj.as_ref(), &ctx)) => {
            result.unwrap_or(Err(Error::Deadline))
        }
    };
    count(if result.is_ok() { "ok" } else { "error" });
    tracing::debug!(kind, name = %obj.name_any(), took = ?started.elapsed(), "reconciled");
    result
}

// Reasons of a `Ready=False` that a failed step of the reconcile reports.

/// Reading or applying the CronJob failed (the apiserver, an admission webhook or a quota
/// refused it, say).
pub const APPLY_FAILED: &str = "ApplyFailed";
/// Reading a PersistentVolumeClaim or Secret the backup needs failed (not: it is missing).
pub const DEPENDENCY_CHECK_FAILED: &str = "DependencyCheckFailed";
/// The backup is in the operator's own namespace. Its Pod Security level is `restricted`
/// (manifests/install/namespace.yaml), which backup pods do not meet: restic runs as the image's
/// user, root, so that it can read any volume. A CronJob there would start Jobs whose pods are
/// all refused, unnoticed until the backup deadline fails them; saying so at once is better.
pub const OPERATOR_NAMESPACE: &str = "OperatorNamespace";

async fn reconcile_inner<K: Reconciled>(obj: &K, ctx: &Context) -> Result<Action, Error> {
    // Being deleted. With foreground deletion (Argo CD's default) the backup stays until the
    // garbage collector has deleted its CronJob; applying now would create the CronJob again,
    // for the collector to delete again, over and over. Nothing here is worth writing either.
    if obj.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(init_delay) = ctx.backups.init_delay(obj) else {
        tracing::debug!(kind = K::KIND.as_str(), name = %obj.name_any(), "backup caches still filling; reconciling shortly");
        return Ok(Action::requeue(CACHES_PENDING));
    };
    let name = obj.name_any();
    let ns = obj
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let kind = K::KIND.as_str();
    let cron_jobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let excluded = ctx.excluded_namespaces.contains(&ns);
    let refused = ns == ctx.own_namespace;
    let desired = job_template::cron_job(obj, &ctx.job_args, init_delay);
    let cj_name = desired.metadata.name.clone().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    let previous = obj.status().cloned().unwrap_or_default();
    let now = Timestamp::now();
    let mut observed = Vec::new();
    let mut events = Vec::new();

    // A CronJob of that name that is not ours is never taken over.
    let existing = if refused {
        Ok(None)
    } else {
        cron_jobs.get_opt(&cj_name).await
    };
    let existing = match existing {
        Ok(existing) => existing,
        Err(e) => {
            let e = kube_err(format!("reading CronJob {ns}/{cj_name}"))(e);
            return Err(report_failure(obj, ctx, APPLY_FAILED, e, None).await);
        }
    };
    let conflict = existing
        .as_ref()
        .is_some_and(|cj| !cj.owner_references().iter().any(|o| o.uid == uid));
    let stored = if refused {
        observed.push(Observed::new(
            status::READY,
            false,
            OPERATOR_NAMESPACE,
            format!(
                "backups do not run in namespace {ns}, the operator's own: its Pod Security level (restricted) refuses backup pods, which run restic as root; create the {kind} in another namespace"
            ),
        ));
        None
    } else if conflict {
        observed.push(conflict_condition(existing.as_ref(), kind, &name, &cj_name));
        None
    } else {
        let current = existing
            .as_ref()
            .filter(|cj| already_applied(cj, &desired, &ctx.injector))
            .cloned();
        let applied = current.is_none();
        let stored = match current {
            Some(cj) => cj,
            None => {
                let applying = kube_err(format!("applying CronJob {ns}/{cj_name}"));
                let injector = Some(&ctx.injector).filter(|_| excluded);
                let written = match to_apply(&desired, injector) {
                    Ok(body) => cron_jobs
                        .patch(
                            &cj_name,
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(&body),
                        )
                        .await
                        .map_err(applying),
                    Err(e) => Err(applying(kube::Error::SerdeError(e))),
                };
                match written {
                    Ok(cj) => cj,
                    // The CronJob in place (if any) still runs: its Jobs are still reported.
                    Err(e) => {
                        let ours = existing.as_ref();
                        return Err(report_failure(obj, ctx, APPLY_FAILED, e, ours).await);
                    }
                }
            }
        };
        // Events say what was written; a skipped apply wrote nothing.
        if applied && previous.cron_job_name.is_none() {
            events.push((
                EventType::Normal,
                "Created".to_owned(),
                format!("Created CronJob {cj_name}"),
            ));
        } else if applied
            && previous
                .observed_generation
                .is_some_and(|g| Some(g) < obj.meta().generation)
        {
            events.push((
                EventType::Normal,
                "Updated".to_owned(),
                format!("Updated CronJob {cj_name}"),
            ));
        }
        Some(stored)
    };

    // One reason for Ready=False at a time: a missing claim is no news while the CronJob cannot
    // be ours anyway.
    let deps = if refused || conflict {
        Dependencies::default()
    } else {
        match check_dependencies(&ctx.client, &ns, &obj.dependencies()).await {
            Ok(deps) => deps,
            Err(e) => {
                let ours = stored.as_ref();
                return Err(report_failure(obj, ctx, DEPENDENCY_CHECK_FAILED, e, ours).await);
            }
        }
    };
    if !deps.unchecked.is_empty() && ctx.secrets_unreadable_in(&ns) {
        // Once per namespace and leadership term: an intended RBAC choice must not flood the
        // log, and a removed rule or an authorizer outage must not go unnoticed either.
        tracing::warn!(%ns, "may not get Secrets in this namespace: backups there become Ready without the Secret checks");
    }
    let waiting = deps.missing.is_some() || conflict || refused;
    let suspended = obj.common().suspended.unwrap_or(false);
    if let Some(m) = deps.missing {
        observed.push(m);
    } else if !waiting {
        let unchecked = match deps.unchecked.as_slice() {
            [] => String::new(),
            [name] => format!(
                "; Secret {name} not checked: the operator may not read Secrets in namespace {ns}"
            ),
            names => format!(
                "; Secrets {} not checked: the operator may not read Secrets in namespace {ns}",
                names.join(", ")
            ),
        };
        let runs = if suspended {
            "is in place, suspended (spec.suspended); schedule"
        } else {
            "runs on schedule"
        };
        observed.push(Observed::new(
            status::READY,
            true,
            "CronJobReady",
            format!(
                "CronJob {cj_name} {runs} {:?}{unchecked}",
                obj.common().schedule
            ),
        ));
    }
    observed.push(Observed::new(
        status::SUSPENDED,
        suspended,
        if suspended { "Suspended" } else { "Active" },
        match (suspended, stored.is_some()) {
            (true, _) => "spec.suspended is true: no new backups start",
            (false, true) => "backups run on schedule",
            (false, false) => "not suspended; no backups run until Ready is True",
        },
    ));
    let mut notifier_missing = false;
    if let Some(stored) = &stored {
        let injected = serde_json::to_value(stored)
            .map_err(|e| e.to_string())
            .and_then(|v| inject::inspect(&v));
        notifier_missing = injected.is_err();
        observed.push(match injected {
            // Nobody checked the URLs at admission here: the status says so, once, where a
            // reader looks for why a notification did not arrive.
            Ok(()) if excluded => Observed::new(
                status::NOTIFIER_INJECTED,
                true,
                "InjectedByController",
                format!(
                    "the CronJob's pod template carries the notifier, written by the controller: namespace {ns} is excluded from the operator's admission webhooks (its own namespace and kube-system are, so that it can always repair itself), so webhook URLs here are checked only by the notifier when it sends"
                ),
            ),
            Ok(()) => Observed::new(
                status::NOTIFIER_INJECTED,
                true,
                "NotifierInjected",
                "the CronJob's pod template carries the notifier",
            ),
            Err(why) => Observed::new(status::NOTIFIER_INJECTED, false, "NotifierMissing", why),
        });
    }

    let mut outcomes = outcomes(ctx, obj, stored.as_ref(), &previous).await?;
    if stored.is_none() {
        // Known to have no CronJob of its own, so no Job either (a failed read is unknown).
        outcomes.last_job = LastJob::None;
    }
    events.extend(outcomes.failed_event.clone());

    let (conditions, news) =
        status::merge(&previous.conditions, &observed, obj.meta().generation, now);
    for c in observed
        .iter()
        .filter(|o| !o.ok && news.contains(&o.type_) && o.type_ != status::SUSPENDED)
    {
        events.push((EventType::Warning, c.reason.clone(), c.message.clone()));
    }
    let new_status = BackupStatus {
        observed_generation: obj.meta().generation,
        cron_job_name: stored.as_ref().map(|_| cj_name.clone()),
        conditions,
        ..outcomes.applied_to(&previous)
    };
    // Before the status: the events are derived from the status this reconcile read, so once
    // the new status is stored nobody would publish them again. A failed or abandoned status
    // write repeats some, which the recorder counts into the same event.
    publish(ctx, obj, events).await;
    if new_status != previous {
        write_status(ctx, obj, &new_status).await?;
    }
    // Nothing failed: only backups failing now keep an entry.
    let key = (ns.clone(), name.clone());
    if let Ok(mut writes) = ctx.failure_writes.lock() {
        writes.remove(&key);
    }
    if let Ok(mut failing) = ctx.failing_since.lock() {
        failing.remove(&key);
    }

    record_metrics(ctx, obj, &new_status, outcomes.last_job);

    Ok(if waiting || notifier_missing {
        // Back off while something is missing (re-applying also gives a mutating webhook that
        // is back the chance to inject): half the time it has been missing, 5 s to 2 min.
        let failing = if waiting {
            status::READY
        } else {
            status::NOTIFIER_INJECTED
        };
        let since = new_status
            .conditions
            .iter()
            .find(|c| c.type_ == failing)
            .map(|c| now.duration_since(c.last_transition_time.0).as_secs_f64())
            .unwrap_or(0.0);
        Action::requeue(Duration::from_secs_f64((since / 2.0).clamp(5.0, 120.0)))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

/// The most an event's note may hold (the apiserver refuses longer ones).
const EVENT_NOTE_MAX: usize = 1024;
/// The most a condition message holds: admission webhooks can deny with pages of text.
const CONDITION_MESSAGE_MAX: usize = 4096;

/// Publishes `events` about `obj`; a failure is logged, never fatal (events are best effort).
async fn publish<K: Reconciled>(ctx: &Context, obj: &K, events: Vec<(EventType, String, String)>) {
    let reference = obj.object_ref(&());
    for (type_, reason, note) in events {
        let event = Event {
            type_,
            reason,
            note: Some(crate::text::truncated(&note, EVENT_NOTE_MAX)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(kind = K::KIND.as_str(), namespace = obj.namespace().unwrap_or_default(), name = %obj.name_any(), error = %crate::errors::chain(&e), "could not publish an event");
        }
    }
}

/// Stores `new_status` as `obj`'s status.
async fn write_status<K: Reconciled>(
    ctx: &Context,
    obj: &K,
    new_status: &BackupStatus,
) -> Result<(), Error> {
    let kind = K::KIND.as_str();
    let name = obj.name_any();
    let ns = obj
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let patch = status::merge_patch(new_status)
        .map_err(kube::Error::SerdeError)
        .map_err(kube_err(format!(
            "encoding the status of {kind} {ns}/{name}"
        )))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(kube_err(format!(
            "updating the status of {kind} {ns}/{name}"
        )))?;
    Ok(())
}

/// How often, at most, a failure status whose message alone changed is written again.
const FAILURE_REFRESH: Duration = Duration::from_secs(15);

/// Whether a failure status that differs from the stored one (`changed`) is written now. Every
/// status write makes the watch trigger another reconcile at once; if that one fails the same
/// way but its message differs (an apiserver message that counts something, say), writing it
/// would trigger the next, at the apiserver's pace instead of the retry backoff. So a failure
/// that is news (another reason, `Ready` flipping, a new generation, a Job outcome the status
/// did not have) is written at once, a message that alone changed at most once per
/// [`FAILURE_REFRESH`].
fn failure_write_due(news: bool, changed: bool, last: Option<Instant>, now: Instant) -> bool {
    changed && (news || last.is_none_or(|t| now.saturating_duration_since(t) >= FAILURE_REFRESH))
}

/// Reports a reconcile that failed before it could work out the status: `Ready=False` with
/// `reason` and the error as its message, and a Warning event when that is news; and the
/// outcomes of the Jobs of `cron_job`, ours and still running backups, as a success would. Without it, a
/// new backup would have no status and an edited one would keep `Ready=True` and the old
/// message. Returns `error` for the controller's retry; a status write that fails as well is
/// only logged (the retry reports again).
async fn report_failure<K: Reconciled>(
    obj: &K,
    ctx: &Context,
    reason: &'static str,
    error: Error,
    cron_job: Option<&CronJob>,
) -> Error {
    let (Some(ns), name) = (obj.namespace(), obj.name_any()) else {
        return error;
    };
    let previous = obj.status().cloned().unwrap_or_default();
    // Whatever failed, the CronJob in place keeps running backups: their outcomes still reach
    // the status, the events and the metrics (alerts on the last success must keep working).
    let outcomes = match outcomes(ctx, obj, cron_job, &previous).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(kind = K::KIND.as_str(), namespace = %ns, name = %name, error = %crate::errors::chain(&e), "could not read the backup's Jobs");
            Outcomes::unchanged()
        }
    };
    let with_outcomes = outcomes.applied_to(&previous);
    let outcomes_news = with_outcomes != previous;
    record_metrics(ctx, obj, &with_outcomes, outcomes.last_job);
    let previous_stored = previous;
    let previous = with_outcomes;
    let ready = Observed::new(
        status::READY,
        false,
        reason,
        crate::text::truncated(&error.message(), CONDITION_MESSAGE_MAX),
    );
    let (new_status, ready_news) =
        status::with_ready(&previous, &ready, obj.meta().generation, Timestamp::now());
    let news = ready_news || outcomes_news;
    let key = (ns, name);
    let now = Instant::now();
    let last = ctx
        .failure_writes
        .lock()
        .ok()
        .and_then(|w| w.get(&key).copied());
    if !failure_write_due(news, new_status != previous_stored, last, now) {
        return error;
    }
    let mut events: Vec<_> = outcomes.failed_event.into_iter().collect();
    if ready_news {
        events.push((EventType::Warning, reason.to_owned(), ready.message.clone()));
    }
    publish(ctx, obj, events).await;
    match write_status(ctx, obj, &new_status).await {
        Ok(()) => {
            if let Ok(mut writes) = ctx.failure_writes.lock() {
                writes.insert(key, now);
            }
        }
        Err(e) => {
            tracing::warn!(kind = K::KIND.as_str(), namespace = %key.0, name = %key.1, error = %crate::errors::chain(&e), "could not report the failed reconcile in the status");
        }
    }
    error
}

/// What the backup's Jobs say, merged with what the status already said.
#[derive(Debug)]
struct Outcomes {
    last_schedule_time: Option<Time>,
    last_successful_time: Option<Time>,
    last_failed_time: Option<Time>,
    /// The newest finished Job: succeeded, and how long it ran.
    last_job: LastJob,
    /// `BackupFailed`, when a Job failed after what the status says.
    failed_event: Option<(EventType, String, String)>,
}

impl Outcomes {
    /// Nothing new: the status's own times, and no Job to report.
    fn unchanged() -> Self {
        Outcomes {
            last_schedule_time: None,
            last_successful_time: None,
            last_failed_time: None,
            last_job: LastJob::Unknown,
            failed_event: None,
        }
    }

    /// `previous` with its times moved forward to these.
    fn applied_to(&self, previous: &BackupStatus) -> BackupStatus {
        let later =
            |a: &Option<Time>, b: &Option<Time>| status::latest(a.clone(), b.as_ref().map(|t| t.0));
        BackupStatus {
            last_schedule_time: later(&previous.last_schedule_time, &self.last_schedule_time),
            last_successful_time: later(&previous.last_successful_time, &self.last_successful_time),
            last_failed_time: later(&previous.last_failed_time, &self.last_failed_time),
            ..previous.clone()
        }
    }
}

/// The outcomes of the Jobs of `cron_job`, the backup's own CronJob (none while there is none
/// of ours: a conflicting or orphaned CronJob's Jobs are not this backup's). The later of what
/// the status already says and what the Jobs still show (history limits delete old Jobs).
async fn outcomes<K: Reconciled>(
    ctx: &Context,
    obj: &K,
    cron_job: Option<&CronJob>,
    previous: &BackupStatus,
) -> Result<Outcomes, Error> {
    let Some(cron_job) = cron_job else {
        return Ok(Outcomes::unchanged());
    };
    let name = obj.name_any();
    let ns = obj
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let owned = owned_jobs(
        ctx,
        K::KIND.as_str(),
        &ns,
        &name,
        obj.meta().creation_timestamp.as_ref(),
        cron_job.uid().as_deref().unwrap_or_default(),
    )
    .await?;
    let finished: Vec<_> = owned.iter().filter_map(|j| status::finished(j)).collect();
    let newest_ok = finished.iter().filter(|f| f.succeeded).map(|f| f.at).max();
    let newest_failed = finished
        .iter()
        .filter(|f| !f.succeeded)
        .max_by_key(|f| f.at);
    let failed_event = newest_failed
        .filter(|f| {
            previous
                .last_failed_time
                .as_ref()
                .is_none_or(|t| f.at > t.0)
        })
        .map(|f| {
            (
                EventType::Warning,
                "BackupFailed".to_owned(),
                format!("Job {} failed: {}", f.name, f.reason),
            )
        });
    let cj_status = cron_job.status.clone().unwrap_or_default();
    Ok(Outcomes {
        last_schedule_time: cj_status.last_schedule_time,
        last_successful_time: status::latest(cj_status.last_successful_time, newest_ok),
        last_failed_time: newest_failed.map(|f| Time(f.at)),
        last_job: finished
            .iter()
            .max_by_key(|f| f.at)
            .map_or(LastJob::None, |f| LastJob::Finished {
                succeeded: f.succeeded,
                secs: f.duration_secs.unwrap_or(0.0),
            }),
        failed_event,
    })
}

/// The backup's metrics from its status and its newest finished Job.
fn record_metrics<K: Reconciled>(ctx: &Context, obj: &K, status: &BackupStatus, last_job: LastJob) {
    ctx.metrics.backups.record(
        &BackupLabels {
            namespace: obj.namespace().unwrap_or_default(),
            kind: K::KIND.as_str(),
            name: obj.name_any(),
        },
        &BackupFigures {
            last_success: status
                .last_successful_time
                .as_ref()
                .map(|t| t.0.as_second()),
            last_failure: status.last_failed_time.as_ref().map(|t| t.0.as_second()),
            last_job,
        },
    );
}

/// `Ready=False` for a CronJob of the generated name that this backup does not own.
fn conflict_condition(
    existing: Option<&CronJob>,
    kind: &str,
    name: &str,
    cj_name: &str,
) -> Observed {
    // Deleted and created again at once (`kubectl replace --force`): the garbage collector has
    // yet to delete the earlier one's CronJob, and that deletion reconciles this one.
    let earlier = existing.is_some_and(|cj| {
        cj.owner_references()
            .iter()
            .any(|o| o.kind == kind && o.name == name)
    });
    if earlier {
        Observed::new(
            status::READY,
            false,
            "EarlierCronJobPending",
            format!(
                "CronJob {cj_name} belongs to an earlier {kind} of this name, which was deleted; it is replaced once the garbage collector has deleted it"
            ),
        )
    } else {
        Observed::new(
            status::READY,
            false,
            "CronJobConflict",
            format!("CronJob {cj_name} exists and is not owned by this {kind}; rename one of them"),
        )
    }
}

/// Whether `job` is one of the backup `name`'s: owned by its CronJob (uid `cron_job_uid`), and
/// created since the backup was. A Job from before is an earlier backup's of the same name
/// (deleted and created again), whose history is not this one's; so are the Jobs of an orphaned
/// CronJob of that name (`kubectl delete --cascade=orphan`), which carry the same annotation.
fn is_backups_job(
    job: &Job,
    ns: &str,
    name: &str,
    created: Option<&Time>,
    cron_job_uid: &str,
) -> bool {
    job.metadata.namespace.as_deref() == Some(ns)
        && job.owner_references().iter().any(|o| o.uid == cron_job_uid)
        && job
            .annotations()
            .get(labels::OWNER_NAME)
            .map(String::as_str)
            == Some(name)
        && job.metadata.creation_timestamp.as_ref() >= created
}

/// The Jobs of the backup `name` ([`is_backups_job`]), from the cache once its first list is
/// in; until then (the first reconciles of a leadership term, while that list is in flight) by
/// a LIST, so a status never misses a Job. The cache holds only this kind's Jobs, slimmed;
/// scanning it is far cheaper than the LIST it replaces.
async fn owned_jobs(
    ctx: &Context,
    kind: &str,
    ns: &str,
    name: &str,
    created: Option<&Time>,
    cron_job_uid: &str,
) -> Result<Vec<Arc<Job>>, Error> {
    let ours = |j: &Job| is_backups_job(j, ns, name, created, cron_job_uid);
    if store_ready(&ctx.jobs) {
        return Ok(ctx.jobs.state_filter(ours));
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    Ok(jobs
        .list(&ListParams::default().labels(&format!("{}={kind}", labels::OWNER_KIND)))
        .await
        .map_err(kube_err(format!("listing Jobs in {ns}")))?
        .items
        .into_iter()
        .filter(|j| ours(j))
        .map(Arc::new)
        .collect())
}

pub fn error_policy<K: Reconciled>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    // Counted from this term's first failure since the last success, not from the status: a
    // backup that waited long for a claim and then meets one failed call retries in 15 s.
    let now = Instant::now();
    let failing_for = ctx
        .failing_since
        .lock()
        .map(|mut failing| {
            let key = (obj.namespace().unwrap_or_default(), obj.name_any());
            now.saturating_duration_since(*failing.entry(key).or_insert(now))
        })
        .unwrap_or_default();
    let retry = retry_after_error(failing_for.as_secs_f64());
    tracing::warn!(kind = K::KIND.as_str(), namespace = obj.namespace().unwrap_or_default(), name = %obj.name_any(), error = %err, retry_in_s = retry.as_secs(), "reconcile failed; retrying");
    Action::requeue(retry)
}

/// How soon a failed reconcile is tried again, given how long (seconds) its reconciles have been
/// failing: half of that, from 15 s up to 5 min. A cause that lasts (a webhook or a policy that
/// refuses the CronJob) must not cost every backup a GET and an apply every 15 s.
fn retry_after_error(failing_for_secs: f64) -> Duration {
    Duration::from_secs_f64((failing_for_secs / 2.0).clamp(15.0, 300.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::VolumeBackupSpec;
    use crate::inject::NotifierMode;

    fn stored_and_desired(injected: bool) -> (CronJob, CronJob, InjectorConfig) {
        let spec: VolumeBackupSpec = serde_json::from_value(serde_json::json!({
            "volumeClaimRef": {"name": "data"},
            "schedule": "0 3 * * *",
            "repository": {"url": "/repo", "passwordSecretRef": {"name": "restic", "key": "pw"}},
            "webhooks": {"success": "https://hooks.example.com/ok"}
        }))
        .unwrap();
        let mut vb = VolumeBackup::new("nightly", spec);
        vb.metadata.namespace = Some("team-a".into());
        vb.metadata.uid = Some("uid-1".into());
        let args = JobArgs {
            restic_image: "restic:test".into(),
            rclone_image: "rclone:test".into(),
            backup_deadline: Duration::from_secs(3600),
        };
        let injector = InjectorConfig {
            image: "operator:test".into(),
            mode: NotifierMode::Sidecar,
            timeout: Duration::from_secs(10),
            resources: serde_json::json!({"requests": {"cpu": "10m"}}),
            policy_env: Vec::new(),
            ca: None,
            run_as_user: Some(65532),
        };
        let desired = job_template::cron_job(&vb, &args, Duration::ZERO);
        let body = to_apply(&desired, Some(&injector).filter(|_| injected)).unwrap();
        let stored = serde_json::from_value(body).unwrap();
        (stored, desired, injector)
    }

    fn volume_backup(name: &str, url: &str, created: i64) -> VolumeBackup {
        let spec: VolumeBackupSpec = serde_json::from_value(serde_json::json!({
            "volumeClaimRef": {"name": "data"},
            "schedule": "0 3 * * *",
            "repository": {"url": url, "passwordSecretRef": {"name": "restic", "key": "pw"}}
        }))
        .unwrap();
        let mut vb = VolumeBackup::new(name, spec);
        vb.metadata.namespace = Some("team-a".into());
        vb.metadata.uid = Some(format!("uid-{name}"));
        vb.metadata.generation = Some(1);
        vb.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(created).unwrap(),
            ));
        vb
    }

    fn s3_backup(name: &str, url: &str, created: i64) -> S3Backup {
        let spec: crate::crd::S3BackupSpec = serde_json::from_value(serde_json::json!({
            "source": {"endpoint": "https://s3.example.com", "bucket": "data",
                       "credentialsSecretRef": {"name": "s3"}},
            "schedule": "0 3 * * *",
            "repository": {"url": url, "passwordSecretRef": {"name": "restic", "key": "pw"}}
        }))
        .unwrap();
        let mut b = S3Backup::new(name, spec);
        b.metadata.namespace = Some("team-a".into());
        b.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::from_second(created).unwrap(),
        ));
        b
    }

    /// Feeds a watch's first complete list into a cache.
    fn list<R>(writer: &mut kube::runtime::reflector::store::Writer<R>, objects: Vec<R>)
    where
        R: Resource<DynamicType = ()> + Clone + 'static,
    {
        use kube::runtime::watcher::Event;
        writer.apply_watcher_event(&Event::Init);
        for o in objects {
            writer.apply_watcher_event(&Event::InitApply(o));
        }
        writer.apply_watcher_event(&Event::InitDone);
    }

    /// Both caches of a term that has just started, empty and not listed, with their writers.
    fn unlisted_backups() -> (
        Backups,
        kube::runtime::reflector::store::Writer<VolumeBackup>,
        kube::runtime::reflector::store::Writer<S3Backup>,
    ) {
        let (volume, volume_writer) = kube::runtime::reflector::store();
        let (s3, s3_writer) = kube::runtime::reflector::store();
        let backups = Backups::new(
            volume,
            s3,
            Arc::default(),
            Arc::default(),
            std::time::Instant::now(),
        );
        (backups, volume_writer, s3_writer)
    }

    /// A VolumeBackup reconciled before the S3Backup list is in would not count an older
    /// S3Backup on its repository (and get 0 s instead of 20 s): no delay until both are in.
    #[test]
    fn the_init_delay_waits_for_both_kinds_first_lists() {
        let url = "s3:https://s3.example.com/shared";
        let (mut backups, mut volume_writer, mut s3_writer) = unlisted_backups();
        let me = volume_backup("newer", url, 2_000);
        list(
            &mut volume_writer,
            vec![me.clone(), volume_backup("oldest", url, 500)],
        );
        backups.volume_listed.store(true, Ordering::Release);
        assert_eq!(backups.init_delay(&me), None, "the S3Backup list is not in");

        // A watch that has not listed for the whole grace: go on with what is in, warned once.
        backups.started = std::time::Instant::now()
            .checked_sub(LIST_GRACE + Duration::from_secs(1))
            .unwrap();
        assert_eq!(backups.init_delay(&me), Some(job_template::INIT_SPACING));
        assert!(backups.partial_warned.load(Ordering::Acquire));

        list(&mut s3_writer, vec![s3_backup("older", url, 1_000)]);
        backups.s3_listed.store(true, Ordering::Release);
        assert_eq!(
            backups.init_delay(&me),
            Some(job_template::INIT_SPACING * 2)
        );
    }

    /// A Context whose client answers nothing and counts what was asked.
    fn offline_context(backups: Backups) -> (Context, Arc<std::sync::atomic::AtomicUsize>) {
        context_with_api(backups, false)
    }

    /// A context whose API calls are counted and fail at once, or with `hang` never answer (a
    /// half-open connection).
    fn context_with_api(
        backups: Backups,
        hang: bool,
    ) -> (Context, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let service = tower::service_fn(move |_: hyper::Request<kube::client::Body>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Err::<hyper::Response<kube::client::Body>, _>(std::io::Error::other("offline"))
            }
        });
        let client = kube::Client::new(service, "default");
        let (_, _, injector) = stored_and_desired(false);
        let (jobs, _) = kube::runtime::reflector::store();
        let ctx = Context {
            recorder: Recorder::new(
                client.clone(),
                kube::runtime::events::Reporter {
                    controller: "test".into(),
                    instance: None,
                },
            ),
            client,
            job_args: JobArgs {
                restic_image: "restic:test".into(),
                rclone_image: "rclone:test".into(),
                backup_deadline: Duration::from_secs(3600),
            },
            injector,
            metrics: Metrics::new(prometheus_client::registry::Registry::default()),
            jobs,
            backups,
            secrets_unreadable: Default::default(),
            term_end: futures::future::pending().boxed().shared(),
            excluded_namespaces: Vec::new(),
            own_namespace: "backup-operator-system".into(),
            failure_writes: Default::default(),
            failing_since: Default::default(),
        };
        (ctx, requests)
    }

    /// A backup being deleted (foreground deletion keeps it while the garbage collector
    /// deletes its CronJob) and a reconcile that comes before the caches are full write
    /// nothing; the same backup otherwise goes to the apiserver at once.
    #[tokio::test]
    async fn deleting_backups_and_filling_caches_make_no_requests() {
        use std::sync::atomic::Ordering;
        let url = "/repo";
        let (backups, mut volume_writer, mut s3_writer) = unlisted_backups();
        let (ctx, requests) = offline_context(backups);
        let vb = volume_backup("nightly", url, 1_000);
        list(&mut volume_writer, vec![vb.clone()]);
        ctx.backups.volume_listed.store(true, Ordering::Release);

        let mut deleting = vb.clone();
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        );
        deleting.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
        let action = reconcile_inner(&deleting, &ctx).await.unwrap();
        assert_eq!(action, Action::await_change());

        let action = reconcile_inner(&vb, &ctx).await.unwrap();
        assert_eq!(
            action,
            Action::requeue(CACHES_PENDING),
            "S3Backup list not in"
        );
        assert_eq!(requests.load(Ordering::SeqCst), 0);

        list(&mut s3_writer, Vec::new());
        ctx.backups.s3_listed.store(true, Ordering::Release);
        let deleting = reconcile_inner(&deleting, &ctx).await.unwrap();
        assert_eq!(deleting, Action::await_change());
        assert_eq!(requests.load(Ordering::SeqCst), 0);
        let err = reconcile_inner(&vb, &ctx).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("reading CronJob team-a/nightly-backup"),
            "{err}"
        );
        assert!(requests.load(Ordering::SeqCst) > 0);
    }

    /// An API call that never answers fails the reconcile at the deadline (so kube-runtime
    /// retries it) instead of holding the backup for the rest of the term.
    #[tokio::test(start_paused = true)]
    async fn a_reconcile_whose_api_call_never_answers_fails_at_the_deadline() {
        use std::sync::atomic::Ordering;
        let (backups, mut volume_writer, mut s3_writer) = unlisted_backups();
        let (ctx, requests) = context_with_api(backups, true);
        let vb = volume_backup("nightly", "/repo", 1_000);
        list(&mut volume_writer, vec![vb.clone()]);
        list(&mut s3_writer, Vec::new());
        ctx.backups.volume_listed.store(true, Ordering::Release);
        ctx.backups.s3_listed.store(true, Ordering::Release);
        let started = tokio::time::Instant::now();
        let err = reconcile(Arc::new(vb), Arc::new(ctx)).await.unwrap_err();
        assert!(matches!(err, Error::Deadline), "{err}");
        assert!(started.elapsed() >= RECONCILE_DEADLINE);
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "stuck on the first call"
        );
        assert_eq!(
            err.to_string(),
            "not finished within 60s (the Kubernetes API is slow or unreachable)"
        );
    }

    /// Each failure status write triggers another reconcile at once: news is written at once,
    /// a message that alone changed no more often than the retry.
    #[test]
    fn a_failure_whose_message_alone_changes_is_written_at_the_retry_pace() {
        let t0 = Instant::now();
        assert!(failure_write_due(true, true, None, t0));
        assert!(failure_write_due(true, true, Some(t0), t0));
        assert!(failure_write_due(false, true, None, t0));
        assert!(!failure_write_due(
            false,
            true,
            Some(t0),
            t0 + Duration::from_secs(1)
        ));
        assert!(failure_write_due(
            false,
            true,
            Some(t0),
            t0 + FAILURE_REFRESH
        ));
        assert!(!failure_write_due(true, false, None, t0), "nothing changed");
    }

    /// A CronJob without the notifier is re-applied (which lets a webhook that is back inject
    /// it); one with the notifier and the current template is left alone.
    #[test]
    fn a_cron_job_counts_as_applied_only_with_the_notifier() {
        let (injected, desired, injector) = stored_and_desired(true);
        assert!(already_applied(&injected, &desired, &injector));
        let mut changed = injected.clone();
        changed.spec.as_mut().unwrap().schedule = "0 4 * * *".into();
        assert!(!already_applied(&changed, &desired, &injector));
        let (plain, desired, injector) = stored_and_desired(false);
        assert!(!already_applied(&plain, &desired, &injector));
    }

    /// What another mutating webhook adds (a container in front, a variable in the notifier)
    /// would survive a re-apply (server-side apply merges those lists by name), so it is no
    /// reason for one; a changed command still is.
    #[test]
    fn another_webhooks_additions_do_not_call_for_a_re_apply() {
        let (injected, desired, injector) = stored_and_desired(true);
        let mut value = serde_json::to_value(&injected).unwrap();
        let pod = &mut value["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        pod["containers"]
            .as_array_mut()
            .unwrap()
            .insert(0, serde_json::json!({"name": "proxy", "image": "proxy"}));
        let notifier = pod["initContainers"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c["name"] == "notifier")
            .unwrap();
        notifier["env"].as_array_mut().unwrap().insert(
            0,
            serde_json::json!({"name": "HTTPS_PROXY", "value": "http://proxy:3128"}),
        );
        let stored: CronJob = serde_json::from_value(value.clone()).unwrap();
        assert!(already_applied(&stored, &desired, &injector));
        value["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][1]["command"][0] =
            serde_json::json!("tampered");
        let stored: CronJob = serde_json::from_value(value).unwrap();
        assert!(!already_applied(&stored, &desired, &injector));
    }

    /// Where no webhook acts the controller applies what the webhook would have made, so the
    /// next reconcile finds it applied and a webhook call would change nothing.
    #[test]
    fn in_an_excluded_namespace_the_controller_applies_the_injected_cron_job() {
        let (_, desired, injector) = stored_and_desired(false);
        let plain = to_apply(&desired, None).unwrap();
        assert!(inject::inspect(&plain).is_err());
        let body = to_apply(&desired, Some(&injector)).unwrap();
        inject::inspect(&body).unwrap();
        assert!(inject::mutate(body.clone(), &injector).patch.is_empty());
        let stored: CronJob = serde_json::from_value(body).unwrap();
        assert!(already_applied(&stored, &desired, &injector));
    }

    #[test]
    fn failed_reconciles_back_off_from_15_seconds_to_5_minutes() {
        assert_eq!(retry_after_error(0.0), Duration::from_secs(15));
        assert_eq!(retry_after_error(-5.0), Duration::from_secs(15));
        assert_eq!(retry_after_error(120.0), Duration::from_secs(60));
        assert_eq!(retry_after_error(86_400.0), Duration::from_secs(300));
    }

    /// A CronJob left by an earlier backup of the same name (deleted and created again) is
    /// waited for, not reported as a conflict to rename; its Jobs are not this backup's.
    #[test]
    fn an_earlier_backup_of_the_same_name_is_told_apart() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
        let owned_by = |kind: &str, name: &str| CronJob {
            metadata: ObjectMeta {
                owner_references: Some(vec![OwnerReference {
                    api_version: "backups.k8s.bnerd.com/v1".into(),
                    kind: kind.into(),
                    name: name.into(),
                    uid: "old-uid".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        };
        let earlier = owned_by("VolumeBackup", "db");
        let c = conflict_condition(Some(&earlier), "VolumeBackup", "db", "db-backup");
        assert_eq!(c.reason, "EarlierCronJobPending");
        let foreign = owned_by("S3Backup", "db");
        let c = conflict_condition(Some(&foreign), "VolumeBackup", "db", "db-backup");
        assert_eq!(
            (c.reason.as_str(), c.message.as_str()),
            (
                "CronJobConflict",
                "CronJob db-backup exists and is not owned by this VolumeBackup; rename one of them"
            )
        );

        let at = |s: i64| Some(Time(Timestamp::from_second(s).unwrap()));
        let job = |created: i64| Job {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                annotations: Some([(labels::OWNER_NAME.to_owned(), "db".to_owned())].into()),
                creation_timestamp: at(created),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "CronJob".into(),
                    name: "db-backup".into(),
                    uid: "cj-uid".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = at(1_000);
        let ours =
            |j: &Job, ns: &str, name: &str| is_backups_job(j, ns, name, created.as_ref(), "cj-uid");
        assert!(ours(&job(1_000), "ns", "db"));
        assert!(ours(&job(2_000), "ns", "db"));
        assert!(!ours(&job(999), "ns", "db"));
        assert!(!ours(&job(2_000), "other", "db"));
        assert!(!ours(&job(2_000), "ns", "web"));
        // The same name and annotation, from another CronJob (an orphaned one of that name).
        assert!(!is_backups_job(
            &job(2_000),
            "ns",
            "db",
            created.as_ref(),
            "other-cj-uid"
        ));
    }
}

//! Status of a backup resource: conditions that keep their transition time while unchanged,
//! and the times derived from the resource's Jobs.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::BackupStatus;

pub const READY: &str = "Ready";
pub const SUSPENDED: &str = "Suspended";
pub const NOTIFIER_INJECTED: &str = "NotifierInjected";

/// A condition as this reconcile computed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Observed {
    pub fn new(type_: &'static str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Observed {
            type_,
            ok,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// Merges observations into the previous conditions: `lastTransitionTime` moves only when the
/// status flips. Returns the conditions and the types that are news: flipped, or with another
/// reason (a claim that appeared while the Secret is still missing). Only the first
/// observation of a type counts: the apiserver refuses a status with two conditions of one type.
pub fn merge(
    previous: &[Condition],
    observed: &[Observed],
    generation: Option<i64>,
    now: Timestamp,
) -> (Vec<Condition>, Vec<&'static str>) {
    let mut news = Vec::new();
    let conditions = observed
        .iter()
        .enumerate()
        .filter(|(i, o)| observed[..*i].iter().all(|p| p.type_ != o.type_))
        .map(|(_, o)| {
            let status = if o.ok { "True" } else { "False" };
            let prev = previous.iter().find(|c| c.type_ == o.type_);
            let since = match prev {
                Some(p) if p.status == status => {
                    if p.reason != o.reason {
                        news.push(o.type_);
                    }
                    p.last_transition_time.clone()
                }
                _ => {
                    news.push(o.type_);
                    Time(now)
                }
            };
            Condition {
                type_: o.type_.to_owned(),
                status: status.to_owned(),
                reason: o.reason.clone(),
                message: o.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect();
    (conditions, news)
}

/// `previous` with its `Ready` condition replaced by `ready`: what a reconcile that failed part
/// way can say. The rest still describes the CronJob in place, which the failed step did not
/// change; `observedGeneration` stays too, so that the reconcile that later applies this
/// generation still reports the update (`Ready` carries the generation that failed). Also
/// returns whether this is news: `Ready` flips, or changes reason or generation.
pub fn with_ready(
    previous: &BackupStatus,
    ready: &Observed,
    generation: Option<i64>,
    now: Timestamp,
) -> (BackupStatus, bool) {
    let (merged, _) = merge(
        &previous.conditions,
        std::slice::from_ref(ready),
        generation,
        now,
    );
    let mut conditions = previous.conditions.clone();
    let old = conditions.iter_mut().find(|c| c.type_ == ready.type_);
    let news = old.as_ref().is_none_or(|c| {
        c.status != merged[0].status
            || c.reason != merged[0].reason
            || c.observed_generation != generation
    });
    match (old, merged.into_iter().next()) {
        (Some(old), Some(new)) => *old = new,
        (None, Some(new)) => conditions.push(new),
        (_, None) => {}
    }
    (
        BackupStatus {
            conditions,
            ..previous.clone()
        },
        news,
    )
}

/// How a finished Job ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub name: String,
    pub succeeded: bool,
    pub at: Timestamp,
    pub duration_secs: Option<f64>,
    pub reason: String,
}

/// The terminal condition of a Job, if it has one.
pub fn finished(job: &Job) -> Option<Finished> {
    let status = job.status.as_ref()?;
    let cond = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    let succeeded = cond.type_ == "Complete";
    let at = match (&status.completion_time, &cond.last_transition_time) {
        (Some(t), _) if succeeded => t.0,
        (_, Some(t)) => t.0,
        (Some(t), None) => t.0,
        (None, None) => return None,
    };
    let duration_secs = status
        .start_time
        .as_ref()
        .map(|s| at.duration_since(s.0).as_secs_f64());
    Some(Finished {
        name: job.metadata.name.clone().unwrap_or_default(),
        succeeded,
        at,
        duration_secs,
        reason: cond.reason.clone().unwrap_or_default(),
    })
}

/// The members of `BackupStatus` as serialised; a test keeps the list complete.
const STATUS_KEYS: [&str; 6] = [
    "observedGeneration",
    "cronJobName",
    "lastScheduleTime",
    "lastSuccessfulTime",
    "lastFailedTime",
    "conditions",
];

/// A merge patch that sets the status to exactly `status`. A merge patch leaves a key it does
/// not mention as it was, so what `status` no longer has (a `cronJobName` after the CronJob was
/// lost to a conflict) is cleared with an explicit null; otherwise the stale value would stay and
/// every reconcile would patch again.
pub fn merge_patch(status: &BackupStatus) -> serde_json::Result<serde_json::Value> {
    let mut v = serde_json::to_value(status)?;
    if let Some(members) = v.as_object_mut() {
        for key in STATUS_KEYS {
            members.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    Ok(serde_json::json!({ "status": v }))
}

/// The later of two optional times.
pub fn latest(a: Option<Time>, b: Option<Timestamp>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) if b > a.0 => Some(Time(b)),
        (Some(a), _) => Some(a),
        (None, b) => b.map(Time),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, status: &str, reason: &str, generation: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            observed_generation: Some(generation),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    /// A False condition that changes reason is news (its event is the only word of the new
    /// cause), its transition time stays; one condition per type reaches the apiserver.
    #[test]
    fn a_new_reason_is_news_and_each_type_is_reported_once() {
        let now = Timestamp::from_second(1_000).unwrap();
        let previous = [
            condition(READY, "False", "VolumeClaimNotFound", 1),
            condition(SUSPENDED, "False", "Active", 1),
        ];
        let observed = [
            Observed::new(
                READY,
                false,
                "SecretNotFound",
                "Secret restic does not exist",
            ),
            Observed::new(READY, false, "VolumeClaimNotFound", "a second Ready"),
            Observed::new(SUSPENDED, false, "Active", "backups run on schedule"),
        ];
        let (conditions, news) = merge(&previous, &observed, Some(2), now);
        assert_eq!(news, [READY]);
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0].reason, "SecretNotFound");
        assert_eq!(
            conditions[0].last_transition_time,
            Time(Timestamp::UNIX_EPOCH)
        );
        let (_, news) = merge(&conditions, &observed, Some(2), now);
        assert!(news.is_empty(), "{news:?}");
    }

    /// A failed reconcile replaces Ready only; the rest describes the CronJob still in place.
    #[test]
    fn a_failure_replaces_ready_and_keeps_the_rest() {
        let now = Timestamp::from_second(1_000).unwrap();
        let previous = BackupStatus {
            observed_generation: Some(1),
            cron_job_name: Some("b-backup".into()),
            conditions: vec![
                condition(READY, "True", "CronJobReady", 1),
                condition(NOTIFIER_INJECTED, "True", "NotifierInjected", 1),
            ],
            ..Default::default()
        };
        let failed = Observed::new(READY, false, "ApplyFailed", "denied");
        let (status, news) = with_ready(&previous, &failed, Some(2), now);
        assert!(news);
        assert_eq!(status.observed_generation, Some(1), "not yet applied");
        assert_eq!(status.cron_job_name.as_deref(), Some("b-backup"));
        assert_eq!(status.conditions[1], previous.conditions[1]);
        let ready = &status.conditions[0];
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", "ApplyFailed", "denied")
        );
        assert_eq!(
            (ready.observed_generation, ready.last_transition_time.0),
            (Some(2), now)
        );

        // The same failure again, with another message: a change, but no news.
        let later = Timestamp::from_second(2_000).unwrap();
        let again = Observed::new(READY, false, "ApplyFailed", "denied again");
        let (next, news) = with_ready(&status, &again, Some(2), later);
        assert!(!news);
        assert_eq!(next.conditions[0].message, "denied again");
        assert_eq!(next.conditions[0].last_transition_time.0, now);
        // Another reason, or another generation, is news.
        let other = Observed::new(READY, false, "DependencyCheckFailed", "x");
        assert!(with_ready(&status, &other, Some(2), later).1);
        assert!(with_ready(&status, &failed, Some(3), later).1);

        // A new backup: Ready is the only condition.
        let (first, news) = with_ready(&BackupStatus::default(), &failed, Some(1), now);
        assert!(news);
        assert_eq!(first.conditions.len(), 1);
        assert_eq!(first.observed_generation, None);
    }

    #[test]
    fn the_merge_patch_names_every_member_and_clears_what_is_gone() {
        let t = Time(Timestamp::UNIX_EPOCH);
        let full = BackupStatus {
            observed_generation: Some(1),
            cron_job_name: Some("x-backup".into()),
            last_schedule_time: Some(t.clone()),
            last_successful_time: Some(t.clone()),
            last_failed_time: Some(t.clone()),
            conditions: vec![Condition {
                type_: READY.into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: t,
            }],
        };
        let serialised = serde_json::to_value(&full).unwrap();
        let mut keys: Vec<&str> = serialised
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut listed = STATUS_KEYS.to_vec();
        listed.sort_unstable();
        assert_eq!(keys, listed, "STATUS_KEYS must list every member");

        let patch = merge_patch(&BackupStatus {
            observed_generation: Some(2),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(patch["status"]["observedGeneration"], 2);
        assert!(patch["status"]["cronJobName"].is_null());
        assert!(patch["status"]["conditions"].is_null());
    }
}

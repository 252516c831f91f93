//! `/validate`: VolumeBackup and S3Backup specs, and the notification annotations of labelled
//! CronJobs. Pure functions of the request: no API calls on the admission path.

use std::collections::BTreeMap;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};
use serde::de::DeserializeOwned;

use crate::contract::{self, BackupKind, annotations};
use crate::crd::{CommonSpec, S3BackupSpec, VolumeBackupSpec};
use crate::schedule::{check_schedule, check_time_zone};
use crate::url_policy::{UrlPolicy, Violation};

/// The outcome of validating one object.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// One line each: `<field path>: <reason>`.
    pub denials: Vec<Denial>,
    pub warnings: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Denial {
    pub field: String,
    pub reason: String,
    /// Short metric label.
    pub class: &'static str,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl Verdict {
    pub fn message(&self) -> String {
        self.denials
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What `/validate` knows how to check.
pub enum Target {
    VolumeBackup,
    S3Backup,
    CronJob,
    Unknown,
}

pub fn target(req: &AdmissionRequest<DynamicObject>) -> Target {
    match (req.kind.group.as_str(), req.kind.kind.as_str()) {
        (contract::GROUP, "VolumeBackup") => Target::VolumeBackup,
        (contract::GROUP, "S3Backup") => Target::S3Backup,
        ("batch", "CronJob") => Target::CronJob,
        _ => Target::Unknown,
    }
}

pub fn validate(req: &AdmissionRequest<DynamicObject>, policy: &UrlPolicy) -> Verdict {
    let mut v = Checker {
        policy,
        verdict: Verdict::default(),
    };
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return v.verdict;
    }
    let Some(obj) = &req.object else {
        v.deny("object", "the request carries no object", "malformed");
        return v.verdict;
    };
    // Never block an object on its way out (finalizer removal is an UPDATE).
    if obj.metadata.deletion_timestamp.is_some() {
        return v.verdict;
    }
    let old = req.old_object.as_ref();
    match target(req) {
        Target::VolumeBackup => {
            if let Some((new, old)) = v.decode::<VolumeBackupSpec>(obj, old) {
                v.common(&new.common, old.as_ref().map(|o| &o.common));
            }
        }
        Target::S3Backup => {
            if let Some((new, old)) = v.decode::<S3BackupSpec>(obj, old) {
                v.check(
                    "spec.source.endpoint",
                    Some(&new.source.endpoint),
                    old.as_ref().map(|o| Some(o.source.endpoint.as_str())),
                    |c, e| c.endpoint(e),
                );
                v.common(&new.common, old.as_ref().map(|o| &o.common));
            }
        }
        Target::CronJob => v.cron_job(obj, old),
        Target::Unknown => v.verdict.warnings.push(format!(
            "backup-operator does not validate {}/{}; check the webhook configuration's rules",
            req.kind.group, req.kind.kind
        )),
    }
    v.verdict
}

struct Checker<'a> {
    policy: &'a UrlPolicy,
    verdict: Verdict,
}

impl Checker<'_> {
    fn deny(&mut self, field: &str, reason: impl Into<String>, class: &'static str) {
        self.verdict.denials.push(Denial {
            field: field.to_owned(),
            reason: reason.into(),
            class,
        });
    }

    fn decode<T: DeserializeOwned>(
        &mut self,
        obj: &DynamicObject,
        old: Option<&DynamicObject>,
    ) -> Option<(T, Option<T>)> {
        let spec = |o: &DynamicObject| {
            serde_json::from_value::<T>(o.data.get("spec").cloned().unwrap_or_default())
        };
        match spec(obj) {
            Ok(new) => Some((new, old.and_then(|o| spec(o).ok()))),
            Err(e) => {
                self.deny("spec", e.to_string(), "malformed");
                None
            }
        }
    }

    /// Runs `check` on a field. On UPDATE, a value that did not change is ratcheted: its failure
    /// becomes a warning, so tightening the policy never blocks unrelated edits (or deletion).
    /// `old` is `None` on CREATE and `Some(previous value)` on UPDATE.
    fn check(
        &mut self,
        field: &str,
        new: Option<&str>,
        old: Option<Option<&str>>,
        check: impl FnOnce(&Self, &str) -> Result<Vec<String>, (String, &'static str)>,
    ) {
        let Some(value) = new else {
            return;
        };
        match check(self, value) {
            Ok(warnings) => self
                .verdict
                .warnings
                .extend(warnings.into_iter().map(|w| format!("{field}: {w}"))),
            Err((reason, _)) if old == Some(Some(value)) => self.verdict.warnings.push(format!(
                "{field}: {reason} (kept because it did not change; notifications to it are refused at send time)"
            )),
            Err((reason, class)) => self.deny(field, reason, class),
        }
    }

    /// Webhook URLs: an empty string means "not configured", like an absent field.
    fn url_field(&mut self, field: &str, new: Option<&str>, old: Option<Option<&str>>) {
        fn present(v: Option<&str>) -> Option<&str> {
            v.filter(|s| !s.is_empty())
        }
        self.check(field, present(new), old.map(present), |c, u| c.url(u));
    }

    fn url(&self, raw: &str) -> Result<Vec<String>, (String, &'static str)> {
        self.policy
            .check(raw)
            .map(|c| c.warnings().to_vec())
            .map_err(|v| (v.to_string(), violation_class(&v)))
    }

    fn endpoint(&self, raw: &str) -> Result<Vec<String>, (String, &'static str)> {
        // The policy words its reasons for webhook URLs; the endpoint is where the backup Job
        // reads from.
        let checked = self.url(raw).map_err(|(reason, class)| {
            (
                reason.replace(
                    "notifications cannot be sent there",
                    "the backup Job may not connect there",
                ),
                class,
            )
        })?;
        if !raw.starts_with("https://") {
            return Err(("must be an https:// URL".into(), "scheme"));
        }
        Ok(checked)
    }

    fn common(&mut self, new: &CommonSpec, old: Option<&CommonSpec>) {
        let hooks = |c: &CommonSpec| c.webhooks.clone().unwrap_or_default();
        let (new_hooks, old_hooks) = (hooks(new), old.map(hooks));
        self.url_field(
            "spec.webhooks.success",
            new_hooks.success.as_deref(),
            old_hooks.as_ref().map(|h| h.success.as_deref()),
        );
        self.url_field(
            "spec.webhooks.failure",
            new_hooks.failure.as_deref(),
            old_hooks.as_ref().map(|h| h.failure.as_deref()),
        );
        self.check(
            "spec.schedule",
            Some(&new.schedule),
            old.map(|o| Some(o.schedule.as_str())),
            |_, s| {
                check_schedule(s)
                    .map(|()| vec![])
                    .map_err(|e| (e, "schedule"))
            },
        );
        self.check(
            "spec.timeZone",
            new.time_zone.as_deref(),
            old.map(|o| o.time_zone.as_deref()),
            |_, tz| {
                check_time_zone(tz)
                    .map(|()| vec![])
                    .map_err(|e| (e, "time_zone"))
            },
        );
    }

    fn cron_job(&mut self, obj: &DynamicObject, old: Option<&DynamicObject>) {
        let labelled = |o: &DynamicObject| {
            o.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(contract::NOTIFY_LABEL))
                .is_some_and(|v| v == "true")
        };
        if !labelled(obj) {
            return;
        }
        let empty = BTreeMap::new();
        let ann = obj.metadata.annotations.as_ref().unwrap_or(&empty);
        let old_ann = old.map(|o| o.metadata.annotations.clone().unwrap_or_default());
        let path = |key: &str| format!("metadata.annotations[{key}]");
        for key in [annotations::WEBHOOK_SUCCESS, annotations::WEBHOOK_FAILURE] {
            self.url_field(
                &path(key),
                ann.get(key).map(String::as_str),
                old_ann.as_ref().map(|a| a.get(key).map(String::as_str)),
            );
        }
        let has_url = [annotations::WEBHOOK_SUCCESS, annotations::WEBHOOK_FAILURE]
            .iter()
            .any(|k| ann.get(*k).is_some_and(|v| !v.is_empty()));
        if !has_url {
            return;
        }
        match ann.get(annotations::NOTIFY_KIND) {
            None => self.deny(
                &path(annotations::NOTIFY_KIND),
                "is required when a webhook URL is set (VolumeBackup or S3Backup)",
                "annotation",
            ),
            Some(kind) => {
                if let Err(e) = kind.parse::<BackupKind>() {
                    self.deny(&path(annotations::NOTIFY_KIND), e, "annotation");
                }
            }
        }
        for key in [annotations::NOTIFY_HOST, annotations::NOTIFY_VOLUME] {
            if ann.get(key).is_none_or(|v| v.is_empty()) {
                self.deny(
                    &path(key),
                    "is required when a webhook URL is set (it goes into the payload)",
                    "annotation",
                );
            }
        }
    }
}

/// Short, bounded label for the denial metric.
pub fn violation_class(v: &Violation) -> &'static str {
    match v {
        Violation::TooLong(_) => "too_long",
        Violation::WhitespaceOrControl | Violation::Backslash | Violation::Unparsable(_) => {
            "unparsable"
        }
        Violation::Scheme(_) | Violation::InsecureScheme => "scheme",
        Violation::NoHost => "no_host",
        Violation::Userinfo => "userinfo",
        Violation::Fragment => "fragment",
        Violation::Blocked { .. } | Violation::ResolvesToBlocked { .. } => "blocked_address",
        Violation::PrivateDenied { .. } => "private_network",
        Violation::Denied { .. } => "denylist",
    }
}

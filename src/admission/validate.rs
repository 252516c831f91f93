//! `/validate`: VolumeBackup and S3Backup specs, and the notification annotations of labelled
//! CronJobs. Pure functions of the request: no API calls on the admission path.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::admission::Operation;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::value::RawValue;

use super::review::ValidateRequest;
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

pub fn target(req: &ValidateRequest) -> Target {
    match (req.kind.group.as_str(), req.kind.kind.as_str()) {
        (contract::GROUP, "VolumeBackup") => Target::VolumeBackup,
        (contract::GROUP, "S3Backup") => Target::S3Backup,
        ("batch", "CronJob") => Target::CronJob,
        _ => Target::Unknown,
    }
}

/// What the checks read of an object: the metadata below and the spec as `S` (`IgnoredAny` when
/// only the metadata matters). serde skips everything else without building it.
#[derive(Deserialize)]
struct ObjectView<S> {
    #[serde(default)]
    metadata: MetaView,
    spec: Option<S>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaView {
    deletion_timestamp: Option<IgnoredAny>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

/// Decodes an object's view, or names the field that does not fit and says why, in one line.
fn view<S: DeserializeOwned>(raw: &RawValue) -> Result<ObjectView<S>, (String, String)> {
    // Tracking the path costs a quarter of the decode, so it is done only to explain a failure.
    serde_json::from_str(raw.get()).map_err(|_| {
        let mut de = serde_json::Deserializer::from_str(raw.get());
        match serde_path_to_error::deserialize::<_, ObjectView<S>>(&mut de) {
            Ok(_) => ("object".to_owned(), "does not decode".to_owned()),
            Err(e) => {
                let field = match e.path().to_string() {
                    root if root == "." => "object".to_owned(),
                    path => path,
                };
                // serde_json appends the position within the object's JSON, which is nothing
                // the user wrote (the apiserver re-encodes the object); the path says where.
                let reason = e.into_inner().to_string();
                let reason = reason
                    .rsplit_once(" at line ")
                    .map_or(reason.as_str(), |(r, _)| r)
                    .to_owned();
                (field, reason)
            }
        }
    })
}

/// Whether the object carries a `deletionTimestamp`, read without the rest of it.
fn being_deleted(raw: &RawValue) -> bool {
    serde_json::from_str::<ObjectView<IgnoredAny>>(raw.get())
        .is_ok_and(|o| o.metadata.deletion_timestamp.is_some())
}

pub fn validate(req: &ValidateRequest, policy: &UrlPolicy) -> Verdict {
    let mut v = Checker {
        policy,
        verdict: Verdict::default(),
    };
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return v.verdict;
    }
    let Some(obj) = req.object.as_deref() else {
        v.deny("object", "the request carries no object", "malformed");
        return v.verdict;
    };
    let old = req.old_object.as_deref();
    match target(req) {
        Target::VolumeBackup => {
            if let Some((new, old)) = v.spec::<VolumeBackupSpec>(obj, old) {
                v.common(&new.common, old.as_ref().map(|o| &o.common));
            }
        }
        Target::S3Backup => {
            if let Some((new, old)) = v.spec::<S3BackupSpec>(obj, old) {
                v.check(
                    "spec.source.endpoint",
                    Some(&new.source.endpoint),
                    old.as_ref().map(|o| Some(o.source.endpoint.as_str())),
                    None,
                    |c, e| c.endpoint(e),
                );
                v.common(&new.common, old.as_ref().map(|o| &o.common));
            }
        }
        Target::CronJob => {
            if let Some((new, old)) = v.decode::<IgnoredAny>(obj, old) {
                v.cron_job(&new.metadata, old.as_ref().map(|o| &o.metadata));
            }
        }
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

    /// The new object's view and, on UPDATE, the old one's when it decodes. `None` (nothing to
    /// check) when the new one is malformed, which is denied, or is being deleted: an object on
    /// its way out is never blocked (finalizer removal is an UPDATE).
    fn decode<S: DeserializeOwned>(
        &mut self,
        obj: &RawValue,
        old: Option<&RawValue>,
    ) -> Option<(ObjectView<S>, Option<ObjectView<S>>)> {
        let new = match view::<S>(obj) {
            Ok(new) => new,
            // A spec that no longer decodes (a stored object from an older schema, say) must
            // not block the finalizer's removal either.
            Err(_) if being_deleted(obj) => return None,
            Err((field, reason)) => {
                self.deny(&field, reason, "malformed");
                return None;
            }
        };
        if new.metadata.deletion_timestamp.is_some() {
            return None;
        }
        // Only for ratcheting: an old object that does not decode is simply not compared.
        Some((new, old.and_then(|o| serde_json::from_str(o.get()).ok())))
    }

    /// The new spec and the old one, as [`Self::decode`] has them; a missing spec is denied.
    fn spec<S: DeserializeOwned>(
        &mut self,
        obj: &RawValue,
        old: Option<&RawValue>,
    ) -> Option<(S, Option<S>)> {
        let (new, old) = self.decode::<S>(obj, old)?;
        let Some(spec) = new.spec else {
            self.deny("spec", "is required", "malformed");
            return None;
        };
        Some((spec, old.and_then(|o| o.spec)))
    }

    /// Runs `check` on a field. On UPDATE, a value that did not change is ratcheted: its failure
    /// becomes a warning, so tightening the policy never blocks unrelated edits (or deletion).
    /// `old` is `None` on CREATE and `Some(previous value)` on UPDATE; `if_kept` says what a kept
    /// bad value leads to, where that is more than nothing.
    fn check(
        &mut self,
        field: &str,
        new: Option<&str>,
        old: Option<Option<&str>>,
        if_kept: Option<&str>,
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
            Err((reason, _)) if old == Some(Some(value)) => self.kept(field, &reason, if_kept),
            Err((reason, class)) => self.deny(field, reason, class),
        }
    }

    /// The warning that replaces a denial of a value that did not change.
    fn kept(&mut self, field: &str, reason: &str, if_kept: Option<&str>) {
        let consequence = if_kept.map(|k| format!("; {k}")).unwrap_or_default();
        self.verdict.warnings.push(format!(
            "{field}: {reason} (kept because it did not change{consequence})"
        ));
    }

    /// Webhook URLs: an empty string means "not configured", like an absent field.
    fn url_field(&mut self, field: &str, new: Option<&str>, old: Option<Option<&str>>) {
        fn present(v: Option<&str>) -> Option<&str> {
            v.filter(|s| !s.is_empty())
        }
        self.check(
            field,
            present(new),
            old.map(present),
            Some("notifications to it are refused at send time"),
            |c, u| c.url(u),
        );
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
        let checked = self.policy.check(raw).map_err(|v| {
            (
                v.to_string().replace(
                    "notifications cannot be sent there",
                    "the backup Job may not connect there",
                ),
                violation_class(&v),
            )
        })?;
        if !checked.is_https() {
            return Err(("must be an https:// URL".into(), "scheme"));
        }
        Ok(checked.warnings().to_vec())
    }

    /// Requests and limits that are no quantities, negative, or a request above its limit: the
    /// apiserver would refuse the CronJob, and the backups with it, long after the resource was
    /// accepted.
    fn resources(&mut self, new: &CommonSpec, old: Option<&CommonSpec>) {
        const BACKUP_CONTAINER_RESOURCES: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];
        type List<'a> = Option<&'a BTreeMap<String, Quantity>>;
        fn lists(c: &CommonSpec) -> [(&'static str, List<'_>); 2] {
            let r = c.resources.as_ref();
            [
                ("requests", r.and_then(|r| r.requests.as_ref())),
                ("limits", r.and_then(|r| r.limits.as_ref())),
            ]
        }
        let old_lists = old.map(lists);
        for (i, (list, values)) in lists(new).into_iter().enumerate() {
            for (name, value) in values.into_iter().flatten() {
                let previous = old_lists
                    .as_ref()
                    .map(|o| o[i].1.and_then(|l| l.get(name)).map(|q| q.0.as_str()));
                self.check(
                    &format!("spec.resources.{list}[{}]", resource_key(name)),
                    Some(&value.0),
                    previous,
                    None,
                    |_, q| {
                        // The generated pod has no resourceClaims, and the apiserver wants more
                        // than a quantity for extended resources and huge pages.
                        if !BACKUP_CONTAINER_RESOURCES.contains(&name.as_str()) {
                            return Err((
                                format!("{:?} is not a resource the backup container takes: cpu, memory or ephemeral-storage", crate::text::truncated(name, crate::text::QUOTE_MAX)),
                                "resource_name",
                            ));
                        }
                        crate::quantity::resource(q)
                            .map(|_| vec![])
                            .map_err(|e| (e, "quantity"))
                    },
                );
            }
        }
        let claims = |c: &CommonSpec| {
            c.resources
                .as_ref()
                .and_then(|r| r.claims.as_ref())
                .is_some_and(|c| !c.is_empty())
        };
        if claims(new) && !old.is_some_and(claims) {
            self.deny(
                "spec.resources.claims",
                "the backup pod has no resourceClaims to refer to; the apiserver would refuse the CronJob",
                "resource_name",
            );
        }
        // A request above its limit: the apiserver refuses the whole pod template.
        let [(_, requests), (_, limits)] = lists(new);
        let old_pair = |name: &str| {
            old_lists.as_ref().map(|[(_, r), (_, l)]| {
                (
                    r.and_then(|r| r.get(name)).map(|q| q.0.clone()),
                    l.and_then(|l| l.get(name)).map(|q| q.0.clone()),
                )
            })
        };
        for (name, request) in requests.into_iter().flatten() {
            let Some(limit) = limits.and_then(|l| l.get(name)) else {
                continue;
            };
            let (Ok(r), Ok(l)) = (
                crate::quantity::parse(&request.0),
                crate::quantity::parse(&limit.0),
            ) else {
                continue;
            };
            if !r.in_resource_list().exceeds(&l.in_resource_list()) {
                continue;
            }
            let key = resource_key(name);
            let field = format!("spec.resources.requests[{key}]");
            let reason = format!(
                "{:?} is more than its limit {:?} (spec.resources.limits[{key}]); the apiserver would refuse the CronJob",
                request.0, limit.0
            );
            if old_pair(name) == Some((Some(request.0.clone()), Some(limit.0.clone()))) {
                self.kept(&field, &reason, None);
            } else {
                self.deny(&field, reason, "quantity");
            }
        }
    }

    fn common(&mut self, new: &CommonSpec, old: Option<&CommonSpec>) {
        self.resources(new, old);
        // restic takes a path as a local repository, and the backup pod mounts nothing there:
        // each run would make a repository in the container's own filesystem, report success,
        // and lose it with the pod.
        let url = &new.repository.url;
        if is_local_repository(url) && old.is_none_or(|o| o.repository.url != *url) {
            self.verdict.warnings.push(format!(
                "spec.repository.url: {url:?} is a local path inside the backup pod, which is deleted after every run, so no backup is kept; use a remote repository (s3:, rest:, b2:, azure:, gs:, swift:, rclone:)"
            ));
        }
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
            None,
            |_, s| {
                check_schedule(s)
                    .map(|()| vec![])
                    .map_err(|e| (e, "schedule"))
            },
        );
        self.check(
            "spec.image",
            new.image.as_deref(),
            old.map(|o| o.image.as_deref()),
            None,
            |_, image| {
                crate::names::image(image)
                    .map(|_| vec![])
                    .map_err(|e| (e, "image"))
            },
        );
        self.check(
            "spec.timeZone",
            new.time_zone.as_deref(),
            old.map(|o| o.time_zone.as_deref()),
            None,
            |_, tz| {
                check_time_zone(tz)
                    .map(|()| vec![])
                    .map_err(|e| (e, "time_zone"))
            },
        );
    }

    fn cron_job(&mut self, meta: &MetaView, old: Option<&MetaView>) {
        fn labelled(m: &MetaView) -> bool {
            m.labels
                .as_ref()
                .and_then(|l| l.get(contract::NOTIFY_LABEL))
                .is_some_and(|v| v == "true")
        }
        if !labelled(meta) {
            return;
        }
        // An unlabelled CronJob's annotations were never checked, so adding the label does not
        // keep a bad value "because it did not change": it is checked as on a create.
        let old = old.filter(|m| labelled(m));
        // Only what `annotations::VALIDATED_KEYS` names: the webhook configuration's matchConditions
        // skip UPDATEs that change nothing else, so reading more here would go unchecked there.
        fn validated(m: &MetaView) -> BTreeMap<&'static str, &str> {
            let all = m.annotations.as_ref();
            annotations::VALIDATED_KEYS
                .iter()
                .filter_map(|k| Some((*k, all?.get(*k)?.as_str())))
                .collect()
        }
        let ann = validated(meta);
        let old_ann = old.map(validated);
        let path = |key: &str| format!("metadata.annotations[{key}]");
        for key in [annotations::WEBHOOK_SUCCESS, annotations::WEBHOOK_FAILURE] {
            self.url_field(
                &path(key),
                ann.get(key).copied(),
                old_ann.as_ref().map(|a| a.get(key).copied()),
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
            if ann.get(key).is_none_or(|v| contract::is_blank(v)) {
                self.deny(
                    &path(key),
                    "is required when a webhook URL is set (it goes into the payload)",
                    "annotation",
                );
            }
        }
    }
}

/// Whether restic reads `url` as a local repository: `local:` or no `backend:` prefix at all.
fn is_local_repository(url: &str) -> bool {
    url.starts_with("local:")
        || !url.split_once(':').is_some_and(|(backend, _)| {
            backend.starts_with(|c: char| c.is_ascii_lowercase())
                && backend
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// A resource name as part of a field path: the apiserver does not check the keys of a CRD's
/// map, so a forged key with a line break must not start a line of its own in the answer.
fn resource_key(name: &str) -> String {
    crate::text::escape_controls(&crate::text::truncated(name, crate::text::QUOTE_MAX))
}

/// Short, bounded label for the denial metric.
pub fn violation_class(v: &Violation) -> &'static str {
    match v {
        Violation::TooLong(_) => "too_long",
        Violation::WhitespaceOrControl
        | Violation::Backslash
        | Violation::Unparsable(_)
        | Violation::Invisible(_) => "unparsable",
        Violation::Scheme(_) | Violation::InsecureScheme => "scheme",
        Violation::NoHost => "no_host",
        Violation::Userinfo => "userinfo",
        Violation::Fragment => "fragment",
        Violation::Blocked { .. } | Violation::ResolvesToBlocked { .. } => "blocked_address",
        Violation::PrivateDenied { .. } => "private_network",
        Violation::Denied { .. } => "denylist",
    }
}

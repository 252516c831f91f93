//! `/validate` decisions on decoded reviews: field paths, one line per bad field, ratcheting of
//! unchanged values, S3 endpoints, schedules and zones, labelled CronJobs.

mod common;

use backup_operator::admission::{decode_validate_review, validate::validate};
use backup_operator::url_policy::UrlPolicy;
use common::{review, volume_backup};
use serde_json::{Value, json};

fn verdict(review: Value, policy: &UrlPolicy) -> (Vec<String>, Vec<String>) {
    let req = decode_validate_review(&serde_json::to_vec(&review).unwrap()).unwrap();
    let v = validate(&req, policy);
    (
        v.denials.iter().map(ToString::to_string).collect(),
        v.warnings,
    )
}

fn vb(obj: Value) -> Value {
    review("backups.k8s.bnerd.com", "VolumeBackup", "CREATE", obj, None)
}

fn vb_update(new: Value, old: Value) -> Value {
    review(
        "backups.k8s.bnerd.com",
        "VolumeBackup",
        "UPDATE",
        new,
        Some(old),
    )
}

#[test]
fn every_bad_field_is_named_on_its_own_line() {
    let mut obj = volume_backup(
        Some("https://user:pw@hooks.example.com/"),
        Some("http://169.254.169.254/latest"),
    );
    obj["spec"]["schedule"] = json!("61 * * * *");
    obj["spec"]["timeZone"] = json!("Mars/Olympus");
    let (denials, _) = verdict(vb(obj), &UrlPolicy::default());
    assert_eq!(
        denials,
        [
            "spec.webhooks.success: contains userinfo (user:password@), which is not allowed",
            "spec.webhooks.failure: host 169.254.169.254 is link-local (cloud metadata); notifications cannot be sent there",
            "spec.schedule: minute field \"61\": 61 is out of range 0-59",
            "spec.timeZone: \"Mars/Olympus\" is not a known IANA time zone (for example Europe/Berlin or UTC)",
        ]
    );
}

#[test]
fn seed_urls_pass_and_empty_or_absent_urls_mean_none() {
    for (s, f) in [
        (
            Some("https://hooks.example.com/backup-success"),
            Some("https://hooks.example.com/backup-failure"),
        ),
        (Some("https://hc-ping.com/your-check-uuid"), None),
        (None, Some("https://your-relay.example.com/backup-alert")),
        (Some(""), Some("")),
        (None, None),
    ] {
        let (denials, warnings) = verdict(vb(volume_backup(s, f)), &UrlPolicy::default());
        assert!(
            denials.is_empty() && warnings.is_empty(),
            "{s:?} {f:?}: {denials:?} {warnings:?}"
        );
    }
}

#[test]
fn http_warns_and_require_https_denies() {
    let obj = volume_backup(Some("http://hooks.example.com/x"), None);
    let (denials, warnings) = verdict(vb(obj.clone()), &UrlPolicy::default());
    assert!(denials.is_empty());
    assert_eq!(
        warnings,
        [
            "spec.webhooks.success: uses http://: the payload and any token in the URL travel unencrypted"
        ]
    );
    let strict = UrlPolicy {
        require_https: true,
        ..Default::default()
    };
    let (denials, _) = verdict(vb(obj), &strict);
    assert_eq!(
        denials,
        ["spec.webhooks.success: uses http://, and https:// is required (--require-https)"]
    );
}

#[test]
fn unchanged_bad_values_are_ratcheted_but_changed_ones_are_denied() {
    let strict = UrlPolicy {
        require_https: true,
        ..Default::default()
    };
    let old = volume_backup(Some("http://hooks.example.com/x"), None);
    let mut new = old.clone();
    new["spec"]["schedule"] = json!("0 4 * * *");
    let (denials, warnings) = verdict(vb_update(new, old.clone()), &strict);
    assert!(denials.is_empty(), "{denials:?}");
    assert!(
        warnings[0].contains("kept because it did not change"),
        "{warnings:?}"
    );

    let good = volume_backup(Some("https://hooks.example.com/x"), None);
    let bad = volume_backup(Some("https://127.0.0.1/x"), None);
    let (denials, _) = verdict(vb_update(bad, good), &strict);
    assert_eq!(
        denials,
        ["spec.webhooks.success: host 127.0.0.1 is loopback; notifications cannot be sent there"]
    );
}

#[test]
fn objects_being_deleted_are_never_blocked() {
    // A change that would be denied (not kept as unchanged) goes through once the object is
    // being deleted: finalizers must be able to finish.
    let old = volume_backup(Some("https://hooks.example.com/x"), None);
    let mut obj = volume_backup(Some("ftp://x/"), None);
    let (denials, _) = verdict(vb_update(obj.clone(), old.clone()), &UrlPolicy::default());
    assert_eq!(denials.len(), 1, "the control case is denied");
    obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let (denials, warnings) = verdict(vb_update(obj, old), &UrlPolicy::default());
    assert!(
        denials.is_empty() && warnings.is_empty(),
        "{denials:?} {warnings:?}"
    );
    let mut malformed = volume_backup(None, None);
    malformed["spec"]["retention"] = json!({"keepLast": "three"});
    let (denials, _) = verdict(vb(malformed.clone()), &UrlPolicy::default());
    assert_eq!(denials.len(), 1, "a malformed spec is denied");
    malformed["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let (denials, _) = verdict(vb(malformed), &UrlPolicy::default());
    assert!(denials.is_empty(), "{denials:?}");
}

#[test]
fn a_malformed_object_is_denied_naming_the_field() {
    let mut obj = volume_backup(Some("https://hooks.example.com/ok"), None);
    obj["metadata"]["labels"] = json!({"app": 1});
    let (denials, _) = verdict(vb(obj.clone()), &UrlPolicy::default());
    assert_eq!(
        denials,
        ["metadata.labels.app: invalid type: integer `1`, expected a string"]
    );
    obj["metadata"]["labels"] = json!({});
    // The spec's common fields are flattened into it, which hides the path below `spec`.
    obj["spec"]["retention"] = json!({"keepLast": "three"});
    let (denials, _) = verdict(vb(obj.clone()), &UrlPolicy::default());
    assert_eq!(
        denials,
        [r#"spec: invalid type: string "three", expected i32"#]
    );
    obj.as_object_mut().unwrap().remove("spec");
    let (denials, _) = verdict(vb(obj), &UrlPolicy::default());
    assert_eq!(denials, ["spec: is required"]);
}

#[test]
fn s3_endpoint_must_be_https_and_pass_the_policy() {
    let s3 = |endpoint: &str| {
        json!({
            "apiVersion": "backups.k8s.bnerd.com/v1", "kind": "S3Backup",
            "metadata": {"name": "bucket-backup", "namespace": "default"},
            "spec": {
                "source": {"endpoint": endpoint, "bucket": "my-bucket", "credentialsSecretRef": {"name": "s3"}},
                "schedule": "@daily",
                "repository": {"url": "/repo", "passwordSecretRef": {"name": "restic", "key": "password"}},
                "webhooks": {"failure": "gopher://x/"}
            }
        })
    };
    let (denials, _) = verdict(
        review(
            "backups.k8s.bnerd.com",
            "S3Backup",
            "CREATE",
            s3("https://s3.example.com"),
            None,
        ),
        &UrlPolicy::default(),
    );
    assert_eq!(
        denials,
        ["spec.webhooks.failure: scheme \"gopher\" is not allowed; use https:// or http://"]
    );
    let (denials, _) = verdict(
        review(
            "backups.k8s.bnerd.com",
            "S3Backup",
            "CREATE",
            s3("http://s3.example.com"),
            None,
        ),
        &UrlPolicy::default(),
    );
    assert_eq!(denials[0], "spec.source.endpoint: must be an https:// URL");
    let (denials, _) = verdict(
        review(
            "backups.k8s.bnerd.com",
            "S3Backup",
            "CREATE",
            s3("https://[::1]:9000"),
            None,
        ),
        &UrlPolicy::default(),
    );
    assert_eq!(
        denials[0],
        "spec.source.endpoint: host ::1 is loopback; the backup Job may not connect there"
    );
    // The scheme is case-insensitive, as for every URL.
    let (denials, _) = verdict(
        review(
            "backups.k8s.bnerd.com",
            "S3Backup",
            "CREATE",
            s3("HTTPS://s3.example.com"),
            None,
        ),
        &UrlPolicy::default(),
    );
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert!(
        denials[0].starts_with("spec.webhooks.failure:"),
        "{denials:?}"
    );
}

#[test]
fn labelled_cron_jobs_have_their_annotations_checked() {
    let cj = |labels: Value, ann: Value| {
        review(
            "batch",
            "CronJob",
            "CREATE",
            json!({
                "apiVersion": "batch/v1", "kind": "CronJob",
                "metadata": {"name": "c", "namespace": "default", "labels": labels, "annotations": ann},
                "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}
            }),
            None,
        )
    };
    let label = json!({"backups.k8s.bnerd.com/notify": "true"});
    let bad = json!({"backups.k8s.bnerd.com/webhook-failure": "https://0x7f.1/hook", "backups.k8s.bnerd.com/notify-kind": "Pod"});
    let (denials, _) = verdict(cj(label.clone(), bad.clone()), &UrlPolicy::default());
    assert_eq!(
        denials,
        [
            "metadata.annotations[backups.k8s.bnerd.com/webhook-failure]: host 127.0.0.1 is loopback; notifications cannot be sent there",
            "metadata.annotations[backups.k8s.bnerd.com/notify-kind]: unknown kind \"Pod\": expected VolumeBackup or S3Backup",
            "metadata.annotations[backups.k8s.bnerd.com/notify-host]: is required when a webhook URL is set (it goes into the payload)",
            "metadata.annotations[backups.k8s.bnerd.com/notify-volume]: is required when a webhook URL is set (it goes into the payload)",
        ]
    );
    let (denials, _) = verdict(cj(json!({}), bad), &UrlPolicy::default());
    assert!(denials.is_empty(), "unlabelled CronJobs are not ours");

    // Blank host and volume are what the notifier takes as unset: it would send nothing.
    let blank = json!({
        "backups.k8s.bnerd.com/webhook-success": "https://hooks.example.com/ok",
        "backups.k8s.bnerd.com/notify-kind": "VolumeBackup",
        "backups.k8s.bnerd.com/notify-host": " ",
        "backups.k8s.bnerd.com/notify-volume": "\t",
    });
    let (denials, _) = verdict(cj(label.clone(), blank), &UrlPolicy::default());
    assert_eq!(
        denials,
        [
            "metadata.annotations[backups.k8s.bnerd.com/notify-host]: is required when a webhook URL is set (it goes into the payload)",
            "metadata.annotations[backups.k8s.bnerd.com/notify-volume]: is required when a webhook URL is set (it goes into the payload)",
        ]
    );
}

/// A bad URL on an unlabelled CronJob was never checked; adding the label checks it as on a
/// create rather than keeping it as unchanged. Unchanged on a labelled one, it is kept.
#[test]
fn adding_the_label_checks_annotations_that_were_never_checked() {
    let object = |labels: Value| {
        json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "c", "namespace": "default", "labels": labels, "annotations": {
                "backups.k8s.bnerd.com/webhook-success": "http://169.254.169.254/latest",
                "backups.k8s.bnerd.com/notify-kind": "VolumeBackup",
                "backups.k8s.bnerd.com/notify-host": "ns-data",
                "backups.k8s.bnerd.com/notify-volume": "data",
            }},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}
        })
    };
    let label = json!({"backups.k8s.bnerd.com/notify": "true"});
    let update = |old_labels: Value| {
        review(
            "batch",
            "CronJob",
            "UPDATE",
            object(label.clone()),
            Some(object(old_labels)),
        )
    };
    let (denials, warnings) = verdict(update(json!({})), &UrlPolicy::default());
    assert_eq!(
        denials,
        [
            "metadata.annotations[backups.k8s.bnerd.com/webhook-success]: host 169.254.169.254 is link-local (cloud metadata); notifications cannot be sent there"
        ],
        "{warnings:?}"
    );
    let (denials, warnings) = verdict(update(label.clone()), &UrlPolicy::default());
    assert!(denials.is_empty(), "{denials:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("kept because it did not change")),
        "{warnings:?}"
    );
}

#[test]
fn requests_and_limits_must_be_quantities_the_apiserver_takes() {
    let mut obj = volume_backup(None, None);
    obj["spec"]["resources"] = json!({
        "requests": {"memory": "16MB", "cpu": "0.5", "ephemeral-storage": "1537Mi"},
        "limits": {"memory": "-1Gi", "ephemeral-storage": "1.5Gi", "cpu": "500m"},
    });
    let (denials, _) = verdict(vb(obj.clone()), &UrlPolicy::default());
    assert_eq!(
        denials,
        [
            "spec.resources.requests[memory]: \"16MB\" is not a quantity: unknown suffix \"MB\" (binary Ki, Mi, Gi, Ti, Pi, Ei; decimal n, u, m, k, M, G, T, P, E; or an exponent such as e3)",
            "spec.resources.limits[memory]: \"-1Gi\" is negative; requests and limits are at least 0",
            "spec.resources.requests[ephemeral-storage]: \"1537Mi\" is more than its limit \"1.5Gi\" (spec.resources.limits[ephemeral-storage]); the apiserver would refuse the CronJob",
        ]
    );

    // A bad value stored before this check existed does not block other edits.
    let mut new = obj.clone();
    new["spec"]["schedule"] = json!("0 4 * * *");
    let (denials, warnings) = verdict(vb_update(new, obj), &UrlPolicy::default());
    assert!(denials.is_empty(), "{denials:?}");
    assert_eq!(
        warnings[0],
        "spec.resources.requests[memory]: \"16MB\" is not a quantity: unknown suffix \"MB\" (binary Ki, Mi, Gi, Ti, Pi, Ei; decimal n, u, m, k, M, G, T, P, E; or an exponent such as e3) (kept because it did not change)"
    );
}

/// Names the apiserver refuses on the backup container (or wants more than a quantity for),
/// and claims the pod has nothing to back, are denied at admission, not found on the CronJob.
#[test]
fn resources_other_than_cpu_memory_and_ephemeral_storage_are_denied() {
    let mut obj = volume_backup(None, None);
    obj["spec"]["resources"] = json!({
        "requests": {"storage": "1Gi", "cpu": "100m"},
        "limits": {"nvidia.com/gpu": "1"},
        "claims": [{"name": "x"}],
    });
    let (denials, _) = verdict(vb(obj), &UrlPolicy::default());
    assert_eq!(
        denials,
        [
            "spec.resources.requests[storage]: \"storage\" is not a resource the backup container takes: cpu, memory or ephemeral-storage",
            "spec.resources.limits[nvidia.com/gpu]: \"nvidia.com/gpu\" is not a resource the backup container takes: cpu, memory or ephemeral-storage",
            "spec.resources.claims: the backup pod has no resourceClaims to refer to; the apiserver would refuse the CronJob",
        ]
    );
}

/// The apiserver does not check a CRD map's keys: a forged resource name with a line break
/// must not add a line (a forged denial) to the answer.
#[test]
fn a_resource_name_with_a_line_break_stays_on_its_line() {
    let mut obj = volume_backup(None, None);
    let forged = format!("cpu\nspec.webhooks.success: forged{}", "x".repeat(1000));
    obj["spec"]["resources"] = json!({"requests": {forged: "1"}});
    let (denials, _) = verdict(vb(obj), &UrlPolicy::default());
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert!(!denials[0].contains('\n'), "{}", denials[0]);
    assert!(
        denials[0].starts_with("spec.resources.requests[cpu\\nspec.webhooks.success: forged"),
        "{}",
        denials[0]
    );
    assert!(denials[0].len() < 700, "{} bytes", denials[0].len());
}

/// A path repository lives in the backup pod, which is deleted after each run: admitted (api.md
/// allows it) with a warning that nothing is kept; remote backends are not warned about.
#[test]
fn a_local_repository_is_warned_about() {
    for (url, warned) in [
        ("/repo", true),
        ("local:/srv/restic", true),
        ("repo", true),
        ("s3:https://s3.example.com/b", false),
        ("b2:bucket:path", false),
        ("rest:https://user@host:8000/", false),
        ("rclone:remote:path", false),
    ] {
        let mut obj = volume_backup(None, None);
        obj["spec"]["repository"]["url"] = json!(url);
        let (denials, warnings) = verdict(vb(obj), &UrlPolicy::default());
        assert!(denials.is_empty(), "{url}: {denials:?}");
        assert_eq!(
            warnings
                .iter()
                .any(|w| w.starts_with("spec.repository.url:") && w.contains("no backup is kept")),
            warned,
            "{url}: {warnings:?}"
        );
    }
}

#[test]
fn descriptors_are_admitted_only_as_the_cron_job_api_spells_them() {
    for ok in ["@daily", "@hourly", "@midnight", " 0 3 * * * "] {
        let mut obj = volume_backup(None, None);
        obj["spec"]["schedule"] = json!(ok);
        let (denials, _) = verdict(vb(obj), &UrlPolicy::default());
        assert!(denials.is_empty(), "{ok:?}: {denials:?}");
    }
    for bad in ["@Daily", "@DAILY", " @daily", "@daily "] {
        let mut obj = volume_backup(None, None);
        obj["spec"]["schedule"] = json!(bad);
        let (denials, _) = verdict(vb(obj), &UrlPolicy::default());
        assert_eq!(
            denials,
            [format!(
                "spec.schedule: descriptor {bad:?} must be written exactly \"@daily\": lower case, without spaces around it"
            )]
        );
    }
}

#[test]
fn a_host_with_extra_trailing_dots_is_denied_as_the_address_it_reaches() {
    let obj = volume_backup(
        Some("http://127.0.0.1../hook"),
        Some("http://169.254.169.254../latest"),
    );
    let (denials, _) = verdict(vb(obj), &UrlPolicy::default());
    assert_eq!(
        denials,
        [
            "spec.webhooks.success: host 127.0.0.1 is loopback; notifications cannot be sent there",
            "spec.webhooks.failure: host 169.254.169.254 is link-local (cloud metadata); notifications cannot be sent there",
        ]
    );
}

/// An image with whitespace is stored by the CronJob API and refused only when a Job creates
/// the pod, so every backup would fail to start: denied, unless it was already there.
#[test]
fn an_image_with_whitespace_is_denied_naming_the_field() {
    let mut obj = volume_backup(Some("https://hooks.example.com/ok"), None);
    obj["spec"]["image"] = json!("restic/restic:0.17.3\n");
    let (denials, _) = verdict(vb(obj.clone()), &UrlPolicy::default());
    assert_eq!(
        denials,
        [
            "spec.image: \"restic/restic:0.17.3\\n\" is not an image reference: it is empty or holds whitespace or control characters"
        ]
    );
    let (denials, warnings) = verdict(vb_update(obj.clone(), obj.clone()), &UrlPolicy::default());
    assert!(denials.is_empty(), "{denials:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("spec.image: ") && w.contains("kept because it did not change")),
        "{warnings:?}"
    );
    obj["spec"]["image"] = json!("restic/restic:0.17.3");
    let (denials, _) = verdict(vb(obj), &UrlPolicy::default());
    assert!(denials.is_empty(), "{denials:?}");
}

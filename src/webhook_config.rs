//! The ValidatingWebhookConfiguration and MutatingWebhookConfiguration, built in one place and
//! used for `manifests/` (`backup-operator webhooks`), by `tools/dev` (URL mode, on loopback) and
//! by the certificate manager when it writes `caBundle`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

use crate::contract;

/// Name of both configuration objects.
pub const NAME: &str = "backup-operator";

/// Where the apiserver reaches the webhook server.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// In-cluster: a Service on port 443.
    Service { name: String, namespace: String },
    /// Out of cluster (development): a base URL such as `https://127.0.0.1:8443`.
    Url(String),
}

#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub endpoint: Endpoint,
    /// PEM of the CA that signed the serving certificate; `None` leaves it to be injected.
    pub ca_bundle: Option<Vec<u8>>,
    /// Namespaces whose objects are never sent to the webhooks ([`excluded_namespaces`]).
    pub excluded_namespaces: Vec<String>,
}

/// Namespaces whose objects the webhooks never see: the operator's own, so that it can always
/// repair itself, and kube-system. The controller names them in a backup's status.
pub fn excluded_namespaces(operator_namespace: &str) -> Vec<String> {
    vec![operator_namespace.to_owned(), "kube-system".to_owned()]
}

/// `webhooks --url`: the apiserver calls a webhook URL only over https, and refuses one with
/// user info, a query or a fragment. What is written is the URL as parsed and re-serialised
/// (`https:/host` and surrounding spaces are what the checks saw, `https://host/` as Go reads
/// it), not the text given, which Go's parser may read differently or refuse.
pub fn parse_base_url(s: &str) -> Result<String, String> {
    let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    let why = if url.scheme() != "https" {
        "the apiserver calls webhooks only over https"
    } else if url.host_str().is_none_or(str::is_empty) {
        "it has no host"
    } else if !url.username().is_empty() || url.password().is_some() {
        "the apiserver refuses user info in a webhook URL"
    } else if url.query().is_some() || url.fragment().is_some() {
        "the apiserver refuses a query or fragment in a webhook URL"
    } else if !percent_escapes_are_whole(url.path()) {
        "a '%' in its path starts no escape (%XX), which the apiserver refuses"
    } else {
        return Ok(url.as_str().to_owned());
    };
    Err(format!("{s:?} is not a webhook base URL: {why}"))
}

/// Every `%` is followed by two hex digits. WHATWG parsing keeps a stray `%` as it is; Go's
/// `url.Parse` refuses it.
fn percent_escapes_are_whole(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || b.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    })
}

impl WebhookSettings {
    fn client_config(&self, path: &str) -> WebhookClientConfig {
        let ca_bundle = self.ca_bundle.clone().map(ByteString);
        match &self.endpoint {
            Endpoint::Service { name, namespace } => WebhookClientConfig {
                ca_bundle,
                service: Some(ServiceReference {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    path: Some(path.to_owned()),
                    port: Some(443),
                }),
                url: None,
            },
            Endpoint::Url(base) => WebhookClientConfig {
                ca_bundle,
                service: None,
                url: Some(format!("{}{path}", base.trim_end_matches('/'))),
            },
        }
    }

    fn namespace_selector(&self) -> Option<LabelSelector> {
        Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "NotIn".into(),
                values: Some(self.excluded_namespaces.clone()),
            }]),
            match_labels: None,
        })
    }
}

fn notify_label_selector() -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(BTreeMap::from([(
            contract::NOTIFY_LABEL.to_owned(),
            "true".to_owned(),
        )])),
        match_expressions: None,
    })
}

fn rule(group: &str, resources: &[&str]) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec![group.to_owned()]),
        api_versions: Some(vec!["v1".into()]),
        operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        scope: Some("Namespaced".into()),
    }
}

fn meta() -> ObjectMeta {
    ObjectMeta {
        name: Some(NAME.into()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/name".to_owned(),
            "backup-operator".to_owned(),
        )])),
        ..Default::default()
    }
}

fn condition(name: &str, expression: String) -> MatchCondition {
    MatchCondition {
        name: name.to_owned(),
        expression,
    }
}

/// An object on its way out is never checked (`/validate` allows it anyway): removing the last
/// finalizer is an UPDATE, and a fail-closed webhook that is down must not hold a deletion.
fn not_being_deleted() -> MatchCondition {
    condition(
        "not-being-deleted",
        "!has(object.metadata.deletionTimestamp)".to_owned(),
    )
}

/// `/validate` reads nothing of a custom resource but its spec, so an UPDATE that leaves the spec
/// as it was (labels, annotations, finalizers, ownerReferences written by other tools) is not
/// sent: it would be allowed, and while the webhook is down it would be refused.
fn custom_resource_spec_changed() -> MatchCondition {
    condition(
        "spec-changed",
        "request.operation != 'UPDATE' || !has(object.spec) || !has(oldObject.spec) \
         || object.spec != oldObject.spec"
            .to_owned(),
    )
}

/// `/validate` checks a CronJob only while it carries the notify label with value "true", so
/// opting out (removing the label, or setting it to anything else) is never sent: it would be
/// allowed. The objectSelector alone sends it, as it matches the old object too.
fn cron_job_labelled() -> MatchCondition {
    let label = contract::NOTIFY_LABEL;
    condition(
        "labelled",
        format!(
            "has(object.metadata.labels) && '{label}' in object.metadata.labels \
             && object.metadata.labels['{label}'] == 'true'"
        ),
    )
}

/// The CronJob counterpart: `/validate` reads the notify label and the notification
/// annotations, so only an UPDATE that adds, removes or changes one of them is sent.
fn cron_job_notification_changed() -> MatchCondition {
    let changed = |field: &str, keys: &[&str]| {
        let keys = keys
            .iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let has =
            |obj: &str| format!("(has({obj}.metadata.{field}) && k in {obj}.metadata.{field})");
        format!(
            "[{keys}].exists(k, {new} != {old}\n  || {new} && object.metadata.{field}[k] != oldObject.metadata.{field}[k])",
            new = has("object"),
            old = has("oldObject"),
        )
    };
    condition(
        "notification-changed",
        format!(
            "request.operation != 'UPDATE'\n|| {}\n|| {}",
            changed("labels", &[contract::NOTIFY_LABEL]),
            changed("annotations", &contract::annotations::VALIDATED_KEYS),
        ),
    )
}

/// `/validate`: both custom resources (fail closed: a bad URL must never slip in), and labelled
/// CronJobs' notification annotations. `matchConditions` keep out the requests whose answer
/// cannot be a denial, so that an outage blocks only what it must: creates and changes of what
/// is checked.
pub fn validating(s: &WebhookSettings) -> ValidatingWebhookConfiguration {
    let common = |name: &str, rules, object_selector, conditions: Vec<_>| ValidatingWebhook {
        name: name.to_owned(),
        admission_review_versions: vec!["v1".into()],
        side_effects: "None".into(),
        failure_policy: Some("Fail".into()),
        match_policy: Some("Equivalent".into()),
        timeout_seconds: Some(3),
        client_config: s.client_config("/validate"),
        namespace_selector: s.namespace_selector(),
        object_selector,
        rules: Some(rules),
        match_conditions: Some([vec![not_being_deleted()], conditions].concat()),
    };
    ValidatingWebhookConfiguration {
        metadata: meta(),
        webhooks: Some(vec![
            common(
                "backups.validate.backups.k8s.bnerd.com",
                vec![rule(contract::GROUP, &["volumebackups", "s3backups"])],
                None,
                vec![custom_resource_spec_changed()],
            ),
            common(
                "cronjobs.validate.backups.k8s.bnerd.com",
                vec![rule("batch", &["cronjobs"])],
                notify_label_selector(),
                vec![cron_job_labelled(), cron_job_notification_changed()],
            ),
        ]),
    }
}

/// `/mutate`: labelled CronJobs. Fails open (a down webhook must not block CronJobs); the
/// controller's `NotifierInjected` condition reports CronJobs that missed the injection.
pub fn mutating(s: &WebhookSettings) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: meta(),
        webhooks: Some(vec![MutatingWebhook {
            name: "cronjobs.mutate.backups.k8s.bnerd.com".into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some("Ignore".into()),
            match_policy: Some("Equivalent".into()),
            reinvocation_policy: Some("IfNeeded".into()),
            timeout_seconds: Some(2),
            client_config: s.client_config("/mutate"),
            namespace_selector: s.namespace_selector(),
            object_selector: notify_label_selector(),
            rules: Some(vec![rule("batch", &["cronjobs"])]),
            match_conditions: None,
        }]),
    }
}

/// Both configurations as a YAML stream (k8s-openapi writes apiVersion and kind itself).
pub fn yaml(s: &WebhookSettings) -> anyhow::Result<String> {
    Ok(format!(
        "---\n{}---\n{}",
        serde_yaml_ng::to_string(&validating(s))?,
        serde_yaml_ng::to_string(&mutating(s))?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_is_written_as_it_was_checked() {
        for (given, written) in [
            ("https://10.0.0.5:8443", "https://10.0.0.5:8443/"),
            ("https:/10.0.0.5:8443", "https://10.0.0.5:8443/"),
            (
                " https://Hooks.Example.com/base ",
                "https://hooks.example.com/base",
            ),
            ("https://h.example/a%2Fb", "https://h.example/a%2Fb"),
        ] {
            assert_eq!(parse_base_url(given).as_deref(), Ok(written), "{given:?}");
        }
        for (bad, says) in [
            ("http://h.example", "only over https"),
            ("https://u@h.example", "user info"),
            ("https://h.example/?q", "query or fragment"),
            ("https://h.example/%zz", "starts no escape"),
            ("https://h.example/%4", "starts no escape"),
            ("not a url", "is not a URL"),
        ] {
            let e = parse_base_url(bad).unwrap_err();
            assert!(e.contains(says) && !e.contains('\n'), "{bad:?}: {e}");
        }
    }
}

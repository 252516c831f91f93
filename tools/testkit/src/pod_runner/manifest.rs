//! Reading the pod to run from a Pod, Job, CronJob, PodTemplate, PodTemplateSpec or bare PodSpec
//! document, in JSON or YAML.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;

/// The pod found in a manifest, with the metadata the downward API can expose.
#[derive(Clone, Debug)]
pub struct PodManifest {
    /// The kind of the document (`Pod`, `Job`, `CronJob`, `PodTemplate`, `PodTemplateSpec`,
    /// `PodSpec`).
    pub kind: String,
    /// The pod's name: the Pod's, else the template's, else derived from the owner's.
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: PodSpec,
}

/// Reads a manifest file (`-` reads standard input).
pub fn load_manifest(path: &Path) -> Result<PodManifest> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the manifest from stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?
    };
    parse_manifest(&text).with_context(|| format!("manifest {}", path.display()))
}

/// Parses a manifest from JSON or YAML text.
pub fn parse_manifest(text: &str) -> Result<PodManifest> {
    // YAML is a superset of JSON, so one parser reads both.
    let mut doc: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| anyhow::anyhow!("not a single JSON or YAML document: {e}"))?;
    octal_modes(&mut doc);
    let Value::Object(_) = doc else {
        bail!("the document is not an object");
    };
    let kind = doc.get("kind").and_then(Value::as_str).map(str::to_owned);
    let top_meta = doc.get("metadata");
    let top_name = str_at(top_meta, "name");
    let at = |path: &[&str]| -> Option<&Value> {
        path.iter().try_fold(&doc, |value, key| value.get(*key))
    };
    let (kind, template_path, template): (&str, &str, Option<&Value>) = match kind.as_deref() {
        Some("Pod") => ("Pod", "", Some(&doc)),
        Some("PodTemplate") => ("PodTemplate", "template", at(&["template"])),
        Some("Job") => ("Job", "spec.template", at(&["spec", "template"])),
        Some("CronJob") => (
            "CronJob",
            "spec.jobTemplate.spec.template",
            at(&["spec", "jobTemplate", "spec", "template"]),
        ),
        Some(other) => bail!(
            "kind {other:?} has no pod to run (expected Pod, Job, CronJob, PodTemplate, a PodTemplateSpec or a PodSpec)"
        ),
        // Without a kind: a PodTemplateSpec has spec.containers, a PodSpec has containers.
        None if doc.get("containers").is_some() => ("PodSpec", "", None),
        None if at(&["spec", "containers"]).is_some() => ("PodTemplateSpec", "", Some(&doc)),
        None => bail!(
            "the document has no kind and is neither a PodSpec (containers) nor a PodTemplateSpec (spec.containers)"
        ),
    };
    let (spec_value, spec_path, pod_meta) = if kind == "PodSpec" {
        (&doc, "the document".to_owned(), None)
    } else {
        let path = if template_path.is_empty() {
            "spec".to_owned()
        } else {
            format!("{template_path}.spec")
        };
        let spec = template
            .and_then(|t| t.get("spec"))
            .with_context(|| format!("{kind} has no {path}"))?;
        (spec, path, template.and_then(|t| t.get("metadata")))
    };
    let spec: PodSpec = serde_json::from_value(spec_value.clone())
        .with_context(|| format!("{kind} {spec_path} is not a valid PodSpec"))?;
    let name = str_at(pod_meta, "name").or_else(|| match kind {
        "Job" | "CronJob" | "PodTemplate" => top_name.as_ref().map(|n| format!("{n}-local")),
        _ => None,
    });
    Ok(PodManifest {
        name,
        namespace: str_at(top_meta, "namespace").or_else(|| str_at(pod_meta, "namespace")),
        uid: str_at(pod_meta, "uid"),
        labels: map_at(pod_meta, "labels")?,
        annotations: map_at(pod_meta, "annotations")?,
        kind: kind.to_owned(),
        spec,
    })
}

/// kubectl reads YAML 1.1, where `defaultMode: 0400` is octal; the YAML 1.2 parser here keeps
/// such a value as the string "0400". Convert file modes back so manifests mean the same.
fn octal_modes(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "defaultMode" || key == "mode" {
                    if let Some(mode) = v
                        .as_str()
                        .and_then(|s| s.strip_prefix("0o").or_else(|| s.strip_prefix('0')))
                        .and_then(|digits| u32::from_str_radix(digits, 8).ok())
                    {
                        *v = Value::from(mode);
                    }
                } else {
                    octal_modes(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(octal_modes),
        _ => {}
    }
}

fn str_at(meta: Option<&Value>, key: &str) -> Option<String> {
    meta?.get(key)?.as_str().map(str::to_owned)
}

fn map_at(meta: Option<&Value>, key: &str) -> Result<BTreeMap<String, String>> {
    match meta.and_then(|m| m.get(key)) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(value) => serde_json::from_value(value.clone())
            .with_context(|| format!("metadata.{key} is not a map of strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind() {
        let pod = parse_manifest(
            "kind: Pod\nmetadata: {name: p, namespace: ns, labels: {a: b}}\nspec: {containers: [{name: c, image: i}]}",
        )
        .unwrap();
        assert_eq!((pod.kind.as_str(), pod.name.as_deref()), ("Pod", Some("p")));
        assert_eq!(pod.namespace.as_deref(), Some("ns"));
        assert_eq!(pod.labels.get("a").map(String::as_str), Some("b"));

        let cron = parse_manifest(
            r#"{"apiVersion":"batch/v1","kind":"CronJob","metadata":{"name":"cj","namespace":"n"},
               "spec":{"schedule":"@daily","jobTemplate":{"spec":{"template":{"spec":{
               "restartPolicy":"Never","containers":[{"name":"backup","image":"x"}]}}}}}}"#,
        )
        .unwrap();
        assert_eq!(cron.name.as_deref(), Some("cj-local"));
        assert_eq!(cron.spec.containers[0].name, "backup");

        let job = parse_manifest(
            "kind: Job\nmetadata: {name: j}\nspec:\n  template:\n    metadata: {name: jp}\n    spec: {containers: [{name: c}]}",
        )
        .unwrap();
        assert_eq!(job.name.as_deref(), Some("jp"));

        let spec = parse_manifest("containers: [{name: c}]").unwrap();
        assert_eq!(spec.kind, "PodSpec");
        let tmpl = parse_manifest("spec: {containers: [{name: c}]}").unwrap();
        assert_eq!(tmpl.kind, "PodTemplateSpec");
    }

    #[test]
    fn yaml_file_modes_are_octal_like_kubectl() {
        let pod = parse_manifest(
            "volumes: [{name: s, secret: {secretName: x, defaultMode: 0400, items: [{key: k, path: p, mode: 0o755}]}}]\ncontainers: [{name: c}]",
        )
        .unwrap();
        let secret = pod.spec.volumes.unwrap()[0].secret.clone().unwrap();
        assert_eq!(secret.default_mode, Some(0o400));
        assert_eq!(secret.items.unwrap()[0].mode, Some(0o755));
        let json = parse_manifest(r#"{"volumes":[{"name":"s","configMap":{"name":"x","defaultMode":420}}],"containers":[{"name":"c"}]}"#).unwrap();
        assert_eq!(
            json.spec.volumes.unwrap()[0]
                .config_map
                .clone()
                .unwrap()
                .default_mode,
            Some(420)
        );
    }

    #[test]
    fn errors_are_clear() {
        let err = |text: &str| format!("{:#}", parse_manifest(text).unwrap_err());
        assert!(err("kind: Service\nspec: {}").contains("kind \"Service\""));
        assert!(err("kind: Job\nspec: {}").contains("Job has no spec.template.spec"));
        assert!(err("[1]").contains("not an object"));
        assert!(err("a: 1\n---\nb: 2").contains("single"));
        assert!(err("kind: Pod\nspec: {containers: 3}").contains("not a valid PodSpec"));
    }
}

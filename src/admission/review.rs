//! `admission.k8s.io/v1` reviews on the wire: the requests as each webhook reads them, and the
//! answer both send.
//!
//! Each webhook decodes only the request fields it uses. `/validate` keeps the object and the old
//! object as raw JSON, decoded later into a typed view of what the kind's checks read.
//! `/mutate` reads the object through [`inject::CRON_JOB_VIEW`], straight into the
//! `serde_json::Value` the patch is built against, without the parts the injector never touches.
//! Both used to decode kube-core's `AdmissionRequest<DynamicObject>`, which flattens the object's
//! body (so serde buffers it in `Content` first) and builds every field of it: that was about half
//! of a request (BENCHMARKS.md). The answer is our own type because kube-core's
//! `AdmissionResponse` serialises the patch as an array of numbers instead of the base64 string a
//! Go `[]byte` is in JSON (kube-rs #1781), and can only be made from its own request type.

use axum::http::StatusCode;
use kube::core::GroupVersionKind;
use kube::core::admission::Operation;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::BadRequest;
use crate::inject;

const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";
/// Most JSON values (objects, arrays, and elements after the first) a review may hold.
pub const MAX_JSON_VALUES: usize = 100_000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<R> {
    api_version: String,
    kind: String,
    request: Option<R>,
}

/// Decodes a review's envelope and its request as `R` (v1beta1 is refused, so it is never
/// answered in a version the apiserver did not ask for).
fn decode<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, BadRequest> {
    let bad = |m: String| BadRequest(StatusCode::BAD_REQUEST, m);
    // Typed decoding builds far more than the bytes it reads (a 3-byte `{}` in a list becomes
    // a struct of a hundred bytes, first buffered by serde's flatten), so the number of values,
    // not only the body's size, must be bounded before it starts. A review of a backup or a
    // CronJob holds a few thousand at most; this bounds what a forged one can make it build.
    if json_values(bytes) > MAX_JSON_VALUES && json_values_outside_strings(bytes) > MAX_JSON_VALUES
    {
        return Err(bad(format!(
            "request body holds more than {MAX_JSON_VALUES} JSON values; an AdmissionReview of a backup or a CronJob holds far fewer"
        )));
    }
    // serde's message quotes what it could not take ("unknown variant ..."), which in a forged
    // request may be long and hold line breaks: the answer and the log stay one short line.
    let review: Envelope<R> = serde_json::from_slice(bytes).map_err(|e| {
        bad(format!(
            "request body is not an AdmissionReview: {}",
            crate::text::escape_controls(&crate::text::truncated(&e.to_string(), 1024))
        ))
    })?;
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(bad(format!(
            "expected kind {KIND} in {API_VERSION}, got {:?} in {:?}",
            crate::text::truncated(&review.kind, crate::text::QUOTE_MAX),
            crate::text::truncated(&review.api_version, crate::text::QUOTE_MAX)
        )));
    }
    review
        .request
        .ok_or_else(|| bad(format!("{KIND} has no request")))
}

/// Counts the bytes that open a JSON value or separate two (`{`, `[`, `,`): inside strings too,
/// so it is an upper bound, which is all the limit needs. It runs on every request, so it is
/// written for the compiler to vectorise: each byte adds 0 or 1 to a `u8` lane, and a chunk of
/// 255 bytes cannot overflow one (a `filter().count()` took ten instructions a byte, more than
/// the rest of a `/validate`'s decoding).
fn json_values(bytes: &[u8]) -> usize {
    bytes
        .chunks(usize::from(u8::MAX))
        .map(|chunk| {
            let opens = chunk.iter().fold(0u8, |n, &b| {
                n + u8::from(b == b'{') + u8::from(b == b'[') + u8::from(b == b',')
            });
            usize::from(opens)
        })
        .sum()
}

/// The exact count [`json_values`] bounds: only bytes outside strings, so a script or inline
/// JSON dense in commas is not mistaken for a forged review. A byte at a time, so it runs only
/// for a body whose bound is over the limit.
fn json_values_outside_strings(bytes: &[u8]) -> usize {
    let (mut in_string, mut escaped, mut n) = (false, false, 0);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' | b',' => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// What a webhook reads of a request: the same fields for both, the objects as each needs them
/// (`O` for `object`, `Old` for `oldObject`); serde skips everything else unparsed.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<O, Old> {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub operation: Operation,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default = "none")]
    pub object: Option<O>,
    /// Set on UPDATE: the stored object.
    #[serde(default = "none")]
    pub old_object: Option<Old>,
}

fn none<T>() -> Option<T> {
    None
}

/// `/validate` keeps both objects raw JSON until the kind is known, since each kind's checks read
/// different parts of them (`admission::validate`).
pub type ValidateRequest = Request<Box<RawValue>, Box<RawValue>>;

/// A review as `/validate` reads it.
pub fn decode_validate_review(bytes: &[u8]) -> Result<ValidateRequest, BadRequest> {
    decode(bytes)
}

/// `/mutate` reads the object through the injector's view and never looks at `oldObject`.
pub type MutateRequest = Request<CronJobView, IgnoredAny>;

/// The parts of a CronJob the injector reads ([`inject::CRON_JOB_VIEW`]), exactly as the
/// apiserver sent them, so the patch's paths fit the whole object.
#[derive(Debug)]
pub struct CronJobView(pub Value);

impl<'de> Deserialize<'de> for CronJobView {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        inject::CRON_JOB_VIEW.deserialize(d).map(CronJobView)
    }
}

/// A review as `/mutate` reads it.
pub fn decode_mutate_review(bytes: &[u8]) -> Result<MutateRequest, BadRequest> {
    decode(bytes)
}

/// Why a review was denied, as `metav1.Status`.
#[derive(Debug, Serialize)]
struct Denial {
    status: &'static str,
    message: String,
    reason: &'static str,
    code: u16,
}

/// The `response` of the review we answer with.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Denial>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// The patch as a JSON string of its base64: written as is, since base64 needs no escaping
    /// and escaping it byte by byte was a tenth of a `/mutate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Reply<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: &'a Answer,
}

impl Answer {
    /// Allowed, unchanged, for the request with this uid.
    pub fn allow(uid: &str) -> Self {
        Answer {
            uid: uid.to_owned(),
            allowed: true,
            status: None,
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
        }
    }

    /// Denied with `403 Forbidden`, which kubectl shows as "Error from server (Forbidden)"
    /// rather than a bare 400.
    pub fn deny(mut self, message: String) -> Self {
        self.allowed = false;
        self.status = Some(Denial {
            status: "Failure",
            message,
            reason: "Forbidden",
            code: 403,
        });
        self
    }

    pub fn with_warnings(mut self, warnings: Vec<String>) -> Self {
        self.warnings = warnings;
        self
    }

    /// Allowed with this JSON Patch (none when it is empty).
    pub fn with_patch(mut self, patch: &json_patch::Patch) -> serde_json::Result<Self> {
        use base64::Engine as _;
        if !patch.0.is_empty() {
            let mut literal = String::from('"');
            base64::engine::general_purpose::STANDARD
                .encode_string(serde_json::to_vec(patch)?, &mut literal);
            literal.push('"');
            self.patch = Some(RawValue::from_string(literal)?);
            self.patch_type = Some("JSONPatch");
        }
        Ok(self)
    }

    /// The whole response review as JSON.
    pub fn encode(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&Reply {
            api_version: API_VERSION,
            kind: KIND,
            response: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_values_counts_every_opening_and_separator_across_chunks() {
        for body in [
            Vec::new(),
            b"{\"a\":[1,2,{}],\"b\":\"x,y\"}".to_vec(),
            // All counted bytes, more than one chunk holds.
            b"[{,".repeat(1000),
            // Counted bytes at chunk boundaries and between other bytes.
            (0..2000u32)
                .map(|i| if i % 7 == 0 { b',' } else { b'a' })
                .collect(),
        ] {
            let naive = body
                .iter()
                .filter(|b| matches!(b, b'{' | b'[' | b','))
                .count();
            assert_eq!(json_values(&body), naive);
        }
    }

    #[test]
    fn only_values_outside_strings_count_against_the_limit() {
        let body = br#"{"a":"x,{[\",y","b":[1,{}]}"#;
        assert_eq!(json_values_outside_strings(body), 5);
        // A CronJob whose script holds more commas than the limit is still decoded.
        let script = ",".repeat(MAX_JSON_VALUES + 1);
        let review = serde_json::to_vec(&json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "request": {"uid": "u", "script": script}
        }))
        .unwrap();
        let decoded: Result<Value, _> = decode(&review);
        assert!(decoded.is_ok(), "{:?}", decoded.err().map(|e| e.1));
        // As many real values are refused.
        let values = format!("[{}0]", "0,".repeat(MAX_JSON_VALUES + 1));
        let review = format!(
            r#"{{"apiVersion":"{API_VERSION}","kind":"{KIND}","request":{{"uid":"u","v":{values}}}}}"#
        );
        let refused: Result<Value, _> = decode(review.as_bytes());
        assert!(refused.is_err_and(|e| e.1.contains("JSON values")));
    }

    #[test]
    fn a_denial_is_a_failure_status_with_the_message() {
        let body = Answer::allow("u-1")
            .deny("spec.schedule: not a cron expression".into())
            .encode()
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": API_VERSION, "kind": KIND, "response": {
                "uid": "u-1", "allowed": false,
                "status": {"status": "Failure", "message": "spec.schedule: not a cron expression",
                           "reason": "Forbidden", "code": 403},
            }})
        );
    }

    #[test]
    fn an_empty_patch_is_left_out() {
        let body = Answer::allow("u-2")
            .with_patch(&json_patch::Patch(Vec::new()))
            .unwrap()
            .encode()
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"], json!({"uid": "u-2", "allowed": true}));
    }

    #[test]
    fn the_mutate_request_keeps_the_injectors_view_of_the_object_as_sent() {
        let kept = json!({"terminationGracePeriodSeconds": 30, "restartPolicy": "Never",
            "containers": [{"name": "c", "command": ["x"], "env": [{"name": "A", "value": "1"}]}]});
        let mut pod = kept.clone();
        pod["dnsPolicy"] = json!("ClusterFirst");
        let object = json!({"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "n", "uid": "x", "labels": {"l": "1"}, "annotations": {"a/b": "2"},
                         "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"backoffLimit": 0,
                "template": {"metadata": {"labels": {"p": "q"}}, "spec": pod}}}},
            "status": {"lastScheduleTime": null}});
        let review = json!({"apiVersion": API_VERSION, "kind": KIND, "request": {
            "uid": "u-3", "kind": {"group": "batch", "version": "v1", "kind": "CronJob"},
            "resource": {"group": "batch", "version": "v1", "resource": "cronjobs"},
            "operation": "UPDATE", "name": "n", "namespace": "ns", "userInfo": {},
            "object": object, "oldObject": {"apiVersion": "batch/v1", "kind": "CronJob"},
        }});
        let req = decode_mutate_review(&serde_json::to_vec(&review).unwrap()).unwrap();
        assert_eq!(
            req.object.map(|v| v.0),
            Some(
                json!({"metadata": {"labels": {"l": "1"}, "annotations": {"a/b": "2"}},
                "spec": {"jobTemplate": {"spec": {"backoffLimit": 0, "template": {"spec": kept}}}}})
            )
        );
        assert_eq!(req.uid, "u-3");
        assert_eq!(req.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn the_validate_request_keeps_both_objects_raw() {
        let review = json!({"apiVersion": API_VERSION, "kind": KIND, "request": {
            "uid": "u-4", "kind": {"group": "g", "version": "v1", "kind": "K"},
            "operation": "CREATE", "name": "n", "object": {"spec": {"a": [1, "\u{e9}\"q"]}},
            "oldObject": null,
        }});
        let req = decode_validate_review(&serde_json::to_vec(&review).unwrap()).unwrap();
        let object: Value = serde_json::from_str(req.object.unwrap().get()).unwrap();
        assert_eq!(object, review["request"]["object"]);
        assert!(req.old_object.is_none());
    }

    #[test]
    fn other_versions_and_empty_reviews_are_refused_in_one_line() {
        let v1beta1 =
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": KIND, "request": null});
        let e = decode_mutate_review(&serde_json::to_vec(&v1beta1).unwrap()).unwrap_err();
        assert_eq!(
            e.1,
            r#"expected kind AdmissionReview in admission.k8s.io/v1, got "AdmissionReview" in "admission.k8s.io/v1beta1""#
        );
        let empty = json!({"apiVersion": API_VERSION, "kind": KIND});
        let e = decode_validate_review(&serde_json::to_vec(&empty).unwrap()).unwrap_err();
        assert_eq!(e.1, "AdmissionReview has no request");
        // What serde quotes from a forged request stays on the line.
        let forged = json!({"apiVersion": API_VERSION, "kind": KIND, "request": {
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "X"},
            "operation": "X\nFAKE ERROR forged line\u{1b}[31m", "name": "n"}});
        let e = decode_validate_review(&serde_json::to_vec(&forged).unwrap()).unwrap_err();
        assert!(
            !e.1.contains(['\n', '\u{1b}']) && e.1.contains(r"X\nFAKE ERROR forged line\u{1b}[31m"),
            "{}",
            e.1
        );
    }
}

//! The admission endpoints (`POST /validate`, `POST /mutate`) over any transport: request
//! hygiene (method, content type, size), decoding of `admission.k8s.io/v1` reviews, metrics, and
//! dispatch to the validating and mutating logic.

pub mod validate;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::inject::{self, InjectorConfig};
use crate::metrics::{DecisionLabels, DenialLabels, Metrics, WebhookLabels};
use crate::url_policy::UrlPolicy;

/// Largest request body read. etcd stores objects up to 1.5 MiB and an UPDATE review carries
/// two of them, so 7 MiB leaves room while still refusing floods.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 7 * 1024 * 1024;

/// Everything the handlers need; shared by all connections.
pub struct AdmissionState {
    pub policy: UrlPolicy,
    pub injector: InjectorConfig,
    pub metrics: Metrics,
    pub max_request_bytes: usize,
}

/// The admission router. Paths other than these answer 404; other methods 405.
pub fn router(state: Arc<AdmissionState>) -> Router {
    Router::new()
        .route("/validate", post(validate_handler))
        .route("/mutate", post(mutate_handler))
        .fallback(|| async {
            plain(
                StatusCode::NOT_FOUND,
                "not found: use POST /validate or POST /mutate",
            )
        })
        .method_not_allowed_fallback(|| async {
            plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use POST",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Request counts, latency and in-flight gauge per webhook and status code.
async fn observe(State(state): State<Arc<AdmissionState>>, req: Request, next: Next) -> Response {
    let webhook = match req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/validate") => "validate",
        Some("/mutate") => "mutate",
        _ => "other",
    };
    let started = Instant::now();
    state.metrics.webhook_in_flight.inc();
    let response = next.run(req).await;
    state.metrics.webhook_in_flight.dec();
    let labels = WebhookLabels {
        webhook,
        code: response.status().as_u16(),
    };
    state.metrics.webhook_requests.get_or_create(&labels).inc();
    state
        .metrics
        .webhook_latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// A one-line plain-text answer for requests that are not admission reviews.
fn plain(code: StatusCode, msg: impl Into<String>) -> Response {
    let mut line: String = msg.into();
    line.push('\n');
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        line,
    )
        .into_response()
}

/// A request the apiserver would never send; answered with a status code and one line.
#[derive(Debug)]
pub struct BadRequest(pub StatusCode, pub String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        plain(self.0, self.1)
    }
}

/// Reads and decodes an AdmissionReview, enforcing content type and size.
pub async fn read_review(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<AdmissionRequest<DynamicObject>, BadRequest> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(BadRequest(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be application/json, got {content_type:?}"),
        ));
    }
    let bytes = read_limited(body, limit).await?;
    decode_review(&bytes)
}

async fn read_limited(body: Body, limit: usize) -> Result<Bytes, BadRequest> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_big = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_big {
            BadRequest(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {limit} bytes"),
            )
        } else {
            BadRequest(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        }
    })
}

/// Decodes an `admission.k8s.io/v1` review (v1beta1 is refused, so it is never answered).
pub fn decode_review(bytes: &[u8]) -> Result<AdmissionRequest<DynamicObject>, BadRequest> {
    let bad = |m: String| BadRequest(StatusCode::BAD_REQUEST, m);
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("request body is not an AdmissionReview: {e}")))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(bad(format!(
            "expected kind AdmissionReview in admission.k8s.io/v1, got {:?} in {:?}",
            review.types.kind, review.types.api_version
        )));
    }
    review
        .try_into()
        .map_err(|_| bad("AdmissionReview has no request".into()))
}

/// Serialises the response review (uid and apiVersion echoed from the request).
pub fn review_response(response: AdmissionResponse) -> Response {
    match encode_review(response) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not encode the AdmissionReview response: {e}"),
        ),
    }
}

/// The response review as JSON, with the patch base64-encoded as the API's `[]byte` field
/// expects. kube-core serialises `AdmissionResponse.patch` (a `Vec<u8>`) as an array of numbers
/// (kube-rs #1781): the apiserver accepts that, but the answer grows 2.5× and Go decodes it
/// element by element, ~10× slower (BENCHMARKS.md).
pub fn encode_review(mut response: AdmissionResponse) -> serde_json::Result<Vec<u8>> {
    use base64::Engine as _;
    let Some(patch) = response.patch.take() else {
        return serde_json::to_vec(&response.into_review());
    };
    // Without the patch the review is a few hundred bytes, so the detour through a Value is
    // cheap; `patchType` stays, as `with_patch` set it.
    let mut review = serde_json::to_value(response.into_review())?;
    review["response"]["patch"] =
        serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    serde_json::to_vec(&review)
}

async fn read_or_refuse(
    state: &AdmissionState,
    webhook: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<AdmissionRequest<DynamicObject>, Response> {
    read_review(headers, body, state.max_request_bytes)
        .await
        .map_err(|bad| {
            tracing::warn!(status = bad.0.as_u16(), reason = %bad.1, "refused a malformed /{webhook} request");
            bad.into_response()
        })
}

fn count_decision(
    state: &AdmissionState,
    webhook: &'static str,
    kind: &str,
    decision: &'static str,
) {
    state
        .metrics
        .admission_decisions
        .get_or_create(&DecisionLabels {
            webhook,
            kind: bounded_kind(kind),
            decision,
        })
        .inc();
}

async fn mutate_handler(
    State(state): State<Arc<AdmissionState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut req = match read_or_refuse(&state, "mutate", &headers, body).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let mut response = AdmissionResponse::from(&req);
    let mutation = mutation_for(&mut req, &state.injector);
    if !mutation.warnings.is_empty() {
        response.warnings = Some(mutation.warnings.clone());
    }
    let decision = if mutation.patch.is_empty() {
        "unchanged"
    } else {
        "patched"
    };
    let ops = mutation.patch.len();
    if !mutation.patch.is_empty() {
        response = match response.with_patch(json_patch::Patch(mutation.patch)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(uid = %req.uid, error = %e, "cannot encode the patch; leaving the CronJob unchanged");
                AdmissionResponse::from(&req)
            }
        };
    }
    count_decision(&state, "mutate", &req.kind.kind, decision);
    tracing::info!(
        uid = %req.uid,
        kind = %req.kind.kind,
        namespace = req.namespace.as_deref().unwrap_or(""),
        name = %req.name,
        operation = ?req.operation,
        decision,
        injected = mutation.injected,
        ops,
        warnings = mutation.warnings.len(),
        "mutated"
    );
    review_response(response)
}

/// The mutating webhook's decision on one decoded review. Takes the object out of `req`: it is
/// turned into the patch builder's working copy without a copy of its own.
pub fn mutation_for(
    req: &mut AdmissionRequest<DynamicObject>,
    cfg: &InjectorConfig,
) -> inject::Mutation {
    let is_cron_job = req.kind.group == "batch" && req.kind.kind == "CronJob";
    if !is_cron_job {
        return inject::Mutation {
            warnings: vec![format!(
                "backup-operator does not mutate {}/{}; check the webhook configuration's rules",
                req.kind.group, req.kind.kind
            )],
            ..Default::default()
        };
    }
    match (req.object.take(), &req.operation) {
        (Some(obj), Operation::Create | Operation::Update) => match object_json(obj) {
            Ok(json) => inject::mutate(json, cfg),
            Err(e) => {
                tracing::error!(uid = %req.uid, error = %e, "cannot re-encode the CronJob; leaving it unchanged");
                inject::Mutation::default()
            }
        },
        _ => inject::Mutation::default(),
    }
}

/// The object as the JSON the apiserver sent. Equal to `serde_json::to_value(&obj)`, but the
/// body (`data`, the bulk of a CronJob) is moved rather than re-encoded.
pub fn object_json(obj: DynamicObject) -> serde_json::Result<serde_json::Value> {
    use serde_json::Value;
    let mut map = match obj.data {
        Value::Object(map) => map,
        Value::Null => serde_json::Map::new(),
        _ => {
            return Err(serde::de::Error::custom(
                "the object's body is not a JSON object",
            ));
        }
    };
    if let Some(types) = obj.types {
        map.insert("apiVersion".into(), Value::String(types.api_version));
        map.insert("kind".into(), Value::String(types.kind));
    }
    map.insert("metadata".into(), serde_json::to_value(&obj.metadata)?);
    Ok(Value::Object(map))
}

async fn validate_handler(
    State(state): State<Arc<AdmissionState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req = match read_or_refuse(&state, "validate", &headers, body).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let verdict = validate::validate(&req, &state.policy);
    let kind = req.kind.kind.clone();
    let mut response = AdmissionResponse::from(&req);
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings.clone());
    }
    let decision = if verdict.denials.is_empty() {
        "allowed"
    } else {
        for d in &verdict.denials {
            state
                .metrics
                .admission_denials
                .get_or_create(&DenialLabels {
                    webhook: "validate",
                    reason: d.class,
                })
                .inc();
        }
        response = response.deny(verdict.message());
        // 403 makes kubectl say "Error from server (Forbidden)" instead of a bare 400.
        response.result.code = 403;
        response.result.reason = "Forbidden".into();
        "denied"
    };
    count_decision(&state, "validate", &kind, decision);
    tracing::info!(
        uid = %req.uid,
        kind = %kind,
        namespace = req.namespace.as_deref().unwrap_or(""),
        name = %req.name,
        operation = ?req.operation,
        decision,
        denials = verdict.denials.len(),
        warnings = verdict.warnings.len(),
        "validated"
    );
    review_response(response)
}

/// Keeps the metric's label set bounded whatever kinds a misconfigured webhook sends.
fn bounded_kind(kind: &str) -> String {
    match kind {
        "VolumeBackup" | "S3Backup" | "CronJob" => kind.to_owned(),
        _ => "other".to_owned(),
    }
}

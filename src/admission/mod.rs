//! The admission endpoints (`POST /validate`, `POST /mutate`) over any transport: request
//! hygiene (method, content type, size), decoding of `admission.k8s.io/v1` reviews, metrics, and
//! dispatch to the validating and mutating logic.

pub mod review;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::admission::Operation;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::inject::{self, InjectorConfig};
use crate::metrics::{DecisionLabels, DenialLabels, Metrics, WebhookLabels};
use crate::text;
use crate::url_policy::UrlPolicy;
pub use review::{
    Answer, MutateRequest, ValidateRequest, decode_mutate_review, decode_validate_review,
};

/// Largest request body read. etcd stores objects up to 1.5 MiB and an UPDATE review carries
/// two of them, so 7 MiB leaves room while still refusing floods.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 7 * 1024 * 1024;

/// Smallest `--max-request-bytes`: a review of an ordinary CronJob, with its managed fields,
/// takes tens of kilobytes, so a smaller limit (a `0`, or a `7` meant as MiB) would refuse
/// every write to our resources and inject nothing.
pub const MIN_MAX_REQUEST_BYTES: usize = 64 * 1024;

/// `--max-request-bytes` and `--max-request-bytes-in-flight`: bytes, at least
/// [`MIN_MAX_REQUEST_BYTES`].
pub fn parse_request_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if n < MIN_MAX_REQUEST_BYTES {
        return Err(format!(
            "{n} bytes is below the least a review needs ({MIN_MAX_REQUEST_BYTES} bytes; the default is {DEFAULT_MAX_REQUEST_BYTES})"
        ));
    }
    Ok(n)
}

/// The apiserver writes a review's body in one go and waits at most 30 s (the largest
/// `timeoutSeconds`) for the answer: a body still arriving after this is not from it, and a
/// client trickling one must not hold the memory it announced.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default bytes of request bodies held at once, across all connections (at least one largest
/// body). A body that would go beyond it is refused with 503, so concurrent large bodies cannot
/// take the pod past its memory limit.
pub const DEFAULT_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// Everything the handlers need; shared by all connections.
pub struct AdmissionState {
    pub policy: UrlPolicy,
    pub injector: InjectorConfig,
    pub metrics: Metrics,
    pub max_request_bytes: usize,
    /// Bytes of request bodies held at once, in KiB permits; see [`AdmissionState::new`].
    body_budget: Arc<Semaphore>,
    body_budget_bytes: usize,
}

impl AdmissionState {
    pub fn new(
        policy: UrlPolicy,
        injector: InjectorConfig,
        metrics: Metrics,
        max_request_bytes: usize,
        body_bytes_in_flight: usize,
    ) -> Self {
        let budget = body_bytes_in_flight.max(max_request_bytes);
        Self {
            policy,
            injector,
            metrics,
            max_request_bytes,
            body_budget: Arc::new(Semaphore::new(kib(budget))),
            body_budget_bytes: budget,
        }
    }
}

/// Whole KiB needed to hold `bytes` (the unit of the body budget's permits).
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).max(1)
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
    // Counted on drop: hyper drops the handler of a client that goes away mid-request (the
    // apiserver at its webhook timeout), and a request the apiserver gave up on must show.
    struct InFlight {
        metrics: Arc<AdmissionState>,
        webhook: &'static str,
        started: Instant,
        code: u16,
    }
    impl Drop for InFlight {
        fn drop(&mut self) {
            let m = &self.metrics.metrics;
            m.webhook_in_flight.dec();
            let labels = WebhookLabels {
                webhook: self.webhook,
                code: self.code,
            };
            m.webhook_requests.get_or_create(&labels).inc();
            m.webhook_latency
                .get_or_create(&labels)
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
    state.metrics.webhook_in_flight.inc();
    let mut in_flight = InFlight {
        metrics: state.clone(),
        webhook,
        started: Instant::now(),
        // Unless the handler finishes: nginx's "client closed request".
        code: CLIENT_CLOSED_REQUEST,
    };
    let response = next.run(req).await;
    in_flight.code = response.status().as_u16();
    drop(in_flight);
    response
}

/// The `code` of a request whose client went away before the answer (nginx's 499).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

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

/// A request body and its share of the body budget, returned when both are dropped.
struct HeldBody {
    bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

/// Reads a review's body, enforcing content type, size, the body budget and the read deadline.
async fn read_body(
    state: &AdmissionState,
    headers: &HeaderMap,
    body: Body,
) -> Result<HeldBody, BadRequest> {
    let limit = state.max_request_bytes;
    // Lossy rather than `to_str`, so a header with non-ASCII bytes is shown, not reported as "".
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(BadRequest(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be application/json, got {content_type:?}"),
        ));
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    match tokio::time::timeout(BODY_READ_TIMEOUT, read_limited(state, body, limit)).await {
        Ok(read) => read,
        Err(_) => Err(BadRequest(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {}s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn too_large(limit: usize) -> BadRequest {
    BadRequest(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {limit} bytes"),
    )
}

/// Collects the body up to `limit` bytes, taking its share of the body budget as the bytes
/// arrive: a client that announces a large body and sends nothing holds nothing. A share that
/// is not free at once is refused (503) rather than waited for, so bodies being trickled in
/// cannot make the apiserver's small reviews queue behind them.
async fn read_limited(
    state: &AdmissionState,
    mut body: Body,
    limit: usize,
) -> Result<HeldBody, BadRequest> {
    use http_body_util::BodyExt;
    let mut bytes = Vec::new();
    let mut budget: Option<OwnedSemaphorePermit> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            BadRequest(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = bytes.len() + data.len();
        if len > limit {
            return Err(too_large(limit));
        }
        let held = budget.as_ref().map_or(0, |p| p.num_permits());
        let more = kib(len).saturating_sub(held);
        if more > 0 {
            let permits = u32::try_from(more)
                .ok()
                .and_then(|n| state.body_budget.clone().try_acquire_many_owned(n).ok())
                .ok_or_else(|| {
                    BadRequest(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "busy: {} bytes of request bodies are being read; try again",
                            state.body_budget_bytes
                        ),
                    )
                })?;
            match budget.as_mut() {
                Some(held) => held.merge(permits),
                None => budget = Some(permits),
            }
        }
        bytes.extend_from_slice(&data);
    }
    Ok(HeldBody {
        bytes: Bytes::from(bytes),
        _budget: budget,
    })
}

/// Reads and decodes a review with `decode`, or answers why it cannot.
async fn read_or_refuse<R>(
    state: &AdmissionState,
    webhook: &str,
    headers: &HeaderMap,
    body: Body,
    decode: fn(&[u8]) -> Result<R, BadRequest>,
) -> Result<R, Response> {
    let read = read_body(state, headers, body).await;
    read.and_then(|held| decode(&held.bytes)).map_err(|bad| {
        tracing::warn!(status = bad.0.as_u16(), reason = %bad.1, "refused a malformed /{webhook} request");
        bad.into_response()
    })
}

/// The answer as the HTTP response.
fn reply(answer: &Answer) -> Response {
    match answer.encode() {
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

/// Logs an admission decision at INFO when it changed or refused something or warned the user,
/// and at DEBUG otherwise. The apiserver calls the webhooks on every create and update of what
/// they match, so one INFO line per plain "allowed" would bury the lines that matter (and cost a
/// tenth of a `/validate`'s CPU); `--log-level backup_operator=debug` shows every decision.
macro_rules! log_decision {
    ($notable:expr, $($fields:tt)+) => {
        if $notable {
            tracing::info!($($fields)+)
        } else {
            tracing::debug!($($fields)+)
        }
    };
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
    let mut req = match read_or_refuse(&state, "mutate", &headers, body, decode_mutate_review).await
    {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let mutation = mutation_for(&mut req, &state.injector);
    let injected = mutation.injected();
    let warnings = mutation.warnings.len();
    let ops = mutation.patch.len();
    let patch = json_patch::Patch(mutation.patch);
    let unchanged = Answer::allow(&req.uid).with_warnings(mutation.warnings);
    let answer = match unchanged.with_patch(&patch) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(uid = ?text::truncated(&req.uid, text::QUOTE_MAX), error = %e, "cannot encode the patch; leaving the CronJob unchanged");
            Answer::allow(&req.uid)
        }
    };
    let decision = if ops == 0 { "unchanged" } else { "patched" };
    count_decision(&state, "mutate", &req.kind.kind, decision);
    log_decision!(
        ops > 0 || warnings > 0,
        uid = ?text::truncated(&req.uid, text::QUOTE_MAX),
        kind = ?text::truncated(&req.kind.kind, text::QUOTE_MAX),
        namespace = ?text::truncated(req.namespace.as_deref().unwrap_or(""), text::QUOTE_MAX),
        name = ?text::truncated(&req.name, text::QUOTE_MAX),
        operation = ?req.operation,
        decision,
        injected,
        ops,
        warnings,
        "mutated"
    );
    reply(&answer)
}

/// The mutating webhook's decision on one decoded review. Takes the object out of `req`: it
/// becomes the patch builder's working copy without a copy of its own.
pub fn mutation_for(req: &mut MutateRequest, cfg: &InjectorConfig) -> inject::Mutation {
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
        (Some(view), Operation::Create | Operation::Update) => inject::mutate(view.0, cfg),
        _ => inject::Mutation::default(),
    }
}

async fn validate_handler(
    State(state): State<Arc<AdmissionState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req = match read_or_refuse(&state, "validate", &headers, body, decode_validate_review).await
    {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let verdict = validate::validate(&req, &state.policy);
    let kind = req.kind.kind.clone();
    let mut answer = Answer::allow(&req.uid).with_warnings(verdict.warnings.clone());
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
        answer = answer.deny(verdict.message());
        "denied"
    };
    count_decision(&state, "validate", &kind, decision);
    log_decision!(
        !verdict.denials.is_empty() || !verdict.warnings.is_empty(),
        uid = ?text::truncated(&req.uid, text::QUOTE_MAX),
        kind = ?text::truncated(&kind, text::QUOTE_MAX),
        namespace = ?text::truncated(req.namespace.as_deref().unwrap_or(""), text::QUOTE_MAX),
        name = ?text::truncated(&req.name, text::QUOTE_MAX),
        operation = ?req.operation,
        decision,
        denials = verdict.denials.len(),
        warnings = verdict.warnings.len(),
        "validated"
    );
    reply(&answer)
}

/// Keeps the metric's label set bounded whatever kinds a misconfigured webhook sends.
fn bounded_kind(kind: &str) -> String {
    match kind {
        "VolumeBackup" | "S3Backup" | "CronJob" => kind.to_owned(),
        _ => "other".to_owned(),
    }
}

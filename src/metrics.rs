//! Prometheus metrics of the operator, served as text on the admin port (`/metrics`).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub webhook: &'static str,
    pub kind: String,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub webhook: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric the process exports. Cheap to clone (all handles are `Arc`s inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub webhook_requests: Family<WebhookLabels, Counter>,
    pub webhook_latency: Family<WebhookLabels, Histogram>,
    pub webhook_in_flight: Gauge,
    pub admission_decisions: Family<DecisionLabels, Counter>,
    pub admission_denials: Family<DenialLabels, Counter>,
    pub tls_reloads: Family<ResultLabels, Counter>,
    pub tls_not_after: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Registry::with_prefix("backup_operator"))
    }
}

impl Metrics {
    /// Registers the admission and TLS metrics into `registry`, which may already hold the
    /// metrics of other parts (the controller); it is frozen afterwards.
    pub fn new(mut registry: Registry) -> Self {
        let webhook_requests = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Admission requests by webhook and HTTP status code",
            webhook_requests.clone(),
        );
        let webhook_latency = Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to ~3 s: handlers answer in well under a millisecond, the apiserver
            // gives up after the webhook timeout (2-3 s).
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ])
        });
        registry.register(
            "webhook_latency_seconds",
            "Time to answer an admission request, by webhook and HTTP status code",
            webhook_latency.clone(),
        );
        let webhook_in_flight = Gauge::default();
        registry.register(
            "webhook_requests_in_flight",
            "Admission requests being answered",
            webhook_in_flight.clone(),
        );
        let admission_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "admission_decisions",
            "Admission decisions by webhook, kind and decision (allowed, denied, patched)",
            admission_decisions.clone(),
        );
        let admission_denials = Family::<DenialLabels, Counter>::default();
        registry.register(
            "admission_denials",
            "Denied fields by webhook and reason",
            admission_denials.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Serving certificate reloads by result (loaded, failed)",
            tls_reloads.clone(),
        );
        let tls_not_after = Gauge::default();
        registry.register(
            "tls_certificate_not_after_timestamp_seconds",
            "Expiry (Unix time) of the serving certificate in use",
            tls_not_after.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            webhook_requests,
            webhook_latency,
            webhook_in_flight,
            admission_decisions,
            admission_denials,
            tls_reloads,
            tls_not_after,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

//! Prometheus metrics of the operator, served as text on the admin port (`/metrics`).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

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

/// One backup resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct BackupLabels {
    pub namespace: String,
    pub kind: &'static str,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

/// A failure of a controller's streams.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamErrorLabels {
    pub kind: &'static str,
    /// `watch`: a list or watch failed; `cache`: the cache never filled, nothing reconciled.
    pub stream: &'static str,
}

/// What the controller knows about one resource's backups, as exported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackupFigures {
    pub last_success: Option<i64>,
    pub last_failure: Option<i64>,
    /// Outcome and duration of the most recent finished Job.
    pub last_job: LastJob,
}

/// The most recent finished Job of a backup, as far as the controller could tell.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum LastJob {
    /// The Jobs could not be read (an API error): the series stay as they were, so that a
    /// blip neither resolves nor raises an alert.
    #[default]
    Unknown,
    /// None has finished (yet, or since the backup was created again): no series.
    None,
    Finished {
        succeeded: bool,
        secs: f64,
    },
}

/// Per-resource backup metrics; series of deleted resources are dropped by [`Self::retain`].
#[derive(Clone, Default)]
pub struct BackupMetrics {
    last_success: Family<BackupLabels, Gauge>,
    last_failure: Family<BackupLabels, Gauge>,
    last_job_success: Family<BackupLabels, Gauge>,
    last_job_duration: Family<BackupLabels, Gauge<f64, AtomicU64>>,
    known: Arc<Mutex<BTreeSet<BackupLabels>>>,
}

impl BackupMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Completion time (Unix) of the last successful backup Job",
            self.last_success.clone(),
        );
        registry.register(
            "backup_last_failure_timestamp_seconds",
            "Time (Unix) the last failed backup Job failed",
            self.last_failure.clone(),
        );
        registry.register(
            "backup_last_job_success",
            "1 when the most recent finished backup Job succeeded, 0 when it failed",
            self.last_job_success.clone(),
        );
        registry.register(
            "backup_last_job_duration_seconds",
            "Run time of the most recent finished backup Job",
            self.last_job_duration.clone(),
        );
    }

    /// Sets the series of one backup to `f`; a figure it does not have removes its series, so a
    /// backup deleted and created again under the same name does not show the earlier one's
    /// (the last-job series stay as they were when `f.last_job` is [`LastJob::Unknown`]).
    pub fn record(&self, labels: &BackupLabels, f: &BackupFigures) {
        for (family, value) in [
            (&self.last_success, f.last_success),
            (&self.last_failure, f.last_failure),
        ] {
            match value {
                Some(t) => {
                    family.get_or_create(labels).set(t);
                }
                None => {
                    family.remove(labels);
                }
            }
        }
        match f.last_job {
            LastJob::Finished { succeeded, secs } => {
                self.last_job_success
                    .get_or_create(labels)
                    .set(i64::from(succeeded));
                self.last_job_duration.get_or_create(labels).set(secs);
            }
            LastJob::None => {
                self.last_job_success.remove(labels);
                self.last_job_duration.remove(labels);
            }
            LastJob::Unknown => {}
        }
        if let Ok(mut known) = self.known.lock() {
            known.insert(labels.clone());
        }
    }

    /// Drops the series of every resource for which `exists` is false.
    pub fn retain(&self, exists: impl Fn(&BackupLabels) -> bool) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        known.retain(|labels| {
            if exists(labels) {
                return true;
            }
            self.last_success.remove(labels);
            self.last_failure.remove(labels);
            self.last_job_success.remove(labels);
            self.last_job_duration.remove(labels);
            false
        });
    }
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
    pub backups: BackupMetrics,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub controller_stream_errors: Family<StreamErrorLabels, Counter>,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Registry::with_prefix("backup_operator"))
    }
}

impl Metrics {
    /// Registers every metric into `registry` (which may already hold others); it is frozen
    /// afterwards.
    pub fn new(mut registry: Registry) -> Self {
        let webhook_requests = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Admission requests by webhook and HTTP status code",
            webhook_requests.clone(),
        );
        let webhook_latency = Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to 10 s: handlers answer in well under a millisecond; the apiserver gives
            // up after the webhook timeout (2 s for /mutate, 3 s for /validate), and a body
            // that trickles in is cut off after 10 s (408).
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.0, 2.5, 3.0, 5.0, 10.0,
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
            "Admission decisions by webhook, kind and decision (allowed, denied; for /mutate patched, unchanged)",
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
            "Serving certificate re-reads by result (loaded: a new certificate; unchanged; failed)",
            tls_reloads.clone(),
        );
        let tls_not_after = Gauge::default();
        registry.register(
            "tls_certificate_not_after_timestamp_seconds",
            "Expiry (Unix time) of the serving certificate in use",
            tls_not_after.clone(),
        );
        let backups = BackupMetrics::default();
        backups.register(&mut registry);
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciliations by kind and result (ok, error, abandoned: the leadership term ended during it)",
            reconciles.clone(),
        );
        let controller_stream_errors = Family::<StreamErrorLabels, Counter>::default();
        registry.register(
            "controller_stream_errors",
            "Failed lists or watches (stream=watch) and caches that never filled (stream=cache) of the leader's controllers, by kind: while they fail, changes to that kind go unnoticed",
            controller_stream_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the controller's leader Lease",
            leader.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            backups,
            reconciles,
            controller_stream_errors,
            leader,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup's series show its own figures: one without a figure (deleted and created
    /// again under the same name) loses the earlier one's series.
    #[test]
    fn a_figure_a_backup_does_not_have_is_not_exported_for_it() {
        let metrics = Metrics::new(Registry::default());
        let labels = BackupLabels {
            namespace: "ns".into(),
            kind: "VolumeBackup",
            name: "db".into(),
        };
        metrics.backups.record(
            &labels,
            &BackupFigures {
                last_success: Some(1_700_000_000),
                last_failure: Some(1_700_000_100),
                last_job: LastJob::Finished {
                    succeeded: false,
                    secs: 12.5,
                },
            },
        );
        let text = metrics.render();
        for name in [
            "backup_last_success_timestamp_seconds{",
            "backup_last_failure_timestamp_seconds{",
            "backup_last_job_success{",
            "backup_last_job_duration_seconds{",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        // Jobs that could not be read leave the Job series as they were.
        metrics.backups.record(&labels, &BackupFigures::default());
        let text = metrics.render();
        assert!(
            text.contains("backup_last_job_success{")
                && !text.contains("backup_last_success_timestamp_seconds{"),
            "{text}"
        );
        metrics.backups.record(
            &labels,
            &BackupFigures {
                last_job: LastJob::None,
                ..BackupFigures::default()
            },
        );
        let text = metrics.render();
        assert!(!text.contains("name=\"db\""), "{text}");
    }
}

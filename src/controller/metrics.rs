//! The controller's Prometheus metrics (`fanout_controller_...`; all listed in
//! `docs/metrics.md`).

use super::objects::GroupId;
use k8s_openapi::jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: String,
    /// `apply`, `delete` or `status`.
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub namespace: String,
    pub group: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    pub api_writes: Family<WriteLabels, Counter>,
    /// Bytes of the request bodies of those writes (not counted: deletions, Events).
    pub api_write_bytes: Family<WriteLabels, Counter>,
    /// Applies skipped because the cached object already had the desired body.
    pub skipped_writes: Family<WriteLabels, Counter>,
    pub endpoints_published: Family<GroupLabels, Gauge>,
    pub publish_latency: Histogram,
    pub reconcile_duration: Histogram,
    pub leader: Gauge,
    /// Times this replica won the lease and started its reconciler (a leader that keeps losing
    /// its lease, to an API outage or a slow API, shows here).
    pub leadership_acquired: Counter,
}

/// Observes the time from its creation to [`finish`](Self::finish) into `reconcile_duration`:
/// a pass that is dropped before it ends (cancelled) is not observed.
pub struct ReconcileTimer {
    started: Instant,
    histogram: Histogram,
}

impl ReconcileTimer {
    pub fn finish(self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            api_writes: Family::default(),
            api_write_bytes: Family::default(),
            skipped_writes: Family::default(),
            endpoints_published: Family::default(),
            // 5 ms .. ~80 s
            publish_latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.005, 2.0, 15,
            )),
            // 1 ms .. ~16 s
            reconcile_duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 15,
            )),
            leader: Gauge::default(),
            leadership_acquired: Counter::default(),
        };
        let registry = registry.sub_registry_with_prefix("fanout_controller");
        registry.register(
            "reconciles",
            "Reconciliations started",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by reason",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "api_writes",
            "API writes, by kind and verb",
            metrics.api_writes.clone(),
        );
        registry.register_with_unit(
            "api_write",
            "Request body bytes of API writes, by kind and verb (applies, status applies, creates; not deletions or Events)",
            prometheus_client::registry::Unit::Bytes,
            metrics.api_write_bytes.clone(),
        );
        registry.register(
            "skipped_writes",
            "Applies skipped because the object was already as desired",
            metrics.skipped_writes.clone(),
        );
        registry.register(
            "endpoints_published",
            "Ready endpoints published per group",
            metrics.endpoints_published.clone(),
        );
        registry.register_with_unit(
            "endpoint_publish_latency",
            "Time from a proxy pod turning Ready to its endpoint being written",
            prometheus_client::registry::Unit::Seconds,
            metrics.publish_latency.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconcile took, throttle wait included (passes that ended, with or without an error; not those cancelled)",
            prometheus_client::registry::Unit::Seconds,
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            metrics.leader.clone(),
        );
        registry.register(
            "leadership_acquired",
            "Times this replica won the leader lease and started its reconciler",
            metrics.leadership_acquired.clone(),
        );
        metrics
    }

    /// Counts a write and, when known, the bytes of its request body.
    pub fn write(&self, kind: &str, verb: &str, bytes: Option<u64>) {
        let labels = WriteLabels {
            kind: kind.to_string(),
            verb: verb.to_string(),
        };
        self.api_writes.get_or_create(&labels).inc();
        if let Some(bytes) = bytes {
            self.api_write_bytes.get_or_create(&labels).inc_by(bytes);
        }
    }

    /// Starts timing a reconcile (see [`ReconcileTimer`]).
    pub fn time_reconcile(&self) -> ReconcileTimer {
        ReconcileTimer {
            started: Instant::now(),
            histogram: self.reconcile_duration.clone(),
        }
    }

    fn group_labels(key: &GroupId) -> GroupLabels {
        GroupLabels {
            namespace: key.namespace.clone(),
            group: key.name.clone(),
        }
    }

    pub fn set_published(&self, key: &GroupId, endpoints: i32) {
        self.endpoints_published
            .get_or_create(&Self::group_labels(key))
            .set(i64::from(endpoints));
    }

    /// Removes the series of a deleted group.
    pub fn forget_group(&self, key: &GroupId) {
        self.endpoints_published.remove(&Self::group_labels(key));
    }

    /// Observes, for each endpoint a written slice newly published, the time since its pod
    /// turned Ready.
    pub fn observe_publish_latency(&self, ready_since: &[Timestamp], now: Timestamp) {
        for since in ready_since {
            let seconds = now.duration_since(*since).as_secs_f64();
            if seconds >= 0.0 {
                self.publish_latency.observe(seconds);
            }
        }
    }

    pub fn skipped(&self, kind: &str) {
        self.skipped_writes
            .get_or_create(&WriteLabels {
                kind: kind.to_string(),
                verb: "apply".to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_group_loses_its_series_and_reconciles_are_timed() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let key = GroupId {
            namespace: "net".into(),
            name: "updates".into(),
        };
        metrics.set_published(&key, 3);
        metrics.time_reconcile().finish();
        // A pass dropped before it ended (cancelled) is not observed.
        drop(metrics.time_reconcile());
        metrics.write("EndpointSlice", "apply", Some(1200));
        metrics.write("Event", "create", None);
        let before = crate::metrics::encode(&registry);
        assert!(
            before.contains("fanout_controller_endpoints_published{namespace=\"net\",group=\"updates\"} 3"),
            "{before}"
        );
        assert!(
            before.contains("fanout_controller_reconcile_duration_seconds_count 1"),
            "{before}"
        );
        assert!(
            before.contains(
                "fanout_controller_api_write_bytes_total{kind=\"EndpointSlice\",verb=\"apply\"} 1200"
            ),
            "{before}"
        );
        assert!(
            !before.contains("api_write_bytes_total{kind=\"Event\""),
            "{before}"
        );
        metrics.forget_group(&key);
        assert!(!crate::metrics::encode(&registry).contains("group=\"updates\""));
    }
}

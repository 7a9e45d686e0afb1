//! The controller's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
    /// Applies skipped because the cached object already had the desired body.
    pub skipped_writes: Family<WriteLabels, Counter>,
    pub endpoints_published: Family<GroupLabels, Gauge>,
    pub publish_latency: Histogram,
    pub leader: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            api_writes: Family::default(),
            skipped_writes: Family::default(),
            endpoints_published: Family::default(),
            // 5 ms .. ~80 s
            publish_latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.005, 2.0, 15,
            )),
            leader: Gauge::default(),
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
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            metrics.leader.clone(),
        );
        metrics
    }

    pub fn write(&self, kind: &str, verb: &str) {
        self.api_writes
            .get_or_create(&WriteLabels {
                kind: kind.to_string(),
                verb: verb.to_string(),
            })
            .inc();
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

//! The publisher's Prometheus metrics (`fanout_publisher_...`), kept by the socket thread and
//! the publish path; `fanout publish --http` serves them.

use super::PublisherStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// All metrics of one publisher. Cloning shares the underlying values.
#[derive(Clone, Debug)]
pub struct PublisherMetrics {
    /// Messages handed to the PUB socket.
    pub messages_sent: Counter,
    /// Messages the PUB socket refused.
    pub send_failures: Counter,
    /// Messages `try_publish` dropped because the in-process queue was full.
    pub dropped_queue_full: Counter,
    /// Messages dropped because the publisher was connected to no proxy at all (none listed
    /// yet, or the group is empty): a PUB without peers drops silently, so this is counted
    /// before the socket instead.
    pub dropped_no_proxy: Counter,
    /// Sends that found a proxy's queue (SNDHWM) full: that proxy missed the message, the
    /// others got it (`crate::nodrop`). Each time a queue filled, not each message it missed.
    pub proxy_queue_full: Counter,
    /// Membership snapshots applied to the socket.
    pub membership_updates: Counter,
    /// Proxies the socket is connected to.
    pub connected_proxies: Gauge,
    /// CURVE handshakes a proxy refused (our key not on its allow-list); each is retried.
    pub auth_refused_handshakes: Counter,
    /// Seconds from the publisher noticing a new snapshot to its connects and disconnects
    /// being issued.
    pub membership_lag: Histogram,
}

impl Default for PublisherMetrics {
    fn default() -> Self {
        Self {
            messages_sent: Counter::default(),
            send_failures: Counter::default(),
            dropped_queue_full: Counter::default(),
            dropped_no_proxy: Counter::default(),
            proxy_queue_full: Counter::default(),
            membership_updates: Counter::default(),
            connected_proxies: Gauge::default(),
            auth_refused_handshakes: Counter::default(),
            // 0.1 ms .. ~3 s
            membership_lag: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
        }
    }
}

impl PublisherMetrics {
    /// Registers every metric under the `fanout_publisher` prefix of `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("fanout_publisher");
        registry.register(
            "sent_messages",
            "Messages handed to the PUB socket",
            self.messages_sent.clone(),
        );
        registry.register(
            "send_failures",
            "Messages the PUB socket refused",
            self.send_failures.clone(),
        );
        registry.register(
            "queue_full_dropped_messages",
            "Messages try_publish dropped because the in-process queue was full",
            self.dropped_queue_full.clone(),
        );
        registry.register(
            "no_proxy_dropped_messages",
            "Messages dropped because the publisher was connected to no proxy",
            self.dropped_no_proxy.clone(),
        );
        registry.register(
            "proxy_queue_full_events",
            "Times a proxy's queue (SNDHWM) was found full when a message was sent: that proxy missed it, the others got it",
            self.proxy_queue_full.clone(),
        );
        registry.register(
            "membership_updates",
            "Membership snapshots applied to the socket",
            self.membership_updates.clone(),
        );
        registry.register(
            "connected_proxies",
            "Proxies the publisher is connected to",
            self.connected_proxies.clone(),
        );
        registry.register(
            "auth_refused_handshakes",
            "CURVE handshakes a proxy refused (our key not on its allow-list); each is retried",
            self.auth_refused_handshakes.clone(),
        );
        registry.register_with_unit(
            "membership_lag",
            "Time from the publisher noticing a new membership to its connects and disconnects being issued",
            Unit::Seconds,
            self.membership_lag.clone(),
        );
    }

    pub fn snapshot(&self) -> PublisherStats {
        PublisherStats {
            sent: self.messages_sent.get(),
            send_errors: self.send_failures.get(),
            dropped_queue_full: self.dropped_queue_full.get(),
            dropped_no_proxy: self.dropped_no_proxy.get(),
            proxy_queue_full_events: self.proxy_queue_full.get(),
            membership_updates: self.membership_updates.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_with_its_unit() {
        let metrics = PublisherMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.messages_sent.inc_by(3);
        metrics.connected_proxies.set(2);
        metrics.membership_lag.observe(0.001);
        let text = crate::metrics::encode(&registry);
        for line in [
            "fanout_publisher_sent_messages_total 3",
            "fanout_publisher_send_failures_total 0",
            "fanout_publisher_queue_full_dropped_messages_total 0",
            "fanout_publisher_no_proxy_dropped_messages_total 0",
            "fanout_publisher_proxy_queue_full_events_total 0",
            "fanout_publisher_membership_updates_total 0",
            "fanout_publisher_connected_proxies 2",
            "fanout_publisher_auth_refused_handshakes_total 0",
            "fanout_publisher_membership_lag_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(metrics.snapshot().sent, 3);
    }
}

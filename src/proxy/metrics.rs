//! The proxy's Prometheus metrics (`fanout_proxy_...`) and the snapshot `Proxy::stats` returns.
//!
//! The forwarding thread keeps per-burst tallies and adds them to these shared atomics once
//! per burst, so the hot loop does not pay an atomic operation per message.
//!
//! Longer than 500 lines for a reason: it registers and describes every proxy metric in one place
//! (about 500 lines, most of them the metric descriptions); its tests are short.

use super::allow_lists::ListSource;
use super::auth::Refusal;
use crate::message_budget::Exceeded;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

type SideLabels = [(&'static str, &'static str); 1];
type RefusalLabels = [(&'static str, &'static str); 2];
type ReasonLabels = [(&'static str, &'static str); 1];
type SideSourceLabels = [(&'static str, &'static str); 2];
type SourceLabels = [(&'static str, &'static str); 1];

/// Why the proxy closed a peer's connection itself (besides CURVE revocation, counted with the
/// other CURVE refusals).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CutOff {
    /// A subscriber asked for more topics than one connection may hold.
    Topics,
    /// A subscriber asked for a topic longer than allowed.
    TopicBytes,
    /// libzmq held more of the peer's bytes than the per-peer bound allows.
    InFlight,
    /// The peer kept sending without completing a message.
    UnfinishedMessage,
}

impl CutOff {
    pub const ALL: [CutOff; 4] = [
        CutOff::Topics,
        CutOff::TopicBytes,
        CutOff::InFlight,
        CutOff::UnfinishedMessage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CutOff::Topics => "topics",
            CutOff::TopicBytes => "topic_bytes",
            CutOff::InFlight => "in_flight",
            CutOff::UnfinishedMessage => "unfinished_message",
        }
    }
}

/// Why a subscribe or unsubscribe was not applied.
pub const SUBSCRIPTION_REFUSALS: [&str; 3] = ["topics", "topic_bytes", "not_subscribed"];

/// The two sides of a proxy, as metric label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The XSUB socket publishers connect to.
    Publishers,
    /// The XPUB socket local subscribers connect to.
    Subscribers,
}

impl Side {
    const ALL: [Side; 2] = [Side::Publishers, Side::Subscribers];

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Publishers => "publishers",
            Side::Subscribers => "subscribers",
        }
    }

    fn labels(self) -> SideLabels {
        match self {
            Side::Publishers => [("side", "publishers")],
            Side::Subscribers => [("side", "subscribers")],
        }
    }
}

/// Counters for one side of the proxy; each is one labelled series of a family below.
#[derive(Clone, Debug, Default)]
pub struct SideMetrics {
    /// Messages (a multipart message counts once) received on this side's socket.
    pub messages_received: Counter,
    /// Frame bytes received on this side's socket.
    pub bytes_received: Counter,
    /// Messages handed to this side's socket for sending.
    pub messages_sent: Counter,
    pub bytes_sent: Counter,
    /// Messages the proxy could not hand to this side's socket (a failed send).
    pub send_failures: Counter,
    /// Times a peer's queue (high-water mark) was found full when a message was sent to it:
    /// from then until that peer read enough, libzmq dropped its messages without a trace.
    pub queue_full: Counter,
    /// Peers currently connected (monitor ACCEPTED minus DISCONNECTED).
    pub connected: Gauge,
    /// Connections that ended in a failed ZMTP handshake (garbage greeting, bad mechanism).
    pub handshake_failures: Counter,
    /// Connections that ended for any reason: a frame above the size limit, a malformed
    /// frame, a heartbeat timeout, or a peer that simply left.
    pub disconnects: Counter,
    /// Messages received on this side and refused for having too many frames.
    pub refused_frames: Counter,
    /// Messages received on this side and refused for having too many bytes in all.
    pub refused_bytes: Counter,
    /// Messages received on this side from a key no longer in the allow-list (CURVE).
    pub refused_revoked: Counter,
    /// Keys in this side's allow-list (CURVE).
    pub allow_list_keys: Gauge,
    /// Invalid lines in this side's allow-list file, skipped (CURVE).
    pub allow_list_invalid_lines: Gauge,
    /// The largest estimate, at the last check, of one TCP peer's bytes held inside libzmq.
    pub in_flight_max: Gauge,
}

#[derive(Clone, Debug, Default)]
struct Families {
    messages_received: Family<SideLabels, Counter>,
    bytes_received: Family<SideLabels, Counter>,
    messages_sent: Family<SideLabels, Counter>,
    bytes_sent: Family<SideLabels, Counter>,
    send_failures: Family<SideLabels, Counter>,
    queue_full: Family<SideLabels, Counter>,
    connected: Family<SideLabels, Gauge>,
    handshake_failures: Family<SideLabels, Counter>,
    disconnects: Family<SideLabels, Counter>,
    refused: Family<RefusalLabels, Counter>,
    auth_refused: Family<RefusalLabels, Counter>,
    allow_list_keys: Family<SideLabels, Gauge>,
    allow_list_invalid_lines: Family<SideLabels, Gauge>,
    allow_list_updates: Family<SideSourceLabels, Counter>,
    allow_list_source: Family<SourceLabels, Gauge>,
    cut_off: Family<RefusalLabels, Counter>,
    refused_subscriptions: Family<ReasonLabels, Counter>,
    in_flight_max: Family<SideLabels, Gauge>,
}

impl Families {
    fn side(&self, side: Side) -> SideMetrics {
        let labels = side.labels();
        // One statement each: the guard `get_or_create` returns holds the family's lock until
        // the end of the statement, so two lookups in one family in one expression deadlock.
        let refused_frames = self
            .refused
            .get_or_create(&[labels[0], ("reason", Exceeded::Frames.as_str())])
            .clone();
        let refused_bytes = self
            .refused
            .get_or_create(&[labels[0], ("reason", Exceeded::Bytes.as_str())])
            .clone();
        let refused_revoked = self
            .refused
            .get_or_create(&[labels[0], ("reason", "revoked_key")])
            .clone();
        SideMetrics {
            messages_received: self.messages_received.get_or_create(&labels).clone(),
            bytes_received: self.bytes_received.get_or_create(&labels).clone(),
            messages_sent: self.messages_sent.get_or_create(&labels).clone(),
            bytes_sent: self.bytes_sent.get_or_create(&labels).clone(),
            send_failures: self.send_failures.get_or_create(&labels).clone(),
            queue_full: self.queue_full.get_or_create(&labels).clone(),
            connected: self.connected.get_or_create(&labels).clone(),
            handshake_failures: self.handshake_failures.get_or_create(&labels).clone(),
            disconnects: self.disconnects.get_or_create(&labels).clone(),
            refused_frames,
            refused_bytes,
            refused_revoked,
            allow_list_keys: self.allow_list_keys.get_or_create(&labels).clone(),
            allow_list_invalid_lines: self.allow_list_invalid_lines.get_or_create(&labels).clone(),
            in_flight_max: self.in_flight_max.get_or_create(&labels).clone(),
        }
    }
}

/// All metrics of one proxy. Cloning shares the underlying values.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    families: Families,
    pub publishers: SideMetrics,
    pub subscribers: SideMetrics,
    /// Distinct topics currently subscribed upstream through this proxy.
    pub live_subscriptions: Gauge,
    /// Subscribe and unsubscribe messages forwarded upstream.
    pub subscription_messages: Counter,
    /// Subscriptions not forwarded upstream one by one because the subscription limits were
    /// reached (the proxy then subscribes upstream to everything and filters locally).
    pub subscriptions_over_limit: Counter,
    /// 1 while the proxy subscribes upstream to everything because its subscribers asked for
    /// more (or longer) topics than the limits allow.
    pub subscriptions_collapsed: Gauge,
    /// Failed requests of the watch on the allow-list ConfigMap (CURVE with
    /// `--allow-lists-configmap`), each retried.
    pub allow_list_api_errors: Counter,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        let families = Families::default();
        // Creating both series up front makes them appear (at zero) before any traffic.
        let [publishers, subscribers] = Side::ALL.map(|side| families.side(side));
        for side in Side::ALL {
            for reason in CutOff::ALL {
                drop(
                    families
                        .cut_off
                        .get_or_create(&[side.labels()[0], ("reason", reason.as_str())]),
                );
            }
        }
        for reason in SUBSCRIPTION_REFUSALS {
            drop(
                families
                    .refused_subscriptions
                    .get_or_create(&[("reason", reason)]),
            );
        }
        Self {
            families,
            publishers,
            subscribers,
            live_subscriptions: Gauge::default(),
            subscription_messages: Counter::default(),
            subscriptions_over_limit: Counter::default(),
            subscriptions_collapsed: Gauge::default(),
            allow_list_api_errors: Counter::default(),
        }
    }
}

impl ProxyMetrics {
    /// Peers refused (or cut off) on `side` for `reason` (CURVE).
    pub fn auth_refused(&self, side: Side, reason: Refusal) -> Counter {
        self.families
            .auth_refused
            .get_or_create(&[side.labels()[0], ("reason", reason.as_str())])
            .clone()
    }

    /// Connections on `side` the proxy closed for `reason`.
    pub fn cut_off(&self, side: Side, reason: CutOff) -> Counter {
        self.families
            .cut_off
            .get_or_create(&[side.labels()[0], ("reason", reason.as_str())])
            .clone()
    }

    /// Subscribes and unsubscribes not applied, for `reason` (one of [`SUBSCRIPTION_REFUSALS`]).
    pub fn refused_subscriptions(&self, reason: &'static str) -> Counter {
        self.families
            .refused_subscriptions
            .get_or_create(&[("reason", reason)])
            .clone()
    }

    pub fn allow_list_keys(&self, side: Side) -> &Gauge {
        &self.side(side).allow_list_keys
    }

    pub fn allow_list_invalid_lines(&self, side: Side) -> &Gauge {
        &self.side(side).allow_list_invalid_lines
    }

    /// Allow-lists applied on `side` from `source` (CURVE).
    pub fn allow_list_updates(&self, side: Side, source: ListSource) -> Counter {
        self.families
            .allow_list_updates
            .get_or_create(&[side.labels()[0], ("source", source.as_str())])
            .clone()
    }

    /// Marks `source` as the one the allow-lists in force come from (CURVE).
    pub fn set_allow_list_source(&self, source: ListSource) {
        for each in ListSource::ALL {
            let in_force = i64::from(each == source);
            self.families
                .allow_list_source
                .get_or_create(&[("source", each.as_str())])
                .set(in_force);
        }
    }

    /// Creates every refusal and allow-list series at zero, so that a CURVE proxy shows them
    /// before the first refusal or update; the files are the allow-lists' first source.
    pub fn enable_auth(&self) {
        for side in Side::ALL {
            for reason in Refusal::ALL {
                self.auth_refused(side, reason);
            }
            for source in ListSource::ALL {
                self.allow_list_updates(side, source);
            }
        }
        self.set_allow_list_source(ListSource::File);
    }

    pub fn side(&self, side: Side) -> &SideMetrics {
        match side {
            Side::Publishers => &self.publishers,
            Side::Subscribers => &self.subscribers,
        }
    }

    /// Registers every metric under the `fanout_proxy` prefix of `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("fanout_proxy");
        let f = &self.families;
        registry.register(
            "messages_received",
            "Messages received, by side (publishers: from publishers; subscribers: subscription and other upstream messages)",
            f.messages_received.clone(),
        );
        registry.register_with_unit(
            "received",
            "Frame bytes received, by side",
            Unit::Bytes,
            f.bytes_received.clone(),
        );
        registry.register(
            "messages_sent",
            "Messages handed to the socket of a side (subscribers: once per message, whatever the number of subscribers)",
            f.messages_sent.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Frame bytes handed to the socket of a side",
            Unit::Bytes,
            f.bytes_sent.clone(),
        );
        registry.register(
            "dropped_messages",
            "Messages the proxy could not hand to a side's socket at all",
            f.send_failures.clone(),
        );
        registry.register(
            "queue_full_events",
            "Times a peer's queue (highWaterMark) was found full: from then until that peer read enough, its messages were dropped (the other peers got them)",
            f.queue_full.clone(),
        );
        registry.register(
            "connected_peers",
            "Peers currently connected, by side",
            f.connected.clone(),
        );
        registry.register(
            "handshake_failures",
            "Peers cut off during the ZMTP handshake (garbage greeting, protocol error), by side",
            f.handshake_failures.clone(),
        );
        registry.register(
            "disconnects",
            "Connections ended, by side: peer left, heartbeat timeout, oversized or malformed frame",
            f.disconnects.clone(),
        );
        registry.register(
            "refused_messages",
            "Messages received and not forwarded, by side and reason: frames (more than the max frames), bytes (more than the max message bytes in all), revoked_key (sent with a CURVE key no longer in the allow-list)",
            f.refused.clone(),
        );
        registry.register(
            "auth_refused",
            "CURVE: peers refused or cut off, by side and reason (unknown_key, no_curve, wrong_server_key, handshake, revoked: connection closed after its key left the allow-list, malformed_zap_request)",
            f.auth_refused.clone(),
        );
        registry.register(
            "cut_off",
            "Connections the proxy closed itself, by side and reason: topics (a subscriber asked for more topics than one connection may hold), topic_bytes (a topic longer than allowed), in_flight (libzmq held more of a TCP peer's bytes than the per-peer bound), unfinished_message (a TCP peer kept sending without completing a message)",
            f.cut_off.clone(),
        );
        registry.register(
            "refused_subscriptions",
            "Subscribes and unsubscribes not applied, by reason: topics and topic_bytes (over the per-subscriber limits; the connection is closed), not_subscribed (an unsubscribe of a topic the connection does not hold)",
            f.refused_subscriptions.clone(),
        );
        registry.register_with_unit(
            "in_flight_max",
            "The largest estimate, at the last check, of one TCP peer's bytes read by libzmq and not yet received by the proxy, by side",
            Unit::Bytes,
            f.in_flight_max.clone(),
        );
        registry.register(
            "allow_list_keys",
            "CURVE: keys in the side's allow-list as last read",
            f.allow_list_keys.clone(),
        );
        registry.register(
            "allow_list_invalid_lines",
            "CURVE: lines of the side's allow-list (file or ConfigMap key) skipped as invalid",
            f.allow_list_invalid_lines.clone(),
        );
        registry.register(
            "allow_list_updates",
            "CURVE: allow-lists applied (the first included), by side and source (file: the allow-list files; api: the allow-list ConfigMap through the API)",
            f.allow_list_updates.clone(),
        );
        registry.register(
            "allow_list_source",
            "CURVE: 1 for the source of the allow-lists in force (file until the API's first list arrives, then api for good), 0 for the other",
            f.allow_list_source.clone(),
        );
        registry.register(
            "allow_list_api_errors",
            "CURVE with --allow-lists-configmap: failed requests of the watch on the allow-list ConfigMap, each retried (the lists in force stay)",
            self.allow_list_api_errors.clone(),
        );
        registry.register(
            "live_subscriptions",
            "Distinct topics currently subscribed upstream through this proxy",
            self.live_subscriptions.clone(),
        );
        registry.register(
            "subscription_messages",
            "Subscribe and unsubscribe messages forwarded upstream to publishers",
            self.subscription_messages.clone(),
        );
        registry.register(
            "subscriptions_over_limit",
            "Subscriptions beyond the limits (too many distinct topics, or a topic too long), not forwarded upstream one by one",
            self.subscriptions_over_limit.clone(),
        );
        registry.register(
            "subscriptions_collapsed",
            "1 while the proxy subscribes upstream to everything (its subscribers went over the subscription limits) and filters locally",
            self.subscriptions_collapsed.clone(),
        );
    }

    pub fn snapshot(&self) -> ProxyStats {
        let side = |m: &SideMetrics| SideStats {
            messages_received: m.messages_received.get(),
            bytes_received: m.bytes_received.get(),
            messages_sent: m.messages_sent.get(),
            bytes_sent: m.bytes_sent.get(),
            send_failures: m.send_failures.get(),
            queue_full: m.queue_full.get(),
            connected: u64::try_from(m.connected.get()).unwrap_or(0),
            handshake_failures: m.handshake_failures.get(),
            disconnects: m.disconnects.get(),
            refused: m.refused_frames.get() + m.refused_bytes.get() + m.refused_revoked.get(),
            cut_off: 0,
        };
        let cut_off = |side: Side| CutOff::ALL.iter().map(|r| self.cut_off(side, *r).get()).sum();
        ProxyStats {
            publishers: SideStats {
                cut_off: cut_off(Side::Publishers),
                ..side(&self.publishers)
            },
            subscribers: SideStats {
                cut_off: cut_off(Side::Subscribers),
                ..side(&self.subscribers)
            },
            refused_subscriptions: SUBSCRIPTION_REFUSALS
                .iter()
                .map(|r| self.refused_subscriptions(r).get())
                .sum(),
            live_subscriptions: u64::try_from(self.live_subscriptions.get()).unwrap_or(0),
            subscription_messages: self.subscription_messages.get(),
            subscriptions_over_limit: self.subscriptions_over_limit.get(),
            subscriptions_collapsed: self.subscriptions_collapsed.get() != 0,
        }
    }
}

/// Counts for one side at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SideStats {
    pub messages_received: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub send_failures: u64,
    /// Times a peer's queue was found full (its messages dropped from then until it drained).
    pub queue_full: u64,
    pub connected: u64,
    pub handshake_failures: u64,
    pub disconnects: u64,
    /// Messages refused for breaking the per-message limits (any reason).
    pub refused: u64,
    /// Connections the proxy closed itself (any [`CutOff`] reason).
    pub cut_off: u64,
}

/// A snapshot of a proxy's counters.
///
/// Downstream traffic is `publishers.messages_received` (in) and `subscribers.messages_sent`
/// (out, once per message whatever the number of subscribers); upstream traffic (subscriptions)
/// is `subscribers.messages_received` and `publishers.messages_sent`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub publishers: SideStats,
    pub subscribers: SideStats,
    pub live_subscriptions: u64,
    pub subscription_messages: u64,
    pub subscriptions_over_limit: u64,
    pub subscriptions_collapsed: bool,
    /// Subscribes and unsubscribes not applied (any reason).
    pub refused_subscriptions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_share_values_with_the_handles() {
        let metrics = ProxyMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.publishers.messages_received.inc_by(3);
        metrics.subscribers.connected.set(2);
        metrics.live_subscriptions.set(5);
        let text = crate::metrics::encode(&registry);
        assert!(
            text.contains("fanout_proxy_messages_received_total{side=\"publishers\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("fanout_proxy_connected_peers{side=\"subscribers\"} 2"),
            "{text}"
        );
        assert!(text.contains("fanout_proxy_live_subscriptions 5"), "{text}");
        assert!(
            text.contains("fanout_proxy_received_bytes_total{side=\"publishers\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("fanout_proxy_sent_bytes_total{side=\"subscribers\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("fanout_proxy_dropped_messages_total{side=\"subscribers\"} 0"),
            "{text}"
        );
        metrics.publishers.refused_bytes.inc();
        metrics.subscriptions_collapsed.set(1);
        let text = crate::metrics::encode(&registry);
        for line in [
            "fanout_proxy_refused_messages_total{side=\"publishers\",reason=\"bytes\"} 1",
            "fanout_proxy_refused_messages_total{side=\"publishers\",reason=\"frames\"} 0",
            "fanout_proxy_subscriptions_over_limit_total 0",
            "fanout_proxy_subscriptions_collapsed 1",
            "fanout_proxy_cut_off_total{side=\"publishers\",reason=\"unfinished_message\"} 0",
            "fanout_proxy_cut_off_total{side=\"subscribers\",reason=\"topics\"} 0",
            "fanout_proxy_refused_subscriptions_total{reason=\"not_subscribed\"} 0",
            "fanout_proxy_in_flight_max_bytes{side=\"publishers\"} 0",
        ] {
            assert!(text.contains(line), "no `{line}` in {text}");
        }
        let stats = metrics.snapshot();
        assert_eq!(stats.publishers.refused, 1);
        assert!(stats.subscriptions_collapsed);
        assert_eq!(stats.publishers.messages_received, 3);
        assert_eq!(stats.subscribers.connected, 2);
        assert_eq!(stats.live_subscriptions, 5);
    }
}

//! The proxy's configuration (pure).

use super::ProxyError;
pub use super::curve_server::CurveServerConfig;
use super::subscriptions::SubscriptionLimits;
use crate::message_budget::MessageLimits;
use std::time::Duration;

/// How one proxy binds and bounds its sockets.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// XSUB bind endpoints where publishers connect, e.g. `tcp://*:7100`, `tcp://127.0.0.1:0`.
    pub publishers: Vec<String>,
    /// XPUB bind endpoints where local subscribers connect: `ipc:///path/ns.name.sock`
    /// and/or `tcp://...`.
    pub subscribers: Vec<String>,
    /// Per-peer queue bound in messages (SNDHWM and RCVHWM on both sockets).
    pub hwm: i32,
    /// The largest message, all frames together, the proxy forwards; also ZMQ_MAXMSGSIZE on
    /// both sockets, so a peer sending a bigger frame is disconnected. With `hwm` it bounds
    /// what one peer's queue can hold: `hwm × max_message_bytes` bytes, at most
    /// [`MAX_QUEUED_BYTES_PER_PEER`].
    pub max_message_bytes: i64,
    /// The most frames one message may have; a message with more is dropped and counted.
    pub max_frames: u32,
    /// What subscribers may make the proxy forward upstream to every publisher.
    pub subscription_limits: SubscriptionLimits,
    /// ZMTP heartbeat interval; the timeout and the TTL announced to peers are three times it.
    /// Zero disables heartbeats.
    pub heartbeat: Duration,
    /// Permission bits of the unix socket files, 0o660 by default.
    pub socket_mode: u32,
    /// CURVE: the publisher endpoints and the subscriber tcp endpoints become CURVE servers
    /// with this key, admitting the keys of the allow-lists. `None`: no authentication.
    pub curve: Option<CurveServerConfig>,
}

/// Default per-peer queue bound (libzmq's own default).
pub const DEFAULT_HWM: i32 = 1000;
/// Default largest message: the fabric carries small control messages, and with the default
/// HWM one peer's queue holds at most 64 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: i64 = 64 << 10;
/// Default most frames per message: far above the envelope's few.
pub const DEFAULT_MAX_FRAMES: u32 = 64;
/// The most one peer's queue may hold, `hwm × max_message_bytes`: libzmq bounds queues in
/// messages only, so the byte bound comes from the pair.
pub const MAX_QUEUED_BYTES_PER_PEER: i64 = 256 << 20;
/// The smallest frame limit of the subscriber side: room for the handshake commands (a CURVE
/// INITIATE with a SUB's metadata is about 280 bytes).
pub const SUBSCRIBER_FRAME_FLOOR: i64 = 512;
/// What CURVE's MESSAGE command adds to a frame's body (name, nonce, flags and MAC): libzmq
/// checks a peer's frame against MAXMSGSIZE with it, so a frame sent over CURVE must stay this
/// much under the cap.
pub const CURVE_FRAME_EXTRA: i64 = 33;
/// What a subscription to a topic adds to it on the wire at most: the ZMTP 3.1 SUBSCRIBE
/// command name (10 bytes) and CURVE's MESSAGE wrapping.
const SUBSCRIPTION_FRAME_EXTRA: i64 = 10 + CURVE_FRAME_EXTRA;

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Default permission bits of unix socket files.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// How long shutdown waits for queued messages to leave: bounded so SIGTERM always ends.
pub const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

/// Whether `hwm` messages of `max_message_bytes` each could hold more than
/// [`MAX_QUEUED_BYTES_PER_PEER`] in one peer's queue. 0 (or -1) is libzmq's "no limit" and is
/// left to benchmarks that want lossless unbounded queues. The controller refuses a group by
/// the same rule, so its proxies never fail to start on it.
pub fn queue_bound_exceeded(hwm: i64, max_message_bytes: i64) -> bool {
    hwm > 0 && max_message_bytes > 0 && hwm.saturating_mul(max_message_bytes) > MAX_QUEUED_BYTES_PER_PEER
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            publishers: Vec::new(),
            subscribers: Vec::new(),
            hwm: DEFAULT_HWM,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_frames: DEFAULT_MAX_FRAMES,
            subscription_limits: SubscriptionLimits::default(),
            heartbeat: DEFAULT_HEARTBEAT,
            socket_mode: DEFAULT_SOCKET_MODE,
            curve: None,
        }
    }
}

impl ProxyConfig {
    /// ZMQ_MAXMSGSIZE of the subscriber side: subscribers send subscriptions, so a frame longer
    /// than a subscription to the longest allowed topic (or than a handshake command) ends the
    /// connection inside libzmq, before anything is stored.
    pub fn subscriber_frame_limit(&self) -> i64 {
        let topic = i64::try_from(self.subscription_limits.max_topic_bytes).unwrap_or(i64::MAX);
        topic
            .saturating_add(SUBSCRIPTION_FRAME_EXTRA)
            .max(SUBSCRIBER_FRAME_FLOOR)
    }

    /// ZMQ_SNDHWM of the publisher side (XSUB), in messages: what may wait to go upstream to
    /// each publisher (and, in a relay tree, to a leaf's relay). libzmq's XSUB sends every
    /// subscription it holds to a peer as soon as it connects, all at once, and drops without a
    /// word the ones past this mark; so the mark holds the whole upstream set at least,
    /// `max_topics` topics and the subscription to everything. 0 stays libzmq's "no limit".
    pub fn publisher_send_hwm(&self) -> i32 {
        if self.hwm == 0 {
            return 0;
        }
        let whole_set = self.subscription_limits.max_topics.saturating_add(1);
        self.hwm.max(i32::try_from(whole_set).unwrap_or(i32::MAX))
    }

    /// The caps on a message going upstream (subscribers to publishers): one frame, no longer
    /// than the subscriber side takes. Subscriptions are one frame; anything else a subscriber
    /// sends goes upstream within the same caps, so that what waits for one publisher
    /// ([`Self::publisher_send_hwm`] messages) stays small: with the defaults 10 001 frames of
    /// at most 512 bytes.
    pub fn upstream_message_limits(&self) -> MessageLimits {
        MessageLimits {
            max_frames: 1,
            max_bytes: u64::try_from(self.subscriber_frame_limit()).unwrap_or(u64::MAX),
        }
    }

    /// ZMQ_MAXMSGSIZE of a relay's links to its leaves (the connections its subscriber side
    /// makes): a leaf passes upstream what its own subscriber side took, frames of up to
    /// [`Self::subscriber_frame_limit`], which over a CURVE link gain CURVE's wrapping; a
    /// frame from a NULL unix-socket subscriber of the leaf would otherwise end the link.
    pub fn leaf_link_frame_limit(&self) -> i64 {
        let wrapping = if self.curve.is_some() {
            CURVE_FRAME_EXTRA
        } else {
            0
        };
        self.subscriber_frame_limit().saturating_add(wrapping)
    }

    /// Refuses configurations libzmq would reject late or interpret surprisingly.
    pub fn validate(&self) -> Result<(), ProxyError> {
        if self.publishers.is_empty() {
            return Err(ProxyError::Config(
                "at least one publisher endpoint is needed".into(),
            ));
        }
        if self.subscribers.is_empty() {
            return Err(ProxyError::Config(
                "at least one subscriber endpoint is needed".into(),
            ));
        }
        for endpoint in self.publishers.iter().chain(&self.subscribers) {
            if !(endpoint.starts_with("tcp://") || endpoint.starts_with("ipc://")) {
                return Err(ProxyError::Config(format!(
                    "endpoint {endpoint:?}: only tcp:// and ipc:// are supported"
                )));
            }
        }
        if self.hwm < 0 {
            return Err(ProxyError::Config(format!("hwm {} is negative", self.hwm)));
        }
        if self.max_message_bytes < -1 || self.max_message_bytes == 0 {
            return Err(ProxyError::Config(format!(
                "max message bytes {} must be positive (or -1 for no limit)",
                self.max_message_bytes
            )));
        }
        // hwm 0 and max message bytes -1 are libzmq's "no limit", left for benchmarks that
        // want lossless unbounded queues; with both limits set, their product is bounded.
        if queue_bound_exceeded(self.hwm.into(), self.max_message_bytes) {
            return Err(ProxyError::Config(format!(
                "hwm {} x max message bytes {} lets one peer's queue hold more than {} MiB; lower either",
                self.hwm,
                self.max_message_bytes,
                MAX_QUEUED_BYTES_PER_PEER >> 20
            )));
        }
        if self.max_frames == 0 {
            return Err(ProxyError::Config("max frames must be at least 1".into()));
        }
        if self.subscription_limits.max_topics_per_subscriber == 0 {
            return Err(ProxyError::Config(
                "max topics per subscriber must be at least 1".into(),
            ));
        }
        if self.socket_mode > 0o777 {
            return Err(ProxyError::Config(format!(
                "socket mode {:o} is not a permission mode",
                self.socket_mode
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_missing_endpoints_and_odd_values() {
        let good = ProxyConfig {
            publishers: vec!["tcp://127.0.0.1:0".into()],
            subscribers: vec!["ipc:///tmp/x.sock".into()],
            ..ProxyConfig::default()
        };
        assert!(good.validate().is_ok());
        assert!(
            ProxyConfig {
                publishers: vec![],
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ProxyConfig {
                subscribers: vec![],
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ProxyConfig {
                subscribers: vec!["inproc://x".into()],
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ProxyConfig {
                hwm: -1,
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ProxyConfig {
                max_message_bytes: 0,
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        // 1 000 x 1 MiB would let one peer queue 1 GiB.
        let too_much = ProxyConfig {
            hwm: 1000,
            max_message_bytes: 1 << 20,
            ..good.clone()
        }
        .validate();
        assert!(
            matches!(&too_much, Err(ProxyError::Config(text)) if text.contains("more than 256 MiB")),
            "{too_much:?}"
        );
        assert!(
            ProxyConfig {
                hwm: 256,
                max_message_bytes: 1 << 20,
                ..good.clone()
            }
            .validate()
            .is_ok()
        );
        assert!(
            ProxyConfig {
                max_frames: 0,
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ProxyConfig {
                subscription_limits: SubscriptionLimits {
                    max_topics_per_subscriber: 0,
                    ..SubscriptionLimits::default()
                },
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ProxyConfig {
                socket_mode: 0o1777,
                ..good
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn the_subscriber_frame_limit_fits_the_longest_subscription_and_the_handshake() {
        let with_topics = |max_topic_bytes| ProxyConfig {
            subscription_limits: SubscriptionLimits {
                max_topic_bytes,
                ..SubscriptionLimits::default()
            },
            ..ProxyConfig::default()
        };
        assert_eq!(with_topics(256).subscriber_frame_limit(), SUBSCRIBER_FRAME_FLOOR);
        assert_eq!(with_topics(1000).subscriber_frame_limit(), 1043);
        assert_eq!(with_topics(usize::MAX).subscriber_frame_limit(), i64::MAX);
        assert_eq!(with_topics(1000).leaf_link_frame_limit(), 1043);
        let curve = ProxyConfig {
            curve: Some(CurveServerConfig {
                secret: crate::curve::KeyPair::generate().expect("keys").secret,
                allow_publishers: "publishers".into(),
                allow_subscribers: None,
            }),
            ..with_topics(1000)
        };
        assert_eq!(curve.leaf_link_frame_limit(), 1043 + 33);
        assert_eq!(with_topics(usize::MAX).leaf_link_frame_limit(), i64::MAX);
    }

    #[test]
    fn the_publisher_side_holds_the_whole_upstream_set_for_a_peer_that_connects() {
        let with = |hwm, max_topics| ProxyConfig {
            hwm,
            subscription_limits: SubscriptionLimits {
                max_topics,
                ..SubscriptionLimits::default()
            },
            ..ProxyConfig::default()
        };
        assert_eq!(ProxyConfig::default().publisher_send_hwm(), 10_001);
        assert_eq!(with(50_000, 10_000).publisher_send_hwm(), 50_000);
        assert_eq!(with(1000, 10).publisher_send_hwm(), 1000);
        assert_eq!(with(0, 10_000).publisher_send_hwm(), 0, "no limit stays no limit");
        assert_eq!(with(1000, usize::MAX).publisher_send_hwm(), i32::MAX);
        assert_eq!(
            ProxyConfig::default().upstream_message_limits(),
            MessageLimits {
                max_frames: 1,
                max_bytes: 512
            }
        );
    }
}

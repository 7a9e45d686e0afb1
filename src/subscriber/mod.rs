//! The `Subscriber`: one SUB socket on one proxy, exact or prefix topic filters, loss counted per
//! publisher from the envelope's sequence numbers.
//!
//! ZeroMQ filters subscriptions by prefix, so a subscription to exact topic `foo` is sent to
//! the proxy as the prefix `foo` and every received message is filtered again here: `foobar`
//! is counted as `filtered` and never delivered. A message matching several of our filters is
//! delivered once (ZeroMQ sends it once per socket).
//!
//! The `Subscriber` is a plain synchronous type that owns its socket; use it from one thread
//! at a time (it is `Send`, not `Sync`).

pub mod command;

use crate::curve::CurveClient;
use crate::socket_options::{ClientOptions, client_socket};
use crate::wire::{self, Envelope, Parsed, PublisherId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicFilter {
    /// Exactly this topic.
    Exact(Vec<u8>),
    /// Every topic starting with these bytes (the empty prefix is everything).
    Prefix(Vec<u8>),
}

impl TopicFilter {
    pub fn exact(topic: impl Into<Vec<u8>>) -> Self {
        Self::Exact(topic.into())
    }
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Self::Prefix(prefix.into())
    }
    fn zmq_prefix(&self) -> &[u8] {
        match self {
            Self::Exact(t) | Self::Prefix(t) => t,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// RCVHWM (messages). Beyond it the proxy drops for this subscriber only.
    pub hwm: i32,
    /// ZMTP heartbeat interval towards the proxy.
    pub heartbeat: Option<Duration>,
    /// CURVE (tcp endpoints of a CURVE proxy): our key pair and the proxy's public key.
    pub curve: Option<CurveClient>,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            hwm: 100_000,
            heartbeat: Some(Duration::from_secs(5)),
            curve: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error("ZeroMQ: {0}")]
    Zmq(#[from] zmq::Error),
}

/// One delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: Vec<u8>,
    /// Payload frames (the envelope, if any, removed).
    pub payload: Vec<Vec<u8>>,
    /// Sender and sequence when the message carried a valid envelope.
    pub origin: Option<Envelope>,
}

/// Per-publisher counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherCounts {
    pub received: u64,
    /// Times a sequence jumped forward (a run of lost messages).
    pub gaps: u64,
    /// Messages missing inside those jumps.
    pub lost: u64,
    /// Messages whose sequence was not above the last one seen for their topic.
    pub out_of_order: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Messages delivered by `recv`.
    pub received: u64,
    /// Messages received from the socket but matching no filter (prefix-only matches of an
    /// exact subscription, or stragglers after an unsubscribe).
    pub filtered: u64,
    /// Delivered messages without an envelope (plain publishers).
    pub plain: u64,
    /// Delivered messages whose envelope frame was invalid (delivered as plain).
    pub malformed: u64,
    pub per_publisher: BTreeMap<PublisherId, PublisherCounts>,
}

impl SubscriberStats {
    pub fn total_lost(&self) -> u64 {
        self.per_publisher.values().map(|c| c.lost).sum()
    }
    pub fn total_gaps(&self) -> u64 {
        self.per_publisher.values().map(|c| c.gaps).sum()
    }
}

/// What a sequence number says about loss (pure; see [`GapTracker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// First message seen from this publisher on this topic; earlier ones are not counted
    /// (we may have joined late).
    First,
    InOrder,
    /// `lost` messages are missing before this one.
    Gap {
        lost: u64,
    },
    /// At or below the last sequence seen (duplicate or reordered); ignored for accounting.
    OutOfOrder,
}

/// Last sequence seen per (publisher, topic), and the loss accounting that follows from it.
#[derive(Debug, Default)]
pub struct GapTracker {
    // Nested so the per-message lookup borrows the topic instead of allocating a key.
    last: HashMap<PublisherId, HashMap<Vec<u8>, u64>>,
}

impl GapTracker {
    /// The most publishers tracked; a new one beyond it evicts one (issue 10, 0b: publisher ids
    /// and topics come from the peer, so the tracker must not grow without bound).
    pub const MAX_PUBLISHERS: usize = 1024;
    /// The most topics tracked per publisher; a new one beyond it evicts one.
    pub const MAX_TOPICS_PER_PUBLISHER: usize = 16 * 1024;

    pub fn observe(&mut self, publisher: PublisherId, topic: &[u8], sequence: u64) -> SequenceCheck {
        if !self.last.contains_key(&publisher) && self.last.len() >= Self::MAX_PUBLISHERS {
            evict_one(&mut self.last);
        }
        let topics = self.last.entry(publisher).or_default();
        match topics.get_mut(topic) {
            None => {
                if topics.len() >= Self::MAX_TOPICS_PER_PUBLISHER {
                    evict_one(topics);
                }
                topics.insert(topic.to_vec(), sequence);
                SequenceCheck::First
            }
            Some(last) if sequence <= *last => SequenceCheck::OutOfOrder,
            Some(last) => {
                let expected = *last + 1;
                *last = sequence;
                if sequence == expected {
                    SequenceCheck::InOrder
                } else {
                    SequenceCheck::Gap {
                        lost: sequence - expected,
                    }
                }
            }
        }
    }
}

/// Removes one entry (whichever the map yields first): an evicted stream restarts as `First`.
fn evict_one<K: Clone + Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if let Some(key) = map.keys().next().cloned() {
        map.remove(&key);
    }
}

/// Which received topics are delivered (pure).
#[derive(Debug, Default, Clone)]
pub struct TopicMatcher {
    exact: BTreeSet<Vec<u8>>,
    prefixes: BTreeSet<Vec<u8>>,
}

impl TopicMatcher {
    /// Adds a filter; false if it was already present.
    pub fn add(&mut self, filter: &TopicFilter) -> bool {
        match filter {
            TopicFilter::Exact(t) => self.exact.insert(t.clone()),
            TopicFilter::Prefix(p) => self.prefixes.insert(p.clone()),
        }
    }
    /// Removes a filter; false if it was not present.
    pub fn remove(&mut self, filter: &TopicFilter) -> bool {
        match filter {
            TopicFilter::Exact(t) => self.exact.remove(t),
            TopicFilter::Prefix(p) => self.prefixes.remove(p),
        }
    }
    pub fn matches(&self, topic: &[u8]) -> bool {
        self.exact.contains(topic) || self.prefixes.iter().any(|p| topic.starts_with(p))
    }
}

pub struct Subscriber {
    // The socket must drop before the context (field order).
    socket: zmq::Socket,
    _ctx: zmq::Context,
    /// Frame 0 of each received message, received into one reused message.
    frame: zmq::Message,
    endpoint: String,
    matcher: TopicMatcher,
    gaps: GapTracker,
    stats: SubscriberStats,
}

impl Subscriber {
    /// Connects a SUB socket to a proxy's subscriber endpoint (`ipc://...` or `tcp://...`).
    /// The connection is made in the background and retried by libzmq.
    pub fn connect(endpoint: &str, config: SubscriberConfig) -> Result<Self, SubscriberError> {
        let ctx = zmq::Context::new();
        let socket = client_socket(
            &ctx,
            zmq::SUB,
            &ClientOptions {
                hwm: config.hwm,
                // Nothing is sent but subscriptions: closing never waits.
                linger: Duration::ZERO,
                heartbeat: config.heartbeat,
                curve: config.curve.clone(),
            },
        )?;
        socket.connect(endpoint)?;
        Ok(Self {
            socket,
            _ctx: ctx,
            frame: zmq::Message::new(),
            endpoint: endpoint.to_string(),
            matcher: TopicMatcher::default(),
            gaps: GapTracker::default(),
            stats: SubscriberStats::default(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Adds a filter (idempotent).
    pub fn subscribe(&mut self, filter: TopicFilter) -> Result<(), SubscriberError> {
        if self.matcher.add(&filter) {
            // libzmq reference-counts SUB subscriptions, so Exact("a") and Prefix("a") each
            // hold one and removing one keeps the other.
            self.socket.set_subscribe(filter.zmq_prefix())?;
        }
        Ok(())
    }

    /// Removes a filter (no-op if absent).
    pub fn unsubscribe(&mut self, filter: &TopicFilter) -> Result<(), SubscriberError> {
        if self.matcher.remove(filter) {
            self.socket.set_unsubscribe(filter.zmq_prefix())?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the next message matching a filter. `Ok(None)` on timeout.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Delivery>, SubscriberError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Drain what is already queued without polling first (cheap when busy).
            let split = match self.socket.recv(&mut self.frame, zmq::DONTWAIT) {
                // One frame (wire version 3, or a plain single-frame message): taken apart
                // where it was received.
                Ok(()) if !self.frame.get_more() => wire::split_one(&self.frame),
                Ok(()) => {
                    // The rest of the message is already queued (libzmq delivers whole
                    // messages), so this does not wait.
                    let mut frames = vec![self.frame.to_vec()];
                    frames.extend(self.socket.recv_multipart(0)?);
                    match wire::split(frames) {
                        Some(split) => split,
                        None => continue,
                    }
                }
                Err(zmq::Error::EAGAIN) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    let ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1);
                    self.socket.poll(zmq::POLLIN, ms)?;
                    continue;
                }
                Err(zmq::Error::EINTR) => continue,
                Err(err) => return Err(err.into()),
            };
            if let Some(delivery) = self.accept(split) {
                return Ok(Some(delivery));
            }
        }
    }

    fn accept(&mut self, split: wire::Split) -> Option<Delivery> {
        let wire::Split {
            topic,
            payload,
            parsed,
        } = split;
        if !self.matcher.matches(&topic) {
            self.stats.filtered += 1;
            return None;
        }
        self.stats.received += 1;
        let origin = match parsed {
            Parsed::Enveloped { envelope } => {
                let counts = self.stats.per_publisher.entry(envelope.publisher).or_default();
                counts.received += 1;
                match self.gaps.observe(envelope.publisher, &topic, envelope.sequence) {
                    SequenceCheck::First | SequenceCheck::InOrder => {}
                    SequenceCheck::Gap { lost } => {
                        counts.gaps += 1;
                        counts.lost += lost;
                    }
                    SequenceCheck::OutOfOrder => counts.out_of_order += 1,
                }
                Some(envelope)
            }
            Parsed::Plain => {
                self.stats.plain += 1;
                None
            }
            Parsed::Malformed(err) => {
                tracing::debug!(error = %err, "malformed envelope; delivering as a plain message");
                self.stats.malformed += 1;
                None
            }
        };
        Some(Delivery {
            topic,
            payload,
            origin,
        })
    }

    pub fn stats(&self) -> &SubscriberStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PublisherId = PublisherId([1; 16]);
    const B: PublisherId = PublisherId([2; 16]);

    #[test]
    fn gaps_are_counted_per_publisher_and_topic() {
        let mut g = GapTracker::default();
        assert_eq!(g.observe(A, b"t", 5), SequenceCheck::First);
        assert_eq!(g.observe(A, b"t", 6), SequenceCheck::InOrder);
        assert_eq!(g.observe(A, b"t", 9), SequenceCheck::Gap { lost: 2 });
        assert_eq!(g.observe(A, b"t", 9), SequenceCheck::OutOfOrder);
        assert_eq!(g.observe(A, b"t", 7), SequenceCheck::OutOfOrder);
        assert_eq!(g.observe(A, b"t", 10), SequenceCheck::InOrder);
        // Another topic of the same publisher has its own sequence.
        assert_eq!(g.observe(A, b"u", 0), SequenceCheck::First);
        assert_eq!(g.observe(A, b"u", 1), SequenceCheck::InOrder);
        // Another publisher on the same topic too.
        assert_eq!(g.observe(B, b"t", 100), SequenceCheck::First);
        assert_eq!(g.observe(B, b"t", 102), SequenceCheck::Gap { lost: 1 });
    }

    #[test]
    fn forged_extreme_sequences_do_not_overflow() {
        let mut g = GapTracker::default();
        assert_eq!(g.observe(A, b"t", 0), SequenceCheck::First);
        assert_eq!(
            g.observe(A, b"t", u64::MAX),
            SequenceCheck::Gap { lost: u64::MAX - 1 }
        );
        assert_eq!(g.observe(A, b"t", u64::MAX), SequenceCheck::OutOfOrder);
        assert_eq!(g.observe(A, b"t", 0), SequenceCheck::OutOfOrder);
    }

    #[test]
    fn the_tracker_is_bounded_by_publishers_and_topics() {
        let mut g = GapTracker::default();
        for i in 0..(GapTracker::MAX_PUBLISHERS + 10) {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            g.observe(PublisherId(id), b"t", 1);
        }
        assert_eq!(g.last.len(), GapTracker::MAX_PUBLISHERS);
        for i in 0..(GapTracker::MAX_TOPICS_PER_PUBLISHER + 10) {
            g.observe(A, &(i as u64).to_le_bytes(), 1);
        }
        assert_eq!(g.last.len(), GapTracker::MAX_PUBLISHERS);
        assert_eq!(g.last[&A].len(), GapTracker::MAX_TOPICS_PER_PUBLISHER);
        // A tracked stream keeps its accounting.
        assert_eq!(g.observe(A, b"t2", 1), SequenceCheck::First);
        assert_eq!(g.observe(A, b"t2", 3), SequenceCheck::Gap { lost: 1 });
    }

    #[test]
    fn exact_never_matches_a_longer_topic() {
        let mut m = TopicMatcher::default();
        assert!(m.add(&TopicFilter::exact("foo")));
        assert!(!m.add(&TopicFilter::exact("foo")));
        assert!(m.matches(b"foo"));
        assert!(!m.matches(b"foobar"));
        assert!(!m.matches(b"fo"));
        m.add(&TopicFilter::prefix("bar"));
        assert!(m.matches(b"bar"));
        assert!(m.matches(b"barn"));
        assert!(m.remove(&TopicFilter::exact("foo")));
        assert!(!m.remove(&TopicFilter::exact("foo")));
        assert!(!m.matches(b"foo"));
    }

    #[test]
    fn empty_prefix_matches_everything() {
        let mut m = TopicMatcher::default();
        assert!(!m.matches(b""));
        m.add(&TopicFilter::prefix(""));
        assert!(m.matches(b""));
        assert!(m.matches(b"anything"));
    }
}

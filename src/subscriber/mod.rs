//! The `Subscriber`: one SUB socket on one proxy, exact or prefix topic filters, loss counted per
//! publisher from the envelope's sequence numbers.
//!
//! ZeroMQ filters subscriptions by prefix, so a subscription to exact topic `foo` is sent to
//! the proxy as the prefix `foo` and every received message is filtered again here: `foobar`
//! is counted as `filtered` and never delivered. A message matching several of our filters is
//! delivered once (ZeroMQ sends it once per socket).
//!
//! A frame of several messages (wire version 4) is checked once on arrival (filter, one gap
//! check for its first sequence) and its messages are then lent one per `recv_with` call, in
//! order, each counted as it is delivered.
//!
//! The `Subscriber` is a plain synchronous type that owns its socket; use it from one thread
//! at a time (it is `Send`, not `Sync`).
//!
//! Longer than 500 lines for a reason: over a quarter of it is the tests of the receive loop
//! and its loss accounting, which read its private state; the code, under 740 lines, is one
//! socket's owner: the receive loop, the lending of each message (one at a time from a frame
//! of several) and the gap tracking it feeds.

pub mod command;

use crate::curve::CurveClient;
use crate::socket_options::{ClientOptions, client_socket};
use crate::wire::{self, Envelope, LentPayload, Parsed, PublisherId};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
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
    /// RCVHWM (ZeroMQ messages: a frame of several messages, wire version 4, is one). Beyond it
    /// the proxy drops for this subscriber only.
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

/// One delivered message, owned (what [`Subscriber::recv`] returns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: Vec<u8>,
    /// Payload frames (the envelope, if any, removed).
    pub payload: Vec<Vec<u8>>,
    /// Sender and sequence when the message carried a valid envelope.
    pub origin: Option<Envelope>,
}

/// One delivered message, lent by [`Subscriber::recv_with`]: topic and payload borrowed from
/// the frame(s) it was received as, valid during the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRef<'a> {
    pub topic: &'a [u8],
    /// Payload frames (the envelope, if any, removed).
    pub payload: &'a [&'a [u8]],
    /// Sender and sequence when the message carried a valid envelope.
    pub origin: Option<Envelope>,
}

impl DeliveryRef<'_> {
    /// The owned copy.
    pub fn to_delivery(&self) -> Delivery {
        Delivery {
            topic: self.topic.to_vec(),
            payload: self.payload.iter().map(|part| part.to_vec()).collect(),
            origin: self.origin,
        }
    }
}

/// Per-publisher counters. Every count saturates at `u64::MAX`: the envelope comes from the
/// peer, and a forged sequence jump of `u64::MAX` must not wrap (or panic) the sum.
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

impl PublisherCounts {
    /// Counts one message with what its sequence said.
    pub fn record(&mut self, check: SequenceCheck) {
        self.received = self.received.saturating_add(1);
        match check {
            SequenceCheck::First | SequenceCheck::InOrder => {}
            SequenceCheck::Gap { lost } => {
                self.gaps = self.gaps.saturating_add(1);
                self.lost = self.lost.saturating_add(lost);
            }
            SequenceCheck::OutOfOrder => self.out_of_order = self.out_of_order.saturating_add(1),
        }
    }

    /// Adds `other` into these counts (saturating).
    fn absorb(&mut self, other: &PublisherCounts) {
        self.received = self.received.saturating_add(other.received);
        self.gaps = self.gaps.saturating_add(other.gaps);
        self.lost = self.lost.saturating_add(other.lost);
        self.out_of_order = self.out_of_order.saturating_add(other.out_of_order);
    }
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
    /// Counts per publisher id, at most [`SubscriberStats::MAX_PUBLISHERS`] of them (the ids
    /// come from the peer: a forger could send a new one with every message).
    pub per_publisher: BTreeMap<PublisherId, PublisherCounts>,
    /// The counts of publishers evicted from `per_publisher` to make room, summed, so that the
    /// totals stay true.
    pub evicted: PublisherCounts,
    /// How many publishers were evicted from `per_publisher`.
    pub evicted_publishers: u64,
}

impl SubscriberStats {
    /// The most publishers counted one by one; a new one beyond it evicts the one with the
    /// fewest messages (a forged id has one; a real publisher keeps its line).
    pub const MAX_PUBLISHERS: usize = GapTracker::MAX_PUBLISHERS;

    /// Counts one enveloped message from `publisher`.
    pub fn record(&mut self, publisher: PublisherId, check: SequenceCheck) {
        // One search for a publisher already counted (every message but its first).
        if let Some(counts) = self.per_publisher.get_mut(&publisher) {
            counts.record(check);
            return;
        }
        if self.per_publisher.len() >= Self::MAX_PUBLISHERS {
            self.evict_quietest();
        }
        self.per_publisher.entry(publisher).or_default().record(check);
    }

    fn evict_quietest(&mut self) {
        let quietest = self
            .per_publisher
            .iter()
            .min_by_key(|(_, counts)| counts.received)
            .map(|(id, _)| *id);
        if let Some(counts) = quietest.and_then(|id| self.per_publisher.remove(&id)) {
            self.evicted.absorb(&counts);
            self.evicted_publishers = self.evicted_publishers.saturating_add(1);
        }
    }

    fn total(&self, field: impl Fn(&PublisherCounts) -> u64) -> u64 {
        self.per_publisher
            .values()
            .chain(std::iter::once(&self.evicted))
            .fold(0u64, |sum, counts| sum.saturating_add(field(counts)))
    }
    pub fn total_lost(&self) -> u64 {
        self.total(|counts| counts.lost)
    }
    pub fn total_gaps(&self) -> u64 {
        self.total(|counts| counts.gaps)
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

/// Last sequence seen per (publisher, topic) "stream", and the loss accounting that follows.
///
/// Publisher ids and topics come from the peer, so what the tracker keeps is bounded in
/// entries and in bytes (issue 10, 0b): at most [`MAX_PUBLISHERS`](Self::MAX_PUBLISHERS)
/// publishers, [`MAX_TOPICS_PER_PUBLISHER`](Self::MAX_TOPICS_PER_PUBLISHER) topics each and
/// [`MAX_STREAMS`](Self::MAX_STREAMS) streams in all, each of a fixed size: a stream is kept as
/// the 64-bit SipHash of its publisher id and topic under a key random to this process (its
/// "key"), never as the topic's bytes, so a 64 KiB topic costs what a 1-byte one does. (Two
/// streams colliding would share a sequence; with a secret key a peer cannot aim for that, and
/// by chance it is 2^-64 per pair.) A new stream beyond a bound evicts one; an evicted stream
/// starts again as [`SequenceCheck::First`].
///
/// Per message: one SipHash, and none at all when the message is of the same stream as the
/// one before (the common case: one publisher, one topic), recognised by comparing the
/// publisher id and topic with the previous message's (a topic of at most
/// [`FLAT_MAX_TOPIC`](wire::FLAT_MAX_TOPIC) bytes is remembered for that).
#[derive(Debug, Default)]
pub struct GapTracker {
    /// Last sequence per stream key.
    last: HashMap<u64, u64, ByStreamKey>,
    /// Each publisher's stream keys, so that a whole publisher can be evicted at once.
    publishers: HashMap<PublisherId, HashSet<u64, ByStreamKey>>,
    stream_hasher: RandomState,
    previous: PreviousStream,
}

impl GapTracker {
    /// The most publishers tracked; a new one beyond it evicts one.
    pub const MAX_PUBLISHERS: usize = 1024;
    /// The most topics tracked per publisher; a new one beyond it evicts one of its topics.
    pub const MAX_TOPICS_PER_PUBLISHER: usize = 16 * 1024;
    /// The most (publisher, topic) streams tracked in all; a new one beyond it evicts one of the
    /// same publisher's, or a whole other publisher when it has none yet.
    pub const MAX_STREAMS: usize = 64 * 1024;

    pub fn observe(&mut self, publisher: PublisherId, topic: &[u8], sequence: u64) -> SequenceCheck {
        self.observe_span(publisher, topic, sequence, sequence).first
    }

    /// Observes the consecutive sequences `first..=last` of one stream at once (the records
    /// of a version-4 frame, which are consecutive by construction), as observing each in turn
    /// would: only the first can start a gap, the stream moves on to `last`, and when the span
    /// starts at or below what was seen (a duplicate, e.g. while a relay hands a leaf over) the
    /// records up to that point are out of order and the rest in order.
    pub fn observe_span(&mut self, publisher: PublisherId, topic: &[u8], first: u64, last: u64) -> SpanCheck {
        let last = last.max(first);
        let key = match self.previous.key_of(publisher, topic) {
            Some(key) => key,
            None => {
                let key = self.stream_hasher.hash_one((publisher, topic));
                self.previous.remember(publisher, topic, key);
                key
            }
        };
        if let Some(seen) = self.last.get_mut(&key) {
            let before = *seen;
            let first = advance(seen, first);
            *seen = (*seen).max(last);
            let replayed_through = (first == SequenceCheck::OutOfOrder).then_some(before);
            return SpanCheck {
                first,
                replayed_through,
            };
        }
        self.make_room_for_a_stream_of(publisher);
        self.publishers.entry(publisher).or_default().insert(key);
        self.last.insert(key, last);
        SpanCheck {
            first: SequenceCheck::First,
            replayed_through: None,
        }
    }

    /// Streams tracked now (at most [`MAX_STREAMS`](Self::MAX_STREAMS)).
    pub fn streams(&self) -> usize {
        self.last.len()
    }

    /// Publishers tracked now (at most [`MAX_PUBLISHERS`](Self::MAX_PUBLISHERS)).
    pub fn publishers(&self) -> usize {
        self.publishers.len()
    }

    fn make_room_for_a_stream_of(&mut self, publisher: PublisherId) {
        let publishers = self.publishers.len();
        match self.publishers.get_mut(&publisher) {
            Some(keys) if keys.len() >= Self::MAX_TOPICS_PER_PUBLISHER => evict_one(keys, &mut self.last),
            Some(_) => {}
            None if publishers >= Self::MAX_PUBLISHERS => self.evict_a_publisher_other_than(publisher),
            None => {}
        }
        if self.last.len() >= Self::MAX_STREAMS {
            match self.publishers.get_mut(&publisher) {
                Some(keys) if !keys.is_empty() => evict_one(keys, &mut self.last),
                _ => self.evict_a_publisher_other_than(publisher),
            }
        }
    }

    fn evict_a_publisher_other_than(&mut self, publisher: PublisherId) {
        let victim = self.publishers.keys().find(|id| **id != publisher).copied();
        if let Some(keys) = victim.and_then(|id| self.publishers.remove(&id)) {
            for key in keys {
                self.last.remove(&key);
            }
        }
    }
}

/// What [`GapTracker::observe_span`] says about a span of consecutive sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanCheck {
    /// The check of the span's first sequence.
    pub first: SequenceCheck,
    /// When the span started at or below what the stream had seen: the last sequence seen
    /// before it. The span's sequences up to it are out of order, the ones after it in order.
    pub replayed_through: Option<u64>,
}

impl SpanCheck {
    /// The check of the span's sequence `sequence`, the span's first being `first`.
    pub fn of(&self, first: u64, sequence: u64) -> SequenceCheck {
        match self.replayed_through {
            Some(seen) if sequence <= seen => SequenceCheck::OutOfOrder,
            _ if sequence == first => self.first,
            _ => SequenceCheck::InOrder,
        }
    }
}

/// The stream of the message observed last, to recognise the next message of the same stream
/// without hashing. Its key may have been evicted since; `observe` then finds it missing and
/// starts the stream again, as for any evicted stream.
#[derive(Debug, Default)]
struct PreviousStream {
    /// Its publisher and key; `None` before the first message, or when its topic was too long
    /// to remember.
    stream: Option<(PublisherId, u64)>,
    /// Its topic (reused, at most [`wire::FLAT_MAX_TOPIC`] bytes).
    topic: Vec<u8>,
}

impl PreviousStream {
    fn key_of(&self, publisher: PublisherId, topic: &[u8]) -> Option<u64> {
        match self.stream {
            Some((previous, key)) if previous == publisher && self.topic == topic => Some(key),
            _ => None,
        }
    }

    fn remember(&mut self, publisher: PublisherId, topic: &[u8], key: u64) {
        self.topic.clear();
        if topic.len() > wire::FLAT_MAX_TOPIC {
            self.stream = None;
            return;
        }
        self.topic.extend_from_slice(topic);
        self.stream = Some((publisher, key));
    }
}

/// Tables keyed by a stream key use it as its own hash: it is already a SipHash under this
/// process's secret key, as unpredictable to a peer as hashing it again would make it.
type ByStreamKey = BuildHasherDefault<StreamKeyHasher>;

#[derive(Debug, Default)]
struct StreamKeyHasher(u64);

impl Hasher for StreamKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; any other input is still folded in whole.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
}

/// The check for `sequence` on a stream whose last sequence is `last`, and `last` moved on.
fn advance(last: &mut u64, sequence: u64) -> SequenceCheck {
    if sequence <= *last {
        return SequenceCheck::OutOfOrder;
    }
    // `*last < sequence <= u64::MAX`, so neither line can overflow.
    let expected = *last + 1;
    *last = sequence;
    match sequence - expected {
        0 => SequenceCheck::InOrder,
        lost => SequenceCheck::Gap { lost },
    }
}

/// Evicts one of a publisher's streams (whichever its set yields first).
fn evict_one(keys: &mut HashSet<u64, ByStreamKey>, last: &mut HashMap<u64, u64, ByStreamKey>) {
    if let Some(key) = keys.iter().next().copied() {
        keys.remove(&key);
        last.remove(&key);
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
    /// The messages of a version-4 `frame` not yet delivered.
    batch: Option<PendingBatch>,
    endpoint: String,
    accounting: Accounting,
}

/// The rest of a version-4 frame (several messages of one topic) being delivered one message
/// per `recv_with` call; the frame itself stays in `Subscriber::frame` until it is done.
#[derive(Debug)]
struct PendingBatch {
    /// Where in the frame the next record starts, and where the records end.
    next: usize,
    end: usize,
    topic_len: usize,
    /// Records left (for the `filtered` count when an unsubscribe drops them).
    left: u64,
    /// The next record's envelope (its own sequence).
    envelope: Envelope,
    /// The frame's first sequence and what its span said on arrival
    /// (`GapTracker::observe_span`), from which each record's check follows.
    first: u64,
    span: SpanCheck,
}

impl PendingBatch {
    /// Lends the next record to `read` (with its accounting), or hands `read` back when there
    /// is none; `done` once the last one is taken.
    fn deliver_next<R, F: FnOnce(DeliveryRef<'_>) -> R>(
        &mut self,
        frame: &[u8],
        stats: &mut SubscriberStats,
        read: F,
    ) -> (Result<R, F>, bool) {
        let Some((topic, (payload, rest))) = frame
            .get(..self.topic_len)
            .zip(frame.get(self.next..self.end).and_then(wire::split_record))
        else {
            return (Err(read), true);
        };
        let envelope = self.envelope;
        stats.received = stats.received.saturating_add(1);
        stats.record(envelope.publisher, self.span.of(self.first, envelope.sequence));
        self.next = self.end - rest.len();
        self.left = self.left.saturating_sub(1);
        self.envelope.sequence = envelope.sequence.wrapping_add(1);
        let value = read(DeliveryRef {
            topic,
            payload: &[payload],
            origin: Some(envelope),
        });
        (Ok(value), rest.is_empty())
    }
}

/// What a subscriber decides and counts about each received message (pure).
#[derive(Debug, Default)]
struct Accounting {
    matcher: TopicMatcher,
    gaps: GapTracker,
    stats: SubscriberStats,
}

/// What [`Accounting::accept`] made of a received message.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// It matches no filter: counted as filtered, not delivered.
    Filtered,
    /// Delivered, with its origin when it carried a valid envelope.
    Deliver(Option<Envelope>),
}

impl Accounting {
    fn accept(&mut self, topic: &[u8], parsed: Parsed) -> Verdict {
        if !self.matcher.matches(topic) {
            self.stats.filtered = self.stats.filtered.saturating_add(1);
            return Verdict::Filtered;
        }
        self.stats.received = self.stats.received.saturating_add(1);
        Verdict::Deliver(match parsed {
            Parsed::Enveloped { envelope } => {
                let check = self.gaps.observe(envelope.publisher, topic, envelope.sequence);
                self.stats.record(envelope.publisher, check);
                Some(envelope)
            }
            Parsed::Plain => {
                self.stats.plain = self.stats.plain.saturating_add(1);
                None
            }
            Parsed::Malformed(err) => {
                tracing::debug!(error = %err, "malformed envelope; delivering as a plain message");
                self.stats.malformed = self.stats.malformed.saturating_add(1);
                None
            }
        })
    }

    /// Decides on a version-4 frame's `count` messages at once: `None` when its topic
    /// matches no filter (all counted as filtered), else what their span of sequences says.
    fn accept_batch(&mut self, topic: &[u8], envelope: Envelope, count: u64) -> Option<SpanCheck> {
        if !self.matcher.matches(topic) {
            self.stats.filtered = self.stats.filtered.saturating_add(count);
            return None;
        }
        let last = envelope.sequence.saturating_add(count.saturating_sub(1));
        Some(
            self.gaps
                .observe_span(envelope.publisher, topic, envelope.sequence, last),
        )
    }

    /// Counts the message of `frames` and lends it to `read` when it is delivered; hands
    /// `read` back, uncalled, when it is not (filtered, no frames, or a version-4 frame, whose
    /// messages are left in `batch` for the caller to deliver one at a time).
    fn deliver<R, F: FnOnce(DeliveryRef<'_>) -> R>(
        &mut self,
        frames: &[&[u8]],
        batch: &mut Option<PendingBatch>,
        read: F,
    ) -> Result<R, F> {
        let Some(lent) = wire::lend(frames) else {
            return Err(read);
        };
        if let (LentPayload::Batch(records), Parsed::Enveloped { envelope }, [frame]) =
            (lent.payload, &lent.parsed, frames)
        {
            let count = records.len() as u64;
            if let Some(span) = self.accept_batch(lent.topic, *envelope, count) {
                let end = frame.len() - wire::ENVELOPE_LEN;
                *batch = Some(PendingBatch {
                    next: end - records.bytes().len(),
                    end,
                    topic_len: lent.topic.len(),
                    left: count,
                    envelope: *envelope,
                    first: envelope.sequence,
                    span,
                });
            }
            return Err(read);
        }
        let Verdict::Deliver(origin) = self.accept(lent.topic, lent.parsed) else {
            return Err(read);
        };
        let cut;
        let payload = match lent.payload {
            LentPayload::Cut(part) => {
                cut = [part];
                &cut[..]
            }
            LentPayload::Frames(frames) => frames,
            // Delivered through `batch` above; not reached.
            LentPayload::Batch(_) => return Err(read),
        };
        Ok(read(DeliveryRef {
            topic: lent.topic,
            payload,
            origin,
        }))
    }
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
            batch: None,
            endpoint: endpoint.to_string(),
            accounting: Accounting::default(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Adds a filter (idempotent).
    pub fn subscribe(&mut self, filter: TopicFilter) -> Result<(), SubscriberError> {
        if self.accounting.matcher.add(&filter) {
            // libzmq reference-counts SUB subscriptions, so Exact("a") and Prefix("a") each
            // hold one and removing one keeps the other.
            self.socket.set_subscribe(filter.zmq_prefix())?;
        }
        Ok(())
    }

    /// Removes a filter (no-op if absent).
    pub fn unsubscribe(&mut self, filter: &TopicFilter) -> Result<(), SubscriberError> {
        if self.accounting.matcher.remove(filter) {
            self.socket.set_unsubscribe(filter.zmq_prefix())?;
            // The rest of a version-4 frame is filtered as its later frames will be.
            if let Some(batch) = &self.batch
                && !self
                    .accounting
                    .matcher
                    .matches(self.frame.get(..batch.topic_len).unwrap_or_default())
            {
                let filtered = &mut self.accounting.stats.filtered;
                *filtered = filtered.saturating_add(batch.left);
                self.batch = None;
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for the next message matching a filter. `Ok(None)` on timeout.
    /// Allocates the delivered topic and payload; [`recv_with`](Self::recv_with) lends them.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Delivery>, SubscriberError> {
        self.recv_with(timeout, |delivery| delivery.to_delivery())
    }

    /// Waits up to `timeout` for the next message matching a filter and lends it to `read`,
    /// returning what `read` returns; `Ok(None)` on timeout. The topic and payload are borrowed
    /// from the received frame, so a single-frame message (wire version 3, the usual one) costs
    /// no allocation here.
    pub fn recv_with<R>(
        &mut self,
        timeout: Duration,
        mut read: impl FnOnce(DeliveryRef<'_>) -> R,
    ) -> Result<Option<R>, SubscriberError> {
        // Taken at the first wait (not on entry), so a busy subscriber reads no clock per
        // message.
        let mut deadline = None;
        loop {
            // The rest of a version-4 frame first: the frame is not replaced until it is done.
            if let Some(batch) = &mut self.batch {
                let (delivered, done) = batch.deliver_next(&self.frame, &mut self.accounting.stats, read);
                if done {
                    self.batch = None;
                }
                match delivered {
                    Ok(value) => return Ok(Some(value)),
                    Err(unread) => read = unread,
                }
                continue;
            }
            // Drain what is already queued without polling first (cheap when busy).
            match self.socket.recv(&mut self.frame, zmq::DONTWAIT) {
                // One frame (wire versions 3 and 4, or a plain single-frame message): taken
                // apart where it was received.
                Ok(()) if !self.frame.get_more() => {
                    match self.accounting.deliver(&[&self.frame[..]], &mut self.batch, read) {
                        Ok(value) => return Ok(Some(value)),
                        Err(unread) => read = unread,
                    }
                }
                Ok(()) => {
                    // The rest of the message is already queued (libzmq delivers whole
                    // messages), so this does not wait.
                    let rest = self.socket.recv_multipart(0)?;
                    let frames: Vec<&[u8]> = std::iter::once(&self.frame[..])
                        .chain(rest.iter().map(Vec::as_slice))
                        .collect();
                    match self.accounting.deliver(&frames, &mut self.batch, read) {
                        Ok(value) => return Ok(Some(value)),
                        Err(unread) => read = unread,
                    }
                }
                Err(zmq::Error::EAGAIN) => {
                    let now = Instant::now();
                    let left = deadline
                        .get_or_insert(now + timeout)
                        .saturating_duration_since(now);
                    if left.is_zero() {
                        return Ok(None);
                    }
                    let ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1);
                    self.socket.poll(zmq::POLLIN, ms)?;
                }
                Err(zmq::Error::EINTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    pub fn stats(&self) -> &SubscriberStats {
        &self.accounting.stats
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
    fn the_previous_stream_is_recognised_and_anything_else_is_looked_up() {
        let mut g = GapTracker::default();
        assert_eq!(g.observe(A, b"t", 1), SequenceCheck::First);
        assert_eq!(g.observe(A, b"t", 2), SequenceCheck::InOrder);
        // Same publisher, a topic that extends the remembered one; same topic, another
        // publisher: other streams.
        assert_eq!(g.observe(A, b"tt", 1), SequenceCheck::First);
        assert_eq!(g.observe(B, b"tt", 7), SequenceCheck::First);
        assert_eq!(g.observe(A, b"t", 4), SequenceCheck::Gap { lost: 1 });
        assert_eq!(g.observe(A, b"tt", 2), SequenceCheck::InOrder);
        // A topic too long to remember is looked up every time.
        let long = vec![b'l'; wire::FLAT_MAX_TOPIC + 1];
        assert_eq!(g.observe(A, &long, 1), SequenceCheck::First);
        assert_eq!(g.observe(A, &long, 2), SequenceCheck::InOrder);
        assert_eq!(g.observe(A, &long, 2), SequenceCheck::OutOfOrder);
        assert_eq!(g.streams(), 4);
    }

    #[test]
    fn the_previous_stream_evicted_starts_again() {
        let mut g = GapTracker::default();
        assert_eq!(g.observe(A, b"t", 1), SequenceCheck::First);
        g.evict_a_publisher_other_than(B);
        assert_eq!((g.streams(), g.publishers()), (0, 0));
        // Remembered as the previous stream, but no longer tracked: not a gap of 3.
        assert_eq!(g.observe(A, b"t", 5), SequenceCheck::First);
        assert_eq!(g.observe(A, b"t", 6), SequenceCheck::InOrder);
        assert_eq!((g.streams(), g.publishers()), (1, 1));
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
            g.observe(id(i), b"t", 1);
        }
        assert_eq!(g.publishers(), GapTracker::MAX_PUBLISHERS);
        for i in 0..(GapTracker::MAX_TOPICS_PER_PUBLISHER + 10) {
            g.observe(A, &(i as u64).to_le_bytes(), 1);
        }
        assert_eq!(g.publishers(), GapTracker::MAX_PUBLISHERS);
        assert_eq!(g.publishers[&A].len(), GapTracker::MAX_TOPICS_PER_PUBLISHER);
        // A tracked stream keeps its accounting.
        assert_eq!(g.observe(A, b"t2", 1), SequenceCheck::First);
        assert_eq!(g.observe(A, b"t2", 3), SequenceCheck::Gap { lost: 1 });
    }

    fn id(i: usize) -> PublisherId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_le_bytes());
        id[15] = 0xEE;
        PublisherId(id)
    }

    #[test]
    fn streams_are_bounded_in_all_not_only_per_publisher() {
        let mut g = GapTracker::default();
        // 8 publishers x 10 000 topics would be 80 000 streams.
        for p in 0..8 {
            for t in 0..10_000u32 {
                g.observe(id(p), &t.to_le_bytes(), 1);
            }
        }
        assert_eq!(g.streams(), GapTracker::MAX_STREAMS);
        let counted: usize = g.publishers.values().map(HashSet::len).sum();
        assert_eq!(counted, g.streams(), "every stream is some publisher's");
        // A new publisher still gets tracked (another one makes room).
        assert_eq!(g.observe(B, b"t", 1), SequenceCheck::First);
        assert_eq!(g.observe(B, b"t", 2), SequenceCheck::InOrder);
        assert!(g.streams() <= GapTracker::MAX_STREAMS);
    }

    #[test]
    fn a_topic_is_kept_as_a_hash_not_its_bytes() {
        let mut g = GapTracker::default();
        let long = vec![b'x'; 64 * 1024];
        let mut other = long.clone();
        other[64 * 1024 - 1] = b'y';
        assert_eq!(g.observe(A, &long, 1), SequenceCheck::First);
        assert_eq!(g.observe(A, &other, 1), SequenceCheck::First, "a distinct topic");
        assert_eq!(g.observe(A, &long, 3), SequenceCheck::Gap { lost: 1 });
        assert_eq!(g.streams(), 2);
    }

    #[test]
    fn forged_jumps_saturate_the_counts_instead_of_overflowing() {
        let mut g = GapTracker::default();
        let mut stats = SubscriberStats::default();
        for topic in [b"a", b"b", b"c"] {
            for sequence in [0, u64::MAX] {
                let check = g.observe(A, topic, sequence);
                stats.record(A, check);
            }
        }
        let counts = stats.per_publisher[&A];
        assert_eq!((counts.received, counts.gaps, counts.lost), (6, 3, u64::MAX));
        stats.record(B, SequenceCheck::Gap { lost: u64::MAX });
        assert_eq!(stats.total_lost(), u64::MAX);
        assert_eq!(stats.total_gaps(), 4);
    }

    #[test]
    fn per_publisher_counts_are_capped_and_keep_the_busy_publishers_and_the_totals() {
        let mut stats = SubscriberStats::default();
        for _ in 0..100 {
            stats.record(A, SequenceCheck::InOrder);
        }
        stats.record(A, SequenceCheck::Gap { lost: 5 });
        let forged = SubscriberStats::MAX_PUBLISHERS + 10;
        for i in 0..forged {
            stats.record(id(i), SequenceCheck::Gap { lost: 1 });
        }
        assert_eq!(stats.per_publisher.len(), SubscriberStats::MAX_PUBLISHERS);
        assert_eq!(
            stats.per_publisher[&A].received, 101,
            "the real publisher keeps its line"
        );
        assert_eq!(stats.evicted_publishers, 11);
        let received: u64 =
            stats.per_publisher.values().map(|c| c.received).sum::<u64>() + stats.evicted.received;
        assert_eq!(received, 101 + forged as u64, "nothing is lost from the totals");
        assert_eq!(stats.total_lost(), 5 + forged as u64);
        assert_eq!(stats.total_gaps(), 1 + forged as u64);
    }

    fn batch_frame(topic: &[u8], payloads: &[&[u8]], publisher: PublisherId, sequence: u64) -> Vec<u8> {
        let bytes = payloads.iter().map(|p| p.len()).sum();
        let mut frame = vec![0; wire::batch_frame_len(topic.len(), payloads.len(), bytes)];
        let first = Envelope { publisher, sequence };
        wire::write_batch_frame(&mut frame, topic, payloads.iter().copied(), &first).expect("fits");
        frame
    }

    fn flat_frame(topic: &[u8], payload: &[u8], publisher: PublisherId, sequence: u64) -> Vec<u8> {
        let mut frame = Vec::new();
        Envelope { publisher, sequence }
            .write_flat_frame(topic, payload, &mut frame)
            .expect("short topic");
        frame
    }

    /// Delivers every message of one received frame as `recv_with` does: the frame itself,
    /// then, for version 4, its records one at a time.
    fn deliver_all(accounting: &mut Accounting, frame: &[u8]) -> Vec<(Vec<u8>, Vec<u8>, u64)> {
        let read = |d: DeliveryRef<'_>| {
            (
                d.topic.to_vec(),
                d.payload.concat(),
                d.origin.map_or(u64::MAX, |o| o.sequence),
            )
        };
        let mut batch = None;
        let mut got = Vec::new();
        if let Ok(one) = accounting.deliver(&[frame], &mut batch, read) {
            got.push(one);
        }
        while let Some(pending) = &mut batch {
            let (delivered, done) = pending.deliver_next(frame, &mut accounting.stats, read);
            got.extend(delivered.ok());
            if done {
                batch = None;
            }
        }
        got
    }

    #[test]
    fn a_version_4_frame_is_checked_once_and_delivered_a_record_at_a_time() {
        let mut accounting = Accounting::default();
        accounting.matcher.add(&TopicFilter::exact("t"));
        let frame = batch_frame(b"t", &[b"a", b"", b"c"], A, 10);
        let t = |payload: &[u8], sequence| (b"t".to_vec(), payload.to_vec(), sequence);
        assert_eq!(
            deliver_all(&mut accounting, &frame),
            vec![t(b"a", 10), t(b"", 11), t(b"c", 12)]
        );
        // The next frame starts after a hole: one gap, counted on its first record only.
        let frame = batch_frame(b"t", &[b"d", b"e"], A, 15);
        assert_eq!(
            deliver_all(&mut accounting, &frame),
            vec![t(b"d", 15), t(b"e", 16)]
        );
        // A single message after it is in order.
        let flat = flat_frame(b"t", b"f", A, 17);
        assert_eq!(deliver_all(&mut accounting, &flat), vec![t(b"f", 17)]);
        // A frame of another topic is filtered whole; a replayed frame is out of order.
        let other = batch_frame(b"tt", &[b"x", b"y"], A, 0);
        assert_eq!(deliver_all(&mut accounting, &other), vec![]);
        let replayed = batch_frame(b"t", &[b"d", b"e"], A, 15);
        assert_eq!(deliver_all(&mut accounting, &replayed).len(), 2);
        // A frame that overlaps what was seen (16, 17) and goes on (18, 19): the overlap is
        // out of order, the rest in order, and the stream moves on to 19 (20 is no gap).
        let overlapping = batch_frame(b"t", &[b"e", b"f", b"g", b"h"], A, 16);
        assert_eq!(deliver_all(&mut accounting, &overlapping).len(), 4);
        let next = flat_frame(b"t", b"i", A, 20);
        assert_eq!(deliver_all(&mut accounting, &next), vec![t(b"i", 20)]);
        let stats = &accounting.stats;
        let counts = stats.per_publisher[&A];
        assert_eq!((stats.received, stats.filtered, stats.malformed), (13, 2, 0));
        assert_eq!(
            (counts.received, counts.gaps, counts.lost, counts.out_of_order),
            (13, 1, 2, 4)
        );
        // Records that do not fill their frame: malformed, delivered whole as a plain message.
        let mut bad = batch_frame(b"t", &[b"ab"], A, 30);
        bad[2] = 9;
        accounting.matcher.add(&TopicFilter::prefix(""));
        let got = deliver_all(&mut accounting, &bad);
        assert_eq!(got, vec![(bad.clone(), Vec::new(), u64::MAX)]);
        assert_eq!(accounting.stats.malformed, 1);
    }

    #[test]
    fn unsubscribing_drops_the_rest_of_a_frame_it_no_longer_matches_as_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("ipc://{}/nobody.sock", dir.path().display());
        let mut sub = Subscriber::connect(&endpoint, SubscriberConfig::default()).unwrap();
        sub.subscribe(TopicFilter::exact("t")).unwrap();
        sub.subscribe(TopicFilter::prefix("t")).unwrap();
        let frame = batch_frame(b"t", &[b"a", b"b", b"c"], A, 0);
        sub.frame = zmq::Message::from(&frame[..]);
        let left_for_later = sub.accounting.deliver(&[&frame[..]], &mut sub.batch, |_| ());
        assert!(left_for_later.is_err() && sub.batch.is_some());
        let first = sub.recv_with(Duration::ZERO, |d| d.payload.concat()).unwrap();
        assert_eq!(first, Some(b"a".to_vec()));
        // Still matched by the prefix: the rest stays.
        sub.unsubscribe(&TopicFilter::exact("t")).unwrap();
        assert!(sub.batch.is_some());
        sub.unsubscribe(&TopicFilter::prefix("t")).unwrap();
        assert!(sub.batch.is_none());
        assert_eq!((sub.stats().received, sub.stats().filtered), (1, 2));
        assert_eq!(sub.recv(Duration::ZERO).unwrap(), None);
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

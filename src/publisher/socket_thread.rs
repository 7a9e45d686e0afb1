//! The publisher's socket thread: the only code that touches the PUB socket.

use super::auth_retry::RefusedProxies;
use super::handover::{Batch, Body, Entry, Handover, Part};
use super::metrics::PublisherMetrics;
use crate::membership::{self, Membership};
use crate::nodrop::send_counting_full_queues;
use crate::socket_monitor::{EVENT_HANDSHAKE_FAILED_AUTH, EVENT_HANDSHAKE_SUCCEEDED, MonitorEvent};
use crate::socket_options::raw_socket;
use crate::wire::{self, ENVELOPE_LEN, Envelope, PublisherId, RECORD_HEADER_LEN, RECORD_MAX_PAYLOAD};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// libzmq keeps message parts up to this size inline (its "very small message"), so sending
/// them from a slice allocates nothing; larger parts are handed over as the caller's buffer.
const SMALL_FRAME: usize = 33;
/// Messages sent between two looks at the membership, so a join or leave never waits behind a
/// long batch (at least this many: a frame of several messages is not cut, and is one send).
const MEMBERSHIP_EVERY: usize = 1024;
/// After a membership change, how long the idle socket thread keeps poking libzmq often so
/// connection set-up and teardown complete promptly.
const SETTLE: Duration = Duration::from_secs(2);

/// Everything the owning thread keeps: the socket, the membership channels, per-topic
/// sequences.
pub(super) struct SocketThread {
    pub(super) id: PublisherId,
    pub(super) socket: zmq::Socket,
    /// What to be connected to.
    pub(super) wanted: watch::Receiver<Membership>,
    /// What the socket is connected to: the one copy of that state.
    pub(super) connected: watch::Sender<Membership>,
    /// How many proxies `connected` holds, read on every send without the watch's lock.
    pub(super) proxies: usize,
    pub(super) metrics: PublisherMetrics,
    pub(super) sequences: TopicSequences,
    /// `PublisherConfig::batch_max_bytes`: the largest frame of several messages (0: none).
    pub(super) batch_max_bytes: usize,
    /// When a snapshot was last applied (for the membership lag).
    pub(super) last_applied: Instant,
    /// With CURVE: the PAIR end of the socket's monitor ([`HANDSHAKE_EVENTS`]), to retry the
    /// proxies that refuse our key (`auth_retry`).
    pub(super) handshakes: Option<zmq::Socket>,
    pub(super) refused: RefusedProxies,
}

/// The monitor events a CURVE publisher watches.
pub(super) const HANDSHAKE_EVENTS: i32 = (EVENT_HANDSHAKE_FAILED_AUTH | EVENT_HANDSHAKE_SUCCEEDED) as i32;

/// Tells the hand-over that the socket thread is gone, however it ends (a panic included), so
/// that callers get `Closed` instead of waiting for room forever.
struct EndedOnDrop(Arc<Handover>);

impl Drop for EndedOnDrop {
    fn drop(&mut self) {
        self.0.ended();
    }
}

impl SocketThread {
    pub(super) fn run(mut self, handover: Arc<Handover>, context: zmq::Context) {
        let handover = EndedOnDrop(handover);
        let mut batch = Batch::default();
        let mut changed_at = None;
        loop {
            if self.apply_wanted_membership() {
                changed_at = Some(Instant::now());
            }
            // libzmq runs a socket's side of connection teardown (after `disconnect`) and
            // set-up only when the owning thread calls into the socket. An idle publisher
            // would otherwise keep a departed proxy's TCP connection open indefinitely, so
            // poke the socket on every wake-up, and often for a while after a change.
            if let Err(err) = self.socket.get_events() {
                tracing::warn!(error = %err, "cannot process socket commands");
            }
            self.retry_refused_proxies();
            let settling = changed_at.is_some_and(|t: Instant| t.elapsed() < SETTLE);
            let idle_wait = if settling {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(200)
            };
            let signals = handover.0.take(&mut batch, idle_wait);
            if let Some(at) = signals.membership_changed_at {
                if self.apply_wanted_membership() {
                    changed_at = Some(Instant::now());
                }
                let lag = self.last_applied.saturating_duration_since(at);
                self.metrics.membership_lag.observe(lag.as_secs_f64());
            }
            self.send_batch(&mut batch, &mut changed_at);
            // Close was asked after everything in this batch was queued: all of it is sent.
            if signals.close {
                break;
            }
        }
        self.connected.send_replace(Membership::new());
        self.proxies = 0;
        self.metrics.connected_proxies.set(0);
        // Dropping the sockets then the context waits at most LINGER for unsent messages (the
        // context waits for every socket: the monitor's end too).
        drop(self.handshakes.take());
        drop(self.socket);
        drop(context);
        drop(handover);
        tracing::debug!(publisher = %self.id, "publisher closed");
    }

    fn send_batch(&mut self, batch: &mut Batch, changed_at: &mut Option<Instant>) {
        let Batch {
            arena,
            entries,
            parts,
            ..
        } = batch;
        let mut tally = Tally::default();
        let mut next = 0;
        let mut since_membership = 0;
        while next < entries.len() {
            if since_membership >= MEMBERSHIP_EVERY {
                since_membership = 0;
                tally.record(&self.metrics);
                if self.apply_wanted_membership() {
                    *changed_at = Some(Instant::now());
                }
            }
            let run = batch_run(arena, &entries[next..], self.batch_max_bytes);
            match &entries[next..next + run] {
                [entry] => self.send(arena, parts, entry, &mut tally),
                several => self.send_records(arena, several, &mut tally),
            }
            next += run;
            since_membership += run;
        }
        tally.record(&self.metrics);
    }

    /// Sends `run` (one-frame messages on one topic, from `batch_run`) as one version-4
    /// frame, never waiting, as `send` does a single message.
    fn send_records(&mut self, arena: &[u8], run: &[Entry], tally: &mut Tally) {
        let messages = run.len() as u64;
        let Some(first) = run.first() else {
            return;
        };
        let topic = &arena[first.topic()];
        let sequence = self.sequences.take(topic, messages);
        if self.proxies == 0 {
            tally.dropped_no_proxy += messages;
            return;
        }
        let payloads = || {
            run.iter()
                .filter_map(|entry| entry.flat_payload())
                .map(|range| &arena[range])
        };
        let payload_bytes = payloads().map(<[u8]>::len).sum();
        let mut frame = zmq::Message::with_size(wire::batch_frame_len(topic.len(), run.len(), payload_bytes));
        let envelope = Envelope {
            publisher: self.id,
            sequence,
        };
        if wire::write_batch_frame(&mut frame, topic, payloads(), &envelope).is_none() {
            // Not reached: `batch_run` bounds the topic and every payload.
            tally.send_failures += messages;
            tracing::warn!(messages, "cannot lay out a frame of several messages; dropped");
            return;
        }
        tally.sent_as_one(
            send_counting_full_queues(raw_socket(&mut self.socket), [frame]),
            messages,
        );
    }

    /// Applies the newest wanted membership, if it changed; true if it did.
    fn apply_wanted_membership(&mut self) -> bool {
        if !self.wanted.has_changed().unwrap_or(false) {
            return false;
        }
        let next = self.wanted.borrow_and_update().clone();
        let socket = &self.socket;
        let refused = &mut self.refused;
        self.connected.send_modify(|current| {
            let change = membership::diff(current, &next);
            for endpoint in &change.left {
                refused.forget(endpoint);
                match socket.disconnect(endpoint.as_str()) {
                    Ok(()) => tracing::info!(%endpoint, "disconnected from departed proxy"),
                    Err(err) => tracing::warn!(%endpoint, error = %err, "disconnect failed"),
                }
                current.remove(endpoint);
            }
            for endpoint in change.joined {
                match socket.connect(endpoint.as_str()) {
                    Ok(()) => {
                        tracing::info!(%endpoint, "connecting to new proxy");
                        current.insert(endpoint);
                    }
                    Err(err) => {
                        tracing::warn!(%endpoint, error = %err, "connect failed; skipping this proxy")
                    }
                }
            }
        });
        self.proxies = self.connected.borrow().len();
        self.metrics
            .connected_proxies
            .set(i64::try_from(self.proxies).unwrap_or(i64::MAX));
        self.metrics.membership_updates.inc();
        self.last_applied = Instant::now();
        true
    }

    /// Reads the handshake events libzmq queued, then connects again the proxies whose refusal
    /// is due for another attempt (`auth_retry`: libzmq itself never would).
    fn retry_refused_proxies(&mut self) {
        let Some(handshakes) = &self.handshakes else {
            return;
        };
        let now = Instant::now();
        while let Ok(frames) = handshakes.recv_multipart(zmq::DONTWAIT) {
            let Some(event) = frames.first().and_then(|frame| MonitorEvent::parse(frame)) else {
                continue;
            };
            let address = frames.get(1).and_then(|a| std::str::from_utf8(a).ok());
            let Some(endpoint) =
                address.and_then(|a| self.connected.borrow().iter().find(|e| e.as_str() == a).cloned())
            else {
                continue;
            };
            match event.code {
                EVENT_HANDSHAKE_FAILED_AUTH => {
                    self.metrics.auth_refused_handshakes.inc();
                    if self.refused.refused(endpoint.clone(), now) {
                        tracing::warn!(
                            %endpoint,
                            status = event.value,
                            retry_ms = super::auth_retry::AUTH_RETRY.as_millis(),
                            "the proxy refused our CURVE key (not on its allow-list?); retrying until it is admitted"
                        );
                    }
                }
                EVENT_HANDSHAKE_SUCCEEDED if self.refused.admitted(&endpoint) => {
                    tracing::info!(%endpoint, "the proxy admitted our CURVE key");
                }
                _ => {}
            }
        }
        for endpoint in self.refused.due(now) {
            // The refused connection has ended, but libzmq still lists its endpoint; without
            // the disconnect a second connect would add a duplicate once it is admitted.
            let _ = self.socket.disconnect(endpoint.as_str());
            if let Err(err) = self.socket.connect(endpoint.as_str()) {
                tracing::warn!(%endpoint, error = %err, "reconnecting after a refusal failed");
            }
        }
    }

    /// Sends one queued message: writes its envelope into the room kept for it in the arena
    /// and hands the frames to the socket, never waiting: a proxy whose queue is full misses
    /// it, and that is counted (`crate::nodrop`).
    fn send(&mut self, arena: &mut [u8], parts: &mut [Part], entry: &Entry, tally: &mut Tally) {
        let sequence = self.sequences.next(&arena[entry.topic()]);
        if self.proxies == 0 {
            // A PUB with no peer would drop it without a trace. The sequence still advances:
            // the message existed and is lost, as a subscriber's gap would say.
            tally.dropped_no_proxy += 1;
            return;
        }
        let envelope = Envelope {
            publisher: self.id,
            sequence,
        };
        let socket = raw_socket(&mut self.socket);
        let result = match &entry.body {
            Body::Flat {
                topic_len,
                payload_len,
            } => {
                let end = entry.topic().end + payload_len + ENVELOPE_LEN;
                arena[end - ENVELOPE_LEN..end].copy_from_slice(&envelope.flat_tail(*topic_len));
                // One copy into the message; libzmq shares it between the pipes of every proxy.
                let frame = zmq::Message::from(&arena[entry.start..end]);
                send_counting_full_queues(socket, [frame])
            }
            Body::Frames { parts: range, .. } => {
                let end = entry.topic().end + ENVELOPE_LEN;
                arena[end - ENVELOPE_LEN..end].copy_from_slice(&envelope.topic_tail());
                let frames = version_2_frames(&arena[entry.start..end], arena, &mut parts[range.clone()]);
                send_counting_full_queues(socket, frames)
            }
        };
        tally.sent_as_one(result, 1);
    }
}

/// Outcomes counted while sending, added to the metrics every `MEMBERSHIP_EVERY` messages or
/// more (a frame of several is counted whole) and
/// at the end of a batch rather than per message (each update is an atomic operation).
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    send_failures: u64,
    dropped_no_proxy: u64,
    proxy_queue_full: u64,
}

impl Tally {
    /// Counts the outcome of one send carrying `messages` messages (a frame of several
    /// counts them all; a full queue that refused it is one event).
    fn sent_as_one(&mut self, result: Result<bool, zmq::Error>, messages: u64) {
        match result {
            Ok(queue_full) => {
                self.sent += messages;
                self.proxy_queue_full += u64::from(queue_full);
            }
            Err(err) => {
                self.send_failures += messages;
                tracing::warn!(error = %err, messages, "send failed");
            }
        }
    }

    fn record(&mut self, metrics: &PublisherMetrics) {
        let Tally {
            sent,
            send_failures,
            dropped_no_proxy,
            proxy_queue_full,
        } = std::mem::take(self);
        for (counter, n) in [
            (&metrics.messages_sent, sent),
            (&metrics.send_failures, send_failures),
            (&metrics.dropped_no_proxy, dropped_no_proxy),
            (&metrics.proxy_queue_full, proxy_queue_full),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }
}

/// How many of `entries`, from the first, go in one frame: the one-frame messages that
/// follow each other on the first one's topic while the frame stays within
/// `batch_max_bytes` (wire version 4); 1 when the first goes alone. Never 0 for entries.
fn batch_run(arena: &[u8], entries: &[Entry], batch_max_bytes: usize) -> usize {
    let Some(first) = entries.first() else {
        return 0;
    };
    if batch_max_bytes == 0 || first.flat_payload().is_none() {
        return 1;
    }
    let topic = &arena[first.topic()];
    let mut frame_len = wire::batch_frame_len(topic.len(), 0, 0);
    let mut run = 0;
    for entry in entries {
        let Some(payload) = entry.flat_payload() else {
            break;
        };
        frame_len += RECORD_HEADER_LEN + payload.len();
        if payload.len() > RECORD_MAX_PAYLOAD || frame_len > batch_max_bytes || arena[entry.topic()] != *topic
        {
            break;
        }
        run += 1;
    }
    run.max(1)
}

/// A version-2 message's frames: the topic frame, then every payload part as a frame of its
/// own, made as they are sent.
fn version_2_frames<'a>(
    topic_frame: &'a [u8],
    arena: &'a [u8],
    parts: &'a mut [Part],
) -> impl Iterator<Item = zmq::Message> + 'a {
    // Copied into the message: a topic of up to 5 bytes and the envelope fit libzmq's
    // 33-byte inline small-message buffer, so this allocates nothing; a longer one allocates.
    let topic = zmq::Message::from(topic_frame);
    let payload = parts.iter_mut().map(|part| match part {
        Part::Arena(range) => zmq::Message::from(&arena[range.clone()]),
        // Inline in the message, copied per pipe: cheaper than a shared buffer.
        Part::Owned(bytes) if bytes.len() <= SMALL_FRAME => zmq::Message::from(&bytes[..]),
        // Handed over without a copy, shared by every pipe.
        Part::Owned(bytes) => zmq::Message::from(std::mem::take(bytes)),
    });
    std::iter::once(topic).chain(payload)
}

/// The next sequence number per topic (first is 0). Publishers mostly send one topic after
/// another of the same, so the current topic's counter is kept out of the map and a message on
/// it costs a comparison instead of a hash.
#[derive(Debug, Default)]
pub(super) struct TopicSequences {
    /// Next sequence of every topic but the current one.
    others: HashMap<Vec<u8>, u64>,
    /// The topic of the latest message and its next sequence.
    current: Option<(Vec<u8>, u64)>,
}

impl TopicSequences {
    /// The sequence for a message on `topic`; advances it.
    pub(super) fn next(&mut self, topic: &[u8]) -> u64 {
        self.take(topic, 1)
    }

    /// The first of `count` consecutive sequences for messages on `topic`; advances past them.
    pub(super) fn take(&mut self, topic: &[u8], count: u64) -> u64 {
        let next = match &mut self.current {
            Some((current, next)) if current[..] == *topic => next,
            slot => {
                if let Some((previous, next)) = slot.take() {
                    self.others.insert(previous, next);
                }
                let entry = self
                    .others
                    .remove_entry(topic)
                    .unwrap_or_else(|| (topic.to_vec(), 0));
                &mut slot.insert(entry).1
            }
        };
        let sequence = *next;
        *next = next.wrapping_add(count);
        sequence
    }
}

#[cfg(test)]
mod tests {
    use super::super::handover::{Batch, Payload};
    use super::{TopicSequences, batch_run};
    use crate::wire::{ENVELOPE_LEN, RECORD_HEADER_LEN, RECORD_MAX_PAYLOAD};

    #[test]
    fn queued_one_frame_messages_on_one_topic_share_a_frame_within_the_bound() {
        let mut batch = Batch::default();
        for payload in [&b"a"[..], b"bb", b"ccc"] {
            batch.push(b"t", Payload::Borrowed(payload), 1024);
        }
        batch.push(b"u", Payload::Borrowed(b"d"), 1024);
        batch.push(b"u", Payload::Owned(vec![b"e".to_vec(), b"f".to_vec()]), 1024);
        batch.push(b"u", Payload::Borrowed(b"g"), 1024);
        batch.push(b"u", Payload::Borrowed(&[0; 2000]), 1024);
        let runs = |max| {
            let mut runs = Vec::new();
            let mut next = 0;
            while next < batch.entries.len() {
                let run = batch_run(&batch.arena, &batch.entries[next..], max);
                runs.push(run);
                next += run;
            }
            runs
        };
        // Topic "t" ×3; "u" alone before a message of two parts; that one alone; "g" alone
        // before a payload above `flat_max_payload` (version 2); that one alone.
        assert_eq!(runs(8192), vec![3, 1, 1, 1, 1]);
        // Off: one a frame.
        assert_eq!(runs(0), vec![1; 7]);
        // The bound counts the whole frame: topic, record headers, payloads, envelope.
        let two = 1 + 2 * RECORD_HEADER_LEN + 1 + 2 + ENVELOPE_LEN;
        assert_eq!(runs(two), vec![2, 1, 1, 1, 1, 1]);
        assert_eq!(runs(two - 1), vec![1; 7]);
        assert_eq!(batch_run(&batch.arena, &[], 8192), 0);
    }

    #[test]
    fn a_payload_too_long_for_a_record_goes_alone() {
        let mut batch = Batch::default();
        let big = vec![0; RECORD_MAX_PAYLOAD + 1];
        batch.push(b"t", Payload::Borrowed(b"a"), usize::MAX);
        batch.push(b"t", Payload::Borrowed(&big), usize::MAX);
        batch.push(b"t", Payload::Borrowed(&big), usize::MAX);
        assert_eq!(batch_run(&batch.arena, &batch.entries, usize::MAX), 1);
        assert_eq!(batch_run(&batch.arena, &batch.entries[1..], usize::MAX), 1);
    }

    #[test]
    fn a_frame_of_several_takes_as_many_sequences() {
        let mut s = TopicSequences::default();
        assert_eq!(s.take(b"a", 3), 0);
        assert_eq!(s.next(b"a"), 3);
        assert_eq!(s.take(b"b", 5), 0);
        assert_eq!(s.take(b"a", 2), 4);
        assert_eq!(s.next(b"b"), 5);
        assert_eq!(s.next(b"a"), 6);
    }

    #[test]
    fn sequences_count_per_topic_from_zero_across_switches() {
        let mut s = TopicSequences::default();
        let got: Vec<u64> = [&b"a"[..], b"a", b"b", b"a", b"b", b"b", b"", b"a"]
            .iter()
            .map(|t| s.next(t))
            .collect();
        assert_eq!(got, vec![0, 1, 0, 2, 1, 2, 0, 3]);
    }
}

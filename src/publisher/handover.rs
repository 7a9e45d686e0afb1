//! The hand-over between `publish` callers and the socket thread: two batches swapped under one
//! mutex.
//!
//! A caller appends its message to the batch being filled: the topic and (for a payload that
//! goes into one frame with it) the payload are copied into the batch's byte arena, laid out as
//! they will be on the wire, with room left for the envelope. Once the arena, the entry list and
//! the part list have grown to their working size the hand-over allocates nothing per message.
//! The socket thread swaps the filled batch for the one it has just sent (emptied, capacity kept) and
//! sends the swapped-out batch without holding the lock, so a caller takes the lock once per
//! message (uncontended except at the instant of a swap), the socket thread once per batch, and
//! a wake-up (a futex call) happens only when the socket thread was asleep.
//!
//! Bounds: the batch being filled holds at most `messages` messages and `bytes` bytes (the
//! arena plus payload parts handed over as owned buffers); a message bigger than `bytes` is
//! accepted alone into an empty batch. So at most two batches' worth is held: the one being
//! filled and the one being sent.
//!
//! Longer than 500 lines for a reason: a third of it is tests of the hand-over between the caller
//! and the socket thread; the code, under 360 lines, is that one queue.

use crate::wire::{ENVELOPE_LEN, Layout};
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How much the batch being filled may hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) messages: usize,
    pub(super) bytes: usize,
}

/// Where one message's payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Body {
    /// Version 3: the one payload part follows the topic in the arena, then `ENVELOPE_LEN`
    /// bytes kept for the envelope, so `arena[start..end]` is the whole frame once the
    /// envelope is written. `topic_len` fits the envelope's length byte.
    Flat { topic_len: u8, payload_len: usize },
    /// Version 2: the topic then `ENVELOPE_LEN` bytes for the envelope in the arena (frame 0),
    /// the payload parts in `parts[parts]` of the batch.
    Frames { topic_len: usize, parts: Range<usize> },
}

/// One payload part sent as a frame of its own.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Part {
    /// Copied into the arena at this range.
    Arena(Range<usize>),
    /// The caller's own buffer, handed to libzmq without a copy.
    Owned(Vec<u8>),
}

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// Where its bytes start in the arena (the topic first).
    pub(super) start: usize,
    pub(super) body: Body,
}

impl Entry {
    /// The arena range of the payload of a one-frame (version 3) message; `None` for others.
    pub(super) fn flat_payload(&self) -> Option<Range<usize>> {
        match self.body {
            Body::Flat { payload_len, .. } => {
                let start = self.topic().end;
                Some(start..start + payload_len)
            }
            Body::Frames { .. } => None,
        }
    }

    /// The arena range of the topic.
    pub(super) fn topic(&self) -> Range<usize> {
        let len = match self.body {
            Body::Flat { topic_len, .. } => usize::from(topic_len),
            Body::Frames { topic_len, .. } => topic_len,
        };
        self.start..self.start + len
    }
}

/// Messages queued for the socket thread, laid out for sending.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub(super) arena: Vec<u8>,
    pub(super) entries: Vec<Entry>,
    pub(super) parts: Vec<Part>,
    /// Bytes held by `Part::Owned` buffers.
    owned_bytes: usize,
}

/// A payload as a caller hands it over.
pub(super) enum Payload<'a> {
    /// One part, borrowed: copied.
    Borrowed(&'a [u8]),
    /// The caller's parts: copied into one frame when the layout is version 3, else handed to
    /// libzmq as they are.
    Owned(Vec<Vec<u8>>),
}

impl Payload<'_> {
    /// Bytes this payload adds to a batch.
    fn len(&self) -> usize {
        match self {
            Self::Borrowed(bytes) => bytes.len(),
            Self::Owned(parts) => parts.iter().map(Vec::len).sum(),
        }
    }
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (arena and owned parts).
    pub(super) fn bytes(&self) -> usize {
        self.arena.len() + self.owned_bytes
    }

    /// Whether a message of `bytes` more bytes fits within `limits`.
    fn has_room(&self, bytes: usize, limits: Limits) -> bool {
        self.is_empty() || (self.len() < limits.messages && self.bytes() + bytes <= limits.bytes)
    }

    /// Appends one message, laid out as `Layout::of` says for `flat_max_payload`.
    pub(super) fn push(&mut self, topic: &[u8], payload: Payload<'_>, flat_max_payload: usize) {
        let start = self.arena.len();
        let layout = match &payload {
            Payload::Borrowed(bytes) => Layout::of(topic.len(), &[bytes.len()], flat_max_payload),
            Payload::Owned(parts) => match &parts[..] {
                [one] => Layout::of(topic.len(), &[one.len()], flat_max_payload),
                _ => Layout::TopicTail,
            },
        };
        self.arena.extend_from_slice(topic);
        let body = match (layout, payload) {
            (Layout::Flat { topic_len }, Payload::Borrowed(bytes)) => self.push_flat(topic_len, bytes),
            (Layout::Flat { topic_len }, Payload::Owned(parts)) => {
                let bytes = parts.first().map(Vec::as_slice).unwrap_or_default();
                self.push_flat(topic_len, bytes)
            }
            (Layout::TopicTail, payload) => {
                self.reserve_envelope();
                let first = self.parts.len();
                match payload {
                    Payload::Borrowed(bytes) if bytes.len() <= flat_max_payload => {
                        // A topic too long for version 3: the payload still goes into the
                        // arena, as a frame of its own.
                        let at = self.arena.len();
                        self.arena.extend_from_slice(bytes);
                        self.parts.push(Part::Arena(at..self.arena.len()));
                    }
                    Payload::Borrowed(bytes) => {
                        // Above the flat bound: one copy into a buffer of its own, which
                        // libzmq then takes without another.
                        self.owned_bytes += bytes.len();
                        self.parts.push(Part::Owned(bytes.to_vec()));
                    }
                    Payload::Owned(parts) => {
                        for part in parts {
                            self.owned_bytes += part.len();
                            self.parts.push(Part::Owned(part));
                        }
                    }
                }
                Body::Frames {
                    topic_len: topic.len(),
                    parts: first..self.parts.len(),
                }
            }
        };
        self.entries.push(Entry { start, body });
    }

    fn push_flat(&mut self, topic_len: u8, payload: &[u8]) -> Body {
        self.arena.extend_from_slice(payload);
        self.reserve_envelope();
        Body::Flat {
            topic_len,
            payload_len: payload.len(),
        }
    }

    fn reserve_envelope(&mut self) {
        // Overwritten by the socket thread; a copy of zeros is cheaper than `resize`'s loop.
        self.arena.extend_from_slice(&[0; ENVELOPE_LEN]);
    }

    /// Empties the batch for reuse, keeping its buffers unless one message made the arena
    /// grow far beyond the bound.
    pub(super) fn clear(&mut self, limits: Limits) {
        self.arena.clear();
        self.arena.shrink_to(limits.bytes.saturating_mul(2));
        self.entries.clear();
        self.parts.clear();
        self.owned_bytes = 0;
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// The batch is full (non-blocking publish only).
    Full,
    /// The publisher is closing or closed.
    Closed,
}

/// What the socket thread took besides a batch.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Signals {
    /// The earliest membership change noticed since the last take.
    pub(super) membership_changed_at: Option<Instant>,
    /// `close` was called: send this batch, then end.
    pub(super) close: bool,
}

struct State {
    filling: Batch,
    membership_changed_at: Option<Instant>,
    /// `close` was called: no new messages; the socket thread sends what is queued and ends.
    closing: bool,
    /// The socket thread has ended: nothing is taken any more.
    ended: bool,
    /// The socket thread waits on `work`.
    sender_asleep: bool,
    /// Callers waiting on `room`.
    waiting_for_room: usize,
}

/// The state shared by the callers and the socket thread.
pub(super) struct Handover {
    state: Mutex<State>,
    /// The socket thread waits here for messages or signals.
    work: Condvar,
    /// Blocked callers wait here for room in the batch.
    room: Condvar,
    limits: Limits,
    flat_max_payload: usize,
}

impl Handover {
    pub(super) fn new(limits: Limits, flat_max_payload: usize) -> Self {
        Self {
            state: Mutex::new(State {
                filling: Batch::default(),
                membership_changed_at: None,
                closing: false,
                ended: false,
                sender_asleep: false,
                waiting_for_room: 0,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            limits,
            flat_max_payload,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock but an allocation failure; the batch is still
        // consistent (entries are pushed last).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one message; with `wait`, waits for room while the batch is full.
    pub(super) fn push(&self, topic: &[u8], payload: Payload<'_>, wait: bool) -> Result<(), Refused> {
        let bytes = topic.len() + payload.len() + ENVELOPE_LEN;
        let mut state = self.lock();
        loop {
            if state.closing || state.ended {
                return Err(Refused::Closed);
            }
            if state.filling.has_room(bytes, self.limits) {
                break;
            }
            if !wait {
                return Err(Refused::Full);
            }
            state.waiting_for_room += 1;
            state = self.room.wait(state).unwrap_or_else(|p| p.into_inner());
            state.waiting_for_room -= 1;
        }
        state.filling.push(topic, payload, self.flat_max_payload);
        self.wake_sender(state);
        Ok(())
    }

    /// Notes a membership change for the socket thread and wakes it.
    pub(super) fn membership_changed(&self) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.ended {
            return Err(Refused::Closed);
        }
        state.membership_changed_at.get_or_insert_with(Instant::now);
        self.wake_sender(state);
        Ok(())
    }

    /// Asks the socket thread to send what is queued and end; new messages are refused.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closing = true;
        let waiting = state.waiting_for_room > 0;
        self.wake_sender(state);
        if waiting {
            self.room.notify_all();
        }
    }

    fn wake_sender(&self, mut state: MutexGuard<'_, State>) {
        let asleep = std::mem::take(&mut state.sender_asleep);
        drop(state);
        if asleep {
            self.work.notify_one();
        }
    }

    /// The socket thread's side: swaps `batch` (sent; emptied here) for the batch being
    /// filled, waiting up to `idle` when there is nothing to take.
    pub(super) fn take(&self, batch: &mut Batch, idle: Duration) -> Signals {
        batch.clear(self.limits);
        let mut state = self.lock();
        if state.filling.is_empty() && state.membership_changed_at.is_none() && !state.closing {
            state.sender_asleep = true;
            state = self
                .work
                .wait_timeout(state, idle)
                .map(|(state, _)| state)
                .unwrap_or_else(|p| p.into_inner().0);
            state.sender_asleep = false;
        }
        std::mem::swap(&mut state.filling, batch);
        let signals = Signals {
            membership_changed_at: state.membership_changed_at.take(),
            close: state.closing,
        };
        let waiting = state.waiting_for_room > 0 && !batch.is_empty();
        drop(state);
        if waiting {
            self.room.notify_all();
        }
        signals
    }

    /// The socket thread has ended: callers get `Closed` from now on.
    pub(super) fn ended(&self) {
        let mut state = self.lock();
        state.ended = true;
        state.filling.clear(self.limits);
        let waiting = state.waiting_for_room > 0;
        drop(state);
        if waiting {
            self.room.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        messages: 3,
        bytes: 1000,
    };

    #[test]
    fn a_small_single_part_is_laid_out_as_its_frame() {
        let mut batch = Batch::default();
        batch.push(b"topic", Payload::Borrowed(b"payload"), 64);
        batch.push(b"t", Payload::Owned(vec![b"owned".to_vec()]), 64);
        assert_eq!(
            batch.entries,
            vec![
                Entry {
                    start: 0,
                    body: Body::Flat {
                        topic_len: 5,
                        payload_len: 7
                    }
                },
                Entry {
                    start: 12 + ENVELOPE_LEN,
                    body: Body::Flat {
                        topic_len: 1,
                        payload_len: 5
                    }
                },
            ]
        );
        assert_eq!(&batch.arena[..12], b"topicpayload");
        assert_eq!(&batch.arena[12 + ENVELOPE_LEN..][..6], b"towned");
        assert_eq!(batch.bytes(), 12 + 6 + 2 * ENVELOPE_LEN);
        assert!(batch.parts.is_empty(), "nothing is kept apart");
        assert_eq!(batch.entries[1].topic(), 40..41);
    }

    #[test]
    fn big_parts_several_parts_and_long_topics_are_frames_of_their_own() {
        let mut batch = Batch::default();
        batch.push(b"t", Payload::Borrowed(&[1; 65]), 64);
        batch.push(b"t", Payload::Owned(vec![vec![2; 65]]), 64);
        batch.push(b"t", Payload::Owned(vec![b"a".to_vec(), b"b".to_vec()]), 64);
        batch.push(b"t", Payload::Owned(Vec::new()), 64);
        let long = [b'x'; 256];
        batch.push(&long, Payload::Borrowed(b"p"), 64);
        let frame0 = 1 + ENVELOPE_LEN;
        let bodies: Vec<_> = batch.entries.iter().map(|e| (e.start, e.body.clone())).collect();
        assert_eq!(
            bodies,
            vec![
                (
                    0,
                    Body::Frames {
                        topic_len: 1,
                        parts: 0..1
                    }
                ),
                (
                    frame0,
                    Body::Frames {
                        topic_len: 1,
                        parts: 1..2
                    }
                ),
                (
                    2 * frame0,
                    Body::Frames {
                        topic_len: 1,
                        parts: 2..4
                    }
                ),
                (
                    3 * frame0,
                    Body::Frames {
                        topic_len: 1,
                        parts: 4..4
                    }
                ),
                (
                    4 * frame0,
                    Body::Frames {
                        topic_len: 256,
                        parts: 4..5
                    }
                ),
            ]
        );
        assert_eq!(batch.parts[0], Part::Owned(vec![1; 65]));
        assert_eq!(batch.parts[1], Part::Owned(vec![2; 65]));
        // The long topic's small payload is copied after its frame 0 in the arena.
        let payload_at = 4 * frame0 + 256 + ENVELOPE_LEN;
        assert_eq!(batch.parts[4], Part::Arena(payload_at..payload_at + 1));
        assert_eq!(&batch.arena[payload_at..], b"p");
        assert_eq!(batch.bytes(), payload_at + 1 + 65 + 65 + 2);
        batch.clear(LIMITS);
        assert!(batch.is_empty() && batch.parts.is_empty() && batch.bytes() == 0);
    }

    #[test]
    fn the_filling_batch_is_bounded_and_refuses_when_full_or_closed() {
        let handover = Handover::new(LIMITS, 64);
        for _ in 0..3 {
            assert_eq!(handover.push(b"t", Payload::Borrowed(b"x"), false), Ok(()));
        }
        assert_eq!(
            handover.push(b"t", Payload::Borrowed(b"x"), false),
            Err(Refused::Full)
        );
        let mut batch = Batch::default();
        let signals = handover.take(&mut batch, Duration::ZERO);
        assert_eq!(batch.len(), 3);
        assert!(!signals.close && signals.membership_changed_at.is_none());
        // A message over the byte bound goes alone into an empty batch, and nothing after it.
        assert_eq!(handover.push(b"t", Payload::Borrowed(&[0; 2000]), false), Ok(()));
        assert_eq!(
            handover.push(b"t", Payload::Borrowed(b"x"), false),
            Err(Refused::Full)
        );
        handover.take(&mut batch, Duration::ZERO);
        assert_eq!(batch.len(), 1);
        handover.membership_changed().unwrap();
        handover.close();
        assert_eq!(
            handover.push(b"t", Payload::Borrowed(b"x"), true),
            Err(Refused::Closed)
        );
        let signals = handover.take(&mut batch, Duration::ZERO);
        assert!(signals.close && signals.membership_changed_at.is_some());
        assert!(batch.is_empty());
        handover.ended();
        assert_eq!(handover.membership_changed(), Err(Refused::Closed));
    }

    #[test]
    fn a_blocked_caller_waits_for_room_then_queues() {
        let handover = std::sync::Arc::new(Handover::new(LIMITS, 64));
        for _ in 0..3 {
            handover.push(b"t", Payload::Borrowed(b"x"), true).unwrap();
        }
        let caller = {
            let handover = handover.clone();
            std::thread::spawn(move || handover.push(b"t", Payload::Borrowed(b"late"), true))
        };
        let mut batch = Batch::default();
        let mut taken = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while taken < 4 {
            assert!(Instant::now() < deadline, "the blocked caller never queued");
            handover.take(&mut batch, Duration::from_millis(10));
            taken += batch.len();
        }
        assert_eq!(caller.join().unwrap(), Ok(()));
        assert_eq!(&batch.arena[..5], b"tlate");
    }

    #[test]
    fn a_blocked_caller_is_released_by_close() {
        let handover = std::sync::Arc::new(Handover::new(LIMITS, 64));
        for _ in 0..3 {
            handover.push(b"t", Payload::Borrowed(b"x"), true).unwrap();
        }
        let caller = {
            let handover = handover.clone();
            std::thread::spawn(move || handover.push(b"t", Payload::Borrowed(b"x"), true))
        };
        while handover.lock().waiting_for_room == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        handover.close();
        assert_eq!(caller.join().unwrap(), Err(Refused::Closed));
    }
}

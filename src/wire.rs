//! The message envelope our `Publisher` adds so that subscribers can count loss per publisher,
//! and the three ways a message carries it.
//!
//! Every message is a ZeroMQ message whose frame 0 **starts with the topic** (ZeroMQ
//! subscriptions match a prefix of frame 0; the proxy forwards messages unchanged and never
//! parses them). The envelope is 28 bytes:
//!
//! ```text
//! offset  size  field
//! 0       2     magic         0xFA 0x0F
//! 2       1     version       4, 3, 2 or 1 (below)
//! 3       1     topic length  versions 3 and 4: the topic's length in bytes (0..=255);
//!                             versions 1 and 2: 0 (reserved, ignored when decoding)
//! 4       16    publisher id  random per Publisher instance
//! 20      8     sequence      u64 big-endian, per (publisher, topic), first is 0;
//!                             version 4: the first record's (the others follow it by one)
//! ```
//!
//! **Version 4, several messages of one topic in one frame** (what our publisher writes when
//! its socket thread finds two or more messages queued one after the other on the same topic,
//! each of which would go as version 3 with a payload of at most 65 535 bytes, the whole frame
//! within `PublisherConfig::batch_max_bytes`; it never waits for a second message to come, so
//! a message sent alone is never delayed by this):
//!
//! ```text
//! frame 0   topic ‖ record ‖ record ‖ ... ‖ envelope (28 bytes, version 4, topic length)
//! record    payload length (u16 big-endian) ‖ payload
//! ```
//!
//! The records fill the frame between topic and envelope exactly; record `i` is the message
//! with sequence `envelope.sequence + i`. A frame with a version-4 tail whose records do not
//! fill it exactly (or whose last sequence would pass `u64::MAX`) is malformed: counted, and
//! delivered as a plain message with its bytes intact.
//!
//! **Version 3, one frame** (what our publisher writes for a message of exactly one payload
//! part of at most `PublisherConfig::flat_max_payload` bytes under a topic of at most 255
//! bytes, i.e. nearly always):
//!
//! ```text
//! frame 0   topic ‖ payload ‖ envelope (28 bytes, the topic's length in byte 3)
//! ```
//!
//! **Version 2, the envelope as the topic frame's tail** (what it writes otherwise: no payload
//! part, several parts, a part above `flat_max_payload`, or a topic longer than 255 bytes):
//!
//! ```text
//! frame 0   topic ‖ envelope (28 bytes)
//! frame 1.. payload parts (zero or more, untouched; a big part is handed to libzmq uncopied)
//! ```
//!
//! **Version 1** (earlier releases, still read for a mixed rollout): frame 0 the topic alone,
//! frame 1 exactly the 28-byte envelope, frames 2.. payload.
//!
//! Why several messages in one frame: below a few hundred bytes, what a message costs is
//! libzmq's per-message work (an allocation for every frame over 33 bytes, a pipe write and
//! read at every hop, a wake-up when a pipe was empty), not its bytes; a frame of 100
//! messages pays that once. Bare libzmq sends one message per frame, which is why version 4
//! puts the fanout path ahead of it on small messages (BENCHMARKS.md, "Several messages a
//! frame"). A publisher that never has two messages queued at once sends versions 3 and 2
//! only. Turn it off (`batch_max_bytes` 0, `fanout publish --batch-bytes 0`) while
//! subscribers of a release before version 4 are still running (they would deliver a
//! version-4 frame as one plain message): subscribers first, then publishers.
//!
//! Why one frame: libzmq moves every frame as a message part of its own through every pipe of
//! every hop (the publisher's pipe per proxy, the proxy's two sockets, the subscriber), so the
//! second frame of version 2 was close to half the per-message work for small messages
//! (BENCHMARKS.md). Version 3 keeps the topic at the front so prefix subscriptions work
//! unchanged; the envelope goes at the end, where a subscriber finds it from the frame's length
//! alone, and carries the topic's length so the subscriber can cut the topic from the payload.
//! Putting the payload in one frame with the topic means copying it; measured up to 256 KiB
//! that copy never cost more than the second frame (BENCHMARKS.md, "Where the copy stops
//! paying"), so the bound, `flat_max_payload`, defaults to 65 220 bytes: the most that keeps
//! the one frame, with a topic of 255 bytes, the envelope and CURVE's 33 bytes of box, within a
//! group's default message cap of 64 KiB (the proxy ends a connection that sends a single frame above the cap, where it
//! only drops and counts a bigger message of several frames). Above it a payload the caller
//! owns is handed to libzmq uncopied as version 2.
//! Version 3 says "exactly one payload part": a message with none is written as version 2, so
//! a subscriber always gets back the parts that were sent.
//!
//! How a subscriber tells them apart (`lend`, `split`): a message of one frame whose last
//! 28 bytes are a version-3 envelope with a topic length that fits is version 3, a version-4
//! one is version 4 (or malformed, above); otherwise
//! frame 0 ending in a version-2 envelope is version 2; otherwise a version-1 envelope as
//! frame 1; otherwise a plain message. A version-3 or version-2 tail is recognised by its
//! magic and version byte (and, for version 3, a topic length within the frame). 0xFA never
//! occurs in UTF-8 text, so a plain publisher's UTF-8 topic or text payload is never mistaken
//! for an envelope. Binary data can be: the last 28 bytes of a plain single-frame message (or
//! of a plain message's binary frame 0) start with the three bytes of a valid tail with
//! probability 2^-24 for random bytes, and such a message would be delivered with its topic
//! cut short and a made-up origin. Frames after frame 0 of a plain multi-frame message are
//! never read as an envelope except a 28-byte frame 1 (version 1). A message that carries the
//! magic where a version-1 envelope would be but is not a valid one (wrong length, unknown
//! version) is "malformed": counted by the subscriber and delivered as a plain message, all
//! bytes intact.
//!
//! Plain libzmq peers: a plain PUB's `[topic, payload...]` is delivered as a plain message
//! (`Parsed::Plain`). A plain SUB subscribed to `foo` receives our messages as they are on the
//! wire: for one frame `f` whose last 28 bytes `e` start `FA 0F 03`, the topic is
//! `f[..e[3]]` and the payload `f[e[3]..len-28]` (for example in Python:
//! `t = f[-25]; topic, payload = f[:t], f[t:-28]`); for one frame ending `FA 0F 04 ..`, the
//! topic is `f[..e[3]]` and the payloads are the records of `f[e[3]..len-28]` (Python:
//! `b = f[t:-28]; while b: n = int.from_bytes(b[:2], 'big'); payload, b = b[2:2+n], b[2+n:]`);
//! for frame 0 ending `FA 0F 02 ..`, the topic
//! is frame 0 without its last 28 bytes and the payload is frames 1... A plain SUB that only
//! wants the payload of version-3 messages and knows its topic can also drop
//! `len(topic)` bytes from the front and 28 from the back.
//!
//! Longer than 500 lines for a reason: over a third of it is the tests of every layout and
//! every malformed input; the code is the one parser and writer of the wire contract, under 580
//! lines, most of them this contract's text.

use std::fmt;

/// First two bytes of every envelope.
pub const MAGIC: [u8; 2] = [0xFA, 0x0F];
/// The envelope as the tail of a single frame holding the topic and several payloads.
pub const VERSION_BATCH: u8 = 4;
/// The envelope as the tail of a single frame holding the topic and one payload part.
pub const VERSION_FLAT: u8 = 3;
/// The envelope as the tail of the topic frame, payload parts in frames of their own.
pub const VERSION_TOPIC_TAIL: u8 = 2;
/// The earliest version, still read: the envelope as frame 1 of its own.
pub const VERSION_SEPARATE_FRAME: u8 = 1;
/// Exact length of an envelope (every version).
pub const ENVELOPE_LEN: usize = 28;
/// The longest topic a version-3 frame carries (its length is one byte of the envelope).
pub const FLAT_MAX_TOPIC: usize = u8::MAX as usize;
/// Bytes before each payload in a version-4 frame: the payload's length, u16 big-endian.
pub const RECORD_HEADER_LEN: usize = 2;
/// The largest payload a version-4 record carries.
pub const RECORD_MAX_PAYLOAD: usize = u16::MAX as usize;
/// Byte of the envelope holding the version.
const VERSION_BYTE: usize = 2;
/// Byte of the envelope holding the topic length (version 3) or 0 (versions 1 and 2).
const TOPIC_LEN_BYTE: usize = 3;

/// Random identity of one `Publisher` instance.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublisherId(pub [u8; 16]);

impl PublisherId {
    /// A fresh random id (from the OS random source).
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for PublisherId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PublisherId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublisherId({self})")
    }
}

/// Who sent a message and its place in that publisher's sequence for the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub publisher: PublisherId,
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not an envelope at all: a plain message.
    #[error("frame does not start with the envelope magic")]
    NoMagic,
    #[error(
        "envelope version {0} is not supported as a frame of its own (only version {VERSION_SEPARATE_FRAME} is)"
    )]
    UnsupportedVersion(u8),
    #[error("envelope is {0} bytes, expected {ENVELOPE_LEN}")]
    BadLength(usize),
    /// A version-4 tail whose records do not fill the frame exactly.
    #[error(
        "version-{VERSION_BATCH} records do not fill their frame (a record overruns it, or it holds none)"
    )]
    BadRecords,
    /// A version-4 frame whose last record's sequence would pass `u64::MAX`.
    #[error("version-{VERSION_BATCH} sequences overflow: {count} records from sequence {first}")]
    SequenceOverflow { first: u64, count: u64 },
}

/// How a message is laid out on the wire (the choice is [`Layout::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Version 3: `topic ‖ payload ‖ envelope` in one frame; the topic's length fits a byte.
    Flat { topic_len: u8 },
    /// Version 2: `topic ‖ envelope`, then every payload part as a frame of its own.
    TopicTail,
}

impl Layout {
    /// The layout of a message with `topic_len` bytes of topic and payload parts of
    /// `part_lens` bytes: one frame when there is exactly one part of at most
    /// `flat_max_payload` bytes and the topic fits version 3, the topic-tail layout otherwise.
    pub fn of(topic_len: usize, part_lens: &[usize], flat_max_payload: usize) -> Self {
        match (u8::try_from(topic_len), part_lens) {
            (Ok(topic_len), [payload]) if *payload <= flat_max_payload => Self::Flat { topic_len },
            _ => Self::TopicTail,
        }
    }
}

impl Envelope {
    /// The envelope with the given version byte, byte 3 zero (versions 1 and 2, and tests).
    pub fn encode_version(&self, version: u8) -> [u8; ENVELOPE_LEN] {
        self.encode_with(version, 0)
    }

    /// The tail of a version-3 frame whose topic is `topic_len` bytes.
    pub fn flat_tail(&self, topic_len: u8) -> [u8; ENVELOPE_LEN] {
        self.encode_with(VERSION_FLAT, topic_len)
    }

    /// The tail of a version-4 frame whose topic is `topic_len` bytes (`self.sequence` is the
    /// first record's).
    pub fn batch_tail(&self, topic_len: u8) -> [u8; ENVELOPE_LEN] {
        self.encode_with(VERSION_BATCH, topic_len)
    }

    /// The tail of a version-2 topic frame.
    pub fn topic_tail(&self) -> [u8; ENVELOPE_LEN] {
        self.encode_with(VERSION_TOPIC_TAIL, 0)
    }

    fn encode_with(&self, version: u8, topic_len: u8) -> [u8; ENVELOPE_LEN] {
        let mut out = [0u8; ENVELOPE_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[VERSION_BYTE] = version;
        out[TOPIC_LEN_BYTE] = topic_len;
        out[4..20].copy_from_slice(&self.publisher.0);
        out[20..28].copy_from_slice(&self.sequence.to_be_bytes());
        out
    }

    /// Frame 0 of a version-2 message: `topic` then the envelope, written into `out` (cleared
    /// first, so the caller can reuse one buffer for every message).
    pub fn write_topic_frame(&self, topic: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(topic.len() + ENVELOPE_LEN);
        out.extend_from_slice(topic);
        out.extend_from_slice(&self.topic_tail());
    }

    /// The one frame of a version-3 message, written into `out` (cleared first); `None` when
    /// the topic is longer than [`FLAT_MAX_TOPIC`] (version 3 cannot carry it).
    pub fn write_flat_frame(&self, topic: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let topic_len = u8::try_from(topic.len()).ok()?;
        out.clear();
        out.reserve(topic.len() + payload.len() + ENVELOPE_LEN);
        out.extend_from_slice(topic);
        out.extend_from_slice(payload);
        out.extend_from_slice(&self.flat_tail(topic_len));
        Some(())
    }

    /// Parses a version-1 envelope frame (frame 1 of its own). `Err(NoMagic)` means "a plain
    /// message"; any other error means the frame claims to be an envelope but is not a valid
    /// one.
    pub fn decode(frame: &[u8]) -> Result<Self, WireError> {
        if frame.len() < MAGIC.len() || frame[0..2] != MAGIC {
            return Err(WireError::NoMagic);
        }
        if frame.len() <= VERSION_BYTE {
            return Err(WireError::BadLength(frame.len()));
        }
        if frame[VERSION_BYTE] != VERSION_SEPARATE_FRAME {
            return Err(WireError::UnsupportedVersion(frame[VERSION_BYTE]));
        }
        let Ok(bytes) = <&[u8; ENVELOPE_LEN]>::try_from(frame) else {
            return Err(WireError::BadLength(frame.len()));
        };
        Ok(Self::fields(bytes))
    }

    /// The version-2 envelope at the tail of a topic frame, if there is one: the envelope and
    /// the topic's length.
    pub fn from_topic_tail(frame: &[u8]) -> Option<(Self, usize)> {
        let (topic_len, tail) = tail_of(frame, VERSION_TOPIC_TAIL)?;
        Some((Self::fields(tail), topic_len))
    }

    /// The version-3 envelope at the tail of a single-frame message, if there is one: the
    /// envelope and the topic's length (`frame[..topic_len]` is the topic,
    /// `frame[topic_len..frame.len() - ENVELOPE_LEN]` the payload).
    pub fn from_flat_frame(frame: &[u8]) -> Option<(Self, usize)> {
        let (body_len, tail) = tail_of(frame, VERSION_FLAT)?;
        let topic_len = usize::from(tail[TOPIC_LEN_BYTE]);
        (topic_len <= body_len).then(|| (Self::fields(tail), topic_len))
    }

    /// The version-4 envelope at the tail of a single-frame message, if there is one (`None`:
    /// not version 4): the first record's envelope, the topic's length and the records, or
    /// why the frame is malformed.
    pub fn from_batch_frame(frame: &[u8]) -> Option<Result<(Self, usize, Records<'_>), WireError>> {
        let (body_len, tail) = tail_of(frame, VERSION_BATCH)?;
        let topic_len = usize::from(tail[TOPIC_LEN_BYTE]);
        let envelope = Self::fields(tail);
        let Some(records) = frame.get(topic_len..body_len) else {
            return Some(Err(WireError::BadRecords));
        };
        Some(Records::check(records).and_then(|records| {
            let count = records.len() as u64;
            match envelope.sequence.checked_add(count - 1) {
                Some(_) => Ok((envelope, topic_len, records)),
                None => Err(WireError::SequenceOverflow {
                    first: envelope.sequence,
                    count,
                }),
            }
        }))
    }

    fn fields(bytes: &[u8; ENVELOPE_LEN]) -> Self {
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[4..20]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[20..28]);
        Self {
            publisher: PublisherId(id),
            sequence: u64::from_be_bytes(seq),
        }
    }
}

/// The length of a version-4 frame holding `records` payloads of `payload_bytes` bytes in all
/// under a topic of `topic_len` bytes.
pub fn batch_frame_len(topic_len: usize, records: usize, payload_bytes: usize) -> usize {
    topic_len + records * RECORD_HEADER_LEN + payload_bytes + ENVELOPE_LEN
}

/// Writes a version-4 frame into `out`: `topic`, one record per payload, then `first`'s tail
/// (`first.sequence` is the first payload's). `out` must be exactly [`batch_frame_len`] long;
/// `None` (nothing meaningful written) when it is not, when a payload is above
/// [`RECORD_MAX_PAYLOAD`], when the topic is above [`FLAT_MAX_TOPIC`], when there is no
/// payload, or when the last payload's sequence would pass `u64::MAX`: what a reader would
/// refuse is never written.
pub fn write_batch_frame<'p>(
    out: &mut [u8],
    topic: &[u8],
    payloads: impl IntoIterator<Item = &'p [u8]>,
    first: &Envelope,
) -> Option<()> {
    let topic_len = u8::try_from(topic.len()).ok()?;
    let (head, tail) = out.split_at_mut_checked(out.len().checked_sub(ENVELOPE_LEN)?)?;
    tail.copy_from_slice(&first.batch_tail(topic_len));
    let (topic_out, mut records) = head.split_at_mut_checked(topic.len())?;
    topic_out.copy_from_slice(topic);
    let mut count = 0u64;
    for payload in payloads {
        let len = u16::try_from(payload.len()).ok()?;
        let (header, rest) = records.split_at_mut_checked(RECORD_HEADER_LEN)?;
        header.copy_from_slice(&len.to_be_bytes());
        let (body, rest) = rest.split_at_mut_checked(payload.len())?;
        body.copy_from_slice(payload);
        records = rest;
        count += 1;
    }
    first.sequence.checked_add(count.checked_sub(1)?)?;
    records.is_empty().then_some(())
}

/// The records of a version-4 frame, checked to fill it exactly: an iterator over their
/// payloads, first to last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Records<'a> {
    bytes: &'a [u8],
    count: usize,
}

impl<'a> Records<'a> {
    /// `bytes` as records if they are one or more records that end exactly at its end.
    fn check(bytes: &'a [u8]) -> Result<Self, WireError> {
        let mut count = 0;
        let mut rest = bytes;
        while !rest.is_empty() {
            let (_, after) = split_record(rest).ok_or(WireError::BadRecords)?;
            rest = after;
            count += 1;
        }
        if count == 0 {
            return Err(WireError::BadRecords);
        }
        Ok(Self { bytes, count })
    }

    /// How many records are left.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records' bytes (for a reader that keeps its place as an offset).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (payload, rest) = split_record(self.bytes)?;
        self.bytes = rest;
        self.count -= 1;
        Some(payload)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.count, Some(self.count))
    }
}

/// The first record of version-4 `records` (its payload) and the records after it; `None`
/// when `records` does not start with a whole record.
pub fn split_record(records: &[u8]) -> Option<(&[u8], &[u8])> {
    let (header, rest) = records.split_first_chunk::<RECORD_HEADER_LEN>()?;
    let len = usize::from(u16::from_be_bytes(*header));
    rest.split_at_checked(len)
}

/// The last [`ENVELOPE_LEN`] bytes of `frame` if they are an envelope of `version`, and the
/// length of what precedes them.
fn tail_of(frame: &[u8], version: u8) -> Option<(usize, &[u8; ENVELOPE_LEN])> {
    let body_len = frame.len().checked_sub(ENVELOPE_LEN)?;
    let tail: &[u8; ENVELOPE_LEN] = frame[body_len..].try_into().ok()?;
    (tail[0..2] == MAGIC && tail[VERSION_BYTE] == version).then_some((body_len, tail))
}

/// What a received message carried besides its topic and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A valid envelope (version 3, 4 or 2 at the tail of frame 0, or version 1 as frame 1;
    /// for version 4, the first record's).
    Enveloped { envelope: Envelope },
    /// No envelope: every frame after the topic is payload.
    Plain,
    /// Frame 1 carries the magic but is not a valid envelope, or a version-4 frame's records
    /// are not valid; delivered as `Plain`.
    Malformed(WireError),
}

/// One message taken apart: the topic (envelope tail removed), the payload frames (a
/// version-1 envelope frame removed; for versions 3 and 4, the payload cut from the frame),
/// and what the envelope said (for a record of version 4, the sequence is the record's own).
/// The owned form of what [`lend`] lends.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    pub topic: Vec<u8>,
    pub payload: Vec<Vec<u8>>,
    pub parsed: Parsed,
}

/// A received message taken apart without copying a byte: topic and payload are borrowed from
/// the frames it was received as (what a subscriber's per-message path uses).
#[derive(Debug, PartialEq, Eq)]
pub struct Lent<'a> {
    pub topic: &'a [u8],
    pub payload: LentPayload<'a>,
    pub parsed: Parsed,
}

/// Where the payload of a [`Lent`] message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LentPayload<'a> {
    /// Version 3: the one payload part, cut from the middle of the single frame.
    Cut(&'a [u8]),
    /// Whole frames (zero or more): versions 2 and 1, and plain messages.
    Frames(&'a [&'a [u8]]),
    /// Version 4: several messages, one payload part each, the first with the envelope's
    /// sequence and each next one with the sequence after.
    Batch(Records<'a>),
}

impl Lent<'_> {
    /// The owned copies of every message it holds (one, or a version-4 frame's records).
    pub fn to_splits(&self) -> Vec<Split> {
        let one = |payload| Split {
            topic: self.topic.to_vec(),
            payload,
            parsed: self.parsed.clone(),
        };
        match (self.payload, &self.parsed) {
            (LentPayload::Cut(part), _) => vec![one(vec![part.to_vec()])],
            (LentPayload::Frames(frames), _) => {
                vec![one(frames.iter().map(|frame| frame.to_vec()).collect())]
            }
            (LentPayload::Batch(records), Parsed::Enveloped { envelope }) => (0u64..)
                .zip(records)
                .map(|(i, record)| Split {
                    topic: self.topic.to_vec(),
                    payload: vec![record.to_vec()],
                    parsed: Parsed::Enveloped {
                        envelope: Envelope {
                            // `from_batch_frame` checked that the last one fits.
                            sequence: envelope.sequence.wrapping_add(i),
                            ..*envelope
                        },
                    },
                })
                .collect(),
            (LentPayload::Batch(records), _) => records.map(|record| one(vec![record.to_vec()])).collect(),
        }
    }
}

/// Takes a received message apart, borrowing from its frames (`None` for a message without
/// frames). A single frame is version 3 (topic and one payload part), version 4 (topic and
/// several), version 2 with no payload part, or a plain message whose frame is all topic;
/// otherwise frame 0 ending in a version-2 envelope is version 2, then a version-1 envelope in
/// frame 1 is version 1, else the message is plain (or malformed).
pub fn lend<'a>(frames: &'a [&'a [u8]]) -> Option<Lent<'a>> {
    let (&first, rest) = frames.split_first()?;
    if rest.is_empty() {
        if let Some((envelope, topic_len)) = Envelope::from_flat_frame(first) {
            return Some(Lent {
                topic: &first[..topic_len],
                payload: LentPayload::Cut(&first[topic_len..first.len() - ENVELOPE_LEN]),
                parsed: Parsed::Enveloped { envelope },
            });
        }
        match Envelope::from_batch_frame(first) {
            Some(Ok((envelope, topic_len, records))) => {
                return Some(Lent {
                    topic: &first[..topic_len],
                    payload: LentPayload::Batch(records),
                    parsed: Parsed::Enveloped { envelope },
                });
            }
            Some(Err(err)) => {
                return Some(Lent {
                    topic: first,
                    payload: LentPayload::Frames(rest),
                    parsed: Parsed::Malformed(err),
                });
            }
            None => {}
        }
    }
    if let Some((envelope, topic_len)) = Envelope::from_topic_tail(first) {
        return Some(Lent {
            topic: &first[..topic_len],
            payload: LentPayload::Frames(rest),
            parsed: Parsed::Enveloped { envelope },
        });
    }
    let (payload, parsed) = match rest.split_first() {
        None => (rest, Parsed::Plain),
        Some((&maybe_envelope, after)) => match Envelope::decode(maybe_envelope) {
            Err(WireError::NoMagic) => (rest, Parsed::Plain),
            Ok(envelope) => (after, Parsed::Enveloped { envelope }),
            Err(other) => (rest, Parsed::Malformed(other)),
        },
    };
    Some(Lent {
        topic: first,
        payload: LentPayload::Frames(payload),
        parsed,
    })
}

/// [`lend`] for owned frames, every message copied out (tests and tools; a subscriber lends).
pub fn split(frames: Vec<Vec<u8>>) -> Option<Vec<Split>> {
    let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    lend(&frames).map(|lent| lent.to_splits())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            publisher: PublisherId([7; 16]),
            sequence: 0x0102_0304_0506_0708,
        }
    }

    fn frames(f: &[&[u8]]) -> Vec<Vec<u8>> {
        f.iter().map(|x| x.to_vec()).collect()
    }

    /// The one message `f` holds.
    fn split_of(f: &[&[u8]]) -> Split {
        let mut messages = split(frames(f)).expect("frames");
        assert_eq!(messages.len(), 1, "one message");
        messages.remove(0)
    }

    #[test]
    fn round_trip() {
        let env = sample();
        let bytes = env.encode_version(VERSION_SEPARATE_FRAME);
        assert_eq!(bytes.len(), ENVELOPE_LEN);
        assert_eq!(&bytes[0..4], &[0xFA, 0x0F, 1, 0]);
        assert_eq!(&bytes[20..28], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Envelope::decode(&bytes), Ok(env));
        let mut frame = Vec::new();
        env.write_topic_frame(b"ports", &mut frame);
        assert_eq!(frame.len(), 5 + ENVELOPE_LEN);
        assert_eq!(&frame[..9], b"ports\xFA\x0F\x02\x00");
        assert_eq!(Envelope::from_topic_tail(&frame), Some((env, 5)));
        // The buffer is reused: a second write replaces the first.
        env.write_topic_frame(b"", &mut frame);
        assert_eq!(Envelope::from_topic_tail(&frame), Some((env, 0)));
    }

    #[test]
    fn a_flat_frame_is_topic_payload_then_the_envelope_with_the_topic_length() {
        let env = sample();
        let mut frame = Vec::new();
        env.write_flat_frame(b"ports", b"hello", &mut frame)
            .expect("short topic");
        assert_eq!(frame.len(), 5 + 5 + ENVELOPE_LEN);
        assert_eq!(&frame[..14], b"portshello\xFA\x0F\x03\x05");
        assert_eq!(frame[frame.len() - 25], 5, "the Python recipe's byte");
        assert_eq!(Envelope::from_flat_frame(&frame), Some((env, 5)));
        // Not a version-2 tail: version 2 readers never take it for one.
        assert_eq!(Envelope::from_topic_tail(&frame), None);
        // Empty topic, empty payload, the longest topic.
        env.write_flat_frame(b"", b"", &mut frame).expect("empty topic");
        assert_eq!(Envelope::from_flat_frame(&frame), Some((env, 0)));
        let long = vec![b't'; FLAT_MAX_TOPIC];
        env.write_flat_frame(&long, b"", &mut frame)
            .expect("255 bytes fit");
        assert_eq!(Envelope::from_flat_frame(&frame), Some((env, FLAT_MAX_TOPIC)));
        assert_eq!(env.write_flat_frame(&[b't'; 256], b"x", &mut frame), None);
    }

    #[test]
    fn a_flat_tail_whose_topic_length_overruns_the_frame_is_not_an_envelope() {
        let mut frame = b"ab".to_vec();
        frame.extend_from_slice(&sample().flat_tail(3));
        assert_eq!(Envelope::from_flat_frame(&frame), None);
        let topic_len_at = frame.len() - 25;
        frame[topic_len_at] = 2;
        assert_eq!(Envelope::from_flat_frame(&frame), Some((sample(), 2)));
        assert_eq!(split_of(&[&frame]).payload, vec![Vec::<u8>::new()]);
        frame[topic_len_at] = 3;
        let plain = split_of(&[&frame]);
        assert_eq!((plain.topic, plain.parsed), (frame.clone(), Parsed::Plain));
    }

    #[test]
    fn the_layout_is_one_frame_for_one_part_within_the_bounds() {
        assert_eq!(Layout::of(5, &[16], 1024), Layout::Flat { topic_len: 5 });
        assert_eq!(Layout::of(5, &[0], 1024), Layout::Flat { topic_len: 5 });
        assert_eq!(Layout::of(5, &[1024], 1024), Layout::Flat { topic_len: 5 });
        assert_eq!(Layout::of(255, &[1], 1024), Layout::Flat { topic_len: 255 });
        // No part, several parts, a part too big, a topic too long: version 2.
        assert_eq!(Layout::of(5, &[], 1024), Layout::TopicTail);
        assert_eq!(Layout::of(5, &[1, 1], 1024), Layout::TopicTail);
        assert_eq!(Layout::of(5, &[1025], 1024), Layout::TopicTail);
        assert_eq!(Layout::of(256, &[1], 1024), Layout::TopicTail);
    }

    #[test]
    fn a_topic_without_a_tail_is_a_plain_topic() {
        assert_eq!(Envelope::from_topic_tail(b"ports"), None);
        assert_eq!(Envelope::from_topic_tail(&[0xFA; 27]), None);
        assert_eq!(Envelope::from_flat_frame(&[0xFA; 27]), None);
        // Version 1 in a tail is neither version 2 nor version 3.
        let v1 = sample().encode_version(VERSION_SEPARATE_FRAME);
        assert_eq!(Envelope::from_topic_tail(&v1), None);
        assert_eq!(Envelope::from_flat_frame(&v1), None);
        // 0xFA is never in UTF-8, so no text topic has a tail.
        let text = "ü".repeat(40);
        assert_eq!(Envelope::from_topic_tail(text.as_bytes()), None);
        assert_eq!(Envelope::from_flat_frame(text.as_bytes()), None);
    }

    #[test]
    fn wrong_magic_is_a_plain_message() {
        let mut bytes = sample().encode_version(VERSION_SEPARATE_FRAME);
        bytes[0] = b'h';
        assert_eq!(Envelope::decode(&bytes), Err(WireError::NoMagic));
        assert_eq!(Envelope::decode(b"hello"), Err(WireError::NoMagic));
        assert_eq!(Envelope::decode(b""), Err(WireError::NoMagic));
        assert_eq!(Envelope::decode(&[0xFA]), Err(WireError::NoMagic));
    }

    #[test]
    fn wrong_version_is_refused() {
        // A version-2 or version-3 envelope as a frame of its own is not a valid frame-1
        // envelope.
        let env = sample();
        assert_eq!(
            Envelope::decode(&env.topic_tail()),
            Err(WireError::UnsupportedVersion(2))
        );
        assert_eq!(
            Envelope::decode(&env.flat_tail(0)),
            Err(WireError::UnsupportedVersion(3))
        );
    }

    #[test]
    fn truncated_and_overlong_are_refused() {
        let bytes = sample().encode_version(VERSION_SEPARATE_FRAME);
        for len in 2..ENVELOPE_LEN {
            assert!(Envelope::decode(&bytes[..len]).is_err(), "len {len}");
            assert_ne!(
                Envelope::decode(&bytes[..len]),
                Err(WireError::NoMagic),
                "len {len}"
            );
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(Envelope::decode(&long), Err(WireError::BadLength(29)));
    }

    #[test]
    fn split_takes_apart_every_version_plain_and_malformed() {
        assert_eq!(split(Vec::new()), None);
        let plain = split_of(&[b"t", b"payload"]);
        assert_eq!(
            (plain.topic, plain.payload, plain.parsed),
            (b"t".to_vec(), frames(&[b"payload"]), Parsed::Plain)
        );
        assert_eq!(split_of(&[b"t"]).parsed, Parsed::Plain);
        let env = sample();
        let enveloped = Parsed::Enveloped { envelope: env };

        let mut flat = Vec::new();
        env.write_flat_frame(b"ports", b"x", &mut flat)
            .expect("short topic");
        let v3 = split_of(&[&flat]);
        assert_eq!(
            (&v3.topic[..], &v3.payload, &v3.parsed),
            (&b"ports"[..], &frames(&[b"x"]), &enveloped)
        );
        // A version-3 frame followed by more frames is not version 3: delivered as it came.
        let not_v3 = split_of(&[&flat, b"y"]);
        assert_eq!((not_v3.topic, not_v3.parsed), (flat.clone(), Parsed::Plain));

        let mut topic = Vec::new();
        env.write_topic_frame(b"ports", &mut topic);
        let v2 = split_of(&[&topic, b"x", b"y"]);
        assert_eq!(
            (&v2.topic[..], &v2.payload, &v2.parsed),
            (&b"ports"[..], &frames(&[b"x", b"y"]), &enveloped)
        );
        let v2_no_payload = split_of(&[&topic]);
        assert_eq!(
            (&v2_no_payload.topic[..], v2_no_payload.payload.len()),
            (&b"ports"[..], 0)
        );

        let v1_envelope = env.encode_version(VERSION_SEPARATE_FRAME);
        let v1 = split_of(&[b"ports", &v1_envelope, b"x"]);
        assert_eq!(
            (&v1.topic[..], &v1.payload, &v1.parsed),
            (&b"ports"[..], &frames(&[b"x"]), &enveloped)
        );

        let malformed = split_of(&[b"t", &[0xFA, 0x0F, 1]]);
        assert_eq!(malformed.parsed, Parsed::Malformed(WireError::BadLength(3)));
        assert_eq!(malformed.payload, frames(&[&[0xFA, 0x0F, 1]]), "delivered intact");
    }

    #[test]
    fn lending_borrows_the_topic_and_payload_from_the_frames() {
        let env = sample();
        let mut flat = Vec::new();
        env.write_flat_frame(b"ports", b"hello", &mut flat)
            .expect("short topic");
        let frames = [&flat[..]];
        let lent = lend(&frames).expect("frames");
        assert_eq!(lent.topic, b"ports");
        assert!(std::ptr::eq(lent.topic.as_ptr(), flat.as_ptr()), "not a copy");
        let LentPayload::Cut(part) = lent.payload else {
            panic!("version 3 lends the part cut from its frame: {:?}", lent.payload)
        };
        assert_eq!(part, b"hello");
        assert!(std::ptr::eq(part.as_ptr(), flat[5..].as_ptr()), "not a copy");
        assert_eq!(lent.to_splits(), split(vec![flat.clone()]).expect("frames"));

        let mut topic = Vec::new();
        env.write_topic_frame(b"ports", &mut topic);
        let frames: [&[u8]; 3] = [&topic, b"x", b"y"];
        let lent = lend(&frames).expect("frames");
        assert_eq!(lent.payload, LentPayload::Frames(&frames[1..]));
        let v1_envelope = env.encode_version(VERSION_SEPARATE_FRAME);
        let frames: [&[u8]; 3] = [b"ports", &v1_envelope, b"x"];
        assert_eq!(
            lend(&frames).expect("frames").payload,
            LentPayload::Frames(&frames[2..])
        );
        assert_eq!(lend(&[]), None);
    }

    fn batch(topic: &[u8], payloads: &[&[u8]], first: &Envelope) -> Vec<u8> {
        let bytes = payloads.iter().map(|p| p.len()).sum();
        let mut frame = vec![0; batch_frame_len(topic.len(), payloads.len(), bytes)];
        write_batch_frame(&mut frame, topic, payloads.iter().copied(), first).expect("fits");
        frame
    }

    #[test]
    fn a_batch_frame_is_topic_records_then_the_first_envelope() {
        let env = sample();
        let frame = batch(b"ports", &[b"ab", b"", b"xyz"], &env);
        // Topic, then records of 2, 0 and 3 bytes after their 2-byte lengths, then the tail.
        assert_eq!(frame.len(), 5 + 3 * RECORD_HEADER_LEN + 5 + ENVELOPE_LEN);
        assert_eq!(&frame[..16], b"ports\0\x02ab\0\0\0\x03xyz");
        assert_eq!(&frame[16..20], b"\xFA\x0F\x04\x05");
        assert_eq!(frame[frame.len() - 26], VERSION_BATCH, "the Python recipe's byte");
        // Neither version 3 nor version 2 readers take it for theirs.
        assert_eq!(Envelope::from_flat_frame(&frame), None);
        assert_eq!(Envelope::from_topic_tail(&frame), None);
        let (got, topic_len, records) = Envelope::from_batch_frame(&frame)
            .expect("version 4")
            .expect("valid");
        assert_eq!((got, topic_len, records.len()), (env, 5, 3));
        assert_eq!(records.collect::<Vec<_>>(), vec![&b"ab"[..], b"", b"xyz"]);
        let messages = split(vec![frame]).expect("frames");
        let got: Vec<_> = messages
            .iter()
            .map(|m| (&m.topic[..], m.payload.clone(), m.parsed.clone()))
            .collect();
        let at = |sequence| Parsed::Enveloped {
            envelope: Envelope { sequence, ..env },
        };
        assert_eq!(
            got,
            vec![
                (&b"ports"[..], vec![b"ab".to_vec()], at(env.sequence)),
                (&b"ports"[..], vec![Vec::new()], at(env.sequence + 1)),
                (&b"ports"[..], vec![b"xyz".to_vec()], at(env.sequence + 2)),
            ]
        );
    }

    #[test]
    fn the_batch_writer_refuses_what_does_not_fit() {
        let env = sample();
        let mut short = vec![0; batch_frame_len(1, 1, 2) - 1];
        assert_eq!(write_batch_frame(&mut short, b"t", [&b"ab"[..]], &env), None);
        let mut long = vec![0; batch_frame_len(1, 1, 2) + 1];
        assert_eq!(write_batch_frame(&mut long, b"t", [&b"ab"[..]], &env), None);
        let big = vec![0; RECORD_MAX_PAYLOAD + 1];
        let mut out = vec![0; batch_frame_len(1, 1, big.len())];
        assert_eq!(write_batch_frame(&mut out, b"t", [&big[..]], &env), None);
        let topic = [b't'; FLAT_MAX_TOPIC + 1];
        let mut out = vec![0; batch_frame_len(topic.len(), 1, 1)];
        assert_eq!(write_batch_frame(&mut out, &topic, [&b"x"[..]], &env), None);
        // No payload, and sequences past u64::MAX: frames every reader refuses.
        let mut out = vec![0; batch_frame_len(1, 0, 0)];
        assert_eq!(write_batch_frame(&mut out, b"t", [], &env), None);
        let late = Envelope {
            sequence: u64::MAX,
            ..env
        };
        let mut out = vec![0; batch_frame_len(1, 2, 2)];
        assert_eq!(write_batch_frame(&mut out, b"t", [&b"a"[..], b"b"], &late), None);
        let mut out = vec![0; batch_frame_len(1, 1, 1)];
        assert_eq!(write_batch_frame(&mut out, b"t", [&b"a"[..]], &late), Some(()));
        let largest = vec![7; RECORD_MAX_PAYLOAD];
        let frame = batch(b"t", &[&largest, b"y"], &env);
        let (_, _, records) = Envelope::from_batch_frame(&frame).unwrap().unwrap();
        assert_eq!(records.collect::<Vec<_>>(), vec![&largest[..], b"y"]);
    }

    #[test]
    fn a_batch_whose_records_do_not_fill_the_frame_is_malformed_and_delivered_intact() {
        let env = sample();
        let good = batch(b"t", &[b"ab", b"cd"], &env);
        let body = 1..good.len() - ENVELOPE_LEN;
        let mut cases = Vec::new();
        // A record claiming one byte more or less than there is.
        for (at, len) in [(1, 3u16), (1, 1), (5, 3), (5, 0)] {
            let mut bad = good.clone();
            bad[at..at + 2].copy_from_slice(&len.to_be_bytes());
            cases.push(bad);
        }
        // No record at all; a topic length past the body.
        let mut empty = b"t".to_vec();
        empty.extend_from_slice(&env.batch_tail(1));
        cases.push(empty);
        let mut overrun = good.clone();
        let topic_len_at = overrun.len() - 25;
        overrun[topic_len_at] = u8::try_from(body.end + 1).unwrap();
        cases.push(overrun);
        for bad in cases {
            assert_eq!(
                Envelope::from_batch_frame(&bad),
                Some(Err(WireError::BadRecords)),
                "{bad:?}"
            );
            let plain = split_of(&[&bad]);
            assert_eq!(plain.topic, bad, "all bytes intact");
            assert_eq!(plain.parsed, Parsed::Malformed(WireError::BadRecords));
        }
        // The last record's sequence past u64::MAX.
        let last = Envelope {
            sequence: u64::MAX - 1,
            ..env
        };
        let fits = batch(b"t", &[b"a", b"b"], &last);
        assert!(matches!(Envelope::from_batch_frame(&fits), Some(Ok(_))));
        // A forged one: our writer refuses to make it.
        let mut over = batch(b"t", &[b"a", b"b", b"c"], &env);
        let at = over.len() - 8;
        over[at..].copy_from_slice(&(u64::MAX - 1).to_be_bytes());
        assert_eq!(
            Envelope::from_batch_frame(&over),
            Some(Err(WireError::SequenceOverflow {
                first: u64::MAX - 1,
                count: 3
            }))
        );
        // A version-4 frame followed by more frames is not version 4.
        let not_v4 = split_of(&[&good, b"more"]);
        assert_eq!((not_v4.topic, not_v4.parsed), (good.clone(), Parsed::Plain));
    }

    #[test]
    fn publisher_ids_are_random_and_print_as_hex() {
        let a = PublisherId::random().unwrap();
        let b = PublisherId::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(PublisherId([0xab; 16]).to_string(), "ab".repeat(16));
    }
}

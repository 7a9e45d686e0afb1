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
//! 2       1     version       3, 2 or 1 (below)
//! 3       1     topic length  version 3: the topic's length in bytes (0..=255);
//!                             versions 1 and 2: 0 (reserved, ignored when decoding)
//! 4       16    publisher id  random per Publisher instance
//! 20      8     sequence      u64 big-endian, per (publisher, topic), first is 0
//! ```
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
//! Why one frame: libzmq moves every frame as a message part of its own through every pipe of
//! every hop (the publisher's pipe per proxy, the proxy's two sockets, the subscriber), so the
//! second frame of version 2 was close to half the per-message work for small messages
//! (BENCHMARKS.md). Version 3 keeps the topic at the front so prefix subscriptions work
//! unchanged; the envelope goes at the end, where a subscriber finds it from the frame's length
//! alone, and carries the topic's length so the subscriber can cut the topic from the payload.
//! Putting the payload in one frame with the topic means copying it; measured up to 256 KiB
//! that copy never cost more than the second frame (BENCHMARKS.md, "Where the copy stops
//! paying"), so the bound, `flat_max_payload`, defaults to 65 253 bytes: the most that keeps
//! the one frame, with a topic of 255 bytes and the envelope, within a group's default message
//! cap of 64 KiB (the proxy ends a connection that sends a single frame above the cap, where it
//! only drops and counts a bigger message of several frames). Above it a payload the caller
//! owns is handed to libzmq uncopied as version 2.
//! Version 3 says "exactly one payload part": a message with none is written as version 2, so
//! a subscriber always gets back the parts that were sent.
//!
//! How a subscriber tells them apart (`lend`, `split`): a message of one frame whose last
//! 28 bytes are a version-3 envelope with a topic length that fits is version 3; otherwise
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
//! `t = f[-25]; topic, payload = f[:t], f[t:-28]`); for frame 0 ending `FA 0F 02 ..`, the topic
//! is frame 0 without its last 28 bytes and the payload is frames 1... A plain SUB that only
//! wants the payload of version-3 messages and knows its topic can also drop
//! `len(topic)` bytes from the front and 28 from the back.
//!
//! Longer than 500 lines for a reason: about 40 % of it is the tests of every layout and every
//! malformed input; the code is the one parser and writer of the wire contract, under 370 lines.

use std::fmt;

/// First two bytes of every envelope.
pub const MAGIC: [u8; 2] = [0xFA, 0x0F];
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
    /// A valid envelope (version 3 or 2 at the tail of frame 0, or version 1 as frame 1).
    Enveloped { envelope: Envelope },
    /// No envelope: every frame after the topic is payload.
    Plain,
    /// Frame 1 carries the magic but is not a valid envelope; delivered as `Plain`.
    Malformed(WireError),
}

/// A received message taken apart: the topic (envelope tail removed), the payload frames
/// (a version-1 envelope frame removed; for version 3, the one payload part cut from the
/// frame), and what the envelope said. The owned form of [`Lent`].
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
}

impl Lent<'_> {
    /// The owned copy.
    pub fn to_split(&self) -> Split {
        let payload = match self.payload {
            LentPayload::Cut(part) => vec![part.to_vec()],
            LentPayload::Frames(frames) => frames.iter().map(|frame| frame.to_vec()).collect(),
        };
        Split {
            topic: self.topic.to_vec(),
            payload,
            parsed: self.parsed.clone(),
        }
    }
}

/// Takes a received message apart, borrowing from its frames (`None` for a message without
/// frames). A single frame is version 3 (topic and one payload part), version 2 with no
/// payload part, or a plain message whose frame is all topic; otherwise frame 0 ending in a
/// version-2 envelope is version 2, then a version-1 envelope in frame 1 is version 1, else the
/// message is plain (or malformed).
pub fn lend<'a>(frames: &'a [&'a [u8]]) -> Option<Lent<'a>> {
    let (&first, rest) = frames.split_first()?;
    if rest.is_empty()
        && let Some((envelope, topic_len)) = Envelope::from_flat_frame(first)
    {
        return Some(Lent {
            topic: &first[..topic_len],
            payload: LentPayload::Cut(&first[topic_len..first.len() - ENVELOPE_LEN]),
            parsed: Parsed::Enveloped { envelope },
        });
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

/// [`lend`] for owned frames, copied out (tests and tools; a subscriber lends).
pub fn split(frames: Vec<Vec<u8>>) -> Option<Split> {
    let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    lend(&frames).map(|lent| lent.to_split())
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

    fn split_of(f: &[&[u8]]) -> Split {
        split(frames(f)).expect("frames")
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
        assert_eq!(lent.to_split(), split(vec![flat.clone()]).expect("frames"));

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

    #[test]
    fn publisher_ids_are_random_and_print_as_hex() {
        let a = PublisherId::random().unwrap();
        let b = PublisherId::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(PublisherId([0xab; 16]).to_string(), "ab".repeat(16));
    }
}

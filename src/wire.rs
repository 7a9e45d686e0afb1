//! The message envelope our `Publisher` adds so that subscribers can count loss per publisher.
//!
//! On the wire every message is multipart ZeroMQ with frame 0 the topic (the proxy forwards it
//! unchanged; ZeroMQ subscriptions match it by prefix). Our publisher writes **version 2**:
//!
//! ```text
//! frame 0   topic bytes, then the 28-byte envelope appended as its tail:
//!             offset (in the tail)  size  field
//!             0                     2     magic        0xFA 0x0F
//!             2                     1     version      2
//!             3                     1     flags        0 (reserved; ignored when decoding)
//!             4                     16    publisher id random per Publisher instance
//!             20                    8     sequence     u64 big-endian, per (publisher, topic), first is 0
//! frame 1.. payload frames (zero or more, opaque, untouched)
//! ```
//!
//! Why the tail of the topic frame: every frame is a separate message part through every pipe
//! of every hop (publisher, each proxy, each subscriber), so the envelope as a frame of its own
//! cost a third of the per-message work for small messages (BENCHMARKS.md). In the topic
//! frame's tail it keeps prefix subscriptions working unchanged (the topic is still the prefix
//! of frame 0) and leaves the payload frames exactly as the caller gave them; and a 5-byte
//! topic plus the envelope (33 bytes) still fits libzmq's inline small-message buffer.
//!
//! **Version 1** (what earlier releases wrote, read for a mixed rollout): frame 0 the topic
//! alone, frame 1 exactly the 28-byte envelope with version 1, frames 2.. payload.
//!
//! Plain libzmq peers: a plain PUB's `[topic, payload...]` is delivered as a plain message. A
//! plain SUB subscribed to `foo` receives our messages with frame 0 = `foo` + 28 bytes and the
//! payload in frames 1..; it strips the last 28 bytes of frame 0 to get the topic. A version-2
//! tail is recognised by its magic and version byte; 0xFA never occurs in UTF-8 text, so a
//! plain publisher's UTF-8 topic can never be mistaken for one. A message that carries the
//! magic where an envelope would be but is not a valid one (wrong length, unknown version) is
//! "malformed": counted by the subscriber and delivered as a plain message, all bytes intact.

use std::fmt;

/// First two bytes of every envelope.
pub const MAGIC: [u8; 2] = [0xFA, 0x0F];
/// The envelope version this code writes: the envelope as the tail of the topic frame.
pub const VERSION: u8 = 2;
/// The earlier version, still read: the envelope as frame 1 of its own.
pub const VERSION_SEPARATE_FRAME: u8 = 1;
/// Exact length of an envelope (both versions).
pub const ENVELOPE_LEN: usize = 28;

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
        "envelope version {0} is not supported here (this build reads versions {VERSION_SEPARATE_FRAME} and {VERSION})"
    )]
    UnsupportedVersion(u8),
    #[error("envelope is {0} bytes, expected {ENVELOPE_LEN}")]
    BadLength(usize),
}

impl Envelope {
    /// The 28 bytes of this envelope, version 2 (appended to the topic frame).
    pub fn encode(&self) -> [u8; ENVELOPE_LEN] {
        self.encode_version(VERSION)
    }

    /// Frame 0 of a version-2 message: `topic` then the envelope, written into `out` (cleared
    /// first, so the caller can reuse one buffer for every message).
    pub fn write_topic_frame(&self, topic: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(topic.len() + ENVELOPE_LEN);
        out.extend_from_slice(topic);
        out.extend_from_slice(&self.encode());
    }

    /// The envelope with the given version byte (tests and the version-1 frame).
    pub fn encode_version(&self, version: u8) -> [u8; ENVELOPE_LEN] {
        let mut out = [0u8; ENVELOPE_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = version;
        out[3] = 0;
        out[4..20].copy_from_slice(&self.publisher.0);
        out[20..28].copy_from_slice(&self.sequence.to_be_bytes());
        out
    }

    /// Parses a version-1 envelope frame (frame 1 of its own). `Err(NoMagic)` means "a plain
    /// message"; any other error means the frame claims to be an envelope but is not a valid
    /// one.
    pub fn decode(frame: &[u8]) -> Result<Self, WireError> {
        if frame.len() < MAGIC.len() || frame[0..2] != MAGIC {
            return Err(WireError::NoMagic);
        }
        if frame.len() < 3 {
            return Err(WireError::BadLength(frame.len()));
        }
        if frame[2] != VERSION_SEPARATE_FRAME {
            return Err(WireError::UnsupportedVersion(frame[2]));
        }
        let Ok(bytes) = <&[u8; ENVELOPE_LEN]>::try_from(frame) else {
            return Err(WireError::BadLength(frame.len()));
        };
        Ok(Self::fields(bytes))
    }

    /// The version-2 envelope at the tail of a topic frame, if there is one: the envelope and
    /// the topic's length.
    pub fn from_topic_tail(frame: &[u8]) -> Option<(Self, usize)> {
        let topic_len = frame.len().checked_sub(ENVELOPE_LEN)?;
        let tail: &[u8; ENVELOPE_LEN] = frame[topic_len..].try_into().ok()?;
        (tail[0..2] == MAGIC && tail[2] == VERSION).then(|| (Self::fields(tail), topic_len))
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

/// What a received message carried besides its topic and payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A valid envelope (version 2 in the topic frame, or version 1 as frame 1).
    Enveloped { envelope: Envelope },
    /// No envelope: every frame after the topic is payload.
    Plain,
    /// Frame 1 carries the magic but is not a valid envelope; delivered as `Plain`.
    Malformed(WireError),
}

/// A received message taken apart: the topic (envelope tail removed), the payload frames
/// (a version-1 envelope frame removed), and what the envelope said.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    pub topic: Vec<u8>,
    pub payload: Vec<Vec<u8>>,
    pub parsed: Parsed,
}

/// Takes a received message apart (`None` for a message without frames). Version 2 is
/// recognised first (its tail is in frame 0); then a version-1 envelope in frame 1.
pub fn split(mut frames: Vec<Vec<u8>>) -> Option<Split> {
    if frames.is_empty() {
        return None;
    }
    let mut topic = frames.remove(0);
    if let Some((envelope, topic_len)) = Envelope::from_topic_tail(&topic) {
        topic.truncate(topic_len);
        return Some(Split {
            topic,
            payload: frames,
            parsed: Parsed::Enveloped { envelope },
        });
    }
    let parsed = match frames.first().map(|frame| Envelope::decode(frame)) {
        None | Some(Err(WireError::NoMagic)) => Parsed::Plain,
        Some(Ok(envelope)) => {
            frames.remove(0);
            Parsed::Enveloped { envelope }
        }
        Some(Err(other)) => Parsed::Malformed(other),
    };
    Some(Split {
        topic,
        payload: frames,
        parsed,
    })
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
    fn a_topic_without_a_version_2_tail_is_a_plain_topic() {
        assert_eq!(Envelope::from_topic_tail(b"ports"), None);
        assert_eq!(Envelope::from_topic_tail(&[0xFA; 27]), None);
        // Version 1 in a tail is not version 2.
        let v1 = sample().encode_version(VERSION_SEPARATE_FRAME);
        assert_eq!(Envelope::from_topic_tail(&v1), None);
        // 0xFA is never in UTF-8, so no text topic has a tail.
        let text = "ü".repeat(40);
        assert_eq!(Envelope::from_topic_tail(text.as_bytes()), None);
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
        // A version-2 envelope as a frame of its own is not a valid frame-1 envelope.
        let bytes = sample().encode();
        assert_eq!(Envelope::decode(&bytes), Err(WireError::UnsupportedVersion(2)));
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
    fn split_takes_apart_both_versions_plain_and_malformed() {
        let frames = |f: &[&[u8]]| f.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
        let split_of = |f: &[&[u8]]| split(frames(f)).expect("frames");
        assert_eq!(split(Vec::new()), None);
        let plain = split_of(&[b"t", b"payload"]);
        assert_eq!(
            (plain.topic, plain.payload, plain.parsed),
            (b"t".to_vec(), frames(&[b"payload"]), Parsed::Plain)
        );
        assert_eq!(split_of(&[b"t"]).parsed, Parsed::Plain);
        let env = sample();
        let mut topic = Vec::new();
        env.write_topic_frame(b"ports", &mut topic);
        let v2 = split_of(&[&topic, b"x", b"y"]);
        assert_eq!(v2.topic, b"ports");
        assert_eq!(v2.payload, frames(&[b"x", b"y"]));
        assert_eq!(v2.parsed, Parsed::Enveloped { envelope: env });
        let v1_envelope = env.encode_version(VERSION_SEPARATE_FRAME);
        let v1 = split_of(&[b"ports", &v1_envelope, b"x"]);
        assert_eq!(v1.topic, b"ports");
        assert_eq!(v1.payload, frames(&[b"x"]));
        assert_eq!(v1.parsed, Parsed::Enveloped { envelope: env });
        let malformed = split_of(&[b"t", &[0xFA, 0x0F, 1]]);
        assert_eq!(malformed.parsed, Parsed::Malformed(WireError::BadLength(3)));
        assert_eq!(malformed.payload, frames(&[&[0xFA, 0x0F, 1]]), "delivered intact");
    }

    #[test]
    fn publisher_ids_are_random_and_print_as_hex() {
        let a = PublisherId::random().unwrap();
        let b = PublisherId::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(PublisherId([0xab; 16]).to_string(), "ab".repeat(16));
    }
}

//! The message envelope our `Publisher` adds so that subscribers can count loss per publisher.
//!
//! On the wire every message is multipart ZeroMQ with frame 0 the topic (the proxy forwards it
//! unchanged and filters on it). Our publisher sends
//!
//! ```text
//! frame 0   topic                     (bytes, what ZeroMQ subscriptions match against)
//! frame 1   envelope, exactly 28 bytes:
//!             offset  size  field
//!             0       2     magic        0xFA 0x0F
//!             2       1     version      1
//!             3       1     flags        0 (reserved; ignored when decoding version 1)
//!             4       16    publisher id random per Publisher instance
//!             20      8     sequence     u64 big-endian, per (publisher, topic), first is 0
//! frame 2.. payload frames (zero or more, opaque)
//! ```
//!
//! The sequence counts per (publisher, topic) rather than per publisher so that a subscriber
//! that sees only some topics (ZeroMQ filters upstream) can still tell loss from filtering.
//!
//! A message whose frame 1 does not start with the magic is a plain message (e.g. from a plain
//! libzmq PUB sending `[topic, payload]`) and is delivered as is. A frame 1 that starts with the
//! magic but is not a valid envelope (wrong length, unknown version) is "malformed": counted by
//! the subscriber and delivered as a plain message, all frames intact.

use std::fmt;

/// First two bytes of every envelope.
pub const MAGIC: [u8; 2] = [0xFA, 0x0F];
/// The envelope version this code writes and reads.
pub const VERSION: u8 = 1;
/// Exact length of a version-1 envelope frame.
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
    #[error("envelope version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    #[error("envelope is {0} bytes, expected {ENVELOPE_LEN}")]
    BadLength(usize),
}

impl Envelope {
    /// The 28-byte frame for this envelope.
    pub fn encode(&self) -> [u8; ENVELOPE_LEN] {
        let mut out = [0u8; ENVELOPE_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = 0;
        out[4..20].copy_from_slice(&self.publisher.0);
        out[20..28].copy_from_slice(&self.sequence.to_be_bytes());
        out
    }

    /// Parses an envelope frame. `Err(NoMagic)` means "a plain message"; any other error
    /// means the frame claims to be an envelope but is not a valid one.
    pub fn decode(frame: &[u8]) -> Result<Self, WireError> {
        if frame.len() < MAGIC.len() || frame[0..2] != MAGIC {
            return Err(WireError::NoMagic);
        }
        if frame.len() < 3 {
            return Err(WireError::BadLength(frame.len()));
        }
        if frame[2] != VERSION {
            return Err(WireError::UnsupportedVersion(frame[2]));
        }
        let Ok(bytes) = <&[u8; ENVELOPE_LEN]>::try_from(frame) else {
            return Err(WireError::BadLength(frame.len()));
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[4..20]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[20..28]);
        Ok(Self {
            publisher: PublisherId(id),
            sequence: u64::from_be_bytes(seq),
        })
    }
}

/// How a received multipart message splits into topic, envelope and payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// `[topic, envelope, payload...]` from one of our publishers.
    Enveloped { envelope: Envelope },
    /// No envelope: every frame after the topic is payload.
    Plain,
    /// Frame 1 carries the magic but is not a valid envelope; delivered as `Plain`.
    Malformed(WireError),
}

/// Classifies a message by its frames after the topic (`rest` = frames 1..).
pub fn classify(rest: &[Vec<u8>]) -> Parsed {
    match rest.first() {
        None => Parsed::Plain,
        Some(frame) => match Envelope::decode(frame) {
            Ok(envelope) => Parsed::Enveloped { envelope },
            Err(WireError::NoMagic) => Parsed::Plain,
            Err(other) => Parsed::Malformed(other),
        },
    }
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
        let bytes = env.encode();
        assert_eq!(bytes.len(), ENVELOPE_LEN);
        assert_eq!(&bytes[0..4], &[0xFA, 0x0F, 1, 0]);
        assert_eq!(&bytes[20..28], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Envelope::decode(&bytes), Ok(env));
    }

    #[test]
    fn wrong_magic_is_a_plain_message() {
        let mut bytes = sample().encode();
        bytes[0] = b'h';
        assert_eq!(Envelope::decode(&bytes), Err(WireError::NoMagic));
        assert_eq!(Envelope::decode(b"hello"), Err(WireError::NoMagic));
        assert_eq!(Envelope::decode(b""), Err(WireError::NoMagic));
        assert_eq!(Envelope::decode(&[0xFA]), Err(WireError::NoMagic));
    }

    #[test]
    fn wrong_version_is_refused() {
        let mut bytes = sample().encode();
        bytes[2] = 2;
        assert_eq!(Envelope::decode(&bytes), Err(WireError::UnsupportedVersion(2)));
    }

    #[test]
    fn truncated_and_overlong_are_refused() {
        let bytes = sample().encode();
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
    fn classify_splits_plain_enveloped_and_malformed() {
        assert_eq!(classify(&[]), Parsed::Plain);
        assert_eq!(classify(&[b"payload".to_vec()]), Parsed::Plain);
        let env = sample();
        assert_eq!(
            classify(&[env.encode().to_vec(), b"x".to_vec()]),
            Parsed::Enveloped { envelope: env }
        );
        assert_eq!(
            classify(&[vec![0xFA, 0x0F, 1]]),
            Parsed::Malformed(WireError::BadLength(3))
        );
    }

    #[test]
    fn publisher_ids_are_random_and_print_as_hex() {
        let a = PublisherId::random().unwrap();
        let b = PublisherId::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(PublisherId([0xab; 16]).to_string(), "ab".repeat(16));
    }
}

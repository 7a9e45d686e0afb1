//! Who may connect to a CURVE proxy (pure): the allow-list file's format, ZAP requests and the
//! proxy's answers, why a peer was refused, and the once-a-second log limiter.
//!
//! ZAP (ZeroMQ RFC 27) is how libzmq asks the application about a peer during the handshake:
//! a request on `inproc://zeromq.zap.01` (version, request id, domain, address, routing id,
//! mechanism, credentials), answered with a status (200 admit, 300 try later, 400 refuse, 500
//! internal error). The requests come from libzmq, but their content comes from the peer (its
//! key) and from whatever libzmq version is linked, so every frame is checked and anything
//! unexpected is answered 500, never a panic.

use crate::curve::{KEY_BYTES, PublicKey, Z85_CHARS};
use crate::endpoint_list::InvalidLine;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// ZAP domain of the publisher (XSUB) socket.
pub const PUBLISHER_DOMAIN: &str = "fanout-publishers";
/// ZAP domain of the subscriber (XPUB) socket.
pub const SUBSCRIBER_DOMAIN: &str = "fanout-subscribers";
/// At most this many frames of a ZAP request are kept; RFC 27 has 6 plus credentials (1 for
/// CURVE, 2 for PLAIN).
pub const MAX_ZAP_FRAMES: usize = 8;
/// The largest frame of a ZAP request kept (a domain, an address, a key are far shorter).
pub const MAX_ZAP_FRAME_BYTES: usize = 256;

/// The public keys allowed on one side, as Z85 text: that is what libzmq hands back as a
/// message's `User-Id`, so the per-message check is a string lookup with no decoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    keys: HashSet<String>,
}

impl AllowList {
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|key| key.to_z85()).collect(),
        }
    }

    pub fn allows_z85(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    pub fn allows(&self, key: &PublicKey) -> bool {
        self.keys.contains(&key.to_z85())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Parses an allow-list file: one Z85 public key a line; blank lines and `#` comments are
/// ignored; invalid lines are returned (to be logged and counted) and the rest applies.
///
/// `#` is itself a Z85 character, but never the first of a key: Z85 turns 4 bytes into 5
/// digits, and the first digit of a 32-bit value is at most 82 (`%`), while `#` is 84.
pub fn parse_allow_list(text: &str) -> (AllowList, Vec<InvalidLine>) {
    let mut keys = HashSet::new();
    let mut invalid = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        match PublicKey::from_z85(line) {
            Ok(key) => {
                keys.insert(key.to_z85());
            }
            Err(_) => invalid.push(InvalidLine {
                line: i + 1,
                // An invalid line may be a pasted secret key: never log more than a prefix.
                text: line.chars().take(8).collect::<String>() + "...",
                reason: if line.len() == Z85_CHARS {
                    "not valid Z85"
                } else {
                    "a public key is 40 Z85 characters"
                },
            }),
        }
    }
    (AllowList { keys }, invalid)
}

/// The security mechanism a ZAP request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Null,
    Curve,
    Other,
}

/// A well-formed ZAP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZapRequest<'a> {
    pub request_id: &'a [u8],
    pub domain: &'a [u8],
    /// The peer's IP address as libzmq gives it (no port).
    pub address: &'a [u8],
    pub mechanism: Mechanism,
    /// The client's long-term public key (CURVE only).
    pub client_key: Option<PublicKey>,
}

impl<'a> ZapRequest<'a> {
    /// Checks every frame: version "1.0", a mechanism we know with the credentials it needs
    /// (CURVE: one 32-byte key). `Err` names what is wrong; the request id, if there was
    /// one, is still needed to answer, see [`request_id`].
    pub fn parse(frames: &[&'a [u8]]) -> Result<Self, &'static str> {
        let frame = |i: usize| frames.get(i).copied();
        if frame(0) != Some(b"1.0".as_slice()) {
            return Err("version is not 1.0");
        }
        let (Some(request_id), Some(domain), Some(address), Some(_routing_id), Some(mechanism)) =
            (frame(1), frame(2), frame(3), frame(4), frame(5))
        else {
            return Err("fewer than 6 frames");
        };
        let credentials = &frames[6..];
        let (mechanism, client_key) = match mechanism {
            b"NULL" if credentials.is_empty() => (Mechanism::Null, None),
            b"NULL" => return Err("NULL with credentials"),
            b"CURVE" => match credentials {
                [key] if key.len() == KEY_BYTES => {
                    let mut bytes = [0u8; KEY_BYTES];
                    bytes.copy_from_slice(key);
                    (Mechanism::Curve, Some(PublicKey(bytes)))
                }
                _ => return Err("CURVE credentials are not one 32-byte key"),
            },
            _ => (Mechanism::Other, None),
        };
        Ok(Self {
            request_id,
            domain,
            address,
            mechanism,
            client_key,
        })
    }
}

/// The request id of a request that may be malformed (empty when there is none), so that
/// even a refusal answers the right handshake.
pub fn request_id<'a>(frames: &[&'a [u8]]) -> &'a [u8] {
    frames.get(1).copied().unwrap_or(b"")
}

/// Why a peer was refused or cut off: the `reason` label of
/// `fanout_proxy_auth_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A CURVE client whose key is not in the allow-list.
    UnknownKey,
    /// A peer without CURVE (NULL mechanism) on a CURVE port, or one that hung up during the
    /// handshake (see [`classify_handshake_failure`]).
    NoCurve,
    /// A CURVE client that expected another server key (its HELLO cannot be opened).
    WrongServerKey,
    /// Any other failed handshake on a CURVE port (a protocol error), or a ZAP request for a
    /// mechanism or domain we do not serve.
    Handshake,
    /// A connection closed because its key was removed from the allow-list.
    Revoked,
    /// A ZAP request we could not make sense of (answered 500).
    MalformedRequest,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::UnknownKey,
        Refusal::NoCurve,
        Refusal::WrongServerKey,
        Refusal::Handshake,
        Refusal::Revoked,
        Refusal::MalformedRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownKey => "unknown_key",
            Refusal::NoCurve => "no_curve",
            Refusal::WrongServerKey => "wrong_server_key",
            Refusal::Handshake => "handshake",
            Refusal::Revoked => "revoked",
            Refusal::MalformedRequest => "malformed_zap_request",
        }
    }
}

/// What the proxy answers to one ZAP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZapDecision {
    pub status: &'static str,
    pub text: &'static str,
    /// The `User-Id` libzmq attaches to every message of the admitted connection: the Z85
    /// public key, which the forwarder checks against the live allow-list.
    pub user_id: String,
    /// Set when refused.
    pub refusal: Option<Refusal>,
    /// The client key, when there was one (for the logs).
    pub client_key: Option<PublicKey>,
}

impl ZapDecision {
    fn refuse(status: &'static str, text: &'static str, refusal: Refusal, key: Option<PublicKey>) -> Self {
        Self {
            status,
            text,
            user_id: String::new(),
            refusal: Some(refusal),
            client_key: key,
        }
    }

    fn admit(key: Option<PublicKey>) -> Self {
        Self {
            status: "200",
            text: "OK",
            user_id: key.map(|k| k.to_z85()).unwrap_or_default(),
            refusal: None,
            client_key: key,
        }
    }

    /// The reply frames: version, request id, status code, status text, user id, metadata.
    pub fn reply<'a>(&'a self, request_id: &'a [u8]) -> [&'a [u8]; 6] {
        [
            b"1.0",
            request_id,
            self.status.as_bytes(),
            self.text.as_bytes(),
            self.user_id.as_bytes(),
            b"",
        ]
    }
}

/// Who is admitted where.
#[derive(Clone, Copy, Debug)]
pub struct ZapPolicy<'a> {
    pub publishers: &'a AllowList,
    /// `None`: any CURVE client key may subscribe over TCP (the connection is still
    /// encrypted and the subscriber still authenticates the proxy).
    pub subscribers: Option<&'a AllowList>,
}

/// Answers one ZAP request (its frames as received, already bounded by the caller).
pub fn decide(frames: &[&[u8]], policy: ZapPolicy<'_>) -> ZapDecision {
    let request = match ZapRequest::parse(frames) {
        Ok(request) => request,
        Err(why) => return ZapDecision::refuse("500", why, Refusal::MalformedRequest, None),
    };
    let key = request.client_key;
    let allowed = match (request.domain, request.mechanism) {
        (d, Mechanism::Curve) if d == PUBLISHER_DOMAIN.as_bytes() => Some(policy.publishers),
        (d, Mechanism::Curve) if d == SUBSCRIBER_DOMAIN.as_bytes() => policy.subscribers,
        // NULL reaches the handler only from listeners without CURVE: the subscriber unix
        // sockets, protected by their file mode and group.
        (d, Mechanism::Null) if d == SUBSCRIBER_DOMAIN.as_bytes() => None,
        _ => return ZapDecision::refuse("400", "mechanism not allowed here", Refusal::Handshake, key),
    };
    match (allowed, key) {
        (None, _) => ZapDecision::admit(key),
        (Some(list), Some(k)) if list.allows(&k) => ZapDecision::admit(key),
        _ => ZapDecision::refuse("400", "key not allowed", Refusal::UnknownKey, key),
    }
}

/// libzmq's monitor event codes and protocol error values this module classifies (zmq.h).
pub const EVENT_HANDSHAKE_FAILED_NO_DETAIL: u16 = 0x0800;
pub const EVENT_HANDSHAKE_FAILED_PROTOCOL: u16 = 0x2000;
pub const EVENT_HANDSHAKE_FAILED_AUTH: u16 = 0x4000;
pub const PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: u32 = 0x1100_0001;
pub const PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: u32 = 0x1100_0002;

/// Why a failed handshake on a CURVE port failed, from its monitor event. `None` for a ZAP
/// refusal (the ZAP handler counted it already, with the key) and for events that are not
/// handshake failures.
///
/// A peer without CURVE shows up in one of two ways with libzmq 4.3.4, depending on who reads
/// the other's greeting first: PROTOCOL with MECHANISM_MISMATCH (we saw its NULL greeting), or
/// NO_DETAIL with the errno of a broken connection (it saw our CURVE greeting and hung up,
/// measured: EPIPE). Both count as `no_curve`; a peer hanging up mid-handshake for another
/// reason is counted there too, which is the closest honest name for it.
pub fn classify_handshake_failure(code: u16, value: u32) -> Option<Refusal> {
    match (code, value) {
        (EVENT_HANDSHAKE_FAILED_PROTOCOL, PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) => Some(Refusal::NoCurve),
        (EVENT_HANDSHAKE_FAILED_NO_DETAIL, _) => Some(Refusal::NoCurve),
        (EVENT_HANDSHAKE_FAILED_PROTOCOL, PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) => Some(Refusal::WrongServerKey),
        (EVENT_HANDSHAKE_FAILED_PROTOCOL, _) => Some(Refusal::Handshake),
        _ => None,
    }
}

/// At most one log line per interval per key; the lines held back are counted and reported
/// with the next one.
#[derive(Debug)]
pub struct LogLimiter<K> {
    interval: Duration,
    last: HashMap<K, (Instant, u64)>,
}

impl<K: std::hash::Hash + Eq> LogLimiter<K> {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when a line for `key` may be logged at `now` (with the number held
    /// back since the last one); `None` when it must be held back.
    pub fn allow(&mut self, key: K, now: Instant) -> Option<u64> {
        match self.last.get_mut(&key) {
            Some((at, suppressed)) if now.saturating_duration_since(*at) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::KeyPair;

    fn key() -> PublicKey {
        KeyPair::generate().expect("keypair").public
    }

    #[test]
    fn allow_list_keys_comments_and_invalid_lines() {
        let (a, b) = (key(), key());
        let text = format!("# publishers\n\n  {a}  \n{b}\nnot-a-key\n{}\n", &a.to_z85()[..39]);
        let (list, invalid) = parse_allow_list(&text);
        assert_eq!(list.len(), 2);
        assert!(list.allows(&a) && list.allows(&b));
        assert_eq!(invalid.len(), 2);
        assert_eq!(invalid[0].line, 5);
        assert_eq!(invalid[1].line, 6);
        // Only a prefix of a bad line is kept (it may be a secret key pasted by mistake).
        assert!(invalid[1].text.len() < 20, "{:?}", invalid[1]);
    }

    #[test]
    fn no_key_starts_with_hash_so_comments_are_unambiguous() {
        // The largest first group, 0xFFFFFFFF, starts with '%'.
        let key = PublicKey([0xFF; KEY_BYTES]);
        assert!(key.to_z85().starts_with('%'), "{key}");
        let (list, invalid) = parse_allow_list(&format!("{key}\n# a comment\n"));
        assert!(list.allows(&key));
        assert!(invalid.is_empty());
    }

    fn request<'a>(domain: &'a [u8], mechanism: &'a [u8], credentials: &[&'a [u8]]) -> Vec<&'a [u8]> {
        let mut frames: Vec<&[u8]> = vec![b"1.0", b"7", domain, b"127.0.0.1", b"", mechanism];
        frames.extend_from_slice(credentials);
        frames
    }

    #[test]
    fn zap_admits_listed_publishers_only() {
        let (listed, stranger) = (key(), key());
        let publishers = AllowList::from_keys([listed]);
        let policy = ZapPolicy {
            publishers: &publishers,
            subscribers: None,
        };
        let d = decide(
            &request(PUBLISHER_DOMAIN.as_bytes(), b"CURVE", &[&listed.0]),
            policy,
        );
        assert_eq!((d.status, d.refusal), ("200", None));
        assert_eq!(d.user_id, listed.to_z85());
        assert_eq!(d.reply(b"7")[1], b"7");
        let d = decide(
            &request(PUBLISHER_DOMAIN.as_bytes(), b"CURVE", &[&stranger.0]),
            policy,
        );
        assert_eq!((d.status, d.refusal), ("400", Some(Refusal::UnknownKey)));
        // Subscribers: any key over TCP without a subscriber list, NULL on the unix socket.
        let d = decide(
            &request(SUBSCRIBER_DOMAIN.as_bytes(), b"CURVE", &[&stranger.0]),
            policy,
        );
        assert_eq!(d.status, "200");
        let d = decide(&request(SUBSCRIBER_DOMAIN.as_bytes(), b"NULL", &[]), policy);
        assert_eq!(d.status, "200");
        // NULL never publishes; unknown domains and mechanisms are refused.
        let d = decide(&request(PUBLISHER_DOMAIN.as_bytes(), b"NULL", &[]), policy);
        assert_eq!(d.status, "400");
        let d = decide(&request(b"other", b"CURVE", &[&listed.0]), policy);
        assert_eq!(d.status, "400");
        let d = decide(
            &request(PUBLISHER_DOMAIN.as_bytes(), b"PLAIN", &[b"u", b"p"]),
            policy,
        );
        assert_eq!(d.status, "400");
        let subscribers = AllowList::default();
        let strict = ZapPolicy {
            subscribers: Some(&subscribers),
            ..policy
        };
        let d = decide(
            &request(SUBSCRIBER_DOMAIN.as_bytes(), b"CURVE", &[&listed.0]),
            strict,
        );
        assert_eq!(d.refusal, Some(Refusal::UnknownKey));
    }

    #[test]
    fn malformed_zap_requests_are_answered_500() {
        let listed = key();
        let publishers = AllowList::from_keys([listed]);
        let policy = ZapPolicy {
            publishers: &publishers,
            subscribers: None,
        };
        let domain = PUBLISHER_DOMAIN.as_bytes();
        let short_key = [0u8; 31];
        let cases: Vec<Vec<&[u8]>> = vec![
            vec![],
            vec![b"1.0"],
            vec![b"2.0", b"1", domain, b"a", b"", b"CURVE", &listed.0],
            request(domain, b"CURVE", &[]),
            request(domain, b"CURVE", &[&short_key]),
            request(domain, b"CURVE", &[&listed.0, &listed.0]),
            request(domain, b"NULL", &[b"x"]),
        ];
        for frames in cases {
            let d = decide(&frames, policy);
            assert_eq!(d.status, "500", "{frames:?}");
            assert_eq!(d.refusal, Some(Refusal::MalformedRequest));
            assert_eq!(request_id(&frames), frames.get(1).copied().unwrap_or(b""));
        }
    }

    #[test]
    fn handshake_failures_are_classified() {
        assert_eq!(
            classify_handshake_failure(
                EVENT_HANDSHAKE_FAILED_PROTOCOL,
                PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
            ),
            Some(Refusal::NoCurve)
        );
        assert_eq!(
            classify_handshake_failure(EVENT_HANDSHAKE_FAILED_PROTOCOL, PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC),
            Some(Refusal::WrongServerKey)
        );
        assert_eq!(
            classify_handshake_failure(EVENT_HANDSHAKE_FAILED_PROTOCOL, 0x1000_0000),
            Some(Refusal::Handshake)
        );
        assert_eq!(
            classify_handshake_failure(EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32),
            Some(Refusal::NoCurve)
        );
        assert_eq!(classify_handshake_failure(EVENT_HANDSHAKE_FAILED_AUTH, 400), None);
        assert_eq!(classify_handshake_failure(0x0020, 9), None);
    }

    #[test]
    fn log_limiter_allows_one_line_a_second_and_counts_the_rest() {
        let mut limiter = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limiter.allow("a", t0), Some(0));
        assert_eq!(limiter.allow("a", t0 + Duration::from_millis(10)), None);
        assert_eq!(limiter.allow("a", t0 + Duration::from_millis(999)), None);
        assert_eq!(limiter.allow("b", t0 + Duration::from_millis(999)), Some(0));
        assert_eq!(limiter.allow("a", t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(limiter.allow("a", t0 + Duration::from_millis(1001)), None);
    }
}

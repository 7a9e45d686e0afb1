//! The proxy as a CURVE server: its ZAP handler, the allow-lists it follows live, and how a
//! revoked key is cut off. Everything here is owned by the forwarding thread.
//!
//! Why the ZAP handler runs inside the forwarder's poll loop rather than on a thread of its
//! own: the handler, the per-message check and the revocation all need the same live
//! allow-list and the same table of connections; on one thread they share it without locks,
//! and a ZAP request waits at most one burst (4096 messages) for its answer.
//!
//! Revocation, in two parts:
//! - The guarantee, immediate: the ZAP handler admits a client with its Z85 public key as
//!   `User-Id`; libzmq attaches that to every message of the connection, and the forwarder
//!   drops any message whose `User-Id` is no longer listed (counted as
//!   `refused_messages{reason="revoked_key"}`).
//! - Closing the connection: libzmq cannot disconnect one peer of an XSUB/XPUB socket, so the
//!   forwarder learns each connection's file descriptor from its messages (libzmq's private
//!   `__fd` message property, behind the deprecated ZMQ_SRCFD) and the socket behind that
//!   descriptor ([`peer::socket_id`]). When a key is removed, each descriptor it was seen on
//!   is shut down ([`peer::shut_down`]: never closed, libzmq owns it, and only if it still is
//!   the same socket). libzmq then sees the connection end and tears the session down. Every
//!   subscription reaches the proxy with its descriptor (the XPUB passes all of them up), so a
//!   subscriber is known from its first subscription; a connection of a revoked key that has
//!   sent nothing since the proxy started is unknown here and is closed at its first message,
//!   which is dropped (a subscriber that never subscribed receives nothing).
//!
//! Where the lists come from (`allow_lists`): the files, followed here, until the API's
//! first list arrives through the [`AllowListInput`]; from then on the API alone, so a file
//! lagging behind can never re-admit a key the API revoked.

use super::ProxyError;
use super::allow_lists::{AllowListInput, ListSource, ParsedAllowList, Precedence};
use super::auth::{self, AllowList, LogLimiter, MAX_ZAP_FRAME_BYTES, MAX_ZAP_FRAMES, Refusal, ZapPolicy};
use super::message_source::Source;
use super::metrics::{ProxyMetrics, Side};
use super::peer::{self, SocketId};
use crate::curve::{PublicKey, SecretKey};
use crate::endpoint_list::InvalidLine;
use crate::followed_file::FollowedFile;
use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// libzmq asks the ZAP handler bound here, in the same context (RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// ZAP requests answered per wake-up, so a handshake storm cannot starve forwarding.
const ZAP_BURST: usize = 256;
/// At most one log line per reason per this long.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// How often the allow-list files are re-read without a directory event.
pub const ALLOW_LIST_RECHECK: Duration = Duration::from_secs(1);

/// How a proxy runs as a CURVE server.
#[derive(Clone, Debug, PartialEq)]
pub struct CurveServerConfig {
    pub secret: SecretKey,
    /// Z85 public keys allowed to publish, one a line, followed live.
    pub allow_publishers: PathBuf,
    /// Z85 public keys allowed to subscribe over TCP; `None`: any key (still encrypted, and
    /// the subscriber still authenticates the proxy).
    pub allow_subscribers: Option<PathBuf>,
}

/// One side's live allow-list and the connections seen on it.
struct SideAuth {
    /// `None`: every CURVE key is admitted on this side (subscribers without a list).
    list: Option<AllowList>,
    /// The file follower's lists; `None` once the API is the source (the follower then ends).
    updates: Option<watch::Receiver<ParsedAllowList>>,
    /// Descriptor -> (Z85 key, socket) of connections whose messages were seen.
    connections: HashMap<i32, Connection>,
    /// The last message's `User-Id` and verdict: messages come in runs from one peer.
    last_user: String,
    last_allowed: bool,
}

struct Connection {
    key: String,
    socket: Option<SocketId>,
}

impl SideAuth {
    fn new(list: Option<AllowList>, updates: Option<watch::Receiver<ParsedAllowList>>) -> Self {
        Self {
            list,
            updates,
            connections: HashMap::new(),
            last_user: String::new(),
            last_allowed: false,
        }
    }

    fn allows(&self, user: &str) -> bool {
        self.list.as_ref().is_none_or(|list| list.allows_z85(user))
    }
}

/// The CURVE server state of one proxy.
pub struct CurveServer {
    zap: zmq::Socket,
    publishers: SideAuth,
    subscribers: SideAuth,
    /// The API's allow-lists, when it follows them; readable too when a file follower
    /// delivered a new list.
    input: AllowListInput,
    /// Which source's lists apply.
    precedence: Precedence,
    followers: Vec<JoinHandle<()>>,
    metrics: ProxyMetrics,
    log: LogLimiter<(&'static str, &'static str)>,
    /// Revoked-key messages dropped in the current burst (added to the metrics per burst).
    pub(super) revoked_messages: u64,
    public: PublicKey,
}

/// Reads and parses an allow-list file once (at start: a list that cannot be read is a
/// configuration error then, not something to wait for).
fn read_allow_list(path: &Path) -> Result<(AllowList, Vec<InvalidLine>), ProxyError> {
    let text = std::fs::read_to_string(path).map_err(ProxyError::io(format!(
        "reading the allow-list {}",
        path.display()
    )))?;
    Ok(auth::parse_allow_list(&text))
}

impl CurveServer {
    /// Binds the ZAP handler in `context` (before any CURVE socket binds, so no handshake
    /// finds it missing), reads the allow-list files and starts following them; `input`
    /// brings the API's lists, if anything feeds it.
    pub fn start(
        context: &zmq::Context,
        config: &CurveServerConfig,
        metrics: ProxyMetrics,
        input: AllowListInput,
    ) -> Result<Self, ProxyError> {
        if !crate::curve::supported() {
            return Err(ProxyError::Config(
                "this libzmq has no CURVE support (built without libsodium)".into(),
            ));
        }
        let public = config.secret.public_key().map_err(|source| ProxyError::Key {
            context: "the CURVE secret key",
            source,
        })?;
        let zap = context
            .socket(zmq::REP)
            .map_err(ProxyError::zmq("creating the ZAP socket"))?;
        zap.set_linger(0)
            .map_err(ProxyError::zmq("setting LINGER on the ZAP socket"))?;
        zap.bind(ZAP_ENDPOINT)
            .map_err(ProxyError::zmq(format!("binding {ZAP_ENDPOINT}")))?;
        let mut followers = Vec::new();
        let mut side = |side: Side, path: Option<&PathBuf>| -> Result<SideAuth, ProxyError> {
            let Some(path) = path else {
                return Ok(SideAuth::new(None, None));
            };
            let (list, invalid) = read_allow_list(path)?;
            record_list(&metrics, side, &list, invalid.len());
            for bad in &invalid {
                tracing::warn!(side = side.as_str(), path = %path.display(), line = bad.line, text = %bad.text, reason = bad.reason, "skipping invalid allow-list line");
            }
            metrics.allow_list_updates(side, ListSource::File).inc();
            let (tx, rx) = watch::channel((list.clone(), invalid.len()));
            followers.push(follow(path.clone(), side, tx, input.waker()?)?);
            Ok(SideAuth::new(Some(list), Some(rx)))
        };
        let publishers = side(Side::Publishers, Some(&config.allow_publishers))?;
        let subscribers = side(Side::Subscribers, config.allow_subscribers.as_ref())?;
        tracing::info!(public_key = %public, publishers_allowed = publishers.list.as_ref().map_or(0, AllowList::len), "CURVE server: publishers need a listed key");
        Ok(Self {
            zap,
            publishers,
            subscribers,
            input,
            precedence: Precedence::default(),
            followers,
            metrics,
            log: LogLimiter::new(LOG_EVERY),
            revoked_messages: 0,
            public,
        })
    }

    /// The proxy's public key (derived from its secret key).
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn zap_socket(&self) -> &zmq::Socket {
        &self.zap
    }

    pub fn wake_fd(&self) -> i32 {
        self.input.wake_fd()
    }

    fn side_mut(&mut self, side: Side) -> &mut SideAuth {
        match side {
            Side::Publishers => &mut self.publishers,
            Side::Subscribers => &mut self.subscribers,
        }
    }

    fn refused(&mut self, side: Side, reason: Refusal, detail: &dyn std::fmt::Display) {
        self.metrics.auth_refused(side, reason).inc();
        if let Some(suppressed) = self.log.allow((side.as_str(), reason.as_str()), Instant::now()) {
            tracing::warn!(side = side.as_str(), reason = reason.as_str(), %detail, suppressed, "peer refused");
        }
    }

    /// Answers the ZAP requests waiting (at most a burst).
    pub fn serve_zap(&mut self) -> Result<(), ProxyError> {
        let mut frames: Vec<zmq::Message> = Vec::with_capacity(MAX_ZAP_FRAMES);
        for _ in 0..ZAP_BURST {
            frames.clear();
            let mut frame = zmq::Message::new();
            match self.zap.recv(&mut frame, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => return Ok(()),
                Err(err) => return Err(ProxyError::zmq("receiving a ZAP request")(err)),
            }
            // Keep a bounded number of bounded frames; anything beyond makes the request
            // malformed (answered 500) rather than a reason to allocate.
            let mut oversized = false;
            loop {
                let more = frame.get_more();
                if frames.len() < MAX_ZAP_FRAMES && frame.len() <= MAX_ZAP_FRAME_BYTES {
                    frames.push(std::mem::replace(&mut frame, zmq::Message::new()));
                } else {
                    oversized = true;
                }
                if !more {
                    break;
                }
                self.zap
                    .recv(&mut frame, 0)
                    .map_err(ProxyError::zmq("receiving a ZAP request"))?;
            }
            let views: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            let empty = AllowList::default();
            let policy = ZapPolicy {
                publishers: self.publishers.list.as_ref().unwrap_or(&empty),
                subscribers: self.subscribers.list.as_ref(),
            };
            let mut decision = auth::decide(&views, policy);
            if oversized {
                decision = auth::decide(&[], policy);
            }
            let side = match views.get(2) {
                Some(d) if *d == auth::SUBSCRIBER_DOMAIN.as_bytes() => Side::Subscribers,
                _ => Side::Publishers,
            };
            let reply = decision.reply(auth::request_id(&views));
            self.zap
                .send_multipart(reply, zmq::DONTWAIT)
                .map_err(ProxyError::zmq("answering a ZAP request"))?;
            if let Some(reason) = decision.refusal {
                let address = views
                    .get(3)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .unwrap_or_default();
                let key = decision.client_key.map(|k| k.to_z85()).unwrap_or_default();
                self.refused(
                    side,
                    reason,
                    &format_args!("address {address} key {key} ({})", decision.text),
                );
            }
        }
        Ok(())
    }

    /// Takes the newest allow-lists the sources delivered, the one in force by
    /// [`Precedence`], and cuts off connections of keys no longer listed.
    pub fn apply_updates(&mut self) {
        let from_api = self.input.take();
        if from_api.is_some() && self.precedence.source() == ListSource::File {
            tracing::info!(
                "the API's first allow-lists arrived: from now on they alone count, the files are no longer followed"
            );
            self.metrics.set_allow_list_source(ListSource::Api);
        }
        for side in [Side::Publishers, Side::Subscribers] {
            let state = self.side_mut(side);
            // A side without a list admits any key; neither source changes that.
            if state.list.is_none() {
                continue;
            }
            let from_file = match state.updates.as_mut() {
                Some(updates) if updates.has_changed().unwrap_or(false) => {
                    Some(updates.borrow_and_update().clone())
                }
                _ => None,
            };
            let from_api = from_api.as_ref().map(|lists| lists.side(side).clone());
            let Some(((list, invalid), source)) = self.precedence.choose(from_file, from_api) else {
                continue;
            };
            if source == ListSource::Api {
                // Its channel closed, the file follower ends.
                self.side_mut(side).updates = None;
            }
            self.metrics.allow_list_updates(side, source).inc();
            record_list(&self.metrics, side, &list, invalid);
            let state = self.side_mut(side);
            // The cached verdict was for the old list.
            state.last_user.clear();
            let revoked: Vec<i32> = state
                .connections
                .iter()
                .filter(|(_, c)| !list.allows_z85(&c.key))
                .map(|(fd, _)| *fd)
                .collect();
            tracing::info!(
                side = side.as_str(),
                source = source.as_str(),
                keys = list.len(),
                "allow-list changed"
            );
            state.list = Some(list);
            for fd in revoked {
                self.cut_off(side, fd);
            }
        }
    }

    /// Shuts down the connection on `fd` if it is still the one we saw.
    fn cut_off(&mut self, side: Side, fd: i32) {
        let Some(connection) = self.side_mut(side).connections.remove(&fd) else {
            return;
        };
        if connection
            .socket
            .is_some_and(|socket| peer::shut_down(fd, socket))
        {
            self.refused(
                side,
                Refusal::Revoked,
                &format_args!("key {}: connection closed", connection.key),
            );
        }
    }

    /// Whether a message from `source` may be forwarded: its `User-Id` (the key it was
    /// admitted with) must still be listed. Learns the connection's descriptor on the way; a
    /// message of a revoked key closes its connection.
    pub fn admit(&mut self, side: Side, source: &Source) -> bool {
        let state = self.side_mut(side);
        if state.list.is_none() {
            return true;
        }
        let allowed = match source.user.as_deref() {
            // An empty User-Id: a NULL connection the ZAP handler admitted, which it does only
            // on the subscriber side's unix sockets (their file mode and group are the bound
            // there; the subscriber list is for tcp). Never cached: "" is the empty cache.
            Some("") if side == Side::Subscribers => return true,
            Some(user) if user == state.last_user => state.last_allowed,
            Some(user) => {
                let allowed = state.allows(user);
                state.last_user.clear();
                state.last_user.push_str(user);
                state.last_allowed = allowed;
                allowed
            }
            // No ZAP handshake at all: a connection the proxy made itself (a relay's links,
            // which the forwarder does not ask about) or a message libzmq made up (no
            // descriptor). Refuse rather than guess, and record no connection under
            // another message's key.
            None => {
                self.revoked_messages += 1;
                return false;
            }
        };
        if let Some(fd) = source.fd {
            let state = self.side_mut(side);
            let known = state
                .connections
                .get(&fd)
                .is_some_and(|c| c.key == state.last_user);
            if !known && !state.last_user.is_empty() {
                let key = state.last_user.clone();
                state.connections.insert(
                    fd,
                    Connection {
                        key,
                        socket: peer::socket_id(fd),
                    },
                );
            }
            if !allowed {
                self.cut_off(side, fd);
            }
        }
        if !allowed {
            self.revoked_messages += 1;
        }
        allowed
    }

    /// A monitor event of one side: forgets closed descriptors, counts failed handshakes.
    pub fn on_event(&mut self, side: Side, code: u16, value: u32) {
        if code == crate::socket_monitor::EVENT_DISCONNECTED {
            self.side_mut(side).connections.remove(&(value as i32));
            return;
        }
        if let Some(reason) = auth::classify_handshake_failure(code, value) {
            self.refused(
                side,
                reason,
                &format_args!("handshake failed (event {code:#x}, value {value:#x})"),
            );
        }
    }

    /// Stops following the allow-lists: the followers see their channels close and end.
    pub fn close(self) {
        let CurveServer {
            zap,
            publishers,
            subscribers,
            followers,
            ..
        } = self;
        drop(zap);
        drop(publishers);
        drop(subscribers);
        for follower in followers {
            if follower.join().is_err() {
                tracing::error!("allow-list follower panicked");
            }
        }
    }
}

fn record_list(metrics: &ProxyMetrics, side: Side, list: &AllowList, invalid: usize) {
    metrics
        .allow_list_keys(side)
        .set(i64::try_from(list.len()).unwrap_or(i64::MAX));
    metrics
        .allow_list_invalid_lines(side)
        .set(i64::try_from(invalid).unwrap_or(i64::MAX));
}

/// Follows one allow-list file on a thread of its own; every new list goes into `updates`
/// and pokes the forwarder through `wake`.
fn follow(
    path: PathBuf,
    side: Side,
    updates: watch::Sender<ParsedAllowList>,
    wake: UnixStream,
) -> Result<JoinHandle<()>, ProxyError> {
    let file = FollowedFile {
        path,
        recheck: ALLOW_LIST_RECHECK,
        what: match side {
            Side::Publishers => "publisher allow-list",
            Side::Subscribers => "subscriber allow-list",
        },
    };
    let sender = updates.clone();
    let deliver = move |list: &AllowList, invalid: &[InvalidLine]| {
        let next = (list.clone(), invalid.len());
        let changed = sender.send_if_modified(|current| {
            if *current == next {
                return false;
            }
            *current = next;
            true
        });
        // A full wake-up pipe already holds a pending wake-up: nothing lost.
        if changed {
            super::handoff::wake_up(&wake);
        }
        !sender.is_closed()
    };
    crate::runtime::spawn_thread("fanout-allow-list", async move {
        file.follow(auth::parse_allow_list, deliver, updates.closed())
            .await;
    })
    .map_err(ProxyError::io("starting the allow-list follower"))
}

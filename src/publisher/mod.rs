//! The `Publisher`: one PUB socket connected to every proxy of a group, following the group's
//! live membership.
//!
//! libzmq sockets are not thread-safe, so the socket lives on one owning thread
//! (`fanout-pub`, [`socket_thread`]). Callers on any thread talk to it through
//! - a bounded batch of messages swapped with the socket thread ([`handover`]): `publish_bytes`
//!   copies the topic and payload into the batch as they will go on the wire, so our publish
//!   path allocates nothing per message (libzmq allocates one buffer for each message above
//!   its 33-byte inline size, which nearly every version-3 frame is: the envelope alone is 28) and makes no syscall unless the
//!   socket thread is asleep, and the socket thread sends a whole batch per wake-up; and
//! - a `tokio::sync::watch` channel holding the membership it should be connected to (the
//!   newest snapshot wins), looked at before every batch and every 1024 messages within one,
//!   so a join or leave never waits behind a long queue; every change also wakes an idle
//!   socket thread so it applies it at once.
//!
//! The socket thread applies a change as a diff (`connect` to joined proxies, `disconnect` from
//! departed ones, nothing else touched) and publishes what it is connected to through a second
//! `watch` ([`Publisher::connected`]).
//!
//! Memory per proxy is bounded by SNDHWM, and a slow proxy never holds the others up: the PUB
//! runs with `ZMQ_XPUB_NODROP` and every send is non-blocking, so a message a proxy's full
//! queue refuses is sent again at once to the others only, and counted
//! ([`PublisherStats::proxy_queue_full_events`]; the same code as the proxy's own count,
//! `crate::nodrop`, where the libzmq semantics relied on are written down). Loss is counted
//! where it happens: no proxy connected (`dropped_no_proxy`), a proxy's queue full
//! (`proxy_queue_full_events`), the in-process queue full for `try_publish`
//! (`dropped_queue_full`). What libzmq still drops without telling: messages no proxy has
//! subscribed to yet, and those a full proxy misses after the counted one until it has read
//! enough.

mod auth_retry;
pub mod command;
mod handover;
pub mod metrics;
mod socket_thread;

pub use metrics::PublisherMetrics;

use crate::curve::CurveClient;
use crate::membership::{Membership, MembershipSender, MembershipSource};
use crate::nodrop::set_lossy;
use crate::socket_options::{ClientOptions, client_socket, raw_socket};
use crate::wire::PublisherId;
use handover::{Handover, Limits, Payload, Refused};
use socket_thread::SocketThread;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Default of [`PublisherConfig::flat_max_payload`]: the largest payload whose version-3
/// frame (with the longest topic version 3 carries and the envelope) is still within a group's
/// default `maxMessageBytes`, 64 KiB, with CURVE's 33 bytes of box too. The proxy's
/// ZMQ_MAXMSGSIZE is that cap per frame (libzmq counts the box), so a one-frame message above
/// it would end the publisher's connection, where the same message in two frames is only
/// dropped and counted. Below it the copy pays (BENCHMARKS.md, "Where the copy stops paying").
pub const DEFAULT_FLAT_MAX_PAYLOAD: usize =
    batch_bytes_within(crate::proxy::DEFAULT_MAX_MESSAGE_BYTES as usize)
        - crate::wire::FLAT_MAX_TOPIC
        - crate::wire::ENVELOPE_LEN;

/// Default of [`PublisherConfig::batch_max_bytes`]: 16 KiB less CURVE's 33 bytes a frame.
/// Above libzmq's 8 KiB I/O batch a frame is written to the socket from its own buffer instead
/// of being copied into the batch first, so 16 KiB frames carried 1 KiB messages 1.6x as fast
/// as bare libzmq where 8 KiB frames were level with it (BENCHMARKS.md, "Several messages a
/// frame"); with or without CURVE it stays within the `maxMessageBytes` of the groups in
/// `examples/` (16 KiB) and the default (64 KiB).
pub const DEFAULT_BATCH_MAX_BYTES: usize = batch_bytes_within(16 << 10);

/// The largest frame of several messages a group whose `maxMessageBytes` is `cap` accepts
/// from a publisher, CURVE or not: libzmq checks a CURVE frame with its 33 bytes of box.
pub const fn batch_bytes_within(cap: usize) -> usize {
    cap.saturating_sub(crate::proxy::CURVE_FRAME_EXTRA as usize)
}

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// SNDHWM per connected proxy (ZeroMQ messages: a frame of several messages, wire version
    /// 4, is one, so the bytes it may hold are up to `hwm` x `batch_max_bytes` for small
    /// messages). Beyond it that proxy alone misses messages,
    /// counted in `proxy_queue_full_events`; the others and the caller are never held up.
    pub hwm: i32,
    /// ZMTP heartbeat interval; a proxy silent for 3 intervals is dropped and reconnected.
    pub heartbeat: Option<Duration>,
    /// How long `close` may spend flushing queued messages.
    pub linger: Duration,
    /// Messages the in-process queue between `publish` callers and the socket thread holds
    /// (the batch being filled; the socket thread may be sending as many more).
    pub queue: usize,
    /// Bytes that queue holds (topics, payloads, envelopes); one message bigger than this is
    /// still queued, alone. Small by default so that what a caller wrote is still in the CPU's
    /// cache when the socket thread sends it (a deep queue only absorbs bursts: a publisher
    /// that outruns the socket keeps it full, and every byte then goes through main memory;
    /// BENCHMARKS.md). Raise it (and `queue`) for `try_publish` callers with big bursts.
    pub queue_bytes: usize,
    /// A message with one payload part of at most this many bytes (and a topic of at most
    /// 255) is sent as one frame, the payload copied in with the topic and envelope (wire
    /// version 3); a bigger part goes as a frame of its own without a copy (version 2). See
    /// `crate::wire` and BENCHMARKS.md for where the copy stops paying. Keep it at most the
    /// group's `maxMessageBytes` minus 283 (the longest topic and the envelope): a frame above
    /// that cap ends the connection, while a message above it in several frames is dropped.
    pub flat_max_payload: usize,
    /// The largest frame the socket thread makes of several messages queued one after the
    /// other on the same topic (wire version 4: one libzmq message instead of one each, which
    /// is most of what a small message costs on every hop). It only joins messages that are
    /// already queued, never waits for more, so a message sent alone goes alone. 0 turns it
    /// off (for subscribers older than version 4). Keep it within the group's cap,
    /// [`batch_bytes_within`]`(maxMessageBytes)`: a frame above the cap ends the connection
    /// (`fanout publish --group` reads the cap the controller publishes and stays within it).
    pub batch_max_bytes: usize,
    /// CURVE: our key pair and the proxies' public key (every proxy of a group shares the
    /// group's server key). `None`: no authentication.
    pub curve: Option<CurveClient>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            hwm: 10_000,
            heartbeat: Some(Duration::from_secs(5)),
            linger: Duration::from_secs(1),
            queue: 8192,
            queue_bytes: 256 << 10,
            flat_max_payload: DEFAULT_FLAT_MAX_PAYLOAD,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            curve: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("ZeroMQ: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("cannot create a publisher id: {0}")]
    Random(#[from] getrandom::Error),
    #[error("the publisher is closed")]
    Closed,
    #[error("the publish queue is full: message dropped")]
    QueueFull,
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Counters kept by the socket thread (a snapshot of [`PublisherMetrics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Messages handed to the PUB socket.
    pub sent: u64,
    /// Messages the PUB socket refused (should stay 0: a send a proxy's full queue refuses is
    /// sent again for the others and counted in `proxy_queue_full_events`).
    pub send_errors: u64,
    /// Messages `try_publish` or `try_publish_bytes` dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped because no proxy was connected (none listed yet, or an empty group).
    pub dropped_no_proxy: u64,
    /// Times a proxy's queue (SNDHWM) was found full when a message was sent: that proxy
    /// missed the message, the others got it. libzmq then leaves that proxy out until it has
    /// read enough, so the messages it misses meanwhile are not counted again (its
    /// subscribers' envelope gaps count them).
    pub proxy_queue_full_events: u64,
    /// Membership snapshots applied.
    pub membership_updates: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; a list of thread
    // handles is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A membership source driven on a thread of its own, and how to stop it.
struct Follower {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// A publisher following a group's membership. Cheap to share by reference across threads
/// (`publish` takes `&self`).
pub struct Publisher {
    id: PublisherId,
    handover: Arc<Handover>,
    /// What the socket should be connected to.
    membership: MembershipSender,
    /// What the socket thread has connected to, written by that thread only.
    connected: watch::Receiver<Membership>,
    metrics: PublisherMetrics,
    socket_thread: Mutex<Option<JoinHandle<()>>>,
    followers: Mutex<Vec<Follower>>,
}

impl Publisher {
    pub fn new(config: PublisherConfig) -> Result<Self, PublisherError> {
        let id = PublisherId::random()?;
        let context = zmq::Context::new();
        let mut socket = client_socket(
            &context,
            zmq::PUB,
            &ClientOptions {
                hwm: config.hwm,
                linger: config.linger,
                heartbeat: config.heartbeat,
                curve: config.curve.clone(),
            },
        )?;
        // A full proxy queue fails the send instead of dropping silently, so that it is
        // counted; the socket thread sends without waiting and resends for the others.
        set_lossy(raw_socket(&mut socket), false)?;
        // With CURVE, the handshakes a proxy refuses are retried (`auth_retry`).
        let handshakes = match &config.curve {
            Some(_) => {
                const MONITOR: &str = "inproc://fanout-publisher-handshakes";
                socket.monitor(MONITOR, socket_thread::HANDSHAKE_EVENTS)?;
                let events = context.socket(zmq::PAIR)?;
                events.connect(MONITOR)?;
                Some(events)
            }
            None => None,
        };
        let handover = Arc::new(Handover::new(
            Limits {
                messages: config.queue.max(1),
                bytes: config.queue_bytes,
            },
            config.flat_max_payload,
        ));
        let (membership, wanted) = watch::channel(Membership::new());
        let (connected_tx, connected) = watch::channel(Membership::new());
        let metrics = PublisherMetrics::default();
        let thread = SocketThread {
            id,
            socket,
            wanted,
            connected: connected_tx,
            proxies: 0,
            metrics: metrics.clone(),
            sequences: Default::default(),
            batch_max_bytes: config.batch_max_bytes,
            last_applied: Instant::now(),
            handshakes,
            refused: Default::default(),
        };
        let for_thread = handover.clone();
        let handle = std::thread::Builder::new()
            .name("fanout-pub".into())
            .spawn(move || thread.run(for_thread, context))
            .map_err(PublisherError::Thread)?;
        tracing::debug!(publisher = %id, "publisher started");
        Ok(Self {
            id,
            handover,
            membership,
            connected,
            metrics,
            socket_thread: Mutex::new(Some(handle)),
            followers: Mutex::new(Vec::new()),
        })
    }

    /// This instance's random id, as carried in every envelope.
    pub fn id(&self) -> PublisherId {
        self.id
    }

    /// Replaces the membership (a full snapshot); the socket thread applies it at once.
    /// `Err(Closed)` once the publisher is closed.
    pub fn set_membership(&self, members: Membership) -> Result<(), PublisherError> {
        self.membership
            .send(members)
            .map_err(|_| PublisherError::Closed)?;
        self.handover
            .membership_changed()
            .map_err(|_| PublisherError::Closed)
    }

    /// Drives `source` on a small runtime of its own (thread `fanout-membership`) until the
    /// source ends or the publisher closes. A source that fails is logged; the publisher keeps
    /// its last membership.
    pub fn follow(&self, source: Box<dyn MembershipSource>) -> Result<(), PublisherError> {
        let updates = self.membership.clone();
        let changes = self.membership.subscribe();
        let handover = self.handover.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = crate::runtime::spawn_thread("fanout-membership", async move {
            let follow = async {
                let result = source.run(updates).await;
                // A source that ends (a static list) has just sent its last snapshot.
                let _ = handover.membership_changed();
                result
            };
            tokio::select! {
                result = follow => match result {
                    Ok(()) => tracing::debug!("membership source finished"),
                    Err(err) => tracing::error!(error = %err, "membership source failed; keeping the last membership"),
                },
                () = wake_on_change(changes, &handover) => {}
                _ = stopped => {}
            }
        })
        .map_err(PublisherError::Thread)?;
        lock(&self.followers).push(Follower { stop, thread });
        Ok(())
    }

    /// Queues one message: `topic` and one payload part, both copied (into the batch the
    /// socket thread sends next, laid out as they go on the wire, so nothing here is allocated
    /// per message once the batch has grown to its working size; libzmq allocates the frame
    /// when it is above 33 bytes). Blocks only while the in-process
    /// queue is full (back-pressure); never blocks on the network. The cheapest way to publish.
    pub fn publish_bytes(&self, topic: &[u8], payload: &[u8]) -> Result<(), PublisherError> {
        self.queue(topic, Payload::Borrowed(payload), true)
    }

    /// Like [`publish_bytes`](Self::publish_bytes) but never blocks: when the queue is full the
    /// message is dropped, counted, and `Err(QueueFull)` returned.
    pub fn try_publish_bytes(&self, topic: &[u8], payload: &[u8]) -> Result<(), PublisherError> {
        self.queue(topic, Payload::Borrowed(payload), false)
    }

    /// Queues one message of any number of payload parts (frames), taking ownership of them:
    /// one part up to `flat_max_payload` bytes is copied into one frame with the topic; other
    /// parts are handed to libzmq without a copy. Blocks only while the in-process queue is
    /// full (back-pressure); never blocks on the network.
    pub fn publish(&self, topic: impl AsRef<[u8]>, payload: Vec<Vec<u8>>) -> Result<(), PublisherError> {
        self.queue(topic.as_ref(), Payload::Owned(payload), true)
    }

    /// Like [`publish`](Self::publish) but never blocks: when the queue is full the message
    /// is dropped, counted, and `Err(QueueFull)` returned.
    pub fn try_publish(&self, topic: impl AsRef<[u8]>, payload: Vec<Vec<u8>>) -> Result<(), PublisherError> {
        self.queue(topic.as_ref(), Payload::Owned(payload), false)
    }

    fn queue(&self, topic: &[u8], payload: Payload<'_>, wait: bool) -> Result<(), PublisherError> {
        match self.handover.push(topic, payload, wait) {
            Ok(()) => Ok(()),
            Err(Refused::Full) => {
                self.metrics.dropped_queue_full.inc();
                Err(PublisherError::QueueFull)
            }
            Err(Refused::Closed) => Err(PublisherError::Closed),
        }
    }

    /// The endpoints the socket is connected to right now (after the newest applied snapshot).
    pub fn connected(&self) -> Membership {
        self.connected.borrow().clone()
    }

    /// The live counters, to register with a Prometheus registry.
    pub fn metrics(&self) -> &PublisherMetrics {
        &self.metrics
    }

    pub fn stats(&self) -> PublisherStats {
        self.metrics.snapshot()
    }

    /// Stops following membership, sends what is queued, and closes the socket, spending at
    /// most the configured linger on unsent messages. Idempotent.
    pub fn close(&self) {
        for follower in lock(&self.followers).drain(..) {
            let _ = follower.stop.send(());
            if follower.thread.join().is_err() {
                tracing::error!("membership thread panicked");
            }
        }
        if let Some(handle) = lock(&self.socket_thread).take() {
            // Everything published before this is sent (within the linger); later publishes
            // are refused.
            self.handover.close();
            if handle.join().is_err() {
                tracing::error!("publisher socket thread panicked");
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.close();
    }
}

/// Wakes the socket thread on every change a source sends, until the thread is gone.
async fn wake_on_change(mut changes: watch::Receiver<Membership>, handover: &Handover) {
    while changes.changed().await.is_ok() {
        if handover.membership_changed().is_err() {
            return;
        }
    }
}

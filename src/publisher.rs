//! The `Publisher`: one PUB socket connected to every proxy of a group, following the group's
//! live membership.
//!
//! libzmq sockets are not thread-safe, so the socket lives on one owning thread
//! (`fanout-pub`). Callers on any thread talk to it through
//! - a bounded message queue, drained in batches (the publish path: one channel send per
//!   message, no lock, no syscall unless the socket thread is asleep), and
//! - a membership *slot* holding the newest snapshot, checked by the socket thread before
//!   every batch, so a join or leave never waits behind a long message queue; the sink also
//!   sends a wake-up so an idle socket thread applies it at once.
//!
//! A membership change is applied as a diff: `connect` to joined proxies, `disconnect` from
//! departed ones, nothing else touched. Memory per peer is bounded by SNDHWM (a PUB drops
//! rather than blocks when a peer's queue is full).

use crate::membership::{self, Membership, MembershipError, MembershipSink, MembershipSource};
use crate::wire::{Envelope, PublisherId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Messages handled per wake-up before the membership slot is looked at again.
const BATCH: usize = 1024;
/// After a membership change, how long the idle socket thread keeps poking libzmq often so
/// connection set-up and teardown complete promptly.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// SNDHWM per connected proxy (messages). Beyond it the PUB drops for that proxy only.
    pub hwm: i32,
    /// ZMTP heartbeat interval; a proxy silent for 3 intervals is dropped and reconnected.
    pub heartbeat: Option<Duration>,
    /// How long `close` may spend flushing queued messages.
    pub linger: Duration,
    /// Capacity of the in-process queue between `publish` callers and the socket thread.
    pub queue: usize,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            hwm: 10_000,
            heartbeat: Some(Duration::from_secs(5)),
            linger: Duration::from_secs(1),
            queue: 8192,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("ZeroMQ: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("cannot create a publisher id: {0}")]
    Random(String),
    #[error("the publisher is closed")]
    Closed,
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

impl From<PublisherError> for crate::Error {
    fn from(e: PublisherError) -> Self {
        match e {
            PublisherError::Zmq(z) => crate::Error::Zmq(z),
            other => crate::Error::Other(other.to_string()),
        }
    }
}

/// Counters kept by the socket thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Messages handed to the PUB socket.
    pub sent: u64,
    /// Messages the PUB socket refused (should stay 0: a PUB drops silently per peer).
    pub send_errors: u64,
    /// Membership snapshots applied.
    pub membership_updates: u64,
}

enum Command {
    Publish {
        topic: Vec<u8>,
        frames: Vec<Vec<u8>>,
    },
    /// Look at the membership slot (sent by the sink; may be dropped when the queue is full,
    /// in which case the busy socket thread sees the slot before its next batch anyway).
    Wake,
    Close,
}

/// State shared between the handle and the socket thread.
struct Shared {
    pending: Mutex<Option<Membership>>,
    has_pending: AtomicBool,
    connected: Mutex<Membership>,
    closed: AtomicBool,
    sent: AtomicU64,
    send_errors: AtomicU64,
    membership_updates: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the data (a
    // membership set) is still consistent enough to go on.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A publisher following a group's membership. Cheap to share by reference across threads
/// (`publish` takes `&self`).
pub struct Publisher {
    id: PublisherId,
    tx: SyncSender<Command>,
    shared: Arc<Shared>,
    socket_thread: Mutex<Option<JoinHandle<()>>>,
    followers: Mutex<Vec<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl Publisher {
    pub fn new(config: PublisherConfig) -> Result<Self, PublisherError> {
        let id = PublisherId::random().map_err(|e| PublisherError::Random(e.to_string()))?;
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::PUB)?;
        socket.set_sndhwm(config.hwm)?;
        socket.set_linger(i32::try_from(config.linger.as_millis()).unwrap_or(i32::MAX))?;
        socket.set_reconnect_ivl(100)?;
        socket.set_reconnect_ivl_max(5_000)?;
        if let Some(interval) = config.heartbeat {
            crate::proxy::HeartbeatOptions::from_interval(interval).apply(&socket)?;
        }
        let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
        let shared = Arc::new(Shared {
            pending: Mutex::new(None),
            has_pending: AtomicBool::new(false),
            connected: Mutex::new(Membership::new()),
            closed: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            membership_updates: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("fanout-pub".into())
            .spawn(move || SocketThread::new(id, socket, thread_shared).run(rx, ctx))
            .map_err(PublisherError::Thread)?;
        tracing::debug!(publisher = %id, "publisher started");
        Ok(Self {
            id,
            tx,
            shared,
            socket_thread: Mutex::new(Some(handle)),
            followers: Mutex::new(Vec::new()),
        })
    }

    /// This instance's random id, as carried in every envelope.
    pub fn id(&self) -> PublisherId {
        self.id
    }

    /// A sink that sources (or anyone) can push full membership snapshots into. Invalid
    /// endpoints in a snapshot are logged and skipped. Returns `SinkClosed` once the publisher
    /// is closed.
    pub fn membership_sink(&self) -> MembershipSink {
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        MembershipSink::new(move |snapshot: Membership| {
            if shared.closed.load(Ordering::Acquire) {
                return Err(MembershipError::SinkClosed);
            }
            let valid: Membership = snapshot
                .into_iter()
                .filter(|e| match membership::validate_endpoint(e) {
                    Ok(()) => true,
                    Err(err) => {
                        tracing::warn!(error = %err, "skipping invalid endpoint");
                        false
                    }
                })
                .collect();
            *lock(&shared.pending) = Some(valid);
            shared.has_pending.store(true, Ordering::Release);
            match tx.try_send(Command::Wake) {
                Ok(()) | Err(TrySendError::Full(_)) => Ok(()),
                Err(TrySendError::Disconnected(_)) => Err(MembershipError::SinkClosed),
            }
        })
    }

    /// Drives `source` on a small runtime of its own (thread `fanout-membership`) until the
    /// source ends or the publisher closes. A source that fails is logged; the publisher keeps
    /// its last membership.
    pub fn follow(&self, source: Box<dyn MembershipSource>) -> Result<(), PublisherError> {
        let sink = self.membership_sink();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(PublisherError::Thread)?;
        let handle = std::thread::Builder::new()
            .name("fanout-membership".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        result = source.run(sink) => match result {
                            Ok(()) => tracing::debug!("membership source finished"),
                            Err(err) => tracing::error!(error = %err, "membership source failed; keeping the last membership"),
                        },
                        _ = stop_rx => {}
                    }
                });
            })
            .map_err(PublisherError::Thread)?;
        lock(&self.followers).push((stop_tx, handle));
        Ok(())
    }

    /// Queues one message: `topic` then the envelope then `payload` frames. Blocks only while
    /// the in-process queue is full (back-pressure); never blocks on the network.
    pub fn publish(&self, topic: impl Into<Vec<u8>>, payload: Vec<Vec<u8>>) -> Result<(), PublisherError> {
        self.tx
            .send(Command::Publish {
                topic: topic.into(),
                frames: payload,
            })
            .map_err(|_| PublisherError::Closed)
    }

    /// The endpoints the socket is connected to right now (after the newest applied snapshot).
    pub fn connected(&self) -> Membership {
        lock(&self.shared.connected).clone()
    }

    pub fn stats(&self) -> PublisherStats {
        PublisherStats {
            sent: self.shared.sent.load(Ordering::Relaxed),
            send_errors: self.shared.send_errors.load(Ordering::Relaxed),
            membership_updates: self.shared.membership_updates.load(Ordering::Relaxed),
        }
    }

    /// Stops following membership, sends what is queued, and closes the socket, spending at
    /// most the configured linger on unsent messages. Idempotent.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        for (stop, handle) in lock(&self.followers).drain(..) {
            let _ = stop.send(());
            if handle.join().is_err() {
                tracing::error!("membership thread panicked");
            }
        }
        if let Some(handle) = lock(&self.socket_thread).take() {
            // Close goes behind queued messages, so everything published before it is sent.
            let _ = self.tx.send(Command::Close);
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

/// Everything the owning thread keeps: the socket, current membership, per-topic sequences.
struct SocketThread {
    id: PublisherId,
    socket: zmq::Socket,
    shared: Arc<Shared>,
    current: Membership,
    sequences: HashMap<Vec<u8>, u64>,
}

impl SocketThread {
    fn new(id: PublisherId, socket: zmq::Socket, shared: Arc<Shared>) -> Self {
        Self {
            id,
            socket,
            shared,
            current: Membership::new(),
            sequences: HashMap::new(),
        }
    }

    fn run(mut self, rx: Receiver<Command>, ctx: zmq::Context) {
        let mut changed_at = None;
        'outer: loop {
            if self.apply_pending_membership() {
                changed_at = Some(Instant::now());
            }
            // libzmq runs a socket's side of connection teardown (after `disconnect`) and
            // set-up only when the owning thread calls into the socket. An idle publisher
            // would otherwise keep a departed proxy's TCP connection open indefinitely, so
            // poke the socket on every wake-up, and often for a while after a change.
            if let Err(err) = self.socket.get_events() {
                tracing::warn!(error = %err, "cannot process socket commands");
            }
            let settling = changed_at.is_some_and(|t: Instant| t.elapsed() < SETTLE);
            let idle_wait = if settling {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(200)
            };
            let first = match rx.recv_timeout(idle_wait) {
                Ok(cmd) => cmd,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Publish { topic, frames } => self.send(topic, frames),
                    Command::Wake => {}
                    Command::Close => break 'outer,
                }
                handled += 1;
                if handled < BATCH {
                    next = rx.try_recv().ok();
                }
            }
        }
        self.shared.closed.store(true, Ordering::Release);
        lock(&self.shared.connected).clear();
        // Dropping the socket then the context waits at most LINGER for unsent messages.
        drop(self.socket);
        drop(ctx);
        tracing::debug!(publisher = %self.id, "publisher closed");
    }

    /// Applies the newest membership snapshot, if any; true if one was applied.
    fn apply_pending_membership(&mut self) -> bool {
        if !self.shared.has_pending.swap(false, Ordering::AcqRel) {
            return false;
        }
        let Some(next) = lock(&self.shared.pending).take() else {
            return false;
        };
        let change = membership::diff(&self.current, &next);
        for endpoint in &change.left {
            match self.socket.disconnect(endpoint) {
                Ok(()) => tracing::info!(%endpoint, "disconnected from departed proxy"),
                Err(err) => tracing::warn!(%endpoint, error = %err, "disconnect failed"),
            }
            self.current.remove(endpoint);
        }
        for endpoint in &change.joined {
            match self.socket.connect(endpoint) {
                Ok(()) => {
                    tracing::info!(%endpoint, "connecting to new proxy");
                    self.current.insert(endpoint.clone());
                }
                Err(err) => tracing::warn!(%endpoint, error = %err, "connect failed; skipping this proxy"),
            }
        }
        *lock(&self.shared.connected) = self.current.clone();
        self.shared.membership_updates.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn send(&mut self, topic: Vec<u8>, frames: Vec<Vec<u8>>) {
        let sequence = match self.sequences.get_mut(&topic) {
            Some(seq) => {
                *seq += 1;
                *seq
            }
            None => {
                self.sequences.insert(topic.clone(), 0);
                0
            }
        };
        let envelope = Envelope {
            publisher: self.id,
            sequence,
        }
        .encode();
        let result = (|| {
            self.socket.send(topic, zmq::SNDMORE)?;
            let n = frames.len();
            self.socket
                .send(&envelope[..], if n == 0 { 0 } else { zmq::SNDMORE })?;
            for (i, frame) in frames.into_iter().enumerate() {
                self.socket
                    .send(frame, if i + 1 == n { 0 } else { zmq::SNDMORE })?;
            }
            Ok::<(), zmq::Error>(())
        })();
        match result {
            Ok(()) => {
                self.shared.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.shared.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "send failed");
            }
        }
    }
}

//! The `Publisher`: one PUB socket connected to every proxy of a group, following the group's
//! live membership.
//!
//! libzmq sockets are not thread-safe, so the socket lives on one owning thread
//! (`fanout-pub`, [`socket_thread`]). Callers on any thread talk to it through
//! - a bounded message queue, drained in batches (the publish path: one channel send per
//!   message, no lock, no syscall unless the socket thread is asleep), and
//! - a `tokio::sync::watch` channel holding the membership it should be connected to (the
//!   newest snapshot wins), looked at before every batch, so a join or leave never waits
//!   behind a long message queue; every change also queues a wake-up so an idle socket thread
//!   applies it at once.
//!
//! The socket thread applies a change as a diff (`connect` to joined proxies, `disconnect` from
//! departed ones, nothing else touched) and publishes what it is connected to through a second
//! `watch` ([`Publisher::connected`]). Memory per peer is bounded by SNDHWM (a PUB drops
//! rather than blocks when a peer's queue is full).

mod auth_retry;
pub mod command;
pub mod metrics;
mod socket_thread;

pub use metrics::PublisherMetrics;

use crate::curve::CurveClient;
use crate::membership::{Membership, MembershipSender, MembershipSource};
use crate::socket_options::{ClientOptions, client_socket};
use crate::wire::PublisherId;
use socket_thread::{Command, SocketThread};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

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
    /// Messages the PUB socket refused (should stay 0: a PUB drops silently per peer).
    pub send_errors: u64,
    /// Messages `try_publish` dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped because no proxy was connected (none listed yet, or an empty group).
    pub dropped_no_proxy: u64,
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
    commands: SyncSender<Command>,
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
        let socket = client_socket(
            &context,
            zmq::PUB,
            &ClientOptions {
                hwm: config.hwm,
                linger: config.linger,
                heartbeat: config.heartbeat,
                curve: config.curve.clone(),
            },
        )?;
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
        let (commands, queue) = mpsc::sync_channel(config.queue.max(1));
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
            topic_frame: Vec::new(),
            last_applied: Instant::now(),
            handshakes,
            refused: Default::default(),
        };
        let handle = std::thread::Builder::new()
            .name("fanout-pub".into())
            .spawn(move || thread.run(queue, context))
            .map_err(PublisherError::Thread)?;
        tracing::debug!(publisher = %id, "publisher started");
        Ok(Self {
            id,
            commands,
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
        wake(&self.commands).map_err(|()| PublisherError::Closed)
    }

    /// Drives `source` on a small runtime of its own (thread `fanout-membership`) until the
    /// source ends or the publisher closes. A source that fails is logged; the publisher keeps
    /// its last membership.
    pub fn follow(&self, source: Box<dyn MembershipSource>) -> Result<(), PublisherError> {
        let updates = self.membership.clone();
        let changes = self.membership.subscribe();
        let commands = self.commands.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = crate::runtime::spawn_thread("fanout-membership", async move {
            let follow = async {
                let result = source.run(updates).await;
                // A source that ends (a static list) has just sent its last snapshot.
                let _ = wake(&commands);
                result
            };
            tokio::select! {
                result = follow => match result {
                    Ok(()) => tracing::debug!("membership source finished"),
                    Err(err) => tracing::error!(error = %err, "membership source failed; keeping the last membership"),
                },
                () = wake_on_change(changes, &commands) => {}
                _ = stopped => {}
            }
        })
        .map_err(PublisherError::Thread)?;
        lock(&self.followers).push(Follower { stop, thread });
        Ok(())
    }

    /// Queues one message: `topic` then the envelope then `payload` frames. Blocks only while
    /// the in-process queue is full (back-pressure); never blocks on the network.
    pub fn publish(&self, topic: impl Into<Vec<u8>>, payload: Vec<Vec<u8>>) -> Result<(), PublisherError> {
        self.commands
            .send(Command::Publish {
                topic: topic.into(),
                frames: payload,
            })
            .map_err(|_| PublisherError::Closed)
    }

    /// Like [`publish`](Self::publish) but never blocks: when the queue is full the message
    /// is dropped, counted, and `Err(QueueFull)` returned.
    pub fn try_publish(
        &self,
        topic: impl Into<Vec<u8>>,
        payload: Vec<Vec<u8>>,
    ) -> Result<(), PublisherError> {
        let command = Command::Publish {
            topic: topic.into(),
            frames: payload,
        };
        match self.commands.try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.metrics.dropped_queue_full.inc();
                Err(PublisherError::QueueFull)
            }
            Err(TrySendError::Disconnected(_)) => Err(PublisherError::Closed),
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
            // Close goes behind queued messages, so everything published before it is sent.
            let _ = self.commands.send(Command::Close);
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

/// Queues a wake-up for the socket thread. A full queue needs none: the busy thread looks at
/// the membership before its next batch anyway. `Err` once the thread is gone.
fn wake(commands: &SyncSender<Command>) -> Result<(), ()> {
    match commands.try_send(Command::MembershipChanged { at: Instant::now() }) {
        Ok(()) | Err(TrySendError::Full(_)) => Ok(()),
        Err(TrySendError::Disconnected(_)) => Err(()),
    }
}

/// Wakes the socket thread on every change a source sends, until the thread is gone.
async fn wake_on_change(mut changes: watch::Receiver<Membership>, commands: &SyncSender<Command>) {
    while changes.changed().await.is_ok() {
        if wake(commands).is_err() {
            return;
        }
    }
}

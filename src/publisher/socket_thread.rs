//! The publisher's socket thread: the only code that touches the PUB socket.

use super::auth_retry::RefusedProxies;
use super::metrics::PublisherMetrics;
use crate::membership::{self, Membership};
use crate::proxy::monitor::{EVENT_HANDSHAKE_FAILED_AUTH, EVENT_HANDSHAKE_SUCCEEDED, MonitorEvent};
use crate::wire::{Envelope, PublisherId};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// libzmq keeps message parts up to this size inline (its "very small message"), so sending
/// them from a slice allocates nothing; larger parts are handed over as the caller's buffer.
const SMALL_FRAME: usize = 33;
/// Messages handled per wake-up before the membership is looked at again.
const BATCH: usize = 1024;
/// After a membership change, how long the idle socket thread keeps poking libzmq often so
/// connection set-up and teardown complete promptly.
const SETTLE: Duration = Duration::from_secs(2);

pub(super) enum Command {
    Publish {
        topic: Vec<u8>,
        frames: Vec<Vec<u8>>,
    },
    /// The membership watch changed at `at` (may be dropped when the queue is full, in which
    /// case the busy socket thread sees the change before its next batch anyway).
    MembershipChanged {
        at: Instant,
    },
    Close,
}

/// Everything the owning thread keeps: the socket, the membership channels, per-topic
/// sequences.
pub(super) struct SocketThread {
    pub(super) id: PublisherId,
    pub(super) socket: zmq::Socket,
    /// What to be connected to.
    pub(super) wanted: watch::Receiver<Membership>,
    /// What the socket is connected to: the one copy of that state.
    pub(super) connected: watch::Sender<Membership>,
    /// How many proxies `connected` holds, read on every send without the watch's lock.
    pub(super) proxies: usize,
    pub(super) metrics: PublisherMetrics,
    pub(super) sequences: HashMap<Vec<u8>, u64>,
    /// Frame 0 (topic and envelope) is built here for every message: one buffer, reused.
    pub(super) topic_frame: Vec<u8>,
    /// When a snapshot was last applied (for the membership lag).
    pub(super) last_applied: Instant,
    /// With CURVE: the PAIR end of the socket's monitor ([`HANDSHAKE_EVENTS`]), to retry the
    /// proxies that refuse our key (`auth_retry`).
    pub(super) handshakes: Option<zmq::Socket>,
    pub(super) refused: RefusedProxies,
}

/// The monitor events a CURVE publisher watches.
pub(super) const HANDSHAKE_EVENTS: i32 = (EVENT_HANDSHAKE_FAILED_AUTH | EVENT_HANDSHAKE_SUCCEEDED) as i32;

impl SocketThread {
    pub(super) fn run(mut self, queue: Receiver<Command>, context: zmq::Context) {
        let mut changed_at = None;
        'outer: loop {
            if self.apply_wanted_membership() {
                changed_at = Some(Instant::now());
            }
            // libzmq runs a socket's side of connection teardown (after `disconnect`) and
            // set-up only when the owning thread calls into the socket. An idle publisher
            // would otherwise keep a departed proxy's TCP connection open indefinitely, so
            // poke the socket on every wake-up, and often for a while after a change.
            if let Err(err) = self.socket.get_events() {
                tracing::warn!(error = %err, "cannot process socket commands");
            }
            self.retry_refused_proxies();
            let settling = changed_at.is_some_and(|t: Instant| t.elapsed() < SETTLE);
            let idle_wait = if settling {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(200)
            };
            let first = match queue.recv_timeout(idle_wait) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(command) = next.take() {
                match command {
                    Command::Publish { topic, frames } => self.send(topic, frames),
                    Command::MembershipChanged { at } => {
                        if self.apply_wanted_membership() {
                            changed_at = Some(Instant::now());
                        }
                        let lag = self.last_applied.saturating_duration_since(at);
                        self.metrics.membership_lag.observe(lag.as_secs_f64());
                    }
                    Command::Close => break 'outer,
                }
                handled += 1;
                if handled < BATCH {
                    next = queue.try_recv().ok();
                }
            }
        }
        self.connected.send_replace(Membership::new());
        self.proxies = 0;
        self.metrics.connected_proxies.set(0);
        // Dropping the sockets then the context waits at most LINGER for unsent messages (the
        // context waits for every socket: the monitor's end too).
        drop(self.handshakes.take());
        drop(self.socket);
        drop(context);
        tracing::debug!(publisher = %self.id, "publisher closed");
    }

    /// Applies the newest wanted membership, if it changed; true if it did.
    fn apply_wanted_membership(&mut self) -> bool {
        if !self.wanted.has_changed().unwrap_or(false) {
            return false;
        }
        let next = self.wanted.borrow_and_update().clone();
        let socket = &self.socket;
        let refused = &mut self.refused;
        self.connected.send_modify(|current| {
            let change = membership::diff(current, &next);
            for endpoint in &change.left {
                refused.forget(endpoint);
                match socket.disconnect(endpoint.as_str()) {
                    Ok(()) => tracing::info!(%endpoint, "disconnected from departed proxy"),
                    Err(err) => tracing::warn!(%endpoint, error = %err, "disconnect failed"),
                }
                current.remove(endpoint);
            }
            for endpoint in change.joined {
                match socket.connect(endpoint.as_str()) {
                    Ok(()) => {
                        tracing::info!(%endpoint, "connecting to new proxy");
                        current.insert(endpoint);
                    }
                    Err(err) => {
                        tracing::warn!(%endpoint, error = %err, "connect failed; skipping this proxy")
                    }
                }
            }
        });
        self.proxies = self.connected.borrow().len();
        self.metrics
            .connected_proxies
            .set(i64::try_from(self.proxies).unwrap_or(i64::MAX));
        self.metrics.membership_updates.inc();
        self.last_applied = Instant::now();
        true
    }

    /// Reads the handshake events libzmq queued, then connects again the proxies whose refusal
    /// is due for another attempt (`auth_retry`: libzmq itself never would).
    fn retry_refused_proxies(&mut self) {
        let Some(handshakes) = &self.handshakes else {
            return;
        };
        let now = Instant::now();
        while let Ok(frames) = handshakes.recv_multipart(zmq::DONTWAIT) {
            let Some(event) = frames.first().and_then(|frame| MonitorEvent::parse(frame)) else {
                continue;
            };
            let address = frames.get(1).and_then(|a| std::str::from_utf8(a).ok());
            let Some(endpoint) =
                address.and_then(|a| self.connected.borrow().iter().find(|e| e.as_str() == a).cloned())
            else {
                continue;
            };
            match event.code {
                EVENT_HANDSHAKE_FAILED_AUTH => {
                    self.metrics.auth_refused_handshakes.inc();
                    if self.refused.refused(endpoint.clone(), now) {
                        tracing::warn!(
                            %endpoint,
                            status = event.value,
                            retry_ms = super::auth_retry::AUTH_RETRY.as_millis(),
                            "the proxy refused our CURVE key (not on its allow-list?); retrying until it is admitted"
                        );
                    }
                }
                EVENT_HANDSHAKE_SUCCEEDED if self.refused.admitted(&endpoint) => {
                    tracing::info!(%endpoint, "the proxy admitted our CURVE key");
                }
                _ => {}
            }
        }
        for endpoint in self.refused.due(now) {
            // The refused connection has ended, but libzmq still lists its endpoint; without
            // the disconnect a second connect would add a duplicate once it is admitted.
            let _ = self.socket.disconnect(endpoint.as_str());
            if let Err(err) = self.socket.connect(endpoint.as_str()) {
                tracing::warn!(%endpoint, error = %err, "reconnecting after a refusal failed");
            }
        }
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
        if self.proxies == 0 {
            // A PUB with no peer would drop it without a trace. The sequence still advances:
            // the message existed and is lost, as a subscriber's gap would say.
            self.metrics.dropped_no_proxy.inc();
            return;
        }
        Envelope {
            publisher: self.id,
            sequence,
        }
        .write_topic_frame(&topic, &mut self.topic_frame);
        let result = (|| {
            let n = frames.len();
            // Copied into the message: a short topic and the envelope fit libzmq's inline
            // small-message buffer, so this allocates nothing.
            self.socket
                .send(&self.topic_frame[..], if n == 0 { 0 } else { zmq::SNDMORE })?;
            for (i, frame) in frames.into_iter().enumerate() {
                let flags = if i + 1 == n { 0 } else { zmq::SNDMORE };
                if frame.len() <= SMALL_FRAME {
                    // Inline in the message, copied per pipe: cheaper than a shared buffer.
                    self.socket.send(&frame[..], flags)?;
                } else {
                    // Handed over without a copy, shared by every pipe.
                    self.socket.send(frame, flags)?;
                }
            }
            Ok::<(), zmq::Error>(())
        })();
        match result {
            Ok(()) => {
                self.metrics.messages_sent.inc();
            }
            Err(err) => {
                self.metrics.send_failures.inc();
                tracing::warn!(error = %err, "send failed");
            }
        };
    }
}

//! A proxy as a relay of the relay tree: its XPUB socket, besides serving its own node's
//! subscribers, connects to the publisher port of each leaf proxy assigned to it. The leaf's
//! XSUB sees the relay as one more publisher, and the leaf's subscriptions come back up
//! through the relay's XPUB like any subscriber's: nothing on the wire changes.
//!
//! The assignment comes from outside (the CLI follows the relay's assignment slices through
//! the API, `endpoint_list::relay_slice_selector`; a test or the benchmark hands sets in
//! directly) through a [`LeafFeed`] (a `handoff`: only the newest set counts, sets delivered
//! while the thread was busy are never queued) to the forwarding thread, which owns the XPUB
//! socket (libzmq sockets are not thread-safe) and connects and disconnects there
//! ([`RelayLinks::apply`]).
//!
//! With CURVE a relay connects as a CURVE client with the group's own key pair (every proxy
//! holds its secret half already); the controller admits that key on every leaf's publisher
//! allow-list while relays are enabled.
//!
//! The links are connections of the relay's subscriber side that the relay made itself; the
//! forwarder tells them from its subscribers' ([`LeafLinks`](super::leaf_links::LeafLinks))
//! and bounds them as what they are, a leaf proxy's whole upstream.

use super::ProxyError;
use super::handoff::{Handoff, Inbox, handoff};
use crate::curve::{CurveClient, KeyPair, SecretKey};
use crate::membership::{Membership, diff};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::os::unix::io::RawFd;

/// The relay's metrics (`fanout_proxy_relay_...`), registered by the process that runs it.
#[derive(Clone, Debug, Default)]
pub struct RelayMetrics {
    /// Leaves the relay is connected to (connects asked of libzmq; it reconnects by itself).
    pub leaves: Gauge,
    /// Leaf links made or dropped because the assignment changed.
    pub link_changes: Counter,
}

impl RelayMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("fanout_proxy_relay");
        registry.register(
            "leaves",
            "Leaf proxies this relay forwards to (its assignment; 0 while it is no relay)",
            self.leaves.clone(),
        );
        registry.register(
            "link_changes",
            "Links to leaf proxies made or dropped because the relay's assignment changed",
            self.link_changes.clone(),
        );
    }
}

/// Where the relay's assignment is handed in, from any thread: [`Handoff::deliver`] makes a
/// set the relay's assignment (the newest set wins) and is false once the proxy is gone.
pub type LeafFeed = Handoff<Membership>;

/// The forwarding thread's end of a [`LeafFeed`], given to [`super::start_relay`].
#[derive(Debug)]
pub struct RelayInput {
    inbox: Inbox<Membership>,
    metrics: RelayMetrics,
}

/// A feed and the input it fills.
pub fn leaf_feed(metrics: RelayMetrics) -> Result<(LeafFeed, RelayInput), ProxyError> {
    let (feed, inbox) = handoff("the relay's assignment")?;
    Ok((feed, RelayInput { inbox, metrics }))
}

/// The relay's links, owned by the forwarding thread.
pub(super) struct RelayLinks {
    input: RelayInput,
    connected: Membership,
}

impl RelayLinks {
    /// Prepares `xpub` (already bound) for connecting to leaves: frames of up to `frame_limit`
    /// bytes from a leaf (what its subscriber side takes, in the link's framing), and with
    /// CURVE (`secret` is the group's secret key) as a client that expects the leaves to hold
    /// the same key pair.
    pub(super) fn new(
        input: RelayInput,
        xpub: &zmq::Socket,
        frame_limit: i64,
        secret: Option<&SecretKey>,
    ) -> Result<Self, ProxyError> {
        // Listeners took their options when bound; this and the keys apply to connects.
        xpub.set_maxmsgsize(frame_limit)
            .map_err(ProxyError::zmq("setting MAXMSGSIZE of the relay's leaf links"))?;
        if let Some(secret) = secret {
            let public = secret.public_key().map_err(|source| ProxyError::Key {
                context: "deriving the relay's public key",
                source,
            })?;
            // The leaves are servers with the group's key, and admit the relay by the same key.
            let client = CurveClient {
                server: public,
                keys: KeyPair {
                    public,
                    secret: secret.clone(),
                },
            };
            xpub.set_curve_server(false)
                .and_then(|()| client.apply(xpub))
                .map_err(ProxyError::zmq(
                    "setting the CURVE client keys of the relay's leaf links",
                ))?;
        }
        Ok(Self {
            input,
            connected: Membership::new(),
        })
    }

    /// Readable when a new assignment is waiting.
    pub(super) fn wake_fd(&self) -> RawFd {
        self.input.inbox.wake_fd()
    }

    /// Takes the newest assignment and connects to the leaves that joined it and disconnects
    /// from the ones that left. Never fails the proxy: a link libzmq refuses is logged.
    pub(super) fn apply(&mut self, xpub: &zmq::Socket) {
        let Some(newest) = self.input.inbox.take() else {
            return;
        };
        let change = diff(&self.connected, &newest);
        for leaf in &change.left {
            // ENOENT (never connected) is fine: the set is what counts.
            if let Err(err) = xpub.disconnect(leaf.as_str()) {
                tracing::debug!(%leaf, error = %err, "disconnecting a leaf");
            }
            self.connected.remove(leaf);
        }
        for leaf in &change.joined {
            match xpub.connect(leaf.as_str()) {
                Ok(()) => {
                    self.connected.insert(leaf.clone());
                }
                Err(err) => tracing::warn!(%leaf, error = %err, "cannot connect to a leaf"),
            }
        }
        if !change.is_empty() {
            tracing::info!(
                joined = change.joined.len(),
                left = change.left.len(),
                leaves = self.connected.len(),
                "relay assignment changed"
            );
        }
        let metrics = &self.input.metrics;
        metrics
            .link_changes
            .inc_by((change.joined.len() + change.left.len()) as u64);
        metrics
            .leaves
            .set(i64::try_from(self.connected.len()).unwrap_or(i64::MAX));
    }
}

//! Subscriptions from the subscriber side to the publisher side: every subscribe and
//! unsubscribe libzmq's XPUB hands up (it runs in "verboser" mode) is applied to the
//! per-connection [`SubscriberBook`], and what that changes in the set of held topics goes
//! upstream through [`LiveSubscriptions`]. Owned by the forwarding thread.
//!
//! Why not libzmq's own reference counting (a plain XPUB, or ZMQ_XPUB_MANUAL): a plain XPUB
//! stores every prefix a subscriber sends, without limit, passes up an unsubscribe of a topic
//! the sender never held (so any subscriber could unsubscribe everyone else's topics upstream),
//! and swallows repeated subscriptions (so a subscriber's connection was never seen, and a
//! revoked CURVE subscriber never cut off). ZMQ_XPUB_MANUAL in libzmq 4.3.4 stores every
//! subscription too (per connection, to unsubscribe them when it leaves), lets a subscription
//! received just before its connection ended be applied to the freed pipe (fixed only in
//! 4.3.5), and pairs the wrong connection with a subscription when a subscriber sends anything
//! else upstream (its queue of pipes skips non-subscription messages). docs/security.md has
//! the details.

use super::metrics::ProxyMetrics;
use super::peer::{self, SocketId};
use super::subscriber_book::{Applied, Change, ConnectionKind, PerSubscriber, SubscriberBook};
use super::subscriptions::{
    LiveSubscriptions, SUBSCRIBE_TO_EVERYTHING, SubscriptionLimits, UpstreamChange, subscription_message,
};

/// The connection a subscribe or unsubscribe came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub fd: i32,
    /// The socket on `fd` now.
    pub id: SocketId,
    pub kind: ConnectionKind,
}

pub struct SubscriptionRelay {
    book: SubscriberBook<SocketId>,
    live: LiveSubscriptions,
    /// Reused buffer of the changes one event makes.
    changes: Vec<Change>,
}

impl SubscriptionRelay {
    pub fn new(limits: SubscriptionLimits) -> Self {
        Self {
            book: SubscriberBook::new(
                PerSubscriber {
                    max_topics: limits.max_topics_per_subscriber,
                    max_topic_bytes: limits.max_topic_bytes,
                },
                // A link to a leaf carries what the leaf sends upstream: at most `max_topics`
                // distinct topics, then the subscription to everything once it collapsed (its
                // XSUB sends them all again on every reconnect). Its topics are bounded by the
                // leaf's own subscribers' bound, the same flag of the same group.
                PerSubscriber {
                    max_topics: limits.max_topics.saturating_add(1),
                    max_topic_bytes: limits.max_topic_bytes,
                },
            ),
            live: LiveSubscriptions::new(limits),
            changes: Vec::new(),
        }
    }

    /// Applies a subscribe (`subscribe`) or unsubscribe of `topic` from `holder`'s
    /// connection, and sends upstream on `xsub` what it changes. A refused subscription is
    /// returned for the caller to close the connection.
    pub fn apply(
        &mut self,
        xsub: &zmq::Socket,
        metrics: &ProxyMetrics,
        holder: Holder,
        subscribe: bool,
        topic: &[u8],
    ) -> Applied {
        let Holder { fd, id, kind } = holder;
        let mut changes = std::mem::take(&mut self.changes);
        let applied = if subscribe {
            self.book.subscribe(fd, id, kind, topic, &mut changes)
        } else {
            self.book.unsubscribe(fd, id, topic, &mut changes)
        };
        self.send(xsub, metrics, &mut changes);
        self.changes = changes;
        applied
    }

    /// The monitor reported the connection on `fd` ended: if the socket recorded for it is
    /// gone, its topics are released. (A descriptor already reused by a subscriber whose
    /// subscriptions were applied keeps its entry: the event was about the old socket.)
    pub fn connection_ended(&mut self, xsub: &zmq::Socket, metrics: &ProxyMetrics, fd: i32) {
        if self.book.id(fd).is_none_or(|id| peer::socket_id(fd) == Some(*id)) {
            return;
        }
        let mut changes = std::mem::take(&mut self.changes);
        self.book.close(fd, &mut changes);
        self.send(xsub, metrics, &mut changes);
        self.changes = changes;
    }

    /// Releases the topics of every connection whose socket is gone (a monitor event can come
    /// before libzmq closes the descriptor, or be lost).
    pub fn retain_open(&mut self, xsub: &zmq::Socket, metrics: &ProxyMetrics) {
        let mut changes = std::mem::take(&mut self.changes);
        self.book
            .retain_open(|fd, id| peer::socket_id(fd) == Some(*id), &mut changes);
        self.send(xsub, metrics, &mut changes);
        self.changes = changes;
    }

    /// Sends upstream what `changes` (drained) mean, in order.
    fn send(&mut self, xsub: &zmq::Socket, metrics: &ProxyMetrics, changes: &mut Vec<Change>) {
        let mut over_limit = 0;
        for change in changes.drain(..) {
            let (upstream, topic, subscribe) = match &change {
                Change::Acquired(topic) => (self.live.acquire(topic), topic, true),
                Change::Released(topic) => (self.live.release(topic), topic, false),
            };
            let message = match upstream {
                UpstreamChange::Subscribe | UpstreamChange::Unsubscribe => {
                    subscription_message(subscribe, topic)
                }
                UpstreamChange::SubscribeToEverything => {
                    over_limit += 1;
                    tracing::warn!(
                        "subscribers hold more distinct topics than the subscription limit allows; subscribing upstream to everything and filtering locally from now on"
                    );
                    SUBSCRIBE_TO_EVERYTHING.to_vec()
                }
                UpstreamChange::Nothing => {
                    if subscribe && self.live.is_collapsed() {
                        over_limit += 1;
                    }
                    continue;
                }
            };
            let bytes = message.len() as u64;
            // XSUB hands a subscription to every publisher's pipe (libzmq drops it for a pipe at
            // its high-water mark, without an error); only a closing context fails it here.
            match xsub.send(message, zmq::DONTWAIT) {
                Ok(()) => {
                    metrics.subscription_messages.inc();
                    metrics.publishers.messages_sent.inc();
                    metrics.publishers.bytes_sent.inc_by(bytes);
                }
                Err(err) => {
                    metrics.publishers.send_failures.inc();
                    tracing::warn!(error = %err, "a subscription change could not be sent upstream");
                }
            }
        }
        metrics.subscriptions_over_limit.inc_by(over_limit);
        metrics
            .subscriptions_collapsed
            .set(i64::from(self.live.is_collapsed()));
        metrics
            .live_subscriptions
            .set(i64::try_from(self.live.len()).unwrap_or(i64::MAX));
    }
}

//! The set of topics subscribed upstream through this proxy, and what to send upstream when
//! subscribers ask for too much (pure).
//!
//! Every subscription the proxy sends upstream is stored by its XSUB socket and by the PUB
//! socket of every publisher of the group, so subscribers asking for many distinct prefixes
//! would grow memory on every publisher. The proxy therefore sends at most `max_topics` distinct
//! topics upstream; past that it *collapses*: it subscribes upstream to everything (the empty
//! prefix) once, sends no further subscription changes, and lets its own XPUB filter per
//! subscriber, as XPUB always does. Nothing is lost for any subscriber; the node receives every
//! message of the group from then on. Collapse is sticky for the life of the proxy: the cheap,
//! bounded answer to a state a healthy node never reaches.
//!
//! What is held is decided per subscriber connection by the
//! [`SubscriberBook`](super::subscriber_book::SubscriberBook): this set only sees a topic
//! *acquired* (its first holder) and *released* (its last holder gone), so upstream receives
//! exactly one subscribe per distinct topic and the unsubscribe when its last holder goes.

use std::collections::HashSet;

/// What one upstream message (subscriber side to publisher side) means.
#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamMessage<'a> {
    Subscribe(&'a [u8]),
    Unsubscribe(&'a [u8]),
    /// Anything else a subscriber sent: forwarded unchanged, not interpreted.
    Other,
}

/// Classifies the first frame of an upstream message (ZMTP 3.0 subscription encoding, which is
/// also how libzmq's XPUB hands ZMTP 3.1 SUBSCRIBE and CANCEL commands to the application).
pub fn classify(first_frame: &[u8]) -> UpstreamMessage<'_> {
    match first_frame.split_first() {
        Some((1, topic)) => UpstreamMessage::Subscribe(topic),
        Some((0, topic)) => UpstreamMessage::Unsubscribe(topic),
        _ => UpstreamMessage::Other,
    }
}

/// Bounds on what subscribers may make the proxy keep and send upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionLimits {
    /// Most distinct topics sent upstream before collapsing.
    pub max_topics: usize,
    /// Longest topic (bytes) one subscriber may subscribe to; a longer one ends its connection.
    pub max_topic_bytes: usize,
    /// Most topics one subscriber connection may hold at once; one more ends its connection.
    pub max_topics_per_subscriber: usize,
}

impl Default for SubscriptionLimits {
    /// 10 000 topics upstream, and per subscriber connection 1 000 topics of up to 256 bytes:
    /// far above what node agents subscribe to. (libzmq's trie takes up to about 32 bytes per
    /// byte of a prefix that shares nothing with the others: at most about 80 MiB for 10 000
    /// such topics on the XSUB and on every publisher, 8 MiB for one subscriber's 1 000.)
    fn default() -> Self {
        Self {
            max_topics: 10_000,
            max_topic_bytes: 256,
            max_topics_per_subscriber: 1_000,
        }
    }
}

/// What to send upstream for one change of the set of held topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamChange {
    /// Send the subscription to this topic.
    Subscribe,
    /// Send the unsubscription of this topic.
    Unsubscribe,
    /// Send the subscription to everything instead: the limit was just reached.
    SubscribeToEverything,
    /// Send nothing (collapsed: upstream already has everything).
    Nothing,
}

/// The subscription message for the empty prefix (everything).
pub const SUBSCRIBE_TO_EVERYTHING: &[u8] = &[1];

/// The subscription (`subscribe`) or unsubscription message for `topic`.
pub fn subscription_message(subscribe: bool, topic: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(topic.len() + 1);
    message.push(u8::from(subscribe));
    message.extend_from_slice(topic);
    message
}

#[derive(Debug, Default)]
pub struct LiveSubscriptions {
    max_topics: usize,
    topics: HashSet<Vec<u8>>,
    collapsed: bool,
}

impl LiveSubscriptions {
    pub fn new(limits: SubscriptionLimits) -> Self {
        Self {
            max_topics: limits.max_topics,
            ..Self::default()
        }
    }

    /// A topic gained its first holder.
    pub fn acquire(&mut self, topic: &[u8]) -> UpstreamChange {
        if self.collapsed || self.topics.contains(topic) {
            return UpstreamChange::Nothing;
        }
        if self.topics.len() >= self.max_topics {
            self.collapsed = true;
            self.topics = HashSet::new();
            return UpstreamChange::SubscribeToEverything;
        }
        self.topics.insert(topic.to_vec());
        UpstreamChange::Subscribe
    }

    /// A topic lost its last holder.
    pub fn release(&mut self, topic: &[u8]) -> UpstreamChange {
        if !self.collapsed && self.topics.remove(topic) {
            UpstreamChange::Unsubscribe
        } else {
            UpstreamChange::Nothing
        }
    }

    /// Whether the proxy subscribes upstream to everything because of the limit.
    pub fn is_collapsed(&self) -> bool {
        self.collapsed
    }

    /// Distinct topics subscribed upstream (1, the empty prefix, once collapsed).
    pub fn len(&self) -> usize {
        if self.collapsed { 1 } else { self.topics.len() }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether messages on exactly `topic` are subscribed upstream (everything is, once
    /// collapsed).
    pub fn contains(&self, topic: &[u8]) -> bool {
        self.collapsed || self.topics.contains(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_subscription_messages() {
        assert_eq!(classify(b"\x01foo"), UpstreamMessage::Subscribe(b"foo"));
        assert_eq!(classify(b"\x00foo"), UpstreamMessage::Unsubscribe(b"foo"));
        assert_eq!(classify(b"\x01"), UpstreamMessage::Subscribe(b""));
        assert_eq!(classify(b""), UpstreamMessage::Other);
        assert_eq!(classify(b"\x02foo"), UpstreamMessage::Other);
        assert_eq!(subscription_message(true, b"ab"), b"\x01ab");
        assert_eq!(subscription_message(false, b""), b"\x00");
    }

    #[test]
    fn acquired_and_released_topics_go_upstream_once() {
        let mut live = LiveSubscriptions::new(SubscriptionLimits::default());
        assert_eq!(live.acquire(b"a"), UpstreamChange::Subscribe);
        assert_eq!(live.acquire(b"a"), UpstreamChange::Nothing);
        assert_eq!(live.acquire(b""), UpstreamChange::Subscribe);
        assert_eq!(live.release(b"zzz"), UpstreamChange::Nothing);
        assert_eq!(live.len(), 2);
        assert!(live.contains(b"a") && live.contains(b""));
        assert_eq!(live.release(b"a"), UpstreamChange::Unsubscribe);
        assert_eq!(live.release(b"a"), UpstreamChange::Nothing);
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn a_flood_of_distinct_topics_collapses_to_one_subscription_to_everything() {
        let limits = SubscriptionLimits {
            max_topics: 100,
            ..SubscriptionLimits::default()
        };
        let mut live = LiveSubscriptions::new(limits);
        let mut sent = 0;
        let mut everything = 0;
        for n in 0..100_000u32 {
            match live.acquire(format!("t{n}").as_bytes()) {
                UpstreamChange::Subscribe => sent += 1,
                UpstreamChange::SubscribeToEverything => everything += 1,
                UpstreamChange::Unsubscribe | UpstreamChange::Nothing => {}
            }
        }
        assert_eq!((sent, everything), (100, 1));
        assert!(live.is_collapsed());
        assert_eq!(live.len(), 1);
        assert!(live.contains(b"anything"));
        // After the collapse nothing goes upstream any more (an unsubscription of the empty
        // prefix would undo the collapse).
        assert_eq!(live.release(b"t1"), UpstreamChange::Nothing);
        assert_eq!(live.release(b""), UpstreamChange::Nothing);
        assert_eq!(live.acquire(b"new"), UpstreamChange::Nothing);
    }

    #[test]
    fn freed_room_is_reusable_below_the_limit() {
        let limits = SubscriptionLimits {
            max_topics: 2,
            ..SubscriptionLimits::default()
        };
        let mut live = LiveSubscriptions::new(limits);
        assert_eq!(live.acquire(b"a"), UpstreamChange::Subscribe);
        assert_eq!(live.acquire(b"b"), UpstreamChange::Subscribe);
        assert_eq!(live.release(b"a"), UpstreamChange::Unsubscribe);
        assert_eq!(live.acquire(b"c"), UpstreamChange::Subscribe);
        assert!(!live.is_collapsed());
        assert_eq!(live.acquire(b"d"), UpstreamChange::SubscribeToEverything);
    }
}

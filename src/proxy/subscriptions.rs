//! The set of topics subscribed through this proxy, learnt from the subscription messages
//! forwarded upstream, and what to forward upstream when subscribers ask for too much (pure).
//!
//! Every subscription the proxy forwards upstream is stored by its XSUB socket and by the PUB
//! socket of every publisher of the group, so a subscriber that floods distinct prefixes would
//! grow memory on every publisher. The proxy therefore forwards at most `max_topics` distinct
//! topics of at most `max_topic_bytes` each; past either limit it *collapses*: it subscribes
//! upstream to everything (the empty prefix) once, forwards no further subscription changes, and
//! lets its own XPUB filter per subscriber, as XPUB always does. Nothing is lost for any
//! subscriber; the node receives every message of the group from then on. Collapse is sticky for
//! the life of the proxy: the cheap, bounded answer to a state a healthy node never reaches.
//!
//! A non-verbose libzmq XPUB reference-counts subscriptions across its subscribers: it passes
//! up the first subscription to a topic and the unsubscription that removes the last one
//! (also when a subscriber disconnects). So the set of topics subscribed upstream is exactly
//! what those messages say. A set rather than a counter, because XPUB also passes up an
//! unsubscription for a topic nobody subscribed to, which must not count below zero.

use std::collections::HashSet;

/// What one upstream message (subscriber side to publisher side) means.
#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamMessage<'a> {
    Subscribe(&'a [u8]),
    Unsubscribe(&'a [u8]),
    /// Anything else a subscriber sent: forwarded unchanged, not interpreted.
    Other,
}

/// Classifies the first frame of an upstream message (ZMTP 3.0 subscription encoding).
pub fn classify(first_frame: &[u8]) -> UpstreamMessage<'_> {
    match first_frame.split_first() {
        Some((1, topic)) => UpstreamMessage::Subscribe(topic),
        Some((0, topic)) => UpstreamMessage::Unsubscribe(topic),
        _ => UpstreamMessage::Other,
    }
}

/// Bounds on what the proxy forwards upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionLimits {
    /// Most distinct topics forwarded upstream before collapsing.
    pub max_topics: usize,
    /// Longest topic (bytes) forwarded upstream; a longer one collapses.
    pub max_topic_bytes: usize,
}

impl Default for SubscriptionLimits {
    /// 10 000 topics of up to 256 bytes: far above what node agents subscribe to, at most a few
    /// MiB on every publisher.
    fn default() -> Self {
        Self {
            max_topics: 10_000,
            max_topic_bytes: 256,
        }
    }
}

/// What to do with one upstream message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Forward it unchanged.
    Forward,
    /// Forward this message instead: the subscription to everything, sent once on collapse.
    SubscribeToEverything,
    /// Forward nothing (a subscription change after the collapse).
    Drop,
}

/// The subscription message for the empty prefix (everything).
pub const SUBSCRIBE_TO_EVERYTHING: &[u8] = &[1];

#[derive(Debug, Default)]
pub struct LiveSubscriptions {
    limits: SubscriptionLimits,
    topics: HashSet<Vec<u8>>,
    collapsed: bool,
}

impl LiveSubscriptions {
    pub fn new(limits: SubscriptionLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Applies one upstream message (its first frame) and says what to forward.
    pub fn apply(&mut self, first_frame: &[u8]) -> Upstream {
        let message = classify(first_frame);
        if self.collapsed {
            return match message {
                UpstreamMessage::Other => Upstream::Forward,
                _ => Upstream::Drop,
            };
        }
        match message {
            UpstreamMessage::Subscribe(topic) => {
                if self.topics.contains(topic) {
                    return Upstream::Forward;
                }
                if topic.len() > self.limits.max_topic_bytes || self.topics.len() >= self.limits.max_topics {
                    self.collapsed = true;
                    self.topics = HashSet::new();
                    return Upstream::SubscribeToEverything;
                }
                self.topics.insert(topic.to_vec());
                Upstream::Forward
            }
            UpstreamMessage::Unsubscribe(topic) => {
                self.topics.remove(topic);
                Upstream::Forward
            }
            UpstreamMessage::Other => Upstream::Forward,
        }
    }

    /// Whether the proxy subscribes upstream to everything because of the limits.
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
    }

    #[test]
    fn tracks_topics_and_ignores_unknown_unsubscriptions() {
        let mut live = LiveSubscriptions::new(SubscriptionLimits::default());
        assert_eq!(live.apply(b"\x01a"), Upstream::Forward);
        assert_eq!(live.apply(b"\x01b"), Upstream::Forward);
        assert_eq!(live.apply(b"\x00zzz"), Upstream::Forward);
        assert_eq!(live.len(), 2);
        assert_eq!(live.apply(b"\x00a"), Upstream::Forward);
        assert_eq!(live.len(), 1);
        assert!(live.contains(b"b") && !live.contains(b"a"));
        assert_eq!(live.apply(b"hello"), Upstream::Forward);
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn empty_topic_is_a_subscription_to_everything() {
        let mut live = LiveSubscriptions::new(SubscriptionLimits::default());
        live.apply(b"\x01");
        assert!(live.contains(b""));
        live.apply(b"\x00");
        assert!(live.is_empty());
    }

    fn subscribe(topic: &[u8]) -> Vec<u8> {
        [&[1u8][..], topic].concat()
    }

    #[test]
    fn a_flood_of_distinct_topics_collapses_to_one_subscription_to_everything() {
        let limits = SubscriptionLimits {
            max_topics: 100,
            max_topic_bytes: 16,
        };
        let mut live = LiveSubscriptions::new(limits);
        let mut forwarded = 0;
        let mut everything = 0;
        for n in 0..100_000u32 {
            match live.apply(&subscribe(format!("t{n}").as_bytes())) {
                Upstream::Forward => forwarded += 1,
                Upstream::SubscribeToEverything => everything += 1,
                Upstream::Drop => {}
            }
        }
        assert_eq!((forwarded, everything), (100, 1));
        assert!(live.is_collapsed());
        assert_eq!(live.len(), 1);
        assert!(live.contains(b"anything"));
        // After the collapse no subscription change goes upstream (an unsubscription of the
        // empty prefix would undo the collapse), but other messages still do.
        assert_eq!(live.apply(b"\x00"), Upstream::Drop);
        assert_eq!(live.apply(b"\x00t1"), Upstream::Drop);
        assert_eq!(live.apply(b"\x01new"), Upstream::Drop);
        assert_eq!(live.apply(b"\x02other"), Upstream::Forward);
    }

    #[test]
    fn a_known_topic_at_the_limit_does_not_collapse_and_a_long_one_does() {
        let limits = SubscriptionLimits {
            max_topics: 2,
            max_topic_bytes: 4,
        };
        let mut live = LiveSubscriptions::new(limits);
        assert_eq!(live.apply(&subscribe(b"a")), Upstream::Forward);
        assert_eq!(live.apply(&subscribe(b"b")), Upstream::Forward);
        assert_eq!(live.apply(&subscribe(b"a")), Upstream::Forward);
        assert!(!live.is_collapsed());
        assert_eq!(live.apply(&subscribe(b"b")), Upstream::Forward);
        // Freed room is reusable.
        assert_eq!(live.apply(b"\x00a"), Upstream::Forward);
        assert_eq!(live.apply(&subscribe(b"abcd")), Upstream::Forward);
        let mut long = LiveSubscriptions::new(limits);
        assert_eq!(long.apply(&subscribe(b"abcde")), Upstream::SubscribeToEverything);
        assert!(long.is_collapsed());
    }
}

//! The set of topics subscribed through this proxy, learnt from the subscription messages
//! forwarded upstream (pure).
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

#[derive(Debug, Default)]
pub struct LiveSubscriptions {
    topics: HashSet<Vec<u8>>,
}

impl LiveSubscriptions {
    /// Applies one upstream message; returns whether it was a subscription message.
    pub fn apply(&mut self, first_frame: &[u8]) -> bool {
        match classify(first_frame) {
            UpstreamMessage::Subscribe(topic) => {
                self.topics.insert(topic.to_vec());
                true
            }
            UpstreamMessage::Unsubscribe(topic) => {
                self.topics.remove(topic);
                true
            }
            UpstreamMessage::Other => false,
        }
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    pub fn contains(&self, topic: &[u8]) -> bool {
        self.topics.contains(topic)
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
        let mut live = LiveSubscriptions::default();
        assert!(live.apply(b"\x01a"));
        assert!(live.apply(b"\x01b"));
        assert!(live.apply(b"\x00zzz"));
        assert_eq!(live.len(), 2);
        assert!(live.apply(b"\x00a"));
        assert_eq!(live.len(), 1);
        assert!(live.contains(b"b") && !live.contains(b"a"));
        assert!(!live.apply(b"hello"));
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn empty_topic_is_a_subscription_to_everything() {
        let mut live = LiveSubscriptions::default();
        live.apply(b"\x01");
        assert!(live.contains(b""));
        live.apply(b"\x00");
        assert!(live.is_empty());
    }
}

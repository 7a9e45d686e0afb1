//! Which topics each subscriber connection holds, and how many connections hold each topic
//! (pure): the proxy's own reference counting, per connection and bounded.
//!
//! The proxy's XPUB runs in libzmq's "verboser" mode, so it hands the proxy every subscribe and
//! every unsubscribe, each with the connection's descriptor (libzmq's `__fd` property). From
//! those this book keeps, per connection, the set of topics it holds (what libzmq's trie holds
//! for that connection: a repeated subscribe adds nothing, an unsubscribe of a topic the
//! connection does not hold removes nothing), and per topic the number of connections holding
//! it. A topic *acquired* (first holder) or *released* (last holder gone, by unsubscribe or
//! because its connection ended) is what goes upstream, so publishers see one subscribe per
//! distinct topic and one unsubscribe when nobody is left, whatever the subscribers send.
//!
//! Bounds: a connection holds at most `max_topics` topics of at most `max_topic_bytes` each,
//! with one set of bounds for the subscribers' connections and another for a relay's links to
//! its leaves, which carry a whole proxy's subscriptions ([`ConnectionKind`]).
//! The subscription that would break either is *refused*: not recorded, and the connection is
//! marked refused so that the caller closes it (libzmq's XPUB has already stored it in its own
//! trie and offers no way to remove one connection's subscription, so closing the connection
//! is what frees it). Later subscriptions from a refused connection are ignored; its
//! unsubscriptions still count.
//!
//! Connections are keyed by descriptor, which the kernel reuses; each entry also carries an
//! identity `Id` (the socket's inode in the proxy). A message whose descriptor now belongs to
//! another socket than the entry's means the entry's connection has ended: its topics are
//! released before the new connection's message is applied.

use std::collections::{HashMap, HashSet};

/// Bounds on one subscriber connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerSubscriber {
    pub max_topics: usize,
    pub max_topic_bytes: usize,
}

/// Whose connection it is, which decides its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// Accepted from a subscriber.
    Subscriber,
    /// Made by the proxy itself, to one of its leaves (relay tree): it carries what the leaf
    /// subscribes to upstream.
    LeafLink,
}

/// A topic gaining its first holder or losing its last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Acquired(Vec<u8>),
    Released(Vec<u8>),
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The connection already holds the most topics allowed.
    Topics,
    /// The topic is longer than allowed.
    TopicBytes,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Topics => "topics",
            Refusal::TopicBytes => "topic_bytes",
        }
    }
}

/// What became of one subscribe or unsubscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Recorded (the connection now holds, or no longer holds, the topic).
    Recorded,
    /// A subscribe the connection already held: nothing changes.
    Duplicate,
    /// An unsubscribe of a topic the connection does not hold: nothing changes.
    NotHeld,
    /// Refused: the caller closes the connection.
    Refused(Refusal),
    /// A subscribe from a connection already refused: ignored.
    Ignored,
}

#[derive(Debug)]
struct Connection<Id> {
    id: Id,
    topics: HashSet<Vec<u8>>,
    refused: bool,
}

#[derive(Debug)]
pub struct SubscriberBook<Id> {
    subscriber: PerSubscriber,
    leaf_link: PerSubscriber,
    connections: HashMap<i32, Connection<Id>>,
    holders: HashMap<Vec<u8>, u32>,
}

impl<Id: PartialEq> SubscriberBook<Id> {
    /// A book bounding each subscriber's connection by `subscriber` and each link to a leaf by
    /// `leaf_link`.
    pub fn new(subscriber: PerSubscriber, leaf_link: PerSubscriber) -> Self {
        Self {
            subscriber,
            leaf_link,
            connections: HashMap::new(),
            holders: HashMap::new(),
        }
    }

    /// The entry for `fd`, replacing one of another socket (whose topics are released).
    fn connection(&mut self, fd: i32, id: Id, changes: &mut Vec<Change>) -> &mut Connection<Id> {
        if self.connections.get(&fd).is_some_and(|c| c.id != id) {
            self.close(fd, changes);
        }
        self.connections.entry(fd).or_insert_with(|| Connection {
            id,
            topics: HashSet::new(),
            refused: false,
        })
    }

    /// A subscribe to `topic` from the connection on `fd` (identity `id`, of `kind`).
    pub fn subscribe(
        &mut self,
        fd: i32,
        id: Id,
        kind: ConnectionKind,
        topic: &[u8],
        changes: &mut Vec<Change>,
    ) -> Applied {
        let limits = match kind {
            ConnectionKind::Subscriber => self.subscriber,
            ConnectionKind::LeafLink => self.leaf_link,
        };
        let connection = self.connection(fd, id, changes);
        if connection.refused {
            return Applied::Ignored;
        }
        if connection.topics.contains(topic) {
            return Applied::Duplicate;
        }
        let refusal = if topic.len() > limits.max_topic_bytes {
            Some(Refusal::TopicBytes)
        } else if connection.topics.len() >= limits.max_topics {
            Some(Refusal::Topics)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            connection.refused = true;
            return Applied::Refused(refusal);
        }
        connection.topics.insert(topic.to_vec());
        let holders = self.holders.entry(topic.to_vec()).or_insert(0);
        *holders += 1;
        if *holders == 1 {
            changes.push(Change::Acquired(topic.to_vec()));
        }
        Applied::Recorded
    }

    /// An unsubscribe of `topic` from the connection on `fd` (identity `id`).
    pub fn unsubscribe(&mut self, fd: i32, id: Id, topic: &[u8], changes: &mut Vec<Change>) -> Applied {
        let connection = self.connection(fd, id, changes);
        if !connection.topics.remove(topic) {
            return Applied::NotHeld;
        }
        self.release(topic, changes);
        Applied::Recorded
    }

    fn release(&mut self, topic: &[u8], changes: &mut Vec<Change>) {
        if let Some(holders) = self.holders.get_mut(topic) {
            *holders -= 1;
            if *holders == 0 {
                self.holders.remove(topic);
                changes.push(Change::Released(topic.to_vec()));
            }
        }
    }

    /// The connection on `fd` ended: every topic it held is released.
    pub fn close(&mut self, fd: i32, changes: &mut Vec<Change>) {
        if let Some(connection) = self.connections.remove(&fd) {
            for topic in connection.topics {
                self.release(&topic, changes);
            }
        }
    }

    /// Closes every connection for which `open` says its socket is gone (or is another one).
    pub fn retain_open(&mut self, mut open: impl FnMut(i32, &Id) -> bool, changes: &mut Vec<Change>) {
        let gone: Vec<i32> = self
            .connections
            .iter()
            .filter(|(fd, c)| !open(**fd, &c.id))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in gone {
            self.close(fd, changes);
        }
    }

    /// The identity recorded for `fd`, if a connection is known there.
    pub fn id(&self, fd: i32) -> Option<&Id> {
        self.connections.get(&fd).map(|c| &c.id)
    }

    /// Topics the connection on `fd` holds.
    #[cfg(test)]
    pub fn topics_of(&self, fd: i32) -> usize {
        self.connections.get(&fd).map_or(0, |c| c.topics.len())
    }

    /// Subscriber connections known.
    #[cfg(test)]
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    /// Distinct topics held by at least one connection.
    #[cfg(test)]
    pub fn held_topics(&self) -> usize {
        self.holders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionKind::{LeafLink, Subscriber};
    use super::*;

    const LIMITS: PerSubscriber = PerSubscriber {
        max_topics: 3,
        max_topic_bytes: 8,
    };

    const LEAF_LINK: PerSubscriber = PerSubscriber {
        max_topics: 5,
        max_topic_bytes: 8,
    };

    fn book() -> SubscriberBook<u64> {
        SubscriberBook::new(LIMITS, LEAF_LINK)
    }

    #[test]
    fn one_acquire_per_topic_and_one_release_when_the_last_holder_goes() {
        let mut book = book();
        let mut changes = Vec::new();
        assert_eq!(
            book.subscribe(5, 1, Subscriber, b"a", &mut changes),
            Applied::Recorded
        );
        assert_eq!(
            book.subscribe(6, 2, Subscriber, b"a", &mut changes),
            Applied::Recorded
        );
        assert_eq!(
            book.subscribe(6, 2, Subscriber, b"a", &mut changes),
            Applied::Duplicate
        );
        assert_eq!(changes, [Change::Acquired(b"a".to_vec())]);
        changes.clear();
        // One holder unsubscribes: the other still holds it, nothing goes upstream.
        assert_eq!(book.unsubscribe(5, 1, b"a", &mut changes), Applied::Recorded);
        assert!(changes.is_empty());
        // The last holder disconnects: released.
        book.close(6, &mut changes);
        assert_eq!(changes, [Change::Released(b"a".to_vec())]);
        assert_eq!(book.held_topics(), 0);
    }

    #[test]
    fn an_unsubscribe_of_a_topic_not_held_changes_nothing_for_the_others() {
        let mut book = book();
        let mut changes = Vec::new();
        book.subscribe(5, 1, Subscriber, b"a", &mut changes);
        changes.clear();
        // A hostile peer unsubscribes a topic only someone else holds: not released.
        assert_eq!(book.unsubscribe(6, 2, b"a", &mut changes), Applied::NotHeld);
        assert_eq!(book.unsubscribe(5, 1, b"zzz", &mut changes), Applied::NotHeld);
        assert!(changes.is_empty());
        assert_eq!(book.held_topics(), 1);
    }

    #[test]
    fn past_the_caps_a_connection_is_refused_and_keeps_what_it_had() {
        let mut book = book();
        let mut changes = Vec::new();
        fill_to_the_cap(&mut book, (5, 1, Subscriber), &[b"a", b"b", b"c"], &mut changes);
        assert_eq!(
            book.subscribe(5, 1, Subscriber, b"e", &mut changes),
            Applied::Ignored
        );
        assert_eq!(book.topics_of(5), 3);
        // Its unsubscriptions still count.
        changes.clear();
        assert_eq!(book.unsubscribe(5, 1, b"a", &mut changes), Applied::Recorded);
        assert_eq!(changes, [Change::Released(b"a".to_vec())]);
        // Another connection is not affected.
        assert_eq!(
            book.subscribe(6, 2, Subscriber, b"123456789", &mut changes),
            Applied::Refused(Refusal::TopicBytes)
        );
        assert_eq!(
            book.subscribe(7, 3, Subscriber, b"12345678", &mut changes),
            Applied::Recorded
        );
    }

    /// Subscribes the connection (`fd`, `id`, `kind`) to each of `topics`, each recorded, then
    /// to one more, refused for the topic cap.
    fn fill_to_the_cap(
        book: &mut SubscriberBook<u64>,
        (fd, id, kind): (i32, u64, ConnectionKind),
        topics: &[&[u8]],
        changes: &mut Vec<Change>,
    ) {
        for topic in topics {
            assert_eq!(book.subscribe(fd, id, kind, topic, changes), Applied::Recorded);
        }
        assert_eq!(
            book.subscribe(fd, id, kind, b"one more", changes),
            Applied::Refused(Refusal::Topics)
        );
    }

    #[test]
    fn a_link_to_a_leaf_has_bounds_of_its_own() {
        let mut book = book();
        let mut changes = Vec::new();
        let five: [&[u8]; 5] = [b"a", b"b", b"c", b"d", b"e"];
        fill_to_the_cap(&mut book, (5, 1, LeafLink), &five, &mut changes);
        assert_eq!(
            book.subscribe(6, 2, LeafLink, b"123456789", &mut changes),
            Applied::Refused(Refusal::TopicBytes)
        );
        // A subscriber beside it keeps the subscribers' bounds.
        fill_to_the_cap(&mut book, (7, 3, Subscriber), &five[..3], &mut changes);
    }

    #[test]
    fn a_reused_descriptor_releases_the_old_connection_first() {
        let mut book = book();
        let mut changes = Vec::new();
        book.subscribe(5, 1, Subscriber, b"a", &mut changes);
        book.subscribe(5, 1, Subscriber, b"b", &mut changes);
        changes.clear();
        // Descriptor 5 now belongs to another socket, which subscribes to b.
        assert_eq!(
            book.subscribe(5, 2, Subscriber, b"b", &mut changes),
            Applied::Recorded
        );
        let mut expected = vec![
            Change::Released(b"a".to_vec()),
            Change::Released(b"b".to_vec()),
            Change::Acquired(b"b".to_vec()),
        ];
        // The released topics come first, in any order among themselves.
        changes[..2].sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
        expected[..2].sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
        assert_eq!(changes, expected);
        assert_eq!(book.id(5), Some(&2));
        assert_eq!(book.topics_of(5), 1);
    }

    #[test]
    fn retain_open_closes_connections_whose_socket_is_gone() {
        let mut book = book();
        let mut changes = Vec::new();
        book.subscribe(5, 1, Subscriber, b"a", &mut changes);
        book.subscribe(6, 2, Subscriber, b"a", &mut changes);
        book.subscribe(6, 2, Subscriber, b"b", &mut changes);
        changes.clear();
        book.retain_open(|fd, _| fd == 5, &mut changes);
        assert_eq!(changes, [Change::Released(b"b".to_vec())]);
        assert_eq!(book.connections(), 1);
    }
}

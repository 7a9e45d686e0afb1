//! A relay proxy with real libzmq sockets on 127.0.0.1: a publisher connected to the relay only
//! reaches the subscribers of the leaves the relay's feed names, each message once; a leaf
//! taken out of the assignment stops receiving; with CURVE the relay authenticates to its
//! leaves with the group's own key pair, which a leaf must list as a publisher.
//!
//! A relay's links to its leaves are connections its own subscriber side made: they carry a
//! whole leaf's subscriptions (up to the upstream topic cap, not one subscriber's), are
//! admitted without a subscriber key, and release their topics upstream when they end. Our
//! publisher's one-frame (wire version 3) and multi-frame (version 2) messages cross a CURVE
//! relay and its link unchanged.

mod proxy_support;

use fanout::curve::{CurveClient, KeyPair};
use fanout::endpoint_list::Endpoint;
use fanout::membership::Membership;
use fanout::proxy::auth::Refusal;
use fanout::proxy::{self, CurveServerConfig, CutOff, LeafFeed, Proxy, ProxyConfig, RelayMetrics, Side};
use fanout::publisher::{Publisher, PublisherConfig};
use fanout::subscriber::{Subscriber, SubscriberConfig, TopicFilter};
use proxy_support::{WAIT, eventually, observer, subscriber, upstream};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const TOPIC: &[u8] = b"t";

fn leaves(proxies: &[&Proxy]) -> Membership {
    proxies
        .iter()
        .map(|p| Endpoint::parse(&p.publisher_endpoints()[0]).expect("a tcp endpoint"))
        .collect()
}

/// Probes until every subscriber got one: the subscriptions have reached the publisher.
fn sync_all(publisher: &zmq::Socket, subscribers: &[&zmq::Socket]) {
    for s in subscribers {
        s.set_rcvtimeo(20).expect("rcvtimeo");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = vec![false; subscribers.len()];
    while !seen.iter().all(|s| *s) {
        assert!(Instant::now() < deadline, "probes reached only {seen:?}");
        publisher.send_multipart([TOPIC, b"probe"], 0).expect("probe");
        for (i, s) in subscribers.iter().enumerate() {
            while s.recv_multipart(0).is_ok() {
                seen[i] = true;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    for s in subscribers {
        while s.recv_multipart(zmq::DONTWAIT).is_ok() {}
        s.set_rcvtimeo(200).expect("rcvtimeo");
    }
}

/// Messages numbered `from..to` published, then what one subscriber receives until quiet.
fn received(subscriber: &zmq::Socket) -> Vec<u64> {
    let mut got = Vec::new();
    while let Ok(parts) = subscriber.recv_multipart(0) {
        if let Some(n) = parts
            .get(1)
            .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok())
        {
            got.push(n);
        }
    }
    got
}

fn publish(publisher: &zmq::Socket, range: std::ops::Range<u64>) {
    for n in range {
        publisher
            .send_multipart([TOPIC, n.to_string().as_bytes()], 0)
            .expect("publish");
        if n % 100 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn relay(config: ProxyConfig) -> (Proxy, LeafFeed, RelayMetrics) {
    let metrics = RelayMetrics::default();
    let (feed, input) = proxy::leaf_feed(metrics.clone()).expect("a feed");
    let relay = proxy::start_relay(config, input).expect("the relay starts");
    (relay, feed, metrics)
}

#[test]
fn a_publisher_on_the_relay_reaches_the_assigned_leaves_once_each() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let (relay, feed, metrics) = relay(proxy_support::config(dirs[0].path()));
    let leaf_a = proxy_support::start(dirs[1].path());
    let leaf_b = proxy_support::start(dirs[2].path());
    let ctx = zmq::Context::new();
    let subs: Vec<zmq::Socket> = [&relay, &leaf_a, &leaf_b]
        .iter()
        .map(|p| subscriber(&ctx, p, &[TOPIC]))
        .collect();
    let publisher = proxy_support::publisher(&ctx, &relay);

    assert!(feed.deliver(leaves(&[&leaf_a, &leaf_b])));
    sync_all(&publisher, &subs.iter().collect::<Vec<_>>());
    assert_eq!(metrics.leaves.get(), 2);
    publish(&publisher, 0..1000);
    for (i, s) in subs.iter().enumerate() {
        assert_eq!(
            received(s),
            (0..1000).collect::<Vec<_>>(),
            "subscriber {i}: all, once, in order"
        );
    }
    assert_eq!(
        leaf_a.stats().publishers.connected,
        1,
        "the leaf sees the relay as its publisher"
    );

    // Leaf b leaves the assignment: it gets nothing more, the others everything.
    assert!(feed.deliver(leaves(&[&leaf_a])));
    assert!(eventually(|| metrics.leaves.get() == 1));
    assert!(eventually(|| leaf_b.stats().publishers.connected == 0));
    publish(&publisher, 1000..1500);
    assert_eq!(received(&subs[0]).len(), 500);
    assert_eq!(received(&subs[1]).len(), 500);
    assert!(received(&subs[2]).is_empty(), "unassigned leaf still fed");
    assert_eq!(metrics.link_changes.get(), 3);
}

/// A proxy's directory (its allow-list and socket), kept while the proxy runs.
struct CurveNode {
    dir: tempfile::TempDir,
}

impl CurveNode {
    /// A proxy of `group` admitting `publishers`, and with `subscribers` a tcp subscriber
    /// endpoint admitting only those (the group's `allowedSubscribers`).
    fn config(
        group: &KeyPair,
        publishers: &[&KeyPair],
        subscribers: Option<&[&KeyPair]>,
    ) -> (Self, ProxyConfig) {
        let node = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let mut config = ProxyConfig {
            curve: Some(CurveServerConfig {
                secret: group.secret.clone(),
                allow_publishers: node.allow_list("publishers", publishers),
                allow_subscribers: subscribers.map(|keys| node.allow_list("subscribers", keys)),
            }),
            ..proxy_support::config(node.dir.path())
        };
        if subscribers.is_some() {
            config.subscribers.push("tcp://127.0.0.1:0".into());
        }
        (node, config)
    }

    fn allow_list(&self, name: &str, keys: &[&KeyPair]) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        let text: String = keys.iter().map(|k| format!("{}\n", k.public)).collect();
        std::fs::write(&path, text).expect("allow-list");
        path
    }
}

/// A CURVE group: its key pair, and a publisher's that every proxy of it lists.
struct CurveGroup {
    group: KeyPair,
    writer: KeyPair,
}

impl CurveGroup {
    fn new() -> Self {
        Self {
            group: KeyPair::generate().expect("group keys"),
            writer: KeyPair::generate().expect("publisher keys"),
        }
    }

    /// A relay (started) and its feed.
    fn relay(&self, subscribers: Option<&[&KeyPair]>) -> (CurveNode, Proxy, LeafFeed) {
        let (node, config) = CurveNode::config(&self.group, &[&self.writer], subscribers);
        let (relay, feed, _metrics) = relay(config);
        (node, relay, feed)
    }

    /// A leaf's configuration; `admits_relays`: it lists the group's own key as a publisher,
    /// as the controller does while relays are enabled.
    fn leaf(&self, admits_relays: bool, subscribers: Option<&[&KeyPair]>) -> (CurveNode, ProxyConfig) {
        let publishers: &[&KeyPair] = if admits_relays {
            &[&self.writer, &self.group]
        } else {
            &[&self.writer]
        };
        CurveNode::config(&self.group, publishers, subscribers)
    }

    /// A socket of `kind` with the listed publisher's keys, connected to `proxy`'s publisher
    /// port (a PUB publishes, an XPUB sees what the proxy sends upstream).
    fn publisher(&self, ctx: &zmq::Context, kind: zmq::SocketType, proxy: &Proxy) -> zmq::Socket {
        let endpoint = &proxy.publisher_endpoints()[0];
        self.client(ctx, kind, endpoint, &self.writer, None)
    }

    /// A plain libzmq CURVE socket of `kind` with `keys`, connected to `endpoint` of one of
    /// the group's proxies, subscribed to `topic` when a SUB.
    fn client(
        &self,
        ctx: &zmq::Context,
        kind: zmq::SocketType,
        endpoint: &str,
        keys: &KeyPair,
        topic: Option<&[u8]>,
    ) -> zmq::Socket {
        let socket = ctx.socket(kind).expect("socket");
        socket.set_linger(0).expect("linger");
        socket.set_rcvtimeo(200).expect("rcvtimeo");
        CurveClient {
            server: self.group.public,
            keys: keys.clone(),
        }
        .apply(&socket)
        .expect("client keys");
        if let Some(topic) = topic {
            socket.set_subscribe(topic).expect("subscribe");
        }
        socket.connect(endpoint).expect("connect");
        socket
    }
}

#[test]
fn with_curve_the_relay_uses_the_group_key_which_a_leaf_must_admit() {
    let keys = CurveGroup::new();
    let (_relay_node, relay, feed) = keys.relay(None);
    let (_admitting_node, admitting) = keys.leaf(true, None);
    let admitting = proxy::start(admitting).expect("leaf");
    let (_refusing_node, refusing) = keys.leaf(false, None);
    let refusing = proxy::start(refusing).expect("leaf");

    let ctx = zmq::Context::new();
    let publisher = keys.publisher(&ctx, zmq::PUB, &relay);
    let on_relay = subscriber(&ctx, &relay, &[TOPIC]);
    let on_admitting = subscriber(&ctx, &admitting, &[TOPIC]);
    let on_refusing = subscriber(&ctx, &refusing, &[TOPIC]);

    assert!(feed.deliver(leaves(&[&admitting, &refusing])));
    sync_all(&publisher, &[&on_relay, &on_admitting]);
    publish(&publisher, 0..300);
    assert_eq!(received(&on_relay).len(), 300);
    assert_eq!(received(&on_admitting), (0..300).collect::<Vec<_>>());
    assert!(
        received(&on_refusing).is_empty(),
        "a leaf without the group key admits no relay"
    );
    assert!(
        eventually(|| refusing
            .metrics()
            .auth_refused(Side::Publishers, Refusal::UnknownKey)
            .get()
            > 0),
        "the refusal is counted"
    );
}

/// Distinct topics the leaf's own subscribers hold below: twice what one subscriber connection
/// may hold (`--max-topics-per-subscriber`, 1 000), a fifth of what goes upstream (10 000).
const LEAF_TOPICS: usize = 2_000;
/// Topics per local subscriber of the leaf (each within its own cap).
const TOPICS_PER_SUBSCRIBER: usize = 500;

/// Topic `n`: fixed width, so that no topic is a prefix of another.
fn topic(n: usize) -> Vec<u8> {
    format!("t{n:04}").into_bytes()
}

/// The numbers of the messages `subscriber` receives until quiet, by topic number.
fn received_topics(subscriber: &zmq::Socket) -> BTreeSet<usize> {
    subscriber.set_rcvtimeo(500).expect("rcvtimeo");
    let mut got = BTreeSet::new();
    while let Ok(parts) = subscriber.recv_multipart(0) {
        let n = std::str::from_utf8(&parts[0][1..])
            .ok()
            .and_then(|n| n.parse().ok())
            .expect("a numbered topic");
        assert!(got.insert(n), "topic {n} delivered twice");
    }
    got
}

#[test]
fn a_leaf_holding_more_topics_than_one_subscriber_may_keeps_its_link_and_gets_every_topic() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let (relay, feed, _metrics) = relay(proxy_support::config(dirs[0].path()));
    let leaf = proxy_support::start(dirs[1].path());
    let ctx = zmq::Context::new();
    let publisher = proxy_support::publisher(&ctx, &relay);
    let ranges: Vec<std::ops::Range<usize>> = (0..LEAF_TOPICS / TOPICS_PER_SUBSCRIBER)
        .map(|s| s * TOPICS_PER_SUBSCRIBER..(s + 1) * TOPICS_PER_SUBSCRIBER)
        .collect();
    let subs: Vec<zmq::Socket> = ranges
        .iter()
        .map(|range| {
            let topics: Vec<Vec<u8>> = range.clone().map(topic).collect();
            let topics: Vec<&[u8]> = topics.iter().map(Vec::as_slice).collect();
            subscriber(&ctx, &leaf, &topics)
        })
        .collect();
    assert!(eventually(
        || leaf.stats().live_subscriptions == LEAF_TOPICS as u64
    ));

    // All of them come up through the one link the relay made to the leaf.
    let linked = Instant::now();
    assert!(feed.deliver(leaves(&[&leaf])));
    assert!(
        eventually(|| relay.stats().live_subscriptions == LEAF_TOPICS as u64),
        "the relay holds {} of the leaf's {LEAF_TOPICS} topics",
        relay.stats().live_subscriptions
    );
    println!("{LEAF_TOPICS} topics up one relay link in {:?}", linked.elapsed());
    // A subscription made after all of them: once it reaches the publisher, so have they.
    let last = subscriber(&ctx, &leaf, &[b"sync"]);
    proxy_support::sync(&publisher, &last, b"sync");

    for n in 0..LEAF_TOPICS {
        publisher
            .send_multipart([topic(n), n.to_string().into_bytes()], 0)
            .expect("publish");
        if n % 100 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for (s, range) in subs.iter().zip(&ranges) {
        assert_eq!(
            received_topics(s),
            range.clone().collect::<BTreeSet<_>>(),
            "every topic of the subscriber's, once"
        );
    }
    let cut_off = relay.metrics().cut_off(Side::Subscribers, CutOff::Topics).get();
    assert_eq!(cut_off, 0, "the relay cut its link off");
    assert_eq!(leaf.stats().publishers.disconnects, 0, "the link was lost");
    assert_eq!(relay.stats().refused_subscriptions, 0);
}

#[test]
fn with_allowed_subscribers_the_link_is_admitted_and_an_unlisted_subscriber_still_refused() {
    let keys = CurveGroup::new();
    let listed = KeyPair::generate().expect("subscriber keys");
    let unlisted = KeyPair::generate().expect("subscriber keys");
    let (_relay_node, relay, feed) = keys.relay(Some(&[&listed]));
    let (_leaf_node, leaf_config) = keys.leaf(true, Some(&[&listed]));
    let leaf = proxy::start(leaf_config).expect("leaf");

    let ctx = zmq::Context::new();
    let publisher = keys.publisher(&ctx, zmq::PUB, &relay);
    let relay_tcp = &relay.subscriber_endpoints()[1];
    // The node agents, on each proxy's unix socket (NULL: the list is for tcp subscribers).
    let on_leaf = subscriber(&ctx, &leaf, &[TOPIC]);
    let unix_on_relay = subscriber(&ctx, &relay, &[TOPIC]);
    let listed_on_relay = keys.client(&ctx, zmq::SUB, relay_tcp, &listed, Some(TOPIC));
    let unlisted_on_relay = keys.client(&ctx, zmq::SUB, relay_tcp, &unlisted, Some(TOPIC));

    assert!(feed.deliver(leaves(&[&leaf])));
    sync_all(&publisher, &[&on_leaf, &unix_on_relay, &listed_on_relay]);
    publish(&publisher, 0..300);
    assert_eq!(
        received(&on_leaf),
        (0..300).collect::<Vec<_>>(),
        "through the link"
    );
    assert_eq!(received(&unix_on_relay), (0..300).collect::<Vec<_>>());
    assert_eq!(received(&listed_on_relay), (0..300).collect::<Vec<_>>());
    assert!(
        received(&unlisted_on_relay).is_empty(),
        "an unlisted key subscribed"
    );
    let metrics = relay.metrics();
    assert!(
        eventually(|| metrics.auth_refused(Side::Subscribers, Refusal::UnknownKey).get() > 0),
        "the unlisted subscriber's refusal is counted"
    );
    assert_eq!(
        metrics.auth_refused(Side::Subscribers, Refusal::Revoked).get(),
        0,
        "the link was cut off as a subscriber without a key"
    );
    assert_eq!(leaf.stats().publishers.disconnects, 0, "the link was lost");
    for proxy in [&relay, &leaf] {
        assert_eq!(
            proxy.metrics().subscribers.refused_revoked.get(),
            0,
            "a subscription dropped"
        );
    }
}

#[test]
fn a_curve_link_carries_the_largest_frame_a_leafs_subscriber_may_send() {
    let keys = CurveGroup::new();
    let (_relay_node, relay, feed) = keys.relay(None);
    let (leaf_node, leaf_config) = keys.leaf(true, None);
    let largest = usize::try_from(leaf_config.subscriber_frame_limit()).expect("a small limit");
    let leaf = proxy::start(leaf_config).expect("leaf");
    let ctx = zmq::Context::new();
    // What the relay sends upstream, as its publishers see it.
    let watcher = keys.publisher(&ctx, zmq::XPUB, &relay);
    let on_leaf = subscriber(&ctx, &leaf, &[TOPIC]);
    assert!(feed.deliver(leaves(&[&leaf])));
    let subscribed = [&[1u8][..], TOPIC].concat();
    assert!(
        std::iter::from_fn(|| upstream(&watcher, proxy_support::WAIT)).any(|m| m == subscribed),
        "the leaf's subscription never came up"
    );

    // A process on the leaf's unix socket (NULL: no CURVE framing) sends a frame as long as
    // the leaf's subscriber side takes; the leaf passes it on over its CURVE link.
    let socket = proxy_support::socket_path(leaf_node.dir.path());
    let mut raw = proxy_support::raw_unix_zmtp_peer(&socket, "SUB");
    // The leaf's READY comes once its ZAP handler admitted the NULL peer; a frame sent before
    // would be taken for a handshake command.
    let mut seen = Vec::new();
    let deadline = Instant::now() + proxy_support::WAIT;
    while !seen.windows(5).any(|w| w == b"READY") {
        assert!(Instant::now() < deadline, "the leaf never finished the handshake");
        let mut buffer = [0u8; 256];
        if let Ok(n) = raw.read(&mut buffer) {
            seen.extend_from_slice(&buffer[..n]);
        }
    }
    let frame = vec![2u8; largest];
    raw.write_all(&proxy_support::zmtp_frame(false, &frame))
        .expect("send the frame");
    assert!(
        std::iter::from_fn(|| upstream(&watcher, proxy_support::WAIT)).any(|m| m == frame),
        "the frame never came up through the relay"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(leaf.stats().publishers.disconnects, 0, "the link was lost");
    drop(on_leaf);
}

/// The next message `watcher` sees upstream, waiting at most `WAIT`.
fn next_upstream(watcher: &zmq::Socket) -> Vec<u8> {
    upstream(watcher, proxy_support::WAIT).expect("nothing came upstream")
}

#[test]
fn a_link_that_ends_releases_its_topics_upstream() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let (relay, feed, _metrics) = relay(proxy_support::config(dirs[0].path()));
    let leaf = proxy_support::start(dirs[1].path());
    let ctx = zmq::Context::new();
    let watcher = observer(&ctx, &relay);
    let _on_leaf = subscriber(&ctx, &leaf, &[b"x"]);
    let assignment = leaves(&[&leaf]);

    assert!(feed.deliver(assignment.clone()));
    assert_eq!(next_upstream(&watcher), b"\x01x");
    // The relay drops the link (the leaf left its assignment).
    assert!(feed.deliver(Membership::new()));
    assert_eq!(next_upstream(&watcher), b"\x00x");
    assert!(eventually(|| relay.stats().live_subscriptions == 0));

    // Linked again, then the leaf goes away (the link ends from the other side).
    assert!(feed.deliver(assignment));
    assert_eq!(next_upstream(&watcher), b"\x01x");
    leaf.shutdown().expect("the leaf stops");
    assert_eq!(next_upstream(&watcher), b"\x00x");
    assert!(eventually(|| relay.stats().live_subscriptions == 0));
}

/// Our publisher's layouts through a CURVE relay and its link to a leaf, as the proxy forwards
/// any message: a version-3 message (one frame) and version-2 ones (several parts; a part
/// above `flat_max_payload`) reach the leaf's subscribers with the frames they were sent as,
/// and our subscriber takes each apart into the parts published, with the publisher's id and
/// consecutive sequences.
#[test]
fn with_curve_both_wire_layouts_cross_the_relay_link_intact() {
    let keys = CurveGroup::new();
    let (_relay_node, relay, feed) = keys.relay(None);
    let (_leaf_node, leaf) = keys.leaf(true, None);
    let leaf = proxy::start(leaf).expect("leaf");
    assert!(feed.deliver(leaves(&[&leaf])));
    let ctx = zmq::Context::new();
    let raw = subscriber(&ctx, &leaf, &[TOPIC]);
    let mut ours = Subscriber::connect(&leaf.subscriber_endpoints()[0], SubscriberConfig::default())
        .expect("our subscriber");
    ours.subscribe(TopicFilter::exact("t")).expect("subscribe");
    let publisher = Publisher::new(PublisherConfig {
        linger: Duration::from_millis(200),
        flat_max_payload: 1024,
        // One message a frame, so each case is a frame of its own here (a frame of several,
        // version 4, is one frame like version 3's: the relay forwards frames unchanged).
        batch_max_bytes: 0,
        curve: Some(CurveClient {
            server: keys.group.public,
            keys: keys.writer.clone(),
        }),
        ..PublisherConfig::default()
    })
    .expect("publisher");
    publisher.set_membership(leaves(&[&relay])).expect("membership");

    // Probes until both subscriptions came up through the leaf, its link and the relay.
    raw.set_rcvtimeo(20).expect("rcvtimeo");
    assert!(eventually(|| {
        publisher.publish_bytes(TOPIC, b"probe").expect("probe");
        let got_raw = raw.recv_multipart(0).is_ok();
        got_raw && matches!(ours.recv(Duration::from_millis(20)), Ok(Some(_)))
    }));
    std::thread::sleep(Duration::from_millis(200));
    while raw.recv_multipart(zmq::DONTWAIT).is_ok() {}
    while let Ok(Some(_)) = ours.recv(Duration::ZERO) {}
    raw.set_rcvtimeo(2000).expect("rcvtimeo");

    // (payload parts, whether handed over borrowed, frames on the wire)
    let big = vec![7u8; 2000];
    let cases: Vec<(Vec<Vec<u8>>, bool, usize)> = vec![
        (vec![b"one frame".to_vec()], true, 1),
        (vec![b"owned, one frame".to_vec()], false, 1),
        (vec![b"a".to_vec(), b"b".to_vec()], false, 3),
        (vec![big], false, 2),
    ];
    for (parts, borrowed, _) in &cases {
        if *borrowed {
            publisher.publish_bytes(TOPIC, &parts[0]).expect("publish");
        } else {
            publisher.publish("t", parts.clone()).expect("publish");
        }
    }
    let mut last_sequence = None;
    for (parts, _, frames) in &cases {
        let wire = raw.recv_multipart(0).expect("the plain SUB on the leaf receives");
        assert_eq!(
            wire.len(),
            *frames,
            "frames of a message of {} parts",
            parts.len()
        );
        let d = ours.recv(WAIT).expect("receive").expect("delivered");
        assert_eq!((d.topic.as_slice(), &d.payload), (TOPIC, parts));
        let origin = d.origin.expect("enveloped");
        assert_eq!(origin.publisher, publisher.id());
        if let Some(last) = last_sequence {
            assert_eq!(origin.sequence, last + 1);
        }
        last_sequence = Some(origin.sequence);
    }
    assert_eq!(ours.stats().total_lost(), 0);
    assert_eq!((ours.stats().plain, ours.stats().malformed), (0, 0));
    publisher.close();
}

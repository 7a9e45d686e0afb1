//! A relay proxy with real libzmq sockets on 127.0.0.1: a publisher connected to the relay only
//! reaches the subscribers of the leaves the relay's feed names, each message once; a leaf
//! taken out of the assignment stops receiving; with CURVE the relay authenticates to its
//! leaves with the group's own key pair, which a leaf must list as a publisher.

mod proxy_support;

use fanout::curve::{CurveClient, KeyPair};
use fanout::endpoint_list::Endpoint;
use fanout::membership::Membership;
use fanout::proxy::auth::Refusal;
use fanout::proxy::{self, CurveServerConfig, LeafFeed, Proxy, ProxyConfig, RelayMetrics, Side};
use proxy_support::{eventually, subscriber};
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
    fn config(group: &KeyPair, allowed: &[&KeyPair]) -> (Self, ProxyConfig) {
        let node = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let allow = node.dir.path().join("publishers");
        let text: String = allowed.iter().map(|k| format!("{}\n", k.public)).collect();
        std::fs::write(&allow, text).expect("allow-list");
        let config = ProxyConfig {
            curve: Some(CurveServerConfig {
                secret: group.secret.clone(),
                allow_publishers: allow,
                allow_subscribers: None,
            }),
            ..proxy_support::config(node.dir.path())
        };
        (node, config)
    }
}

#[test]
fn with_curve_the_relay_uses_the_group_key_which_a_leaf_must_admit() {
    let group = KeyPair::generate().expect("group keys");
    let writer = KeyPair::generate().expect("publisher keys");
    let (_relay_node, relay_config) = CurveNode::config(&group, &[&writer]);
    let (relay, feed, _metrics) = relay(relay_config);
    // The controller's allow-list with relays on: the publishers and the group's own key.
    let (_admitting_node, admitting) = CurveNode::config(&group, &[&writer, &group]);
    let admitting = proxy::start(admitting).expect("leaf");
    let (_refusing_node, refusing) = CurveNode::config(&group, &[&writer]);
    let refusing = proxy::start(refusing).expect("leaf");

    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).expect("PUB");
    publisher.set_linger(0).expect("linger");
    CurveClient {
        server: group.public,
        keys: writer,
    }
    .apply(&publisher)
    .expect("client keys");
    publisher
        .connect(&relay.publisher_endpoints()[0])
        .expect("connect");
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

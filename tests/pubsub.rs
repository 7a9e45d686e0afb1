//! Publisher → proxy → Subscriber over real sockets: TCP on 127.0.0.1 to the proxy, unix
//! sockets in temp dirs from the proxy to the subscribers.

use fanout::membership::Membership;
use fanout::publisher::{Publisher, PublisherConfig};
use fanout::subscriber::{Delivery, Subscriber, SubscriberConfig, TopicFilter};
use fanout::wire::{self, Envelope, PublisherId};
use std::io::Read;
use std::time::{Duration, Instant};

mod proxy_under_test {
    //! The real proxy (`fanout::proxy`), in-process.
    use fanout::proxy::ProxyConfig;

    pub struct Proxy {
        pub publisher_endpoint: String,
        pub subscriber_endpoint: String,
        pub inner: fanout::proxy::Proxy,
    }

    pub fn start(dir: &std::path::Path, name: &str, hwm: i32) -> Proxy {
        let inner = fanout::proxy::start(ProxyConfig {
            publishers: vec!["tcp://127.0.0.1:0".into()],
            subscribers: vec![format!("ipc://{}/{name}.sock", dir.display())],
            hwm,
            // Small messages only; keeps hwm x message bytes inside the per-peer byte bound.
            max_message_bytes: 16 << 10,
            ..ProxyConfig::default()
        })
        .unwrap();
        Proxy {
            publisher_endpoint: inner.publisher_endpoints()[0].clone(),
            subscriber_endpoint: inner.subscriber_endpoints()[0].clone(),
            inner,
        }
    }
}
use proxy_under_test::Proxy;

mod proxy_support;

const WAIT: Duration = Duration::from_secs(10);

fn members(endpoints: &[&str]) -> Membership {
    endpoints.iter().map(|e| e.parse().unwrap()).collect()
}

fn subscriber(proxy: &Proxy, filters: &[TopicFilter]) -> Subscriber {
    let mut s = Subscriber::connect(&proxy.subscriber_endpoint, SubscriberConfig::default()).unwrap();
    for f in filters {
        s.subscribe(f.clone()).unwrap();
    }
    s
}

fn publisher() -> Publisher {
    Publisher::new(PublisherConfig {
        linger: Duration::from_millis(500),
        ..PublisherConfig::default()
    })
    .unwrap()
}

/// Publishes `topic` until `sub` receives one (subscriptions travel upstream asynchronously;
/// a PUB drops what nobody has asked for yet), then drains the warm-up messages.
fn warm_up(publisher: &Publisher, sub: &mut Subscriber, topic: &str) {
    let start = Instant::now();
    loop {
        publisher.publish(topic, vec![b"warm-up".to_vec()]).unwrap();
        if sub.recv(Duration::from_millis(20)).unwrap().is_some() {
            break;
        }
        assert!(start.elapsed() < WAIT, "no message reached the subscriber");
    }
    while sub.recv(Duration::from_millis(100)).unwrap().is_some() {}
}

fn payload_text(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.payload.concat()).into_owned()
}

#[test]
fn messages_are_forwarded_in_order_with_the_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_under_test::start(dir.path(), "a", 10_000);
    let mut sub = subscriber(&proxy, &[TopicFilter::exact("t")]);
    let publisher = publisher();
    publisher
        .set_membership(members(&[&proxy.publisher_endpoint]))
        .unwrap();
    warm_up(&publisher, &mut sub, "t");

    for i in 0..1000 {
        publisher
            .publish("t", vec![format!("m{i}").into_bytes(), b"second frame".to_vec()])
            .unwrap();
    }
    for i in 0..1000 {
        let d = sub.recv(WAIT).unwrap().expect("message");
        assert_eq!(d.topic, b"t");
        assert_eq!(
            d.payload,
            vec![format!("m{i}").into_bytes(), b"second frame".to_vec()]
        );
        assert_eq!(d.origin.map(|o| o.publisher), Some(publisher.id()));
    }
    let stats = sub.stats();
    assert_eq!(stats.total_lost(), 0);
    assert_eq!(stats.plain, 0);
    assert_eq!(stats.per_publisher[&publisher.id()].out_of_order, 0);
    assert!(publisher.stats().sent >= 1000);
}

#[test]
fn a_joining_proxy_starts_receiving_and_a_departed_one_stops() {
    let dir = tempfile::tempdir().unwrap();
    let a = proxy_under_test::start(dir.path(), "a", 10_000);
    let b = proxy_under_test::start(dir.path(), "b", 10_000);
    let mut sub_a = subscriber(&a, &[TopicFilter::exact("t")]);
    let mut sub_b = subscriber(&b, &[TopicFilter::exact("t")]);
    let publisher = publisher();

    publisher
        .set_membership(members(&[&a.publisher_endpoint]))
        .unwrap();
    warm_up(&publisher, &mut sub_a, "t");
    assert!(
        sub_b.recv(Duration::from_millis(200)).unwrap().is_none(),
        "b is not a member yet"
    );

    // b joins: it starts receiving, a is undisturbed.
    publisher
        .set_membership(members(&[&a.publisher_endpoint, &b.publisher_endpoint]))
        .unwrap();
    let start = Instant::now();
    let mut sent_after_join = 0;
    loop {
        publisher.publish("t", vec![b"after join".to_vec()]).unwrap();
        sent_after_join += 1;
        if sub_b.recv(Duration::from_millis(20)).unwrap().is_some() {
            break;
        }
        assert!(start.elapsed() < WAIT, "the joining proxy never received");
    }
    for _ in 0..sent_after_join {
        assert!(
            sub_a.recv(WAIT).unwrap().is_some(),
            "a lost messages during b's join"
        );
    }
    assert_eq!(sub_a.stats().total_lost(), 0);
    assert_eq!(
        publisher.connected(),
        members(&[&a.publisher_endpoint, &b.publisher_endpoint])
    );

    // a leaves: it stops getting traffic, b keeps receiving everything.
    publisher
        .set_membership(members(&[&b.publisher_endpoint]))
        .unwrap();
    let start = Instant::now();
    while publisher.connected().contains(&a.publisher_endpoint) {
        assert!(start.elapsed() < WAIT, "leave not applied");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The departed proxy sees its publisher connection go away.
    while a.inner.stats().publishers.connected != 0 {
        assert!(
            start.elapsed() < WAIT,
            "the departed proxy still has a publisher connected"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(b.inner.stats().publishers.connected, 1);
    while sub_a.recv(Duration::from_millis(200)).unwrap().is_some() {}
    while sub_b.recv(Duration::from_millis(200)).unwrap().is_some() {}
    for i in 0..200 {
        publisher
            .publish("t", vec![format!("after leave {i}").into_bytes()])
            .unwrap();
    }
    for i in 0..200 {
        let d = sub_b.recv(WAIT).unwrap().expect("b keeps receiving");
        assert_eq!(payload_text(&d), format!("after leave {i}"));
    }
    assert!(
        sub_a.recv(Duration::from_millis(500)).unwrap().is_none(),
        "the departed proxy still gets traffic"
    );
    assert_eq!(sub_b.stats().total_lost(), 0);
}

#[test]
fn the_connection_to_a_departed_proxy_is_closed() {
    // A raw TCP listener stands in for the proxy so we can see the socket itself close.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
    let publisher = publisher();
    publisher.set_membership(members(&[&endpoint])).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut greeting = [0u8; 10];
    conn.read_exact(&mut greeting).unwrap();
    assert_eq!(greeting[0], 0xFF, "ZMTP greeting signature");

    publisher.set_membership(Membership::new()).unwrap();
    let mut buf = [0u8; 256];
    let start = Instant::now();
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the publisher did not close the connection: {e}"),
        }
        assert!(start.elapsed() < WAIT);
    }
    assert!(publisher.connected().is_empty());
}

#[test]
fn exact_topics_never_deliver_longer_topics_and_prefixes_are_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_under_test::start(dir.path(), "a", 10_000);
    let mut sub = subscriber(
        &proxy,
        &[
            TopicFilter::exact("foo"),
            TopicFilter::prefix("bar."),
            TopicFilter::exact("bar.x"),
            TopicFilter::exact("end"),
        ],
    );
    let publisher = publisher();
    publisher
        .set_membership(members(&[&proxy.publisher_endpoint]))
        .unwrap();
    warm_up(&publisher, &mut sub, "end");

    for topic in ["foo", "foobar", "fo", "bar.x", "bar.y", "bar", "baz", "end"] {
        publisher.publish(topic, vec![topic.as_bytes().to_vec()]).unwrap();
    }
    let mut got = Vec::new();
    loop {
        let d = sub.recv(WAIT).unwrap().expect("message");
        got.push(String::from_utf8(d.topic).unwrap());
        if got.last().map(String::as_str) == Some("end") {
            break;
        }
    }
    // bar.x matches an exact and a prefix filter: delivered once.
    assert_eq!(got, vec!["foo", "bar.x", "bar.y", "end"]);
    assert!(
        sub.stats().filtered >= 1,
        "foobar reached the socket and was filtered"
    );

    // Dropping the prefix keeps the exact subscription that overlaps it.
    sub.unsubscribe(&TopicFilter::prefix("bar.")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for topic in ["bar.y", "bar.x", "end"] {
        publisher.publish(topic, vec![]).unwrap();
    }
    let mut got = Vec::new();
    loop {
        let d = sub.recv(WAIT).unwrap().expect("message");
        got.push(String::from_utf8(d.topic).unwrap());
        if got.last().map(String::as_str) == Some("end") {
            break;
        }
    }
    assert_eq!(got, vec!["bar.x", "end"]);
}

/// A plain libzmq PUB bound on TCP that a proxy-less test connects a Subscriber to.
fn plain_pub() -> (zmq::Context, zmq::Socket, String) {
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::PUB).unwrap();
    sock.bind("tcp://127.0.0.1:*").unwrap();
    let ep = sock.get_last_endpoint().unwrap().unwrap();
    (ctx, sock, ep)
}

/// Sends `[topic, frames...]` from a plain PUB until the subscriber sees one, so that the
/// subscription is known to be in place.
fn plain_warm_up(pub_sock: &zmq::Socket, sub: &mut Subscriber, topic: &str) {
    let start = Instant::now();
    loop {
        pub_sock
            .send_multipart([topic.as_bytes(), b"warm-up"], 0)
            .unwrap();
        if sub.recv(Duration::from_millis(20)).unwrap().is_some() {
            break;
        }
        assert!(start.elapsed() < WAIT);
    }
    while sub.recv(Duration::from_millis(100)).unwrap().is_some() {}
}

/// A plain PUB and a Subscriber to the exact `topic` on it, warmed up.
fn plain_pub_with_subscriber(topic: &str) -> (zmq::Context, zmq::Socket, Subscriber) {
    let (ctx, pub_sock, ep) = plain_pub();
    let mut sub = Subscriber::connect(&ep, SubscriberConfig::default()).unwrap();
    sub.subscribe(TopicFilter::exact(topic)).unwrap();
    plain_warm_up(&pub_sock, &mut sub, topic);
    (ctx, pub_sock, sub)
}

#[test]
fn gaps_are_counted_from_sequence_numbers() {
    // Hand-made envelopes from a plain PUB: sequences 0,1,2,5,6,10 lose 2 then 3 messages.
    // The three wire versions take turns (a rollout mixes them): version 3 as the tail of the
    // one frame, version 2 in the topic frame's tail, version 1 as a frame of its own.
    let (_ctx, pub_sock, mut sub) = plain_pub_with_subscriber("t");
    let id = PublisherId([9; 16]);
    for (i, seq) in [0u64, 1, 2, 5, 6, 10, 4].into_iter().enumerate() {
        let env = Envelope {
            publisher: id,
            sequence: seq,
        };
        match i % 3 {
            0 => {
                let mut frame = Vec::new();
                env.write_flat_frame(b"t", b"x", &mut frame).unwrap();
                pub_sock.send(&frame[..], 0).unwrap();
            }
            1 => {
                let mut topic = Vec::new();
                env.write_topic_frame(b"t", &mut topic);
                pub_sock.send_multipart([&topic[..], b"x"], 0).unwrap();
            }
            _ => {
                let v1 = env.encode_version(wire::VERSION_SEPARATE_FRAME);
                pub_sock.send_multipart([&b"t"[..], &v1[..], b"x"], 0).unwrap();
            }
        }
    }
    for _ in 0..7 {
        let d = sub.recv(WAIT).unwrap().expect("message");
        assert_eq!(d.origin.map(|o| o.publisher), Some(id));
        assert_eq!((&d.topic[..], &d.payload[..]), (&b"t"[..], &[b"x".to_vec()][..]));
    }
    let c = sub.stats().per_publisher[&id];
    assert_eq!((c.received, c.gaps, c.lost, c.out_of_order), (7, 2, 5, 1));
}

#[test]
fn a_lent_delivery_holds_what_an_owned_one_does_for_every_layout() {
    // recv_with lends topic and payload from the received frames; the reader sees the same
    // topic, parts and origin as recv's owned Delivery, for each wire version and a plain
    // message, and is never called for a filtered message.
    let (_ctx, pub_sock, mut sub) = plain_pub_with_subscriber("t");
    let warm_up = sub.stats().clone();
    let env = Envelope {
        publisher: PublisherId([4; 16]),
        sequence: 0,
    };
    let mut flat = Vec::new();
    env.write_flat_frame(b"t", b"one", &mut flat).unwrap();
    pub_sock.send(&flat[..], 0).unwrap();
    // Prefix-matched by libzmq, refused by the exact filter: skipped.
    pub_sock.send(&b"tt-filtered"[..], 0).unwrap();
    let mut topic = Vec::new();
    Envelope { sequence: 1, ..env }.write_topic_frame(b"t", &mut topic);
    pub_sock
        .send_multipart([&topic[..], b"two", b"parts"], 0)
        .unwrap();
    let v1 = Envelope { sequence: 3, ..env }.encode_version(wire::VERSION_SEPARATE_FRAME);
    pub_sock
        .send_multipart([&b"t"[..], &v1[..], b"three"], 0)
        .unwrap();
    pub_sock.send_multipart([&b"t"[..], b"plain"], 0).unwrap();

    let at = |sequence| Some(Envelope { sequence, ..env });
    let expected = [
        (vec![b"one".to_vec()], at(0)),
        (vec![b"two".to_vec(), b"parts".to_vec()], at(1)),
        (vec![b"three".to_vec()], at(3)),
        (vec![b"plain".to_vec()], None),
    ];
    let mut reads = 0;
    for (payload, origin) in expected {
        let lent = sub
            .recv_with(WAIT, |d| {
                reads += 1;
                d.to_delivery()
            })
            .unwrap()
            .expect("message");
        assert_eq!(
            lent,
            Delivery {
                topic: b"t".to_vec(),
                payload,
                origin
            }
        );
    }
    assert_eq!(reads, 4, "the reader is called once per delivered message only");
    assert_eq!(sub.recv_with(Duration::from_millis(100), |_| ()).unwrap(), None);
    let stats = sub.stats();
    assert_eq!(
        (
            stats.received - warm_up.received,
            stats.filtered - warm_up.filtered,
            stats.plain - warm_up.plain
        ),
        (4, 1, 1)
    );
    assert_eq!(stats.per_publisher[&env.publisher].lost, 1);
}

#[test]
fn real_loss_through_a_tiny_queue_is_accounted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_under_test::start(dir.path(), "a", 10);
    let mut sub = Subscriber::connect(
        &proxy.subscriber_endpoint,
        SubscriberConfig {
            hwm: 10,
            heartbeat: None,
            curve: None,
        },
    )
    .unwrap();
    sub.subscribe(TopicFilter::exact("t")).unwrap();
    let publisher = Publisher::new(PublisherConfig {
        hwm: 10,
        linger: Duration::from_millis(500),
        ..PublisherConfig::default()
    })
    .unwrap();
    publisher
        .set_membership(members(&[&proxy.publisher_endpoint]))
        .unwrap();
    warm_up(&publisher, &mut sub, "t");

    // Flood without reading: queues of 10 overflow and messages are dropped.
    let total = 50_000u64;
    for _ in 0..total {
        publisher.publish("t", vec![vec![0u8; 256]]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut first = None;
    let mut last = 0;
    let mut received = 0u64;
    while let Some(d) = sub.recv(Duration::from_millis(500)).unwrap() {
        let seq = d.origin.expect("enveloped").sequence;
        first.get_or_insert(seq);
        last = seq;
        received += 1;
    }
    let first = first.expect("something arrived");
    let lost_after_first = sub.stats().per_publisher[&publisher.id()].lost;
    assert!(
        received < total,
        "nothing was dropped; the test did not force loss"
    );
    assert!(lost_after_first > 0);
    // Everything between the first and last delivery was either delivered or counted lost.
    assert_eq!(received + lost_after_first, last - first + 1);
}

#[test]
fn malformed_envelopes_are_counted_and_delivered_as_plain() {
    let (_ctx, pub_sock, mut sub) = plain_pub_with_subscriber("t");
    let bad_version = {
        let mut e = Envelope {
            publisher: PublisherId([1; 16]),
            sequence: 0,
        }
        .topic_tail();
        e[2] = 99;
        e
    };
    pub_sock
        .send_multipart([&b"t"[..], &bad_version[..], b"p"], 0)
        .unwrap();
    pub_sock
        .send_multipart([&b"t"[..], &[0xFA, 0x0F][..]], 0)
        .unwrap();
    let d = sub.recv(WAIT).unwrap().expect("delivered");
    assert_eq!(d.origin, None);
    assert_eq!(d.payload, vec![bad_version.to_vec(), b"p".to_vec()]);
    let d = sub.recv(WAIT).unwrap().expect("delivered");
    assert_eq!(d.payload, vec![vec![0xFA, 0x0F]]);
    assert_eq!(sub.stats().malformed, 2);
    assert!(sub.stats().per_publisher.is_empty());
}

#[test]
fn a_plain_libzmq_pub_is_delivered_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_under_test::start(dir.path(), "a", 10_000);
    let mut sub = subscriber(&proxy, &[TopicFilter::exact("plain")]);
    let ctx = zmq::Context::new();
    let pub_sock = ctx.socket(zmq::PUB).unwrap();
    pub_sock.connect(&proxy.publisher_endpoint).unwrap();
    plain_warm_up(&pub_sock, &mut sub, "plain");
    pub_sock.send_multipart([&b"plain"[..], b"hello"], 0).unwrap();
    let d = sub.recv(WAIT).unwrap().expect("delivered");
    assert_eq!(d.topic, b"plain");
    assert_eq!(d.payload, vec![b"hello".to_vec()]);
    assert_eq!(d.origin, None);
    assert!(sub.stats().plain >= 2);
    assert_eq!(sub.stats().malformed, 0);
}

#[test]
fn a_plain_libzmq_sub_receives_from_our_publisher_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_under_test::start(dir.path(), "a", 10_000);
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.connect(&proxy.subscriber_endpoint).unwrap();
    sub.set_subscribe(b"news").unwrap();
    let publisher = publisher();
    publisher
        .set_membership(members(&[&proxy.publisher_endpoint]))
        .unwrap();
    let start = Instant::now();
    let frames = loop {
        publisher.publish("news", vec![b"hello".to_vec()]).unwrap();
        if sub.poll(zmq::POLLIN, 20).unwrap() > 0 {
            break sub.recv_multipart(0).unwrap();
        }
        assert!(start.elapsed() < WAIT, "the plain SUB never received");
    };
    // Wire version 3: one frame, topic then payload then the envelope with the topic length.
    assert_eq!(frames.len(), 1);
    let (env, topic_len) = Envelope::from_flat_frame(&frames[0]).expect("a version-3 envelope");
    assert_eq!(&frames[0][..topic_len], b"news");
    assert_eq!(
        &frames[0][topic_len..frames[0].len() - wire::ENVELOPE_LEN],
        b"hello"
    );
    assert_eq!(env.publisher, publisher.id());
}

/// A plain SUB on `proxy` subscribed to `prefix`.
fn plain_sub(ctx: &zmq::Context, proxy: &Proxy, prefix: &[u8]) -> zmq::Socket {
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.connect(&proxy.subscriber_endpoint).unwrap();
    sub.set_subscribe(prefix).unwrap();
    sub.set_rcvtimeo(i32::try_from(WAIT.as_millis()).unwrap())
        .unwrap();
    sub
}

/// Publishes warm-up messages on `topic` until every subscriber has one, then drains them all.
fn warm_up_all(publisher: &Publisher, subs: &mut [&mut Subscriber], plain: &[&zmq::Socket], topic: &str) {
    let start = Instant::now();
    let mut pending_subs: Vec<usize> = (0..subs.len()).collect();
    let mut pending_plain: Vec<usize> = (0..plain.len()).collect();
    while !pending_subs.is_empty() || !pending_plain.is_empty() {
        assert!(start.elapsed() < WAIT, "a subscriber never received");
        publisher.publish_bytes(topic.as_bytes(), b"warm-up").unwrap();
        std::thread::sleep(Duration::from_millis(10));
        pending_subs.retain(|&i| subs[i].recv(Duration::ZERO).unwrap().is_none());
        pending_plain.retain(|&i| plain[i].recv_multipart(zmq::DONTWAIT).is_err());
    }
    std::thread::sleep(Duration::from_millis(100));
    for sub in subs.iter_mut() {
        while sub.recv(Duration::from_millis(100)).unwrap().is_some() {}
    }
    for sock in plain {
        while sock.recv_multipart(zmq::DONTWAIT).is_ok() {}
    }
}

/// The version a raw message carries, with its topic and payload parts as a plain SUB takes
/// them apart by the recipe in `fanout::wire` (version 4: one payload a record).
fn by_the_recipe(frames: &[Vec<u8>]) -> (u8, Vec<u8>, Vec<Vec<u8>>) {
    if let [frame] = frames
        && let Some((_, topic_len)) = Envelope::from_flat_frame(frame)
    {
        let payload = frame[topic_len..frame.len() - wire::ENVELOPE_LEN].to_vec();
        return (3, frame[..topic_len].to_vec(), vec![payload]);
    }
    if let [frame] = frames
        && let Some(Ok((_, topic_len, records))) = Envelope::from_batch_frame(frame)
    {
        let payloads = records.map(<[u8]>::to_vec).collect();
        return (4, frame[..topic_len].to_vec(), payloads);
    }
    let (_, topic_len) = Envelope::from_topic_tail(&frames[0]).expect("a version-2 tail");
    (2, frames[0][..topic_len].to_vec(), frames[1..].to_vec())
}

#[test]
fn every_layout_arrives_exactly_as_published() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_under_test::start(dir.path(), "a", 10_000);
    let long_topic = format!("long.{}", "x".repeat(295));
    let longest_flat_topic = format!("long.{}", "x".repeat(250));
    let mut sub = subscriber(&proxy, &[TopicFilter::exact("t"), TopicFilter::prefix("long.")]);
    let ctx = zmq::Context::new();
    let raw = plain_sub(&ctx, &proxy, b"");
    let publisher = Publisher::new(PublisherConfig {
        linger: Duration::from_millis(500),
        flat_max_payload: 64,
        // One message a frame: every layout of a single message (version 4 has its test).
        batch_max_bytes: 0,
        ..PublisherConfig::default()
    })
    .unwrap();
    publisher
        .set_membership(members(&[&proxy.publisher_endpoint]))
        .unwrap();
    warm_up_all(&publisher, &mut [&mut sub], &[&raw], "t");

    // (topic, payload parts, how it was handed over, the version expected on the wire)
    let big = vec![7u8; 65];
    let cases: Vec<(&str, Vec<Vec<u8>>, bool, u8)> = vec![
        ("t", vec![b"flat".to_vec()], true, 3),
        ("t", vec![b"owned".to_vec()], false, 3),
        ("t", vec![Vec::new()], true, 3),
        ("t", vec![vec![6u8; 64]], false, 3),
        ("t", vec![big.clone()], true, 2),
        ("t", vec![big.clone()], false, 2),
        ("t", vec![b"a".to_vec(), big.clone(), Vec::new()], false, 2),
        ("t", Vec::new(), false, 2),
        (&longest_flat_topic, vec![b"p".to_vec()], true, 3),
        (&long_topic, vec![b"p".to_vec()], true, 2),
        (&long_topic, vec![b"q".to_vec()], false, 2),
    ];
    for (topic, parts, borrowed, _) in &cases {
        if *borrowed {
            publisher.publish_bytes(topic.as_bytes(), &parts[0]).unwrap();
        } else {
            publisher.publish(topic, parts.clone()).unwrap();
        }
    }
    let mut sequences: std::collections::HashMap<Vec<u8>, Vec<u64>> = Default::default();
    for (topic, parts, _, version) in &cases {
        let frames = raw.recv_multipart(0).expect("the plain SUB receives");
        assert_eq!(
            by_the_recipe(&frames),
            (*version, topic.as_bytes().to_vec(), parts.clone()),
            "{topic:.8}: {} frames",
            frames.len()
        );
        let d = sub.recv(WAIT).unwrap().expect("delivered");
        assert_eq!((&d.topic, &d.payload), (&topic.as_bytes().to_vec(), parts));
        let origin = d.origin.expect("enveloped");
        assert_eq!(origin.publisher, publisher.id());
        sequences.entry(d.topic).or_default().push(origin.sequence);
    }
    // Sequences run per topic without a hole, whatever the layout.
    for (topic, seen) in sequences {
        let first = seen[0];
        let expected: Vec<u64> = (first..first + seen.len() as u64).collect();
        assert_eq!(
            seen,
            expected,
            "{:?}",
            String::from_utf8_lossy(&topic[..8.min(topic.len())])
        );
    }
    assert_eq!(sub.stats().total_lost(), 0);
    assert_eq!((sub.stats().plain, sub.stats().malformed), (0, 0));
}

#[test]
fn messages_queued_together_share_a_frame_and_arrive_one_by_one_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_under_test::start(dir.path(), "a", 10_000);
    let mut sub = subscriber(&proxy, &[TopicFilter::exact("t")]);
    let ctx = zmq::Context::new();
    let raw = plain_sub(&ctx, &proxy, b"t");
    let publisher = publisher();
    publisher
        .set_membership(members(&[&proxy.publisher_endpoint]))
        .unwrap();
    warm_up_all(&publisher, &mut [&mut sub], &[&raw], "t");
    const N: usize = 5_000;
    for i in 0..N {
        publisher.publish_bytes(b"t", format!("m{i}").as_bytes()).unwrap();
    }
    // The plain SUB, by the recipe: every payload once, in order, and some frames held
    // several (the caller queues far faster than one frame a message goes out).
    let (mut payloads, mut frames_seen, mut largest, mut longest) = (Vec::new(), 0, 0, 0);
    while payloads.len() < N {
        let frames = raw.recv_multipart(0).expect("the plain SUB receives");
        let (version, topic, parts) = by_the_recipe(&frames);
        assert_eq!(topic, b"t");
        assert!(version == 3 || version == 4, "version {version}");
        frames_seen += 1;
        largest = largest.max(parts.len());
        longest = longest.max(frames[0].len());
        payloads.extend(parts);
    }
    let expected: Vec<Vec<u8>> = (0..N).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(payloads, expected);
    assert!(
        frames_seen < N && largest > 1,
        "{N} messages came as {frames_seen} frames"
    );
    let frame_bound = fanout::publisher::DEFAULT_BATCH_MAX_BYTES;
    assert!(longest <= frame_bound, "a frame of {longest} bytes");
    // Our subscriber: one delivery a message, consecutive sequences, nothing lost.
    let mut sequences = Vec::new();
    for i in 0..N {
        let d = sub.recv(WAIT).unwrap().expect("delivered");
        assert_eq!(d.payload, vec![format!("m{i}").into_bytes()]);
        let origin = d.origin.expect("enveloped");
        assert_eq!(origin.publisher, publisher.id());
        sequences.push(origin.sequence);
    }
    assert!(sequences.windows(2).all(|w| w[1] == w[0] + 1), "consecutive");
    let stats = sub.stats();
    assert_eq!((stats.total_lost(), stats.total_gaps()), (0, 0));
    assert_eq!((stats.plain, stats.malformed, stats.filtered), (0, 0, 0));
    assert_eq!(stats.per_publisher[&publisher.id()].out_of_order, 0);
}

#[test]
fn a_publisher_of_an_older_version_and_a_new_one_reach_the_same_subscriber() {
    // The older publisher is a plain PUB writing what releases before version 3 wrote:
    // version 2 (topic frame with the envelope as its tail, payload frames).
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_under_test::start(dir.path(), "a", 10_000);
    let mut sub = subscriber(&proxy, &[TopicFilter::exact("t")]);
    let ctx = zmq::Context::new();
    let old = ctx.socket(zmq::PUB).unwrap();
    old.connect(&proxy.publisher_endpoint).unwrap();
    let old_id = PublisherId([0x0d; 16]);
    let mut old_sequence = 0u64;
    let mut topic_frame = Vec::new();
    let mut send_old = |payload: &[u8]| {
        Envelope {
            publisher: old_id,
            sequence: old_sequence,
        }
        .write_topic_frame(b"t", &mut topic_frame);
        old_sequence += 1;
        old.send_multipart([&topic_frame[..], payload], 0).unwrap();
    };
    let start = Instant::now();
    loop {
        send_old(b"old warm-up");
        if sub.recv(Duration::from_millis(20)).unwrap().is_some() {
            break;
        }
        assert!(start.elapsed() < WAIT, "the old publisher never got through");
    }
    let new = publisher();
    new.set_membership(members(&[&proxy.publisher_endpoint])).unwrap();
    warm_up(&new, &mut sub, "t");

    for i in 0..200 {
        send_old(format!("old {i}").as_bytes());
        new.publish_bytes(b"t", format!("new {i}").as_bytes()).unwrap();
    }
    let (mut from_old, mut from_new) = (Vec::new(), Vec::new());
    while from_old.len() < 200 || from_new.len() < 200 {
        let d = sub.recv(WAIT).unwrap().expect("both keep arriving");
        assert_eq!(d.topic, b"t");
        match d.origin.map(|o| o.publisher) {
            Some(id) if id == old_id => from_old.push(payload_text(&d)),
            Some(id) if id == new.id() => from_new.push(payload_text(&d)),
            other => panic!("unexpected origin {other:?}"),
        }
    }
    let expected = |who: &str| (0..200).map(|i| format!("{who} {i}")).collect::<Vec<_>>();
    assert_eq!(from_old, expected("old"));
    assert_eq!(from_new, expected("new"));
    let stats = sub.stats();
    assert_eq!(stats.total_lost(), 0);
    assert_eq!(stats.per_publisher[&old_id].out_of_order, 0);
    assert_eq!(stats.per_publisher[&new.id()].out_of_order, 0);
}

#[test]
fn a_pyzmq_sub_takes_our_messages_apart_by_the_documented_recipe() {
    // pyzmq shares nothing with us but libzmq: it splits what it receives exactly as the README
    // and `fanout::wire` tell a plain SUB to.
    let Some(python) = proxy_support::pyzmq("") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_under_test::start(dir.path(), "a", 10_000);
    let publisher = Publisher::new(PublisherConfig {
        linger: Duration::from_millis(500),
        flat_max_payload: 8,
        ..PublisherConfig::default()
    })
    .unwrap();
    publisher
        .set_membership(members(&[&proxy.publisher_endpoint]))
        .unwrap();
    // Version 3 and 2 on topic `news` (a message alone: the next one is of another layout),
    // version 4 on `news.burst` (several queued at once).
    let script = r#"
import sys, zmq
s = zmq.Context().socket(zmq.SUB)
s.setsockopt(zmq.SUBSCRIBE, b"news")
s.setsockopt(zmq.RCVTIMEO, 10000)
s.connect(sys.argv[1])
wanted = {(3, b"news"), (2, b"news"), (4, b"news.burst")}
seen = set()
while not wanted <= seen:
    frames = s.recv_multipart()
    f = frames[0]
    if len(frames) == 1 and f[-28:-26] == b"\xfa\x0f" and f[-26] == 3:
        t = f[-25]
        version, topic, payload = 3, f[:t], [f[t:-28]]
    elif len(frames) == 1 and f[-28:-26] == b"\xfa\x0f" and f[-26] == 4:
        t = f[-25]
        version, topic, payload, b = 4, f[:t], [], f[t:-28]
        while b:
            n = int.from_bytes(b[:2], "big")
            payload.append(b[2:2 + n])
            b = b[2 + n:]
        if len(payload) < 2 or len(set(payload)) != 1:
            sys.exit("a version-4 frame of %d records: %r" % (len(payload), payload))
        payload = payload[:1]
    elif f[-28:-26] == b"\xfa\x0f" and f[-26] == 2:
        version, topic, payload = 2, f[:-28], frames[1:]
    else:
        sys.exit("not an envelope: %r" % frames)
    if (version, topic) in wanted - seen:
        seen.add((version, topic))
        print(version, topic.decode(), b"+".join(payload).decode(), flush=True)
"#;
    let child = std::process::Command::new(&python)
        .args(["-c", script, &proxy.subscriber_endpoint])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let start = Instant::now();
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > WAIT * 2 {
            child.kill().ok();
            break;
        }
        publisher.publish_bytes(b"news", b"short").unwrap();
        publisher.publish_bytes(b"news", b"longer than 8").unwrap();
        for _ in 0..50 {
            publisher.publish_bytes(b"news.burst", b"burst").unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec!["2 news longer than 8", "3 news short", "4 news.burst burst"]
    );
}

#[test]
fn close_is_bounded_by_the_linger_when_a_proxy_is_unreachable() {
    // A port with nothing listening: messages queue for it and can never leave.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publisher = Publisher::new(PublisherConfig {
        linger: Duration::from_millis(200),
        ..PublisherConfig::default()
    })
    .unwrap();
    publisher
        .set_membership(members(&[&format!("tcp://127.0.0.1:{port}")]))
        .unwrap();
    let start = Instant::now();
    while publisher.connected().is_empty() {
        assert!(start.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..1000 {
        publisher.publish("t", vec![b"stuck".to_vec()]).unwrap();
    }
    let start = Instant::now();
    publisher.close();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "close hung: {:?}",
        start.elapsed()
    );
    assert!(matches!(
        publisher.publish("t", vec![]),
        Err(fanout::publisher::PublisherError::Closed)
    ));
    assert!(matches!(
        publisher.set_membership(Membership::new()),
        Err(fanout::publisher::PublisherError::Closed)
    ));
    assert!(publisher.connected().is_empty());
}

#[test]
fn invalid_endpoints_never_reach_a_snapshot_and_the_rest_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_under_test::start(dir.path(), "a", 10_000);
    let publisher = publisher();
    // A membership holds checked endpoints only: what does not parse never reaches the socket.
    let snapshot: Membership = [
        proxy.publisher_endpoint.as_str(),
        "not-an-endpoint",
        "tcp://127.0.0.1:0",
    ]
    .iter()
    .filter_map(|e| e.parse().ok())
    .collect();
    assert_eq!(snapshot.len(), 1);
    publisher.set_membership(snapshot).unwrap();
    let start = Instant::now();
    while publisher.connected().is_empty() {
        assert!(start.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(publisher.connected(), members(&[&proxy.publisher_endpoint]));
}

/// A message over the proxy's default cap (`maxMessageBytes`, 64 KiB for all frames together)
/// is dropped whole and counted, and the publisher's connection is kept, whatever layout our
/// publisher picks for it: with the default `flat_max_payload` a one-frame (version 3) message
/// never exceeds the cap in a single frame, which would end the connection (ZMQ_MAXMSGSIZE).
#[test]
fn a_message_over_the_default_cap_is_dropped_and_the_connection_kept() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_support::start(dir.path());
    let mut sub = Subscriber::connect(&proxy.subscriber_endpoints()[0], SubscriberConfig::default()).unwrap();
    sub.subscribe(TopicFilter::exact("t")).unwrap();
    let publisher = publisher();
    publisher
        .set_membership(members(&[&proxy.publisher_endpoints()[0]]))
        .unwrap();
    warm_up(&publisher, &mut sub, "t");
    let cap = fanout::proxy::DEFAULT_MAX_MESSAGE_BYTES as usize;
    // Topic, payload and envelope exactly at the cap; then a payload of the cap alone.
    let fits = vec![1u8; cap - 1 - wire::ENVELOPE_LEN];
    let over = vec![2u8; cap];
    for payload in [&fits, &over, &b"after".to_vec()] {
        publisher.publish_bytes(b"t", payload).unwrap();
    }
    // (parts, bytes, first byte) of each delivery: the payloads themselves are too big to print.
    let got: Vec<(usize, usize, Option<u8>)> =
        std::iter::from_fn(|| sub.recv(Duration::from_secs(2)).unwrap())
            .map(|d| {
                (
                    d.payload.len(),
                    d.payload.concat().len(),
                    d.payload.concat().first().copied(),
                )
            })
            .collect();
    assert_eq!(got, vec![(1, fits.len(), Some(1)), (1, 5, Some(b'a'))]);
    assert_eq!(sub.stats().total_lost(), 1, "the dropped message is a gap");
    let stats = proxy.stats().publishers;
    assert_eq!((stats.refused, stats.disconnects), (1, 0));
    publisher.close();
}

/// What the `n`th message of `a_full_proxy_queue_is_counted_...` carries: every layout in turn
/// (one frame; a topic frame and one big part; a topic frame, a big part and a tiny one), each
/// part filled with `n`'s low byte.
fn nth_payload(n: u64) -> Vec<Vec<u8>> {
    let fill = n as u8;
    match n % 3 {
        0 => vec![vec![fill; 200]],
        1 => vec![vec![fill; 32 << 10]],
        _ => vec![vec![fill; 4 << 10], vec![fill; 10]],
    }
}

/// The sequence and payload parts of a message our publisher sent on "t", as a plain SUB
/// receives it; `None` for the warm-up topic.
fn sequence_and_parts(frames: &[Vec<u8>]) -> Option<(u64, Vec<Vec<u8>>)> {
    let (version, topic, parts) = by_the_recipe(frames);
    if topic != b"t" {
        return None;
    }
    let envelope = match version {
        3 => Envelope::from_flat_frame(&frames[0]),
        _ => Envelope::from_topic_tail(&frames[0]),
    };
    Some((envelope.expect("an envelope").0.sequence, parts))
}

/// A proxy that stops reading fills the publisher's queue to it (SNDHWM). The publisher counts
/// that where it happens (`proxy_queue_full_events`), keeps delivering every message to a proxy
/// that reads, and its callers are never held up: the PUB runs with ZMQ_XPUB_NODROP and sends
/// without waiting (a blocking send would stall the socket thread on the full proxy, then
/// `publish` on the full hand-over queue). Two bare SUBs, bound on 127.0.0.1, stand for the
/// proxies' XSUBs. The publisher sends in rounds of 4 messages and the reading SUB takes each
/// round before the next is published, so its own queue of 16 never fills: libzmq tells the
/// writer what was read every 8 messages (half the HWM), and the socket thread may look at
/// that before the previous round was read, so up to 7 + 4 + 4 messages are seen outstanding.
#[test]
fn a_full_proxy_queue_is_counted_and_holds_up_neither_the_caller_nor_the_other_proxies() {
    const ROUND: u64 = 4;
    const MAX_ROUNDS: u64 = 4_000;
    const ROUNDS_AFTER_FULL: u64 = 50;
    let ctx = zmq::Context::new();
    let bound_sub = |rcvhwm: i32, rcvbuf: i32| {
        let sub = ctx.socket(zmq::SUB).unwrap();
        sub.set_rcvhwm(rcvhwm).unwrap();
        sub.set_rcvbuf(rcvbuf).unwrap();
        sub.set_subscribe(b"").unwrap();
        sub.set_linger(0).unwrap();
        sub.bind("tcp://127.0.0.1:0").unwrap();
        let endpoint = sub.get_last_endpoint().unwrap().unwrap();
        (sub, endpoint)
    };
    // The stuck one holds little (a queue of 1, a 4 KiB socket buffer), so the publisher's
    // queue to it fills within a few rounds; the reader's queue is unbounded (0) and its
    // buffer the system's default (-1).
    let (stuck, stuck_endpoint) = bound_sub(1, 4096);
    let (reader, reader_endpoint) = bound_sub(0, -1);
    let publisher = std::sync::Arc::new(
        Publisher::new(PublisherConfig {
            hwm: 16,
            linger: Duration::ZERO,
            flat_max_payload: 1024,
            ..PublisherConfig::default()
        })
        .unwrap(),
    );
    publisher
        .set_membership(members(&[&stuck_endpoint, &reader_endpoint]))
        .unwrap();
    // Both subscriptions have arrived once each SUB has a warm-up message; the stuck one is
    // never read again.
    let start = Instant::now();
    let (mut stuck_warm, mut reader_warm) = (false, false);
    while !(stuck_warm && reader_warm) {
        assert!(start.elapsed() < WAIT, "a SUB never received a warm-up message");
        publisher.publish_bytes(b"w", b"warm-up").unwrap();
        std::thread::sleep(Duration::from_millis(10));
        stuck_warm |= stuck.recv_multipart(zmq::DONTWAIT).is_ok();
        reader_warm |= reader.recv_multipart(zmq::DONTWAIT).is_ok();
    }
    std::thread::sleep(Duration::from_millis(100));
    while reader.recv_multipart(zmq::DONTWAIT).is_ok() {}
    assert_eq!(publisher.stats().proxy_queue_full_events, 0);
    let warm_ups = publisher.stats().sent;

    // Publishing and reading on a thread of their own: if `publish` blocked, the wait below
    // ends the test instead of hanging it.
    let (done, outcome) = std::sync::mpsc::channel();
    let sender = {
        let publisher = publisher.clone();
        std::thread::spawn(move || {
            reader
                .set_rcvtimeo(i32::try_from(WAIT.as_millis()).unwrap())
                .unwrap();
            let mut next = 0u64;
            let mut full_at = None;
            for round in 0..MAX_ROUNDS {
                for n in next..next + ROUND {
                    match nth_payload(n) {
                        parts if n % 3 == 2 => publisher.publish("t", parts).unwrap(),
                        parts => publisher.publish_bytes(b"t", &parts[0]).unwrap(),
                    }
                }
                for n in next..next + ROUND {
                    let frames = match reader.recv_multipart(0) {
                        Ok(frames) => frames,
                        Err(err) => {
                            // Had the socket thread stopped (a send waiting on the stuck
                            // proxy), it has not handed the round to the socket.
                            let handed = publisher.stats().sent - warm_ups;
                            let _ = done.send(Err(format!(
                                "the reader missed message {n} ({err}); the socket thread had \
                                 sent {handed} of the {} published",
                                next + ROUND
                            )));
                            return;
                        }
                    };
                    let got = sequence_and_parts(&frames).expect("a message on t");
                    if got != (n, nth_payload(n)) {
                        let _ = done.send(Err(format!("the reader got {} for message {n}", got.0)));
                        return;
                    }
                }
                next += ROUND;
                if full_at.is_none() && publisher.stats().proxy_queue_full_events > 0 {
                    full_at = Some(round);
                }
                if full_at.is_some_and(|at| round >= at + ROUNDS_AFTER_FULL) {
                    break;
                }
            }
            let _ = done.send(Ok((next, full_at)));
        })
    };
    let (published, full_at) = match outcome.recv_timeout(Duration::from_secs(60)) {
        Ok(result) => result.unwrap(),
        Err(_) => panic!("publishing never finished: publish blocked behind the stuck proxy"),
    };
    sender.join().unwrap();
    let stats = publisher.stats();
    stuck.set_rcvtimeo(500).unwrap();
    let by_stuck = std::iter::from_fn(|| stuck.recv_multipart(0).ok())
        .filter_map(|frames| sequence_and_parts(&frames))
        .count() as u64;
    eprintln!(
        "published {published}, the reader got all of them; the stuck proxy {by_stuck}; \
         queue full first in round {full_at:?}; full-queue events counted: {}",
        stats.proxy_queue_full_events
    );
    assert!(
        full_at.is_some(),
        "no full queue was counted in {MAX_ROUNDS} rounds"
    );
    assert!(by_stuck < published, "the stuck proxy missed nothing");
    assert!(
        stats.proxy_queue_full_events <= published - by_stuck,
        "{} full-queue events for {} messages missed",
        stats.proxy_queue_full_events,
        published - by_stuck
    );
    assert_eq!(stats.send_errors, 0);
    assert_eq!(stats.dropped_no_proxy, 0);
    publisher.close();
}

//! Peers that misbehave are cut off; the proxy stays up with bounded memory and keeps
//! forwarding for everyone else. The hostile peers are raw `std::net::TcpStream` clients.

mod proxy_support;

use fanout::proxy::{CutOff, Side};
use proxy_support::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn a_garbage_greeting_is_cut_off_and_forwarding_goes_on() {
    let rig = Rig::new(b"t");
    let (proxy, publisher, subscriber) = (&rig.proxy, &rig.publisher, &rig.subscriber);
    let port = tcp_port(&proxy.publisher_endpoints()[0]);

    // A ZMTP signature followed by a version and mechanism that mean nothing.
    let mut bad_version = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    bad_version
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut bogus = greeting();
    bogus[10] = 0xEE;
    bogus[12..32].copy_from_slice(b"NOT-A-MECHANISM!!!!!");
    bad_version.write_all(&bogus).expect("send");
    assert!(
        closed_by_proxy(&mut bad_version).is_some(),
        "a bad greeting must be cut off"
    );

    // A well-formed greeting, then a READY that is not a READY.
    let mut bad_ready = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    bad_ready
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    bad_ready.write_all(&greeting()).expect("send");
    bad_ready.write_all(b"\x04\x09\x05HELLO!!!").expect("send");
    assert!(
        closed_by_proxy(&mut bad_ready).is_some(),
        "a bad handshake must be cut off"
    );

    // A socket type that cannot talk to XSUB (REQ).
    let mut wrong_type = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    wrong_type
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    wrong_type.write_all(&greeting()).expect("send");
    wrong_type.write_all(&ready("REQ")).expect("send");
    assert!(
        closed_by_proxy(&mut wrong_type).is_some(),
        "an incompatible peer must be cut off"
    );

    // libzmq raises a handshake-failure event for the first two; an incompatible socket type
    // is refused without one and shows only as a disconnect.
    assert!(eventually(|| {
        let stats = proxy.stats().publishers;
        stats.handshake_failures == 2 && stats.disconnects == 3 && stats.connected == 1
    }));
    still_forwarding(publisher, subscriber, b"t");
    assert!(proxy.is_running());
}

#[test]
fn a_frame_claiming_a_terabyte_is_cut_off_with_bounded_memory() {
    let _memory = measuring_memory();
    let rig = Rig::new(b"t");
    let (proxy, publisher, subscriber) = (&rig.proxy, &rig.publisher, &rig.subscriber);
    let port = tcp_port(&proxy.publisher_endpoints()[0]);
    let rss_before = rss_kib();

    for _ in 0..3 {
        let mut liar = raw_zmtp_peer(port, "PUB");
        // A long message frame: flags 0x02, then a 64-bit size of 1 TiB, then a little data.
        let mut frame = vec![0x02];
        frame.extend_from_slice(&(1u64 << 40).to_be_bytes());
        frame.extend_from_slice(&[0xAB; 4096]);
        // The proxy may close while this is still being written.
        let _ = liar.write_all(&frame);
        assert!(closed_by_proxy(&mut liar).is_some(), "the liar must be cut off");
    }
    still_forwarding(publisher, subscriber, b"t");

    // A frame just above the configured limit is refused the same way.
    let mut big = raw_zmtp_peer(port, "PUB");
    let limit = fanout::proxy::DEFAULT_MAX_MESSAGE_BYTES as u64;
    let mut frame = vec![0x02];
    frame.extend_from_slice(&(limit + 1).to_be_bytes());
    let _ = big.write_all(&frame);
    let _ = big.write_all(&vec![0u8; 64 * 1024]);
    assert!(
        closed_by_proxy(&mut big).is_some(),
        "an oversized frame must be cut off"
    );

    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 64, "memory grew by {grown_mib} MiB");
    assert!(eventually(|| proxy.stats().publishers.disconnects >= 4));
    still_forwarding(publisher, subscriber, b"t");
    assert!(proxy.is_running());
}

#[test]
fn a_malformed_command_after_the_handshake_is_cut_off() {
    let rig = Rig::new(b"t");
    let (proxy, publisher, subscriber) = (&rig.proxy, &rig.publisher, &rig.subscriber);
    let port = tcp_port(&proxy.publisher_endpoints()[0]);

    let mut peer = raw_zmtp_peer(port, "PUB");
    // A command frame whose name length (200) runs past the end of its 3-byte body.
    peer.write_all(b"\x04\x03\xc8AB").expect("send");
    assert!(
        closed_by_proxy(&mut peer).is_some(),
        "a malformed command must be cut off"
    );
    still_forwarding(publisher, subscriber, b"t");
}

#[test]
fn a_silent_peer_is_dropped_by_heartbeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = fanout::proxy::ProxyConfig {
        heartbeat: Duration::from_millis(100),
        ..config(dir.path())
    };
    let proxy = fanout::proxy::start(config).expect("proxy starts");
    let port = tcp_port(&proxy.publisher_endpoints()[0]);

    // Completes the handshake, then never answers: ZMTP PINGs go unanswered and the proxy
    // hangs up after the heartbeat timeout, long before TCP would notice anything.
    let mut silent = raw_zmtp_peer(port, "PUB");
    let started = std::time::Instant::now();
    let seen = closed_by_proxy(&mut silent).expect("the silent peer must be dropped");
    let ping = b"\x04PING";
    assert!(
        seen.windows(ping.len()).any(|w| w == ping),
        "the proxy sent no PING"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(eventually(|| proxy.stats().publishers.disconnects >= 1));
}

#[test]
fn a_peer_speaking_another_protocol_is_cut_off() {
    let rig = Rig::new(b"t");
    let (proxy, publisher, subscriber) = (&rig.proxy, &rig.publisher, &rig.subscriber);
    let port = tcp_port(&proxy.publisher_endpoints()[0]);

    let before = proxy.stats();
    let mut http = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    http.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let _ = http.write_all(b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n");
    let _ = http.write_all(&[0x5A; 8192]);
    assert!(
        closed_by_proxy(&mut http).is_some(),
        "an HTTP client must be cut off"
    );
    still_forwarding(publisher, subscriber, b"t");
    // Nothing it sent was taken for a message.
    assert_eq!(
        proxy.stats().publishers.messages_received,
        before.publishers.messages_received + 100
    );
    assert!(eventually(|| proxy.stats().publishers.connected == 1));
}

#[test]
fn messages_over_the_frame_or_byte_cap_are_dropped_whole_and_counted() {
    let rig = Rig::new(b"t");
    let (proxy, publisher, subscriber) = (&rig.proxy, &rig.publisher, &rig.subscriber);
    let before = proxy.stats().publishers;

    // One frame too many: 65 frames of one byte each.
    let frames = fanout::proxy::DEFAULT_MAX_FRAMES as usize + 1;
    let too_many: Vec<&[u8]> = std::iter::once(b"t".as_slice())
        .chain(std::iter::repeat_n(b"x".as_slice(), frames - 1))
        .collect();
    publisher.send_multipart(too_many, 0).expect("send");
    // Every frame under the per-frame limit (libzmq's MAXMSGSIZE), the sum above the cap.
    let limit = fanout::proxy::DEFAULT_MAX_MESSAGE_BYTES as usize;
    let half = vec![0u8; limit / 2 + 1];
    publisher
        .send_multipart([b"t".as_slice(), &half, &half], 0)
        .expect("send");
    // Exactly at the caps: delivered.
    let at_frames: Vec<&[u8]> = std::iter::once(b"t".as_slice())
        .chain(std::iter::repeat_n(b"y".as_slice(), frames - 2))
        .collect();
    publisher.send_multipart(&at_frames, 0).expect("send");

    // The first message to arrive is the one at the caps, whole.
    let got = subscriber.recv_multipart(0).expect("the message at the caps");
    assert_eq!(got.len(), frames - 1);
    assert!(got[1..].iter().all(|frame| frame == b"y"));
    still_forwarding(publisher, subscriber, b"t");

    let stats = proxy.stats().publishers;
    assert_eq!(stats.refused - before.refused, 2, "{stats:?}");
    assert!(proxy.is_running());
}

#[test]
fn a_flood_of_distinct_subscriptions_collapses_upstream_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = fanout::proxy::ProxyConfig {
        subscription_limits: fanout::proxy::SubscriptionLimits {
            max_topics: 100,
            ..fanout::proxy::SubscriptionLimits::default()
        },
        ..config(dir.path())
    };
    let proxy = fanout::proxy::start(config).expect("proxy starts");
    let ctx = zmq::Context::new();
    let publisher = publisher(&ctx, &proxy);
    let watcher = observer(&ctx, &proxy);
    let honest = subscriber(&ctx, &proxy, &[b"t"]);
    sync(&publisher, &honest, b"t");

    // A hostile local subscriber asks for 100 000 distinct prefixes.
    let flood = ctx.socket(zmq::XSUB).expect("XSUB");
    flood.set_linger(0).expect("linger");
    flood.connect(&proxy.subscriber_endpoints()[0]).expect("connect");
    for n in 0..100_000u32 {
        let mut subscribe = vec![1u8];
        subscribe.extend_from_slice(format!("flood/{n}").as_bytes());
        flood.send(subscribe, 0).expect("subscribe");
    }

    // Upstream sees at most the limit's worth of topics and one subscription to everything.
    let mut seen = 0usize;
    let mut everything = false;
    while let Some(message) = upstream(&watcher, Duration::from_secs(2)) {
        seen += 1;
        everything |= message == [1u8];
    }
    assert!(everything, "no subscription to everything went upstream");
    assert!(seen <= 110, "{seen} subscription messages went upstream");
    assert!(eventually(|| {
        let stats = proxy.stats();
        stats.subscriptions_collapsed && stats.subscriptions_over_limit > 0
    }));

    // The honest subscriber still gets its topic, all and in order, and nothing else.
    still_forwarding(&publisher, &honest, b"t");
    publisher
        .send_multipart([b"other".as_slice(), b"x"], 0)
        .expect("send");
    publisher
        .send_multipart([b"t".as_slice(), b"last"], 0)
        .expect("send");
    let parts = honest.recv_multipart(0).expect("last");
    assert_eq!(parts[1], b"last", "a topic it never asked for reached it");
    assert!(proxy.is_running());
}

/// A raw subscriber on the unix socket: holds nothing itself, so the memory measured is the
/// proxy's.
fn raw_subscriber(dir: &std::path::Path) -> std::os::unix::net::UnixStream {
    raw_unix_zmtp_peer(&socket_path(dir), "SUB")
}

/// The subscription frame for `topic`.
fn subscribe_frame(topic: &[u8]) -> Vec<u8> {
    zmtp_frame(false, &[&[1u8][..], topic].concat())
}

#[test]
fn a_subscriber_flooding_100_000_long_prefixes_is_cut_off_at_its_cap_with_bounded_memory() {
    let _memory = measuring_memory();
    let rig = Rig::new(b"t");
    let watcher = rig.watcher();
    let proxy = &rig.proxy;
    let limits = fanout::proxy::SubscriptionLimits::default();
    let rss_before = rss_kib();

    // 100 000 distinct prefixes of the longest length allowed, each different from the others
    // from its 7th byte: in a plain XPUB's trie that is about 8 KiB each, 800 MiB in all.
    let mut flood = raw_subscriber(rig.dir.path());
    let mut sent = 0u32;
    'flood: for batch in 0..100u32 {
        let mut bytes = Vec::new();
        for n in batch * 1000..(batch + 1) * 1000 {
            let mut topic = format!("flood/{n:06}/").into_bytes();
            topic.resize(limits.max_topic_bytes, b'x');
            bytes.extend_from_slice(&subscribe_frame(&topic));
        }
        if flood.write_all(&bytes).is_err() {
            break 'flood;
        }
        sent += 1000;
    }
    assert!(
        closed_by_proxy(&mut flood).is_some(),
        "the flooding subscriber must be cut off"
    );
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    eprintln!("flood: {sent} subscriptions written before the cut; RSS grew by {grown_mib} MiB");
    assert!(grown_mib < 64, "memory grew by {grown_mib} MiB");
    let metrics = proxy.metrics();
    assert!(eventually(|| metrics
        .cut_off(Side::Subscribers, CutOff::Topics)
        .get()
        == 1));
    assert!(metrics.refused_subscriptions("topics").get() >= 1);

    // Upstream saw at most the subscriber's cap of distinct topics, and all of them withdrawn
    // once it was gone; the honest subscriber's topic stays.
    // Read until every subscribe seen has its unsubscribe (a busy machine may pause the
    // proxy for longer than one quiet second), then for one quiet second more.
    let mut subscribed = std::collections::HashSet::new();
    let mut withdrawn = 0usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match upstream(&watcher, Duration::from_secs(1))
            .as_deref()
            .map(|m| m.split_first())
        {
            Some(Some((1, topic))) => {
                subscribed.insert(topic.to_vec());
            }
            Some(Some((0, _))) => withdrawn += 1,
            Some(_) => {}
            None if withdrawn >= subscribed.len() || std::time::Instant::now() > deadline => break,
            None => {}
        }
    }
    assert!(
        subscribed.len() <= limits.max_topics_per_subscriber,
        "{} topics went upstream",
        subscribed.len()
    );
    assert_eq!(withdrawn, subscribed.len());
    assert!(eventually(|| proxy.stats().live_subscriptions == 1));
    still_forwarding(&rig.publisher, &rig.subscriber, b"t");
    assert!(proxy.is_running());
}

#[test]
fn a_topic_longer_than_allowed_closes_the_subscriber_and_others_go_on() {
    let rig = Rig::new(b"t");
    let limits = fanout::proxy::SubscriptionLimits::default();
    let metrics = rig.proxy.metrics();

    // Longer than --max-topic-bytes, shorter than the frame limit: refused by the proxy.
    let mut long = raw_subscriber(rig.dir.path());
    long.write_all(&subscribe_frame(&vec![b'y'; limits.max_topic_bytes + 1]))
        .expect("send");
    assert!(closed_by_proxy(&mut long).is_some(), "must be cut off");
    assert!(eventually(|| metrics
        .cut_off(Side::Subscribers, CutOff::TopicBytes)
        .get()
        == 1));
    // Longer than the subscriber side's frame limit: libzmq drops the connection before the
    // frame is read, so nothing of it is stored or counted as a refusal.
    let mut huge = raw_subscriber(rig.dir.path());
    let _ = huge.write_all(&subscribe_frame(&vec![b'z'; 64 << 10]));
    assert!(closed_by_proxy(&mut huge).is_some(), "must be cut off");
    assert_eq!(metrics.refused_subscriptions("topic_bytes").get(), 1);
    still_forwarding(&rig.publisher, &rig.subscriber, b"t");
}

#[test]
fn an_unsubscribe_of_a_topic_someone_else_holds_changes_nothing() {
    let rig = Rig::new(b"t");
    let watcher = rig.watcher();
    let proxy = &rig.proxy;

    // A peer that never subscribed to t unsubscribes from it (libzmq's XPUB passes that up,
    // and a proxy that forwarded it would unsubscribe the node from t).
    let mut hostile = raw_subscriber(rig.dir.path());
    hostile.write_all(&zmtp_frame(false, b"\x00t")).expect("send");
    assert!(eventually(|| proxy
        .metrics()
        .refused_subscriptions("not_subscribed")
        .get()
        == 1));
    assert_eq!(
        upstream(&watcher, Duration::from_millis(300)),
        None,
        "nothing goes upstream"
    );
    still_forwarding(&rig.publisher, &rig.subscriber, b"t");

    // Subscribing twice and unsubscribing once from the same connection leaves nothing held:
    // libzmq keeps one subscription per connection and topic.
    hostile.write_all(&zmtp_frame(false, b"\x01u")).expect("send");
    hostile.write_all(&zmtp_frame(false, b"\x01u")).expect("send");
    assert_eq!(upstream(&watcher, WAIT).as_deref(), Some(b"\x01u".as_slice()));
    hostile.write_all(&zmtp_frame(false, b"\x00u")).expect("send");
    assert_eq!(upstream(&watcher, WAIT).as_deref(), Some(b"\x00u".as_slice()));
    assert_eq!(upstream(&watcher, Duration::from_millis(300)), None);
    assert!(eventually(|| proxy.stats().live_subscriptions == 1));
}

/// Writes `bytes` to `stream` over and over until `cut` holds (or 20 s pass); returns the bytes
/// written, when `cut` held, and the largest growth of this process's memory over `rss_before`
/// (MiB) seen meanwhile. Writes time out rather than block: once the proxy stops reading, the
/// socket's buffers stay full.
fn flood_until(
    stream: &mut TcpStream,
    bytes: &[u8],
    cut: impl Fn() -> bool,
    rss_before: u64,
) -> (u64, Duration, u64) {
    stream
        .set_write_timeout(Some(Duration::from_millis(50)))
        .expect("write timeout");
    let started = std::time::Instant::now();
    let mut written = 0u64;
    let mut peak_mib = 0;
    while started.elapsed() < Duration::from_secs(20) && !cut() {
        match stream.write(bytes) {
            Ok(n) => written += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        peak_mib = peak_mib.max(rss_kib().saturating_sub(rss_before) / 1024);
    }
    (written, started.elapsed(), peak_mib)
}

#[test]
fn a_message_that_never_ends_is_cut_off_while_an_honest_publisher_loses_nothing() {
    let _memory = measuring_memory();
    let rig = Rig::new(b"t");
    let (proxy, dir) = (&rig.proxy, &rig.dir);
    let port = tcp_port(&proxy.publisher_endpoints()[0]);
    let honest_publisher = publisher(&rig.ctx, proxy);
    let honest = subscriber(&rig.ctx, proxy, &[b"n"]);
    sync(&honest_publisher, &honest, b"n");
    let _ = dir;
    let rss_before = rss_kib();

    // The honest publisher sends 2 000 numbered messages over about 2 s meanwhile.
    const COUNT: u32 = 2000;
    let sending = publish_numbered(honest_publisher, b"n", COUNT, Duration::from_millis(1));

    // Empty frames with MORE set, as fast as the socket takes them: 2 bytes on the wire,
    // about 64 bytes of libzmq's memory each, and no message ever completes.
    let metrics = proxy.metrics();
    let cut = || metrics.cut_off(Side::Publishers, CutOff::UnfinishedMessage).get() > 0;
    let mut stuck = raw_zmtp_peer(port, "PUB");
    let frames = zmtp_frame(true, b"").repeat(32 << 10);
    let (written, cut_after, peak_mib) = flood_until(&mut stuck, &frames, cut, rss_before);
    assert!(closed_by_proxy(&mut stuck).is_some(), "the peer must be cut off");
    eprintln!(
        "unfinished message: {} KiB of empty frames written, cut after {cut_after:?}, RSS peak +{peak_mib} MiB",
        written >> 10
    );
    assert!(
        cut_after < Duration::from_secs(5),
        "cut off only after {cut_after:?}"
    );
    assert!(peak_mib < 256, "memory grew by {peak_mib} MiB");
    assert_eq!(
        metrics.cut_off(Side::Publishers, CutOff::UnfinishedMessage).get(),
        1
    );
    assert_eq!(metrics.cut_off(Side::Publishers, CutOff::InFlight).get(), 0);

    // The honest publisher lost nothing, in order.
    receive_numbered(&honest, COUNT);
    let _publisher = sending.join().expect("honest publisher");
    still_forwarding(&rig.publisher, &rig.subscriber, b"t");
    assert!(proxy.is_running());
}

#[test]
fn a_tcp_subscriber_sending_a_message_that_never_ends_is_cut_off() {
    let _memory = measuring_memory();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.subscribers.push("tcp://127.0.0.1:0".into());
    let proxy = fanout::proxy::start(config).expect("proxy starts");
    let port = tcp_port(&proxy.subscriber_endpoints()[1]);
    let ctx = zmq::Context::new();
    let publisher = publisher(&ctx, &proxy);
    let honest = subscriber(&ctx, &proxy, &[b"t"]);
    sync(&publisher, &honest, b"t");

    let metrics = proxy.metrics();
    let cut = || {
        metrics
            .cut_off(Side::Subscribers, CutOff::UnfinishedMessage)
            .get()
            > 0
    };
    let mut stuck = raw_zmtp_peer(port, "SUB");
    let frames = zmtp_frame(true, b"\x02").repeat(32 << 10);
    let (_, cut_after, _) = flood_until(&mut stuck, &frames, cut, rss_kib());
    assert!(closed_by_proxy(&mut stuck).is_some(), "must be cut off");
    assert!(
        cut_after < Duration::from_secs(5),
        "cut off only after {cut_after:?}"
    );
    still_forwarding(&publisher, &honest, b"t");
}

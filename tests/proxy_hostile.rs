//! Peers that misbehave are cut off; the proxy stays up with bounded memory and keeps
//! forwarding for everyone else. The hostile peers are raw `std::net::TcpStream` clients.

mod proxy_support;

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

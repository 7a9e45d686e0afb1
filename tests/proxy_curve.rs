//! A CURVE proxy with real libzmq sockets on 127.0.0.1: who is admitted, who is refused (and
//! counted), a key revoked live, a storm of bad handshakes, a restart, `fanout keygen`, and
//! plain CURVE clients configured by hand (and pyzmq when it is installed).

mod proxy_support;

use fanout::curve::{CurveClient, KeyPair, PublicKey};
use fanout::proxy::allow_lists::{AllowLists, ListSource};
use fanout::proxy::auth::{AllowList, Refusal};
use fanout::proxy::{self, CurveServerConfig, Proxy, ProxyConfig, ProxyInputs, Side};
use proxy_support::{WAIT, eventually, socket_path, subscriber, sync};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Setup {
    dir: tempfile::TempDir,
    server: KeyPair,
    allow: PathBuf,
    /// The subscriber allow-list, when the proxy has one.
    allow_subscribers: Option<PathBuf>,
}

impl Setup {
    fn new(allowed: &[&KeyPair]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = KeyPair::generate().expect("server keys");
        let allow = dir.path().join("allow").join("publishers");
        std::fs::create_dir_all(allow.parent().expect("parent")).expect("allow dir");
        let setup = Self {
            dir,
            server,
            allow,
            allow_subscribers: None,
        };
        setup.allow_only(allowed);
        setup
    }

    /// The same, with a subscriber allow-list of `subscribers` too.
    fn with_subscribers(publishers: &[&KeyPair], subscribers: &[&KeyPair]) -> Self {
        let mut setup = Self::new(publishers);
        let path = setup.dir.path().join("allow").join("subscribers");
        write_allow_list(&path, subscribers);
        setup.allow_subscribers = Some(path);
        setup
    }

    /// Rewrites the allow-list the way a kubelet updates a mount: a new file renamed over.
    fn allow_only(&self, keys: &[&KeyPair]) {
        write_allow_list(&self.allow, keys);
    }

    fn allow_subscribers_only(&self, keys: &[&KeyPair]) {
        write_allow_list(self.allow_subscribers.as_ref().expect("a subscriber list"), keys);
    }

    fn config(&self) -> ProxyConfig {
        ProxyConfig {
            curve: Some(CurveServerConfig {
                secret: self.server.secret.clone(),
                allow_publishers: self.allow.clone(),
                allow_subscribers: self.allow_subscribers.clone(),
            }),
            ..proxy_support::config(self.dir.path())
        }
    }

    fn start(&self) -> Proxy {
        proxy::start(self.config()).expect("CURVE proxy starts")
    }

    /// Our library's publisher with `keys` for this proxy's server key, following `endpoint`.
    fn publisher(
        &self,
        keys: &KeyPair,
        endpoint: &fanout::Endpoint,
        config: fanout::publisher::PublisherConfig,
    ) -> fanout::Publisher {
        let publisher = fanout::Publisher::new(fanout::publisher::PublisherConfig {
            curve: Some(CurveClient {
                server: self.server.public,
                keys: keys.clone(),
            }),
            ..config
        })
        .expect("publisher");
        publisher
            .set_membership([endpoint.clone()].into())
            .expect("membership");
        publisher
    }
}

/// Writes an allow-list of `keys`: a new file renamed over the old one.
fn write_allow_list(path: &std::path::Path, keys: &[&KeyPair]) {
    let mut text = String::from("# keys allowed\n");
    for key in keys {
        text.push_str(&format!("{}\n", key.public));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write allow-list");
    std::fs::rename(&tmp, path).expect("rename allow-list");
}

/// A socket of `kind` with CURVE set up by hand with the plain `zmq` crate (none of our
/// helpers): what any libzmq client does. A SUB subscribes to `topic` before connecting.
fn plain_curve_socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    endpoint: &str,
    server: &PublicKey,
    keys: &KeyPair,
    topic: Option<&[u8]>,
) -> zmq::Socket {
    let socket = ctx.socket(kind).expect("socket");
    socket.set_linger(0).expect("linger");
    socket.set_curve_serverkey(&server.0).expect("serverkey");
    socket.set_curve_publickey(&keys.public.0).expect("publickey");
    socket.set_curve_secretkey(&keys.secret.0).expect("secretkey");
    if let Some(topic) = topic {
        socket.set_subscribe(topic).expect("subscribe");
    }
    socket.connect(endpoint).expect("connect");
    socket
}

fn plain_curve_pub(ctx: &zmq::Context, endpoint: &str, server: &PublicKey, keys: &KeyPair) -> zmq::Socket {
    plain_curve_socket(ctx, zmq::PUB, endpoint, server, keys, None)
}

fn plain_curve_sub(
    ctx: &zmq::Context,
    endpoint: &str,
    server: &PublicKey,
    keys: &KeyPair,
    topic: &[u8],
) -> zmq::Socket {
    plain_curve_socket(ctx, zmq::SUB, endpoint, server, keys, Some(topic))
}

/// That `what` happened at `at`, within a second of `revoked_at`.
fn assert_within_a_second_of(revoked_at: Instant, at: Instant, what: &str) {
    assert!(
        at < revoked_at + Duration::from_secs(1),
        "{what} {:?} after revocation",
        at.saturating_duration_since(revoked_at)
    );
}

/// That the sequence numbers `seen` are exactly 0..sent, in order.
fn assert_all_in_order(seen: &[u32], sent: u32) {
    assert_eq!(seen.len() as u32, sent, "messages lost");
    assert!(
        seen.iter().enumerate().all(|(i, s)| *s == i as u32),
        "messages out of order"
    );
}

fn refused(proxy: &Proxy, reason: Refusal) -> u64 {
    proxy.metrics().auth_refused(Side::Publishers, reason).get()
}

#[test]
fn listed_keys_publish_and_no_key_wrong_server_key_unlisted_key_are_refused_and_counted() {
    assert_eq!(zmq::has("curve"), Some(true), "libzmq must be built with CURVE");
    let good = KeyPair::generate().expect("keys");
    let setup = Setup::new(&[&good]);
    let proxy = setup.start();
    assert_eq!(proxy.curve_public_key(), Some(setup.server.public));
    let endpoint = proxy.publisher_endpoints()[0].clone();
    let ctx = zmq::Context::new();
    let sub = subscriber(&ctx, &proxy, &[b""]);
    let publisher = plain_curve_pub(&ctx, &endpoint, &setup.server.public, &good);
    sync(&publisher, &sub, b"good");

    // No CURVE at all.
    let null = ctx.socket(zmq::PUB).expect("PUB");
    null.set_linger(0).expect("linger");
    null.connect(&endpoint).expect("connect");
    // CURVE, but expecting another server.
    let other_server = KeyPair::generate().expect("keys").public;
    let wrong_server = plain_curve_pub(
        &ctx,
        &endpoint,
        &other_server,
        &KeyPair::generate().expect("keys"),
    );
    // CURVE with a key nobody listed.
    let unlisted = plain_curve_pub(
        &ctx,
        &endpoint,
        &setup.server.public,
        &KeyPair::generate().expect("keys"),
    );
    assert!(
        eventually(|| refused(&proxy, Refusal::NoCurve) >= 1
            && refused(&proxy, Refusal::WrongServerKey) >= 1
            && refused(&proxy, Refusal::UnknownKey) >= 1),
        "refusals: no_curve {} wrong_server_key {} unknown_key {}",
        refused(&proxy, Refusal::NoCurve),
        refused(&proxy, Refusal::WrongServerKey),
        refused(&proxy, Refusal::UnknownKey)
    );
    // Whatever the refused send never arrives; the listed publisher's messages all do.
    for i in 0..100u32 {
        for bad in [&null, &wrong_server, &unlisted] {
            bad.send_multipart([b"bad".as_slice(), b"x"], zmq::DONTWAIT).ok();
        }
        publisher
            .send_multipart([b"good".as_slice(), &i.to_be_bytes()], 0)
            .expect("send");
    }
    for i in 0..100u32 {
        let parts = sub.recv_multipart(0).expect("a good message");
        assert_eq!(parts[0], b"good");
        assert_eq!(parts[1], i.to_be_bytes());
    }
    assert!(sub.recv_multipart(zmq::DONTWAIT).is_err());

    let mut registry = fanout::metrics::registry();
    proxy.metrics().register(&mut registry);
    let text = fanout::metrics::encode(&registry);
    for reason in ["unknown_key", "no_curve", "wrong_server_key"] {
        let series = format!("fanout_proxy_auth_refused_total{{side=\"publishers\",reason=\"{reason}\"}} ");
        assert!(text.contains(&series), "{series} in {text}");
    }
    assert!(
        text.contains("fanout_proxy_allow_list_keys{side=\"publishers\"} 1"),
        "{text}"
    );
}

#[test]
fn a_revoked_key_is_cut_off_within_a_second_and_the_other_publisher_loses_nothing() {
    let (stays, revoked) = (
        KeyPair::generate().expect("keys"),
        KeyPair::generate().expect("keys"),
    );
    let setup = Setup::new(&[&stays, &revoked]);
    let proxy = setup.start();
    cut_off_during_traffic(&proxy, &setup, &stays, &revoked, || setup.allow_only(&[&stays]));
}

/// Publishers `stays` and `revoked` (both listed) send 2 messages a millisecond each for 3 s;
/// after 1 s `revoke` takes `revoked` off the list in force. `revoked`'s last message arrives
/// and its connection is closed within a second of that, `stays` loses nothing, and
/// `revoked`'s reconnection is refused at the handshake.
fn cut_off_during_traffic(
    proxy: &Proxy,
    setup: &Setup,
    stays: &KeyPair,
    revoked: &KeyPair,
    revoke: impl FnOnce(),
) {
    let endpoint = proxy.publisher_endpoints()[0].clone();
    let ctx = zmq::Context::new();
    let sub = subscriber(&ctx, proxy, &[b""]);
    let a = plain_curve_pub(&ctx, &endpoint, &setup.server.public, stays);
    let b = plain_curve_pub(&ctx, &endpoint, &setup.server.public, revoked);
    sync(&a, &sub, b"a");
    sync(&b, &sub, b"b");
    let unknown_before = refused(proxy, Refusal::UnknownKey);

    // The receiver notes, per topic, every sequence number and when the last `b` arrived.
    let done = Arc::new(AtomicBool::new(false));
    let last_b = Arc::new(Mutex::new(None::<Instant>));
    let receiver = {
        let (done, last_b) = (done.clone(), last_b.clone());
        std::thread::spawn(move || {
            sub.set_rcvtimeo(100).expect("rcvtimeo");
            let mut a_seen = Vec::new();
            while !done.load(Ordering::Acquire) {
                let Ok(parts) = sub.recv_multipart(0) else {
                    continue;
                };
                let seq = u32::from_be_bytes(parts[1][..4].try_into().expect("4 bytes"));
                match parts[0].as_slice() {
                    b"a" => a_seen.push(seq),
                    b"b" => *last_b.lock().expect("lock") = Some(Instant::now()),
                    _ => {}
                }
            }
            while let Ok(parts) = sub.recv_multipart(zmq::DONTWAIT) {
                if parts[0] == b"a" {
                    a_seen.push(u32::from_be_bytes(parts[1][..4].try_into().expect("4 bytes")));
                }
            }
            a_seen
        })
    };
    let start = Instant::now();
    let mut revoke = Some(revoke);
    let mut revoked_at = None;
    let mut closed_at = None;
    let mut sent_a = 0u32;
    let revocations_before = refused(proxy, Refusal::Revoked);
    // 2 messages a millisecond from each for 3 s, the key revoked after 1 s.
    while start.elapsed() < Duration::from_secs(3) {
        if start.elapsed() >= Duration::from_secs(1)
            && let Some(revoke) = revoke.take()
        {
            revoke();
            revoked_at = Some(Instant::now());
        }
        if revoked_at.is_some()
            && closed_at.is_none()
            && refused(proxy, Refusal::Revoked) > revocations_before
        {
            closed_at = Some(Instant::now());
        }
        for _ in 0..2 {
            a.send_multipart([b"a".as_slice(), &sent_a.to_be_bytes()], 0)
                .expect("send a");
            sent_a += 1;
            b.send_multipart([b"b".as_slice(), &0u32.to_be_bytes()], zmq::DONTWAIT)
                .ok();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Release);
    let a_seen = receiver.join().expect("receiver");
    let revoked_at = revoked_at.expect("revoked");
    let last_b = last_b
        .lock()
        .expect("lock")
        .expect("b delivered before revocation");
    assert_within_a_second_of(revoked_at, last_b, "b's last message arrived");
    let closed_at = closed_at.expect("the revoked connection was closed");
    assert_within_a_second_of(revoked_at, closed_at, "the revoked connection was closed");
    eprintln!(
        "MEASURED revocation: connection closed {:?}, b's last message {:?} after the list changed",
        closed_at.saturating_duration_since(revoked_at),
        last_b.saturating_duration_since(revoked_at)
    );
    assert_all_in_order(&a_seen, sent_a);
    // b's PUB reconnects by itself: now the ZAP handler refuses it.
    assert!(
        eventually(|| refused(proxy, Refusal::UnknownKey) > unknown_before),
        "b's reconnection was not refused"
    );
}

/// The allow-lists as the API watch hands them in (`fanout proxy --allow-lists-configmap`).
fn api_lists(publishers: &[&KeyPair]) -> AllowLists {
    let keys = AllowList::from_keys(publishers.iter().map(|pair| pair.public));
    AllowLists {
        publishers: (keys, 0),
        ..AllowLists::default()
    }
}

fn allow_list_updates(proxy: &Proxy, source: ListSource) -> u64 {
    proxy.metrics().allow_list_updates(Side::Publishers, source).get()
}

/// Issue 10 §3: in a cluster the mounted allow-list lags the ConfigMap by the kubelet's sync,
/// so the proxy also takes the lists the API gives it (here handed in directly, as the watch
/// does). The file counts until the API's first list; from then on only the API: a key
/// revoked through it is cut off within a second while the file still lists it, and a file
/// rewritten later is never applied.
#[test]
fn a_key_revoked_through_the_api_is_cut_off_within_a_second_while_the_file_still_lists_it() {
    let (stays, revoked) = (
        KeyPair::generate().expect("keys"),
        KeyPair::generate().expect("keys"),
    );
    let setup = Setup::new(&[&revoked]);
    let (feed, input) = proxy::allow_lists::allow_list_feed().expect("a feed");
    let proxy = proxy::start_with(
        setup.config(),
        ProxyInputs {
            allow_lists: Some(input),
            ..ProxyInputs::default()
        },
    )
    .expect("CURVE proxy starts");
    // Until the API speaks, the file is followed as without an input.
    setup.allow_only(&[&stays, &revoked]);
    assert!(
        eventually(|| allow_list_updates(&proxy, ListSource::File) >= 2),
        "the rewritten file was not applied before the API's first list"
    );
    assert!(feed.deliver(api_lists(&[&stays, &revoked])));
    assert!(
        eventually(|| allow_list_updates(&proxy, ListSource::Api) == 1),
        "the API's first list was not applied"
    );
    let mut registry = fanout::metrics::registry();
    proxy.metrics().register(&mut registry);
    let text = fanout::metrics::encode(&registry);
    for line in [
        "fanout_proxy_allow_list_source{source=\"api\"} 1",
        "fanout_proxy_allow_list_source{source=\"file\"} 0",
        "fanout_proxy_allow_list_updates_total{side=\"publishers\",source=\"file\"} 2",
        "fanout_proxy_allow_list_updates_total{side=\"publishers\",source=\"api\"} 1",
    ] {
        assert!(text.contains(line), "no `{line}` in {text}");
    }

    // Revoked through the API; the file still lists the key.
    cut_off_during_traffic(&proxy, &setup, &stays, &revoked, || {
        assert!(feed.deliver(api_lists(&[&stays])));
    });
    let file = std::fs::read_to_string(&setup.allow).expect("the allow-list file");
    assert!(file.contains(&revoked.public.to_z85()), "{file}");

    // A file rewritten after the API took over (here: one more key) is never applied, even
    // after several of the followers' re-reads.
    let late = KeyPair::generate().expect("keys");
    setup.allow_only(&[&stays, &revoked, &late]);
    std::thread::sleep(3 * proxy::ALLOW_LIST_RECHECK);
    assert_eq!(allow_list_updates(&proxy, ListSource::File), 2);
    assert_eq!(allow_list_updates(&proxy, ListSource::Api), 2);
    assert_eq!(proxy.metrics().publishers.allow_list_keys.get(), 1);
}

#[test]
fn a_storm_of_bad_handshakes_is_refused_and_counted_while_a_listed_publisher_delivers() {
    const STORM: u64 = 300;
    let good = KeyPair::generate().expect("keys");
    let setup = Setup::new(&[&good]);
    let proxy = setup.start();
    let endpoint = proxy.publisher_endpoints()[0].clone();
    let ctx = zmq::Context::new();
    let sub = subscriber(&ctx, &proxy, &[b"good"]);
    let publisher = plain_curve_pub(&ctx, &endpoint, &setup.server.public, &good);
    sync(&publisher, &sub, b"good");
    let storm_ctx = zmq::Context::new();
    let storm: Vec<zmq::Socket> = (0..STORM)
        .map(|i| match i % 3 {
            0 => plain_curve_pub(
                &storm_ctx,
                &endpoint,
                &setup.server.public,
                &KeyPair::generate().expect("keys"),
            ),
            1 => plain_curve_pub(
                &storm_ctx,
                &endpoint,
                &KeyPair::generate().expect("keys").public,
                &good,
            ),
            _ => {
                let null = storm_ctx.socket(zmq::PUB).expect("PUB");
                null.set_linger(0).expect("linger");
                null.connect(&endpoint).expect("connect");
                null
            }
        })
        .collect();
    let total = || {
        refused(&proxy, Refusal::UnknownKey)
            + refused(&proxy, Refusal::WrongServerKey)
            + refused(&proxy, Refusal::NoCurve)
    };
    let mut sent = 0u32;
    let deadline = Instant::now() + WAIT;
    while total() < STORM && Instant::now() < deadline {
        // No more than the subscriber's queues hold (read only afterwards) on a slow machine.
        if sent < 1000 {
            publisher
                .send_multipart([b"good".as_slice(), &sent.to_be_bytes()], 0)
                .expect("send");
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(total() >= STORM, "only {} of {STORM} refused", total());
    drop(storm);
    drop(storm_ctx);
    for i in 0..sent {
        let parts = sub.recv_multipart(0).expect("every good message");
        assert_eq!(parts[1], i.to_be_bytes(), "lost or reordered during the storm");
    }
    assert!(proxy.is_running());
}

#[test]
fn a_revoked_subscriber_sharing_a_topic_is_cut_off_within_a_second_and_the_other_loses_nothing() {
    let (publisher_keys, stays, revoked) = (
        KeyPair::generate().expect("keys"),
        KeyPair::generate().expect("keys"),
        KeyPair::generate().expect("keys"),
    );
    let setup = Setup::with_subscribers(&[&publisher_keys], &[&stays, &revoked]);
    let mut config = setup.config();
    config.subscribers.push("tcp://127.0.0.1:0".into());
    let proxy = proxy::start(config).expect("proxy");
    let tcp = proxy.subscriber_endpoints()[1].clone();
    let ctx = zmq::Context::new();
    let publisher = plain_curve_pub(
        &ctx,
        &proxy.publisher_endpoints()[0],
        &setup.server.public,
        &publisher_keys,
    );
    // Both subscribe to the same topic; the revoked one second, so that its subscription is
    // one a proxy relying on libzmq's own counting would never have seen.
    let a = plain_curve_sub(&ctx, &tcp, &setup.server.public, &stays, b"t");
    sync(&publisher, &a, b"t");
    let b = plain_curve_sub(&ctx, &tcp, &setup.server.public, &revoked, b"t");
    sync(&publisher, &b, b"t");
    while a.recv_multipart(zmq::DONTWAIT).is_ok() {}

    // The receivers note every sequence number (a) and when the last message arrived (b).
    let done = Arc::new(AtomicBool::new(false));
    let last_b = Arc::new(Mutex::new(None::<Instant>));
    let b_receiver = {
        let (done, last_b) = (done.clone(), last_b.clone());
        std::thread::spawn(move || {
            b.set_rcvtimeo(50).expect("rcvtimeo");
            while !done.load(Ordering::Acquire) {
                if b.recv_multipart(0).is_ok() {
                    *last_b.lock().expect("lock") = Some(Instant::now());
                }
            }
        })
    };
    let a_receiver = {
        let done = done.clone();
        std::thread::spawn(move || {
            a.set_rcvtimeo(100).expect("rcvtimeo");
            let mut seen = Vec::new();
            loop {
                match a.recv_multipart(0) {
                    Ok(parts) => seen.push(u32::from_be_bytes(parts[1][..4].try_into().expect("4 bytes"))),
                    Err(_) if done.load(Ordering::Acquire) => break,
                    Err(_) => {}
                }
            }
            seen
        })
    };
    let metrics = proxy.metrics();
    let start = Instant::now();
    let (mut revoked_at, mut closed_at, mut sent) = (None, None, 0u32);
    // A message a millisecond for 3 s, b's key revoked after 1 s.
    while start.elapsed() < Duration::from_secs(3) {
        if revoked_at.is_none() && start.elapsed() >= Duration::from_secs(1) {
            setup.allow_subscribers_only(&[&stays]);
            revoked_at = Some(Instant::now());
        }
        if revoked_at.is_some()
            && closed_at.is_none()
            && metrics.auth_refused(Side::Subscribers, Refusal::Revoked).get() >= 1
        {
            closed_at = Some(Instant::now());
        }
        publisher
            .send_multipart([b"t".as_slice(), &sent.to_be_bytes()], 0)
            .expect("send");
        sent += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Release);
    b_receiver.join().expect("b receiver");
    let seen = a_receiver.join().expect("a receiver");
    let revoked_at = revoked_at.expect("revoked");
    let closed_at = closed_at.expect("the revoked subscriber's connection was closed");
    assert_within_a_second_of(
        revoked_at,
        closed_at,
        "the revoked subscriber's connection was closed",
    );
    let last_b = last_b
        .lock()
        .expect("lock")
        .expect("b received before revocation");
    assert_within_a_second_of(revoked_at, last_b, "b's last message arrived");
    assert_all_in_order(&seen, sent);
    // b's SUB reconnects by itself: now the ZAP handler refuses it.
    assert!(
        eventually(|| metrics.auth_refused(Side::Subscribers, Refusal::UnknownKey).get() >= 1),
        "b's reconnection was not refused"
    );
}

/// The port of `endpoint`, and a config binding exactly that port again.
fn fixed_port(config: ProxyConfig, endpoint: &str) -> ProxyConfig {
    ProxyConfig {
        publishers: vec![endpoint.to_string()],
        ..config
    }
}

/// Frames of several messages (wire version 4) from a CURVE publisher stay within a group's
/// cap when sized by `batch_bytes_within`: libzmq checks a CURVE frame against MAXMSGSIZE with
/// its 33 bytes of box, so a frame of exactly the cap would end the connection (shown too).
#[test]
fn frames_of_several_messages_fit_a_curve_proxys_cap_with_the_box() {
    const CAP: usize = 16 << 10;
    const N: usize = 2_000;
    // Five records of this size and the frame is the cap exactly: 1 + 5 x (2 + 3269) + 28.
    const PAYLOAD: usize = 3_269;
    let keys = KeyPair::generate().expect("keys");
    let setup = Setup::new(&[&keys]);
    let proxy = proxy::start(ProxyConfig {
        max_message_bytes: CAP as i64,
        hwm: 10_000,
        ..setup.config()
    })
    .expect("CURVE proxy starts");
    let endpoint = fanout::Endpoint::parse(&proxy.publisher_endpoints()[0]).expect("endpoint");
    let burst = |batch_max_bytes: usize| {
        let mut sub = fanout::subscriber::Subscriber::connect(
            &proxy.subscriber_endpoints()[0],
            fanout::subscriber::SubscriberConfig::default(),
        )
        .expect("subscriber");
        sub.subscribe(fanout::subscriber::TopicFilter::exact("t"))
            .expect("subscribe");
        let publisher = setup.publisher(
            &keys,
            &endpoint,
            fanout::publisher::PublisherConfig {
                linger: Duration::from_millis(500),
                batch_max_bytes,
                ..Default::default()
            },
        );
        assert!(eventually(|| {
            publisher.publish_bytes(b"t", b"warm-up").expect("publish");
            matches!(sub.recv(Duration::from_millis(20)), Ok(Some(_)))
        }));
        std::thread::sleep(Duration::from_millis(200));
        while let Ok(Some(_)) = sub.recv(Duration::ZERO) {}
        let disconnects = proxy.stats().publishers.disconnects;
        for _ in 0..N {
            publisher.publish_bytes(b"t", &[7; PAYLOAD]).expect("publish");
        }
        let mut received = 0;
        while received < N && matches!(sub.recv(Duration::from_secs(2)), Ok(Some(_))) {
            received += 1;
        }
        let ended = proxy.stats().publishers.disconnects - disconnects;
        publisher.close();
        (received, ended)
    };
    let within = fanout::publisher::batch_bytes_within(CAP);
    assert_eq!(within, fanout::publisher::DEFAULT_BATCH_MAX_BYTES);
    assert_eq!(burst(within), (N, 0), "every message, no connection ended");
    let (received, disconnects) = burst(CAP);
    assert!(
        received < N && disconnects > 0,
        "frames of the cap itself: {received} of {N} received, {disconnects} connections ended"
    );
}

#[test]
fn a_publisher_with_our_library_keeps_working_across_a_proxy_restart() {
    let keys = KeyPair::generate().expect("keys");
    let setup = Setup::new(&[&keys]);
    let first = setup.start();
    let endpoint = first.publisher_endpoints()[0].clone();
    let publisher = setup.publisher(
        &keys,
        &fanout::Endpoint::parse(&endpoint).expect("endpoint"),
        fanout::publisher::PublisherConfig {
            linger: Duration::from_millis(200),
            heartbeat: Some(Duration::from_millis(500)),
            ..Default::default()
        },
    );
    let deliver = |proxy: &Proxy| {
        let ctx = zmq::Context::new();
        let sub = subscriber(&ctx, proxy, &[b"t"]);
        sub.set_rcvtimeo(20).expect("rcvtimeo");
        eventually(|| {
            publisher.publish("t", vec![b"hello".to_vec()]).expect("publish");
            sub.recv_multipart(0).is_ok()
        })
    };
    assert!(deliver(&first), "no delivery before the restart");
    first.shutdown().expect("shutdown");
    let second = proxy::start(fixed_port(setup.config(), &endpoint)).expect("restart on the same port");
    assert!(deliver(&second), "no delivery after the restart");
    assert!(publisher.stats().send_errors == 0);
    publisher.close();
}

#[test]
fn subscribers_over_tcp_use_curve_and_the_unix_socket_stays_open_to_null() {
    let keys = KeyPair::generate().expect("keys");
    let setup = Setup::new(&[&keys]);
    let mut config = setup.config();
    config.subscribers.push("tcp://127.0.0.1:0".into());
    let proxy = proxy::start(config).expect("proxy");
    let tcp = proxy.subscriber_endpoints()[1].clone();
    let ctx = zmq::Context::new();
    let publisher = plain_curve_pub(&ctx, &proxy.publisher_endpoints()[0], &setup.server.public, &keys);
    // Our Subscriber over tcp with CURVE (any client key: no subscriber allow-list).
    let mut curve_sub = fanout::Subscriber::connect(
        &tcp,
        fanout::subscriber::SubscriberConfig {
            curve: Some(CurveClient {
                server: setup.server.public,
                keys: KeyPair::generate().expect("keys"),
            }),
            ..Default::default()
        },
    )
    .expect("subscriber");
    curve_sub
        .subscribe(fanout::subscriber::TopicFilter::prefix(""))
        .expect("subscribe");
    // A NULL subscriber on the tcp port is refused; on the unix socket it is fine.
    let null_tcp = ctx.socket(zmq::SUB).expect("SUB");
    null_tcp.set_subscribe(b"").expect("subscribe");
    null_tcp.connect(&tcp).expect("connect");
    let unix = subscriber(&ctx, &proxy, &[b""]);
    sync(&publisher, &unix, b"x");
    let got = eventually(|| {
        publisher
            .send_multipart([b"x".as_slice(), b"raw"], 0)
            .expect("send");
        matches!(curve_sub.recv(Duration::from_millis(20)), Ok(Some(_)))
    });
    assert!(got, "the CURVE subscriber got nothing over tcp");
    assert!(
        eventually(|| proxy
            .metrics()
            .auth_refused(Side::Subscribers, Refusal::NoCurve)
            .get()
            >= 1),
        "the NULL tcp subscriber was not refused"
    );
    null_tcp.set_rcvtimeo(100).expect("rcvtimeo");
    assert!(null_tcp.recv_multipart(0).is_err());
    assert!(socket_path(setup.dir.path()).exists());
}

#[test]
fn keygen_prints_or_writes_a_key_pair_and_never_overwrites_a_secret_key() {
    let fanout = env!("CARGO_BIN_EXE_fanout");
    let out = std::process::Command::new(fanout)
        .arg("keygen")
        .output()
        .expect("run keygen");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let public = PublicKey::from_z85(lines[0]).expect("public key");
    let secret = fanout::curve::SecretKey::from_z85(lines[1]).expect("secret key");
    assert_eq!(secret.public_key().expect("derive"), public, "public then secret");

    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    let out = std::process::Command::new(fanout)
        .args(["keygen", "--out-dir"])
        .arg(&keys)
        .output()
        .expect("run keygen");
    assert!(out.status.success(), "{out:?}");
    let mode = |name: &str| {
        std::fs::metadata(keys.join(name))
            .expect("key file")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("secret.key"), 0o600);
    assert_eq!(mode("public.key") & 0o600, 0o600);
    let pair = KeyPair::from_secret_key_file(&keys.join("secret.key")).expect("read back");
    assert_eq!(
        fanout::curve::read_public_key_file(&keys.join("public.key")).expect("public"),
        pair.public
    );
    let again = std::process::Command::new(fanout)
        .args(["keygen", "--out-dir"])
        .arg(&keys)
        .output()
        .expect("run keygen");
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"),
        "{again:?}"
    );
    assert_eq!(
        KeyPair::from_secret_key_file(&keys.join("secret.key")).expect("unchanged"),
        pair
    );
}

/// `fanout proxy` as a CURVE server with a new key pair and an empty allow-list in `dir`.
fn curve_proxy_command(dir: &std::path::Path) -> std::process::Command {
    let keys = KeyPair::generate().expect("keys");
    keys.write_to_dir(dir).expect("write");
    let allow = dir.join("allow");
    std::fs::write(&allow, "").expect("allow-list");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"));
    command
        .args(["proxy", "--publishers", "tcp://127.0.0.1:0", "--subscribers"])
        .arg(format!("ipc://{}", dir.join("s.sock").display()))
        .arg("--curve-secret-key-file")
        .arg(dir.join("secret.key"))
        .arg("--allow-publishers-file")
        .arg(&allow)
        .stdin(std::process::Stdio::null());
    command
}

#[test]
fn the_proxy_refuses_a_secret_key_file_others_can_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = curve_proxy_command(dir.path());
    let secret = dir.path().join("secret.key");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = command.output().expect("run proxy");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("every user"), "{stderr}");
}

/// A proxy told to follow its allow-lists through the API but given no way to reach it stops
/// with the reason: running on the files alone would leave revocations to the kubelet's
/// refresh, unnoticed.
#[test]
fn a_proxy_that_cannot_follow_its_allow_lists_through_the_api_stops_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = curve_proxy_command(dir.path())
        .args([
            "--allow-lists-configmap",
            "g-curve-allow",
            "--allow-lists-namespace",
            "net",
        ])
        // No in-cluster environment, no kubeconfig.
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env("HOME", dir.path())
        .output()
        .expect("run proxy");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("allow-lists through the API: building a client"),
        "{stderr}"
    );
}

/// pyzmq, a CURVE client that shares nothing with us but libzmq's wire protocol (skipped
/// without pyzmq unless `FANOUT_REQUIRE_PYZMQ` is set: `proxy_support::pyzmq`).
#[test]
fn a_pyzmq_curve_publisher_interoperates() {
    let Some(python) = proxy_support::pyzmq("import sys; sys.exit(0 if zmq.has('curve') else 3)") else {
        return;
    };
    let keys = KeyPair::generate().expect("keys");
    let setup = Setup::new(&[&keys]);
    let proxy = setup.start();
    let ctx = zmq::Context::new();
    let sub = subscriber(&ctx, &proxy, &[b"py"]);
    let script = r#"
import sys, time, zmq
endpoint, server, public, secret = sys.argv[1:5]
ctx = zmq.Context()
s = ctx.socket(zmq.PUB)
s.curve_serverkey = server.encode()
s.curve_publickey = public.encode()
s.curve_secretkey = secret.encode()
s.connect(endpoint)
deadline = time.time() + 10
while time.time() < deadline:
    s.send_multipart([b"py", b"hello from pyzmq"])
    time.sleep(0.02)
"#;
    let mut child = std::process::Command::new(&python)
        .args(["-c", script, &proxy.publisher_endpoints()[0]])
        .arg(setup.server.public.to_z85())
        .arg(keys.public.to_z85())
        .arg(keys.secret.to_z85())
        .spawn()
        .expect("python3");
    let got = sub.recv_multipart(0);
    child.kill().ok();
    child.wait().ok();
    let parts = got.expect("a message from pyzmq");
    assert_eq!(parts[1], b"hello from pyzmq");
}

// --- Added for issue 10 (sec-misc): a key added to the allow-list ----------------------------
// Kept apart from the tests above so that parallel edits to this file merge cleanly.

/// The other half of "followed live": a key added to the allow-list file (as a kubelet updates
/// a mounted ConfigMap) is admitted within a second. libzmq 4.3 never retries a handshake the
/// ZAP handler refused (the client's session ends: shown here with a plain PUB), so our
/// Publisher reconnects a refusing proxy itself (`publisher::auth_retry`), and a publisher that
/// started before its key was listed gets through within a second of the listing.
#[test]
fn a_key_added_to_the_allow_list_is_admitted_within_a_second() {
    let (listed, added, plain_key) = (
        KeyPair::generate().expect("keys"),
        KeyPair::generate().expect("keys"),
        KeyPair::generate().expect("keys"),
    );
    let setup = Setup::new(&[&listed]);
    let proxy = setup.start();
    let endpoint = proxy.publisher_endpoints()[0].clone();
    let ctx = zmq::Context::new();
    let sub = subscriber(&ctx, &proxy, &[b""]);
    let a = plain_curve_pub(&ctx, &endpoint, &setup.server.public, &listed);
    sync(&a, &sub, b"a");

    // Our publisher and a plain libzmq PUB, both with keys nobody listed yet.
    let publisher = fanout::Publisher::new(fanout::publisher::PublisherConfig {
        linger: Duration::from_millis(200),
        curve: Some(CurveClient {
            server: setup.server.public,
            keys: added.clone(),
        }),
        ..Default::default()
    })
    .expect("publisher");
    publisher
        .set_membership([fanout::Endpoint::parse(&endpoint).expect("endpoint")].into())
        .expect("membership");
    let plain = plain_curve_pub(&ctx, &endpoint, &setup.server.public, &plain_key);
    assert!(
        eventually(|| refused(&proxy, Refusal::UnknownKey) >= 2),
        "the unlisted keys were not refused"
    );
    sub.set_rcvtimeo(10).expect("rcvtimeo");
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        publisher
            .publish("ours", vec![b"early".to_vec()])
            .expect("publish");
        plain
            .send_multipart([b"plain".as_slice(), b"early"], zmq::DONTWAIT)
            .ok();
        if let Ok(parts) = sub.recv_multipart(0) {
            assert_eq!(parts[0], b"a", "an unlisted key's message arrived");
        }
    }
    let refusals_while_unlisted = refused(&proxy, Refusal::UnknownKey);
    assert!(
        refusals_while_unlisted >= 3,
        "our publisher did not try again while refused ({refusals_while_unlisted} refusals)"
    );
    let mut registry = fanout::metrics::registry();
    publisher.metrics().register(&mut registry);
    let text = fanout::metrics::encode(&registry);
    assert!(
        !text.contains("fanout_publisher_auth_refused_handshakes_total 0\n"),
        "the publisher counts its refusals: {text}"
    );

    setup.allow_only(&[&listed, &added, &plain_key]);
    let added_at = Instant::now();
    let mut first = None;
    let mut plain_arrived = false;
    while first.is_none() && added_at.elapsed() < Duration::from_secs(5) {
        publisher
            .publish("ours", vec![b"admitted".to_vec()])
            .expect("publish");
        plain
            .send_multipart([b"plain".as_slice(), b"late"], zmq::DONTWAIT)
            .ok();
        while let Ok(parts) = sub.recv_multipart(0) {
            // Our envelope rides in the topic frame's tail.
            if parts[0].starts_with(b"ours") {
                first = Some(added_at.elapsed());
            }
            plain_arrived |= parts[0] == b"plain";
        }
    }
    let first = first.expect("the added key was never admitted");
    eprintln!("a key added to the allow-list: our publisher's first message delivered {first:?} later");
    assert!(
        first < Duration::from_secs(1),
        "the added key was admitted only {first:?} after it was listed"
    );
    // A plain libzmq PUB refused before stays cut off (libzmq does not retry) ...
    assert!(
        !plain_arrived,
        "libzmq retried a refused handshake after all: the docs say it does not"
    );
    // ... while a new connection with its key is admitted at once.
    let fresh = plain_curve_pub(&ctx, &endpoint, &setup.server.public, &plain_key);
    sync(&fresh, &sub, b"fresh");
    publisher.close();
}

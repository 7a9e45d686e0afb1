//! A CURVE proxy with real libzmq sockets on 127.0.0.1: who is admitted, who is refused (and
//! counted), a key revoked live, a storm of bad handshakes, a restart, `fanout keygen`, and
//! plain CURVE clients configured by hand (and pyzmq when it is installed).

mod proxy_support;

use fanout::curve::{CurveClient, KeyPair, PublicKey};
use fanout::proxy::auth::Refusal;
use fanout::proxy::{self, CurveServerConfig, Proxy, ProxyConfig, Side};
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
}

impl Setup {
    fn new(allowed: &[&KeyPair]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = KeyPair::generate().expect("server keys");
        let allow = dir.path().join("allow").join("publishers");
        std::fs::create_dir_all(allow.parent().expect("parent")).expect("allow dir");
        let setup = Self { dir, server, allow };
        setup.allow_only(allowed);
        setup
    }

    /// Rewrites the allow-list the way a kubelet updates a mount: a new file renamed over.
    fn allow_only(&self, keys: &[&KeyPair]) {
        let mut text = String::from("# publishers allowed\n");
        for key in keys {
            text.push_str(&format!("{}\n", key.public));
        }
        let tmp = self.allow.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write allow-list");
        std::fs::rename(&tmp, &self.allow).expect("rename allow-list");
    }

    fn config(&self) -> ProxyConfig {
        ProxyConfig {
            curve: Some(CurveServerConfig {
                secret: self.server.secret.clone(),
                allow_publishers: self.allow.clone(),
                allow_subscribers: None,
            }),
            ..proxy_support::config(self.dir.path())
        }
    }

    fn start(&self) -> Proxy {
        proxy::start(self.config()).expect("CURVE proxy starts")
    }
}

/// A PUB with CURVE set up by hand with the plain `zmq` crate (none of our helpers): what any
/// libzmq client does.
fn plain_curve_pub(ctx: &zmq::Context, endpoint: &str, server: &PublicKey, keys: &KeyPair) -> zmq::Socket {
    let socket = ctx.socket(zmq::PUB).expect("PUB");
    socket.set_linger(0).expect("linger");
    socket.set_curve_serverkey(&server.0).expect("serverkey");
    socket.set_curve_publickey(&keys.public.0).expect("publickey");
    socket.set_curve_secretkey(&keys.secret.0).expect("secretkey");
    socket.connect(endpoint).expect("connect");
    socket
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
    let endpoint = proxy.publisher_endpoints()[0].clone();
    let ctx = zmq::Context::new();
    let sub = subscriber(&ctx, &proxy, &[b""]);
    let a = plain_curve_pub(&ctx, &endpoint, &setup.server.public, &stays);
    let b = plain_curve_pub(&ctx, &endpoint, &setup.server.public, &revoked);
    sync(&a, &sub, b"a");
    sync(&b, &sub, b"b");

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
    let mut revoked_at = None;
    let mut closed_at = None;
    let mut sent_a = 0u32;
    // 2 messages a millisecond from each for 3 s, the key revoked after 1 s.
    while start.elapsed() < Duration::from_secs(3) {
        if revoked_at.is_none() && start.elapsed() >= Duration::from_secs(1) {
            setup.allow_only(&[&stays]);
            revoked_at = Some(Instant::now());
        }
        if revoked_at.is_some() && closed_at.is_none() && refused(&proxy, Refusal::Revoked) >= 1 {
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
    assert!(
        last_b < revoked_at + Duration::from_secs(1),
        "b still delivered {:?} after revocation",
        last_b - revoked_at
    );
    let closed_at = closed_at.expect("the revoked connection was closed");
    assert!(
        closed_at < revoked_at + Duration::from_secs(1),
        "the revoked connection was closed {:?} after revocation",
        closed_at - revoked_at
    );
    assert_eq!(a_seen.len() as u32, sent_a, "a lost messages");
    assert!(
        a_seen.iter().enumerate().all(|(i, s)| *s == i as u32),
        "a out of order"
    );
    // b's PUB reconnects by itself: now the ZAP handler refuses it.
    assert!(
        eventually(|| refused(&proxy, Refusal::UnknownKey) >= 1),
        "b's reconnection was not refused"
    );
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
        publisher
            .send_multipart([b"good".as_slice(), &sent.to_be_bytes()], 0)
            .expect("send");
        sent += 1;
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

/// The port of `endpoint`, and a config binding exactly that port again.
fn fixed_port(config: ProxyConfig, endpoint: &str) -> ProxyConfig {
    ProxyConfig {
        publishers: vec![endpoint.to_string()],
        ..config
    }
}

#[test]
fn a_publisher_with_our_library_keeps_working_across_a_proxy_restart() {
    let keys = KeyPair::generate().expect("keys");
    let setup = Setup::new(&[&keys]);
    let first = setup.start();
    let endpoint = first.publisher_endpoints()[0].clone();
    let publisher = fanout::Publisher::new(fanout::publisher::PublisherConfig {
        linger: Duration::from_millis(200),
        heartbeat: Some(Duration::from_millis(500)),
        curve: Some(CurveClient {
            server: setup.server.public,
            keys: keys.clone(),
        }),
        ..Default::default()
    })
    .expect("publisher");
    publisher
        .set_membership([fanout::Endpoint::parse(&endpoint).expect("endpoint")].into())
        .expect("membership");
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

#[test]
fn the_proxy_refuses_a_secret_key_file_others_can_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = KeyPair::generate().expect("keys");
    keys.write_to_dir(dir.path()).expect("write");
    let secret = dir.path().join("secret.key");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let allow = dir.path().join("allow");
    std::fs::write(&allow, "").expect("allow-list");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["proxy", "--publishers", "tcp://127.0.0.1:0", "--subscribers"])
        .arg(format!("ipc://{}", dir.path().join("s.sock").display()))
        .arg("--curve-secret-key-file")
        .arg(&secret)
        .arg("--allow-publishers-file")
        .arg(&allow)
        .output()
        .expect("run proxy");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("every user"), "{stderr}");
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

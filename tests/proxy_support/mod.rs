//! Helpers shared by the proxy integration tests: proxies on 127.0.0.1 and unix sockets in
//! temporary directories, plain libzmq peers, and a raw ZMTP client for hostile peers.
#![allow(dead_code)]

use fanout::proxy::{self, Proxy, ProxyConfig};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` until it holds or `WAIT` passes; returns whether it held.
pub fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    check()
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("run").join("fanout").join("ns.group.sock")
}

pub fn config(dir: &Path) -> ProxyConfig {
    ProxyConfig {
        publishers: vec!["tcp://127.0.0.1:0".into()],
        subscribers: vec![format!("ipc://{}", socket_path(dir).display())],
        heartbeat: Duration::from_millis(500),
        ..ProxyConfig::default()
    }
}

pub fn start(dir: &Path) -> Proxy {
    proxy::start(config(dir)).expect("proxy starts")
}

pub fn tcp_port(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("tcp endpoint with a port")
}

pub fn publisher(ctx: &zmq::Context, proxy: &Proxy) -> zmq::Socket {
    publisher_to(ctx, &proxy.publisher_endpoints()[0])
}

/// A port nothing listens on right now (for a proxy started as a process of its own).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A plain PUB connected to `endpoint` (a proxy running as a process of its own).
pub fn publisher_to(ctx: &zmq::Context, endpoint: &str) -> zmq::Socket {
    let socket = ctx.socket(zmq::PUB).expect("PUB");
    socket.set_linger(0).expect("linger");
    socket.connect(endpoint).expect("connect PUB");
    socket
}

/// An XPUB connected to the proxy's publisher side: sees the subscription messages the proxy
/// sends upstream, as any publisher would.
pub fn observer(ctx: &zmq::Context, proxy: &Proxy) -> zmq::Socket {
    let socket = ctx.socket(zmq::XPUB).expect("XPUB");
    socket.set_linger(0).expect("linger");
    socket.set_rcvtimeo(200).expect("rcvtimeo");
    socket
        .connect(&proxy.publisher_endpoints()[0])
        .expect("connect XPUB");
    socket
}

pub fn subscriber(ctx: &zmq::Context, proxy: &Proxy, topics: &[&[u8]]) -> zmq::Socket {
    let socket = ctx.socket(zmq::SUB).expect("SUB");
    socket.set_linger(0).expect("linger");
    socket.set_rcvtimeo(5000).expect("rcvtimeo");
    for topic in topics {
        socket.set_subscribe(topic).expect("subscribe");
    }
    socket
        .connect(&proxy.subscriber_endpoints()[0])
        .expect("connect SUB");
    socket
}

/// Next upstream message the observer sees within `timeout`, if any.
pub fn upstream(observer: &zmq::Socket, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(message) = observer.recv_bytes(0) {
            return Some(message);
        }
    }
    None
}

/// Publishes `topic` probes until `subscriber` receives one: afterwards the whole path
/// (subscription upstream, connections) is in place. Probes left in flight are drained.
pub fn sync(publisher: &zmq::Socket, subscriber: &zmq::Socket, topic: &[u8]) {
    let deadline = Instant::now() + WAIT;
    subscriber.set_rcvtimeo(20).expect("rcvtimeo");
    loop {
        assert!(Instant::now() < deadline, "no probe on {topic:?} got through");
        publisher
            .send_multipart([topic, b"probe".as_slice()], 0)
            .expect("send probe");
        if let Ok(parts) = subscriber.recv_multipart(0)
            && parts.get(1).map(Vec::as_slice) == Some(b"probe")
        {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    while subscriber.recv_multipart(zmq::DONTWAIT).is_ok() {}
    subscriber.set_rcvtimeo(5000).expect("rcvtimeo");
}

// --- raw ZMTP 3.0 by hand, for peers that misbehave -------------------------------------

/// A ZMTP 3.0 greeting with the NULL mechanism, as a client.
pub fn greeting() -> Vec<u8> {
    let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 0];
    let mut mechanism = b"NULL".to_vec();
    mechanism.resize(20, 0);
    greeting.extend_from_slice(&mechanism);
    greeting.push(0); // as-server
    greeting.resize(64, 0);
    greeting
}

/// A READY command announcing `socket_type`.
pub fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = b"\x05READY".to_vec();
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    let mut frame = vec![0x04, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

/// Sends the greeting and READY as `socket_type` (NULL mechanism) and reads the proxy's
/// greeting.
fn handshake(stream: &mut (impl Read + Write), socket_type: &str) {
    stream.write_all(&greeting()).expect("send greeting");
    stream.write_all(&ready(socket_type)).expect("send READY");
    // The proxy's greeting (64 bytes) and READY; read at least the greeting.
    let mut greeting_back = [0u8; 64];
    stream
        .read_exact(&mut greeting_back)
        .expect("greeting from the proxy");
}

/// Connects a raw TCP client and completes the ZMTP handshake as `socket_type`.
pub fn raw_zmtp_peer(port: u16, socket_type: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("raw connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    handshake(&mut stream, socket_type);
    stream
}

/// Connects a raw client to a unix socket and completes the ZMTP handshake as `socket_type`.
pub fn raw_unix_zmtp_peer(path: &Path, socket_type: &str) -> UnixStream {
    let mut stream = UnixStream::connect(path).expect("raw connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    handshake(&mut stream, socket_type);
    stream
}

/// A ZMTP 3 message frame with `body`, with the MORE flag when `more`.
pub fn zmtp_frame(more: bool, body: &[u8]) -> Vec<u8> {
    let more = u8::from(more);
    let mut frame = match u8::try_from(body.len()) {
        Ok(short) => vec![more, short],
        Err(_) => {
            let mut long = vec![more | 0x02];
            long.extend_from_slice(&(body.len() as u64).to_be_bytes());
            long
        }
    };
    frame.extend_from_slice(body);
    frame
}

/// Whether the proxy closes `stream` within `WAIT`, reading and discarding whatever it sends.
/// Returns everything read before the close.
pub fn closed_by_proxy(stream: &mut impl Read) -> Option<Vec<u8>> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(seen),
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(seen),
        }
    }
    None
}

/// Publishes `count` numbered messages on `topic` (the sequence in the second frame), one every
/// `pace`, and returns the socket: an honest publisher beside a hostile peer.
pub fn publish_numbered(
    publisher: zmq::Socket,
    topic: &'static [u8],
    count: u32,
    pace: Duration,
) -> std::thread::JoinHandle<zmq::Socket> {
    std::thread::spawn(move || {
        for n in 0..count {
            publisher
                .send_multipart([topic, &n.to_be_bytes()], 0)
                .expect("publish");
            std::thread::sleep(pace);
        }
        publisher
    })
}

/// Receives `count` numbered messages on `subscriber` and checks none is missing or out of
/// order.
pub fn receive_numbered(subscriber: &zmq::Socket, count: u32) {
    for n in 0..count {
        let parts = subscriber
            .recv_multipart(0)
            .unwrap_or_else(|e| panic!("message {n} of {count} never arrived: {e}"));
        assert_eq!(parts[1], n.to_be_bytes(), "lost or reordered at {n}");
    }
}

/// Tests that measure this process's memory take this first, so that no other test of the
/// same binary allocates meanwhile.
pub fn measuring_memory() -> std::sync::MutexGuard<'static, ()> {
    static MEMORY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    MEMORY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Resident memory of this test process, in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .expect("VmRSS in /proc/self/status")
}

/// The usual set-up: a proxy on a temp dir's socket, a publisher and a subscriber to `topic`
/// on it, synchronised (a probe went through). Fields drop sockets first, the dir last.
pub struct Rig {
    pub publisher: zmq::Socket,
    pub subscriber: zmq::Socket,
    pub proxy: Proxy,
    pub ctx: zmq::Context,
    pub dir: tempfile::TempDir,
}

impl Rig {
    pub fn new(topic: &[u8]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = start(dir.path());
        let ctx = zmq::Context::new();
        let publisher = publisher(&ctx, &proxy);
        let subscriber = subscriber(&ctx, &proxy, &[topic]);
        sync(&publisher, &subscriber, topic);
        Self {
            publisher,
            subscriber,
            proxy,
            ctx,
            dir,
        }
    }
}

impl Rig {
    /// An observer of what goes upstream (as any publisher would see it), once the rig's own
    /// subscription has gone by.
    pub fn watcher(&self) -> zmq::Socket {
        let watcher = observer(&self.ctx, &self.proxy);
        let deadline = Instant::now() + WAIT;
        while upstream(&watcher, Duration::from_millis(100)).is_none() {
            assert!(
                Instant::now() < deadline,
                "the rig's subscription never went upstream"
            );
        }
        while upstream(&watcher, Duration::from_millis(100)).is_some() {}
        watcher
    }
}

/// Checks that the honest publisher and subscriber still talk through the proxy on `topic`:
/// 100 numbered messages arrive, all and in order.
pub fn still_forwarding(publisher: &zmq::Socket, subscriber: &zmq::Socket, topic: &[u8]) {
    for n in 0..100u32 {
        publisher
            .send_multipart([topic, &n.to_be_bytes()], 0)
            .expect("publish");
    }
    for n in 0..100u32 {
        let parts = subscriber.recv_multipart(0).expect("forwarding goes on");
        assert_eq!(parts[1], n.to_be_bytes());
    }
}

/// The interpreter for pyzmq tests: `FANOUT_TEST_PYTHON`, else Debian's `/usr/bin/python3`
/// (where `apt-get install python3-zmq` puts pyzmq), else `python3` on the PATH.
pub fn python() -> String {
    std::env::var("FANOUT_TEST_PYTHON").unwrap_or_else(|_| {
        let debian = "/usr/bin/python3";
        if Path::new(debian).exists() {
            debian.into()
        } else {
            "python3".into()
        }
    })
}

/// The Python to run a pyzmq test with, if it has pyzmq and `probe` (Python code) exits 0
/// there. Otherwise the test is skipped with the reason printed (`None`), unless
/// `FANOUT_REQUIRE_PYZMQ` is set: hack/test.sh installs python3-zmq and sets it, so in CI a
/// pyzmq test cannot pass by skipping.
pub fn pyzmq(probe: &str) -> Option<String> {
    let python = python();
    let missing = match std::process::Command::new(&python)
        .args(["-c", &format!("import zmq\n{probe}")])
        .output()
    {
        Ok(out) if out.status.success() => return Some(python),
        Ok(out) => format!(
            "{python} has no pyzmq that passes the probe ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => format!("no {python} ({err})"),
    };
    assert!(
        std::env::var_os("FANOUT_REQUIRE_PYZMQ").is_none(),
        "FANOUT_REQUIRE_PYZMQ is set but {missing}"
    );
    eprintln!("skipping: {missing}");
    None
}

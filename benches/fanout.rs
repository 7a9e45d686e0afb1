//! Fanout benchmark: one publisher to K proxies with one subscriber each, for our path and for
//! the peers users weigh instead, side by side in one run.
//!
//! - **fanout**: the real `fanout publish` (child process) → K in-process `fanout::proxy`s →
//!   one `fanout::subscriber::Subscriber` each over a unix socket (envelope, loss counted).
//! - **fanout CURVE**: the same with the proxies' publisher ports as CURVE servers (ZAP handler,
//!   allow-list of the publisher's key) and `fanout publish --curve-secret-key-file
//!   --proxy-public-key`: what authentication and encryption cost (subscribers stay on unix
//!   sockets, NULL, as on a node).
//! - **fanout 1/frame**: the same with `fanout publish --batch-bytes 0`: one message a frame
//!   (wire versions 3 and 2), what the path costs without joining queued messages.
//! - **bare libzmq**: a single-frame PUB (child process) → K stock `zmq_proxy`s → one SUB each
//!   over a unix socket: the same chain built from libzmq alone.
//! - **NATS core**: one publisher connection (child process) → `nats-server` on 127.0.0.1 →
//!   K subscriber connections. Started by this benchmark when `nats-server` is installed
//!   (Debian: `apt-get install nats-server`; `hack/bench.sh` installs it); skipped otherwise.
//!
//! Every queue is as deep as the run (lossless), so the figures are for delivering everything;
//! each row says what was lost anyway. Throughput is deliveries per second on the receivers'
//! clocks (first to last message seen by any subscriber); publisher CPU is the child's own
//! (user + system, libzmq's I/O thread included) per delivery. Median of the repetitions.
//! Prints numbers; asserts nothing about speed.
//!
//! `cargo bench --bench fanout` (env: `FANOUT_BENCH_MESSAGES` (per run, default 200000),
//! `FANOUT_BENCH_SIZES=16,1024`, `FANOUT_BENCH_PROXIES=1,4,8`, `FANOUT_BENCH_REPS=3`,
//! `FANOUT_BENCH_PEERS=fanout,unbatched,curve,bare,nats`, `FANOUT_BENCH_BATCH_BYTES=8192`: the
//! publisher's `--batch-bytes` for the fanout and CURVE rows).

#[path = "support/knobs.rs"]
mod knobs;
#[path = "support/stock_proxy.rs"]
mod stock_proxy;

use fanout::curve::KeyPair;
use fanout::proxy::{CurveServerConfig, ProxyConfig};
use fanout::subscriber::{Subscriber, SubscriberConfig, TopicFilter};
use knobs::{env_list, env_or, median};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TOPIC: &str = "bench";
/// Environment variable that makes this binary a publisher child (`bare` or `nats`).
const ROLE: &str = "FANOUT_BENCH_ROLE";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Fanout,
    FanoutOnePerFrame,
    FanoutCurve,
    Bare,
    Nats,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Fanout => "fanout",
            Peer::FanoutOnePerFrame => "fanout 1/frame",
            Peer::FanoutCurve => "fanout CURVE",
            Peer::Bare => "bare libzmq",
            Peer::Nats => "NATS core",
        }
    }
}

/// What the receivers of one run saw.
#[derive(Default)]
struct Received {
    count: u64,
    lost: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Received {
    fn one(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.count += 1;
    }
}

/// One run's figures.
struct Run {
    deliveries_per_sec: f64,
    publisher_us_per_delivery: f64,
    delivered: u64,
    expected: u64,
    lost_by_sequence: u64,
}

/// One subscriber's receive loop, run on its own thread until it has all or is stopped.
type Receive = Box<dyn FnOnce(&AtomicBool) -> Received + Send>;

/// The receiving side of a run: threads counting messages until they have `messages` or
/// `stop` is set.
struct Receivers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Received>>,
}

impl Receivers {
    fn spawn(receivers: Vec<Receive>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = receivers
            .into_iter()
            .map(|receive| {
                let stop = stop.clone();
                std::thread::spawn(move || receive(&stop))
            })
            .collect();
        Self { stop, threads }
    }

    /// Waits (bounded) for stragglers, then stops and collects.
    fn finish(self) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !self.threads.iter().all(|t| t.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("receiver thread"))
            .collect()
    }
}

fn summarize(results: &[Received], messages: u64, publisher_summary: &str) -> Run {
    let delivered: u64 = results.iter().map(|r| r.count).sum();
    let first = results.iter().filter_map(|r| r.first).min();
    let last = results.iter().filter_map(|r| r.last).max();
    let span = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64().max(1e-9),
        _ => f64::NAN,
    };
    let cpu = after(publisher_summary, "cpu ");
    Run {
        deliveries_per_sec: delivered as f64 / span,
        publisher_us_per_delivery: 1e6 * cpu / delivered.max(1) as f64,
        delivered,
        expected: messages * results.len() as u64,
        lost_by_sequence: results.iter().map(|r| r.lost).sum(),
    }
}

/// The number after `marker` in a publisher's summary line (`... in W s ...; cpu C s ...`).
fn after(summary: &str, marker: &str) -> f64 {
    summary
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

fn finish_child(child: Child, what: &str) -> String {
    let output = child.wait_with_output().expect("publisher child");
    let summary = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success(),
        "{what} failed: {summary} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    summary
}

fn deep(messages: u64) -> i32 {
    i32::try_from(messages).unwrap_or(i32::MAX)
}

// --- fanout ------------------------------------------------------------------------------

/// Keys for a CURVE run: the proxies' server pair (shared, as in a group) and the publisher's
/// pair, written where the proxies and `fanout publish` read them.
struct CurveKeys {
    server: KeyPair,
    publisher_secret_file: std::path::PathBuf,
    allow_publishers_file: std::path::PathBuf,
}

impl CurveKeys {
    fn new(dir: &std::path::Path) -> Self {
        let server = KeyPair::generate().expect("server keys");
        let publisher = KeyPair::generate().expect("publisher keys");
        let publisher_dir = dir.join("publisher-keys");
        publisher
            .write_to_dir(&publisher_dir)
            .expect("write publisher keys");
        let allow_publishers_file = dir.join("allow-publishers");
        std::fs::write(&allow_publishers_file, format!("{}\n", publisher.public)).expect("allow-list");
        Self {
            server,
            publisher_secret_file: publisher_dir.join(fanout::curve::SECRET_KEY_FILE),
            allow_publishers_file,
        }
    }

    fn proxy_config(&self) -> CurveServerConfig {
        CurveServerConfig {
            secret: self.server.secret.clone(),
            allow_publishers: self.allow_publishers_file.clone(),
            allow_subscribers: None,
        }
    }

    fn publish_args(&self) -> Vec<String> {
        vec![
            "--curve-secret-key-file".into(),
            self.publisher_secret_file.display().to_string(),
            "--proxy-public-key".into(),
            self.server.public.to_z85(),
        ]
    }
}

/// `batch_bytes`: the publisher's `--batch-bytes` (0: one message a frame, wire versions 3/2).
fn run_fanout(proxies: usize, messages: u64, size: usize, curve: bool, batch_bytes: usize) -> Run {
    let hwm = deep(messages);
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = curve.then(|| CurveKeys::new(dir.path()));
    let running: Vec<_> = (0..proxies)
        .map(|i| {
            fanout::proxy::start(ProxyConfig {
                publishers: vec!["tcp://127.0.0.1:0".into()],
                subscribers: vec![format!("ipc://{}/p{i}.sock", dir.path().display())],
                // Lossless for the run: queues as deep as the run, so no per-peer byte bound.
                hwm: 0,
                // A group's default cap: what frames of several messages are sized under.
                max_message_bytes: fanout::proxy::DEFAULT_MAX_MESSAGE_BYTES
                    .max(i64::try_from(size + 1024).unwrap_or(i64::MAX)),
                curve: keys.as_ref().map(CurveKeys::proxy_config),
                ..ProxyConfig::default()
            })
            .expect("proxy starts")
        })
        .collect();
    let receivers = Receivers::spawn(
        running
            .iter()
            .map(|proxy| {
                let endpoint = proxy.subscriber_endpoints()[0].clone();
                Box::new(move |stop: &AtomicBool| {
                    let mut sub = Subscriber::connect(
                        &endpoint,
                        SubscriberConfig {
                            hwm,
                            heartbeat: None,
                            curve: None,
                        },
                    )
                    .expect("subscriber connects");
                    sub.subscribe(TopicFilter::exact(TOPIC)).expect("subscribe");
                    let mut got = Received::default();
                    while got.count < messages && !stop.load(Ordering::Relaxed) {
                        // Lent, as the bare SUB below receives into one reused message.
                        let received =
                            sub.recv_with(Duration::from_millis(100), |delivery| delivery.payload.len());
                        if received.expect("recv").is_some() {
                            got.one();
                        }
                    }
                    got.lost = sub.stats().total_lost();
                    got
                }) as Receive
            })
            .collect(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let endpoints: Vec<String> = running
        .iter()
        .map(|p| p.publisher_endpoints()[0].clone())
        .collect();
    let child = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "publish",
            "--log-level",
            "warn",
            "--endpoints",
            &endpoints.join(","),
        ])
        .args([
            "--topic",
            TOPIC,
            "--count",
            &messages.to_string(),
            "--size",
            &size.to_string(),
        ])
        .args(["--hwm", &hwm.to_string(), "--settle", "1", "--linger", "30"])
        .args(["--batch-bytes", &batch_bytes.to_string()])
        .args(keys.as_ref().map(CurveKeys::publish_args).unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fanout publish");
    let summary = finish_child(child, "fanout publish");
    let results = receivers.finish();
    for proxy in running {
        let _ = proxy.shutdown();
    }
    summarize(&results, messages, &summary)
}

// --- bare libzmq -------------------------------------------------------------------------

fn run_bare(proxies: usize, messages: u64, size: usize) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let stock: Vec<_> = (0..proxies)
        .map(|i| {
            stock_proxy::start(&ProxyConfig {
                publishers: vec!["tcp://127.0.0.1:0".into()],
                subscribers: vec![format!("ipc://{}/b{i}.sock", dir.path().display())],
                hwm: 0,
                max_message_bytes: -1,
                ..ProxyConfig::default()
            })
        })
        .collect();
    let context = zmq::Context::new();
    let receivers = Receivers::spawn(
        stock
            .iter()
            .map(|proxy| {
                let endpoint = proxy.subscriber_endpoint.clone();
                let context = context.clone();
                Box::new(move |stop: &AtomicBool| {
                    let sub = context.socket(zmq::SUB).expect("SUB");
                    sub.set_rcvhwm(0).expect("rcvhwm");
                    sub.set_rcvtimeo(100).expect("rcvtimeo");
                    sub.set_subscribe(TOPIC.as_bytes()).expect("subscribe");
                    sub.connect(&endpoint).expect("connect SUB");
                    let mut message = zmq::Message::new();
                    let mut got = Received::default();
                    while got.count < messages && !stop.load(Ordering::Relaxed) {
                        if sub.recv(&mut message, 0).is_ok() {
                            got.one();
                        }
                    }
                    got
                }) as Receive
            })
            .collect(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let endpoints: Vec<String> = stock.iter().map(|p| p.publisher_endpoint.clone()).collect();
    let summary = finish_child(
        publisher_child("bare", &endpoints.join(","), messages, size),
        "bare PUB",
    );
    let results = receivers.finish();
    for proxy in stock {
        proxy.stop();
    }
    summarize(&results, messages, &summary)
}

fn publisher_child(role: &str, target: &str, messages: u64, size: usize) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .env(ROLE, role)
        .env("FANOUT_BENCH_TARGET", target)
        .env("FANOUT_BENCH_COUNT", messages.to_string())
        .env("FANOUT_BENCH_SIZE", size.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn publisher child")
}

/// Child: a plain libzmq PUB, one frame per message (topic then payload in one frame).
fn bare_publisher(endpoints: &str, messages: u64, size: usize) {
    let context = zmq::Context::new();
    let publisher = context.socket(zmq::PUB).expect("PUB");
    publisher.set_sndhwm(0).expect("sndhwm");
    publisher.set_linger(30_000).expect("linger");
    for endpoint in endpoints.split(',') {
        publisher.connect(endpoint).expect("connect PUB");
    }
    // Same settle as `fanout publish --settle 1`: subscriptions reach the PUB first.
    std::thread::sleep(Duration::from_secs(1));
    let mut frame = TOPIC.as_bytes().to_vec();
    frame.resize(TOPIC.len() + size, 0xAB);
    let started = Instant::now();
    let cpu_before = cpu();
    for _ in 0..messages {
        publisher.send(&frame[..], 0).expect("send");
    }
    drop(publisher);
    drop(context); // waits for the queues to drain (linger)
    report(messages, started, cpu_before);
}

// --- NATS core ---------------------------------------------------------------------------

/// `nats-server` on 127.0.0.1, ended (by pid) on drop.
struct NatsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    fn start(binary: &str) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = tempfile::tempdir().ok()?;
        let config = dir.path().join("nats.conf");
        // Lossless for the run: a subscriber may fall behind by the whole run.
        std::fs::write(
            &config,
            format!("listen: 127.0.0.1:{port}\nmax_pending: 2GB\nwrite_deadline: \"60s\"\n"),
        )
        .ok()?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server_binary() -> Option<String> {
    ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_string)
}

/// A NATS core connection: INFO read, CONNECT sent, verified with PING/PONG.
fn nats_connect(port: u16, then: &str) -> (BufReader<TcpStream>, TcpStream) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nats-server");
    stream.set_nodelay(true).expect("nodelay");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("INFO");
    assert!(line.starts_with("INFO"), "nats-server said {line:?}");
    write!(
        writer,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\n{then}PING\r\n"
    )
    .expect("CONNECT");
    loop {
        line.clear();
        reader.read_line(&mut line).expect("PONG");
        if line.starts_with("PONG") {
            return (reader, writer);
        }
        assert!(!line.starts_with("-ERR"), "nats-server refused: {line}");
    }
}

fn run_nats(server: &NatsServer, proxies: usize, messages: u64, size: usize) -> Run {
    let port = server.port;
    let receivers = Receivers::spawn(
        (0..proxies)
            .map(|_| {
                // Subscribed (PONG seen) before the publisher starts.
                let (mut reader, mut writer) = nats_connect(port, &format!("SUB {TOPIC} 1\r\n"));
                Box::new(move |stop: &AtomicBool| {
                    reader
                        .get_ref()
                        .set_read_timeout(Some(Duration::from_millis(100)))
                        .expect("timeout");
                    let mut got = Received::default();
                    let mut line = Vec::new();
                    let mut payload = Vec::new();
                    while got.count < messages && !stop.load(Ordering::Relaxed) {
                        // A read timeout (a loaded machine) keeps what was read: the line or
                        // payload is completed by the next read, never dropped half-way.
                        match reader.read_until(b'\n', &mut line) {
                            Ok(0) => break,
                            Ok(_) if line.ends_with(b"\n") => {}
                            Ok(_) | Err(_) => continue,
                        }
                        if line.starts_with(b"MSG ") {
                            let len: usize = std::str::from_utf8(&line)
                                .ok()
                                .and_then(|l| l.split_whitespace().last())
                                .and_then(|n| n.parse().ok())
                                .expect("MSG line with a size");
                            payload.resize(len + 2, 0);
                            if !read_exact_waiting(&mut reader, &mut payload, stop) {
                                break;
                            }
                            got.one();
                        } else if line.starts_with(b"PING") {
                            let _ = writer.write_all(b"PONG\r\n");
                        }
                        line.clear();
                    }
                    got
                }) as Receive
            })
            .collect(),
    );
    let summary = finish_child(
        publisher_child("nats", &port.to_string(), messages, size),
        "NATS publisher",
    );
    let results = receivers.finish();
    summarize(&results, messages, &summary)
}

/// `read_exact` that waits out read timeouts until `stop`; false if the stream ended or failed
/// (or `stop` was set) first.
fn read_exact_waiting(reader: &mut impl Read, buf: &mut [u8], stop: &AtomicBool) -> bool {
    let mut at = 0;
    while at < buf.len() {
        match reader.read(&mut buf[at..]) {
            Ok(0) => return false,
            Ok(n) => at += n,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) && !stop.load(Ordering::Relaxed) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Child: one NATS connection publishing `messages` messages, then a PING answered only
/// after the server processed them all.
fn nats_publisher(port: u16, messages: u64, size: usize) {
    let (mut reader, writer) = nats_connect(port, "");
    let mut out = BufWriter::with_capacity(1 << 16, writer);
    let mut message = format!("PUB {TOPIC} {size}\r\n").into_bytes();
    message.resize(message.len() + size, 0xAB);
    message.extend_from_slice(b"\r\n");
    let started = Instant::now();
    let cpu_before = cpu();
    for _ in 0..messages {
        out.write_all(&message).expect("PUB");
    }
    out.write_all(b"PING\r\n").expect("PING");
    out.flush().expect("flush");
    let mut line = String::new();
    while !line.starts_with("PONG") {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("PONG") > 0,
            "nats-server hung up"
        );
    }
    report(messages, started, cpu_before);
}

// --- children and main -------------------------------------------------------------------

fn cpu() -> Duration {
    fanout::metrics::process::cpu_time().unwrap_or(Duration::ZERO)
}

/// The summary line the parent parses, in `fanout publish`'s format.
fn report(messages: u64, started: Instant, cpu_before: Duration) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {messages} messages in {secs:.3} s; cpu {:.3} s",
        cpu().saturating_sub(cpu_before).as_secs_f64()
    );
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let target = std::env::var("FANOUT_BENCH_TARGET").expect("target");
        let messages: u64 = env_or("FANOUT_BENCH_COUNT", 0);
        let size: usize = env_or("FANOUT_BENCH_SIZE", 16);
        match role.as_str() {
            "bare" => bare_publisher(&target, messages, size),
            "nats" => nats_publisher(target.parse().expect("port"), messages, size),
            other => panic!("unknown role {other}"),
        }
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let messages: u64 = env_or("FANOUT_BENCH_MESSAGES", if quick { 1_000 } else { 200_000 });
    let reps: usize = env_or("FANOUT_BENCH_REPS", if quick { 1 } else { 3 });
    let sizes: Vec<usize> = env_list("FANOUT_BENCH_SIZES", "16,1024")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let proxies: Vec<usize> = env_list("FANOUT_BENCH_PROXIES", "1,4,8")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let wanted = env_list("FANOUT_BENCH_PEERS", "fanout,unbatched,curve,bare,nats");
    let batch_bytes: usize = env_or(
        "FANOUT_BENCH_BATCH_BYTES",
        fanout::publisher::DEFAULT_BATCH_MAX_BYTES,
    );
    let nats = if wanted.iter().any(|p| p == "nats") {
        match nats_server_binary().and_then(|binary| NatsServer::start(&binary)) {
            Some(server) => Some(server),
            None => {
                println!(
                    "NATS skipped: nats-server is not installed or did not start (apt-get install nats-server)"
                );
                None
            }
        }
    } else {
        None
    };
    let mut peers = Vec::new();
    for (name, peer) in [
        ("fanout", Peer::Fanout),
        ("unbatched", Peer::FanoutOnePerFrame),
        ("curve", Peer::FanoutCurve),
        ("bare", Peer::Bare),
        ("nats", Peer::Nats),
    ] {
        if wanted.iter().any(|p| p == name) && (peer != Peer::Nats || nats.is_some()) {
            peers.push(peer);
        }
    }
    println!(
        "fanout vs peers: 1 publisher (child process) -> K proxies (NATS: 1 server) -> 1 subscriber each; {messages} messages per run, median of {reps}; {} CPUs",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let mut table = Vec::new();
    for &size in &sizes {
        for &k in &proxies {
            let mut row = Vec::new();
            for &peer in &peers {
                let (mut rates, mut cpus) = (Vec::new(), Vec::new());
                for rep in 1..=reps {
                    let run = match peer {
                        Peer::Fanout => run_fanout(k, messages, size, false, batch_bytes),
                        Peer::FanoutOnePerFrame => run_fanout(k, messages, size, false, 0),
                        Peer::FanoutCurve => run_fanout(k, messages, size, true, batch_bytes),
                        Peer::Bare => run_bare(k, messages, size),
                        Peer::Nats => run_nats(nats.as_ref().expect("server"), k, messages, size),
                    };
                    println!(
                        "  {size:>5} B K={k} run {rep} {:<12}: {:>10.0} deliveries/s, publisher {:.3} us CPU per delivery, delivered {} of {} (lost by sequence {}); load {}",
                        peer.name(),
                        run.deliveries_per_sec,
                        run.publisher_us_per_delivery,
                        run.delivered,
                        run.expected,
                        run.lost_by_sequence,
                        knobs::load_average()
                    );
                    rates.push(run.deliveries_per_sec);
                    cpus.push(run.publisher_us_per_delivery);
                }
                row.push((peer, median(&mut rates), median(&mut cpus)));
            }
            table.push((size, k, row));
        }
    }
    println!();
    let header: Vec<String> = peers
        .iter()
        .map(|p| format!("{} M/s (pub us/delivery)", p.name()))
        .collect();
    println!(
        "| size | K | {} | fanout / bare | fanout / NATS | fanout pub CPU / bare | 1/frame / bare | CURVE / fanout |",
        header.join(" | ")
    );
    println!("|---|---|{}---|---|---|---|---|", "---|".repeat(peers.len()));
    for (size, k, row) in table {
        let cell = |peer: Peer| row.iter().find(|(p, _, _)| *p == peer).map(|&(_, r, c)| (r, c));
        let ratio = |a: Option<(f64, f64)>, b: Option<(f64, f64)>, pick: fn((f64, f64)) -> f64| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}x", pick(a) / pick(b)),
            _ => "-".into(),
        };
        let cells: Vec<String> = row
            .iter()
            .map(|&(_, rate, cpu)| format!("{:.2} ({cpu:.2})", rate / 1e6))
            .collect();
        println!(
            "| {size} B | {k} | {} | {} | {} | {} | {} | {} |",
            cells.join(" | "),
            ratio(cell(Peer::Fanout), cell(Peer::Bare), |c| c.0),
            ratio(cell(Peer::Fanout), cell(Peer::Nats), |c| c.0),
            ratio(cell(Peer::Fanout), cell(Peer::Bare), |c| c.1),
            ratio(cell(Peer::FanoutOnePerFrame), cell(Peer::Bare), |c| c.0),
            ratio(cell(Peer::FanoutCurve), cell(Peer::Fanout), |c| c.0),
        );
    }
}

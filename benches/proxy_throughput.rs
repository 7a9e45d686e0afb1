//! Proxy throughput, TCP in → unix socket out: our forwarding loop (`fanout::proxy::start`)
//! against libzmq's stock `zmq_proxy` (through `zmq::proxy_steerable`, so it can be stopped),
//! with identical socket options, in the same run.
//!
//! Like libzmq's perf/local_thr: a fixed count of single-frame messages of a fixed size, timed
//! on the receiver's clock from the first message to the last. A PUB publisher on its own
//! thread connects over TCP on 127.0.0.1; a SUB receiver connects over a unix socket.
//! Queues are unbounded (HWM 0) on every socket so that no message is dropped and every run
//! delivers exactly its count.
//!
//! Run: `cargo bench --bench proxy_throughput` (optional args: `--quick`, `--reps N`).

#[path = "support/stock_proxy.rs"]
mod stock_proxy;

use fanout::proxy::{self, ProxyConfig};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Implementation {
    Ours,
    Stock,
}

impl Implementation {
    fn name(self) -> &'static str {
        match self {
            Implementation::Ours => "fanout proxy",
            Implementation::Stock => "zmq_proxy (stock)",
        }
    }
}

fn config(dir: &std::path::Path) -> ProxyConfig {
    ProxyConfig {
        publishers: vec!["tcp://127.0.0.1:0".into()],
        subscribers: vec![format!("ipc://{}", dir.join("bench.sock").display())],
        hwm: 0,
        max_message_bytes: 1 << 20,
        heartbeat: Duration::from_secs(5),
        ..ProxyConfig::default()
    }
}

/// A running proxy of either kind; `stop` ends it.
struct Running {
    publisher_endpoint: String,
    subscriber_endpoint: String,
    stop: Box<dyn FnOnce()>,
}

fn start(implementation: Implementation, dir: &std::path::Path) -> Running {
    let config = config(dir);
    match implementation {
        Implementation::Ours => {
            let proxy = proxy::start(config).expect("our proxy starts");
            Running {
                publisher_endpoint: proxy.publisher_endpoints()[0].clone(),
                subscriber_endpoint: proxy.subscriber_endpoints()[0].clone(),
                stop: Box::new(move || {
                    proxy.shutdown().expect("our proxy stops");
                }),
            }
        }
        Implementation::Stock => {
            let stock = stock_proxy::start(&config);
            Running {
                publisher_endpoint: stock.publisher_endpoint.clone(),
                subscriber_endpoint: stock.subscriber_endpoint.clone(),
                stop: Box::new(move || stock.stop()),
            }
        }
    }
}

struct Measurement {
    messages: u64,
    elapsed: Duration,
    /// CPU time the proxy's forwarding thread used during the run.
    proxy_cpu: Duration,
}

/// CPU time so far of this process's thread named `name` (from /proc/self/task/*/schedstat,
/// whose first field is nanoseconds on the CPU).
fn thread_cpu(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            let ns = schedstat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            return Duration::from_nanos(ns);
        }
    }
    Duration::ZERO
}

fn thread_name(implementation: Implementation) -> &'static str {
    match implementation {
        Implementation::Ours => "fanout-proxy",
        Implementation::Stock => "stock-proxy",
    }
}

/// One run: returns the receiver's count and time from its first to its last message.
fn run_once(implementation: Implementation, size: usize, count: u64) -> Measurement {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start(implementation, dir.path());
    let context = zmq::Context::new();

    let receiver = context.socket(zmq::SUB).expect("SUB");
    receiver.set_rcvhwm(0).expect("rcvhwm");
    receiver.set_subscribe(b"").expect("subscribe");
    receiver
        .connect(&running.subscriber_endpoint)
        .expect("connect SUB");

    // The publisher sends 1-byte probes until told the path is up, then the counted messages.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let publisher_context = context.clone();
    let endpoint = running.publisher_endpoint.clone();
    let publisher = thread::spawn(move || {
        let publisher = publisher_context.socket(zmq::PUB).expect("PUB");
        publisher.set_sndhwm(0).expect("sndhwm");
        publisher.connect(&endpoint).expect("connect PUB");
        while go_rx.try_recv().is_err() {
            publisher.send(&b"p"[..], 0).expect("probe");
            thread::sleep(Duration::from_millis(5));
        }
        let mut payload = vec![0u8; size];
        payload[0] = b'd';
        for _ in 0..count {
            publisher.send(&payload[..], 0).expect("send");
        }
        // Keep the socket open until everything left (linger), then end.
        drop(publisher);
    });

    let mut message = zmq::Message::new();
    receiver.recv(&mut message, 0).expect("first probe");
    go_tx.send(()).expect("go");
    let mut received = 0u64;
    let mut started = None;
    let mut cpu_at_start = Duration::ZERO;
    receiver.set_rcvtimeo(20_000).expect("rcvtimeo");
    while received < count {
        if receiver.recv(&mut message, 0).is_err() {
            eprintln!(
                "  {}: timed out after {received} of {count} messages",
                implementation.name()
            );
            break;
        }
        if message.len() == size && message.first() == Some(&b'd') {
            if received == 0 {
                started = Some(Instant::now());
                cpu_at_start = thread_cpu(thread_name(implementation));
            }
            received += 1;
        }
    }
    let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
    let proxy_cpu = thread_cpu(thread_name(implementation)).saturating_sub(cpu_at_start);
    publisher.join().expect("publisher thread");
    drop(receiver);
    (running.stop)();
    // The first message starts the clock, so count - 1 intervals are timed.
    Measurement {
        messages: received.saturating_sub(1),
        elapsed,
        proxy_cpu,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let reps: usize = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let cases: &[(usize, u64)] = if quick {
        &[(16, 200_000), (256, 200_000), (4096, 50_000)]
    } else {
        &[(16, 2_000_000), (256, 1_000_000), (4096, 200_000)]
    };
    println!(
        "proxy throughput, TCP in -> unix socket out, libzmq {:?}, {reps} runs per cell (median shown)",
        zmq::version()
    );
    println!(
        "| size | messages | {:>26} | {:>26} | ratio | fanout ns CPU/msg | stock ns CPU/msg | CPU ratio |",
        "fanout proxy msg/s (MB/s)", "zmq_proxy msg/s (MB/s)"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &(size, count) in cases {
        let mut rates = [Vec::new(), Vec::new()];
        let mut cpu_ns = [Vec::new(), Vec::new()];
        for rep in 0..reps {
            // Alternate the order so neither kind always runs on a warmer machine.
            let order = if rep % 2 == 0 {
                [Implementation::Ours, Implementation::Stock]
            } else {
                [Implementation::Stock, Implementation::Ours]
            };
            for implementation in order {
                let m = run_once(implementation, size, count);
                let rate = m.messages as f64 / m.elapsed.as_secs_f64();
                let ns_per_message = m.proxy_cpu.as_nanos() as f64 / m.messages.max(1) as f64;
                eprintln!(
                    "  size {size:5} run {rep} {:18}: {:>10.0} msg/s over {} msgs in {:.3} s, proxy thread {:.0} ns CPU/msg",
                    implementation.name(),
                    rate,
                    m.messages + 1,
                    m.elapsed.as_secs_f64(),
                    ns_per_message
                );
                let i = usize::from(implementation == Implementation::Stock);
                rates[i].push(rate);
                cpu_ns[i].push(ns_per_message);
            }
        }
        let ours = median(rates[0].clone());
        let stock = median(rates[1].clone());
        let (ours_cpu, stock_cpu) = (median(cpu_ns[0].clone()), median(cpu_ns[1].clone()));
        let mb = |rate: f64| rate * size as f64 / 1e6;
        println!(
            "| {size} B | {count} | {:>14.0} ({:>7.1}) | {:>14.0} ({:>7.1}) | {:.2}x | {:.0} | {:.0} | {:.2}x |",
            ours,
            mb(ours),
            stock,
            mb(stock),
            ours / stock,
            ours_cpu,
            stock_cpu,
            stock_cpu / ours_cpu
        );
    }
}

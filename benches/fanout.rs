//! Fanout benchmark: one Publisher to 1, 8 and 32 proxies, one Subscriber each.
//!
//! The proxies (`fanout::proxy`) and subscribers (`fanout::subscriber::Subscriber`, on unix
//! sockets) run in this process; the publisher is the real `fanout publish` in a child process
//! so its CPU time is its own (user + system, from getrusage in the child, including libzmq's
//! I/O thread). Fixed message count and size; throughput is measured on the receivers' clocks
//! (first to last message seen by any subscriber). Prints numbers; asserts nothing about speed.
//!
//! `cargo bench --bench fanout` (env `FANOUT_BENCH_MESSAGES`, `FANOUT_BENCH_SIZE`,
//! `FANOUT_BENCH_PROXIES=1,8,32`, `FANOUT_BENCH_HWM` to change the defaults).

use fanout::proxy::ProxyConfig;
use fanout::subscriber::{Subscriber, SubscriberConfig, TopicFilter};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const TOPIC: &str = "bench";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct SubscriberResult {
    received: u64,
    lost: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

fn run(proxies: usize, messages: u64, size: usize, hwm: i32) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut running = Vec::new();
    for i in 0..proxies {
        let proxy = fanout::proxy::start(ProxyConfig {
            publishers: vec!["tcp://127.0.0.1:0".into()],
            subscribers: vec![format!("ipc://{}/p{i}.sock", dir.path().display())],
            hwm,
            // Room for the payload and the envelope, no more: the proxy refuses an hwm x
            // message size above its per-peer byte bound.
            max_message_bytes: i64::try_from(size + 1024).unwrap_or(i64::MAX),
            ..ProxyConfig::default()
        })
        .expect("proxy starts");
        running.push(proxy);
    }
    let endpoints: Vec<String> = running
        .iter()
        .map(|p| p.publisher_endpoints()[0].clone())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for proxy in &running {
        let endpoint = proxy.subscriber_endpoints()[0].clone();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
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
            let mut result = SubscriberResult {
                received: 0,
                lost: 0,
                first: None,
                last: None,
            };
            while result.received < messages && !stop.load(Ordering::Relaxed) {
                if sub.recv(Duration::from_millis(100)).expect("recv").is_some() {
                    let now = Instant::now();
                    result.first.get_or_insert(now);
                    result.last = Some(now);
                    result.received += 1;
                }
            }
            result.lost = sub.stats().total_lost();
            result
        }));
    }
    // Let the subscribers reach their proxies before the publisher connects.
    std::thread::sleep(Duration::from_millis(300));

    let output = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "publish",
            "--log-level",
            "warn",
            "--endpoints",
            &endpoints.join(","),
            "--topic",
            TOPIC,
            "--count",
            &messages.to_string(),
            "--size",
            &size.to_string(),
            "--hwm",
            &hwm.to_string(),
            "--settle",
            "1",
            "--linger",
            "30",
        ])
        .output()
        .expect("run fanout publish");
    let summary = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success(),
        "fanout publish failed: {summary} {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Give stragglers time to arrive, then stop whoever has not seen everything.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<SubscriberResult> = threads
        .into_iter()
        .map(|t| t.join().expect("subscriber thread"))
        .collect();
    for proxy in running {
        let _ = proxy.shutdown();
    }

    let delivered: u64 = results.iter().map(|r| r.received).sum();
    let lost: u64 = results.iter().map(|r| r.lost).sum();
    let first = results.iter().filter_map(|r| r.first).min();
    let last = results.iter().filter_map(|r| r.last).max();
    let span = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64().max(1e-9),
        _ => f64::NAN,
    };
    let (pub_wall, pub_cpu) = parse_publisher_summary(&summary);
    println!(
        "proxies {proxies:>2} | {messages} msgs x {size} B | delivered {delivered} of {} ({:.2}% lost by sequence: {lost}) | {:>10.0} deliveries/s ({:.0} msgs/s per subscriber) | publisher wall {pub_wall:.3} s, cpu {pub_cpu:.3} s = {:.0}% of one core, {:.2} us cpu per message",
        messages * proxies as u64,
        100.0 * (1.0 - delivered as f64 / (messages * proxies as u64) as f64),
        delivered as f64 / span,
        delivered as f64 / span / proxies as f64,
        100.0 * pub_cpu / pub_wall,
        1e6 * pub_cpu / messages as f64,
    );
}

/// Pulls wall and CPU seconds out of `published N messages to P proxies in W s (...); cpu C s`.
fn parse_publisher_summary(summary: &str) -> (f64, f64) {
    let after = |marker: &str| -> f64 {
        summary
            .split(marker)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(f64::NAN)
    };
    (after(" in "), after("cpu "))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let messages: u64 = env_or("FANOUT_BENCH_MESSAGES", if quick { 1_000 } else { 100_000 });
    let size: usize = env_or("FANOUT_BENCH_SIZE", 64);
    // Queues as deep as the run by default, so the numbers are for delivering everything;
    // set FANOUT_BENCH_HWM lower to see how a flood is shed instead.
    let hwm: i32 = env_or("FANOUT_BENCH_HWM", i32::try_from(messages).unwrap_or(i32::MAX));
    let proxies: Vec<usize> = std::env::var("FANOUT_BENCH_PROXIES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 32]);
    println!(
        "fanout benchmark: one publisher (fanout publish, child process) -> N in-process proxies -> one Subscriber each over unix sockets; {} CPUs",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("{messages} messages of {size} B payload per run, topic {TOPIC:?}, HWM {hwm} on every socket");
    for n in proxies {
        run(n, messages, size, hwm);
    }
}

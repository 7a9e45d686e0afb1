//! Relay tree benchmark: one publisher to N proxies, flat (the publisher connects to all N)
//! against the relay tree (the publisher connects to the ⌈√N⌉ relays `fanout::relay_tree`
//! picks; each relay connects to the leaves it assigns, as the controller would publish them).
//!
//! Real parts throughout: the real `fanout publish` (child process, so its CPU is its own) →
//! N in-process `fanout::proxy`s (relays started with `proxy::start_relay` and fed their
//! leaves) → one `fanout::subscriber::Subscriber` per proxy on its unix socket (envelope, loss
//! counted). Every queue is as deep as the run (lossless). Reported per N and mode: the
//! publisher's CPU per message (user + system of the child, libzmq's I/O thread included), the
//! deliveries per second on the receivers' clocks (first to last message seen by any
//! subscriber; on this 2-core machine every proxy and subscriber shares the two cores, so the
//! delivered rate is the whole process's, not the publisher's limit), and what was lost.
//! Median of the repetitions. Prints numbers; asserts nothing about speed.
//!
//! `cargo bench --bench relay_tree` (env: `FANOUT_BENCH_MESSAGES` (per run, default 10000),
//! `FANOUT_BENCH_PROXIES=16,64,256`, `FANOUT_BENCH_REPS=3`, `FANOUT_BENCH_SIZE=16`). One
//! `name: value unit` line per figure follows the table, for diffing reruns.

use fanout::endpoint_list::Endpoint;
use fanout::proxy::{self, Proxy, ProxyConfig, RelayMetrics};
use fanout::subscriber::{Subscriber, SubscriberConfig, TopicFilter};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Flat,
    Tree,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Flat => "flat",
            Mode::Tree => "tree",
        }
    }
}

/// One run's figures.
struct Run {
    publisher_us_per_message: f64,
    deliveries_per_sec: f64,
    delivered: u64,
    expected: u64,
    lost: u64,
    publisher_links: usize,
}

/// What one subscriber saw.
struct Seen {
    count: u64,
    lost: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

fn proxy_config(dir: &std::path::Path, i: usize, size: usize) -> ProxyConfig {
    ProxyConfig {
        publishers: vec!["tcp://127.0.0.1:0".into()],
        subscribers: vec![format!("ipc://{}/p{i}.sock", dir.display())],
        hwm: 0,
        max_message_bytes: i64::try_from(size + 1024).unwrap_or(i64::MAX),
        ..ProxyConfig::default()
    }
}

fn run(n: usize, mode: Mode, messages: u64, size: usize) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let names: Vec<String> = (0..n).map(|i| format!("node-{i:04}")).collect();
    let tree = fanout::relay_tree::plan_tree("bench-group-uid", names.iter().map(String::as_str));
    let index: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    let is_relay = |i: usize| mode == Mode::Tree && tree.relays.binary_search(&names[i]).is_ok();

    // Leaves and flat proxies first, so their publisher ports are known to the relays.
    let mut proxies: Vec<Option<Proxy>> = (0..n).map(|_| None).collect();
    for (i, slot) in proxies.iter_mut().enumerate() {
        if !is_relay(i) {
            *slot = Some(proxy::start(proxy_config(dir.path(), i, size)).expect("proxy starts"));
        }
    }
    let mut feeds = Vec::new();
    if mode == Mode::Tree {
        for (relay, leaves) in tree.by_relay() {
            let i = index[relay];
            let (feed, input) = proxy::leaf_feed(RelayMetrics::default()).expect("feed");
            proxies[i] =
                Some(proxy::start_relay(proxy_config(dir.path(), i, size), input).expect("relay starts"));
            let endpoints = leaves
                .iter()
                .map(|leaf| {
                    let proxy = proxies[index[leaf]].as_ref().expect("leaf started");
                    Endpoint::parse(&proxy.publisher_endpoints()[0]).expect("endpoint")
                })
                .collect();
            assert!(feed.deliver(endpoints));
            feeds.push(feed);
        }
    }
    let proxies: Vec<Proxy> = proxies
        .into_iter()
        .map(|p| p.expect("every proxy started"))
        .collect();
    let top: Vec<String> = (0..n)
        .filter(|i| mode == Mode::Flat || is_relay(*i))
        .map(|i| proxies[i].publisher_endpoints()[0].clone())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let hwm = i32::try_from(messages).unwrap_or(i32::MAX);
    let receivers: Vec<_> = proxies
        .iter()
        .map(|proxy| {
            let endpoint = proxy.subscriber_endpoints()[0].clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let config = SubscriberConfig {
                    hwm,
                    heartbeat: None,
                    curve: None,
                };
                let mut sub = Subscriber::connect(&endpoint, config).expect("subscriber connects");
                sub.subscribe(TopicFilter::exact(TOPIC)).expect("subscribe");
                let mut seen = Seen {
                    count: 0,
                    lost: 0,
                    first: None,
                    last: None,
                };

                while seen.count < messages && !stop.load(Ordering::Relaxed) {
                    if let Ok(Some(_)) = sub.recv(Duration::from_millis(100)) {
                        let now = Instant::now();
                        seen.first.get_or_insert(now);
                        seen.last = Some(now);
                        seen.count += 1;
                    }
                }
                seen.lost = sub.stats().total_lost();
                seen
            })
        })
        .collect();
    // Subscriptions travel up (through the relays in a tree) before the publisher starts;
    // `--settle` waits for its connections too.
    std::thread::sleep(Duration::from_millis(500 + 4 * n as u64));
    // The publisher reads one payload a line from stdin, which stays open until every
    // subscriber has everything: a publisher that exits while a relay is still reading its
    // TCP stream (a relay forwards to its leaves, so it reads more slowly than it is fed)
    // closes with a reset, and the relay loses what it had not read yet. Reading the lines
    // costs the publisher the same per message in both modes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["publish", "--log-level", "warn", "--endpoints", &top.join(",")])
        .args([
            "--topic",
            TOPIC,
            "--hwm",
            &hwm.to_string(),
            "--settle",
            "2",
            "--linger",
            "60",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fanout publish");
    let mut stdin = child.stdin.take().expect("the publisher's stdin");
    let line = format!("{}\n", "x".repeat(size));
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(&mut stdin);
        for _ in 0..messages {
            out.write_all(line.as_bytes()).expect("feed the publisher");
        }
        out.flush().expect("feed the publisher");
        drop(out);
        stdin
    });
    let stdin = writer.join().expect("stdin writer");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && !receivers.iter().all(|r| r.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let output = child.wait_with_output().expect("fanout publish");
    let summary = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success(),
        "fanout publish: {summary} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = receivers
        .into_iter()
        .map(|r| r.join().expect("receiver"))
        .collect();
    drop(feeds);
    for proxy in proxies {
        let _ = proxy.shutdown();
    }
    let short: Vec<u64> = seen.iter().map(|s| s.count).filter(|c| *c < messages).collect();
    if !short.is_empty() {
        eprintln!(
            "N = {n} {}: {} of {n} subscribers short of {messages}: {:?}",
            mode.name(),
            short.len(),
            &short[..short.len().min(20)]
        );
    }
    let delivered: u64 = seen.iter().map(|s| s.count).sum();
    let span = match (
        seen.iter().filter_map(|s| s.first).min(),
        seen.iter().filter_map(|s| s.last).max(),
    ) {
        (Some(first), Some(last)) => (last - first).as_secs_f64().max(1e-9),
        _ => f64::NAN,
    };
    let cpu: f64 = summary
        .split("cpu ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    Run {
        publisher_us_per_message: 1e6 * cpu / messages as f64,
        deliveries_per_sec: delivered as f64 / span,
        delivered,
        expected: messages * n as u64,
        lost: seen.iter().map(|s| s.lost).sum(),
        publisher_links: top.len(),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; no harness options are taken.
    let messages: u64 = env_or("FANOUT_BENCH_MESSAGES", 10_000);
    let reps: usize = env_or("FANOUT_BENCH_REPS", 3).max(1);
    let size: usize = env_or("FANOUT_BENCH_SIZE", 16);
    let sizes: Vec<usize> = std::env::var("FANOUT_BENCH_PROXIES")
        .unwrap_or_else(|_| "16,64,256".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "relay tree vs flat: 1 publisher (fanout publish), N proxies with 1 subscriber each, {messages} messages of {size} B, median of {reps}"
    );
    println!(
        "{:>5} {:>5} {:>6} {:>14} {:>12} {:>18} {:>6}",
        "N", "mode", "links", "pub µs/msg", "ratio", "deliveries/s", "lost"
    );
    let mut lines = Vec::new();
    for &n in &sizes {
        let mut flat_cpu = f64::NAN;
        for mode in [Mode::Flat, Mode::Tree] {
            let runs: Vec<Run> = (0..reps).map(|_| run(n, mode, messages, size)).collect();
            let cpu = median(runs.iter().map(|r| r.publisher_us_per_message).collect());
            let rate = median(runs.iter().map(|r| r.deliveries_per_sec).collect());
            let lost: u64 = runs
                .iter()
                .map(|r| r.lost + (r.expected - r.delivered.min(r.expected)))
                .sum();
            if mode == Mode::Flat {
                flat_cpu = cpu;
            }
            println!(
                "{n:>5} {:>5} {:>6} {cpu:>14.2} {:>12.2} {rate:>18.0} {lost:>6}",
                mode.name(),
                runs[0].publisher_links,
                cpu / flat_cpu
            );
            lines.push(format!(
                "relay_tree_{}_{n}_publisher_cpu: {cpu:.3} us/msg",
                mode.name()
            ));
            lines.push(format!(
                "relay_tree_{}_{n}_delivered: {rate:.0} deliveries/s",
                mode.name()
            ));
            lines.push(format!("relay_tree_{}_{n}_lost: {lost} messages", mode.name()));
        }
    }
    for line in lines {
        println!("{line}");
    }
}

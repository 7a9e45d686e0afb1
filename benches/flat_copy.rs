//! Where copying a payload into one frame with the topic stops paying (wire version 3 vs 2).
//!
//! One `fanout::Publisher` → one `fanout::proxy` (TCP on 127.0.0.1) → one `Subscriber` (unix
//! socket), all in this process, publishing owned payloads (`Publisher::publish`) of a fixed
//! size as fast as it can, twice per size: with `flat_max_payload` above the size (the payload
//! is copied into the topic's frame, one frame a message: version 3) and with it 0 (the payload
//! handed to libzmq without a copy as a frame of its own: version 2). Lossless queues; every run
//! checks that every message arrived. Prints deliveries per second on the subscriber's clock
//! and the CPU time of the whole process (publisher, proxy and subscriber) per message, median
//! of the repetitions, runs of the two layouts interleaved. Asserts nothing about speed.
//!
//! `cargo bench --bench flat_copy` (env: `FANOUT_BENCH_SIZES` (default
//! 1024,4096,16384,65536,262144), `FANOUT_BENCH_BYTES` (payload bytes per run, default 256 MiB,
//! at most 200 000 messages), `FANOUT_BENCH_REPS=3`).

#[path = "support/knobs.rs"]
mod knobs;

use fanout::membership::Membership;
use fanout::proxy::ProxyConfig;
use fanout::publisher::{Publisher, PublisherConfig};
use fanout::subscriber::{Subscriber, SubscriberConfig, TopicFilter};
use knobs::{env_list, env_or, median};
use std::time::{Duration, Instant};

const TOPIC: &str = "bench";

fn cpu() -> Duration {
    fanout::metrics::process::cpu_time().unwrap_or(Duration::ZERO)
}

/// One run: messages per second on the subscriber's clock and process CPU per message.
fn run(size: usize, messages: u64, flat_max_payload: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let proxy = fanout::proxy::start(ProxyConfig {
        publishers: vec!["tcp://127.0.0.1:0".into()],
        subscribers: vec![format!("ipc://{}/p.sock", dir.path().display())],
        hwm: 0,
        max_message_bytes: i64::try_from(size + 1024).unwrap_or(i64::MAX),
        ..ProxyConfig::default()
    })
    .expect("proxy starts");
    // Unbounded queues (0): lossless however far the publisher runs ahead, warm-up included.
    let hwm = 0;
    let mut sub = Subscriber::connect(
        &proxy.subscriber_endpoints()[0],
        SubscriberConfig {
            hwm,
            heartbeat: None,
            curve: None,
        },
    )
    .expect("subscriber");
    sub.subscribe(TopicFilter::exact(TOPIC)).expect("subscribe");
    let publisher = Publisher::new(PublisherConfig {
        hwm,
        linger: Duration::from_secs(60),
        flat_max_payload,
        ..PublisherConfig::default()
    })
    .expect("publisher");
    let membership: Membership = [proxy.publisher_endpoints()[0].parse().expect("endpoint")]
        .into_iter()
        .collect();
    publisher.set_membership(membership).expect("membership");
    // Until the subscription has reached the publisher.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        publisher
            .publish(TOPIC, vec![b"warm-up".to_vec()])
            .expect("publish");
        if sub.recv(Duration::from_millis(20)).expect("recv").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the subscriber never received");
    }
    while sub.recv(Duration::from_millis(200)).expect("recv").is_some() {}

    let receiver = std::thread::spawn(move || {
        let mut first = None;
        let mut got = 0u64;
        while got < messages {
            match sub.recv(Duration::from_secs(10)).expect("recv") {
                Some(d) => {
                    assert_eq!(d.payload[0].len(), size);
                    first.get_or_insert_with(Instant::now);
                    got += 1;
                }
                None => break,
            }
        }
        (got, first.map(|f| f.elapsed()))
    });
    let cpu_before = cpu();
    let payload = vec![0xAB; size];
    for _ in 0..messages {
        publisher.publish(TOPIC, vec![payload.clone()]).expect("publish");
    }
    let (got, span) = receiver.join().expect("receiver");
    let cpu_used = cpu().saturating_sub(cpu_before);
    publisher.close();
    let _ = proxy.shutdown();
    assert_eq!(got, messages, "lost messages");
    let span = span.unwrap_or_default().as_secs_f64().max(1e-9);
    (
        messages as f64 / span,
        1e6 * cpu_used.as_secs_f64() / messages as f64,
    )
}

fn main() {
    // `cargo test --benches` runs us too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let default_sizes = if quick {
        "1024"
    } else {
        "1024,4096,16384,65536,262144"
    };
    let sizes: Vec<usize> = env_list("FANOUT_BENCH_SIZES", default_sizes)
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let bytes: u64 = env_or("FANOUT_BENCH_BYTES", if quick { 1 << 20 } else { 256 << 20 });
    let reps: usize = env_or("FANOUT_BENCH_REPS", if quick { 1 } else { 3 });
    println!(
        "owned payloads, 1 publisher -> 1 proxy -> 1 subscriber in one process, median of {reps}; {} CPUs",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "| payload | messages | copied, one frame (v3): msg/s, µs CPU/msg | uncopied, two frames (v2): msg/s, µs CPU/msg | v3 / v2 msg/s | v3 / v2 CPU | load after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for size in sizes {
        let messages = (bytes / size.max(1) as u64).clamp(1_000, 200_000);
        let (mut flat, mut frames) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for rep in 0..reps {
            // Alternate which goes first.
            let order = if rep % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for copy in order {
                let (rate, cpu) = run(size, messages, if copy { usize::MAX } else { 0 });
                let into = if copy { &mut flat } else { &mut frames };
                into.0.push(rate);
                into.1.push(cpu);
            }
        }
        let (fr, fc) = (median(&mut flat.0), median(&mut flat.1));
        let (tr, tc) = (median(&mut frames.0), median(&mut frames.1));
        println!(
            "| {size} B | {messages} | {:.0} k, {fc:.2} | {:.0} k, {tc:.2} | {:.2}x | {:.2}x | {} |",
            fr / 1e3,
            tr / 1e3,
            fr / tr,
            fc / tc,
            knobs::load_average()
        );
    }
}

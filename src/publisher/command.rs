//! What `fanout publish` does with a [`Publisher`]: follow a membership source, wait for a
//! first proxy, publish `count` synthetic payloads (or one per line of stdin) at a rate, and
//! print a summary to stdout. With `http` it serves the publisher's metrics meanwhile.

use super::{Publisher, PublisherConfig, PublisherError};
use crate::membership::MembershipSource;
use std::io::BufRead;
#[cfg(feature = "http")]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What to publish and how (built from `fanout publish`'s flags).
pub struct PublishRun {
    pub source: Box<dyn MembershipSource>,
    pub topic: String,
    /// Synthetic messages to send; `None`: one per line of stdin.
    pub count: Option<u64>,
    /// Messages per second (0: as fast as possible).
    pub rate: u64,
    /// Bytes of each synthetic payload.
    pub size: usize,
    pub hwm: i32,
    /// `PublisherConfig::batch_max_bytes`.
    pub batch_max_bytes: usize,
    /// How long to wait for a first non-empty membership.
    pub wait_membership: Duration,
    /// How long to wait after connecting so that subscriptions reach us.
    pub settle: Duration,
    pub linger: Duration,
    /// CURVE: our key pair and the proxies' public key.
    pub curve: Option<crate::curve::CurveClient>,
    /// Serve `/healthz`, `/readyz` and `/metrics` here while publishing.
    #[cfg(feature = "http")]
    pub http: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Publisher(#[from] PublisherError),
    #[error("no proxy endpoints after {0:.1?}")]
    NoMembership(Duration),
    #[error("reading stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("the HTTP endpoint: {0}")]
    Http(#[source] std::io::Error),
}

/// Process CPU time (user + system) so far.
pub fn process_cpu_time() -> Duration {
    crate::metrics::process::cpu_time().unwrap_or(Duration::ZERO)
}

/// Sleeps until message `index` is due at `rate` msgs/s from `start`.
fn pace(start: Instant, index: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due = start + Duration::from_secs_f64(index as f64 / rate as f64);
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// A line without its `\n` or `\r\n` (what `BufRead::lines` yields).
fn without_line_end(line: &str) -> &str {
    match line.strip_suffix('\n') {
        Some(line) => line.strip_suffix('\r').unwrap_or(line),
        None => line,
    }
}

pub fn run(options: PublishRun) -> Result<(), PublishError> {
    let publisher = Publisher::new(PublisherConfig {
        hwm: options.hwm,
        batch_max_bytes: options.batch_max_bytes,
        linger: options.linger,
        curve: options.curve,
        ..PublisherConfig::default()
    })?;
    #[cfg(feature = "http")]
    let http = options
        .http
        .map(|addr| serve_metrics(addr, &publisher))
        .transpose()?;
    publisher.follow(options.source)?;

    let deadline = Instant::now() + options.wait_membership;
    while publisher.connected().is_empty() {
        if Instant::now() >= deadline {
            return Err(PublishError::NoMembership(options.wait_membership));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(options.settle);
    tracing::info!(proxies = publisher.connected().len(), "publishing");
    #[cfg(feature = "http")]
    if let Some(http) = &http {
        http.health.set_ready(true);
    }

    let topic = options.topic.as_bytes();
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let mut sent = 0u64;
    // Borrowed bytes from buffers reused for every message: this side allocates nothing per
    // message (libzmq, on the socket thread, allocates one buffer for a frame above 33 bytes).
    if let Some(count) = options.count {
        let payload = vec![b'x'; options.size];
        for i in 0..count {
            pace(start, i, options.rate);
            publisher.publish_bytes(topic, &payload)?;
            sent += 1;
        }
    } else {
        let mut stdin = std::io::stdin().lock();
        let mut line = String::new();
        loop {
            line.clear();
            if stdin.read_line(&mut line).map_err(PublishError::Stdin)? == 0 {
                break;
            }
            pace(start, sent, options.rate);
            publisher.publish_bytes(topic, without_line_end(&line).as_bytes())?;
            sent += 1;
        }
    }
    let proxies = publisher.connected().len();
    publisher.close();
    let wall = start.elapsed();
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    let secs = wall.as_secs_f64().max(1e-9);
    println!(
        "published {sent} messages to {proxies} proxies in {:.3} s ({:.0} msg/s); cpu {:.3} s ({:.0}% of wall)",
        secs,
        sent as f64 / secs,
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / secs
    );
    #[cfg(feature = "http")]
    if let Some(http) = http {
        http.stop();
    }
    Ok(())
}

#[cfg(feature = "http")]
fn serve_metrics(addr: SocketAddr, publisher: &Publisher) -> Result<crate::http::Background, PublishError> {
    let mut registry = crate::metrics::registry();
    publisher.metrics().register(&mut registry);
    let served = crate::http::Background::start(addr, registry).map_err(PublishError::Http)?;
    tracing::info!(local = %served.addr, "serving /healthz, /readyz, /metrics");
    Ok(served)
}

#[cfg(test)]
mod tests {
    #[test]
    fn line_ends_are_removed_as_lines_does() {
        for (line, expected) in [
            ("a\n", "a"),
            ("a\r\n", "a"),
            ("a", "a"),
            ("\n", ""),
            ("a\r", "a\r"),
            ("a\n\n", "a\n"),
        ] {
            assert_eq!(super::without_line_end(line), expected, "{line:?}");
        }
    }
}

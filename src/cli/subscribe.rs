//! `fanout subscribe`: the `Subscriber` library type on the command line.
//!
//! One line per message on stdout: the topic, a tab, then each payload frame (tab separated)
//! as text when it is printable UTF-8, else as `0x` + hex. A summary with counts and gaps goes
//! to stderr at the end (after `--count` messages, `--timeout` seconds without a message, or
//! Ctrl-C / SIGTERM). With `--stats-every`, a node agent's log also tells, while it runs, what
//! arrived and what was lost: a `stats {json}` line at that interval and a `gap {json}` line
//! as soon as a sequence gap shows a loss.

use crate::subscriber::{Subscriber, SubscriberConfig, SubscriberStats, TopicFilter};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct SubscribeArgs {
    /// Proxy subscriber endpoint (`ipc:///var/run/fanout/ns.name.sock` or `tcp://IP:PORT`).
    #[arg(long)]
    pub connect: String,
    /// Exact topic (repeatable). `foo` never delivers `foobar`.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Topic prefix (repeatable). With no --topic and no --prefix, everything is received.
    #[arg(long = "prefix")]
    pub prefixes: Vec<String>,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds without a message.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Receive high-water mark (messages).
    #[arg(long, default_value_t = 100_000)]
    pub hwm: i32,
    /// Print nothing per message, only the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Every this many seconds, print a `stats {json}` line to stderr (received, gaps, lost,
    /// publishers, wall-clock `at_ms`); also a `gap {json}` line whenever messages were lost.
    #[arg(long)]
    pub stats_every: Option<f64>,
}

/// A `stats` or `gap` report line: the counters as one JSON object, stamped with the wall clock
/// (milliseconds since the Unix epoch) so that a reader can line it up with its own events.
pub fn render_report(kind: &str, stats: &SubscriberStats, lost_now: u64) -> String {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let body = serde_json::json!({
        "at_ms": at_ms,
        "received": stats.received,
        "gaps": stats.total_gaps(),
        "lost": stats.total_lost(),
        "lost_now": lost_now,
        "publishers": stats.per_publisher.len(),
    });
    format!("{kind} {body}")
}

/// A frame as printable text, or `0x` + hex when it is not printable UTF-8.
pub fn render_frame(frame: &[u8]) -> String {
    match std::str::from_utf8(frame) {
        Ok(text) if !text.chars().any(|c| c.is_control()) => text.to_string(),
        _ => {
            let mut out = String::with_capacity(2 + frame.len() * 2);
            out.push_str("0x");
            for b in frame {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

/// The summary printed at the end.
pub fn render_summary(stats: &SubscriberStats, elapsed: Duration) -> String {
    let mut out = format!(
        "received {} messages in {:.3} s; gaps {}, lost {}; filtered {}, plain {}, malformed {}; publishers {}",
        stats.received,
        elapsed.as_secs_f64(),
        stats.total_gaps(),
        stats.total_lost(),
        stats.filtered,
        stats.plain,
        stats.malformed,
        stats.per_publisher.len()
    );
    for (id, c) in &stats.per_publisher {
        out.push_str(&format!(
            "\n  publisher {id}: received {}, gaps {}, lost {}, out of order {}",
            c.received, c.gaps, c.lost, c.out_of_order
        ));
    }
    out
}

/// Sets the returned flag on SIGINT or SIGTERM (a small runtime on a side thread).
fn stop_on_signal() -> crate::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("fanout-signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                crate::shutdown::signal().await;
                flag.store(true, Ordering::Release);
            });
        })?;
    Ok(stop)
}

pub fn run(args: SubscribeArgs) -> crate::Result<()> {
    let idle_limit = match args.timeout {
        Some(t) => Some(
            Duration::try_from_secs_f64(t)
                .map_err(|e| crate::Error::InvalidArgument(format!("--timeout {t}: {e}")))?,
        ),
        None => None,
    };
    let mut subscriber = Subscriber::connect(
        &args.connect,
        SubscriberConfig {
            hwm: args.hwm,
            ..SubscriberConfig::default()
        },
    )?;
    for topic in &args.topics {
        subscriber.subscribe(TopicFilter::exact(topic.as_str()))?;
    }
    for prefix in &args.prefixes {
        subscriber.subscribe(TopicFilter::prefix(prefix.as_str()))?;
    }
    if args.topics.is_empty() && args.prefixes.is_empty() {
        subscriber.subscribe(TopicFilter::prefix(""))?;
    }
    let report_every = args
        .stats_every
        .map(|t| {
            Duration::try_from_secs_f64(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| crate::Error::InvalidArgument(format!("--stats-every {t}: a positive number of seconds")))
        })
        .transpose()?;
    let mut last_report = Instant::now();
    let mut reported_lost = 0;
    let stop = stop_on_signal()?;
    let start = Instant::now();
    let mut last_message = Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        if stop.load(Ordering::Acquire) {
            break;
        }
        if args.count.is_some_and(|n| subscriber.stats().received >= n) {
            break;
        }
        if idle_limit.is_some_and(|limit| last_message.elapsed() >= limit) {
            break;
        }
        match subscriber.recv(Duration::from_millis(100))? {
            Some(delivery) => {
                last_message = Instant::now();
                if !args.quiet {
                    let mut line = render_frame(&delivery.topic);
                    for frame in &delivery.payload {
                        line.push('\t');
                        line.push_str(&render_frame(frame));
                    }
                    line.push('\n');
                    out.write_all(line.as_bytes())?;
                }
            }
            None => out.flush()?,
        }
        if let Some(every) = report_every {
            let lost = subscriber.stats().total_lost();
            if lost > reported_lost {
                eprintln!("{}", render_report("gap", subscriber.stats(), lost - reported_lost));
                reported_lost = lost;
            }
            if last_report.elapsed() >= every {
                eprintln!("{}", render_report("stats", subscriber.stats(), 0));
                last_report = Instant::now();
            }
        }
    }
    out.flush()?;
    eprintln!("{}", render_summary(subscriber.stats(), start.elapsed()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_render_as_text_or_hex() {
        assert_eq!(render_frame(b"hello world"), "hello world");
        assert_eq!(render_frame(b""), "");
        assert_eq!(render_frame(&[0xff, 0x00]), "0xff00");
        assert_eq!(render_frame(b"a\nb"), "0x610a62");
    }

    #[test]
    fn reports_are_one_json_object_after_a_word() {
        let stats = SubscriberStats {
            received: 7,
            ..Default::default()
        };
        let line = render_report("gap", &stats, 3);
        let (kind, json) = line.split_once(' ').unwrap();
        assert_eq!(kind, "gap");
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(value["received"], 7);
        assert_eq!(value["lost_now"], 3);
        assert!(value["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }

    #[test]
    fn summary_lists_each_publisher() {
        let mut stats = SubscriberStats {
            received: 3,
            ..Default::default()
        };
        stats.per_publisher.insert(
            crate::wire::PublisherId([0; 16]),
            crate::subscriber::PublisherCounts {
                received: 3,
                gaps: 1,
                lost: 2,
                out_of_order: 0,
            },
        );
        let text = render_summary(&stats, Duration::from_secs(1));
        assert!(text.starts_with("received 3 messages"));
        assert!(text.contains("gaps 1, lost 2"));
        assert!(text.contains(&format!("publisher {}", "0".repeat(32))));
    }
}

//! What `fanout subscribe` does with a [`Subscriber`]: one line per message on stdout (the
//! topic, a tab, then each payload frame, tab separated, as text when it is printable UTF-8,
//! else as `0x` + hex), and a summary with counts and gaps on stderr at the end (after `count`
//! messages, `timeout` without a message, or SIGINT / SIGTERM). With `stats_every`, a node
//! agent's log also tells, while it runs, what arrived and what was lost: a `stats {json}` line
//! at that interval and a `gap {json}` line as soon as a sequence gap shows a loss.

use super::{Subscriber, SubscriberConfig, SubscriberError, SubscriberStats, TopicFilter};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What to subscribe to and when to stop (built from `fanout subscribe`'s flags).
#[derive(Debug, Clone)]
pub struct SubscribeRun {
    /// The proxy's subscriber endpoint.
    pub connect: String,
    /// Exact topics and prefixes; with none, everything is received.
    pub filters: Vec<TopicFilter>,
    pub count: Option<u64>,
    /// Stop after this long without a message.
    pub timeout: Option<Duration>,
    pub hwm: i32,
    /// Print only the summary.
    pub quiet: bool,
    /// Print a `stats` report this often (and a `gap` report on every loss).
    pub stats_every: Option<Duration>,
    /// CURVE: our key pair and the proxy's public key.
    pub curve: Option<crate::curve::CurveClient>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Subscriber(#[from] SubscriberError),
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
    #[error("cannot listen for signals: {0}")]
    Signals(#[source] std::io::Error),
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
    if stats.evicted_publishers > 0 {
        out.push_str(&format!(
            " (and {} evicted to bound memory: received {}, gaps {}, lost {}, out of order {})",
            stats.evicted_publishers,
            stats.evicted.received,
            stats.evicted.gaps,
            stats.evicted.lost,
            stats.evicted.out_of_order
        ));
    }
    for (id, c) in &stats.per_publisher {
        out.push_str(&format!(
            "\n  publisher {id}: received {}, gaps {}, lost {}, out of order {}",
            c.received, c.gaps, c.lost, c.out_of_order
        ));
    }
    out
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
        "publishers_evicted": stats.evicted_publishers,
    });
    format!("{kind} {body}")
}

pub fn run(options: SubscribeRun) -> Result<(), SubscribeError> {
    let mut subscriber = Subscriber::connect(
        &options.connect,
        SubscriberConfig {
            hwm: options.hwm,
            curve: options.curve.clone(),
            ..SubscriberConfig::default()
        },
    )?;
    for filter in &options.filters {
        subscriber.subscribe(filter.clone())?;
    }
    if options.filters.is_empty() {
        subscriber.subscribe(TopicFilter::prefix(""))?;
    }
    let stop = crate::runtime::stop_flag().map_err(SubscribeError::Signals)?;
    let mut last_report = Instant::now();
    let mut reported_lost = 0;
    let start = Instant::now();
    let mut last_message = Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        if stop.load(Ordering::Acquire) {
            break;
        }
        if options.count.is_some_and(|n| subscriber.stats().received >= n) {
            break;
        }
        if options
            .timeout
            .is_some_and(|limit| last_message.elapsed() >= limit)
        {
            break;
        }
        // The message is lent and dropped: when quiet nothing is allocated for it (written out,
        // its rendering allocates the line).
        let quiet = options.quiet;
        let written = subscriber.recv_with(Duration::from_millis(100), |delivery| {
            if quiet {
                return Ok(());
            }
            let mut line = render_frame(delivery.topic);
            for frame in delivery.payload {
                line.push('\t');
                line.push_str(&render_frame(frame));
            }
            line.push('\n');
            out.write_all(line.as_bytes())
        })?;
        match written {
            Some(written) => {
                written.map_err(SubscribeError::Output)?;
                if options.timeout.is_some() {
                    last_message = Instant::now();
                }
            }
            None => out.flush().map_err(SubscribeError::Output)?,
        }
        if let Some(every) = options.stats_every {
            let lost = subscriber.stats().total_lost();
            if lost > reported_lost {
                eprintln!(
                    "{}",
                    render_report("gap", subscriber.stats(), lost - reported_lost)
                );
                reported_lost = lost;
            }
            if last_report.elapsed() >= every {
                eprintln!("{}", render_report("stats", subscriber.stats(), 0));
                last_report = Instant::now();
            }
        }
    }
    out.flush().map_err(SubscribeError::Output)?;
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

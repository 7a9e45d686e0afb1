//! `fanout publish`: the `Publisher` library type on the command line.
//!
//! Membership comes from `--endpoints`, `--endpoints-file` (followed live) or `--group`
//! (the Kubernetes source). Messages are either `--count` synthetic payloads of `--size` bytes
//! or one payload per line of stdin. A summary goes to stdout at the end.

use crate::membership::{MembershipSource, StaticSource, file::FileSource, kubernetes};
use crate::publisher::{Publisher, PublisherConfig};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// Proxy endpoints, comma separated (`tcp://IP:PORT,...`).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["endpoints_file", "group"], required_unless_present_any = ["endpoints_file", "group"])]
    pub endpoints: Vec<String>,
    /// File of `tcp://IP:PORT` lines (e.g. the group's ConfigMap mounted as a volume), followed live.
    #[arg(long, conflicts_with = "group")]
    pub endpoints_file: Option<PathBuf>,
    /// FanoutGroup to follow through the Kubernetes API.
    #[arg(long)]
    pub group: Option<String>,
    /// Namespace of `--group` (default: the client's namespace).
    #[arg(long, short = 'n', requires = "group")]
    pub namespace: Option<String>,
    /// Topic (frame 0) of every message.
    #[arg(long, default_value = "fanout")]
    pub topic: String,
    /// Send this many synthetic messages instead of reading stdin.
    #[arg(long)]
    pub count: Option<u64>,
    /// Messages per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Size in bytes of each synthetic payload.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Send high-water mark per proxy (messages).
    #[arg(long, default_value_t = 100_000)]
    pub hwm: i32,
    /// Seconds to wait for a first non-empty membership before publishing.
    #[arg(long, default_value_t = 10.0)]
    pub wait_membership: f64,
    /// Seconds to wait after connecting so that subscriptions reach us (a PUB drops messages
    /// no subscriber asked for yet).
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Seconds `close` may spend flushing unsent messages.
    #[arg(long, default_value_t = 5.0)]
    pub linger: f64,
}

fn seconds(name: &str, value: f64) -> crate::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|e| crate::Error::InvalidArgument(format!("--{name} {value}: {e}")))
}

fn source(args: &PublishArgs) -> crate::Result<Box<dyn MembershipSource>> {
    if let Some(path) = &args.endpoints_file {
        Ok(Box::new(FileSource::new(path.clone())))
    } else if let Some(group) = &args.group {
        Ok(kubernetes::source_for_group(
            args.namespace.clone(),
            group.clone(),
        )?)
    } else {
        Ok(Box::new(StaticSource::new(
            args.endpoints.iter().map(|e| e.trim().to_string()),
        )?))
    }
}

/// Process CPU time (user + system) so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass; a zeroed rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
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

pub fn run(args: PublishArgs) -> crate::Result<()> {
    let wait_membership = seconds("wait-membership", args.wait_membership)?;
    let settle = seconds("settle", args.settle)?;
    let linger = seconds("linger", args.linger)?;
    let publisher = Publisher::new(PublisherConfig {
        hwm: args.hwm,
        linger,
        ..PublisherConfig::default()
    })?;
    publisher.follow(source(&args)?)?;

    let deadline = Instant::now() + wait_membership;
    while publisher.connected().is_empty() {
        if Instant::now() >= deadline {
            return Err(crate::Error::Other(format!(
                "no proxy endpoints after {:.1} s",
                wait_membership.as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(settle);
    tracing::info!(proxies = publisher.connected().len(), "publishing");

    let topic = args.topic.as_bytes().to_vec();
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let mut sent = 0u64;
    if let Some(count) = args.count {
        let payload = vec![b'x'; args.size];
        for i in 0..count {
            pace(start, i, args.rate);
            publisher.publish(topic.clone(), vec![payload.clone()])?;
            sent += 1;
        }
    } else {
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            pace(start, sent, args.rate);
            publisher.publish(topic.clone(), vec![line.into_bytes()])?;
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
    Ok(())
}

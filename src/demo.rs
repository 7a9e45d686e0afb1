//! `fanout demo`: the whole fabric on one machine, no cluster.
//!
//! Several proxies run in this process (publisher side on 127.0.0.1 ephemeral TCP ports,
//! subscriber side on unix sockets in a temporary directory), one `Subscriber` per proxy, and
//! one `Publisher` following a membership *file* through `FileSource`, exactly as a publisher
//! follows a mounted ConfigMap. The demo rewrites the file (atomically, like the kubelet) to
//! add a node a third of the way through and remove one two thirds of the way through, then
//! prints per-node counts, gaps, the join latency (file write → first message delivered on the
//! new node) and the leave latency (file write → publisher disconnected). It fails (non-zero
//! exit) if the new node never receives, a node present throughout receives nothing or loses
//! messages, or the leave is not applied.

use crate::membership::file::FileSource;
use crate::publisher::{Publisher, PublisherConfig};
use crate::subscriber::{Subscriber, SubscriberConfig, SubscriberStats, TopicFilter};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The demo's shape (built from `fanout demo`'s flags).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Proxies (nodes) at the start; at least 2.
    pub nodes: usize,
    /// Messages per second from the publisher.
    pub rate: u64,
    /// Length of the run; at least 1 s.
    pub duration: Duration,
    /// Payload size in bytes.
    pub size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("--nodes must be at least 2")]
    TooFewNodes,
    #[error("--seconds must be at least 1")]
    TooShort,
    #[error("--size must be at most {MAX_PAYLOAD} bytes (the proxies' default message limit)")]
    TooBig,
    #[error("proxy {node}: {source}")]
    Proxy {
        node: String,
        #[source]
        source: crate::proxy::ProxyError,
    },
    #[error("proxy {0} bound no endpoints")]
    NoEndpoints(String),
    #[error(transparent)]
    Publisher(#[from] crate::publisher::PublisherError),
    #[error(transparent)]
    Subscriber(#[from] crate::subscriber::SubscriberError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the {0} thread panicked")]
    Panicked(String),
    #[error("the publisher did not pick up the membership file")]
    NotFollowed,
    #[error("demo failed: {0}")]
    Failed(String),
}

type Result<T, E = DemoError> = std::result::Result<T, E>;

const TOPIC: &str = "demo.updates";
/// Queue bound per peer: large enough that the demo's rate never drops.
const HWM: i32 = 100_000;
/// The proxies' HWM: as deep as the per-peer byte bound allows at the default message limit.
const PROXY_HWM: i32 =
    (crate::proxy::MAX_QUEUED_BYTES_PER_PEER / crate::proxy::DEFAULT_MAX_MESSAGE_BYTES) as i32;
/// The largest payload the demo sends: the envelope and topic must fit with it under the
/// proxies' default message limit.
const MAX_PAYLOAD: usize = crate::proxy::DEFAULT_MAX_MESSAGE_BYTES as usize - 1024;

/// One node: its proxy (started in-process) and the endpoints it bound.
struct NodeProxy {
    publisher_endpoint: String,
    subscriber_endpoint: String,
    proxy: crate::proxy::Proxy,
}

fn start_proxy(dir: &Path, name: &str) -> Result<NodeProxy> {
    let config = crate::proxy::ProxyConfig {
        publishers: vec!["tcp://127.0.0.1:0".to_string()],
        subscribers: vec![format!("ipc://{}/{name}.sock", dir.display())],
        // The proxy's queues are bounded in bytes too (hwm x max message bytes), so its HWM is
        // the most the default message limit allows, not the demo's lossless 100 000.
        hwm: PROXY_HWM,
        ..crate::proxy::ProxyConfig::default()
    };
    let proxy = crate::proxy::start(config).map_err(|source| DemoError::Proxy {
        node: name.to_string(),
        source,
    })?;
    let first = |eps: &[String]| eps.first().cloned();
    let (Some(publisher_endpoint), Some(subscriber_endpoint)) = (
        first(proxy.publisher_endpoints()),
        first(proxy.subscriber_endpoints()),
    ) else {
        return Err(DemoError::NoEndpoints(name.to_string()));
    };
    Ok(NodeProxy {
        publisher_endpoint,
        subscriber_endpoint,
        proxy,
    })
}

/// What one node's subscriber thread saw.
#[derive(Debug, Default)]
struct NodeObservation {
    first_delivery: Option<Instant>,
    stats: SubscriberStats,
}

struct Node {
    name: String,
    proxy: Option<NodeProxy>,
    publisher_endpoint: String,
    received: Arc<AtomicU64>,
    observation: Arc<Mutex<NodeObservation>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
    joined_at: Option<Instant>,
    removed: bool,
}

impl Node {
    fn start(dir: &Path, name: String) -> Result<Self> {
        let proxy = start_proxy(dir, &name)?;
        let mut subscriber = Subscriber::connect(
            &proxy.subscriber_endpoint,
            SubscriberConfig {
                hwm: HWM,
                ..SubscriberConfig::default()
            },
        )?;
        subscriber.subscribe(TopicFilter::exact(TOPIC))?;
        let received = Arc::new(AtomicU64::new(0));
        let observation = Arc::new(Mutex::new(NodeObservation::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, observation, stop) = (received.clone(), observation.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("demo-{name}"))
                .spawn(move || -> Result<()> {
                    while !stop.load(Ordering::Acquire) {
                        if subscriber.recv_with(Duration::from_millis(50), |_| ())?.is_some() {
                            let n = received.fetch_add(1, Ordering::Relaxed);
                            if n == 0 {
                                lock(&observation).first_delivery = Some(Instant::now());
                            }
                        }
                    }
                    lock(&observation).stats = subscriber.stats().clone();
                    Ok(())
                })?
        };
        Ok(Self {
            name,
            publisher_endpoint: proxy.publisher_endpoint.clone(),
            proxy: Some(proxy),
            received,
            observation,
            stop,
            thread: Some(thread),
            joined_at: None,
            removed: false,
        })
    }

    /// Stops the subscriber thread, then the proxy.
    fn stop(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(result) => result?,
                Err(_) => return Err(DemoError::Panicked(format!("{} subscriber", self.name))),
            }
        }
        if let Some(node_proxy) = self.proxy.take() {
            node_proxy.proxy.shutdown().map_err(|source| DemoError::Proxy {
                node: self.name.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes the membership file the way the kubelet updates a ConfigMap volume: a new file
/// renamed over the old one, so a reader never sees a half-written list.
fn write_membership(path: &Path, nodes: &[Node]) -> Result<()> {
    let mut text = String::from("# fanout demo membership\n");
    for node in nodes.iter().filter(|n| !n.removed) {
        text.push_str(&node.publisher_endpoint);
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

pub fn run(args: DemoOptions) -> Result<()> {
    if args.nodes < 2 {
        return Err(DemoError::TooFewNodes);
    }
    let total = args.duration;
    if total < Duration::from_secs(1) {
        return Err(DemoError::TooShort);
    }
    if args.size > MAX_PAYLOAD {
        return Err(DemoError::TooBig);
    }
    let dir = tempfile::Builder::new().prefix("fanout-demo-").tempdir()?;
    let membership_file = dir.path().join("endpoints");
    println!(
        "fanout demo: {} nodes, {} msg/s of {} B on topic {TOPIC:?} for {:.1} s; sockets in {}",
        args.nodes,
        args.rate,
        args.size,
        total.as_secs_f64(),
        dir.path().display()
    );

    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        nodes.push(Node::start(dir.path(), format!("node-{i}"))?);
    }
    write_membership(&membership_file, &nodes)?;
    let publisher = Arc::new(Publisher::new(PublisherConfig {
        hwm: HWM,
        ..PublisherConfig::default()
    })?);
    publisher.follow(Box::new(
        FileSource::new(&membership_file).with_recheck_interval(Duration::from_secs(2)),
    ))?;
    if wait_until(Duration::from_secs(5), || {
        publisher.connected().len() == args.nodes
    })
    .is_none()
    {
        return Err(DemoError::NotFollowed);
    }
    // Let subscriptions travel upstream before counting (a PUB drops what nobody asked for).
    std::thread::sleep(Duration::from_millis(300));

    let start = Instant::now();
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (publisher, stop) = (publisher.clone(), stop_publishing.clone());
        let (rate, size) = (args.rate.max(1), args.size);
        std::thread::Builder::new()
            .name("demo-publisher".into())
            .spawn(move || -> Result<u64> {
                let mut sent = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep((due - now).min(Duration::from_millis(10)));
                        continue;
                    }
                    let mut payload = format!("update {sent} ").into_bytes();
                    payload.resize(size.max(payload.len()), b'.');
                    publisher.publish(TOPIC, vec![payload])?;
                    sent += 1;
                }
                Ok(sent)
            })?
    };

    let mut failures = Vec::new();

    // A node joins a third of the way in.
    std::thread::sleep(total / 3);
    let joiner_index = nodes.len();
    let mut joiner = Node::start(dir.path(), format!("node-{joiner_index}"))?;
    // Give the new subscriber a moment to reach its proxy, as a node agent would.
    std::thread::sleep(Duration::from_millis(100));
    joiner.joined_at = Some(Instant::now());
    nodes.push(joiner);
    write_membership(&membership_file, &nodes)?;
    println!(
        "t={:>5.2}s  node-{joiner_index} joins (appended to the membership file)",
        start.elapsed().as_secs_f64()
    );

    // A node leaves two thirds of the way in.
    std::thread::sleep((total * 2 / 3).saturating_sub(start.elapsed()));
    let leaver = 0;
    nodes[leaver].removed = true;
    let left_at = Instant::now();
    write_membership(&membership_file, &nodes)?;
    let leaving_endpoint = nodes[leaver].publisher_endpoint.clone();
    println!(
        "t={:>5.2}s  node-{leaver} leaves (removed from the membership file)",
        start.elapsed().as_secs_f64()
    );
    let leave_latency = wait_until(Duration::from_secs(5), || {
        !publisher.connected().contains(&leaving_endpoint)
    })
    .map(|_| left_at.elapsed());
    // What still reaches the departed node after the disconnect is in-flight traffic only.
    let at_leave = nodes[leaver].received.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    let after_leave = nodes[leaver].received.load(Ordering::Relaxed) - at_leave;
    nodes[leaver].stop()?;
    match leave_latency {
        Some(d) => println!(
            "t={:>5.2}s  publisher disconnected from node-{leaver} {:.1} ms after the file write; node-{leaver} proxy shut down",
            start.elapsed().as_secs_f64(),
            d.as_secs_f64() * 1e3
        ),
        None => failures.push(format!(
            "the publisher was still connected to node-{leaver} 5 s after it left"
        )),
    }

    std::thread::sleep(total.saturating_sub(start.elapsed()));
    stop_publishing.store(true, Ordering::Release);
    let sent = match publishing.join() {
        Ok(result) => result?,
        Err(_) => return Err(DemoError::Panicked("publisher".into())),
    };
    // Let the last messages arrive before stopping the subscribers.
    let expected_tail = publisher.stats().sent;
    std::thread::sleep(Duration::from_millis(300));
    for node in nodes.iter_mut().filter(|n| !n.removed) {
        node.stop()?;
    }
    let publisher_stats = publisher.stats();
    publisher.close();

    println!();
    println!(
        "published {sent} messages ({} sent by the socket) in {:.2} s",
        expected_tail,
        start.elapsed().as_secs_f64()
    );
    println!(
        "{:<8} {:>10} {:>6} {:>6}  notes",
        "node", "received", "gaps", "lost"
    );
    for (i, node) in nodes.iter().enumerate() {
        let obs = lock(&node.observation);
        let received = node.received.load(Ordering::Relaxed);
        let mut notes = Vec::new();
        if let Some(joined) = node.joined_at {
            match obs.first_delivery {
                Some(first) => notes.push(format!(
                    "joined; first message {:.1} ms after the file write",
                    first.saturating_duration_since(joined).as_secs_f64() * 1e3
                )),
                None => {
                    notes.push("joined; NEVER received".into());
                    failures.push(format!("{} joined but never received a message", node.name));
                }
            }
        } else if i == leaver {
            notes.push(format!(
                "left; {after_leave} in-flight messages after the disconnect"
            ));
        } else if received == 0 {
            failures.push(format!("{} received nothing", node.name));
        }
        if obs.stats.total_lost() > 0 && i != leaver {
            failures.push(format!("{} lost {} messages", node.name, obs.stats.total_lost()));
        }
        println!(
            "{:<8} {:>10} {:>6} {:>6}  {}",
            node.name,
            received,
            obs.stats.total_gaps(),
            obs.stats.total_lost(),
            notes.join("; ")
        );
    }
    println!(
        "publisher: {} membership updates applied",
        publisher_stats.membership_updates
    );
    if failures.is_empty() {
        println!("demo OK");
        Ok(())
    } else {
        for f in &failures {
            println!("FAILED: {f}");
        }
        Err(DemoError::Failed(failures.join("; ")))
    }
}

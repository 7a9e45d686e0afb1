//! The scale benchmark's probe (issue 12 §1), run by `hack/scale.sh N` inside its own test
//! cluster's network namespace, with the chart installed. It creates N kwok nodes in bulk,
//! starts the real `fanout controller` (authenticated as the chart's ServiceAccount) and a
//! follower (`fanout endpoints --group`, a `GroupSource` in a process of its own), creates a
//! flat FanoutGroup (relays disabled), and measures:
//!
//! - how long until the group is fully listed (every pod Ready, every endpoint in the
//!   slices, every member at the follower);
//! - single joins and leaves, one at a time with a pause between them, each split into its
//!   parts (node created → pod Ready → endpoint in a slice → follower's membership updated;
//!   node deleted → pod gone → endpoint out of the slices → follower updated). Every time is
//!   when a watch (the probe's own, or the follower's print) saw the change, on this machine's
//!   one clock: the API's own timestamps have whole-second resolution;
//! - API writes (and request bytes) per change by kind, from the controller's
//!   `fanout_controller_api_writes_total` / `..._api_write_bytes_total` and, from outside,
//!   the API server's `apiserver_request_total`;
//! - the controller's RSS and CPU time and the follower's RSS (from /proc).
//!
//! Output: one `name: value unit` line per figure (so reruns diff), then a table. With
//! `--check` it also fails when a figure is outside generous bounds (for hack/test.sh; the
//! figures themselves are the benchmark's, not a test's).

use clap::Parser;
use fanout::crd::{FanoutGroup, FanoutGroupSpec, RelaySpec};
use fanout::endpoint_list;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser, Debug)]
#[command(about = "The scale benchmark's probe (run it through hack/scale.sh)")]
struct Args {
    /// Nodes (kwok) the group spans.
    #[arg(long)]
    nodes: usize,
    /// Single joins measured, and as many single leaves.
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Pause after each single change was seen by the follower, so each is a lone change.
    #[arg(long, default_value_t = 1500)]
    gap_ms: u64,
    /// The `fanout` binary run as the controller and as the follower.
    #[arg(long)]
    fanout: PathBuf,
    /// Kubeconfig of the chart's ServiceAccount, for the controller.
    #[arg(long)]
    controller_kubeconfig: PathBuf,
    #[arg(long, default_value = "scale")]
    namespace: String,
    #[arg(long, default_value = "g")]
    group: String,
    #[arg(long, default_value = "fanout-system")]
    lease_namespace: String,
    /// The controller's /metrics address (inside the namespace).
    #[arg(long, default_value = "127.0.0.1:9464")]
    http: String,
    /// Where the controller's and the follower's logs go.
    #[arg(long, default_value = "/tmp")]
    log_dir: PathBuf,
    /// Fail when a figure is outside generous bounds (hack/test.sh).
    #[arg(long)]
    check: bool,
}

/// What the probe's watches and the follower saw, each with when.
#[derive(Default)]
struct Seen {
    /// Pod name → what is known of it.
    pods: HashMap<String, PodSeen>,
    /// Node name → its pod.
    pod_on_node: HashMap<String, String>,
    /// Pods with a published (ready) endpoint in the slices, and in how many slices.
    listed: HashMap<String, usize>,
    /// Slice name → its published pods.
    slices: HashMap<String, BTreeSet<String>>,
    /// Pod → when its endpoint entered / left the slices.
    listed_at: HashMap<String, Instant>,
    unlisted_at: HashMap<String, Instant>,
    ready_pods: usize,
    /// Endpoint address (IP) → when the follower printed it joined / left.
    follower_joined: HashMap<String, Instant>,
    follower_left: HashMap<String, Instant>,
    follower_members: usize,
    /// When each count was first reached (the initial listing).
    all_ready_at: Option<Instant>,
    all_listed_at: Option<Instant>,
    all_followed_at: Option<Instant>,
    target: usize,
}

#[derive(Default, Clone)]
struct PodSeen {
    ip: Option<String>,
    ready_at: Option<Instant>,
    gone_at: Option<Instant>,
}

impl Seen {
    fn check_targets(&mut self, now: Instant) {
        if self.target == 0 {
            return;
        }
        if self.all_ready_at.is_none() && self.ready_pods >= self.target {
            self.all_ready_at = Some(now);
        }
        if self.all_listed_at.is_none() && self.listed.len() >= self.target {
            self.all_listed_at = Some(now);
        }
        if self.all_followed_at.is_none() && self.follower_members >= self.target {
            self.all_followed_at = Some(now);
        }
    }

    fn pod(&mut self, pod: &Pod, now: Instant) {
        let name = pod.name_any();
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            self.pod_on_node.insert(node, name.clone());
        }
        let entry = self.pods.entry(name).or_default();
        entry.ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .or(entry.ip.take());
        if pod.metadata.deletion_timestamp.is_some() {
            entry.gone_at.get_or_insert(now);
        }
        if ready && entry.ready_at.is_none() && entry.gone_at.is_none() {
            entry.ready_at = Some(now);
            self.ready_pods += 1;
        }
    }

    fn pod_deleted(&mut self, pod: &Pod, now: Instant) {
        self.pods
            .entry(pod.name_any())
            .or_default()
            .gone_at
            .get_or_insert(now);
    }

    fn slice(&mut self, name: String, published: BTreeSet<String>, now: Instant) {
        let old = self.slices.remove(&name).unwrap_or_default();
        for gone in old.difference(&published) {
            if let Some(count) = self.listed.get_mut(gone) {
                *count -= 1;
                if *count == 0 {
                    self.listed.remove(gone);
                    self.unlisted_at.insert(gone.clone(), now);
                }
            }
        }
        for new in published.difference(&old) {
            let count = self.listed.entry(new.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.listed_at.entry(new.clone()).or_insert(now);
            }
        }
        if !published.is_empty() {
            self.slices.insert(name, published);
        }
    }
}

type Shared = Arc<Mutex<Seen>>;

fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn watch_pods(api: Api<Pod>, selector: String, seen: Shared) {
    let mut events = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let now = Instant::now();
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => lock(&seen).pod(&pod, now),
            Ok(watcher::Event::Delete(pod)) => lock(&seen).pod_deleted(&pod, now),
            Ok(_) => {}
            Err(err) => eprintln!("probe: pod watch: {err}"),
        }
    }
}

async fn watch_slices(api: Api<EndpointSlice>, selector: String, seen: Shared) {
    let mut events = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let published = |slice: &EndpointSlice| -> BTreeSet<String> {
            endpoint_list::published_pods(slice)
                .map(|(pod, _)| pod.to_string())
                .collect()
        };
        match event {
            Ok(watcher::Event::Apply(slice) | watcher::Event::InitApply(slice)) => {
                let mut seen = lock(&seen);
                seen.slice(slice.name_any(), published(&slice), now);
                seen.check_targets(now);
            }
            Ok(watcher::Event::Delete(slice)) => lock(&seen).slice(slice.name_any(), BTreeSet::new(), now),
            Ok(_) => {}
            Err(err) => eprintln!("probe: slice watch: {err}"),
        }
    }
}

/// Reads `fanout endpoints` text output: `TIME joined tcp://IP:PORT`, `TIME left ...`,
/// `TIME members N`. The time of a change is when the follower printed it (its own stamp,
/// on this machine's clock) translated to this process's monotonic clock.
fn read_follower(out: impl Read, seen: Shared) {
    let (wall0, mono0) = (jiff::Timestamp::now(), Instant::now());
    let at = |stamp: &str| -> Instant {
        let Ok(time) = stamp.parse::<jiff::Timestamp>() else {
            return Instant::now();
        };
        let offset = time.duration_since(wall0);
        match Duration::try_from(offset) {
            Ok(ahead) => mono0 + ahead,
            Err(_) => mono0
                .checked_sub(Duration::try_from(-offset).unwrap_or_default())
                .unwrap_or(mono0),
        }
    };
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { return };
        let mut words = line.split_whitespace();
        let (Some(stamp), Some(what), Some(arg)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let when = at(stamp);
        let ip = || {
            arg.trim_start_matches("tcp://")
                .rsplit_once(':')
                .map(|(host, _)| host.to_string())
                .unwrap_or_default()
        };
        let mut seen = lock(&seen);
        match what {
            "joined" => {
                seen.follower_left.remove(&ip());
                seen.follower_joined.insert(ip(), when);
            }
            "left" => {
                seen.follower_left.insert(ip(), when);
            }
            "members" => {
                seen.follower_members = arg.parse().unwrap_or(0);
                seen.check_targets(when);
            }
            _ => {}
        }
    }
}

/// A child process ended by its pid (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("probe: {} ignored SIGTERM, killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// From /proc/PID: resident set now and its peak (bytes), CPU time used (seconds).
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    rss: u64,
    hwm: u64,
    cpu: f64,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: state is the first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    Usage {
        rss: kib("VmRSS:"),
        hwm: kib("VmHWM:"),
        cpu: (field(11) + field(12)) / ticks,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Prometheus text → (metric name, labels) → value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

fn parse_metrics(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match key.split_once('{') {
            Some((name, rest)) => {
                let mut labels = BTreeMap::new();
                for pair in rest.trim_end_matches('}').split("\",") {
                    if let Some((k, v)) = pair.split_once("=\"") {
                        labels.insert(
                            k.trim_matches(',').to_string(),
                            v.trim_end_matches('"').to_string(),
                        );
                    }
                }
                (name.to_string(), labels)
            }
            None => (key.to_string(), BTreeMap::new()),
        };
        samples.insert((name, labels), value);
    }
    samples
}

fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// The API server's metrics (kubectl: the probe runs with the cluster's admin kubeconfig).
fn apiserver_metrics() -> Samples {
    let out = Command::new("kubectl")
        .args(["get", "--raw", "/metrics"])
        .output();
    match out {
        Ok(out) if out.status.success() => parse_metrics(&String::from_utf8_lossy(&out.stdout)),
        _ => Samples::new(),
    }
}

/// Per-kind sums of `name` between two scrapes, keyed by the values of `by` labels.
fn delta_by(
    before: &Samples,
    after: &Samples,
    name: &str,
    by: &[&str],
    keep: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for ((metric, labels), value) in after {
        if metric != name || !keep(labels) {
            continue;
        }
        let old = before
            .get(&(metric.clone(), labels.clone()))
            .copied()
            .unwrap_or(0.0);
        let key: Vec<&str> = by
            .iter()
            .map(|l| labels.get(*l).map(String::as_str).unwrap_or(""))
            .collect();
        *out.entry(key.join("/")).or_insert(0.0) += value - old;
    }
    out.retain(|_, v| *v != 0.0);
    out
}

/// Nearest-rank percentiles of milliseconds.
fn percentiles(mut values: Vec<f64>) -> Option<[f64; 4]> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    Some([rank(0.5), rank(0.9), rank(0.99), values[values.len() - 1]])
}

fn millis(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// Output: `name: value unit` lines, kept for the table too.
#[derive(Default)]
struct Report {
    lines: Vec<(String, String, String)>,
}

impl Report {
    fn put(&mut self, name: impl Into<String>, value: impl std::fmt::Display, unit: &str) {
        let (name, value) = (name.into(), value.to_string());
        println!("{name}: {value} {unit}");
        self.lines.push((name, value, unit.to_string()));
    }
    fn get(&self, name: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|l| l.0 == name)
            .and_then(|l| l.1.parse().ok())
    }
}

fn node(name: &str, index: usize) -> Res<Node> {
    // 10.200.1.1 .. 10.200.63.250 (hack/cluster.sh's node range; this cluster is the probe's own).
    if index >= 63 * 250 {
        return Err(format!("node address range exhausted at {index}").into());
    }
    let ip = format!("10.200.{}.{}", 1 + index / 250, 1 + index % 250);
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "type": "kwok"}},
        "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                   "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                   "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                                "kubeletVersion": "fake", "kubeProxyVersion": "fake",
                                "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "",
                                "machineID": "", "osImage": "", "systemUUID": ""}}
    }))?)
}

async fn create_nodes(nodes: &Api<Node>, names: Vec<(String, usize)>) -> Res<()> {
    futures::stream::iter(names)
        .map(|(name, index)| async move {
            let object = node(&name, index)?;
            nodes.create(&PostParams::default(), &object).await?;
            Res::Ok(())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Polls `check` every 2 ms until it gives a value, or `timeout` passes.
async fn until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> Res<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The parts of one single change, in ms.
#[derive(Default)]
struct Parts {
    /// node created → pod Ready (join); node deleted → pod gone (leave).
    pod: Vec<f64>,
    /// pod Ready → endpoint in a slice; pod gone → endpoint out of the slices.
    slice: Vec<f64>,
    /// slice → the follower's membership.
    follower: Vec<f64>,
    /// node created/deleted → follower.
    total: Vec<f64>,
}

fn put_parts(report: &mut Report, prefix: &str, parts: &Parts, names: [&str; 4]) {
    for (name, values) in names
        .iter()
        .zip([&parts.pod, &parts.slice, &parts.follower, &parts.total])
    {
        if let Some([p50, p90, p99, max]) = percentiles(values.clone()) {
            for (q, v) in [("p50", p50), ("p90", p90), ("p99", p99), ("max", max)] {
                report.put(format!("{prefix}_{name}_{q}"), format!("{v:.1}"), "ms");
            }
        }
    }
}

struct Scrape {
    controller: Samples,
    apiserver: Samples,
    usage: Usage,
    at: Instant,
    load: String,
}

fn scrape(args: &Args, controller_pid: u32) -> Scrape {
    Scrape {
        controller: http_get(&args.http, "/metrics")
            .map(|t| parse_metrics(&t))
            .unwrap_or_default(),
        apiserver: apiserver_metrics(),
        usage: usage(controller_pid),
        at: Instant::now(),
        load: load_average(),
    }
}

/// Writes per change between two scrapes, by kind: the controller's count and request bytes,
/// and from the API server (whose figures for these resources are the controller's alone: no
/// other client writes them here) its request count and body bytes. Events are left out of the
/// API server's side: the scheduler and the DaemonSet controller write them too.
fn put_writes(report: &mut Report, prefix: &str, before: &Scrape, after: &Scrape, changes: usize) {
    let per = |v: f64| format!("{:.2}", v / changes.max(1) as f64);
    let seconds = after.at.saturating_duration_since(before.at).as_secs_f64();
    let writes = delta_by(
        &before.controller,
        &after.controller,
        "fanout_controller_api_writes_total",
        &["kind", "verb"],
        |_| true,
    );
    let total: f64 = writes.values().sum();
    let report_writes: f64 = writes
        .iter()
        .filter(|(kind, _)| kind.starts_with("Event/") || kind.starts_with("FanoutGroup/"))
        .map(|(_, n)| n)
        .sum();
    for (kind, n) in &writes {
        report.put(
            format!("{prefix}_writes_{}", kind.replace('/', "_")),
            per(*n),
            "per change",
        );
    }
    report.put(
        format!("{prefix}_writes_children"),
        per(total - report_writes),
        "per change",
    );
    report.put(format!("{prefix}_writes_total"), per(total), "per change");
    report.put(
        format!("{prefix}_writes_status_and_events_per_second"),
        format!("{:.2}", report_writes / seconds.max(0.001)),
        "per group",
    );
    let bytes = delta_by(
        &before.controller,
        &after.controller,
        "fanout_controller_api_write_bytes_total",
        &["kind", "verb"],
        |_| true,
    );
    for (kind, n) in &bytes {
        report.put(
            format!("{prefix}_write_bytes_{}", kind.replace('/', "_")),
            per(*n),
            "bytes per change",
        );
    }
    let ours = |l: &BTreeMap<String, String>| {
        matches!(
            l.get("resource").map(String::as_str),
            Some("endpointslices" | "configmaps" | "fanoutgroups")
        )
    };
    let server = delta_by(
        &before.apiserver,
        &after.apiserver,
        "apiserver_request_total",
        &["resource", "subresource", "verb"],
        |l| ours(l) && !matches!(l.get("verb").map(String::as_str), Some("GET" | "LIST" | "WATCH")),
    );
    for (key, n) in &server {
        report.put(
            format!(
                "{prefix}_apiserver_requests_{}",
                key.replace("//", "/").replace('/', "_")
            ),
            per(*n),
            "per change",
        );
    }
    let server_bytes = delta_by(
        &before.apiserver,
        &after.apiserver,
        "apiserver_request_body_size_bytes_sum",
        &["resource", "verb"],
        ours,
    );
    for (key, n) in &server_bytes {
        report.put(
            format!("{prefix}_apiserver_body_bytes_{}", key.replace('/', "_")),
            per(*n),
            "bytes per change",
        );
    }
    let reconciles = delta_by(
        &before.controller,
        &after.controller,
        "fanout_controller_reconciles_total",
        &[],
        |_| true,
    );
    report.put(
        format!("{prefix}_reconciles"),
        per(reconciles.values().sum()),
        "per change",
    );
    report.put(
        format!("{prefix}_controller_cpu"),
        format!(
            "{:.1}",
            (after.usage.cpu - before.usage.cpu) * 1000.0 / changes.max(1) as f64
        ),
        "ms per change",
    );
    report.put(format!("{prefix}_phase_duration"), format!("{seconds:.1}"), "s");
    report.put(format!("{prefix}_load_average"), &after.load, "1m");
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(err) => {
            eprintln!("probe: FAILED: {err}");
            std::process::exit(1);
        }
    }
}

async fn run(args: &Args) -> Res<bool> {
    let client = Client::try_default().await?;
    let mut report = Report::default();
    report.put("nodes", args.nodes, "count");
    report.put("load_average_start", load_average(), "1m");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(&args.namespace).await?.is_none() {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": args.namespace}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }

    // The nodes, in bulk.
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    create_nodes(
        &nodes,
        (0..args.nodes).map(|i| (format!("scale-{i:05}"), i)).collect(),
    )
    .await?;
    report.put(
        "nodes_created_in",
        format!("{:.1}", started.elapsed().as_secs_f64()),
        "s",
    );

    // The probe's watches, then the controller and the follower.
    let seen: Shared = Arc::new(Mutex::new(Seen::default()));
    let selector = format!("fanout.dev/group={}", args.group);
    tokio::spawn(watch_pods(
        Api::namespaced(client.clone(), &args.namespace),
        selector.clone(),
        seen.clone(),
    ));
    tokio::spawn(watch_slices(
        Api::namespaced(client.clone(), &args.namespace),
        endpoint_list::slice_selector(&args.group),
        seen.clone(),
    ));

    let log = |name: &str| std::fs::File::create(args.log_dir.join(format!("scale-{name}.log")));
    let controller = Proc {
        child: Command::new(&args.fanout)
            .args([
                "controller",
                "--http",
                &args.http,
                "--identity",
                "scale",
                "--lease-namespace",
                &args.lease_namespace,
            ])
            .args(["--default-proxy-image", "fanout:scale", "--log-level", "info"])
            .env("KUBECONFIG", &args.controller_kubeconfig)
            .stdout(Stdio::null())
            .stderr(log("controller")?)
            .spawn()?,
        name: "controller",
    };
    let mut follower = Proc {
        child: Command::new(&args.fanout)
            .args(["endpoints", "--group", &args.group, "-n", &args.namespace])
            .stdout(Stdio::piped())
            .stderr(log("follower")?)
            .spawn()?,
        name: "follower",
    };
    let out = follower.child.stdout.take().ok_or("no follower stdout")?;
    let reader_seen = seen.clone();
    std::thread::spawn(move || read_follower(out, reader_seen));
    until(Duration::from_secs(60), "the controller to lead", || {
        let body = http_get(&args.http, "/metrics").ok()?;
        body.lines()
            .any(|l| l == "fanout_controller_leader 1")
            .then_some(())
    })
    .await?;

    // The group, and how long until it is fully listed.
    let cpu_before = usage(controller.pid()).cpu;
    lock(&seen).target = args.nodes;
    let groups: Api<FanoutGroup> = Api::namespaced(client.clone(), &args.namespace);
    // A flat group: every proxy in the group's slices and ConfigMap, each publisher connected to
    // each. (In tree mode the top tier lists ~√N relays and the leaves sit in the relays'
    // assignment slices, which the follower does not read: `benches/relay_tree.rs` and the e2e
    // tests measure that.)
    let flat = FanoutGroupSpec {
        relays: RelaySpec {
            enabled: false,
            ..RelaySpec::default()
        },
        ..FanoutGroupSpec::default()
    };
    let created = Instant::now();
    groups
        .create(&PostParams::default(), &FanoutGroup::new(&args.group, flat))
        .await?;
    let listing_timeout = Duration::from_secs(180).max(Duration::from_millis(60 * args.nodes as u64));
    let (ready, listed, followed) = until(listing_timeout, "the group to be fully listed", || {
        let seen = lock(&seen);
        Some((seen.all_ready_at?, seen.all_listed_at?, seen.all_followed_at?))
    })
    .await?;
    let secs = |at: Instant| format!("{:.1}", at.saturating_duration_since(created).as_secs_f64());
    report.put("listing_all_pods_ready", secs(ready), "s");
    report.put("listing_all_endpoints_in_slices", secs(listed), "s");
    report.put("listing_follower_has_all", secs(followed), "s");
    report.put(
        "listing_controller_cpu",
        format!("{:.1}", usage(controller.pid()).cpu - cpu_before),
        "s",
    );
    report.put("listing_load_average", load_average(), "1m");

    // Settle (trailing status writes, DaemonSet status), then single changes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady = usage(controller.pid());
    report.put("steady_controller_rss", steady.rss / (1024 * 1024), "MiB");
    // What the controller costs with nothing changing (watches, lease renewals, the kwok nodes'
    // heartbeats are not its business): the floor under the per-change CPU figures.
    let idle = Duration::from_secs(10);
    tokio::time::sleep(idle).await;
    report.put(
        "steady_controller_cpu",
        format!(
            "{:.1}",
            (usage(controller.pid()).cpu - steady.cpu) * 1000.0 / idle.as_secs_f64()
        ),
        "ms per s",
    );
    let before_joins = scrape(args, controller.pid());
    let per_change = Duration::from_secs(30);
    let gap = Duration::from_millis(args.gap_ms);
    let mut joins = Parts::default();
    let mut joined = Vec::new();
    for j in 0..args.changes {
        let name = format!("scale-join-{j:03}");
        let t0 = Instant::now();
        create_nodes(&nodes, vec![(name.clone(), args.nodes + j)]).await?;
        let (pod, ip, ready_at) = until(per_change, &format!("a Ready pod on {name}"), || {
            let seen = lock(&seen);
            let pod = seen.pod_on_node.get(&name)?;
            let state = seen.pods.get(pod)?;
            Some((pod.clone(), state.ip.clone()?, state.ready_at?))
        })
        .await?;
        let (listed_at, followed_at) = until(per_change, &format!("{pod} listed and followed"), || {
            let seen = lock(&seen);
            Some((*seen.listed_at.get(&pod)?, *seen.follower_joined.get(&ip)?))
        })
        .await?;
        joins.pod.push(millis(t0, ready_at));
        joins.slice.push(millis(ready_at, listed_at));
        joins.follower.push(millis(listed_at, followed_at));
        joins.total.push(millis(t0, followed_at));
        joined.push((name, pod, ip));
        tokio::time::sleep(gap).await;
    }
    let after_joins = scrape(args, controller.pid());
    let mut leaves = Parts::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
    for (name, pod, ip) in &joined {
        let t0 = Instant::now();
        // As a vanished kubelet's node goes (hack/cluster.sh remove-node): the node, then its pod.
        nodes.delete(name, &DeleteParams::default()).await?;
        pods.delete(
            pod,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await?;
        let (gone_at, unlisted_at, left_at) = until(per_change, &format!("{pod} withdrawn"), || {
            let seen = lock(&seen);
            Some((
                seen.pods.get(pod)?.gone_at?,
                *seen.unlisted_at.get(pod)?,
                *seen.follower_left.get(ip)?,
            ))
        })
        .await?;
        leaves.pod.push(millis(t0, gone_at));
        leaves.slice.push(millis(gone_at, unlisted_at));
        leaves.follower.push(millis(unlisted_at, left_at));
        leaves.total.push(millis(t0, left_at));
        tokio::time::sleep(gap).await;
    }
    let after_leaves = scrape(args, controller.pid());

    report.put("single_changes", args.changes, "joins and as many leaves");
    report.put("gap_between_changes", args.gap_ms, "ms");
    put_parts(
        &mut report,
        "join",
        &joins,
        [
            "node_to_pod_ready",
            "pod_ready_to_slice",
            "slice_to_follower",
            "node_to_follower",
        ],
    );
    put_parts(
        &mut report,
        "leave",
        &leaves,
        [
            "node_deleted_to_pod_gone",
            "pod_gone_to_slice",
            "slice_to_follower",
            "node_deleted_to_follower",
        ],
    );
    put_writes(&mut report, "join", &before_joins, &after_joins, args.changes);
    put_writes(&mut report, "leave", &after_joins, &after_leaves, args.changes);
    let end = usage(controller.pid());
    let follower_usage = usage(follower.pid());
    report.put("controller_rss", end.rss / (1024 * 1024), "MiB");
    report.put("controller_rss_peak", end.hwm / (1024 * 1024), "MiB");
    report.put("controller_cpu_total", format!("{:.1}", end.cpu), "s");
    report.put("follower_rss", follower_usage.rss / (1024 * 1024), "MiB");
    report.put("follower_rss_peak", follower_usage.hwm / (1024 * 1024), "MiB");
    report.put("load_average_end", load_average(), "1m");
    drop(follower);
    drop(controller);

    print_table(&report);
    Ok(!args.check || check(&report, args))
}

fn print_table(report: &Report) {
    println!();
    println!("| figure | value | unit |");
    println!("|---|---:|---|");
    for (name, value, unit) in &report.lines {
        println!("| {name} | {value} | {unit} |");
    }
}

/// Generous bounds for hack/test.sh: catches a controller that stopped scaling, not noise.
fn check(report: &Report, args: &Args) -> bool {
    let bounds: [(&str, f64); 7] = [
        ("listing_follower_has_all", 60.0 + 0.1 * args.nodes as f64),
        ("join_node_to_follower_max", 10_000.0),
        ("leave_node_deleted_to_follower_max", 10_000.0),
        ("join_writes_children", 4.0),
        ("leave_writes_children", 4.0),
        ("join_writes_status_and_events_per_second", 4.0),
        ("controller_rss_peak", 256.0),
    ];
    let mut ok = true;
    for (name, bound) in bounds {
        match report.get(name) {
            Some(value) if value <= bound => println!("check {name}: {value} <= {bound} ok"),
            Some(value) => {
                println!("check {name}: {value} > {bound} FAILED");
                ok = false;
            }
            None => {
                println!("check {name}: missing FAILED");
                ok = false;
            }
        }
    }
    ok
}

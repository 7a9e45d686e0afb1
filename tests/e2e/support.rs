//! What the end-to-end tests share: the user's tools (kubectl, helm) as subprocesses, the
//! chart installed once, a controller process authenticated as the chart's ServiceAccount,
//! fake nodes, and polling with deadlines.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const RELEASE: &str = "fanout";
pub const RELEASE_NAMESPACE: &str = "fanout-system";

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn fanout_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fanout"))
}

/// The path of a tool the harness built (`hack/tools.sh path NAME`), looked up once.
pub fn tool(name: &str) -> PathBuf {
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    cache
        .entry(name.to_string())
        .or_insert_with(|| crate::chart_support::hack_tool(name))
        .clone()
}

/// The test cluster must be there: these tests fail, never skip, without it.
pub fn require_cluster() {
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    assert!(
        !kubeconfig.is_empty() && Path::new(&kubeconfig).exists(),
        "KUBECONFIG is not set to the test cluster's kubeconfig: run these tests through hack/test.sh \
         (or `hack/cluster.sh up` then `hack/cluster.sh exec cargo test --test e2e -- --ignored --test-threads=1`)"
    );
    let out = kubectl(&["get", "--raw", "/readyz"]);
    assert!(
        out.status.success(),
        "the test API server is not ready: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn kubectl(args: &[&str]) -> Output {
    run(&tool("kubectl"), args, None)
}

/// kubectl that must succeed; returns stdout.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn helm(args: &[&str]) -> Output {
    run(&tool("helm"), args, None)
}

pub fn cluster_sh(args: &[&str]) {
    let out = run(&repo().join("hack/cluster.sh"), args, None);
    assert!(
        out.status.success(),
        "hack/cluster.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn add_node(name: &str) {
    cluster_sh(&["add-node", name]);
}

pub fn remove_node(name: &str) {
    cluster_sh(&["remove-node", name]);
}

/// `helm install` the chart once per test process (idempotent across processes too).
pub fn ensure_chart_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if helm(&["status", RELEASE, "-n", RELEASE_NAMESPACE])
            .status
            .success()
        {
            return;
        }
        let chart = repo().join("charts/fanout");
        let out = helm(&[
            "install",
            RELEASE,
            chart.to_str().unwrap(),
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
        ]);
        assert!(
            out.status.success(),
            "helm install failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        // The CRD must be established before FanoutGroups can be created.
        kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/fanoutgroups.fanout.dev",
            "--timeout=60s",
        ]);
    });
}

/// A kubeconfig that authenticates as the chart's ServiceAccount with a token from the
/// TokenRequest API (`hack/cluster.sh sa-kubeconfig`), so the controller runs with exactly the
/// chart's RBAC.
pub fn service_account_kubeconfig() -> PathBuf {
    let account = kubectl_ok(&[
        "get",
        "deployment",
        "-n",
        RELEASE_NAMESPACE,
        "-l",
        "app.kubernetes.io/component=controller",
        "-o",
        "jsonpath={.items[0].spec.template.spec.serviceAccountName}",
    ]);
    let account = account.trim();
    assert!(
        !account.is_empty(),
        "the chart's controller Deployment names no ServiceAccount"
    );
    let out = run(
        &repo().join("hack/cluster.sh"),
        &["sa-kubeconfig", RELEASE_NAMESPACE, account],
        None,
    );
    assert!(
        out.status.success(),
        "hack/cluster.sh sa-kubeconfig: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A `fanout controller` process. Killed (SIGTERM, then SIGKILL) on drop.
pub struct ControllerProcess {
    pub identity: String,
    pub http: String,
    child: Option<Child>,
    /// Its log (stderr), whose tail is printed when a test panics with it running.
    log: PathBuf,
}

impl ControllerProcess {
    pub fn start(kubeconfig: &Path, identity: &str, http: &str, log_dir: &Path) -> Self {
        Self::start_with(kubeconfig, identity, http, log_dir, &[])
    }

    /// `start` with further `fanout controller` flags (the proxy policy).
    pub fn start_with(kubeconfig: &Path, identity: &str, http: &str, log_dir: &Path, extra: &[&str]) -> Self {
        let log_path = log_dir.join(format!("controller-{identity}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(fanout_binary())
            .args([
                "controller",
                "--http",
                http,
                "--identity",
                identity,
                "--lease-namespace",
                RELEASE_NAMESPACE,
                "--default-proxy-image",
                "fanout:e2e",
                "--log-level",
                "info,fanout=debug,kube_runtime=debug",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start fanout controller");
        eprintln!(
            "started controller {identity} (pid {}) serving {http}",
            child.id()
        );
        Self {
            identity: identity.to_string(),
            http: http.to_string(),
            child: Some(child),
            log: log_path,
        }
    }

    /// Stops it the way Kubernetes does (SIGTERM), or crashes it (SIGKILL).
    pub fn stop(&mut self, crash: bool) {
        if let Some(mut child) = self.child.take() {
            let signal = if crash { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: signalling our own unreaped child.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The sum of every sample of metric `name` (all label sets) on its /metrics.
    pub fn metric(&self, name: &str) -> Option<f64> {
        scrape(&self.http, name, &[])
    }

    /// The samples of metric `name` on its /metrics, by their label sets.
    pub fn samples(&self, name: &str) -> BTreeMap<String, f64> {
        http_get(&self.http, "/metrics")
            .map(|body| samples(&body, name))
            .unwrap_or_default()
    }
}

/// The samples of metric `name` in a Prometheus text exposition, by label set (`{...}` as
/// written, empty for none).
pub fn samples(body: &str, name: &str) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, labels) = key.split_at(key.find('{').unwrap_or(key.len()));
        if let (true, Ok(value)) = (metric == name, value.parse::<f64>()) {
            *found.entry(labels.to_string()).or_insert(0.0) += value;
        }
    }
    found
}

/// The sum of the samples of metric `name` at `http`'s /metrics whose labels include every
/// `key="value"` of `labels`; None when the endpoint does not answer or has no such sample.
pub fn scrape(http: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let body = http_get(http, "/metrics").ok()?;
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    samples(&body, name)
        .into_iter()
        .filter(|(set, _)| wanted.iter().all(|w| set.contains(w.as_str())))
        .map(|(_, value)| value)
        .reduce(|a, b| a + b)
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What CI keeps of a failed test is its output: the controller's side of it too.
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- last lines of controller {}'s log ---", self.identity);
            for line in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{line}");
            }
        }
        self.stop(false);
    }
}

/// A minimal HTTP/1.0 GET, enough for /metrics and probes.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// A loop on a thread of its own that runs until stopped (`body` sees the flag) and returns what
/// it found; stopped and joined on drop too, also when a test panics.
pub struct Background<T> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<T>>,
}

impl<T: Send + 'static> Background<T> {
    pub fn spawn(body: impl FnOnce(&std::sync::atomic::AtomicBool) -> T + Send + 'static) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        Self {
            stop,
            thread: Some(std::thread::spawn(move || body(&flag))),
        }
    }

    /// Stops the loop after its current step and returns its result.
    pub fn stop(mut self) -> T {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .expect("joined only here or on drop")
            .join()
            .expect("the background thread panicked")
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The samples of metric `name` served at `addr` (`IP:port`): (labels without braces, value).
pub fn metric_samples(addr: &str, name: &str) -> Result<Vec<(String, f64)>, String> {
    let body = http_get(addr, "/metrics").map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
    Ok(samples(&body, name)
        .into_iter()
        .map(|(labels, value)| {
            let labels = labels.trim_start_matches('{').trim_end_matches('}');
            (labels.to_string(), value)
        })
        .collect())
}

/// The sum of the samples of `name` at `addr` whose labels contain `label` (`reason="x"`;
/// empty for all).
pub fn metric_sum(addr: &str, name: &str, label: &str) -> Result<f64, String> {
    Ok(metric_samples(addr, name)?
        .iter()
        .filter(|(labels, _)| labels.contains(label))
        .map(|(_, v)| v)
        .sum())
}

/// One version of a ConfigMap as a test saw it: when (both clocks: `Instant` for this process,
/// ms since the epoch for comparing with pods' logs on the same machine) and one key's text.
#[derive(Debug, Clone)]
pub struct SeenVersion {
    pub at: Instant,
    /// For comparing with pods' logs (`e2e_real_nodes`); `e2e` compares `at` only.
    #[allow(dead_code)]
    pub at_ms: u64,
    pub text: String,
}

/// Every version of one ConfigMap seen by a watch of the test's own (to know when a
/// controller rewrote it); the watch ends when this is dropped.
pub struct ConfigMapVersions {
    seen: std::sync::Arc<std::sync::Mutex<Vec<SeenVersion>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConfigMapVersions {
    /// Watches ConfigMap `namespace/name`, keeping key `key` of each version; returns once
    /// the first version is seen.
    pub async fn watch(client: kube::Client, namespace: &str, name: &str, key: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let seen: std::sync::Arc<std::sync::Mutex<Vec<SeenVersion>>> = Default::default();
        let (record, key) = (seen.clone(), key.to_string());
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).applied_objects().boxed();
            while let Some(event) = events.next().await {
                let Ok(cm) = event else { continue };
                let text = cm
                    .data
                    .as_ref()
                    .and_then(|data| data.get(&key).cloned())
                    .unwrap_or_default();
                let at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                record.lock().unwrap().push(SeenVersion {
                    at: Instant::now(),
                    at_ms,
                    text,
                });
            }
        });
        let versions = Self { seen, task };
        eventually(
            Duration::from_secs(30),
            &format!("the test's own watch on ConfigMap {namespace}/{name}"),
            || async { (!versions.seen.lock().unwrap().is_empty()).then_some(()) },
        )
        .await;
        versions
    }

    /// The first version seen at or after `since` whose text passes `test`.
    pub fn first_since(&self, since: Instant, test: impl Fn(&str) -> bool) -> Option<SeenVersion> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .find(|version| version.at >= since && test(&version.text))
            .cloned()
    }
}

impl Drop for ConfigMapVersions {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

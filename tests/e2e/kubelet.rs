//! A stand-in for the kubelet of the fake (kwok) nodes, for the fanout proxies only.
//!
//! kwok marks pods running and gives them addresses but runs nothing. For every proxy pod it
//! marks running, this starts the real `fanout proxy` with the container's own arguments from
//! the pod spec, so what runs is exactly what the controller wrote. What a kubelet would do
//! with namespaces, this does with rewriting, and says so:
//! - every fake pod shares the test's one network namespace, so a wildcard bind address
//!   (`*`, `0.0.0.0`) becomes the pod's own IP;
//! - every fake node shares one filesystem, so a hostPath mount becomes a directory per node
//!   under `root` (`<root>/<node>/<hostPath>[/<subPath>]`);
//! - `$(VAR)` in the arguments is expanded from the container's env, downward-API fields
//!   (`metadata.name`, ...) included;
//! - a pod that mounts a ServiceAccount token (the `proxy-api-access` projected volume) gets,
//!   instead, a kubeconfig with a TokenRequest token of the pod's own ServiceAccount
//!   (`hack/cluster.sh sa-kubeconfig`) in `KUBECONFIG`: the proxy talks to the API with
//!   exactly the Role the controller gave that ServiceAccount. Every other proxy runs with no
//!   `KUBECONFIG` at all;
//! - Secret and ConfigMap volumes (a CURVE group's key and allow-lists) are written once, when
//!   the proxy starts, under `<root>/<pod>/volumes/<volume>/`, and never refreshed: this
//!   kubelet's pod sync never comes, so whatever a proxy learns later it learns through the
//!   API.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One proxy process the fake kubelet runs, and how it was started (to restart it).
struct Running {
    child: Child,
    words: Vec<String>,
    log: PathBuf,
    /// The pod's ServiceAccount kubeconfig, when it mounts a token.
    kubeconfig: Option<PathBuf>,
}

pub struct FakeKubelet {
    task: tokio::task::JoinHandle<()>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    root: PathBuf,
    binary: PathBuf,
}

impl FakeKubelet {
    /// Runs proxies for pods labelled `fanout.dev/group` in `namespace`.
    pub fn start(client: Client, namespace: &str, binary: PathBuf, root: PathBuf) -> Self {
        let running: Arc<Mutex<HashMap<String, Running>>> = Arc::default();
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let state = running.clone();
        let dir = root.clone();
        let own_binary = binary.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default().labels("fanout.dev/group"))
                .backoff(fanout::watch_backoff::WatchBackoff::default())
                .applied_objects()
                .boxed();
            let mut known: HashMap<String, Pod> = HashMap::new();
            while let Some(event) = events.next().await {
                let pod = match event {
                    Ok(pod) => pod,
                    Err(err) => {
                        eprintln!("fake kubelet: watch error: {err}");
                        continue;
                    }
                };
                known.insert(pod.name_any(), pod.clone());
                let starting = is_running(&pod) && !state.lock().unwrap().contains_key(&pod.name_any());
                let files = if starting {
                    match volume_files(&client, &pod, &dir).await {
                        Ok(files) => files,
                        Err(err) => {
                            eprintln!(
                                "fake kubelet: cannot start proxy for pod {}: {err}",
                                pod.name_any()
                            );
                            continue;
                        }
                    }
                } else {
                    HashMap::new()
                };
                reconcile_pod(&pod, &binary, &dir, &state, &files);
            }
        });
        // Pods that vanish without a final update (deleted while the watch restarted) are
        // caught by `sweep`.
        Self {
            task,
            running,
            root,
            binary: own_binary,
        }
    }

    /// Stops proxies whose pods no longer exist.
    pub async fn sweep(&self, client: Client, namespace: &str) {
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let Ok(list) = pods.list(&Default::default()).await else {
            return;
        };
        let alive: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
        let mut running = self.running.lock().unwrap();
        let gone: Vec<String> = running.keys().filter(|k| !alive.contains(k)).cloned().collect();
        for name in gone {
            if let Some(proc) = running.remove(&name) {
                stop(proc, &name);
            }
        }
    }

    /// Where node `node`'s hostPath `path` lives in this test.
    pub fn host_path(&self, node: &str, path: &str) -> PathBuf {
        host_path(&self.root, node, path)
    }

    /// Sends `signal` to the proxy of pod `pod` (a fault test's SIGSTOP, SIGCONT, SIGKILL).
    pub fn signal(&self, pod: &str, signal: i32) {
        let running = self.running.lock().unwrap();
        let proc = running
            .get(pod)
            .unwrap_or_else(|| panic!("no proxy running for pod {pod}"));
        // SAFETY: signalling a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(proc.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", proc.child.id());
    }

    /// Reaps the proxy of `pod` if it died and starts it again with the same command line: what
    /// a kubelet does for a container under `restartPolicy: Always`.
    pub fn restart(&self, pod: &str) {
        let mut running = self.running.lock().unwrap();
        let proc = running
            .get_mut(pod)
            .unwrap_or_else(|| panic!("no proxy known for pod {pod}"));
        let _ = proc.child.kill();
        let status = proc.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&proc.log)
            .expect("the proxy's log");
        proc.child = proxy_command(&self.binary, &proc.words, proc.kubeconfig.as_deref())
            .stderr(log)
            .spawn()
            .expect("restart the proxy");
        eprintln!(
            "fake kubelet: proxy for pod {pod} exited ({status:?}); restarted (pid {})",
            proc.child.id()
        );
    }

    pub fn stop_all(&self) {
        self.task.abort();
        let mut running = self.running.lock().unwrap();
        for (name, proc) in running.drain() {
            stop(proc, &name);
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn host_path(root: &Path, node: &str, path: &str) -> PathBuf {
    root.join(node).join(path.trim_start_matches('/'))
}

fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// A Secret's or ConfigMap's data: key -> bytes.
type VolumeData = BTreeMap<String, Vec<u8>>;

/// Writes the pod's Secret and ConfigMap volumes (waiting a little for objects not there yet,
/// as a kubelet would) and returns where each volume's files are.
async fn volume_files(client: &Client, pod: &Pod, root: &Path) -> std::io::Result<HashMap<String, PathBuf>> {
    let namespace = pod.namespace().unwrap_or_default();
    let mut files = HashMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let (data, items): (Option<VolumeData>, Option<Vec<KeyToPath>>) = if let Some(source) = &volume.secret
        {
            let name = source.secret_name.clone().unwrap_or_default();
            let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            let secret = fetch(&api, &name).await?;
            let data = secret
                .and_then(|s| s.data)
                .map(|data| data.into_iter().map(|(k, v)| (k, v.0)).collect());
            (data, source.items.clone())
        } else if let Some(source) = &volume.config_map {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            let cm = fetch(&api, &source.name).await?;
            let data = cm
                .and_then(|c| c.data)
                .map(|data| data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect());
            (data, source.items.clone())
        } else {
            continue;
        };
        let data = data.ok_or_else(|| {
            std::io::Error::other(format!("volume {}: its object is not there", volume.name))
        })?;
        let dir = root.join(pod.name_any()).join("volumes").join(&volume.name);
        std::fs::create_dir_all(&dir)?;
        let wanted: Vec<(String, String)> = match items {
            Some(items) => items.into_iter().map(|i| (i.key, i.path)).collect(),
            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        for (key, path) in wanted {
            let bytes = data
                .get(&key)
                .ok_or_else(|| std::io::Error::other(format!("volume {}: no key {key}", volume.name)))?;
            let file = dir.join(path);
            std::fs::write(&file, bytes)?;
            // Owner-only: the proxy refuses a secret key others may read (a real kubelet
            // makes it 0440 to the pod's fsGroup).
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        files.insert(volume.name.clone(), dir);
    }
    Ok(files)
}

/// The object `name`, waiting up to 10 s for it to appear.
async fn fetch<K>(api: &Api<K>, name: &str) -> std::io::Result<Option<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..40 {
        match api.get_opt(name).await {
            Ok(Some(object)) => return Ok(Some(object)),
            Ok(None) => {}
            Err(err) => eprintln!("fake kubelet: reading {name}: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(None)
}

fn reconcile_pod(
    pod: &Pod,
    binary: &Path,
    root: &Path,
    running: &Mutex<HashMap<String, Running>>,
    files: &HashMap<String, PathBuf>,
) {
    let name = pod.name_any();
    let status = pod.status.as_ref();
    let ip = status.and_then(|s| s.pod_ip.clone());
    let phase = status.and_then(|s| s.phase.clone()).unwrap_or_default();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let mut running = running.lock().unwrap();
    if deleting || phase == "Succeeded" || phase == "Failed" {
        if let Some(proc) = running.remove(&name) {
            stop(proc, &name);
        }
        return;
    }
    let (Some(ip), Some(node)) = (ip, node) else {
        return;
    };
    if phase != "Running" || running.contains_key(&name) {
        return;
    }
    match start_proxy(pod, &ip, &node, binary, root, files) {
        Ok(started) => {
            eprintln!(
                "fake kubelet: started proxy for pod {name} on {node} at {ip} (pid {})",
                started.child.id()
            );
            running.insert(name, started);
        }
        Err(err) => eprintln!("fake kubelet: cannot start proxy for pod {name}: {err}"),
    }
}

/// The container's command line with the kubelet's substitutions done; `files` holds where
/// each Secret or ConfigMap volume was written.
pub fn proxy_command_line(
    container: &Container,
    pod: &Pod,
    ip: &str,
    node: &str,
    root: &Path,
    files: &HashMap<String, PathBuf>,
) -> Vec<String> {
    let mut words: Vec<String> = container.command.clone().unwrap_or_default();
    words.extend(container.args.clone().unwrap_or_default());
    // The image's entrypoint is the `fanout` binary; the first word may name it.
    if words.first().is_some_and(|w| w.ends_with("fanout")) {
        words.remove(0);
    }
    let env: HashMap<String, String> = container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, e.value_from.as_ref().and_then(|v| v.field_ref.as_ref())) {
                (Some(v), _) => v.clone(),
                (None, Some(field)) => match field.field_path.as_str() {
                    "status.podIP" | "status.hostIP" => ip.to_string(),
                    "spec.nodeName" => node.to_string(),
                    "metadata.name" => pod.name_any(),
                    "metadata.namespace" => pod.namespace().unwrap_or_default(),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            (e.name.clone(), value)
        })
        .collect();
    let volumes: HashMap<String, String> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| (v.name.clone(), h.path.clone())))
        .collect();
    let mut mounts: Vec<(String, PathBuf)> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let sub_path = m.sub_path.as_deref().unwrap_or_default();
            let path = match (volumes.get(&m.name), files.get(&m.name)) {
                (Some(host), _) => host_path(root, node, host).join(sub_path),
                (None, Some(dir)) => dir.join(sub_path),
                (None, None) => return None,
            };
            Some((m.mount_path.clone(), path))
        })
        .collect();
    // The longest mount first, and only whole path components: `/etc/fanout/curve` must not
    // rewrite `/etc/fanout/curve-allow/...`.
    mounts.sort_by_key(|(mount, _)| std::cmp::Reverse(mount.len()));
    words
        .into_iter()
        .map(|mut word| {
            for (name, value) in &env {
                word = word.replace(&format!("$({name})"), value);
            }
            word = word
                .replace("tcp://*:", &format!("tcp://{ip}:"))
                .replace("tcp://0.0.0.0:", &format!("tcp://{ip}:"));
            if let Some(port) = word.strip_prefix("0.0.0.0:") {
                word = format!("{ip}:{port}");
            }
            for (mount, host) in &mounts {
                let found = word.match_indices(mount.as_str()).find(|(pos, _)| {
                    let rest = &word[pos + mount.len()..];
                    rest.is_empty() || rest.starts_with('/')
                });
                if let Some((pos, _)) = found {
                    let rest = &word[pos + mount.len()..];
                    word = format!("{}{}{}", &word[..pos], host.display(), rest);
                    break;
                }
            }
            word
        })
        .collect()
}

fn start_proxy(
    pod: &Pod,
    ip: &str,
    node: &str,
    binary: &Path,
    root: &Path,
    files: &HashMap<String, PathBuf>,
) -> std::io::Result<Running> {
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == "proxy"))
        .ok_or_else(|| std::io::Error::other("pod has no container named proxy"))?;
    let words = proxy_command_line(container, pod, ip, node, root, files);
    for mount in container.volume_mounts.iter().flatten() {
        let volume = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .and_then(|vs| vs.iter().find(|v| v.name == mount.name));
        if let Some(host) = volume.and_then(|v| v.host_path.as_ref()) {
            // The kubelet creates a missing subPath too (the init container, which this stand-in
            // does not run, would have made it already).
            let sub_path = mount.sub_path.as_deref().unwrap_or_default();
            std::fs::create_dir_all(host_path(root, node, &host.path).join(sub_path))?;
        }
    }
    let kubeconfig = service_account_kubeconfig(pod, container)?;
    let log_path = root.join(format!("{}.log", pod.name_any()));
    let log = std::fs::File::create(&log_path)?;
    let child = proxy_command(binary, &words, kubeconfig.as_deref())
        .stderr(log)
        .spawn()?;
    Ok(Running {
        child,
        words,
        log: log_path,
        kubeconfig,
    })
}

/// The proxy's command, with the pod's API credentials or none.
fn proxy_command(binary: &Path, words: &[String], kubeconfig: Option<&Path>) -> Command {
    let mut command = Command::new(binary);
    command.args(words).stdout(Stdio::null());
    match kubeconfig {
        Some(path) => command.env("KUBECONFIG", path),
        None => command.env_remove("KUBECONFIG"),
    };
    command
}

/// Where clients look for the in-cluster token (what `proxy_access` mounts).
const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A kubeconfig for the pod's ServiceAccount when the container mounts a token there.
fn service_account_kubeconfig(pod: &Pod, container: &Container) -> std::io::Result<Option<PathBuf>> {
    let mounts_token = container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == TOKEN_MOUNT);
    let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone());
    let (true, Some(account)) = (mounts_token, account) else {
        return Ok(None);
    };
    let namespace = pod.namespace().unwrap_or_default();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/cluster.sh");
    let out = Command::new(script)
        .args(["sa-kubeconfig", &namespace, &account])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "no token for {namespace}/{account}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())))
}

/// SIGTERM, then SIGKILL after a grace period, like a kubelet.
fn stop(mut proc: Running, name: &str) {
    let pid = proc.child.id() as i32;
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    for _ in 0..50 {
        if let Ok(Some(status)) = proc.child.try_wait() {
            eprintln!("fake kubelet: proxy for pod {name} exited ({status})");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("fake kubelet: proxy for pod {name} ignored SIGTERM for 5 s; killing it");
    let _ = proc.child.kill();
    let _ = proc.child.wait();
}

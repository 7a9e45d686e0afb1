//! The user's path on real nodes: the image `hack/image.sh` built, run by real kubelets with
//! containerd, runc, CNI and kube-proxy (`hack/cluster.sh add-real-node`), next to kwok nodes.
//! Nothing here is played by the test: the controller runs as the chart's Deployment with its
//! ServiceAccount token, the proxy pods start through their init container and turn Ready
//! through their probes, agents and a publisher are pods of the image, and every count comes
//! from their logs. `hack/test.sh` runs it in a cluster of its own:
//!
//! ```text
//! hack/image.sh && tests/cluster/with-cluster.sh cargo test --test e2e_real_nodes -- --ignored --nocapture
//! ```
//!
//! `#[ignore]`d so that a plain `cargo test` needs no cluster; run as above it fails (never
//! skips) when the cluster or the images are missing.

#[path = "chart/support.rs"]
mod chart_support;
#[path = "e2e/support.rs"]
#[allow(dead_code)]
mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

const NAMESPACE: &str = "networking";
const GROUP: &str = "port-updates";
/// The group's own directory on each node (`<socketDir>/<namespace>.<name>`) and its socket.
const SOCKET_DIR: &str = "/var/run/fanout/networking.port-updates";
const SOCKET: &str = "/var/run/fanout/networking.port-updates/networking.port-updates.sock";
const REAL_NODES: [&str; 2] = ["real-1", "real-2"];
const FAKE_NODES: [&str; 2] = ["kwok-1", "kwok-2"];
/// The image the examples name; the test substitutes the one it built, as a user would.
const EXAMPLE_IMAGE: &str = "registry.example.com/fanout:0.1.0";

/// What `hack/image.sh` built (its `images.env`).
struct Images {
    repository: String,
    digest: String,
}

impl Images {
    fn load() -> Self {
        let path = std::env::var_os("FANOUT_IMAGES_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target/image/images.env"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}: run hack/image.sh first", path.display()));
        let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        Self {
            repository: vars["FANOUT_IMAGE_REPOSITORY"].to_string(),
            digest: vars["FANOUT_IMAGE_DIGEST"].to_string(),
        }
    }

    fn reference(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl_ok(&all)).expect("kubectl -o json")
}

/// `kubectl apply` of an example file (a path under `examples/`) with the image replaced by the
/// one built here. Pods of workloads (`real_only`) go to the real nodes: on a kwok node nothing
/// would run them.
fn apply_example(file: &str, image: &Images, real_only: bool) {
    apply_example_with(file, image, real_only, &[]);
}

/// `apply_example` with `edits` (each `from` must be in the file) applied first, in order: a
/// second copy of an example under other names.
fn apply_example_with(file: &str, image: &Images, real_only: bool, edits: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(repo().join("examples").join(file)).unwrap();
    assert!(
        file.ends_with("fanoutgroup.yaml") || text.contains(EXAMPLE_IMAGE),
        "examples/{file} no longer names {EXAMPLE_IMAGE}"
    );
    for (from, to) in edits {
        assert!(text.contains(from), "examples/{file} no longer has {from:?}");
        text = text.replace(from, to);
    }
    let mut text = text.replace(EXAMPLE_IMAGE, &image.reference());
    if real_only {
        const ANY_LINUX: &str = "kubernetes.io/os: linux";
        assert!(
            text.contains(ANY_LINUX),
            "examples/{file} has no {ANY_LINUX} node selector"
        );
        text = text.replace(ANY_LINUX, "fanout.dev/node-kind: real");
    }
    let out = run(&tool("kubectl"), &["apply", "-f", "-"], Some(&text));
    assert!(
        out.status.success(),
        "kubectl apply examples/{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pod as the tests look at it.
#[derive(Debug, Clone)]
struct PodView {
    name: String,
    node: String,
    ready: bool,
    restarts: i64,
    template_hash: String,
    raw: Value,
}

fn pods(namespace: &str, selector: &str) -> Vec<PodView> {
    let list = json(&["get", "pods", "-n", namespace, "-l", selector]);
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            let restarts = p["status"]["containerStatuses"]
                .as_array()
                .map_or(0, |cs| cs.iter().filter_map(|c| c["restartCount"].as_i64()).sum());
            let labels = &p["metadata"]["labels"];
            let template_hash = labels["controller-revision-hash"]
                .as_str()
                .or(labels["pod-template-hash"].as_str())
                .unwrap_or_default()
                .to_string();
            PodView {
                name: p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                node: p["spec"]["nodeName"].as_str().unwrap_or_default().to_string(),
                ready,
                restarts,
                template_hash,
                raw: p,
            }
        })
        .collect()
}

fn on_real_nodes(pods: &[PodView]) -> BTreeMap<String, PodView> {
    pods.iter()
        .filter(|p| REAL_NODES.contains(&p.node.as_str()))
        .map(|p| (p.node.clone(), p.clone()))
        .collect()
}

/// Waits until every real node runs exactly one ready pod matching `selector` (and, when
/// `hash` is given, from a template other than it); returns them by node.
async fn ready_on_each_real_node(
    namespace: &str,
    selector: &str,
    not_hash: Option<&str>,
    what: &str,
) -> BTreeMap<String, PodView> {
    eventually(Duration::from_secs(180), what, || async {
        let all = pods(namespace, selector);
        let real = on_real_nodes(&all);
        let count = all
            .iter()
            .filter(|p| REAL_NODES.contains(&p.node.as_str()))
            .count();
        let done = count == REAL_NODES.len()
            && real.len() == REAL_NODES.len()
            && real
                .values()
                .all(|p| p.ready && not_hash.is_none_or(|h| p.template_hash != h));
        done.then_some(real)
    })
    .await
}

/// One `stats`/`gap` line of an agent's log (`fanout subscribe --stats-every`).
#[derive(Debug, Clone, Copy, Default)]
struct Report {
    gap: bool,
    at_ms: u64,
    received: u64,
    lost: u64,
    /// Distinct publishers (envelope publisher ids) seen so far.
    publishers: u64,
}

fn agent_reports(pod: &str) -> Vec<Report> {
    let out = kubectl(&["logs", "-n", NAMESPACE, pod]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (kind, body) = line.split_once(' ')?;
            let gap = match kind {
                "stats" => false,
                "gap" => true,
                _ => return None,
            };
            let v: Value = serde_json::from_str(body).ok()?;
            Some(Report {
                gap,
                at_ms: v["at_ms"].as_u64()?,
                received: v["received"].as_u64()?,
                lost: v["lost"].as_u64()?,
                publishers: v["publishers"].as_u64().unwrap_or_default(),
            })
        })
        .collect()
}

fn latest(pod: &str) -> Report {
    agent_reports(pod).last().copied().unwrap_or_default()
}

/// The agents (by node) once each has received at least `more_than` messages more than `base`.
async fn agents_receiving(agents: &BTreeMap<String, PodView>, base: &BTreeMap<String, Report>, what: &str) {
    eventually(Duration::from_secs(60), what, || async {
        agents
            .iter()
            .all(|(node, pod)| latest(&pod.name).received > base.get(node).map_or(0, |r| r.received) + 20)
            .then_some(())
    })
    .await;
}

fn print_agents(title: &str, agents: &BTreeMap<String, PodView>) -> BTreeMap<String, Report> {
    eprintln!("{title}");
    eprintln!(
        "  {:<8} {:<28} {:>9} {:>6} {:>6} {:>10}",
        "node", "agent", "received", "gaps", "lost", "publishers"
    );
    let mut out = BTreeMap::new();
    for (node, pod) in agents {
        let reports = agent_reports(&pod.name);
        let last = reports.last().copied().unwrap_or_default();
        let gaps = reports.iter().filter(|r| r.gap).count();
        eprintln!(
            "  {node:<8} {:<28} {:>9} {gaps:>6} {:>6} {:>10}",
            pod.name, last.received, last.lost, last.publishers
        );
        out.insert(node.clone(), last);
    }
    out
}

/// Messages an agent lost after `since_ms`, and when it first saw that loss (the first message
/// after the outage: the moment it had recovered).
fn loss_since(pod: &str, since_ms: u64) -> (u64, Option<u64>) {
    let reports = agent_reports(pod);
    let before = reports
        .iter()
        .rev()
        .find(|r| r.at_ms < since_ms)
        .map_or(0, |r| r.lost);
    let last = reports.last().map_or(0, |r| r.lost);
    let first_gap = reports
        .iter()
        .find(|r| r.gap && r.at_ms >= since_ms)
        .map(|r| r.at_ms);
    (last.saturating_sub(before), first_gap)
}

fn node_stat(node: &str, path: &str) -> String {
    let out = run(
        &repo().join("hack/cluster.sh"),
        &["node-exec", node, "stat", "-c", "%a %u:%g %F", path],
        None,
    );
    assert!(
        out.status.success(),
        "stat {path} on {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn node_ls(node: &str, path: &str) -> String {
    let out = run(
        &repo().join("hack/cluster.sh"),
        &["node-exec", node, "ls", "-A", path],
        None,
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn lease_holder() -> String {
    json(&["get", "lease", "fanout-controller", "-n", RELEASE_NAMESPACE])["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn elapsed(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster and the image: run hack/test.sh"]
async fn user_path_on_real_nodes() {
    let started = Instant::now();
    require_cluster();
    let image = Images::load();
    eprintln!("image under test: {}", image.reference());

    // 1. The cluster: two real nodes next to two kwok nodes.
    for node in REAL_NODES {
        cluster_sh(&["add-real-node", node]);
    }
    for node in FAKE_NODES {
        add_node(node);
    }
    for node in REAL_NODES {
        let n = json(&["get", "node", node]);
        let info = &n["status"]["nodeInfo"];
        eprintln!(
            "node {node}: kubelet {}, runtime {}, {}",
            info["kubeletVersion"], info["containerRuntimeVersion"], info["osImage"]
        );
        assert!(
            info["containerRuntimeVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("containerd://2.")),
            "node {node} does not run containerd 2.x: {info}"
        );
        assert_eq!(n["metadata"]["labels"]["fanout.dev/node-kind"], "real");
    }
    eprintln!("{}", kubectl_ok(&["get", "nodes", "-o", "wide"]));
    eprintln!("[{:>6.1}s] 2 real nodes and 2 kwok nodes", elapsed(started));

    // 2. helm install: the controller as the chart's Deployment, on the real nodes, in a
    //    namespace that enforces the restricted Pod Security Standard.
    kubectl_ok(&["create", "namespace", RELEASE_NAMESPACE]);
    kubectl_ok(&[
        "label",
        "namespace",
        RELEASE_NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let chart = repo().join("charts/fanout");
    let install_args = [
        "--set",
        &format!("image.repository={}", image.repository),
        "--set",
        &format!("image.digest={}", image.digest),
        "--set",
        "nodeSelector.fanout\\.dev/node-kind=real",
    ];
    let mut args = vec![
        "install",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        RELEASE_NAMESPACE,
        "--wait",
        "--timeout",
        "180s",
    ];
    args.extend(install_args.iter().copied());
    helm_ok(&args);
    let controllers = eventually(
        Duration::from_secs(120),
        "both controller replicas ready on real nodes, one of them leading",
        || async {
            let pods = pods(RELEASE_NAMESPACE, "app.kubernetes.io/component=controller");
            let holder = lease_holder();
            (pods.len() == 2
                && pods
                    .iter()
                    .all(|p| p.ready && REAL_NODES.contains(&p.node.as_str()))
                && pods.iter().any(|p| p.name == holder))
            .then_some(pods)
        },
    )
    .await;
    for pod in &controllers {
        let spec = &pod.raw["spec"];
        let container = &spec["containers"][0];
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod.restarts, 0, "controller {} restarted", pod.name);
        eprintln!("controller {} on {} ready", pod.name, pod.node);
    }
    eprintln!(
        "[{:>6.1}s] helm install: controller running in-cluster, leader {}",
        elapsed(started),
        lease_holder()
    );

    // 3. kubectl apply the example group: a proxy on every node, through its init container on
    //    the real ones, Ready through its probe, its socket on the node's hostPath.
    kubectl_ok(&["create", "namespace", NAMESPACE]);
    // hostPath and a root init container: the proxies' namespace is `privileged` (docs/install.md).
    kubectl_ok(&[
        "label",
        "namespace",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    apply_example("fanoutgroup.yaml", &image, false);
    let proxy_selector = format!("fanout.dev/group={GROUP}");
    let proxies = ready_on_each_real_node(
        NAMESPACE,
        &proxy_selector,
        None,
        "a ready proxy on each real node",
    )
    .await;
    for (node, pod) in &proxies {
        let init = &pod.raw["status"]["initContainerStatuses"][0];
        assert_eq!(init["name"], "prepare-socket-dir");
        assert_eq!(
            init["state"]["terminated"]["exitCode"], 0,
            "init container on {node}: {init}"
        );
        assert_eq!(
            pod.raw["spec"]["containers"][0]["image"],
            image.reference().as_str()
        );
        // What the kubelet ran is what the controller wrote: the init container with exactly
        // CHOWN and FOWNER on top of nothing, the proxy probed on /readyz.
        let init_spec = &pod.raw["spec"]["initContainers"][0];
        assert_eq!(
            init_spec["securityContext"]["capabilities"],
            serde_json::json!({"add": ["CHOWN", "FOWNER"], "drop": ["ALL"]}),
            "init container capabilities on {node}"
        );
        let probe = &pod.raw["spec"]["containers"][0]["readinessProbe"]["httpGet"];
        assert_eq!(probe["path"], "/readyz", "readiness probe on {node}: {probe}");
        assert_eq!(
            node_stat(node, SOCKET_DIR),
            "2750 65532:2000 directory",
            "socket directory on {node}"
        );
        assert_eq!(
            node_stat(node, SOCKET),
            "660 65532:2000 socket",
            "socket on {node}"
        );
        eprintln!(
            "proxy {} on {node}: init container exit 0, Ready; {SOCKET} is 0660 65532:2000",
            pod.name
        );
    }
    let all_proxies = eventually(Duration::from_secs(60), "a proxy on all 4 nodes", || async {
        let all = pods(NAMESPACE, &proxy_selector);
        (all.len() == 4 && all.iter().all(|p| p.ready)).then_some(all)
    })
    .await;
    let want: Vec<String> = {
        let mut ips: Vec<String> = all_proxies
            .iter()
            .filter_map(|p| {
                p.raw["status"]["podIP"]
                    .as_str()
                    .map(|ip| format!("tcp://{ip}:7100"))
            })
            .collect();
        ips.sort();
        ips
    };
    eventually(
        Duration::from_secs(30),
        "the endpoint list naming all 4 proxies",
        || async {
            let cm = json(&["get", "configmap", &format!("{GROUP}-endpoints"), "-n", NAMESPACE]);
            let listed: Vec<String> = cm["data"]["endpoints"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            (listed == want).then_some(())
        },
    )
    .await;
    eprintln!(
        "{}",
        kubectl_ok(&["get", "fg,ds,pods", "-n", NAMESPACE, "-o", "wide"])
    );
    eprintln!("[{:>6.1}s] group published: {want:?}", elapsed(started));

    // 4. Agents on every real node and a publisher pod following the group through the API.
    apply_example("agent.yaml", &image, true);
    apply_example("publisher.yaml", &image, true);
    let agents =
        ready_on_each_real_node(NAMESPACE, "app=port-agent", None, "an agent on each real node").await;
    agents_receiving(
        &agents,
        &BTreeMap::new(),
        "every agent receiving from the publisher",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_delete = print_agents("every agent receives (publisher: 200 msg/s):", &agents);
    for (node, report) in &before_delete {
        assert_eq!(report.lost, 0, "agent on {node} lost messages in steady state");
    }
    let publisher = pods(NAMESPACE, "app=port-publisher");
    assert_eq!(publisher.len(), 1);
    // The publisher's ServiceAccount can read the endpoint list and nothing more (docs/rbac.md).
    let publisher_sa = format!("--as=system:serviceaccount:{NAMESPACE}:port-publisher");
    for (verb, resource, allowed) in [
        ("list", "endpointslices.discovery.k8s.io", "yes"),
        ("watch", "endpointslices.discovery.k8s.io", "yes"),
        ("get", "secrets", "no"),
        ("list", "pods", "no"),
        ("create", "endpointslices.discovery.k8s.io", "no"),
        ("get", "configmaps", "no"),
    ] {
        let out = run(
            &tool("kubectl"),
            &["auth", "can-i", verb, resource, "-n", NAMESPACE, &publisher_sa],
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            allowed,
            "publisher ServiceAccount: can-i {verb} {resource}"
        );
    }
    eprintln!(
        "[{:>6.1}s] publisher {} on {} reaches every agent",
        elapsed(started),
        publisher[0].name,
        publisher[0].node
    );
    // It sized its frames of several messages by the cap the controller published with the
    // group (the example's 16 KiB; the default --batch-bytes is 16 KiB less CURVE's 33 bytes).
    let publisher_log = kubectl(&["logs", "-n", NAMESPACE, &publisher[0].name]);
    let publisher_log = String::from_utf8_lossy(&publisher_log.stdout);
    assert!(
        publisher_log
            .lines()
            .any(|line| line.contains("within the group's cap")
                && line.contains("max_message_bytes=16384")
                && line.contains("batch_bytes=16351")),
        "the publisher read the group's maxMessageBytes:\n{publisher_log}"
    );

    // 5. A proxy pod deleted: the DaemonSet replaces it, the publisher follows, the agent
    //    resubscribes; only that node loses messages.
    let victim_node = REAL_NODES[1];
    let victim = proxies[victim_node].name.clone();
    let deleted_at = now_ms();
    kubectl_ok(&["delete", "pod", "-n", NAMESPACE, &victim, "--wait=false"]);
    let replaced = eventually(
        Duration::from_secs(120),
        "a new ready proxy on the node whose proxy was deleted",
        || async {
            let real = on_real_nodes(&pods(NAMESPACE, &proxy_selector));
            real.get(victim_node)
                .filter(|p| p.name != victim && p.ready)
                .cloned()
        },
    )
    .await;
    let ready_ms = now_ms();
    let base = before_delete.clone();
    agents_receiving(
        &agents,
        &base,
        "every agent receiving again after the proxy was replaced",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    print_agents("after a proxy pod was deleted and replaced:", &agents);
    let (lost, recovered_at) = loss_since(&agents[victim_node].name, deleted_at);
    let recovery = recovered_at.map(|at| at.saturating_sub(deleted_at));
    eprintln!(
        "MEASURED proxy pod deleted on {victim_node}: replacement {} ready after {} ms; the agent \
         there lost {lost} messages and received again {} ms after the delete",
        replaced.name,
        ready_ms - deleted_at,
        recovery.map_or("(no loss seen: at once)".to_string(), |ms| ms.to_string())
    );
    for node in REAL_NODES.iter().filter(|n| **n != victim_node) {
        let (lost, _) = loss_since(&agents[*node].name, deleted_at);
        assert_eq!(
            lost, 0,
            "the agent on {node} lost messages when another node's proxy went away"
        );
    }
    eprintln!("[{:>6.1}s] proxy replaced, others untouched", elapsed(started));

    // 5b. A CURVE group (examples/secure/) next to the plain one: only the allowed key
    //     publishes, and revoking it cuts the publisher off (`curve_phase`).
    curve_phase(&image, started).await;

    // 6. helm upgrade with a changed value rolls the controller; the new one leads and acts.
    let old_controllers: Vec<String> = controllers.iter().map(|p| p.name.clone()).collect();
    let mut args = vec![
        "upgrade",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        RELEASE_NAMESPACE,
        "--wait",
        "--timeout",
        "180s",
        "--set",
        "logLevel=info\\,fanout=debug",
    ];
    args.extend(install_args.iter().copied());
    helm_ok(&args);
    let rolled = eventually(
        Duration::from_secs(120),
        "the controller rolled: two new replicas, one leading",
        || async {
            let pods = pods(RELEASE_NAMESPACE, "app.kubernetes.io/component=controller");
            let holder = lease_holder();
            (pods.len() == 2
                && pods.iter().all(|p| p.ready && !old_controllers.contains(&p.name))
                && pods.iter().any(|p| p.name == holder))
            .then_some(pods)
        },
    )
    .await;
    eprintln!(
        "[{:>6.1}s] helm upgrade rolled the controller: {:?}, leader {}",
        elapsed(started),
        rolled.iter().map(|p| &p.name).collect::<Vec<_>>(),
        lease_holder()
    );

    //    A changed FanoutGroup rolls the proxies (the new controller writes the DaemonSet).
    let hash_before = on_real_nodes(&pods(NAMESPACE, &proxy_selector))[REAL_NODES[0]]
        .template_hash
        .clone();
    let base = print_agents("before the proxies roll:", &agents);
    let rolled_at = now_ms();
    kubectl_ok(&[
        "patch",
        "fanoutgroup",
        GROUP,
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        r#"{"spec":{"heartbeatSeconds":4}}"#,
    ]);
    ready_on_each_real_node(
        NAMESPACE,
        &proxy_selector,
        Some(&hash_before),
        "proxies of the new template ready on every real node",
    )
    .await;
    let generation = json(&["get", "fanoutgroup", GROUP, "-n", NAMESPACE]);
    eventually(
        Duration::from_secs(60),
        "status observing the new generation",
        || async {
            let g = json(&["get", "fanoutgroup", GROUP, "-n", NAMESPACE]);
            (g["status"]["observedGeneration"] == generation["metadata"]["generation"]).then_some(())
        },
    )
    .await;
    agents_receiving(&agents, &base, "every agent receiving after the proxies rolled").await;
    for node in REAL_NODES {
        let (lost, recovered_at) = loss_since(&agents[node].name, rolled_at);
        eprintln!(
            "MEASURED proxy rollout on {node}: lost {lost} messages, receiving again {} ms after the patch",
            recovered_at.map_or("(no loss)".to_string(), |at| at
                .saturating_sub(rolled_at)
                .to_string())
        );
    }
    eprintln!("[{:>6.1}s] a changed group rolled the proxies", elapsed(started));
    // The agents' and the publisher's counts cover the whole test only if none restarted (a
    // restarted container starts counting from zero, hiding what it lost before).
    for pod in pods(NAMESPACE, "app in (port-agent,port-publisher)") {
        assert_eq!(
            pod.restarts, 0,
            "{} restarted: its loss counts are incomplete",
            pod.name
        );
    }

    // 7. helm uninstall and deleting the CRD leave nothing behind.
    kubectl_ok(&[
        "delete",
        "deployment",
        "port-publisher",
        "-n",
        NAMESPACE,
        "--wait=true",
    ]);
    kubectl_ok(&[
        "delete",
        "daemonset",
        "port-agent",
        "-n",
        NAMESPACE,
        "--wait=true",
    ]);
    helm_ok(&[
        "uninstall",
        RELEASE,
        "-n",
        RELEASE_NAMESPACE,
        "--wait",
        "--timeout",
        "120s",
    ]);
    kubectl_ok(&[
        "delete",
        "crd",
        "fanoutgroups.fanout.dev",
        "--wait=true",
        "--timeout=120s",
    ]);
    // The garbage collector deletes the group's children once their owner is gone.
    eventually(
        Duration::from_secs(120),
        "nothing of fanout left in the API",
        || async {
            let kinds = "daemonsets,deployments,pods,services,endpointslices,configmaps,secrets,leases,serviceaccounts,roles,rolebindings,poddisruptionbudgets,networkpolicies";
            let left: String = ["app.kubernetes.io/managed-by in (fanout-controller,Helm)", "fanout.dev/group"]
                .iter()
                .map(|selector| kubectl_ok(&["get", kinds, "-A", "-l", selector, "-o", "name"]))
                .collect();
            let cluster = kubectl_ok(&[
                "get",
                "clusterroles,clusterrolebindings,crd",
                "-o",
                "name",
            ]);
            let cluster: Vec<&str> = cluster.lines().filter(|l| l.contains("fanout")).collect();
            let group_pods = kubectl_ok(&["get", "pods", "-n", NAMESPACE, "-o", "name"]);
            (left.trim().is_empty() && cluster.is_empty() && group_pods.trim().is_empty()).then_some(())
        },
    )
    .await;
    for node in REAL_NODES {
        let left = node_ls(node, SOCKET_DIR);
        assert!(!left.contains(".sock"), "a socket is left on {node}: {left}");
    }
    eprintln!(
        "[{:>6.1}s] helm uninstall + CRD deleted: no objects, no sockets left",
        elapsed(started)
    );

    // 8. A real node removed: its Node object goes, nothing of it keeps running.
    cluster_sh(&["remove-real-node", REAL_NODES[1]]);
    let nodes = kubectl_ok(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.contains(REAL_NODES[1]), "{nodes}");
    for node in FAKE_NODES {
        remove_node(node);
    }
    kubectl_ok(&[
        "delete",
        "namespace",
        NAMESPACE,
        RELEASE_NAMESPACE,
        "--wait=false",
    ]);
    eprintln!("[{:>6.1}s] done", elapsed(started));
}

// ---- The CURVE phase (examples/secure/) ----

/// The group of `examples/secure/fanoutgroup.yaml`.
const SECURE_GROUP: &str = "secure-updates";
/// The allowed publisher of `examples/secure/publisher.yaml`, and the test's second copy of it
/// with a key the group never admits.
const GOOD_PUBLISHER: &str = "secure-publisher";
const BAD_PUBLISHER: &str = "intruder";
/// How long an agent must see no new message to count as having stopped receiving.
const QUIET_WINDOW_MS: u64 = 5_000;

/// `fanout keygen --out-dir DIR`: the public key (Z85), as it printed it.
fn keygen(dir: &std::path::Path) -> String {
    let out = run(
        &fanout_binary(),
        &["keygen", "--out-dir", dir.to_str().unwrap()],
        None,
    );
    assert!(
        out.status.success(),
        "fanout keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let file = std::fs::read_to_string(dir.join("public.key")).unwrap();
    assert_eq!(file.trim(), public, "keygen printed another key than it wrote");
    assert_eq!(public.len(), 40, "a Z85 public key: {public:?}");
    public
}

/// The decoded data of a Secret, if it exists.
fn secret_data(namespace: &str, name: &str) -> Option<(Value, BTreeMap<String, Vec<u8>>)> {
    let out = kubectl(&["get", "secret", name, "-n", namespace, "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let raw: Value = serde_json::from_slice(&out.stdout).expect("a Secret as JSON");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(raw.clone()).expect("a Secret");
    let data = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Some((raw, data))
}

/// The keys listed in an allow-list file: one Z85 key a line, `#` comments and blank lines
/// ignored.
fn allow_list_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// `IP:httpPort` of a proxy pod.
fn proxy_http(pod: &PodView) -> String {
    let ip = pod.raw["status"]["podIP"].as_str().unwrap_or_default();
    format!("{ip}:9102")
}

/// A revoked key's messages stop within this long of the allow-list ConfigMap's rewrite (the
/// proxies watch it through the API; issue 10 §4).
const REVOCATION_BOUND_MS: i64 = 1_000;
/// What measuring adds to that bound: the agents report every 100 ms, plus 150 ms for a
/// report that runs late.
const REVOCATION_MARGIN_MS: i64 = 250;

/// When an agent stopped receiving: the `at_ms` of its first report (after `since_ms`) that
/// already had its final count, once `QUIET_WINDOW_MS` of reports have shown no more; and the
/// `at_ms` of the report before it (the last message came between the two).
fn stopped_receiving(pod: &str, since_ms: u64) -> Option<(u64, u64)> {
    let reports: Vec<Report> = agent_reports(pod).into_iter().filter(|r| !r.gap).collect();
    let last = *reports.last()?;
    let first_final = reports.iter().position(|r| r.received == last.received)?;
    let stopped = reports[first_final];
    let before = first_final
        .checked_sub(1)
        .map_or(stopped.at_ms, |i| reports[i].at_ms);
    (last.at_ms >= since_ms
        && last.at_ms.saturating_sub(stopped.at_ms) >= QUIET_WINDOW_MS
        && last.at_ms.saturating_sub(since_ms) >= QUIET_WINDOW_MS)
        .then_some((before, stopped.at_ms))
}

/// On a failure inside the CURVE phase, what the cluster looked like and what the controller,
/// the secure group's proxies and its publishers logged (before with-cluster.sh tears it down).
struct CurveDiagnostics;

impl Drop for CurveDiagnostics {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let show = |args: &[&str]| {
            let out = kubectl(args);
            eprintln!(
                "---- kubectl {} ----\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        eprintln!("==== the CURVE phase failed: diagnostics ====");
        show(&["get", "fanoutgroup", SECURE_GROUP, "-n", NAMESPACE, "-o", "yaml"]);
        show(&[
            "get",
            "pods,daemonsets,deployments,configmaps,secrets,endpointslices",
            "-n",
            NAMESPACE,
            "-o",
            "wide",
        ]);
        show(&[
            "get",
            "configmap",
            &format!("{SECURE_GROUP}-curve-allow"),
            "-n",
            NAMESPACE,
            "-o",
            "yaml",
        ]);
        show(&[
            "get",
            "endpointslices",
            "-n",
            NAMESPACE,
            "-l",
            &format!("fanout.dev/group={SECURE_GROUP}"),
            "-o",
            "yaml",
        ]);
        show(&["get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"]);
        // Never kubectl_ok or pods() here: a panic while unwinding would abort the process.
        let listed = |namespace: &str, selector: &str| -> Vec<(String, String)> {
            let out = kubectl(&["get", "pods", "-n", namespace, "-l", selector, "-o", "json"]);
            let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            list["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter(|p| {
                    p["spec"]["nodeName"]
                        .as_str()
                        .is_some_and(|n| REAL_NODES.contains(&n))
                })
                .filter_map(|p| p["metadata"]["name"].as_str())
                .map(|name| (namespace.to_string(), name.to_string()))
                .collect()
        };
        let mut logged = listed(RELEASE_NAMESPACE, "app.kubernetes.io/component=controller");
        logged.extend(listed(NAMESPACE, &format!("fanout.dev/group={SECURE_GROUP}")));
        logged.extend(listed(
            NAMESPACE,
            &format!("app in ({GOOD_PUBLISHER},{BAD_PUBLISHER},secure-agent,secure-witness)"),
        ));
        for (namespace, pod) in logged {
            show(&["logs", "-n", &namespace, &pod, "--all-containers", "--tail=150"]);
        }
        eprintln!("==== end of diagnostics ====");
    }
}

/// Step 5b: a CURVE group (`examples/secure/`) on the real nodes. The allowed publisher reaches
/// every agent, a publisher with a key the group does not admit reaches none, and taking the
/// allowed key off the group cuts its publisher off; then everything of the phase is deleted.
async fn curve_phase(image: &Images, started: Instant) {
    let _diagnostics = CurveDiagnostics;
    let phase_started = Instant::now();

    // Keys as a user makes them, and their Secrets. The intruder's public key is in a Secret
    // too, and the group names it, but without the fanout.dev/public-key label: the controller
    // must not admit it (and says so in status.unresolvedKeys).
    let keys = tempfile::tempdir().unwrap();
    let good_dir = keys.path().join(GOOD_PUBLISHER);
    let bad_dir = keys.path().join(BAD_PUBLISHER);
    let good_key = keygen(&good_dir);
    let bad_key = keygen(&bad_dir);
    assert_ne!(good_key, bad_key);
    for (name, dir) in [(GOOD_PUBLISHER, &good_dir), (BAD_PUBLISHER, &bad_dir)] {
        let secret_file = format!("secret.key={}", dir.join("secret.key").display());
        let public_file = format!("public.key={}", dir.join("public.key").display());
        kubectl_ok(&[
            "create",
            "secret",
            "generic",
            &format!("{name}-key"),
            "-n",
            NAMESPACE,
            "--from-file",
            &secret_file,
        ]);
        kubectl_ok(&[
            "create",
            "secret",
            "generic",
            &format!("{name}-public"),
            "-n",
            NAMESPACE,
            "--from-file",
            &public_file,
        ]);
    }
    kubectl_ok(&[
        "label",
        "secret",
        &format!("{GOOD_PUBLISHER}-public"),
        "-n",
        NAMESPACE,
        "fanout.dev/public-key=true",
    ]);
    let bad_public = format!("{BAD_PUBLISHER}-public");
    let names_line = format!("        - {GOOD_PUBLISHER}-public\n");
    let both_lines = format!("{names_line}        - {bad_public}\n");
    let applied_at = now_ms();
    apply_example_with(
        "secure/fanoutgroup.yaml",
        image,
        false,
        &[(&names_line, &both_lines)],
    );
    let secure_selector = format!("fanout.dev/group={SECURE_GROUP}");
    let secure_proxies = ready_on_each_real_node(
        NAMESPACE,
        &secure_selector,
        None,
        "a ready CURVE proxy on each real node",
    )
    .await;
    let proxies_ready_ms = now_ms() - applied_at;
    for (node, pod) in &secure_proxies {
        let args = pod.raw["spec"]["containers"][0]["args"].to_string();
        for flag in [
            "--curve-secret-key-file",
            "--allow-publishers-file",
            "--allow-lists-configmap",
        ] {
            assert!(
                args.contains(flag),
                "proxy {} on {node} runs without {flag}: {args}",
                pod.name
            );
        }
    }
    eprintln!(
        "[{:>6.1}s] CURVE group {SECURE_GROUP}: a ready proxy on each real node {proxies_ready_ms} ms after apply",
        elapsed(started)
    );

    // What the controller made: the server key pair it owns, its public key in three places
    // that agree, the allow-list with the good key only, the unlabelled Secret reported.
    let group = json(&["get", "fanoutgroup", SECURE_GROUP, "-n", NAMESPACE]);
    let group_uid = group["metadata"]["uid"].as_str().unwrap().to_string();
    let curve_secret = format!("{SECURE_GROUP}-curve");
    let (raw, data) = eventually(
        Duration::from_secs(60),
        "the group's server key pair Secret",
        || async { secret_data(NAMESPACE, &curve_secret) },
    )
    .await;
    let owned = raw["metadata"]["ownerReferences"].as_array().is_some_and(|refs| {
        refs.iter().any(|r| {
            r["kind"] == "FanoutGroup" && r["name"] == SECURE_GROUP && r["uid"] == group_uid.as_str()
        })
    });
    assert!(
        owned,
        "Secret {curve_secret} is not owned by the group: {}",
        raw["metadata"]
    );
    assert!(
        data.contains_key("secret.key"),
        "Secret {curve_secret} has no secret.key: keys {:?}",
        data.keys().collect::<Vec<_>>()
    );
    let server_key = String::from_utf8_lossy(
        data.get("public.key")
            .unwrap_or_else(|| panic!("Secret {curve_secret} has no public.key")),
    )
    .trim()
    .to_string();
    assert_eq!(server_key.len(), 40, "server public key {server_key:?}");
    assert_ne!(server_key, good_key);
    let endpoints_cm = format!("{SECURE_GROUP}-endpoints");
    eventually(
        Duration::from_secs(60),
        "status.curvePublicKey, every slice's annotation and the endpoints ConfigMap naming the server key",
        || async {
            let g = json(&["get", "fanoutgroup", SECURE_GROUP, "-n", NAMESPACE]);
            let status_ok = g["status"]["curvePublicKey"].as_str() == Some(server_key.as_str());
            let slices = json(&["get", "endpointslices", "-n", NAMESPACE, "-l", &secure_selector]);
            let slices = slices["items"].as_array().cloned().unwrap_or_default();
            let slices_ok = !slices.is_empty()
                && slices.iter().all(|s| {
                    s["metadata"]["annotations"]["fanout.dev/curve-public-key"].as_str()
                        == Some(server_key.as_str())
                });
            let cm = json(&["get", "configmap", &endpoints_cm, "-n", NAMESPACE]);
            let cm_ok = cm["data"]["curve-public-key"].as_str().map(str::trim) == Some(server_key.as_str());
            (status_ok && slices_ok && cm_ok).then_some(())
        },
    )
    .await;
    let allow_cm = format!("{SECURE_GROUP}-curve-allow");
    let allowed_publishers = || {
        let out = kubectl(&["get", "configmap", &allow_cm, "-n", NAMESPACE, "-o", "json"]);
        out.status.success().then(|| {
            let cm: Value = serde_json::from_slice(&out.stdout).unwrap();
            allow_list_keys(cm["data"]["publishers"].as_str().unwrap_or_default())
        })
    };
    let listed = eventually(
        Duration::from_secs(60),
        "the allow-list ConfigMap naming the good publisher's key",
        || async { allowed_publishers().filter(|keys| keys.contains(&good_key)) },
    )
    .await;
    assert!(
        !listed.contains(&bad_key),
        "{allow_cm} admits the key of an unlabelled Secret: {listed:?}"
    );
    let unresolved = eventually(
        Duration::from_secs(60),
        "status.unresolvedKeys naming the unlabelled Secret",
        || async {
            let g = json(&["get", "fanoutgroup", SECURE_GROUP, "-n", NAMESPACE]);
            let list = g["status"]["unresolvedKeys"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            list.iter()
                .any(|v| v.as_str().is_some_and(|s| s.contains(&bad_public)))
                .then_some(list)
        },
    )
    .await;
    eprintln!(
        "[{:>6.1}s] {curve_secret} owned by the group; server key {server_key} in status, slices and \
         {endpoints_cm}; {allow_cm} lists {} key(s), the good one, not the intruder's; unresolved: {unresolved:?}",
        elapsed(started),
        listed.len()
    );

    // Agents on the secure group's socket: the example's (topic `ports`) and a witness that
    // takes every topic, so it would see the intruder's `intruder` messages too. Then the
    // allowed publisher and the intruder (another key, topic `intruder`).
    // Reports every 100 ms (the example says every second): when an agent stopped receiving
    // is then known to 100 ms, for the revocation's bound below.
    let often = ("--stats-every=1", "--stats-every=0.1");
    apply_example_with("secure/agent.yaml", image, true, &[often]);
    apply_example_with(
        "secure/agent.yaml",
        image,
        true,
        &[
            often,
            ("secure-agent", "secure-witness"),
            ("            - --topic=ports\n", ""),
        ],
    );
    apply_example("secure/publisher.yaml", image, true);
    apply_example_with(
        "secure/publisher.yaml",
        image,
        true,
        &[
            (GOOD_PUBLISHER, BAD_PUBLISHER),
            ("--topic=ports", "--topic=intruder"),
        ],
    );
    let agents = ready_on_each_real_node(
        NAMESPACE,
        "app=secure-agent",
        None,
        "a secure-group agent on each real node",
    )
    .await;
    let witnesses = ready_on_each_real_node(
        NAMESPACE,
        "app=secure-witness",
        None,
        "a witness (every topic) on each real node",
    )
    .await;
    for app in [GOOD_PUBLISHER, BAD_PUBLISHER] {
        eventually(
            Duration::from_secs(120),
            &format!("publisher {app} running"),
            || async {
                let p = pods(NAMESPACE, &format!("app={app}"));
                (p.len() == 1 && p[0].ready).then_some(())
            },
        )
        .await;
    }
    agents_receiving(
        &agents,
        &BTreeMap::new(),
        "every secure-group agent receiving from the allowed publisher",
    )
    .await;
    agents_receiving(
        &witnesses,
        &BTreeMap::new(),
        "every witness receiving from the allowed publisher",
    )
    .await;
    // The intruder is really trying: every real node's proxy refuses its key at the handshake.
    let refused = eventually(
        Duration::from_secs(60),
        "every real node's proxy refusing the intruder's key (fanout_proxy_auth_refused_total{reason=\"unknown_key\"})",
        || async {
            let mut counts = BTreeMap::new();
            for (node, pod) in &secure_proxies {
                let n = metric_sum(
                    &proxy_http(pod),
                    "fanout_proxy_auth_refused_total",
                    "reason=\"unknown_key\"",
                )
                .unwrap_or_else(|e| panic!("metrics of proxy {} on {node}: {e}", pod.name));
                counts.insert(node.clone(), n);
            }
            counts.values().all(|n| *n > 0.0).then_some(counts)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before_revoke = print_agents("secure group, agents (topic ports):", &agents);
    let witness_before = print_agents("secure group, witnesses (every topic):", &witnesses);
    let good_pod = pods(NAMESPACE, &format!("app={GOOD_PUBLISHER}"));
    assert_eq!(good_pod[0].restarts, 0, "the allowed publisher restarted");
    for (node, report) in before_revoke.iter().chain(witness_before.iter()) {
        assert!(report.received > 0, "nothing reached {node}");
        assert_eq!(
            report.publishers, 1,
            "a subscriber on {node} saw {} publishers: the intruder got through",
            report.publishers
        );
        assert_eq!(report.lost, 0, "a subscriber on {node} lost messages");
    }
    eprintln!(
        "[{:>6.1}s] the allowed publisher reaches every agent, the intruder none (refused at the handshake: {refused:?})",
        elapsed(started)
    );

    // Revocation: the good key's Secret taken off the group. The controller rewrites the
    // allow-list, every proxy hears of it through its watch on the ConfigMap and closes the
    // connections (the kubelet refreshes the mounted file only later). A watch of the test's
    // own notes when the rewrite happened.
    let client = kube::Client::try_default()
        .await
        .expect("a client for the test cluster");
    let rewrites = ConfigMapVersions::watch(client, NAMESPACE, &allow_cm, "publishers").await;
    let revoking = Instant::now();
    let revoked_at = now_ms();
    kubectl_ok(&[
        "patch",
        "fanoutgroup",
        SECURE_GROUP,
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"security":{{"allowedPublishers":{{"secretNames":["{bad_public}"]}}}}}}}}"#),
    ]);
    let rewritten_at = eventually(
        Duration::from_secs(60),
        "the allow-list ConfigMap without the revoked key",
        || async {
            rewrites
                .first_since(revoking, |text| !allow_list_keys(text).contains(&good_key))
                .map(|version| version.at_ms)
        },
    )
    .await;
    let rewritten_ms = rewritten_at - revoked_at;
    let subscribers: Vec<(String, String)> = agents
        .iter()
        .chain(witnesses.iter())
        .map(|(node, pod)| (node.clone(), pod.name.clone()))
        .collect();
    let stops = eventually(
        Duration::from_secs(90),
        "every subscriber of the secure group receiving nothing more after the revocation",
        || async {
            subscribers
                .iter()
                .map(|(node, pod)| stopped_receiving(pod, revoked_at).map(|s| (node.clone(), pod.clone(), s)))
                .collect::<Option<Vec<_>>>()
        },
    )
    .await;
    let after_revoke = print_agents("secure group after the revocation, agents:", &agents);
    print_agents("secure group after the revocation, witnesses:", &witnesses);
    let mut slowest = i64::MIN;
    for (node, pod, (last_seen_before, stopped_at)) in &stops {
        let from = *last_seen_before as i64 - rewritten_at as i64;
        let to = *stopped_at as i64 - rewritten_at as i64;
        slowest = slowest.max(to);
        eprintln!(
            "MEASURED CURVE revocation on {node} ({pod}): last message between {from:+} and {to:+} ms from the \
             allow-list ConfigMap rewrite (rewritten {rewritten_ms} ms after the patch)"
        );
    }
    for (node, report) in &after_revoke {
        assert!(
            report.received > before_revoke[node].received,
            "the agent on {node} got nothing between the checks and the revocation"
        );
    }
    for (node, pod) in &secure_proxies {
        let addr = proxy_http(pod);
        let refused = metric_samples(&addr, "fanout_proxy_auth_refused_total").unwrap_or_default();
        let dropped = metric_samples(&addr, "fanout_proxy_refused_messages_total").unwrap_or_default();
        eprintln!(
            "MEASURED CURVE proxy {} on {node}: fanout_proxy_auth_refused_total {refused:?}; \
             fanout_proxy_refused_messages_total {dropped:?}",
            pod.name
        );
    }
    // Within a second of the rewrite, plus the agents' report interval: an agent's last
    // message is known only as "before its first report with the final count", which comes up
    // to 100 ms later (and a report may run late by a scheduling tick: 150 ms more).
    assert!(
        slowest <= REVOCATION_BOUND_MS + REVOCATION_MARGIN_MS,
        "a subscriber still received {slowest} ms after the allow-list was rewritten (bound {REVOCATION_BOUND_MS} ms \
         + {REVOCATION_MARGIN_MS} ms for the agents' reports)"
    );
    eprintln!(
        "[{:>6.1}s] revoked key cut off within {slowest} ms of the allow-list rewrite ({rewritten_ms} ms after the patch)",
        elapsed(started)
    );

    // Everything of the phase goes, so that the last step finds nothing left.
    for (kind, names) in [
        ("deployment", vec![GOOD_PUBLISHER, BAD_PUBLISHER]),
        ("daemonset", vec!["secure-agent", "secure-witness"]),
        ("fanoutgroup", vec![SECURE_GROUP]),
        (
            "rolebinding",
            vec!["secure-publisher-reads-groups", "intruder-reads-groups"],
        ),
        ("role", vec!["secure-group-reader"]),
        ("serviceaccount", vec![GOOD_PUBLISHER, BAD_PUBLISHER]),
    ] {
        let mut args = vec!["delete", kind, "-n", NAMESPACE, "--wait=true"];
        args.extend(names);
        kubectl_ok(&args);
    }
    let test_secrets: Vec<String> = [GOOD_PUBLISHER, BAD_PUBLISHER]
        .iter()
        .flat_map(|n| [format!("{n}-key"), format!("{n}-public")])
        .collect();
    let mut args = vec!["delete", "secret", "-n", NAMESPACE];
    args.extend(test_secrets.iter().map(String::as_str));
    kubectl_ok(&args);
    eventually(
        Duration::from_secs(120),
        "nothing of the secure group left",
        || async {
            let kinds = "daemonsets,deployments,pods,services,endpointslices,configmaps,secrets";
            let owned = kubectl_ok(&[
                "get",
                kinds,
                "-n",
                NAMESPACE,
                "-l",
                &secure_selector,
                "-o",
                "name",
            ]);
            let workloads = kubectl_ok(&[
                "get",
                "pods",
                "-n",
                NAMESPACE,
                "-l",
                &format!("app in ({GOOD_PUBLISHER},{BAD_PUBLISHER},secure-agent,secure-witness)"),
                "-o",
                "name",
            ]);
            let secrets = kubectl_ok(&["get", "secrets", "-n", NAMESPACE, "-o", "name"]);
            let secret_left = secrets
                .lines()
                .any(|l| l.contains(SECURE_GROUP) || l.contains(GOOD_PUBLISHER) || l.contains(BAD_PUBLISHER));
            let configmaps = kubectl_ok(&["get", "configmaps", "-n", NAMESPACE, "-o", "name"]);
            (owned.trim().is_empty()
                && workloads.trim().is_empty()
                && !secret_left
                && !configmaps.contains(SECURE_GROUP))
            .then_some(())
        },
    )
    .await;
    eprintln!(
        "[{:>6.1}s] CURVE phase done in {:.1} s; everything of it deleted",
        elapsed(started),
        elapsed(phase_started)
    );
}

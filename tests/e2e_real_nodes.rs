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

/// `kubectl apply` of an example file with the image replaced by the one built here. Pods of
/// workloads (`real_only`) go to the real nodes: on a kwok node nothing would run them.
fn apply_example(file: &str, image: &Images, real_only: bool) {
    let text = std::fs::read_to_string(repo().join("examples").join(file)).unwrap();
    assert!(
        file == "fanoutgroup.yaml" || text.contains(EXAMPLE_IMAGE),
        "examples/{file} no longer names {EXAMPLE_IMAGE}"
    );
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
        "  {:<8} {:<28} {:>9} {:>6} {:>6}",
        "node", "agent", "received", "gaps", "lost"
    );
    let mut out = BTreeMap::new();
    for (node, pod) in agents {
        let reports = agent_reports(&pod.name);
        let last = reports.last().copied().unwrap_or_default();
        let gaps = reports.iter().filter(|r| r.gap).count();
        eprintln!(
            "  {node:<8} {:<28} {:>9} {gaps:>6} {:>6}",
            pod.name, last.received, last.lost
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
    eprintln!(
        "[{:>6.1}s] publisher {} on {} reaches every agent",
        elapsed(started),
        publisher[0].name,
        publisher[0].node
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

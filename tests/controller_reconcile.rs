//! One reconcile against a mocked API server (tower-test): which requests, in which order, with
//! which server-side-apply parameters; then that a second pass over unchanged state writes
//! nothing, and that one pod changing rewrites only its slice (plus list, status, event).
//!
//! Most passes here run with no report interval, so each writes its own status and Events at
//! once; `a_report_waits_for_its_interval_then_carries_the_whole_interval` runs with one.

use fanout::controller::children::Caches;
use fanout::controller::metrics::Metrics;
use fanout::controller::objects::GroupId;
use fanout::controller::reconcile::{Context, reconcile};
use fanout::crd::{FanoutGroup, FanoutGroupSpec, FanoutGroupStatus};
use futures::pin_mut;
use http::{Request, Response};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// One request the controller made.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

impl Seen {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

fn group(status: Option<FanoutGroupStatus>) -> FanoutGroup {
    let mut group = FanoutGroup::new("updates", FanoutGroupSpec::default());
    group.metadata.namespace = Some("net".into());
    group.metadata.uid = Some("uid-1".into());
    group.metadata.generation = Some(1);
    group.status = status;
    group
}

fn pod(name: &str, ip: &str, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "net", "uid": format!("uid-{name}"),
                     "labels": {"fanout.dev/group": "updates"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                          "name": "updates", "uid": DS_UID, "controller": true}]},
        "spec": {"nodeName": format!("node-{name}"), "containers": []},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    }))
    .expect("a valid pod")
}

/// The uid the API server gave the group's DaemonSet (its pods' owner).
const DS_UID: &str = "ds-uid";

/// The group's DaemonSet as the cache holds it: what the controller applied, with its uid.
fn cached_daemon_set(mut applied: DaemonSet) -> DaemonSet {
    applied.metadata.uid = Some(DS_UID.into());
    applied
}

/// A DaemonSet already there before the first pass (labels as the controller writes them).
fn existing_daemon_set() -> DaemonSet {
    cached_daemon_set(
        serde_json::from_value(json!({
            "metadata": {"name": "updates", "namespace": "net",
                         "labels": {"fanout.dev/group": "updates",
                                    "app.kubernetes.io/managed-by": "fanout-controller"}},
            "spec": {"selector": {}, "template": {}}
        }))
        .expect("a valid DaemonSet"),
    )
}

fn store_of<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    fed_store_of(objects).0
}

/// A synced cache of `objects`, and its writer to feed it later watch events.
fn fed_store_of<K>(objects: Vec<K>) -> (Store<K>, reflector::store::Writer<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    (store, writer)
}

/// Objects as the caches would hold them after earlier applies.
#[derive(Default, Clone)]
struct State {
    pods: Vec<Pod>,
    slices: Vec<EndpointSlice>,
    daemon_sets: Vec<DaemonSet>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<k8s_openapi::api::core::v1::Secret>,
}

/// Runs one reconcile of `group` over `state` against a mock API server that answers every
/// request (echoing apply bodies; the group for status patches). Returns the requests.
async fn reconcile_once(group: FanoutGroup, state: State) -> (Result<(), String>, Vec<Seen>) {
    reconcile_with(group, state, Some("img:1"), None, false).await
}

/// `reconcile_once` by a replica that applied every child moments ago, so the skip-if-unchanged
/// check is in force (a fresh replica's first pass applies everything to undo drift).
async fn reconcile_warm(group: FanoutGroup, state: State) -> (Result<(), String>, Vec<Seen>) {
    reconcile_with(group, state, Some("img:1"), None, true).await
}

/// A mock API server that answers every request (echoing apply bodies; `group` for status
/// patches) and records them. `reject`: requests whose path ends with `.0` get a 422 with
/// message `.1`.
fn mock_api(
    group: &FanoutGroup,
    reject: Option<(&'static str, &'static str)>,
) -> (Client, Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let answered_group = group.clone();
    let server = tokio::spawn(async move {
        pin_mut!(handle);
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("a readable body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON body")
            };
            let entry = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap_or_default().to_string())
                    .unwrap_or_default(),
                body: body.clone(),
            };
            let answer = if entry.path.ends_with("/status") {
                let mut answered = serde_json::to_value(&answered_group).unwrap();
                answered["status"] = body["status"].clone();
                answered
            } else if entry.method == "DELETE" {
                json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}})
            } else {
                body
            };
            if let Some((suffix, message)) = reject
                && entry.path.ends_with(suffix)
            {
                recorded.lock().unwrap().push(entry);
                let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                    "message": message, "reason": "Invalid", "code": 422, "metadata": {}});
                respond.send_response(
                    Response::builder()
                        .status(422)
                        .body(Body::from(serde_json::to_vec(&status).unwrap()))
                        .unwrap(),
                );
                continue;
            }
            recorded.lock().unwrap().push(entry);
            respond.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (client, seen, server)
}

/// Feeds the slice and ConfigMap caches of a [`context`] (what their watches would do).
struct Feeds {
    slices: reflector::store::Writer<EndpointSlice>,
    config_maps: reflector::store::Writer<ConfigMap>,
}

impl Feeds {
    /// The slices and ConfigMaps applied in `seen`, as the watches would deliver them.
    fn deliver(&mut self, seen: &[Seen]) {
        for entry in seen.iter().filter(|s| s.method == "PATCH") {
            if entry.path.contains("/endpointslices/") {
                let slice = serde_json::from_value(entry.body.clone()).unwrap();
                self.slices.apply_watcher_event(&watcher::Event::Apply(slice));
            } else if entry.path.contains("/configmaps/") {
                let config_map = serde_json::from_value(entry.body.clone()).unwrap();
                self.config_maps
                    .apply_watcher_event(&watcher::Event::Apply(config_map));
            }
        }
    }
}

/// A reconciler's context over `state` talking to `client`, writing each report after
/// `report_interval`.
fn context(
    client: Client,
    state: State,
    default_image: Option<&str>,
    report_interval: Duration,
) -> Arc<Context> {
    context_fed(client, state, default_image, report_interval).0
}

fn context_fed(
    client: Client,
    state: State,
    default_image: Option<&str>,
    report_interval: Duration,
) -> (Arc<Context>, Feeds) {
    let mut registry = prometheus_client::registry::Registry::default();
    let (_leading_tx, leading) = watch::channel(true);
    let (slices, slices_feed) = fed_store_of(state.slices);
    let (config_maps, config_maps_feed) = fed_store_of(state.config_maps);
    let caches = Caches {
        pods: store_of(state.pods),
        slices,
        daemon_sets: store_of(state.daemon_sets),
        services: store_of(state.services),
        config_maps,
        secrets: store_of(state.secrets),
        relay_slices: store_of(Vec::new()),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "fanout-controller".into(),
            instance: None,
        },
    );
    let ctx = Arc::new(
        Context::new(
            client,
            recorder,
            Metrics::register(&mut registry),
            caches,
            fanout::controller::policy::ProxyPolicy {
                own_image: default_image.map(str::to_string),
                ..Default::default()
            },
            leading,
        )
        .with_report_interval(report_interval),
    );
    let feeds = Feeds {
        slices: slices_feed,
        config_maps: config_maps_feed,
    };
    (ctx, feeds)
}

async fn pass(group: FanoutGroup, ctx: Arc<Context>) -> Result<Action, String> {
    tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(group), ctx))
        .await
        .map_err(|_| "reconcile hung".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
}

/// `reconcile_once` with the controller's `--default-proxy-image` given.
/// `reject`: requests whose path ends with `.0` get a 422 with message `.1`.
async fn reconcile_with(
    group: FanoutGroup,
    state: State,
    default_image: Option<&str>,
    reject: Option<(&'static str, &'static str)>,
    warm: bool,
) -> (Result<(), String>, Vec<Seen>) {
    let (client, seen, server) = mock_api(&group, reject);
    let ctx = context(client, state, default_image, Duration::ZERO);
    if warm {
        ctx.memory.full_apply_done(&GroupId::key_of(&group));
    }
    let result = pass(group, ctx).await.map(|_| ());
    server.abort();
    let seen = seen.lock().unwrap().clone();
    (result, seen)
}

fn body_of<K: DeserializeOwned>(seen: &[Seen], path_end: &str) -> K {
    let entry = seen
        .iter()
        .find(|s| s.path.ends_with(path_end))
        .expect("request present");
    serde_json::from_value(entry.body.clone()).expect("typed body")
}

/// The status the reconcile wrote.
fn written_status(seen: &[Seen]) -> &Value {
    &seen
        .iter()
        .find(|s| s.path.ends_with("/status"))
        .expect("a status patch")
        .body["status"]
}

/// The condition of type `kind` in `status`.
fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == kind)
        .expect("the condition")
}

#[tokio::test]
async fn first_reconcile_applies_children_in_order_then_status_then_event() {
    let state = State {
        pods: vec![pod("p1", "10.0.0.1", true), pod("p2", "10.0.0.2", true)],
        daemon_sets: vec![existing_daemon_set()],
        ..State::default()
    };
    let (result, seen) = reconcile_once(group(None), state).await;
    assert_eq!(result, Ok(()));
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            // The proxies' identity for relaying comes with the DaemonSet, before it.
            "PATCH /api/v1/namespaces/net/serviceaccounts/updates-proxy",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/net/roles/updates-proxy",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/net/rolebindings/updates-proxy",
            "PATCH /apis/apps/v1/namespaces/net/daemonsets/updates",
            "PATCH /api/v1/namespaces/net/services/updates",
            "PATCH /apis/discovery.k8s.io/v1/namespaces/net/endpointslices/updates-v4-0",
            "PATCH /api/v1/namespaces/net/configmaps/updates-endpoints",
            "PATCH /apis/fanout.dev/v1alpha1/namespaces/net/fanoutgroups/updates/status",
            "POST /apis/events.k8s.io/v1/namespaces/net/events",
        ]
    );
    for patch in seen.iter().filter(|s| s.method == "PATCH") {
        assert_eq!(
            patch.content_type,
            "application/apply-patch+yaml",
            "{}",
            patch.line()
        );
        assert!(
            patch.query.contains("fieldManager=fanout-controller"),
            "{}: {}",
            patch.line(),
            patch.query
        );
        assert!(
            patch.query.contains("force=true"),
            "{}: {}",
            patch.line(),
            patch.query
        );
        assert!(
            patch.body["apiVersion"].is_string() && patch.body["kind"].is_string(),
            "{}",
            patch.line()
        );
        if !patch.path.ends_with("/status") {
            assert!(
                patch.body.get("status").is_none(),
                "{} carries status",
                patch.line()
            );
        } else {
            assert!(patch.body.get("spec").is_none(), "the status apply carries spec");
        }
    }
    let cm: ConfigMap = body_of(&seen, "configmaps/updates-endpoints");
    assert_eq!(
        cm.data.unwrap()["endpoints"],
        "tcp://10.0.0.1:7100\ntcp://10.0.0.2:7100\n"
    );
    let slice: EndpointSlice = body_of(&seen, "endpointslices/updates-v4-0");
    assert_eq!(slice.endpoints.len(), 2);
    let status = &seen[7].body["status"];
    assert_eq!(status["publishedEndpoints"], 2);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(seen[8].body["reason"], "ProxiesJoined");
    let role = &seen[1].body;
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}])
    );
}

#[tokio::test]
async fn a_curve_group_creates_its_key_pair_and_allow_list_before_the_proxies() {
    let mut curve = group(None);
    curve.spec.security.curve = true;
    let state = State {
        daemon_sets: vec![existing_daemon_set()],
        ..State::default()
    };
    let (result, seen) = reconcile_once(curve, state).await;
    assert_eq!(result, Ok(()));
    let lines: Vec<String> = seen.iter().take(6).map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "POST /api/v1/namespaces/net/secrets",
            "PATCH /api/v1/namespaces/net/configmaps/updates-curve-allow",
            "PATCH /api/v1/namespaces/net/serviceaccounts/updates-proxy",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/net/roles/updates-proxy",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/net/rolebindings/updates-proxy",
            "PATCH /apis/apps/v1/namespaces/net/daemonsets/updates",
        ]
    );
    let secret = &seen[0].body;
    assert_eq!(secret["metadata"]["name"], "updates-curve");
    assert_eq!(secret["immutable"], true);
    assert_eq!(secret["metadata"]["labels"]["fanout.dev/public-key"], "true");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "FanoutGroup");
    let public = secret["stringData"]["public.key"].as_str().unwrap();
    let private = secret["stringData"]["secret.key"].as_str().unwrap();
    let pair = fanout::curve::SecretKey::from_z85(private).unwrap();
    assert_eq!(
        pair.public_key().unwrap(),
        fanout::curve::PublicKey::from_z85(public).unwrap(),
        "a real key pair"
    );
}

/// Issue 10: a Secret `<name>-curve` planted with the controller's labels (and a key pair of
/// the planter's) is not the group's: no proxies are written to use it, nothing overwrites it,
/// and the status says why.
#[tokio::test]
async fn a_planted_key_pair_is_refused_and_no_proxy_is_written_to_use_it() {
    let mut curve = group(None);
    curve.spec.security.curve = true;
    let planted_key = fanout::curve::KeyPair::generate().unwrap().public.to_z85();
    let planted: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "updates-curve", "namespace": "net",
                     "labels": {"fanout.dev/group": "updates",
                                "app.kubernetes.io/managed-by": "fanout-controller",
                                "fanout.dev/public-key": "true"}},
        "data": {"public.key": k8s_openapi::ByteString(planted_key.clone().into_bytes())}
    }))
    .unwrap();
    let state = State {
        daemon_sets: vec![existing_daemon_set()],
        secrets: vec![planted],
        ..State::default()
    };
    let (result, seen) = reconcile_once(curve, state).await;
    assert_eq!(result, Ok(()));
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("/secrets") || l.contains("/daemonsets/")),
        "{lines:?}"
    );
    let status = written_status(&seen);
    let degraded = condition(status, "Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("CurveKeyUnusable"))
    );
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("no controller ownerReference to this FanoutGroup (uid uid-1)"),
        "{message}"
    );
    assert!(
        status["curvePublicKey"].is_null(),
        "the planted key is never published"
    );
    assert!(
        !seen.iter().any(|s| s.body.to_string().contains(&planted_key)),
        "the planted key appears in no write"
    );
}

/// The caches as they are after the first reconcile's writes landed.
async fn settled() -> (FanoutGroup, State) {
    let pods = vec![pod("p1", "10.0.0.1", true), pod("p2", "10.0.0.2", true)];
    let (result, seen) = reconcile_once(
        group(None),
        State {
            pods: pods.clone(),
            daemon_sets: vec![existing_daemon_set()],
            ..State::default()
        },
    )
    .await;
    assert_eq!(result, Ok(()));
    let status: FanoutGroupStatus = serde_json::from_value(
        seen.iter().find(|s| s.path.ends_with("/status")).unwrap().body["status"].clone(),
    )
    .unwrap();
    let state = State {
        pods,
        slices: vec![body_of(&seen, "endpointslices/updates-v4-0")],
        daemon_sets: vec![cached_daemon_set(body_of(&seen, "daemonsets/updates"))],
        services: vec![body_of(&seen, "services/updates")],
        config_maps: vec![body_of(&seen, "configmaps/updates-endpoints")],
        secrets: Vec::new(),
    };
    // The second pass sees the DaemonSet in the cache, so the conditions move once more.
    let (result, seen) = reconcile_warm(group(Some(status.clone())), state.clone()).await;
    assert_eq!(result, Ok(()));
    let status = match seen.iter().find(|s| s.path.ends_with("/status")) {
        Some(patch) => serde_json::from_value(patch.body["status"].clone()).unwrap(),
        None => status,
    };
    (group(Some(status)), state)
}

#[tokio::test]
async fn unchanged_state_makes_no_request_at_all() {
    let (group, state) = settled().await;
    let (result, seen) = reconcile_warm(group, state).await;
    assert_eq!(result, Ok(()));
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert!(lines.is_empty(), "expected no writes, got {lines:?}");
}

#[tokio::test]
async fn one_pod_turning_unready_rewrites_its_slice_and_a_stale_slice_is_pruned() {
    let (group, mut state) = settled().await;
    state.pods[1] = pod("p2", "10.0.0.2", false);
    let mut stale: EndpointSlice = state.slices[0].clone();
    stale.metadata.name = Some("updates-v4-7".into());
    stale.endpoints.clear();
    state.slices.push(stale);
    let (result, seen) = reconcile_warm(group, state).await;
    assert_eq!(result, Ok(()));
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "PATCH /apis/discovery.k8s.io/v1/namespaces/net/endpointslices/updates-v4-0",
            "PATCH /api/v1/namespaces/net/configmaps/updates-endpoints",
            // Every child is applied, then what the pass did not want is pruned.
            "DELETE /apis/discovery.k8s.io/v1/namespaces/net/endpointslices/updates-v4-7",
            "PATCH /apis/fanout.dev/v1alpha1/namespaces/net/fanoutgroups/updates/status",
            "POST /apis/events.k8s.io/v1/namespaces/net/events",
        ]
    );
    let cm: ConfigMap = body_of(&seen, "configmaps/updates-endpoints");
    assert_eq!(cm.data.unwrap()["endpoints"], "tcp://10.0.0.1:7100\n");
    assert_eq!(seen[4].body["reason"], "ProxiesLeft");
}

#[tokio::test]
async fn a_group_without_image_is_degraded_and_gets_no_daemon_set() {
    let (result, seen) = reconcile_with(group(None), State::default(), None, None, false).await;
    assert_eq!(result, Ok(()));
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert!(!lines.iter().any(|l| l.contains("daemonsets")), "{lines:?}");
    let status = written_status(&seen);
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "NoProxyImage");
    let warning = seen.iter().find(|s| s.method == "POST").unwrap();
    assert_eq!(
        (warning.body["type"].as_str(), warning.body["reason"].as_str()),
        (Some("Warning"), Some("NoProxyImage"))
    );
}

#[tokio::test]
async fn an_object_the_api_refuses_makes_the_group_degraded_and_the_reconcile_fail() {
    let (result, seen) = reconcile_with(
        group(None),
        State::default(),
        Some("img:1"),
        Some((
            "services/updates",
            "Service \"updates\" is invalid: spec.ports[0].port: Invalid value",
        )),
        false,
    )
    .await;
    let error = result.expect_err("the reconcile reports the refusal");
    assert!(error.contains("is invalid"), "{error}");
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "PATCH /api/v1/namespaces/net/serviceaccounts/updates-proxy",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/net/roles/updates-proxy",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/net/rolebindings/updates-proxy",
            "PATCH /apis/apps/v1/namespaces/net/daemonsets/updates",
            "PATCH /api/v1/namespaces/net/services/updates",
            "PATCH /apis/fanout.dev/v1alpha1/namespaces/net/fanoutgroups/updates/status",
            "POST /apis/events.k8s.io/v1/namespaces/net/events",
        ]
    );
    let degraded = seen[5].body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("ObjectRejected"))
    );
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("spec.ports[0].port")
    );
}

#[tokio::test]
async fn a_report_waits_for_its_interval_then_carries_the_whole_interval() {
    let (group, mut state) = settled().await;
    // p2 leaves: the slice and the list are written at once, the status and the event wait.
    state.pods[1] = pod("p2", "10.0.0.2", false);
    let (client, seen, server) = mock_api(&group, None);
    let interval = Duration::from_millis(300);
    let (ctx, mut feeds) = context_fed(client, state, Some("img:1"), interval);
    ctx.memory.full_apply_done(&GroupId::key_of(&group));
    let first = pass(group.clone(), ctx.clone()).await;
    assert_eq!(
        first,
        Ok(Action::requeue(interval)),
        "back when the interval ends"
    );
    let written = std::mem::take(&mut *seen.lock().unwrap());
    let lines: Vec<String> = written.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "PATCH /apis/discovery.k8s.io/v1/namespaces/net/endpointslices/updates-v4-0",
            "PATCH /api/v1/namespaces/net/configmaps/updates-endpoints",
        ]
    );
    // A pass within the interval, the caches holding those writes, writes nothing at all ...
    feeds.deliver(&written);
    let again = pass(group.clone(), ctx.clone()).await;
    assert!(
        matches!(again, Ok(ref action) if *action != Action::requeue(interval) && *action != Action::requeue(fanout::controller::memory::RESYNC)),
        "still waiting for the rest of the interval: {again:?}"
    );
    assert!(seen.lock().unwrap().is_empty(), "{:?}", seen.lock().unwrap());
    // ... and the pass at its end writes the status once, and the event the first pass owed.
    tokio::time::sleep(interval).await;
    let last = pass(group, ctx).await;
    server.abort();
    assert_eq!(last, Ok(Action::requeue(fanout::controller::memory::RESYNC)));
    let seen = seen.lock().unwrap().clone();
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "PATCH /apis/fanout.dev/v1alpha1/namespaces/net/fanoutgroups/updates/status",
            "POST /apis/events.k8s.io/v1/namespaces/net/events",
        ]
    );
    assert_eq!(seen[0].body["status"]["publishedEndpoints"], 1);
    assert_eq!(seen[1].body["reason"], "ProxiesLeft");
    assert!(
        seen[1].body["note"].as_str().unwrap().contains("p2"),
        "{}",
        seen[1].body["note"]
    );
}

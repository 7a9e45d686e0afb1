//! The leader's watches: FanoutGroups and every labelled child kind, each into a reflector
//! cache the reconciler reads, every change mapped to the group it belongs to, all driven by
//! kube's `applier`. A group's deletion (or its absence after a relist) makes the reconciler
//! forget it.
//!
//! The caches keep only what the controller reads: no managed fields anywhere, proxy pods cut
//! down to the fields `slices` and `children` read ([`trim_pod`]; with thousands of nodes the
//! pods are most of the controller's memory), ConfigMaps without their data ([`trim_config_map`]:
//! only the applied-hash is compared). And only the events that can change a plan trigger a
//! reconcile ([`ChangeFilter`]): with 5 000 nodes one pass costs about 10 ms of CPU, and a node
//! joining makes a dozen watch events (pod created, scheduled, ready; the DaemonSet's status
//! several times; our own writes) of which three or four matter.
//!
//! Longer than 500 lines for a reason: about a third of it is tests that pin the trimmed caches to
//! what the planner reads; the code, about 450 lines, is every watch of the leader in one place.

use super::children::{Caches, relay_watch_selector, watch_selector};
use super::objects::GroupId;
use super::objects::MANAGED_BY_LABEL;
use super::reconcile::{self, Context};
use crate::crd::FanoutGroup;
use crate::endpoint_list::GROUP_LABEL;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodCondition, PodSpec, PodStatus, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{PredicateConfig, WatchStreamExt, applier, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A short debounce to fold events that arrive together (a pod and its DaemonSet's status).
/// Kept far below the write throttle (`memory::MIN_INTERVAL`): kube's debounce is
/// trailing-edge, so a steady stream of events closer together than the debounce would
/// postpone the reconcile indefinitely (measured: 250 pods joining over 23 s with a 200 ms
/// debounce got 5 reconciles and ~5 s publish latency). Bursts are coalesced by the throttle
/// instead, and events that change nothing a plan reads never get here ([`ChangeFilter`]), so
/// a lone change pays only these few milliseconds.
pub const DEBOUNCE: Duration = Duration::from_millis(5);

/// What the leader's reconciler gets besides the client and its caches.
pub(super) struct Leader {
    pub recorder: Recorder,
    pub metrics: super::metrics::Metrics,
    pub policy: super::policy::ProxyPolicy,
    pub leading: watch::Receiver<bool>,
}

/// The leader's watch configuration: lists served from the API server's watch cache
/// (`resourceVersion=0`, what client-go's informers ask for) instead of kube's default
/// consistent list. Right after an etcd restart a consistent list waits up to about 3 s for the
/// watch cache to prove itself fresh, then falls back to etcd (measured: a reconciler starting
/// after it lost its lease to the restart spent 4.4 s in its eight lists before its first
/// pass). A list from the cache may be a moment old; the watch that follows it starts from the
/// list's own resourceVersion, so every later change still arrives and the next pass corrects
/// what the first one wrote. The proxies' own allow-list watch (`proxy::allow_list_api`) keeps the
/// consistent list: there a stale list would admit a key already revoked.
fn leader_watch(selector: Option<&str>) -> watcher::Config {
    let config = watcher::Config::default().any_semantic();
    match selector {
        Some(selector) => config.labels(selector),
        None => config,
    }
}

type GroupRefStream = Pin<Box<dyn Stream<Item = Result<ObjectRef<FanoutGroup>, watcher::Error>> + Send>>;

fn api_for<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Keeps what the controller reads of a proxy pod and nothing else: name, namespace, uid,
/// resourceVersion, the group and managed-by labels (`children::is_member`), the owner
/// references (`slices::is_owned_by`, i.e. `children::is_controlled_by`), the deletion
/// timestamp, `spec.nodeName` (also a proxy's identity in the relay tree, `relays::tiers`), and
/// of the status the phase, the Ready condition (status, lastTransitionTime) and the pod and
/// host addresses (`slices::endpoints_from_pods`). A reader of another field adds it here.
pub fn trim_pod(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels.map(|labels| {
            labels
                .into_iter()
                .filter(|(key, _)| key == GROUP_LABEL || key == MANAGED_BY_LABEL)
                .collect()
        }),
        owner_references: meta.owner_references,
        deletion_timestamp: meta.deletion_timestamp,
        ..ObjectMeta::default()
    };
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|condition| condition.type_ == "Ready")
                .map(|ready| PodCondition {
                    type_: ready.type_,
                    status: ready.status,
                    last_transition_time: ready.last_transition_time,
                    ..PodCondition::default()
                })
                .collect()
        }),
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        host_ip: status.host_ip,
        host_ips: status.host_ips,
        ..PodStatus::default()
    });
}

/// A ConfigMap's data is never read back (the applied-hash says whether ours is current), and
/// the endpoint list is the biggest object the controller writes.
pub fn trim_config_map(config_map: &mut ConfigMap) {
    config_map.data = None;
    config_map.binary_data = None;
}

/// How a child kind is cached, and which of its changes can change a plan.
pub trait Cached: Resource<DynamicType = ()> + Sized {
    /// Drops what the controller never reads (managed fields are dropped for every kind).
    fn trim(&mut self) {}
    /// A digest of what the controller reads of the object: an event that leaves it as it was
    /// cannot change the group's plan, so it triggers no reconcile.
    fn fingerprint(&self) -> u64;
    /// The digest of an object that is not there: a new object with this digest (a pod with
    /// no address yet) is no change either. `None`: every new object is a change.
    const ABSENT: Option<u64> = None;
}

fn digest(value: &impl Serialize) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    serde_json::to_vec(value).unwrap_or_default().hash(&mut hasher);
    hasher.finish()
}

/// The digest of the applied-hash annotation: our children change only by our writes (or by
/// someone else's, which the next `ApplyMode::ReapplyAll` undoes whether or not it triggers).
fn applied_hash_digest<K: Resource>(object: &K) -> u64 {
    digest(&object.annotations().get(super::apply::HASH_ANNOTATION))
}

impl Cached for Pod {
    fn trim(&mut self) {
        trim_pod(self)
    }

    /// The trimmed pod but for its resourceVersion; a pod without an address yet is no
    /// endpoint, whatever else it says (created, scheduled).
    fn fingerprint(&self) -> u64 {
        let status = self.status.as_ref();
        let addressed = status.is_some_and(|status| {
            status.pod_ip.is_some()
                || status.host_ip.is_some()
                || status.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty())
                || status.host_ips.as_ref().is_some_and(|ips| !ips.is_empty())
        });
        if !addressed {
            return 0;
        }
        let mut pod = self.clone();
        pod.metadata.resource_version = None;
        digest(&pod)
    }

    const ABSENT: Option<u64> = Some(0);
}

impl Cached for EndpointSlice {
    fn fingerprint(&self) -> u64 {
        applied_hash_digest(self)
    }
}

impl Cached for Service {
    fn fingerprint(&self) -> u64 {
        applied_hash_digest(self)
    }
}

impl Cached for ConfigMap {
    fn trim(&mut self) {
        trim_config_map(self)
    }

    fn fingerprint(&self) -> u64 {
        applied_hash_digest(self)
    }
}

impl Cached for DaemonSet {
    /// Ours (the applied-hash), its identity (the pods' owner), and the status fields the
    /// group's status reads (`status::compute_status`).
    fn fingerprint(&self) -> u64 {
        let status = self.status.as_ref();
        digest(&(
            self.annotations().get(super::apply::HASH_ANNOTATION),
            &self.metadata.uid,
            self.metadata.generation,
            status.map(|s| {
                (
                    s.desired_number_scheduled,
                    s.number_ready,
                    s.updated_number_scheduled,
                    s.observed_generation,
                )
            }),
        ))
    }
}

/// Pure: passes the watch events that can change a plan. Remembers each object's last
/// [`Cached::fingerprint`]; a deletion always passes; a relist (`Init`) starts afresh, so
/// every object it lists passes once (a relist reports no deletions).
pub struct ChangeFilter<K: Cached> {
    seen: HashMap<ObjectRef<K>, u64>,
}

impl<K: Cached> Default for ChangeFilter<K> {
    fn default() -> Self {
        Self { seen: HashMap::new() }
    }
}

impl<K: Cached> ChangeFilter<K> {
    /// The object of `event` when it is a change worth a reconcile.
    pub fn admit(&mut self, event: watcher::Event<K>) -> Option<K> {
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                let fingerprint = object.fingerprint();
                let before = self.seen.insert(ObjectRef::from_obj(&object), fingerprint);
                (before.or(K::ABSENT) != Some(fingerprint)).then_some(object)
            }
            watcher::Event::Delete(object) => {
                self.seen.remove(&ObjectRef::from_obj(&object));
                Some(object)
            }
            watcher::Event::Init => {
                self.seen.clear();
                None
            }
            watcher::Event::InitDone => None,
        }
    }
}

/// Watches children (`children::watch_selector`, filtered by the API server) into `writer`'s
/// cache, trimmed, and maps every change that can change a plan ([`ChangeFilter`]) to the group
/// named by the label (the `.owns()`/`.watches()` of kube's Controller, with the caches shared
/// with the reconciler instead of a second watch per kind).
fn child_trigger<K>(api: Api<K>, writer: Writer<K>) -> GroupRefStream
where
    K: Cached + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    labelled_trigger(api, writer, watch_selector(), GROUP_LABEL)
}

/// Watches the objects `selector` picks into `writer`'s cache, trimmed, and maps every change
/// that can change a plan ([`ChangeFilter`]) to the group that the label `group_label` names.
fn labelled_trigger<K>(
    api: Api<K>,
    writer: Writer<K>,
    selector: String,
    group_label: &'static str,
) -> GroupRefStream
where
    K: Cached + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let config = leader_watch(Some(&selector));
    let stream = watcher(api, config)
        .backoff(crate::watch_backoff::WatchBackoff::default())
        // Managed fields are a large part of every object and the reconciler never reads them.
        .modify(|object: &mut K| {
            object.managed_fields_mut().clear();
            object.trim();
        });
    let mut changes = ChangeFilter::<K>::default();
    reflector::reflector(writer, stream)
        .try_filter_map(move |event| {
            let group = changes.admit(event).and_then(|object| {
                let group = object.labels().get(group_label)?;
                Some(ObjectRef::<FanoutGroup>::new(group).within(&object.namespace()?))
            });
            futures::future::ready(Ok(group))
        })
        .boxed()
}

/// Watches the public-key Secrets (`keys::secret_watch_selector`) into `writer`'s cache,
/// keeping only their `public.key`, and maps every change to the CURVE groups of the Secret's
/// namespace (a key Secret may be named or selected by any of them).
fn key_secret_trigger(
    api: Api<Secret>,
    writer: Writer<Secret>,
    groups: Store<FanoutGroup>,
) -> GroupRefStream {
    let config = leader_watch(Some(&super::keys::secret_watch_selector()));
    let stream = watcher(api, config)
        .backoff(crate::watch_backoff::WatchBackoff::default())
        .modify(|secret: &mut Secret| {
            secret.managed_fields_mut().clear();
            // Never cache a secret key: the group's own is written once by the writer and read by
            // the proxies only; a publisher's must not be in the controller at all.
            secret.string_data = None;
            if let Some(data) = secret.data.as_mut() {
                data.retain(|key, _| key == crate::curve::PUBLIC_KEY_FILE);
            }
        });
    reflector::reflector(writer, stream)
        .touched_objects()
        .map_ok(move |secret: Secret| {
            let namespace = secret.namespace();
            futures::stream::iter(
                groups
                    .state()
                    .into_iter()
                    .filter(|group| group.spec.security.curve && group.namespace() == namespace)
                    .map(|group| Ok(ObjectRef::from_obj(group.as_ref())))
                    .collect::<Vec<_>>(),
            )
        })
        .try_flatten()
        .boxed()
}

pub(super) async fn run_controller(client: Client, namespace: Option<String>, leader: Leader) {
    let (groups, groups_writer) = reflector::store::<FanoutGroup>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (slices_store, slices_writer) = reflector::store::<EndpointSlice>();
    let (daemon_sets, daemon_sets_writer) = reflector::store::<DaemonSet>();
    let (services, services_writer) = reflector::store::<Service>();
    let (config_maps, config_maps_writer) = reflector::store::<ConfigMap>();
    let (secrets, secrets_writer) = reflector::store::<Secret>();
    let (relay_slices, relay_slices_writer) = reflector::store::<EndpointSlice>();

    let ctx = Arc::new(Context::new(
        client.clone(),
        leader.recorder,
        leader.metrics,
        Caches {
            pods,
            slices: slices_store,
            daemon_sets,
            services,
            config_maps,
            secrets,
            relay_slices,
        },
        leader.policy,
        leader.leading,
    ));

    let forgetting = ctx.clone();
    let known = groups.clone();
    let group_stream: GroupRefStream = reflector::reflector(
        groups_writer,
        watcher(api_for::<FanoutGroup>(&client, &namespace), leader_watch(None))
            .backoff(crate::watch_backoff::WatchBackoff::default())
            .modify(|group: &mut FanoutGroup| group.managed_fields_mut().clear()),
    )
    // After the reflector, so the store already reflects the event.
    .inspect_ok(move |event| match event {
        watcher::Event::Delete(group) => forgetting.forget(&GroupId::key_of(group)),
        watcher::Event::InitDone => {
            // A relist reports no deletions: forget the groups it did not list.
            for gone in forgetting.memory.retain(|key| {
                known
                    .get(&ObjectRef::new(&key.name).within(&key.namespace))
                    .is_some()
            }) {
                forgetting.metrics.forget_group(&gone);
            }
        }
        _ => {}
    })
    .touched_objects()
    // Only spec changes (generation) trigger: our own status writes would otherwise each cause
    // another (no-op) reconcile that also takes the group's throttle slot.
    .predicate_filter(predicates::generation, PredicateConfig::default())
    .map_ok(|group: FanoutGroup| ObjectRef::from_obj(&group))
    .boxed();

    let queue = futures::stream::select_all(vec![
        group_stream,
        child_trigger(api_for::<Pod>(&client, &namespace), pods_writer),
        child_trigger(api_for::<EndpointSlice>(&client, &namespace), slices_writer),
        labelled_trigger(
            api_for::<EndpointSlice>(&client, &namespace),
            relay_slices_writer,
            relay_watch_selector(),
            crate::endpoint_list::RELAY_FOR_LABEL,
        ),
        child_trigger(api_for::<DaemonSet>(&client, &namespace), daemon_sets_writer),
        child_trigger(api_for::<Service>(&client, &namespace), services_writer),
        child_trigger(api_for::<ConfigMap>(&client, &namespace), config_maps_writer),
        key_secret_trigger(
            api_for::<Secret>(&client, &namespace),
            secrets_writer,
            groups.clone(),
        ),
    ]);

    applier(
        |group, ctx| reconcile::reconcile(group, ctx).boxed(),
        reconcile::error_policy,
        ctx,
        groups,
        queue,
        kube::runtime::Config::default().debounce(DEBOUNCE),
    )
    .for_each(|result| async move {
        match result {
            Ok((group, _action)) => tracing::debug!(%group, "reconciled"),
            Err(kube::runtime::controller::Error::QueueError(err)) => {
                tracing::warn!(error = %err, "watch error (retrying with backoff)")
            }
            Err(err) => tracing::debug!(error = %err, "reconcile failed"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::children::Children;
    use crate::controller::objects::GroupId;
    use crate::controller::objects::tests_support::{build, group, group_with, open_policy};
    use crate::controller::plan::plan;
    use k8s_openapi::jiff::Timestamp;

    /// A proxy pod as the API server serves it once kwok (or a kubelet) ran it: every field a
    /// DaemonSet pod has, most of which the controller never reads.
    fn full_pod(name: &str, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "net", "uid": format!("uid-{name}"), "resourceVersion": "42",
                "generateName": "updates-", "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"fanout.dev/group": "updates", "app.kubernetes.io/managed-by": "fanout-controller",
                           "app.kubernetes.io/name": "fanout", "app.kubernetes.io/component": "proxy",
                           "controller-revision-hash": "6c9f8d7b5", "pod-template-generation": "1"},
                "annotations": {"kubectl.kubernetes.io/default-container": "proxy"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "updates",
                                     "uid": "ds-uid", "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                                   "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {
                "nodeName": format!("node-{name}"),
                "containers": [{"name": "proxy", "image": "fanout:1", "args": ["proxy", "--xsub", "tcp://0.0.0.0:7100"],
                                "ports": [{"containerPort": 7100, "name": "publish"}],
                                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}}}],
                "volumes": [{"name": "socket-dir", "hostPath": {"path": "/var/run/fanout"}}],
                "tolerations": [{"operator": "Exists"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                            "values": [format!("node-{name}")]}]}]}}}
            },
            "status": {
                "phase": "Running", "hostIP": "10.200.1.1", "hostIPs": [{"ip": "10.200.1.1"}],
                "podIP": ip, "podIPs": [{"ip": ip}], "startTime": "2026-01-01T00:00:00Z", "qosClass": "BestEffort",
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Ready", "status": if ready {"True"} else {"False"},
                     "lastTransitionTime": "2026-01-01T00:00:07Z", "reason": "ContainersNotReady", "message": "m"},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "containerStatuses": [{"name": "proxy", "image": "fanout:1", "imageID": "", "ready": ready,
                                       "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
            }
        }))
        .expect("a valid pod")
    }

    fn trimmed(full: &[Pod]) -> Vec<Pod> {
        full.iter()
            .cloned()
            .map(|mut pod| {
                trim_pod(&mut pod);
                pod
            })
            .collect()
    }

    /// What `group`'s plan over `pods` writes and reports: each slice with the Ready times it
    /// newly publishes, the ConfigMap, the report, the published count.
    type Planned = (
        Vec<(EndpointSlice, Vec<Timestamp>)>,
        Option<ConfigMap>,
        crate::controller::plan::Report,
        i32,
    );

    fn plan_over(group: &FanoutGroup, pods: &[Pod]) -> Planned {
        let mut ds = build(group);
        ds.metadata.uid = Some("ds-uid".into());
        let children = Children {
            pods: pods.iter().cloned().map(std::sync::Arc::new).collect(),
            daemon_sets: vec![std::sync::Arc::new(ds)],
            ..Children::default()
        };
        let id = GroupId {
            namespace: "net".into(),
            name: "updates".into(),
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let plan = plan(group, &id, &children, &open_policy(), now).unwrap();
        (
            plan.slices
                .iter()
                .map(|s| (s.slice.object.clone(), s.newly_ready_since.clone()))
                .collect(),
            plan.config_map.map(|c| c.object),
            plan.report,
            plan.published_endpoints,
        )
    }

    /// The plan over `full` equals the plan over its trimmed pods, in either order
    /// (`Caches::children_of` leaves the pods unsorted: the plan must not depend on it).
    fn assert_trimmed_plans_alike(group: &FanoutGroup, full: &[Pod], expected: &Planned) {
        let trimmed = trimmed(full);
        assert_eq!(&plan_over(group, &trimmed), expected);
        let reversed: Vec<Pod> = trimmed.iter().rev().cloned().collect();
        assert_eq!(&plan_over(group, &reversed), expected);
    }

    #[test]
    fn a_trimmed_pod_plans_exactly_what_the_full_pod_plans_in_any_order_and_is_smaller() {
        let mut terminating = full_pod("p3", "10.0.0.3", true);
        terminating.metadata.deletion_timestamp = terminating.metadata.creation_timestamp.clone();
        let full = vec![
            full_pod("p1", "10.0.0.1", true),
            full_pod("p2", "10.0.0.2", false),
            terminating,
        ];
        let expected = plan_over(&group(), &full);
        let (slices, _, _, published) = &expected;
        assert_eq!(*published, 1, "p1 only: p2 is not ready, p3 is terminating");
        assert_eq!(slices[0].0.endpoints.len(), 3);
        assert_eq!(slices[0].1.len(), 1, "p1's Ready time survives the trim");
        assert_trimmed_plans_alike(&group(), &full, &expected);
        let size = |pods: &[Pod]| serde_json::to_vec(pods).unwrap().len();
        let trimmed = trimmed(&full);
        assert!(
            size(&trimmed) * 3 < size(&full),
            "{} bytes trimmed, {} full",
            size(&trimmed),
            size(&full)
        );
    }

    /// The relay tree reads more of each pod than the flat plan: the node's name is a proxy's
    /// identity in the tree (`relays::tiers`), its uid goes into the assignment slices, and the
    /// owner reference is checked against the DaemonSet (`children::is_controlled_by`). A trim
    /// that dropped any of them would put different proxies on top or in no tier at all.
    #[test]
    fn a_trimmed_pod_plans_the_same_relay_tree_as_the_full_pod() {
        let tree = group_with(crate::crd::FanoutGroupSpec {
            relays: crate::crd::RelaySpec {
                enabled: true,
                min_proxies: 9,
            },
            ..crate::crd::FanoutGroupSpec::default()
        });
        let full: Vec<Pod> = (1..=12)
            .map(|i| full_pod(&format!("p{i:02}"), &format!("10.0.0.{i}"), i != 5))
            .collect();
        let expected = plan_over(&tree, &full);
        let (slices, _, report, published) = &expected;
        assert_eq!(*published, 11, "p05 is not ready");
        let relays = report.status.as_ref().map(|status| status.relays);
        assert_eq!(relays, Some(4), "a tree: ⌈√11⌉ relays");
        let assignments: Vec<_> = slices
            .iter()
            .filter(|(slice, _)| crate::controller::relays::relay_of(slice).is_some())
            .collect();
        assert!(!assignments.is_empty(), "the leaves hang off relays");
        for (slice, _) in &assignments {
            for endpoint in &slice.endpoints {
                let target = endpoint.target_ref.as_ref();
                assert!(target.and_then(|t| t.uid.as_ref()).is_some(), "the pod's uid");
                assert!(endpoint.node_name.is_some(), "the pod's node");
            }
        }
        assert_trimmed_plans_alike(&tree, &full, &expected);
    }

    #[test]
    fn only_changes_a_plan_reads_pass_and_deletions_always_do() {
        let mut pods = ChangeFilter::<Pod>::default();
        let mut pending = full_pod("p1", "10.0.0.1", false);
        pending.status = Some(PodStatus {
            phase: Some("Pending".into()),
            ..PodStatus::default()
        });
        trim_pod(&mut pending);
        let mut scheduled = pending.clone();
        scheduled.metadata.resource_version = Some("43".into());
        let mut ready = full_pod("p1", "10.0.0.1", true);
        trim_pod(&mut ready);
        let mut relabelled = ready.clone();
        relabelled.metadata.resource_version = Some("44".into());
        let admitted = |filter: &mut ChangeFilter<Pod>, event| filter.admit(event).is_some();
        assert!(
            !admitted(&mut pods, watcher::Event::Apply(pending.clone())),
            "no address: no endpoint yet"
        );
        assert!(!admitted(&mut pods, watcher::Event::Apply(scheduled)));
        assert!(
            admitted(&mut pods, watcher::Event::Apply(ready.clone())),
            "ready with an address"
        );
        assert!(
            !admitted(&mut pods, watcher::Event::Apply(relabelled)),
            "only the version moved"
        );
        assert!(admitted(&mut pods, watcher::Event::Delete(ready.clone())));
        assert!(
            admitted(&mut pods, watcher::Event::Apply(ready.clone())),
            "forgotten when deleted"
        );
        assert!(!admitted(&mut pods, watcher::Event::Init));
        assert!(
            admitted(&mut pods, watcher::Event::InitApply(ready)),
            "a relist starts afresh"
        );

        let mut slices = ChangeFilter::<EndpointSlice>::default();
        let mut slice = EndpointSlice::default();
        slice.metadata.name = Some("s".into());
        slice.metadata.annotations = Some(
            [(
                crate::controller::apply::HASH_ANNOTATION.to_string(),
                "1".to_string(),
            )]
            .into(),
        );
        let mut rewritten = slice.clone();
        rewritten.metadata.resource_version = Some("2".into());
        assert!(
            slices.admit(watcher::Event::Apply(slice.clone())).is_some(),
            "a new object"
        );
        assert!(slices.admit(watcher::Event::Apply(rewritten.clone())).is_none());
        rewritten.metadata.annotations = Some(
            [(
                crate::controller::apply::HASH_ANNOTATION.to_string(),
                "2".to_string(),
            )]
            .into(),
        );
        assert!(
            slices.admit(watcher::Event::Apply(rewritten)).is_some(),
            "a new body"
        );

        let mut daemon_sets = ChangeFilter::<DaemonSet>::default();
        let mut ds = build(&group());
        assert!(daemon_sets.admit(watcher::Event::Apply(ds.clone())).is_some());
        let status = k8s_openapi::api::apps::v1::DaemonSetStatus {
            desired_number_scheduled: 3,
            ..Default::default()
        };
        ds.status = Some(status.clone());
        assert!(
            daemon_sets.admit(watcher::Event::Apply(ds.clone())).is_some(),
            "desired moved"
        );
        ds.status = Some(k8s_openapi::api::apps::v1::DaemonSetStatus {
            number_available: Some(3),
            ..status
        });
        assert!(
            daemon_sets.admit(watcher::Event::Apply(ds)).is_none(),
            "a field the status does not read"
        );
    }

    #[test]
    fn a_trimmed_config_map_keeps_what_the_applied_hash_check_reads() {
        let mut config_map = ConfigMap {
            data: Some([("endpoints".to_string(), "tcp://10.0.0.1:7100\n".to_string())].into()),
            ..ConfigMap::default()
        };
        config_map.metadata.name = Some("updates-endpoints".into());
        let hash = crate::controller::apply::stamp(&mut config_map).unwrap();
        trim_config_map(&mut config_map);
        assert!(config_map.data.is_none());
        assert!(crate::controller::apply::is_current(&hash, Some(&config_map)));
    }
}

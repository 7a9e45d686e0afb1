//! Pure: everything one reconcile wants, from the group and its cached children. This is where
//! desired state is planned; `writer` applies a plan and nothing else decides what to write.
//!
//! A [`Plan`] holds each child to apply beside the copy the cache has (so the writer can skip
//! one already as desired), the children to prune, the status (only when it changed) and the
//! Events. The modules it draws on stay small and pure as well: `policy` (what the admin allows),
//! `objects` (DaemonSet, Service, ConfigMaps, the key Secret's metadata), `keys` (the CURVE key
//! pair and allow-lists), `slices` (pods → endpoints → EndpointSlices), `status`, `notices`.
//!
//! Longer than 500 lines for a reason: over half of it is the plan's own tests (group and
//! caches in, plan out, no API), which belong beside the one function they test.

use super::children::{Children, is_child, is_controlled_by, named};
use super::keys::{self, ServerKey};
use super::notices::{Notice, notices};
use super::objects::{self, GroupId, Unrealisable};
use super::policy::ProxyPolicy;
use super::proxy_access::{self, ProxyAccess};
use super::relays;
use super::slices::{self, ExistingSlice, ProxyEndpoint};
use super::status::{Observed, Problem, compute_status};
use crate::crd::{FanoutGroup, FanoutGroupStatus};
use crate::endpoint_list::{self, CURVE_PUBLIC_KEY_ANNOTATION, MAX_MESSAGE_BYTES_ANNOTATION};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A child as it should be, and the copy the cache holds (None: not there yet).
#[derive(Debug, Clone)]
pub struct Desired<K> {
    pub object: K,
    pub cached: Option<Arc<K>>,
}

impl<K: Resource> Desired<K> {
    fn new(object: K, cached: &[Arc<K>]) -> Self {
        let cached = object
            .meta()
            .name
            .as_deref()
            .and_then(|name| named(cached, name))
            .cloned();
        Self { object, cached }
    }
}

/// An EndpointSlice to apply, and when each endpoint it newly publishes turned ready (for the
/// publish-latency histogram, observed once the slice is written).
#[derive(Debug, Clone)]
pub struct PlannedSlice {
    pub slice: Desired<EndpointSlice>,
    pub newly_ready_since: Vec<Timestamp>,
}

/// The kinds of child whose names vary, so that one can fall out of the plan: these are
/// pruned, in this order. The DaemonSet and the Service are named after the group, so a plan
/// always wants the one there is; the garbage collector deletes them with the group, and the
/// controller is given no `delete` on them (docs/rbac.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChildKind {
    EndpointSlice,
    ConfigMap,
}

/// A child to delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChildRef {
    pub kind: ChildKind,
    pub name: String,
}

/// The status to write (only when it changed) and the Events to publish.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub status: Option<FanoutGroupStatus>,
    pub notices: Vec<Notice>,
}

/// Everything one reconcile of a group writes, in the order it is written: the children,
/// then the prune, then the status and Events.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `None` when the group cannot be realised (see `problem`): the DaemonSet that exists,
    /// if any, is left as it is.
    pub daemon_set: Option<Desired<DaemonSet>>,
    pub service: Desired<Service>,
    /// Ordered by name.
    pub slices: Vec<PlannedSlice>,
    /// `None` with `spec.configMap: false` (the existing one is then pruned).
    pub config_map: Option<Desired<ConfigMap>>,
    /// With `security.curve`: the server key Secret to create when there is none yet, without
    /// its data (the writer makes the key pair, so that no secret key passes through a plan).
    pub create_server_key: Option<Secret>,
    /// With `security.curve`: the allow-lists the proxies follow (written before the
    /// DaemonSet, whose pods mount it).
    pub allow_list: Option<Desired<ConfigMap>>,
    /// With `spec.relays.enabled`: the proxies' ServiceAccount, Role and RoleBinding, written
    /// before the DaemonSet whenever the DaemonSet is (they are not watched, so they ride with
    /// it; the periodic full apply restores them too).
    pub proxy_access: Option<ProxyAccess>,
    /// Children of the group that this plan does not want: apply, then prune (stackable's
    /// `ClusterResources`), every prunable kind in one place.
    pub prune: Vec<ChildRef>,
    pub report: Report,
    /// Ready endpoints published, all families (status and `endpoints_published`).
    pub published_endpoints: i32,
    /// Why the group cannot be realised, when it cannot.
    pub problem: Option<Problem>,
}

fn names<K: Resource>(objects: &[Arc<K>]) -> impl Iterator<Item = &str> {
    objects.iter().filter_map(|object| object.meta().name.as_deref())
}

/// The children in `children` that `kept` does not name.
fn prune_set(children: &Children, kept: &BTreeSet<(ChildKind, &str)>) -> Vec<ChildRef> {
    let cached = [
        (
            ChildKind::EndpointSlice,
            names(&children.slices).collect::<Vec<_>>(),
        ),
        (ChildKind::ConfigMap, names(&children.config_maps).collect()),
    ];
    let relay_slices = names(&children.relay_slices).map(|name| (ChildKind::EndpointSlice, name));
    cached
        .into_iter()
        .flat_map(|(kind, names)| names.into_iter().map(move |name| (kind, name)))
        .chain(relay_slices)
        .filter(|child| !kept.contains(child))
        .map(|(kind, name)| ChildRef {
            kind,
            name: name.to_string(),
        })
        .collect()
}

/// Pods with a ready (published) endpoint in the cached slices (either tier), and among the
/// endpoints (all of them: a leaf is published too, in its relay's assignment).
fn published_pods(children: &Children, endpoints: &[ProxyEndpoint]) -> (BTreeSet<String>, BTreeSet<String>) {
    let before = children
        .slices
        .iter()
        .chain(&children.relay_slices)
        .flat_map(|slice| endpoint_list::published_pods(slice).map(|(pod, _)| pod.to_string()))
        .collect();
    let after = endpoints
        .iter()
        .filter(|endpoint| endpoint.ready)
        .map(|endpoint| endpoint.pod_name.clone())
        .collect();
    (before, after)
}

/// The status for `observed` and the Events its change (and the proxies' changes) deserve.
fn report(
    group: &FanoutGroup,
    observed: &Observed<'_>,
    joined_or_left: (&BTreeSet<String>, &BTreeSet<String>),
    relays: i32,
    now: Timestamp,
) -> Report {
    let old = group.status.as_ref();
    let mut new = compute_status(observed, old, now);
    new.relays = relays;
    let notices = notices(joined_or_left.0, joined_or_left.1, old, &new);
    Report {
        status: (old != Some(&new)).then_some(new),
        notices,
    }
}

/// Plans one reconcile of `group` (whose checked name and namespace are `id`) over its cached
/// `children`. `policy` bounds what the group may ask for (a refused group gets no DaemonSet
/// written, the existing one is left as it is, and the reason goes to its status); `now`
/// stamps condition transitions.
pub fn plan(
    group: &FanoutGroup,
    id: &GroupId,
    children: &Children,
    policy: &ProxyPolicy,
    now: Timestamp,
) -> Result<Plan, Unrealisable> {
    let spec = &group.spec;
    let port = u16::try_from(spec.publisher_port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or(Unrealisable::InvalidPort(spec.publisher_port))?;
    let mut kept: BTreeSet<(ChildKind, &str)> = BTreeSet::new();

    // CURVE: the group's key pair and the allow-lists.
    let curve = spec
        .security
        .curve
        .then(|| plan_curve(group, id, children))
        .transpose()?;
    let allow_list_name = keys::allow_list_configmap_name(&id.name);
    if curve.is_some() {
        kept.insert((ChildKind::ConfigMap, allow_list_name.as_str()));
    }
    let server_key = curve.as_ref().and_then(|curve| match &curve.server_key {
        ServerKey::Ready(key) => Some(*key),
        _ => None,
    });

    // The proxies (or the problem that prevents them; the existing DaemonSet is kept then).
    let unusable_key = curve.as_ref().and_then(|curve| match &curve.server_key {
        ServerKey::Unusable(why) => Some(Unrealisable::CurveKeyUnusable(why.clone())),
        _ => None,
    });
    let built = match unusable_key {
        Some(unusable) => Err(unusable),
        None => policy
            .admit(spec, &id.namespace, &id.name)
            .map_err(Unrealisable::from)
            .and_then(|admitted| objects::daemon_set(group, &admitted)),
    };
    let (daemon_set, problem) = match built {
        Ok(ds) => (Some(Desired::new(ds, &children.daemon_sets)), None),
        Err(unrealisable) => (
            None,
            Some(Problem {
                reason: unrealisable.reason().to_string(),
                message: unrealisable.to_string(),
            }),
        ),
    };

    let service = Desired::new(objects::headless_service(group)?, &children.services);

    // The slices, with stable slots.
    // Only the pods of the group's own DaemonSet are its proxies.
    let own_daemon_set = named(&children.daemon_sets, &id.name).map(|ds| ds.as_ref());
    let proxies = slices::own_pods(children.pods.iter().map(|pod| pod.as_ref()), own_daemon_set);
    let all_endpoints = slices::endpoints_from_pods(proxies, spec.host_network);
    // The relay tree (flat below its threshold: the top tier is then every endpoint).
    let tiers = relays::tiers(group, all_endpoints.clone(), &children.relay_slices);
    let endpoints = tiers.top.clone();
    let existing: Vec<ExistingSlice> = children
        .slices
        .iter()
        .filter_map(|slice| ExistingSlice::from_slice(slice))
        .collect();
    let per_slice = usize::try_from(spec.endpoints_per_slice).unwrap_or(1);
    let mut planned = Vec::new();
    for slice_plan in slices::plan_slices(&id.name, endpoints.clone(), &existing, per_slice) {
        let mut object = slices::endpoint_slice(group, &slice_plan)?;
        let annotations = object.metadata.annotations.get_or_insert_with(Default::default);
        if let Some(key) = &server_key {
            annotations.insert(CURVE_PUBLIC_KEY_ANNOTATION.to_string(), key.to_z85());
        }
        // What a publisher's frames of several messages must stay within.
        annotations.insert(
            MAX_MESSAGE_BYTES_ANNOTATION.to_string(),
            spec.max_message_bytes.to_string(),
        );
        let slice = Desired::new(object, &children.slices);
        let newly_ready_since = slices::newly_ready(&slice_plan, slice.cached.as_deref())
            .into_iter()
            .filter_map(|endpoint| endpoint.ready_since)
            .collect();
        planned.push(PlannedSlice {
            slice,
            newly_ready_since,
        });
    }
    // Each relay's assignment, after the top tier (a proxy promoted to relay is listed for
    // publishers before its old relay lets it go: duplicates rather than losses).
    for (object, newly_ready_since) in
        relays::assignment_slices(group, id, &tiers, &children.relay_slices, per_slice)?
    {
        planned.push(PlannedSlice {
            slice: Desired::new(object, &children.relay_slices),
            newly_ready_since,
        });
    }
    for slice in &planned {
        if let Some(name) = slice.slice.object.metadata.name.as_deref() {
            kept.insert((ChildKind::EndpointSlice, name));
        }
    }

    // The ConfigMap with the ready endpoints (or none, and the old one pruned). One too large
    // for the API server is not written (the one there is stays as it is) and says so.
    let configmap_name = id.configmap_name();
    let mut endpoint_list_too_large = None;
    let config_map = if spec.config_map {
        kept.insert((ChildKind::ConfigMap, configmap_name.as_str()));
        let list = slices::endpoint_list(&endpoints, port);
        let config_map = objects::endpoints_configmap(group, list, server_key.as_ref())?;
        let size = objects::configmap_data_size(&config_map);
        if size > objects::CONFIGMAP_DATA_LIMIT {
            endpoint_list_too_large = Some(size);
            None
        } else {
            Some(Desired::new(config_map, &children.config_maps))
        }
    } else {
        None
    };
    let prune = prune_set(children, &kept);

    let leaves: usize = tiers.assignments.values().map(Vec::len).sum();
    let published_endpoints =
        i32::try_from(endpoints.iter().filter(|endpoint| endpoint.ready).count() + leaves)
            .unwrap_or(i32::MAX);
    let observed = Observed {
        generation: group.meta().generation,
        daemon_set: named(&children.daemon_sets, &id.name).map(|ds| ds.as_ref()),
        published_endpoints,
        problem: problem.clone(),
        curve_public_key: server_key.map(|key| key.to_z85()),
        unresolved_keys: curve
            .as_ref()
            .map(|curve| curve.unresolved.clone())
            .unwrap_or_default(),
        endpoint_list_too_large,
    };
    let (before, after) = published_pods(children, &all_endpoints);
    let relay_count = i32::try_from(tiers.relays()).unwrap_or(i32::MAX);
    let report = report(group, &observed, (&before, &after), relay_count, now);
    let (create_server_key, allow_list) = match curve {
        Some(curve) => (
            (curve.server_key == ServerKey::Missing)
                .then(|| objects::server_key_secret(group))
                .transpose()?,
            Some(curve.allow_list),
        ),
        None => (None, None),
    };
    let proxy_access = proxy_access::proxy_access(group, id)?;
    Ok(Plan {
        daemon_set,
        proxy_access,
        service,
        slices: planned,
        config_map,
        create_server_key,
        allow_list,
        prune,
        report,
        published_endpoints,
        problem,
    })
}

/// The CURVE part of a plan: the state of the server key and the allow-lists.
struct CurvePlan {
    server_key: ServerKey,
    allow_list: Desired<ConfigMap>,
    /// Key Secrets named or selected that give no key, both lists together.
    unresolved: Vec<String>,
}

fn plan_curve(group: &FanoutGroup, id: &GroupId, children: &Children) -> Result<CurvePlan, Unrealisable> {
    let secrets = &children.key_secrets;
    // Any group's key pair is a child of the controller; a client key never is.
    let is_server_key = |secret: &Secret| {
        secret.labels().get(objects::MANAGED_BY_LABEL).map(String::as_str) == Some(objects::FIELD_MANAGER)
    };
    let server_key = keys::server_key(&id.name, secrets, |secret| {
        server_key_ownership(secret, group, id)
    });
    let security = &group.spec.security;
    let mut publishers = keys::allow_list(security.allowed_publishers.as_ref(), secrets, is_server_key);
    if group.spec.relays.enabled
        && let ServerKey::Ready(key) = &server_key
    {
        relays::admit_relays(&mut publishers.text, key);
    }
    let subscribers = keys::allow_list(security.allowed_subscribers.as_ref(), secrets, is_server_key);
    let tagged = |side: &str, list: &keys::AllowList| {
        list.unresolved
            .iter()
            .map(|why| format!("{side} {why}"))
            .collect::<Vec<_>>()
    };
    let mut unresolved = tagged("allowedPublishers", &publishers);
    unresolved.extend(tagged("allowedSubscribers", &subscribers));
    let allow_list = Desired::new(
        objects::allow_list_configmap(group, publishers.text, subscribers.text)?,
        &children.config_maps,
    );
    Ok(CurvePlan {
        server_key,
        allow_list,
        unresolved,
    })
}

/// Whether `secret` is `group`'s own server key pair, or why not. The labels say it is one of
/// the group's children, but anyone who may create Secrets in the namespace can set labels, and
/// could so plant a key pair of their own and hold the proxies' secret key. The controller
/// owner reference to the group's uid is what the controller's own create wrote: a uid exists
/// only once the group does, so no Secret made before the group can carry it. (The field
/// manager in `managedFields` is no proof: every client names its own.)
fn server_key_ownership(secret: &Secret, group: &FanoutGroup, id: &GroupId) -> Result<(), String> {
    if !is_child(&secret.metadata, id) {
        return Err(format!(
            "is not labelled as one of the group's children ({}={}, {}={})",
            crate::endpoint_list::GROUP_LABEL,
            id.name,
            objects::MANAGED_BY_LABEL,
            objects::FIELD_MANAGER
        ));
    }
    if !is_controlled_by(&secret.metadata, group) {
        return Err(format!(
            "has no controller ownerReference to this FanoutGroup (uid {})",
            group.metadata.uid.as_deref().unwrap_or("unknown")
        ));
    }
    Ok(())
}

/// The report for a group that `problem` keeps from being realised (a name that cannot name
/// a Service, or a child the API refused): `Degraded` with its reason, and a warning Event.
/// The published count stays what the status last said.
pub fn plan_problem(
    group: &FanoutGroup,
    id: &GroupId,
    children: &Children,
    problem: Problem,
    now: Timestamp,
) -> Report {
    let observed = Observed {
        generation: group.meta().generation,
        daemon_set: named(&children.daemon_sets, &id.name).map(|ds| ds.as_ref()),
        published_endpoints: group.status.as_ref().map(|s| s.published_endpoints).unwrap_or(0),
        problem: Some(problem),
        // What the status last said about the keys stays.
        curve_public_key: group.status.as_ref().and_then(|s| s.curve_public_key.clone()),
        unresolved_keys: group
            .status
            .as_ref()
            .map(|s| s.unresolved_keys.clone())
            .unwrap_or_default(),
        endpoint_list_too_large: None,
    };
    let none = BTreeSet::new();
    let relays = group.status.as_ref().map(|s| s.relays).unwrap_or(0);
    report(group, &observed, (&none, &none), relays, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::objects::tests_support::{build, group, group_with, open_policy};
    use crate::controller::status::DEGRADED;
    use crate::crd::FanoutGroupSpec;
    use k8s_openapi::api::core::v1::Pod;

    fn id() -> GroupId {
        GroupId {
            namespace: "net".into(),
            name: "updates".into(),
        }
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "net", "uid": format!("uid-{name}"),
                             "labels": {"fanout.dev/group": "updates"},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                                  "name": "updates", "uid": DS_UID, "controller": true}]},
                "spec": {"nodeName": format!("node-{name}"), "containers": []},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                           "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                                           "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .unwrap(),
        )
    }

    const DS_UID: &str = "ds-uid";

    /// The group's DaemonSet as the cache holds it once written.
    fn cached(mut ds: DaemonSet) -> Arc<DaemonSet> {
        ds.metadata.uid = Some(DS_UID.into());
        Arc::new(ds)
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// The caches as they would be once `plan`'s children were written.
    fn written(plan: &Plan, pods: Vec<Arc<Pod>>) -> Children {
        Children {
            pods,
            daemon_sets: plan.daemon_set.iter().map(|d| cached(d.object.clone())).collect(),
            services: vec![Arc::new(plan.service.object.clone())],
            slices: plan
                .slices
                .iter()
                .filter(|s| relays::relay_of(&s.slice.object).is_none())
                .map(|s| Arc::new(s.slice.object.clone()))
                .collect(),
            relay_slices: plan
                .slices
                .iter()
                .filter(|s| relays::relay_of(&s.slice.object).is_some())
                .map(|s| Arc::new(s.slice.object.clone()))
                .collect(),
            config_maps: plan
                .config_map
                .iter()
                .chain(plan.allow_list.iter())
                .map(|c| Arc::new(c.object.clone()))
                .collect(),
            key_secrets: Vec::new(),
        }
    }

    /// The first plan of the test group over nothing but `pods`.
    fn plan_for_pods(pods: Vec<Arc<Pod>>) -> Plan {
        let children = Children {
            pods,
            daemon_sets: vec![cached(build(&group()))],
            ..Children::default()
        };
        plan(&group(), &id(), &children, &open_policy(), now()).unwrap()
    }

    fn slice_names(plan: &Plan) -> Vec<&str> {
        plan.slices
            .iter()
            .map(|s| s.slice.object.metadata.name.as_deref().unwrap())
            .collect()
    }

    #[test]
    fn a_new_group_plans_every_child_a_status_and_a_joined_event() {
        let children = Children {
            pods: vec![pod("p1", "10.0.0.1", true), pod("p2", "10.0.0.2", true)],
            ..Children::default()
        };
        let first = plan(&group(), &id(), &children, &open_policy(), now()).unwrap();
        assert!(first.daemon_set.as_ref().is_some_and(|d| d.cached.is_none()));
        assert_eq!(first.published_endpoints, 0, "no DaemonSet yet: no pod is its");
        let children = Children {
            daemon_sets: vec![cached(build(&group()))],
            ..children
        };
        let plan = plan(&group(), &id(), &children, &open_policy(), now()).unwrap();
        assert_eq!(plan.service.object.metadata.name.as_deref(), Some("updates"));
        assert_eq!(slice_names(&plan), ["updates-v4-0"]);
        assert_eq!(plan.slices[0].slice.object.endpoints.len(), 2);
        assert_eq!(plan.slices[0].newly_ready_since.len(), 2);
        let cm = &plan.config_map.as_ref().unwrap().object;
        assert_eq!(
            cm.data.as_ref().unwrap()["endpoints"],
            "tcp://10.0.0.1:7100\ntcp://10.0.0.2:7100\n"
        );
        assert!(plan.prune.is_empty());
        assert_eq!(plan.published_endpoints, 2);
        let status = plan.report.status.as_ref().expect("a first status");
        assert_eq!(
            (status.published_endpoints, status.observed_generation),
            (2, Some(3))
        );
        let reasons: Vec<_> = plan.report.notices.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(reasons, ["ProxiesJoined"]);
    }

    #[test]
    fn the_same_state_once_written_plans_the_cached_copies_and_no_report() {
        let pods = vec![pod("p1", "10.0.0.1", true)];
        let first = plan_for_pods(pods.clone());
        let mut settled = group();
        settled.status = first.report.status.clone();
        let children = written(&first, pods);
        // The DaemonSet now in the cache moves the conditions once more ...
        let second = plan(&settled, &id(), &children, &open_policy(), now()).unwrap();
        settled.status = second.report.status.clone().or(settled.status);
        // ... and then nothing changes.
        let again = plan(&settled, &id(), &children, &open_policy(), now()).unwrap();
        assert!(again.daemon_set.as_ref().unwrap().cached.is_some());
        assert!(again.service.cached.is_some());
        assert!(again.slices[0].slice.cached.is_some());
        assert!(again.slices[0].newly_ready_since.is_empty(), "already published");
        assert!(again.prune.is_empty());
        assert_eq!(again.report, Report::default());
    }

    #[test]
    fn a_pod_turning_unready_leaves_and_an_unwanted_slice_is_pruned() {
        let pods = vec![pod("p1", "10.0.0.1", true), pod("p2", "10.0.0.2", true)];
        let first = plan_for_pods(pods.clone());
        let mut children = written(&first, vec![pods[0].clone(), pod("p2", "10.0.0.2", false)]);
        let mut stale = (*children.slices[0]).clone();
        stale.metadata.name = Some("updates-v4-7".into());
        stale.endpoints.clear();
        children.slices.push(Arc::new(stale));
        let mut settled = group();
        settled.status = first.report.status.clone();
        let next = plan(&settled, &id(), &children, &open_policy(), now()).unwrap();
        assert_eq!(slice_names(&next), ["updates-v4-0"]);
        assert_eq!(
            next.prune,
            [ChildRef {
                kind: ChildKind::EndpointSlice,
                name: "updates-v4-7".into()
            }]
        );
        assert_eq!(
            next.config_map.as_ref().unwrap().object.data.as_ref().unwrap()["endpoints"],
            "tcp://10.0.0.1:7100\n"
        );
        assert_eq!(next.published_endpoints, 1);
        let reasons: Vec<_> = next.report.notices.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(reasons, ["ProxiesLeft"]);
    }

    fn tree_group() -> FanoutGroup {
        group_with(FanoutGroupSpec {
            relays: crate::crd::RelaySpec {
                enabled: true,
                min_proxies: 9,
            },
            ..FanoutGroupSpec::default()
        })
    }

    fn pods_ready(n: usize, unready: &str) -> Vec<Arc<Pod>> {
        (1..=n)
            .map(|i| {
                let name = format!("p{i:02}");
                let ready = name != unready;
                pod(&name, &format!("10.0.0.{i}"), ready)
            })
            .collect()
    }

    #[test]
    fn a_group_at_its_threshold_publishes_the_relays_on_top_and_each_relays_leaves_apart() {
        let group = tree_group();
        let children = Children {
            pods: pods_ready(12, ""),
            daemon_sets: vec![cached(build(&group))],
            ..Children::default()
        };
        let first = plan(&group, &id(), &children, &open_policy(), now()).unwrap();
        let (top, assignments): (Vec<_>, Vec<_>) = first
            .slices
            .iter()
            .map(|s| &s.slice.object)
            .partition(|s| relays::relay_of(s).is_none());
        let old_selector = endpoint_list::slice_selector("updates");
        let listed: BTreeSet<String> = top
            .iter()
            .filter(|s| endpoint_list::selector_matches(&old_selector, s.metadata.labels.as_ref().unwrap()))
            .flat_map(|s| endpoint_list::published_pods(s).map(|(pod, _)| pod.to_string()))
            .collect();
        assert_eq!(listed.len(), 4, "an old publisher sees the 4 relays: {listed:?}");
        for slice in &assignments {
            assert!(!endpoint_list::selector_matches(
                &old_selector,
                slice.metadata.labels.as_ref().unwrap()
            ));
            assert!(listed.contains(relays::relay_of(slice).unwrap()));
        }
        let leaves: BTreeSet<String> = assignments
            .iter()
            .flat_map(|s| endpoint_list::published_pods(s).map(|(pod, _)| pod.to_string()))
            .collect();
        assert_eq!(leaves.len(), 8);
        assert!(leaves.is_disjoint(&listed));
        let cm = &first.config_map.as_ref().unwrap().object.data.as_ref().unwrap()["endpoints"];
        assert_eq!(cm.lines().count(), 4, "{cm}");
        let status = first.report.status.as_ref().unwrap();
        assert_eq!((status.relays, status.published_endpoints), (4, 12));
        assert!(first.proxy_access.is_some());

        // Written, the same state plans nothing new; a relay turning unready hands its leaves
        // to the others, its assignment is pruned, and no event says anyone left but it.
        let mut settled = group.clone();
        settled.status = first.report.status.clone();
        let children = written(&first, pods_ready(12, ""));
        let again = plan(&settled, &id(), &children, &open_policy(), now()).unwrap();
        assert!(again.slices.iter().all(|s| s.slice.cached.is_some()));
        assert!(again.prune.is_empty());
        let gone = relays::relay_of(assignments[0]).unwrap().to_string();
        let mut children = children;
        children.pods = pods_ready(12, &gone);
        settled.status = again.report.status.clone().or(settled.status);
        let next = plan(&settled, &id(), &children, &open_policy(), now()).unwrap();
        let pruned: Vec<&str> = next.prune.iter().map(|c| c.name.as_str()).collect();
        assert!(
            pruned
                .iter()
                .any(|name| name.starts_with(&format!("updates-relay-{gone}-"))),
            "{pruned:?}"
        );
        // Any other assignment pruned is one of a relay left with no leaves (a relay's slice
        // exists only while it has some).
        for name in pruned
            .iter()
            .filter(|name| !name.starts_with(&format!("updates-relay-{gone}-")))
        {
            assert!(
                next.slices
                    .iter()
                    .all(|s| s.slice.object.metadata.name.as_deref() != Some(*name))
            );
        }
        let placed: BTreeSet<String> = next
            .slices
            .iter()
            .flat_map(|s| endpoint_list::published_pods(&s.slice.object).map(|(pod, _)| pod.to_string()))
            .collect();
        assert_eq!(
            placed.len(),
            11,
            "every ready proxy still published once: {placed:?}"
        );
        let reasons: Vec<_> = next
            .report
            .notices
            .iter()
            .map(|n| (n.reason.as_str(), n.note.as_str()))
            .collect();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert_eq!(reasons[0].0, "ProxiesLeft");
        assert!(reasons[0].1.contains(&gone));
    }

    #[test]
    fn turning_the_configmap_off_prunes_it() {
        let first = plan(&group(), &id(), &Children::default(), &open_policy(), now()).unwrap();
        let off = group_with(FanoutGroupSpec {
            config_map: false,
            ..FanoutGroupSpec::default()
        });
        let next = plan(&off, &id(), &written(&first, vec![]), &open_policy(), now()).unwrap();
        assert!(next.config_map.is_none());
        assert_eq!(
            next.prune,
            [ChildRef {
                kind: ChildKind::ConfigMap,
                name: "updates-endpoints".into()
            }]
        );
    }

    #[test]
    fn an_endpoint_list_too_large_for_a_configmap_is_not_written_and_degrades_the_group() {
        use k8s_openapi::api::core::v1::{PodCondition, PodIP, PodSpec, PodStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        // 1 MiB / 23 bytes a line ("tcp://10.1.y.z:7100\n" here): 48 000 proxies are over the limit.
        let template = pod("p", "10.0.0.1", true);
        let many: Vec<Arc<Pod>> = (0..48_000u32)
            .map(|i| {
                let ip = format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256);
                Arc::new(Pod {
                    metadata: ObjectMeta {
                        name: Some(format!("p{i:05}")),
                        ..template.metadata.clone()
                    },
                    spec: Some(PodSpec::default()),
                    status: Some(PodStatus {
                        pod_ips: Some(vec![PodIP { ip: ip.clone() }]),
                        pod_ip: Some(ip),
                        conditions: Some(vec![PodCondition {
                            type_: "Ready".into(),
                            status: "True".into(),
                            ..PodCondition::default()
                        }]),
                        ..PodStatus::default()
                    }),
                })
            })
            .collect();
        // A flat group lists every proxy in the ConfigMap (in tree mode only the relays, below).
        let flat = group_with(FanoutGroupSpec {
            relays: crate::crd::RelaySpec {
                enabled: false,
                ..Default::default()
            },
            ..FanoutGroupSpec::default()
        });
        let first_children = Children {
            pods: many[..100].to_vec(),
            daemon_sets: vec![cached(build(&flat))],
            ..Children::default()
        };
        let first = plan(&flat, &id(), &first_children, &open_policy(), now()).unwrap();
        let mut children = written(&first, many);
        children.daemon_sets = vec![cached(build(&flat))];
        let mut settled = flat.clone();
        settled.status = first.report.status.clone();
        let big = plan(&settled, &id(), &children, &open_policy(), now()).unwrap();
        assert!(big.config_map.is_none(), "not written");
        assert!(big.prune.is_empty(), "and not pruned: {:?}", big.prune);
        assert_eq!(big.published_endpoints, 48_000, "the slices carry them all");
        let status = big.report.status.as_ref().unwrap();
        let degraded = status.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "EndpointListTooLarge")
        );
        assert!(
            big.report
                .notices
                .iter()
                .any(|n| n.warning && n.reason == "EndpointListTooLarge")
        );

        // The same proxies as a tree: the ConfigMap lists the top tier, ⌈√48 000⌉ = 220 relays.
        let mut tree = group();
        tree.status = first.report.status.clone();
        let tree_plan = plan(&tree, &id(), &children, &open_policy(), now()).unwrap();
        let listed = &tree_plan.config_map.as_ref().expect("written").object;
        let lines = listed.data.as_ref().unwrap()["endpoints"].lines().count();
        assert_eq!(lines, 220);
        assert_eq!(tree_plan.published_endpoints, 48_000);
    }

    #[test]
    fn without_an_image_the_daemon_set_is_kept_and_the_group_degraded() {
        let first = plan(&group(), &id(), &Children::default(), &open_policy(), now()).unwrap();
        let next = plan(
            &group(),
            &id(),
            &written(&first, vec![]),
            &ProxyPolicy::default(),
            now(),
        )
        .unwrap();
        assert!(next.daemon_set.is_none());
        assert!(
            next.prune.is_empty(),
            "the existing DaemonSet stays: {:?}",
            next.prune
        );
        assert_eq!(next.problem.as_ref().unwrap().reason, "NoProxyImage");
        let status = next.report.status.as_ref().unwrap();
        let degraded = status.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "NoProxyImage")
        );
        assert!(
            next.report
                .notices
                .iter()
                .any(|n| n.warning && n.reason == "NoProxyImage")
        );
    }

    #[test]
    fn a_group_the_policy_refuses_gets_no_daemon_set_and_says_why() {
        let host = group_with(FanoutGroupSpec {
            host_network: true,
            ..FanoutGroupSpec::default()
        });
        let narrow = ProxyPolicy {
            own_image: Some("img:1".into()),
            ..ProxyPolicy::default()
        };
        let refused = plan(&host, &id(), &Children::default(), &narrow, now()).unwrap();
        assert!(refused.daemon_set.is_none());
        let problem = refused.problem.as_ref().unwrap();
        assert_eq!(problem.reason, "HostNetworkNotAllowed");
        assert!(
            problem.message.contains("--allow-host-network"),
            "{}",
            problem.message
        );
        let status = refused.report.status.as_ref().unwrap();
        let degraded = status.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
        assert_eq!(degraded.reason, "HostNetworkNotAllowed");
        assert!(
            refused
                .report
                .notices
                .iter()
                .any(|n| n.warning && n.reason == "HostNetworkNotAllowed")
        );
    }

    #[test]
    fn a_stray_labelled_ready_pod_is_not_an_endpoint() {
        let mut stray = (*pod("stray", "10.0.0.9", true)).clone();
        stray.metadata.owner_references = None;
        let plan = plan_for_pods(vec![pod("p1", "10.0.0.1", true), Arc::new(stray)]);
        assert_eq!(plan.published_endpoints, 1);
        assert_eq!(
            plan.config_map.as_ref().unwrap().object.data.as_ref().unwrap()["endpoints"],
            "tcp://10.0.0.1:7100\n"
        );
    }

    #[test]
    fn a_refused_child_is_reported_as_degraded_once() {
        let problem = Problem {
            reason: "ObjectRejected".into(),
            message: "Service is invalid".into(),
        };
        let report = plan_problem(&group(), &id(), &Children::default(), problem.clone(), now());
        let status = report.status.clone().unwrap();
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == DEGRADED && c.reason == "ObjectRejected")
        );
        assert_eq!(report.notices.len(), 1);
        let mut degraded = group();
        degraded.status = Some(status);
        assert_eq!(
            plan_problem(&degraded, &id(), &Children::default(), problem, now()),
            Report::default(),
            "nothing new to say"
        );
    }

    fn key_secret(name: &str, key: &str, managed: bool) -> Arc<Secret> {
        let mut labels = std::collections::BTreeMap::from([
            (keys::PUBLIC_KEY_LABEL.to_string(), "true".to_string()),
            ("fanout.dev/group".to_string(), "updates".to_string()),
        ]);
        if managed {
            labels.insert(objects::MANAGED_BY_LABEL.into(), objects::FIELD_MANAGER.into());
        }
        let mut secret = Secret::default();
        secret.metadata.name = Some(name.into());
        secret.metadata.namespace = Some("net".into());
        secret.metadata.labels = Some(labels);
        secret.data = Some(std::collections::BTreeMap::from([(
            "public.key".to_string(),
            k8s_openapi::ByteString(key.as_bytes().to_vec()),
        )]));
        Arc::new(secret)
    }

    /// The group's key pair as the writer creates it: the planned Secret with a public key.
    fn written_server_key(group: &FanoutGroup, key: &str) -> Arc<Secret> {
        let mut secret = objects::server_key_secret(group).unwrap();
        secret.data = Some(std::collections::BTreeMap::from([(
            "public.key".to_string(),
            k8s_openapi::ByteString(key.as_bytes().to_vec()),
        )]));
        Arc::new(secret)
    }

    fn curve_group() -> FanoutGroup {
        group_with(FanoutGroupSpec {
            security: crate::crd::GroupSecurity {
                curve: true,
                ..Default::default()
            },
            ..FanoutGroupSpec::default()
        })
    }

    #[test]
    fn a_curve_group_gets_its_key_pair_then_publishes_the_key_and_admits_the_named_publishers() {
        use crate::crd::{GroupSecurity, KeySecrets};
        let curve = group_with(FanoutGroupSpec {
            security: GroupSecurity {
                curve: true,
                allowed_publishers: Some(KeySecrets {
                    secret_names: vec!["pub-a".into(), "pub-gone".into()],
                    selector: None,
                }),
                allowed_subscribers: None,
            },
            ..FanoutGroupSpec::default()
        });
        let publisher = crate::curve::KeyPair::generate().unwrap().public.to_z85();
        let server = crate::curve::KeyPair::generate().unwrap().public;
        let pods = vec![pod("p1", "10.0.0.1", true)];
        let mut children = Children {
            pods: pods.clone(),
            daemon_sets: vec![cached(
                objects::daemon_set(
                    &curve,
                    &open_policy().admit(&curve.spec, "net", "updates").unwrap(),
                )
                .unwrap(),
            )],
            key_secrets: vec![key_secret("pub-a", &publisher, false)],
            ..Children::default()
        };
        // No key pair yet: the writer is asked to make one, nothing publishes a key.
        let first = plan(&curve, &id(), &children, &open_policy(), now()).unwrap();
        let to_create = first.create_server_key.as_ref().expect("a key pair to create");
        assert_eq!(to_create.metadata.name.as_deref(), Some("updates-curve"));
        assert_eq!(to_create.immutable, Some(true));
        assert!(
            to_create.data.is_none() && to_create.string_data.is_none(),
            "no key in a plan"
        );
        assert!(
            is_child(&to_create.metadata, &id()),
            "labelled as the group's child"
        );
        assert_eq!(
            to_create.metadata.labels.as_ref().unwrap()[keys::PUBLIC_KEY_LABEL],
            "true"
        );
        let allow = &first.allow_list.as_ref().unwrap().object;
        assert_eq!(allow.metadata.name.as_deref(), Some("updates-curve-allow"));
        let publishers = &allow.data.as_ref().unwrap()["publishers"];
        assert!(publishers.contains(&publisher), "{publishers}");
        // No key yet: the slices carry the group's message cap only.
        let annotations = first.slices[0]
            .slice
            .object
            .metadata
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            vec![MAX_MESSAGE_BYTES_ANNOTATION]
        );
        assert_eq!(annotations[MAX_MESSAGE_BYTES_ANNOTATION], "65536");
        let status = first.report.status.as_ref().unwrap();
        assert_eq!(status.curve_public_key, None);
        assert_eq!(status.unresolved_keys.len(), 1);
        assert!(status.unresolved_keys[0].starts_with("allowedPublishers pub-gone:"));
        let ds = first.daemon_set.as_ref().unwrap();
        let pod_spec = ds.object.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let args = pod_spec.containers[0].args.as_ref().unwrap().join(" ");
        assert!(
            args.contains("--curve-secret-key-file /etc/fanout/curve/secret.key"),
            "{args}"
        );
        assert!(
            args.contains("--allow-publishers-file /etc/fanout/curve-allow/publishers"),
            "{args}"
        );
        assert_eq!(pod_spec.security_context.as_ref().unwrap().fs_group, Some(65532));
        let volumes: Vec<_> = pod_spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            volumes,
            ["socket-root", "curve-key", "curve-allow", "proxy-api-access"]
        );
        let secret_volume = pod_spec.volumes.as_ref().unwrap()[1].secret.as_ref().unwrap();
        let items = secret_volume.items.as_ref().unwrap();
        assert_eq!(
            (items.len(), items[0].key.as_str()),
            (1, "secret.key"),
            "only the secret half is mounted"
        );

        // The key pair written (the group's child labels, its controller owner reference): its public half is
        // published on every slice, in the ConfigMap and the status; no second key is made.
        children
            .key_secrets
            .push(written_server_key(&curve, &server.to_z85()));
        let next = plan(&curve, &id(), &children, &open_policy(), now()).unwrap();
        assert!(next.create_server_key.is_none());
        let annotations = next.slices[0].slice.object.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["fanout.dev/curve-public-key"], server.to_z85());
        let cm = next.config_map.as_ref().unwrap().object.data.as_ref().unwrap();
        assert_eq!(cm["curve-public-key"], server.to_z85());
        assert_eq!(
            next.report.status.as_ref().unwrap().curve_public_key,
            Some(server.to_z85())
        );
        // The group's own key publishes only as its relays (relays are on by default); with
        // relays off it never does (keys::tests: not even selected).
        let publishers = &next.allow_list.as_ref().unwrap().object.data.as_ref().unwrap()["publishers"];
        assert!(publishers.contains(&server.to_z85()));
        let mut flat_only = curve.clone();
        flat_only.spec.relays.enabled = false;
        let flat = plan(&flat_only, &id(), &children, &open_policy(), now()).unwrap();
        let publishers = &flat.allow_list.as_ref().unwrap().object.data.as_ref().unwrap()["publishers"];
        assert!(!publishers.contains(&server.to_z85()));

        // Turning CURVE off prunes the allow-lists (the key pair stays with the group).
        let off = group_with(FanoutGroupSpec::default());
        let mut written_children = written(&next, pods);
        written_children.key_secrets = children.key_secrets.clone();
        let plain = plan(&off, &id(), &written_children, &open_policy(), now()).unwrap();
        assert!(plain.allow_list.is_none());
        assert_eq!(
            plain.prune,
            [ChildRef {
                kind: ChildKind::ConfigMap,
                name: "updates-curve-allow".into()
            }]
        );
    }

    /// Issue 10: someone who may create Secrets plants `<name>-curve` with the controller's labels
    /// and a key pair of their own (before the group exists, or with a wrong or non-controller
    /// owner reference). The proxies never get it, nothing overwrites it, and the status says why.
    #[test]
    fn a_key_pair_planted_with_the_right_labels_is_not_trusted() {
        let curve = curve_group();
        let planted = crate::curve::KeyPair::generate().unwrap().public.to_z85();
        let mut other_group = curve_group();
        other_group.metadata.uid = Some("uid-of-an-earlier-group".into());
        let mut not_controller = (*written_server_key(&curve, &planted)).clone();
        for reference in not_controller.metadata.owner_references.iter_mut().flatten() {
            reference.controller = Some(false);
        }
        for (case, secret) in [
            ("labels only", key_secret("updates-curve", &planted, true)),
            ("another uid", written_server_key(&other_group, &planted)),
            ("not the controller", Arc::new(not_controller)),
        ] {
            let children = Children {
                daemon_sets: vec![cached(build(&curve))],
                key_secrets: vec![secret],
                ..Children::default()
            };
            let refused = plan(&curve, &id(), &children, &open_policy(), now()).unwrap();
            assert!(refused.daemon_set.is_none(), "{case}: no proxies with that key");
            assert!(
                refused.create_server_key.is_none(),
                "{case}: nothing overwrites it"
            );
            let problem = refused.problem.as_ref().unwrap();
            assert_eq!(problem.reason, "CurveKeyUnusable", "{case}");
            assert!(
                problem
                    .message
                    .contains("has no controller ownerReference to this FanoutGroup (uid uid-1)")
                    && problem.message.contains("delete it"),
                "{case}: {}",
                problem.message
            );
            let status = refused.report.status.as_ref().unwrap();
            assert_eq!(
                status.curve_public_key, None,
                "{case}: the planted key is not published"
            );
            let degraded = status.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
            assert_eq!(
                (degraded.status.as_str(), degraded.reason.as_str()),
                ("True", "CurveKeyUnusable")
            );
            assert!(
                refused
                    .slices
                    .iter()
                    .all(|s| s.slice.object.metadata.annotations.is_none()),
                "{case}"
            );
        }
        // The controller's own key pair, for comparison, is used.
        let children = Children {
            key_secrets: vec![written_server_key(&curve, &planted)],
            ..Children::default()
        };
        let trusted = plan(&curve, &id(), &children, &open_policy(), now()).unwrap();
        assert!(trusted.problem.is_none(), "{:?}", trusted.problem);
        assert!(trusted.daemon_set.is_some());
    }

    #[test]
    fn a_foreign_secret_in_the_key_pairs_place_stops_the_group() {
        let curve = curve_group();
        let planted = crate::curve::KeyPair::generate().unwrap().public.to_z85();
        let children = Children {
            key_secrets: vec![key_secret("updates-curve", &planted, false)],
            ..Children::default()
        };
        let refused = plan(&curve, &id(), &children, &open_policy(), now()).unwrap();
        assert!(refused.daemon_set.is_none());
        assert!(refused.create_server_key.is_none(), "nothing overwrites it");
        assert_eq!(refused.problem.as_ref().unwrap().reason, "CurveKeyUnusable");
        assert!(
            refused
                .slices
                .iter()
                .all(|s| s.slice.object.metadata.annotations.is_none())
        );
    }
}

//! Pure: everything one reconcile wants, from the group and its cached children. This is where
//! desired state is planned; `writer` applies a plan and nothing else decides what to write.
//!
//! A [`Plan`] holds each child to apply beside the copy the cache has (so the writer can skip
//! one already as desired), the children to prune, the status (only when it changed) and the
//! Events. The modules it draws on stay small and pure as well: `objects` (DaemonSet, Service,
//! ConfigMap), `slices` (pods → endpoints → EndpointSlices), `status`, `notices`.

use super::children::{Children, named};
use super::notices::{Notice, notices};
use super::objects::{self, GroupId, Unrealisable};
use super::policy::ProxyPolicy;
use super::slices::{self, ExistingSlice, ProxyEndpoint};
use super::status::{Observed, Problem, compute_status};
use crate::crd::{FanoutGroup, FanoutGroupStatus};
use crate::endpoint_list;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
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
    cached
        .into_iter()
        .flat_map(|(kind, names)| names.into_iter().map(move |name| (kind, name)))
        .filter(|child| !kept.contains(child))
        .map(|(kind, name)| ChildRef {
            kind,
            name: name.to_string(),
        })
        .collect()
}

/// Pods with a ready (published) endpoint in the cached slices, and in the planned endpoints.
fn published_pods(children: &Children, endpoints: &[ProxyEndpoint]) -> (BTreeSet<String>, BTreeSet<String>) {
    let before = children
        .slices
        .iter()
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
    now: Timestamp,
) -> Report {
    let old = group.status.as_ref();
    let new = compute_status(observed, old, now);
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

    // The proxies (or the problem that prevents them; the existing DaemonSet is kept then).
    let built = policy
        .admit(spec, &id.namespace, &id.name)
        .map_err(Unrealisable::from)
        .and_then(|admitted| objects::daemon_set(group, &admitted));
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
    let endpoints = slices::endpoints_from_pods(proxies, spec.host_network);
    let existing: Vec<ExistingSlice> = children
        .slices
        .iter()
        .filter_map(|slice| ExistingSlice::from_slice(slice))
        .collect();
    let per_slice = usize::try_from(spec.endpoints_per_slice).unwrap_or(1);
    let mut planned = Vec::new();
    for slice_plan in slices::plan_slices(&id.name, endpoints.clone(), &existing, per_slice) {
        let slice = Desired::new(slices::endpoint_slice(group, &slice_plan)?, &children.slices);
        let newly_ready_since = slices::newly_ready(&slice_plan, slice.cached.as_deref())
            .into_iter()
            .filter_map(|endpoint| endpoint.ready_since)
            .collect();
        planned.push(PlannedSlice {
            slice,
            newly_ready_since,
        });
    }
    for slice in &planned {
        if let Some(name) = slice.slice.object.metadata.name.as_deref() {
            kept.insert((ChildKind::EndpointSlice, name));
        }
    }

    // The ConfigMap with the ready endpoints (or none, and the old one pruned).
    let configmap_name = id.configmap_name();
    let config_map = if spec.config_map {
        kept.insert((ChildKind::ConfigMap, configmap_name.as_str()));
        let list = slices::endpoint_list(&endpoints, port);
        Some(Desired::new(
            objects::endpoints_configmap(group, list)?,
            &children.config_maps,
        ))
    } else {
        None
    };
    let prune = prune_set(children, &kept);

    let published_endpoints =
        i32::try_from(endpoints.iter().filter(|endpoint| endpoint.ready).count()).unwrap_or(i32::MAX);
    let observed = Observed {
        generation: group.meta().generation,
        daemon_set: named(&children.daemon_sets, &id.name).map(|ds| ds.as_ref()),
        published_endpoints,
        problem: problem.clone(),
    };
    let (before, after) = published_pods(children, &endpoints);
    let report = report(group, &observed, (&before, &after), now);
    Ok(Plan {
        daemon_set,
        service,
        slices: planned,
        config_map,
        prune,
        report,
        published_endpoints,
        problem,
    })
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
    };
    let none = BTreeSet::new();
    report(group, &observed, (&none, &none), now)
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
                .map(|s| Arc::new(s.slice.object.clone()))
                .collect(),
            config_maps: plan
                .config_map
                .iter()
                .map(|c| Arc::new(c.object.clone()))
                .collect(),
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
}

//! Pure: proxy pods → endpoints → EndpointSlices and the ConfigMap endpoint list. No I/O.
//!
//! Slot assignment is stable so that a change to one proxy rewrites only the slice holding it:
//! an endpoint stays in the slice it is already in; endpoints that left free their slot; new
//! endpoints fill free slots of existing slices (in name order) before a new slice is made.
//! Slices are named `<group>-v4-<n>` / `<group>-v6-<n>` with the lowest free `n`, so the same
//! input always gives the same names.
//!
//! Longer than 500 lines for a reason: half of it is the tests that pin slot assignment (which
//! slice a change rewrites) case by case.

use crate::controller::objects::{Component, GroupId, Unrealisable, child_meta};
use crate::crd::FanoutGroup;
use crate::endpoint_list::{
    self, Endpoint as ZmqEndpoint, PUBLISH_PORT_NAME, SERVICE_NAME_LABEL, SLICE_MANAGED_BY_LABEL,
    SLICE_MANAGER,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Address family of a slice (IPv4 and IPv6 endpoints never share a slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    /// `addressType` of an EndpointSlice.
    pub fn address_type(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
    pub fn from_address_type(address_type: &str) -> Option<Self> {
        match address_type {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }
    fn slug(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// One proxy address as it will be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyEndpoint {
    pub pod_name: String,
    pub pod_uid: Option<String>,
    pub address: IpAddr,
    pub node_name: Option<String>,
    /// Ready and not terminating: publishers connect to it.
    pub ready: bool,
    /// Ready, terminating or not.
    pub serving: bool,
    pub terminating: bool,
    /// When the pod's Ready condition last turned true (for the publish-latency histogram).
    pub ready_since: Option<Timestamp>,
}

impl ProxyEndpoint {
    pub fn family(&self) -> Family {
        Family::of(&self.address)
    }
}

/// Whether `pod` is one of `daemon_set`'s own pods: its controller owner reference is that
/// DaemonSet (kind, name and uid). Only these become endpoints; the group's label alone, which
/// anyone who may create a pod in the namespace can set, is not enough.
pub fn is_owned_by(pod: &Pod, daemon_set: &DaemonSet) -> bool {
    super::children::is_controlled_by(&pod.metadata, daemon_set)
}

/// The pods of `pods` that `daemon_set` (None: none is cached yet) owns.
pub fn own_pods<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    daemon_set: Option<&'a DaemonSet>,
) -> impl Iterator<Item = &'a Pod> {
    pods.into_iter()
        .filter(move |pod| daemon_set.is_some_and(|ds| is_owned_by(pod, ds)))
}

/// The endpoints of a group's proxy pods: one per pod IP (two for a dual-stack pod), or per
/// host IP with `hostNetwork`. Pods without an address yet, or finished, are left out.
pub fn endpoints_from_pods<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    host_network: bool,
) -> Vec<ProxyEndpoint> {
    let mut endpoints = Vec::new();
    for pod in pods {
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let ready_condition = status
            .conditions
            .iter()
            .flatten()
            .find(|condition| condition.type_ == "Ready");
        let pod_ready = ready_condition.is_some_and(|condition| condition.status == "True");
        let ready_since = ready_condition
            .filter(|_| pod_ready)
            .and_then(|condition| condition.last_transition_time.as_ref())
            .map(|time| time.0);
        let terminating = pod.metadata.deletion_timestamp.is_some();

        let raw: Vec<&str> = if host_network {
            let many: Vec<&str> = status
                .host_ips
                .iter()
                .flatten()
                .map(|ip| ip.ip.as_str())
                .collect();
            if many.is_empty() {
                status.host_ip.as_deref().into_iter().collect()
            } else {
                many
            }
        } else {
            let many: Vec<&str> = status.pod_ips.iter().flatten().map(|ip| ip.ip.as_str()).collect();
            if many.is_empty() {
                status.pod_ip.as_deref().into_iter().collect()
            } else {
                many
            }
        };
        let mut seen_families = BTreeSet::new();
        for text in raw {
            // A malformed address from the API is skipped, never fatal.
            let Ok(address) = text.parse::<IpAddr>() else {
                continue;
            };
            // One endpoint per family per pod, the first listed (the primary).
            if !seen_families.insert(Family::of(&address)) {
                continue;
            }
            endpoints.push(ProxyEndpoint {
                pod_name: name.clone(),
                pod_uid: pod.metadata.uid.clone(),
                address,
                node_name: pod.spec.as_ref().and_then(|spec| spec.node_name.clone()),
                ready: pod_ready && !terminating,
                serving: pod_ready,
                terminating,
                ready_since,
            });
        }
    }
    endpoints
}

/// What a slice in the API currently holds, as far as slot assignment cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingSlice {
    pub name: String,
    pub family: Family,
    /// Pod names, in the slice's order.
    pub pods: Vec<String>,
}

impl ExistingSlice {
    /// Reads a slice from the API; `None` for an address type we never write (FQDN).
    pub fn from_slice(slice: &EndpointSlice) -> Option<Self> {
        Some(Self {
            name: slice.metadata.name.clone()?,
            family: Family::from_address_type(&slice.address_type)?,
            pods: slice
                .endpoints
                .iter()
                .filter_map(|endpoint| endpoint.target_ref.as_ref()?.name.clone())
                .collect(),
        })
    }
}

/// A slice as it should be: its name, family and endpoints (sorted by pod name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePlan {
    pub name: String,
    pub family: Family,
    pub endpoints: Vec<ProxyEndpoint>,
}

/// Assigns endpoints to slices with minimal churn (see the module comment). Returns only
/// non-empty slices, ordered by name; an existing slice missing from the result is to be deleted.
pub fn plan_slices(
    group_name: &str,
    endpoints: Vec<ProxyEndpoint>,
    existing: &[ExistingSlice],
    per_slice: usize,
) -> Vec<SlicePlan> {
    let per_slice = per_slice.max(1);
    let mut used_names: BTreeSet<String> = existing.iter().map(|slice| slice.name.clone()).collect();
    let mut plans = Vec::new();
    for family in [Family::V4, Family::V6] {
        let mut wanted: BTreeMap<String, ProxyEndpoint> = endpoints
            .iter()
            .filter(|endpoint| endpoint.family() == family)
            .map(|endpoint| (endpoint.pod_name.clone(), endpoint.clone()))
            .collect();
        let mut family_existing: Vec<&ExistingSlice> =
            existing.iter().filter(|slice| slice.family == family).collect();
        family_existing.sort_by(|a, b| a.name.cmp(&b.name));

        // 1. Keep every endpoint where it is (up to capacity, first slice wins a duplicate).
        let mut family_plans: Vec<SlicePlan> = family_existing
            .iter()
            .map(|slice| {
                let mut kept = Vec::new();
                for pod in &slice.pods {
                    if kept.len() >= per_slice {
                        break;
                    }
                    if let Some(endpoint) = wanted.remove(pod) {
                        kept.push(endpoint);
                    }
                }
                SlicePlan {
                    name: slice.name.clone(),
                    family,
                    endpoints: kept,
                }
            })
            .collect();

        // 2. Newcomers (and overflow) fill holes in name order, then go to new slices.
        let mut newcomers = wanted.into_values();
        for plan in &mut family_plans {
            while plan.endpoints.len() < per_slice {
                match newcomers.next() {
                    Some(endpoint) => plan.endpoints.push(endpoint),
                    None => break,
                }
            }
        }
        let mut rest: Vec<ProxyEndpoint> = newcomers.collect();
        let mut index = 0usize;
        while !rest.is_empty() {
            let name = loop {
                let candidate = format!("{group_name}-{}-{index}", family.slug());
                index += 1;
                if used_names.insert(candidate.clone()) {
                    break candidate;
                }
            };
            let take = rest.len().min(per_slice);
            let chunk: Vec<ProxyEndpoint> = rest.drain(..take).collect();
            family_plans.push(SlicePlan {
                name,
                family,
                endpoints: chunk,
            });
        }

        for mut plan in family_plans {
            if plan.endpoints.is_empty() {
                continue;
            }
            plan.endpoints.sort_by(|a, b| a.pod_name.cmp(&b.pod_name));
            plans.push(plan);
        }
    }
    plans.sort_by(|a, b| a.name.cmp(&b.name));
    plans
}

/// The EndpointSlice object for a plan.
pub fn endpoint_slice(group: &FanoutGroup, plan: &SlicePlan) -> Result<EndpointSlice, Unrealisable> {
    let id = GroupId::of(group)?;
    let mut metadata = child_meta(group, &id, plan.name.clone(), Component::EndpointList)?;
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(SLICE_MANAGED_BY_LABEL.to_string(), SLICE_MANAGER.to_string());
    labels.insert(SERVICE_NAME_LABEL.to_string(), id.name.clone());
    Ok(EndpointSlice {
        metadata,
        address_type: plan.family.address_type().to_string(),
        endpoints: plan
            .endpoints
            .iter()
            .map(|endpoint| Endpoint {
                addresses: vec![endpoint.address.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(endpoint.ready),
                    serving: Some(endpoint.serving),
                    terminating: Some(endpoint.terminating),
                }),
                node_name: endpoint.node_name.clone(),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".to_string()),
                    name: Some(endpoint.pod_name.clone()),
                    namespace: Some(id.namespace.clone()),
                    uid: endpoint.pod_uid.clone(),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(PUBLISH_PORT_NAME.to_string()),
            port: Some(group.spec.publisher_port),
            protocol: Some("TCP".to_string()),
            ..EndpointPort::default()
        }]),
    })
}

/// The ConfigMap's `endpoints` value: the ready endpoints, as the contract renders them.
pub fn endpoint_list(endpoints: &[ProxyEndpoint], port: u16) -> String {
    let ready: Vec<ZmqEndpoint> = endpoints
        .iter()
        .filter(|endpoint| endpoint.ready)
        .map(|endpoint| ZmqEndpoint::tcp(endpoint.address, port))
        .collect();
    endpoint_list::render_list(&ready)
}

/// Endpoints of `plan` that are ready now but were not published (or absent) in `before`:
/// the ones whose publication the latency histogram measures once the slice is written.
pub fn newly_ready<'a>(plan: &'a SlicePlan, before: Option<&EndpointSlice>) -> Vec<&'a ProxyEndpoint> {
    let was_published: BTreeSet<(&str, &str)> = before
        .map(|slice| endpoint_list::published_pods(slice).collect())
        .unwrap_or_default();
    plan.endpoints
        .iter()
        .filter(|endpoint| endpoint.ready)
        .filter(|endpoint| {
            !was_published.contains(&(endpoint.pod_name.as_str(), endpoint.address.to_string().as_str()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostIP, PodCondition, PodIP, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(name: &str, ips: &[&str], ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(format!("node-{name}")),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: ips.first().map(|ip| ip.to_string()),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
                host_ip: Some("192.0.2.1".into()),
                host_ips: Some(vec![HostIP {
                    ip: "192.0.2.1".into(),
                }]),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(Timestamp::from_second(1_700_000_000).unwrap())),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn ep(name: &str, ip: &str) -> ProxyEndpoint {
        ProxyEndpoint {
            pod_name: name.into(),
            pod_uid: None,
            address: ip.parse().unwrap(),
            node_name: None,
            ready: true,
            serving: true,
            terminating: false,
            ready_since: None,
        }
    }

    fn many(count: usize) -> Vec<ProxyEndpoint> {
        (0..count)
            .map(|i| ep(&format!("p{i:04}"), &format!("10.0.{}.{}", i / 250, i % 250 + 1)))
            .collect()
    }

    fn as_existing(plans: &[SlicePlan]) -> Vec<ExistingSlice> {
        plans
            .iter()
            .map(|plan| ExistingSlice {
                name: plan.name.clone(),
                family: plan.family,
                pods: plan.endpoints.iter().map(|e| e.pod_name.clone()).collect(),
            })
            .collect()
    }

    fn changed<'a>(before: &'a [SlicePlan], after: &'a [SlicePlan]) -> Vec<&'a str> {
        let old: BTreeMap<&str, &SlicePlan> = before.iter().map(|p| (p.name.as_str(), p)).collect();
        let new: BTreeMap<&str, &SlicePlan> = after.iter().map(|p| (p.name.as_str(), p)).collect();
        let names: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
        names
            .into_iter()
            .filter(|name| old.get(name) != new.get(name))
            .collect()
    }

    #[test]
    fn pods_become_endpoints_with_conditions() {
        let mut terminating = pod("c", &["10.0.0.3"], true);
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let mut done = pod("d", &["10.0.0.4"], false);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let no_ip = pod("e", &[], false);
        let pods = [
            pod("a", &["10.0.0.1"], true),
            pod("b", &["10.0.0.2"], false),
            terminating,
            done,
            no_ip,
        ];
        let endpoints = endpoints_from_pods(&pods, false);
        let summary: Vec<_> = endpoints
            .iter()
            .map(|e| (e.pod_name.as_str(), e.ready, e.serving, e.terminating))
            .collect();
        assert_eq!(
            summary,
            [
                ("a", true, true, false),
                ("b", false, false, false),
                ("c", false, true, true)
            ]
        );
        assert_eq!(endpoints[0].node_name.as_deref(), Some("node-a"));
        assert!(endpoints[0].ready_since.is_some());
        assert!(endpoints[1].ready_since.is_none());
    }

    fn owned(mut pod: Pod, kind: &str, name: &str, uid: &str, controller: Option<bool>) -> Pod {
        pod.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: if kind == "DaemonSet" { "apps/v1" } else { "v1" }.into(),
                kind: kind.into(),
                name: name.into(),
                uid: uid.into(),
                controller,
                block_owner_deletion: None,
            },
        ]);
        pod
    }

    #[test]
    fn only_pods_the_groups_daemon_set_controls_count() {
        let ds = DaemonSet {
            metadata: ObjectMeta {
                name: Some("updates".into()),
                uid: Some("ds-uid".into()),
                ..ObjectMeta::default()
            },
            ..DaemonSet::default()
        };
        let ip = &["10.0.0.1"];
        let pods = [
            owned(pod("own", ip, true), "DaemonSet", "updates", "ds-uid", Some(true)),
            // A stray Ready pod with the group's labels but no owner.
            pod("stray", ip, true),
            owned(
                pod("old-uid", ip, true),
                "DaemonSet",
                "updates",
                "other",
                Some(true),
            ),
            owned(
                pod("other-ds", ip, true),
                "DaemonSet",
                "other",
                "ds-uid",
                Some(true),
            ),
            owned(pod("not-ctl", ip, true), "DaemonSet", "updates", "ds-uid", None),
            owned(pod("rs", ip, true), "ReplicaSet", "updates", "ds-uid", Some(true)),
        ];
        let names: Vec<_> = own_pods(&pods, Some(&ds))
            .map(|pod| pod.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["own"]);
        assert_eq!(own_pods(&pods, None).count(), 0, "no DaemonSet, no endpoints");
        let mut no_uid = ds.clone();
        no_uid.metadata.uid = None;
        assert_eq!(own_pods(&pods, Some(&no_uid)).count(), 0);
    }

    #[test]
    fn host_network_publishes_the_host_ip() {
        let endpoints = endpoints_from_pods(&[pod("a", &["10.0.0.1"], true)], true);
        assert_eq!(endpoints[0].address.to_string(), "192.0.2.1");
    }

    #[test]
    fn dual_stack_pods_go_to_separate_family_slices() {
        let pods = [
            pod("a", &["10.0.0.1", "fd00::1"], true),
            pod("b", &["fd00::2", "10.0.0.2"], true),
        ];
        let plans = plan_slices("g", endpoints_from_pods(&pods, false), &[], 100);
        let summary: Vec<_> = plans
            .iter()
            .map(|p| (p.name.as_str(), p.family, p.endpoints.len()))
            .collect();
        assert_eq!(summary, [("g-v4-0", Family::V4, 2), ("g-v6-0", Family::V6, 2)]);
        let group = crate::controller::objects::tests_support::group();
        let slice = endpoint_slice(&group, &plans[1]).unwrap();
        assert_eq!(slice.address_type, "IPv6");
        assert_eq!(slice.endpoints[0].addresses, ["fd00::1"]);
    }

    #[test]
    fn chunks_at_endpoints_per_slice() {
        let plans = plan_slices("g", many(250), &[], 100);
        let sizes: Vec<_> = plans
            .iter()
            .map(|p| (p.name.as_str(), p.endpoints.len()))
            .collect();
        assert_eq!(sizes, [("g-v4-0", 100), ("g-v4-1", 100), ("g-v4-2", 50)]);
    }

    #[test]
    fn one_pod_changing_rewrites_only_its_slice() {
        let before = plan_slices("g", many(250), &[], 100);
        let mut endpoints = many(250);
        endpoints[150].ready = false;
        let after = plan_slices("g", endpoints, &as_existing(&before), 100);
        assert_eq!(changed(&before, &after), ["g-v4-1"]);
    }

    #[test]
    fn a_pod_leaving_empties_a_slot_and_a_newcomer_fills_it() {
        let before = plan_slices("g", many(250), &[], 100);
        let mut endpoints = many(250);
        endpoints.remove(42); // p0042 leaves slice 0
        let after_leave = plan_slices("g", endpoints.clone(), &as_existing(&before), 100);
        assert_eq!(changed(&before, &after_leave), ["g-v4-0"]);
        assert_eq!(after_leave[0].endpoints.len(), 99);

        endpoints.push(ep("zz-new", "10.9.9.9"));
        let after_join = plan_slices("g", endpoints, &as_existing(&after_leave), 100);
        assert_eq!(changed(&after_leave, &after_join), ["g-v4-0"]);
        assert_eq!(after_join[0].endpoints.len(), 100);
        assert!(after_join[0].endpoints.iter().any(|e| e.pod_name == "zz-new"));
    }

    #[test]
    fn newcomer_with_no_hole_goes_to_the_slice_with_room() {
        let before = plan_slices("g", many(250), &[], 100);
        let mut endpoints = many(250);
        endpoints.push(ep("a-first-by-name", "10.8.8.8"));
        let after = plan_slices("g", endpoints, &as_existing(&before), 100);
        assert_eq!(changed(&before, &after), ["g-v4-2"]);
    }

    #[test]
    fn emptied_slices_disappear_and_names_are_reused() {
        let before = plan_slices("g", many(250), &[], 100);
        let after = plan_slices("g", many(100), &as_existing(&before), 100);
        let names: Vec<_> = after.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["g-v4-0"]);
        let regrown = plan_slices("g", many(250), &as_existing(&after), 100);
        let names: Vec<_> = regrown.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["g-v4-0", "g-v4-1", "g-v4-2"]);
    }

    #[test]
    fn shrinking_endpoints_per_slice_moves_only_the_overflow() {
        let before = plan_slices("g", many(100), &[], 100);
        let after = plan_slices("g", many(100), &as_existing(&before), 40);
        let sizes: Vec<_> = after.iter().map(|p| p.endpoints.len()).collect();
        assert_eq!(sizes, [40, 40, 20]);
        assert_eq!(after[0].endpoints, before[0].endpoints[..40]);
    }

    #[test]
    fn a_pod_listed_twice_is_published_once() {
        let existing = [
            ExistingSlice {
                name: "g-v4-0".into(),
                family: Family::V4,
                pods: vec!["p0000".into()],
            },
            ExistingSlice {
                name: "g-v4-1".into(),
                family: Family::V4,
                pods: vec!["p0000".into()],
            },
        ];
        let after = plan_slices("g", many(1), &existing, 100);
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].name, "g-v4-0");
    }

    #[test]
    fn slice_object_carries_labels_port_and_target() {
        let group = crate::controller::objects::tests_support::group();
        let plans = plan_slices(
            "updates",
            endpoints_from_pods(&[pod("a", &["10.0.0.1"], true)], false),
            &[],
            10,
        );
        let slice = endpoint_slice(&group, &plans[0]).unwrap();
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SLICE_MANAGED_BY_LABEL], SLICE_MANAGER);
        assert_eq!(labels[SERVICE_NAME_LABEL], "updates");
        assert_eq!(labels[crate::crd::GROUP_LABEL], "updates");
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("publish"), Some(7100)));
        let endpoint = &slice.endpoints[0];
        let target = endpoint.target_ref.as_ref().unwrap();
        assert_eq!(
            (
                target.kind.as_deref(),
                target.name.as_deref(),
                target.uid.as_deref()
            ),
            (Some("Pod"), Some("a"), Some("uid-a"))
        );
        assert_eq!(endpoint.node_name.as_deref(), Some("node-a"));
        let conditions = endpoint.conditions.as_ref().unwrap();
        assert_eq!(
            (conditions.ready, conditions.serving, conditions.terminating),
            (Some(true), Some(true), Some(false))
        );
    }

    #[test]
    fn configmap_list_is_sorted_ready_only_with_bracketed_ipv6() {
        let mut not_ready = ep("c", "10.0.0.3");
        not_ready.ready = false;
        let endpoints = [
            ep("b", "10.0.0.2"),
            ep("a", "fd00::1"),
            not_ready,
            ep("d", "10.0.0.10"),
        ];
        assert_eq!(
            endpoint_list(&endpoints, 7100),
            "tcp://10.0.0.10:7100\ntcp://10.0.0.2:7100\ntcp://[fd00::1]:7100\n"
        );
        assert_eq!(endpoint_list(&[], 7100), "");
    }

    #[test]
    fn newly_ready_compares_with_the_slice_before() {
        let group = crate::controller::objects::tests_support::group();
        let mut endpoints = vec![ep("a", "10.0.0.1"), ep("b", "10.0.0.2")];
        endpoints[1].ready = false;
        let first = plan_slices("updates", endpoints.clone(), &[], 10);
        let written = endpoint_slice(&group, &first[0]).unwrap();
        let names: Vec<_> = newly_ready(&first[0], None)
            .iter()
            .map(|e| e.pod_name.clone())
            .collect();
        assert_eq!(names, ["a"]);
        endpoints[1].ready = true;
        let second = plan_slices("updates", endpoints, &as_existing(&first), 10);
        let names: Vec<_> = newly_ready(&second[0], Some(&written))
            .iter()
            .map(|e| e.pod_name.clone())
            .collect();
        assert_eq!(names, ["b"]);
    }
}

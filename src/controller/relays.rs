//! Pure: a group's proxies split into the tiers of its relay tree (`relay_tree` picks the
//! relays and assigns the leaves), and the EndpointSlices of each relay's assignment. The
//! endpoint-list contract of the tiers is in `endpoint_list`; here is what the controller
//! decides:
//!
//! - **When**: `spec.relays.enabled` and at least `spec.relays.minProxies` ready proxies.
//!   Otherwise the group is flat and everything here is the identity: the top tier is every
//!   endpoint, exactly what the flat slices always held.
//! - **Who**: the ready proxies, each by its node's name (a DaemonSet pod's name changes when
//!   it is recreated, its node does not, so a restarted relay stays the relay). A second pod
//!   on the same node (a surge during an update) is `node/pod`. A pod whose name cannot be a
//!   label value cannot be named by a relay's slices: it stays in the top tier (publishers
//!   reach it directly), so it is never lost.
//! - **Demotion grace**: a proxy that still has assignment slices in the cache (it was a relay
//!   until now) is not made anyone's leaf in the same pass; it stays in the top tier until its
//!   slices are gone. Otherwise a relay and its former leaf could swap roles with both links
//!   up for the moment between the two relays' watches, and messages would circle between
//!   them.
//! - **What a leaf is published as**: one endpoint, its pod's primary address, in its relay's
//!   assignment only (a dual-stack leaf listed twice would get every message twice).

use super::objects::{GroupId, Unrealisable};
use super::slices::{self, ExistingSlice, ProxyEndpoint};
use crate::crd::FanoutGroup;
use crate::endpoint_list::{
    GROUP_LABEL, RELAY_FOR_LABEL, RELAY_LABEL, SERVICE_NAME_LABEL, is_label_value, is_published,
};
use crate::relay_tree;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The tiers of a group for one plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tiers {
    /// What the group's own slices and ConfigMap list: every endpoint when flat; in tree mode
    /// every endpoint but the leaves' (relays, proxies not ready, the ones in their grace).
    pub top: Vec<ProxyEndpoint>,
    /// Relay pod → the endpoints of its leaves (sorted by pod). Empty when flat.
    pub assignments: BTreeMap<String, Vec<ProxyEndpoint>>,
}

impl Tiers {
    /// Relays in the tree (0: flat).
    pub fn relays(&self) -> usize {
        self.assignments.len()
    }

    fn flat(endpoints: Vec<ProxyEndpoint>) -> Self {
        Self {
            top: endpoints,
            assignments: BTreeMap::new(),
        }
    }
}

/// The relay pod an assignment slice belongs to, if it is one.
pub fn relay_of(slice: &EndpointSlice) -> Option<&str> {
    slice.labels().get(RELAY_LABEL).map(String::as_str)
}

/// Relay pods with a published leaf in the cached assignment slices.
fn relays_with_leaves(cached: &[Arc<EndpointSlice>]) -> BTreeSet<&str> {
    cached
        .iter()
        .filter(|slice| {
            slice
                .endpoints
                .iter()
                .any(|endpoint| is_published(endpoint.conditions.as_ref()))
        })
        .filter_map(|slice| relay_of(slice))
        .collect()
}

/// Splits `endpoints` (all of the group's, as `slices::endpoints_from_pods` made them) into
/// tiers; `cached` are the group's assignment slices in the cache.
pub fn tiers(group: &FanoutGroup, endpoints: Vec<ProxyEndpoint>, cached: &[Arc<EndpointSlice>]) -> Tiers {
    let spec = &group.spec.relays;
    // The ready pods, each with its primary (first) endpoint.
    let mut primary: BTreeMap<&str, &ProxyEndpoint> = BTreeMap::new();
    for endpoint in endpoints.iter().filter(|endpoint| endpoint.ready) {
        primary.entry(endpoint.pod_name.as_str()).or_insert(endpoint);
    }
    let min = usize::try_from(spec.min_proxies).unwrap_or(usize::MAX);
    if !spec.enabled || primary.len() < min {
        return Tiers::flat(endpoints);
    }

    // Identities: the node's name, `node/pod` for a second pod on a node, `pod/<name>` without
    // a node. Pods in name order, so the same pods get the same identities.
    let mut by_identity: BTreeMap<String, &str> = BTreeMap::new();
    for (pod, endpoint) in primary.iter().filter(|(pod, _)| is_label_value(pod)) {
        let identity = match endpoint.node_name.as_deref() {
            Some(node) if !by_identity.contains_key(node) => node.to_string(),
            Some(node) => format!("{node}/{pod}"),
            None => format!("pod/{pod}"),
        };
        by_identity.insert(identity, pod);
    }
    let seed = group.meta().uid.clone().unwrap_or_else(|| group.name_any());
    let tree = relay_tree::plan_tree(&seed, by_identity.keys().map(String::as_str));

    let in_grace = relays_with_leaves(cached);
    let mut assignments: BTreeMap<String, Vec<ProxyEndpoint>> = tree
        .relays
        .iter()
        .filter_map(|identity| by_identity.get(identity))
        .map(|pod| (pod.to_string(), Vec::new()))
        .collect();
    let mut leaves: BTreeSet<String> = BTreeSet::new();
    for (leaf_identity, relay_identity) in &tree.leaves {
        let (Some(leaf), Some(relay)) = (by_identity.get(leaf_identity), by_identity.get(relay_identity))
        else {
            continue;
        };
        if in_grace.contains(leaf) {
            continue;
        }
        if let (Some(list), Some(endpoint)) = (assignments.get_mut(*relay), primary.get(leaf)) {
            list.push((*endpoint).clone());
            leaves.insert(leaf.to_string());
        }
    }
    for list in assignments.values_mut() {
        list.sort_by(|a, b| a.pod_name.cmp(&b.pod_name));
    }
    let top = endpoints
        .into_iter()
        .filter(|endpoint| !leaves.contains(&endpoint.pod_name))
        .collect();
    Tiers { top, assignments }
}

/// Name prefix of relay `relay`'s assignment slices (`<prefix>-v4-<n>`).
fn slice_prefix(group: &str, relay: &str) -> String {
    format!("{group}-relay-{relay}")
}

/// An assignment slice to apply, and when each leaf it newly publishes turned ready (for the
/// publish-latency histogram).
pub type AssignmentSlice = (EndpointSlice, Vec<Timestamp>);

/// The assignment slices for `tiers`: per relay, its leaves in slices of at most `per_slice`
/// with the same stable slots as the group's own slices (`slices::plan_slices`), labelled
/// for the relay and not for the group. Ordered by name; cached ones not here are pruned.
pub fn assignment_slices(
    group: &FanoutGroup,
    id: &GroupId,
    tiers: &Tiers,
    cached: &[Arc<EndpointSlice>],
    per_slice: usize,
) -> Result<Vec<AssignmentSlice>, Unrealisable> {
    let mut out = Vec::new();
    for (relay, leaves) in &tiers.assignments {
        let existing: Vec<ExistingSlice> = cached
            .iter()
            .filter(|slice| relay_of(slice) == Some(relay.as_str()))
            .filter_map(|slice| ExistingSlice::from_slice(slice))
            .collect();
        let prefix = slice_prefix(&id.name, relay);
        for plan in slices::plan_slices(&prefix, leaves.clone(), &existing, per_slice) {
            let before = cached
                .iter()
                .find(|slice| slice.metadata.name.as_deref() == Some(plan.name.as_str()));
            let newly_ready = slices::newly_ready(&plan, before.map(|slice| slice.as_ref()))
                .into_iter()
                .filter_map(|endpoint| endpoint.ready_since)
                .collect();
            let mut slice = slices::endpoint_slice(group, &plan)?;
            let labels = slice.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.remove(GROUP_LABEL);
            labels.remove(SERVICE_NAME_LABEL);
            labels.insert(RELAY_FOR_LABEL.to_string(), id.name.clone());
            labels.insert(RELAY_LABEL.to_string(), relay.clone());
            out.push((slice, newly_ready));
        }
    }
    out.sort_by(|a, b| a.0.metadata.name.cmp(&b.0.metadata.name));
    Ok(out)
}

/// With CURVE and relays enabled, the publishers' allow-list admits the group's own key: a
/// relay connects to its leaves' publisher ports as a CURVE client with the group's key pair,
/// which every proxy holds already. Added whenever relays are enabled, not only in tree mode:
/// the proxies read the list from a mounted ConfigMap that the kubelet refreshes only every
/// minute or so, and a leaf must admit its relay at once when the group becomes a tree.
pub fn admit_relays(publishers: &mut String, server_key: &crate::curve::PublicKey) {
    publishers.push_str("# the group's own key: its relays publish to their leaves\n");
    publishers.push_str(&server_key.to_z85());
    publishers.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::objects::tests_support::{group_with, id};
    use crate::crd::{FanoutGroupSpec, RelaySpec};
    use crate::endpoint_list::{SLICE_MANAGED_BY_LABEL, SLICE_MANAGER, selector_matches, slice_selector};

    fn group(min: i32) -> FanoutGroup {
        group_with(FanoutGroupSpec {
            relays: RelaySpec {
                enabled: true,
                min_proxies: min,
            },
            ..FanoutGroupSpec::default()
        })
    }

    fn endpoint(i: usize, ready: bool) -> ProxyEndpoint {
        ProxyEndpoint {
            pod_name: format!("updates-p{i:03}"),
            pod_uid: None,
            address: format!("10.0.{}.{}", i / 200, i % 200 + 1).parse().unwrap(),
            node_name: Some(format!("node-{i:03}")),
            ready,
            serving: ready,
            terminating: false,
            ready_since: None,
        }
    }

    fn endpoints(n: usize) -> Vec<ProxyEndpoint> {
        (0..n).map(|i| endpoint(i, true)).collect()
    }

    fn pods(list: &[ProxyEndpoint]) -> BTreeSet<String> {
        list.iter().map(|e| e.pod_name.clone()).collect()
    }

    #[test]
    fn below_the_threshold_or_disabled_the_group_is_flat_and_unchanged() {
        let all = endpoints(63);
        let flat = tiers(&group(64), all.clone(), &[]);
        assert_eq!(flat, Tiers::flat(all.clone()));
        assert_eq!(flat.relays(), 0);
        let mut off = group(2);
        off.spec.relays.enabled = false;
        assert_eq!(tiers(&off, all.clone(), &[]), Tiers::flat(all));
        // Not-ready proxies do not count towards the threshold.
        let mut some_unready = endpoints(64);
        some_unready[5].ready = false;
        assert_eq!(tiers(&group(64), some_unready, &[]).relays(), 0);
    }

    #[test]
    fn at_the_threshold_the_top_tier_is_the_relays_and_every_other_ready_proxy_is_one_leaf() {
        let mut all = endpoints(64);
        all.push(endpoint(64, false));
        let t = tiers(&group(64), all.clone(), &[]);
        assert_eq!(t.relays(), 8);
        let top = pods(&t.top);
        let leaves: Vec<&ProxyEndpoint> = t.assignments.values().flatten().collect();
        assert_eq!(leaves.len(), 56);
        assert_eq!(top.len(), 8 + 1, "the relays and the proxy not ready");
        assert!(top.contains("updates-p064"));
        for leaf in &leaves {
            assert!(!top.contains(&leaf.pod_name), "{} in both tiers", leaf.pod_name);
        }
        for relay in t.assignments.keys() {
            assert!(top.contains(relay));
        }
        let unique: BTreeSet<&str> = leaves.iter().map(|l| l.pod_name.as_str()).collect();
        assert_eq!(unique.len(), 56, "each leaf under one relay");
    }

    #[test]
    fn a_second_pod_on_a_node_and_a_name_that_cannot_label_are_handled() {
        let mut all = endpoints(9);
        let mut surge = endpoint(9, true);
        surge.node_name = Some("node-000".into());
        all.push(surge);
        let mut long = endpoint(10, true);
        long.pod_name = format!("updates-{}", "x".repeat(60));
        all.push(long.clone());
        let t = tiers(&group(2), all, &[]);
        let placed: BTreeSet<String> = t
            .assignments
            .values()
            .flatten()
            .map(|e| e.pod_name.clone())
            .chain(pods(&t.top))
            .collect();
        assert_eq!(placed.len(), 11, "nobody lost: {placed:?}");
        assert!(pods(&t.top).contains(&long.pod_name), "published flat");
        assert_eq!(t.relays(), relay_tree::relay_count(10));
    }

    #[test]
    fn the_slices_of_a_tree_let_old_publishers_see_the_relays_only() {
        let g = group(9);
        let t = tiers(&g, endpoints(12), &[]);
        let slices: Vec<EndpointSlice> = assignment_slices(&g, &id(), &t, &[], 2)
            .unwrap()
            .into_iter()
            .map(|(slice, _)| slice)
            .collect();
        let per_relay: usize = t.assignments.values().map(|l| l.len().div_ceil(2)).sum();
        assert_eq!(slices.len(), per_relay);
        let leaves: usize = slices.iter().map(|s| s.endpoints.len()).sum();
        assert_eq!(leaves, 12 - 4);
        for slice in &slices {
            let labels = slice.metadata.labels.as_ref().unwrap();
            assert!(
                !selector_matches(&slice_selector("updates"), labels),
                "{labels:?}"
            );
            assert!(!labels.contains_key(SERVICE_NAME_LABEL));
            assert_eq!(labels[SLICE_MANAGED_BY_LABEL], SLICE_MANAGER);
            let relay = &labels[RELAY_LABEL];
            assert!(selector_matches(
                &crate::endpoint_list::relay_slice_selector("updates", relay),
                labels
            ));
            assert!(
                slice
                    .metadata
                    .name
                    .as_deref()
                    .unwrap()
                    .starts_with(&format!("updates-relay-{relay}-v4-"))
            );
            assert!(slice.metadata.owner_references.is_some(), "owned by the group");
        }
    }

    #[test]
    fn a_relay_that_leaves_hands_its_leaves_over_and_a_demoted_relay_waits_for_its_slices_to_go() {
        let g = group(9);
        let all = endpoints(16);
        let before = tiers(&g, all.clone(), &[]);
        let cached: Vec<Arc<EndpointSlice>> = assignment_slices(&g, &id(), &before, &[], 100)
            .unwrap()
            .into_iter()
            .map(|(slice, _)| Arc::new(slice))
            .collect();
        let (gone, orphans) = before.assignments.iter().next().unwrap();
        let gone = gone.clone();
        let orphans = pods(orphans);
        let rest: Vec<ProxyEndpoint> = all.iter().filter(|e| e.pod_name != gone).cloned().collect();
        let after = tiers(&g, rest.clone(), &cached);
        assert!(!after.assignments.contains_key(&gone));
        for orphan in &orphans {
            let placed = after
                .assignments
                .values()
                .flatten()
                .any(|e| &e.pod_name == orphan)
                || pods(&after.top).contains(orphan);
            assert!(placed, "{orphan} placed again");
        }
        assert_eq!(after.assignments.len(), relay_tree::relay_count(15));
    }

    #[test]
    fn a_proxy_still_relaying_in_the_cache_is_nobodys_leaf_until_its_slices_are_gone() {
        let g = group(9);
        let all = endpoints(16);
        let plain = tiers(&g, all.clone(), &[]);
        let leaf = plain.assignments.values().next().unwrap()[0].pod_name.clone();
        // The cache says `leaf` was a relay a moment ago (its slice lists a ready leaf).
        let mut was_relay = Tiers::default();
        was_relay
            .assignments
            .insert(leaf.clone(), vec![endpoint(0, true)]);
        let cached: Vec<Arc<EndpointSlice>> = assignment_slices(&g, &id(), &was_relay, &[], 100)
            .unwrap()
            .into_iter()
            .map(|(slice, _)| Arc::new(slice))
            .collect();
        let held = tiers(&g, all, &cached);
        assert!(pods(&held.top).contains(&leaf), "held in the top tier");
        assert!(!held.assignments.values().flatten().any(|e| e.pod_name == leaf));
        assert_eq!(
            held.assignments.keys().collect::<Vec<_>>(),
            plain.assignments.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_relays_own_key_is_admitted() {
        let key = crate::curve::KeyPair::generate().unwrap().public;
        let mut text = String::from("# header\n");
        admit_relays(&mut text, &key);
        let (list, invalid) = crate::proxy::auth::parse_allow_list(&text);
        assert!(invalid.is_empty());
        assert!(list.allows(&key));
    }
}

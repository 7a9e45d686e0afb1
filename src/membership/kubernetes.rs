//! Membership from the Kubernetes API: the group's EndpointSlices (the default), or its
//! `<group>-endpoints` ConfigMap.
//!
//! The watch keeps the last known membership while the API is unreachable (the watcher backs
//! off and relists); a relist is buffered until it is complete, so a restart of the watch
//! never delivers a transient empty or partial list.

use super::{Membership, MembershipError, MembershipSink, MembershipSource};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;

/// Label every EndpointSlice and ConfigMap of a group carries.
pub use crate::crd::GROUP_LABEL;
/// The `managed-by` value of the slices the controller writes.
pub const SLICE_MANAGER: &str = "controller.fanout.dev";
/// Name of the port, in each slice, that publishers connect to.
pub const PUBLISH_PORT_NAME: &str = "publish";
/// Key of the ConfigMap that holds one `tcp://IP:PORT` a line.
pub const CONFIGMAP_KEY: &str = "endpoints";

/// Name of the ConfigMap that lists a group's ready proxies.
pub fn configmap_name(group: &str) -> String {
    format!("{group}-endpoints")
}

/// Which API object a publisher follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GroupObject {
    /// The group's EndpointSlices (what the controller writes first; preferred).
    #[default]
    Slices,
    /// The `<group>-endpoints` ConfigMap.
    Configmap,
}

/// The ready publisher endpoints one EndpointSlice lists, as `tcp://IP:PORT`.
///
/// An endpoint counts when it is not known to be unready (`ready` absent means ready, as the
/// EndpointSlice API says) and not terminating. The port is the one named `publish`, or the
/// only port when there is just one.
pub fn slice_endpoints(slice: &EndpointSlice) -> Membership {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(PUBLISH_PORT_NAME))
        .or(if ports.len() == 1 { ports.first() } else { None })
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    let Some(port) = port else {
        return Membership::new();
    };
    let ipv6 = slice.address_type == "IPv6";
    slice
        .endpoints
        .iter()
        .filter(|ep| {
            let conditions = ep.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            ready && !terminating
        })
        .flat_map(|ep| ep.addresses.iter())
        .map(|address| {
            if ipv6 {
                format!("tcp://[{address}]:{port}")
            } else {
                format!("tcp://{address}:{port}")
            }
        })
        .collect()
}

/// The membership a `<group>-endpoints` ConfigMap lists, parsed like a membership file
/// (`tcp://IP:PORT` lines; blank lines and `#` comments skipped); invalid lines are returned
/// apart so the caller can warn.
pub fn configmap_endpoints(configmap: &ConfigMap) -> (Membership, Vec<String>) {
    let text = configmap
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIGMAP_KEY))
        .map(String::as_str)
        .unwrap_or("");
    let (members, invalid) = super::file::parse_endpoints(text);
    (members, invalid.into_iter().map(|line| line.text).collect())
}

/// Folds watch events for a set of objects into one membership. Pure: fed events, it says
/// when the union changed.
#[derive(Debug, Default)]
pub struct MembershipIndex {
    by_object: BTreeMap<String, Membership>,
    /// The objects seen since the last `Init`, swapped in at `InitDone`.
    relist: Option<BTreeMap<String, Membership>>,
    /// Whether a complete list has been seen at least once.
    synced: bool,
}

impl MembershipIndex {
    /// Applies one event; returns the new union when it is complete and the event may have
    /// changed it (the caller de-duplicates).
    pub fn apply(&mut self, event: watcher::Event<(String, Membership)>) -> Option<Membership> {
        match event {
            watcher::Event::Apply((name, members)) => {
                self.by_object.insert(name, members);
            }
            watcher::Event::Delete((name, _)) => {
                self.by_object.remove(&name);
            }
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                return None;
            }
            watcher::Event::InitApply((name, members)) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, members);
                return None;
            }
            watcher::Event::InitDone => {
                self.by_object = self.relist.take().unwrap_or_default();
                self.synced = true;
            }
        }
        self.synced.then(|| self.union())
    }

    fn union(&self) -> Membership {
        self.by_object.values().flatten().cloned().collect()
    }
}

/// Follows a group through the API server.
pub struct GroupSource {
    namespace: Option<String>,
    group: String,
    object: GroupObject,
    client: Option<Client>,
}

impl GroupSource {
    /// `namespace: None` is the client's default namespace (kubeconfig context or the pod's own).
    pub fn new(namespace: Option<String>, group: String, object: GroupObject) -> Self {
        Self {
            namespace,
            group,
            object,
            client: None,
        }
    }

    /// Uses this client instead of inferring one from the environment.
    pub fn with_client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    async fn follow(self, sink: MembershipSink) -> Result<(), MembershipError> {
        let client = match self.client {
            Some(client) => client,
            None => Client::try_default()
                .await
                .map_err(|e| MembershipError::Kubernetes(e.to_string()))?,
        };
        let namespace = self
            .namespace
            .unwrap_or_else(|| client.default_namespace().to_string());
        tracing::info!(%namespace, group = %self.group, object = ?self.object, "following group membership");
        match self.object {
            GroupObject::Slices => {
                let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
                let selector = format!(
                    "{GROUP_LABEL}={},endpointslice.kubernetes.io/managed-by={SLICE_MANAGER}",
                    self.group
                );
                follow_objects(api, watcher::Config::default().labels(&selector), sink, |s| {
                    slice_endpoints(s)
                })
                .await
            }
            GroupObject::Configmap => {
                let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
                let name = configmap_name(&self.group);
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                follow_objects(api, config, sink, |cm| {
                    let (members, invalid) = configmap_endpoints(cm);
                    if !invalid.is_empty() {
                        tracing::warn!(configmap = %cm.name_any(), ?invalid, "skipping invalid endpoint lines");
                    }
                    members
                })
                .await
            }
        }
    }
}

impl MembershipSource for GroupSource {
    fn run(self: Box<Self>, sink: MembershipSink) -> BoxFuture<'static, Result<(), MembershipError>> {
        Box::pin(self.follow(sink))
    }
}

/// Watches the objects `config` selects, folds them with `members_of` and delivers every
/// changed union. API errors are logged and retried with backoff; the last delivered
/// membership stays in force meanwhile.
async fn follow_objects<K>(
    api: Api<K>,
    config: watcher::Config,
    sink: MembershipSink,
    members_of: impl Fn(&K) -> Membership + Send + Sync + 'static,
) -> Result<(), MembershipError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut index = MembershipIndex::default();
    let mut last: Option<Membership> = None;
    let mut events = watcher(api, config)
        .default_backoff()
        .map_ok(move |event| map_event(event, |obj| (obj.name_any(), members_of(obj))))
        .boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(error = %err, "membership watch failed; keeping the last known list and retrying");
                continue;
            }
        };
        let Some(members) = index.apply(event) else {
            continue;
        };
        if last.as_ref() == Some(&members) {
            continue;
        }
        match sink.update(members.clone()) {
            Ok(()) => last = Some(members),
            Err(MembershipError::SinkClosed) => return Ok(()),
            Err(other) => return Err(other),
        }
    }
    Err(MembershipError::Kubernetes("the watch stream ended".into()))
}

/// `watcher::Event` has no `map`; this is one.
fn map_event<K, T>(event: watcher::Event<K>, f: impl Fn(&K) -> T) -> watcher::Event<T> {
    match event {
        watcher::Event::Apply(obj) => watcher::Event::Apply(f(&obj)),
        watcher::Event::Delete(obj) => watcher::Event::Delete(f(&obj)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(obj) => watcher::Event::InitApply(f(&obj)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// The source a publisher uses to follow group `group` in `namespace` through the API
/// (EndpointSlices labelled `fanout.dev/group=<group>`, ready endpoints only).
pub fn source_for_group(
    namespace: Option<String>,
    group: String,
) -> Result<Box<dyn MembershipSource>, MembershipError> {
    if group.is_empty() {
        return Err(MembershipError::Kubernetes("the group name is empty".into()));
    }
    Ok(Box::new(GroupSource::new(namespace, group, GroupObject::Slices)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn endpoint(ip: &str, ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready,
                serving: ready,
                terminating,
            }),
            ..Default::default()
        }
    }

    fn slice(address_type: &str, ports: Vec<(&str, i32)>, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: address_type.to_string(),
            endpoints,
            ports: Some(
                ports
                    .into_iter()
                    .map(|(name, port)| EndpointPort {
                        name: Some(name.to_string()),
                        port: Some(port),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn set(items: &[&str]) -> Membership {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_ready_non_terminating_endpoints_count() {
        let s = slice(
            "IPv4",
            vec![("publish", 7100)],
            vec![
                endpoint("10.200.1.1", Some(true), Some(false)),
                endpoint("10.200.1.2", Some(false), Some(false)),
                endpoint("10.200.1.3", Some(true), Some(true)),
                endpoint("10.200.1.4", None, None),
            ],
        );
        assert_eq!(
            slice_endpoints(&s),
            set(&["tcp://10.200.1.1:7100", "tcp://10.200.1.4:7100"])
        );
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        let s = slice(
            "IPv6",
            vec![("publish", 7100)],
            vec![endpoint("fd00::5", Some(true), None)],
        );
        assert_eq!(slice_endpoints(&s), set(&["tcp://[fd00::5]:7100"]));
    }

    #[test]
    fn the_publish_port_is_chosen_by_name() {
        let s = slice(
            "IPv4",
            vec![("http", 9102), ("publish", 7200)],
            vec![endpoint("10.200.1.1", Some(true), None)],
        );
        assert_eq!(slice_endpoints(&s), set(&["tcp://10.200.1.1:7200"]));
        let unnamed_many = slice(
            "IPv4",
            vec![("a", 1), ("b", 2)],
            vec![endpoint("10.200.1.1", None, None)],
        );
        assert!(slice_endpoints(&unnamed_many).is_empty());
        let no_ports = slice("IPv4", vec![], vec![endpoint("10.200.1.1", None, None)]);
        assert!(slice_endpoints(&no_ports).is_empty());
    }

    #[test]
    fn configmap_lines_are_parsed_and_bad_lines_set_apart() {
        let cm = ConfigMap {
            data: Some(
                [(
                    CONFIGMAP_KEY.to_string(),
                    "tcp://10.200.1.2:7100\n\n# comment\ntcp://10.200.1.1:7100\nnot-an-endpoint\n"
                        .to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        };
        let (members, invalid) = configmap_endpoints(&cm);
        assert_eq!(members, set(&["tcp://10.200.1.1:7100", "tcp://10.200.1.2:7100"]));
        assert_eq!(invalid, vec!["not-an-endpoint"]);
        assert!(configmap_endpoints(&ConfigMap::default()).0.is_empty());
    }

    fn entry(name: &str, members: &[&str]) -> (String, Membership) {
        (name.to_string(), set(members))
    }

    #[test]
    fn index_merges_and_deduplicates_across_objects() {
        let mut index = MembershipIndex::default();
        assert_eq!(index.apply(watcher::Event::Init), None);
        assert_eq!(
            index.apply(watcher::Event::InitApply(entry(
                "a",
                &["tcp://1.1.1.1:1", "tcp://2.2.2.2:1"]
            ))),
            None
        );
        assert_eq!(
            index.apply(watcher::Event::InitApply(entry("b", &["tcp://2.2.2.2:1"]))),
            None
        );
        assert_eq!(
            index.apply(watcher::Event::InitDone),
            Some(set(&["tcp://1.1.1.1:1", "tcp://2.2.2.2:1"]))
        );
        // The endpoint listed twice stays while one slice still lists it.
        assert_eq!(
            index.apply(watcher::Event::Apply(entry("a", &["tcp://1.1.1.1:1"]))),
            Some(set(&["tcp://1.1.1.1:1", "tcp://2.2.2.2:1"]))
        );
        assert_eq!(
            index.apply(watcher::Event::Delete(entry("b", &[]))),
            Some(set(&["tcp://1.1.1.1:1"]))
        );
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_drops_vanished_objects() {
        let mut index = MembershipIndex::default();
        index.apply(watcher::Event::Init);
        index.apply(watcher::Event::InitApply(entry("a", &["tcp://1.1.1.1:1"])));
        index.apply(watcher::Event::InitApply(entry("b", &["tcp://2.2.2.2:1"])));
        index.apply(watcher::Event::InitDone);
        // The watch restarts: nothing is delivered until the relist is complete.
        assert_eq!(index.apply(watcher::Event::Init), None);
        assert_eq!(
            index.apply(watcher::Event::InitApply(entry("b", &["tcp://2.2.2.2:1"]))),
            None
        );
        assert_eq!(
            index.apply(watcher::Event::InitDone),
            Some(set(&["tcp://2.2.2.2:1"]))
        );
    }

    #[test]
    fn nothing_is_delivered_before_the_first_complete_list() {
        let mut index = MembershipIndex::default();
        assert_eq!(
            index.apply(watcher::Event::Apply(entry("a", &["tcp://1.1.1.1:1"]))),
            None
        );
    }

    #[test]
    fn source_for_group_refuses_an_empty_name() {
        assert!(source_for_group(None, String::new()).is_err());
        assert!(source_for_group(Some("ns".into()), "g".into()).is_ok());
    }
}

//! Membership from the Kubernetes API: the group's EndpointSlices (the default), or its
//! `<group>-endpoints` ConfigMap.
//!
//! The watch keeps the last known membership while the API is unreachable (the watcher backs
//! off and relists); a relist is buffered until it is complete, so a restart of the watch
//! never delivers a transient empty or partial list.

use super::{Membership, MembershipError, MembershipSender, MembershipSource, deliver};
use crate::curve::PublicKey;
use crate::endpoint_list::{
    self, CURVE_PUBLIC_KEY_ANNOTATION, MAX_MESSAGE_BYTES_ANNOTATION, configmap_members, slice_members,
};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

/// Which API object a publisher follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum GroupObject {
    /// The group's EndpointSlices (what the controller writes first; preferred).
    #[default]
    Slices,
    /// The `<group>-endpoints` ConfigMap.
    Configmap,
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

/// What a [`GroupSource`] follows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Followed {
    /// The group's own list (its top tier), as publishers follow it.
    Group(GroupObject),
    /// The leaves assigned to relay pod `relay` (the relay tree's second tier).
    RelayAssignment { relay: String },
}

/// Follows a group (or a relay's assignment in it) through the API server.
pub struct GroupSource {
    namespace: Option<String>,
    group: String,
    followed: Followed,
    client: Option<Client>,
}

impl GroupSource {
    /// `namespace: None` is the client's default namespace (kubeconfig context or the pod's own).
    pub fn new(namespace: Option<String>, group: String, object: GroupObject) -> Self {
        Self {
            namespace,
            group,
            followed: Followed::Group(object),
            client: None,
        }
    }

    /// The leaves assigned to relay pod `relay` of `group` (`endpoint_list`'s relay tree):
    /// what a relay proxy connects to. The same watch, relist buffering and retries as a
    /// publisher's, on the relay's own slices.
    pub fn relay_assignment(namespace: String, group: String, relay: String) -> Self {
        Self {
            namespace: Some(namespace),
            group,
            followed: Followed::RelayAssignment { relay },
            client: None,
        }
    }

    /// Uses this client instead of inferring one from the environment.
    pub fn with_client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    async fn follow(self, updates: MembershipSender) -> Result<(), MembershipError> {
        let client = match self.client {
            Some(client) => client,
            None => Client::try_default().await.map_err(MembershipError::Client)?,
        };
        let namespace = self
            .namespace
            .unwrap_or_else(|| client.default_namespace().to_string());
        tracing::info!(%namespace, group = %self.group, followed = ?self.followed, "following group membership");
        let slice_selector = match &self.followed {
            Followed::Group(GroupObject::Slices) => endpoint_list::slice_selector(&self.group),
            Followed::RelayAssignment { relay } => endpoint_list::relay_slice_selector(&self.group, relay),
            Followed::Group(GroupObject::Configmap) => String::new(),
        };
        match self.followed {
            Followed::Group(GroupObject::Slices) | Followed::RelayAssignment { .. } => {
                let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
                follow_objects(
                    api,
                    watcher::Config::default().labels(&slice_selector),
                    updates,
                    slice_members,
                )
                .await
            }
            Followed::Group(GroupObject::Configmap) => {
                let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
                let name = endpoint_list::configmap_name(&self.group);
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                follow_objects(api, config, updates, |cm| {
                    let (members, invalid) = configmap_members(cm);
                    if !invalid.is_empty() {
                        tracing::warn!(configmap = %cm.name_any(), invalid = ?invalid.iter().map(|line| &line.text).collect::<Vec<_>>(), "skipping invalid endpoint lines");
                    }
                    members
                })
                .await
            }
        }
    }
}

impl MembershipSource for GroupSource {
    fn run(self: Box<Self>, updates: MembershipSender) -> BoxFuture<'static, Result<(), MembershipError>> {
        Box::pin(self.follow(updates))
    }
}

/// Watches the objects `config` selects, folds them with `members_of` and delivers every
/// changed union. API errors are logged and retried with backoff; the last delivered
/// membership stays in force meanwhile.
async fn follow_objects<K>(
    api: Api<K>,
    config: watcher::Config,
    updates: MembershipSender,
    members_of: impl Fn(&K) -> Membership + Send + Sync + 'static,
) -> Result<(), MembershipError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut index = MembershipIndex::default();
    let mut last: Option<Membership> = None;
    let mut events = watcher(api, config)
        .backoff(crate::watch_backoff::WatchBackoff::default())
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
        if !deliver(&updates, members.clone()) {
            return Ok(());
        }
        last = Some(members);
    }
    Err(MembershipError::WatchEnded)
}

/// `watcher::Event` has no `map`; this is one.
pub(crate) fn map_event<K, T>(event: watcher::Event<K>, f: impl Fn(&K) -> T) -> watcher::Event<T> {
    match event {
        watcher::Event::Apply(obj) => watcher::Event::Apply(f(&obj)),
        watcher::Event::Delete(obj) => watcher::Event::Delete(f(&obj)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(obj) => watcher::Event::InitApply(f(&obj)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Why the proxies' CURVE public key of a group cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum GroupKeyError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error(
        "group {group}: no EndpointSlice carries the {CURVE_PUBLIC_KEY_ANNOTATION} annotation after {waited:.0?} (is security.curve on, and a proxy ready?)"
    )]
    NotPublished { group: String, waited: Duration },
    #[error("group {group}: its EndpointSlices carry different CURVE keys ({count}); refusing to guess")]
    Conflicting { group: String, count: usize },
    #[error("group {group}: the published CURVE key is invalid: {source}")]
    Invalid {
        group: String,
        #[source]
        source: crate::curve::CurveError,
    },
}

/// The one CURVE key the slices publish, if any. Pure.
pub fn published_server_key(
    group: &str,
    slices: &[EndpointSlice],
) -> Result<Option<PublicKey>, GroupKeyError> {
    let keys: BTreeSet<&str> = slices
        .iter()
        .filter_map(|slice| slice.annotations().get(CURVE_PUBLIC_KEY_ANNOTATION))
        .map(|key| key.trim())
        .collect();
    match keys.len() {
        0 => Ok(None),
        1 => keys
            .into_iter()
            .next()
            .map(PublicKey::from_z85)
            .transpose()
            .map_err(|source| GroupKeyError::Invalid {
                group: group.to_string(),
                source,
            }),
        count => Err(GroupKeyError::Conflicting {
            group: group.to_string(),
            count,
        }),
    }
}

/// The proxies' CURVE public key of group `group` in `namespace` (None: the client's default
/// namespace), as the controller publishes it with the endpoint list, waiting up to `wait`
/// for it to appear. Needs what following the group needs: list on EndpointSlices.
pub async fn group_server_key(
    namespace: Option<String>,
    group: &str,
    wait: Duration,
) -> Result<PublicKey, GroupKeyError> {
    let found = poll_group_slices(namespace, group, wait, |slices| {
        published_server_key(group, slices).transpose()
    })
    .await
    .map_err(GroupKeyError::Client)?;
    let key = found.ok_or_else(|| GroupKeyError::NotPublished {
        group: group.to_string(),
        waited: wait,
    })??;
    tracing::info!(%group, server_key = %key.to_z85(), "the group's CURVE key");
    Ok(key)
}

/// The smallest `maxMessageBytes` the slices publish (every slice carries its group's; while
/// a changed cap rolls out two may show), `None` when none does. Pure.
pub fn published_max_message_bytes(slices: &[EndpointSlice]) -> Option<usize> {
    slices
        .iter()
        .filter_map(|slice| slice.annotations().get(MAX_MESSAGE_BYTES_ANNOTATION))
        .filter_map(|value| value.trim().parse::<usize>().ok())
        .min()
}

/// Group `group`'s `maxMessageBytes` as the controller publishes it with the endpoint list,
/// waiting up to `wait` for the group's first slice: `None` when no slice came or the slices
/// carry none (a controller older than the annotation).
pub async fn group_max_message_bytes(
    namespace: Option<String>,
    group: &str,
    wait: Duration,
) -> Result<Option<usize>, kube::Error> {
    let found = poll_group_slices(namespace, group, wait, |slices| {
        (!slices.is_empty()).then(|| published_max_message_bytes(slices))
    })
    .await?;
    Ok(found.flatten())
}

/// Lists group `group`'s EndpointSlices every 500 ms until `found` makes something of them or
/// `wait` has passed (`Ok(None)`); a failed list is logged and retried.
async fn poll_group_slices<T>(
    namespace: Option<String>,
    group: &str,
    wait: Duration,
    mut found: impl FnMut(&[EndpointSlice]) -> Option<T>,
) -> Result<Option<T>, kube::Error> {
    let client = Client::try_default().await?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let params = ListParams::default().labels(&endpoint_list::slice_selector(group));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match api.list(&params).await {
            Ok(list) => {
                if let Some(value) = found(&list.items) {
                    return Ok(Some(value));
                }
            }
            Err(err) => {
                tracing::warn!(%namespace, %group, error = %err, "cannot list the group's EndpointSlices; retrying")
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The source a publisher uses to follow group `group` in `namespace` through the API
/// (EndpointSlices labelled `fanout.dev/group=<group>`, ready endpoints only).
pub fn source_for_group(
    namespace: Option<String>,
    group: String,
) -> Result<Box<dyn MembershipSource>, MembershipError> {
    if group.is_empty() {
        return Err(MembershipError::EmptyGroupName);
    }
    Ok(Box::new(GroupSource::new(namespace, group, GroupObject::Slices)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint_list::Endpoint;

    fn set(items: &[&str]) -> Membership {
        items.iter().map(|s| Endpoint::parse(s).unwrap()).collect()
    }

    fn entry(name: &str, members: &[&str]) -> (String, Membership) {
        (name.to_string(), set(members))
    }

    fn slice_with_key(key: Option<&str>) -> EndpointSlice {
        let mut slice = EndpointSlice {
            address_type: "IPv4".into(),
            ..EndpointSlice::default()
        };
        if let Some(key) = key {
            slice.metadata.annotations = Some(BTreeMap::from([(
                CURVE_PUBLIC_KEY_ANNOTATION.to_string(),
                key.to_string(),
            )]));
        }
        slice
    }

    #[test]
    fn the_published_cap_is_the_smallest_valid_one() {
        let with_cap = |cap: &str| {
            let mut slice = slice_with_key(None);
            slice.metadata.annotations = Some(BTreeMap::from([(
                MAX_MESSAGE_BYTES_ANNOTATION.to_string(),
                cap.to_string(),
            )]));
            slice
        };
        assert_eq!(published_max_message_bytes(&[]), None);
        assert_eq!(published_max_message_bytes(&[slice_with_key(None)]), None);
        assert_eq!(
            published_max_message_bytes(&[with_cap("16384"), slice_with_key(None)]),
            Some(16384)
        );
        // While a changed cap rolls out, the smaller; garbage is not a cap.
        let slices = [
            with_cap(" 65536 "),
            with_cap("16384"),
            with_cap("-1"),
            with_cap("lots"),
        ];
        assert_eq!(published_max_message_bytes(&slices), Some(16384));
        assert_eq!(published_max_message_bytes(&[with_cap("-1")]), None);
    }

    #[test]
    fn the_published_server_key_is_the_one_the_slices_agree_on() {
        let a = crate::curve::KeyPair::generate().unwrap().public;
        let b = crate::curve::KeyPair::generate().unwrap().public;
        let (za, zb) = (a.to_z85(), b.to_z85());
        assert!(published_server_key("g", &[]).unwrap().is_none());
        assert!(
            published_server_key("g", &[slice_with_key(None)])
                .unwrap()
                .is_none()
        );
        let agreed = [
            slice_with_key(Some(&za)),
            slice_with_key(None),
            slice_with_key(Some(&za)),
        ];
        assert_eq!(published_server_key("g", &agreed).unwrap(), Some(a));
        assert!(matches!(
            published_server_key("g", &[slice_with_key(Some(&za)), slice_with_key(Some(&zb))]),
            Err(GroupKeyError::Conflicting { count: 2, .. })
        ));
        assert!(matches!(
            published_server_key("g", &[slice_with_key(Some("short"))]),
            Err(GroupKeyError::Invalid { .. })
        ));
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

//! The watch caches the reconciler reads, and one group's objects picked out of them: the
//! input of the plan. Which objects are a group's is decided here and nowhere else:
//! - proxy pods: in the group's namespace, labelled `fanout.dev/group: <name>`;
//! - children (DaemonSet, Service, EndpointSlices, ConfigMaps, the server key Secret): that,
//!   and also labelled `app.kubernetes.io/managed-by: fanout-controller`, so that nothing
//!   anyone else labels with the group is ever pruned;
//! - key Secrets: every Secret of the group's namespace labelled `fanout.dev/public-key`; the
//!   group's own key pair among them is trusted only with its controller owner reference to the
//!   group (`is_controlled_by`), never by its labels alone;
//! - relay assignment slices: in the group's namespace, labelled `fanout.dev/relay-for:
//!   <name>` (never `fanout.dev/group`, see `endpoint_list`) and managed by the controller.

use super::error::Error;
use super::objects::{FIELD_MANAGER, GroupId, MANAGED_BY_LABEL};
use super::writer::{Written, WrittenKind};
use crate::endpoint_list::{GROUP_LABEL, RELAY_FOR_LABEL};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use std::sync::Arc;
use std::time::Duration;

/// How long a reconcile waits for the watch caches to list everything once.
const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reconcile waits for the caches to show its own writes (a watch event is usually a
/// few milliseconds behind; a broken watch must not stall the group for longer than this).
const OWN_WRITES_TIMEOUT: Duration = Duration::from_secs(1);

/// The watch caches the reconciler reads (filled by reflectors in `watches`).
#[derive(Clone)]
pub struct Caches {
    pub pods: Store<Pod>,
    pub slices: Store<EndpointSlice>,
    pub daemon_sets: Store<DaemonSet>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    /// Public-key Secrets (`keys::secret_watch_selector`), only their `public.key` kept.
    pub secrets: Store<Secret>,
    /// Relay assignment slices (`relay_watch_selector`).
    pub relay_slices: Store<EndpointSlice>,
}

impl Caches {
    pub async fn wait_until_synced(&self) -> Result<(), Error> {
        let all = async {
            // A dropped writer only happens at shutdown; treat it like "not synced".
            self.pods.wait_until_ready().await.is_ok()
                && self.slices.wait_until_ready().await.is_ok()
                && self.daemon_sets.wait_until_ready().await.is_ok()
                && self.services.wait_until_ready().await.is_ok()
                && self.config_maps.wait_until_ready().await.is_ok()
                && self.secrets.wait_until_ready().await.is_ok()
                && self.relay_slices.wait_until_ready().await.is_ok()
        };
        match tokio::time::timeout(CACHE_SYNC_TIMEOUT, all).await {
            Ok(true) => Ok(()),
            _ => Err(Error::CacheNotSynced(CACHE_SYNC_TIMEOUT)),
        }
    }

    /// Waits (at most [`OWN_WRITES_TIMEOUT`]) until the caches show `written`, so that the
    /// next pass plans from them: one that started on a cache without the write would write the
    /// same object again, and announce the same proxies again. Returns whether they caught up.
    pub async fn wait_for_writes(&self, namespace: &str, written: &[Written]) -> bool {
        let shown = || written.iter().all(|write| self.shows(namespace, write));
        let deadline = tokio::time::Instant::now() + OWN_WRITES_TIMEOUT;
        while !shown() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    fn shows(&self, namespace: &str, write: &Written) -> bool {
        fn version<K: Resource<DynamicType = ()> + Clone>(
            store: &Store<K>,
            namespace: &str,
            name: &str,
        ) -> Option<Option<String>> {
            store
                .get(&ObjectRef::new(name).within(namespace))
                .map(|object| object.meta().resource_version.clone())
        }
        let cached = match write.kind {
            WrittenKind::NotCached => return true,
            WrittenKind::DaemonSet => version(&self.daemon_sets, namespace, &write.name),
            WrittenKind::Service => version(&self.services, namespace, &write.name),
            // A relay's assignment slices are cached apart (children::relay_watch_selector).
            WrittenKind::EndpointSlice => version(&self.slices, namespace, &write.name)
                .or_else(|| version(&self.relay_slices, namespace, &write.name)),
            WrittenKind::ConfigMap => version(&self.config_maps, namespace, &write.name),
        };
        shows_write(cached.as_ref().map(Option::as_deref), write)
    }

    /// The group's pods and children as the caches hold them now, each list of children sorted
    /// by name; the pods in no particular order (the plan keys everything it takes from them by
    /// pod name, and sorting thousands of pods scattered in memory cost a pass milliseconds).
    pub fn children_of(&self, id: &GroupId) -> Children {
        fn sorted<K: Resource>(mut objects: Vec<Arc<K>>) -> Vec<Arc<K>> {
            objects.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
            objects
        }
        let owned = |meta: &ObjectMeta| is_child(meta, id);
        Children {
            pods: self.pods.state_filter(|pod| is_member(&pod.metadata, id)),
            daemon_sets: sorted(self.daemon_sets.state_filter(|o| owned(&o.metadata))),
            services: sorted(self.services.state_filter(|o| owned(&o.metadata))),
            slices: sorted(self.slices.state_filter(|o| owned(&o.metadata))),
            config_maps: sorted(self.config_maps.state_filter(|o| owned(&o.metadata))),
            key_secrets: sorted(
                self.secrets.state_filter(|secret| {
                    secret.metadata.namespace.as_deref() == Some(id.namespace.as_str())
                }),
            ),
            relay_slices: sorted(
                self.relay_slices
                    .state_filter(|o| is_relay_child(&o.metadata, id)),
            ),
        }
    }
}

/// A group's proxy pods and children, as cached.
#[derive(Debug, Clone, Default)]
pub struct Children {
    pub pods: Vec<Arc<Pod>>,
    pub daemon_sets: Vec<Arc<DaemonSet>>,
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub config_maps: Vec<Arc<ConfigMap>>,
    /// Every public-key Secret of the group's namespace (not only its children: the
    /// publishers' keys too), with only `public.key` in their data.
    pub key_secrets: Vec<Arc<Secret>>,
    /// The relay assignment slices of the group's tree.
    pub relay_slices: Vec<Arc<EndpointSlice>>,
}

/// Pure: whether a cache entry (`None`: absent; else its resourceVersion) shows `write`: it
/// holds the version the API server returned, or a version other than the one from before the
/// write (someone wrote after us; the watch saw ours first). A deletion is shown by absence; a
/// write the API server gave no version for has nothing to wait for.
fn shows_write(cached: Option<Option<&str>>, write: &Written) -> bool {
    if write.deleted {
        return cached.is_none();
    }
    let Some(version) = write.version.as_deref() else {
        return true;
    };
    cached.is_some_and(|cached| cached == Some(version) || cached != write.before.as_deref())
}

/// The object called `name` in `objects`.
pub fn named<'a, K: Resource>(objects: &'a [Arc<K>], name: &str) -> Option<&'a Arc<K>> {
    objects
        .iter()
        .find(|object| object.meta().name.as_deref() == Some(name))
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// The label selector of every watch but the groups': objects labelled with some group and
/// managed by the controller (its children, and the proxy pods, which carry the DaemonSet
/// template's labels). The API server filters, so nothing else is cached, and the caches hold
/// no object the controller would not read.
pub fn watch_selector() -> String {
    format!("{GROUP_LABEL},{MANAGED_BY_LABEL}={FIELD_MANAGER}")
}

/// The label selector of the relay assignment slices' watch.
pub fn relay_watch_selector() -> String {
    format!("{RELAY_FOR_LABEL},{MANAGED_BY_LABEL}={FIELD_MANAGER}")
}

/// One of the group's relay assignment slices.
pub fn is_relay_child(meta: &ObjectMeta, id: &GroupId) -> bool {
    meta.namespace.as_deref() == Some(id.namespace.as_str())
        && label(meta, RELAY_FOR_LABEL) == Some(id.name.as_str())
        && label(meta, MANAGED_BY_LABEL) == Some(FIELD_MANAGER)
}

/// In the group's namespace and labelled with its name (proxy pods).
pub fn is_member(meta: &ObjectMeta, id: &GroupId) -> bool {
    meta.namespace.as_deref() == Some(id.namespace.as_str())
        && label(meta, GROUP_LABEL) == Some(id.name.as_str())
}

/// A member that the controller manages: one of the group's children.
pub fn is_child(meta: &ObjectMeta, id: &GroupId) -> bool {
    is_member(meta, id) && label(meta, MANAGED_BY_LABEL) == Some(FIELD_MANAGER)
}

/// Whether `meta`'s controller owner reference is `owner` itself: its apiVersion, kind, name
/// and uid. Labels can be set by anyone who may create the object; the uid of an owner that
/// exists only from its creation on cannot be guessed beforehand.
pub fn is_controlled_by<K: Resource<DynamicType = ()>>(meta: &ObjectMeta, owner: &K) -> bool {
    let owner_meta = owner.meta();
    let Some(uid) = owner_meta.uid.as_deref() else {
        return false;
    };
    meta.owner_references.iter().flatten().any(|reference| {
        reference.controller == Some(true)
            && reference.api_version == K::api_version(&())
            && reference.kind == K::kind(&())
            && Some(reference.name.as_str()) == owner_meta.name.as_deref()
            && reference.uid == uid
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::objects::tests_support::{build, group};

    #[test]
    fn a_write_is_shown_once_the_cache_holds_its_version_or_not_the_deleted_object() {
        let applied = Written {
            kind: WrittenKind::EndpointSlice,
            name: "s".into(),
            version: Some("12".into()),
            before: Some("11".into()),
            deleted: false,
        };
        assert!(!shows_write(None, &applied), "not in the cache");
        assert!(
            !shows_write(Some(Some("11")), &applied),
            "the version before ours"
        );
        assert!(shows_write(Some(Some("12")), &applied));
        assert!(shows_write(Some(Some("13")), &applied), "a later write");
        let created = Written {
            before: None,
            ..applied.clone()
        };
        assert!(!shows_write(None, &created));
        assert!(shows_write(Some(Some("12")), &created));
        let unversioned = Written {
            version: None,
            ..applied.clone()
        };
        assert!(shows_write(None, &unversioned), "nothing to wait for");
        let deleted = Written {
            deleted: true,
            version: None,
            ..applied
        };
        assert!(!shows_write(Some(Some("12")), &deleted));
        assert!(shows_write(None, &deleted));
    }

    #[test]
    fn the_watch_selector_matches_what_the_controller_writes() {
        assert_eq!(
            watch_selector(),
            "fanout.dev/group,app.kubernetes.io/managed-by=fanout-controller"
        );
        let ds = build(&group());
        let template = ds.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
        for labels in [
            ds.metadata.labels.as_ref().unwrap(),
            template.labels.as_ref().unwrap(),
        ] {
            assert!(labels.contains_key(GROUP_LABEL));
            assert_eq!(labels[MANAGED_BY_LABEL], FIELD_MANAGER);
        }
    }
}

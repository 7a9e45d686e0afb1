//! The one place that writes to the API. [`writes`] (pure) turns a [`Plan`] into the value that
//! crosses to the writer, [`Writes`]: the children to apply (server-side apply with one field
//! manager), stamped, without those whose cached copy already carries the desired body, and the
//! prune. [`Writer`] writes it, then the status and Events. Every request passes
//! [`Writer::lease`] first, so a replica that lost the lease writes nothing (linkerd's
//! policy-controller: the writer alone checks leadership).

use super::apply::{is_current, stamp};
use super::error::Error;
use super::metrics::Metrics;
use super::notices::Notice;
use super::objects::FIELD_MANAGER;
use super::plan::{ChildKind, ChildRef, Desired, Plan, Report};
use crate::crd::{FanoutGroup, FanoutGroupStatus};
use crate::curve::{KeyPair, PUBLIC_KEY_FILE, SECRET_KEY_FILE};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use tokio::sync::watch;

/// Slice applies in flight at once when a pass writes several (they do not depend on each other).
const SLICES_IN_FLIGHT: usize = 8;

/// How the children of a plan are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Skip a child whose cached copy carries the applied-hash of the desired body.
    SkipUnchanged,
    /// Apply every child whatever the cache says, re-asserting every field we own (undoes
    /// drift: the hash only says what we last wrote).
    ReapplyAll,
}

/// A child stamped with its applied-hash and due to be applied.
#[derive(Debug, Clone)]
enum Child {
    /// The proxies' ServiceAccount, Role and RoleBinding (relays, CURVE allow-lists followed
    /// through the API): not cached, applied with the DaemonSet.
    ServiceAccount(Box<ServiceAccount>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    ConfigMap(ConfigMap),
    DaemonSet(Box<DaemonSet>),
    Service(Box<Service>),
    /// With when each endpoint it newly publishes turned ready (the publish-latency histogram).
    EndpointSlice(EndpointSlice, Vec<Timestamp>),
}

#[derive(Debug, Clone)]
struct Apply {
    child: Child,
    /// The resourceVersion of the cached copy (`None`: none cached).
    before: Option<String>,
}

impl Apply {
    /// For a slice: whether it is a relay's assignment (`true`) or the top tier (`false`).
    fn slice_tier(&self) -> Option<bool> {
        match &self.child {
            Child::EndpointSlice(slice, _) => Some(super::relays::relay_of(slice).is_some()),
            _ => None,
        }
    }
}

impl Child {
    fn name(&self) -> &str {
        let meta = match self {
            Child::ServiceAccount(object) => &object.metadata,
            Child::Role(object) => &object.metadata,
            Child::RoleBinding(object) => &object.metadata,
            Child::ConfigMap(object) => &object.metadata,
            Child::DaemonSet(object) => &object.metadata,
            Child::Service(object) => &object.metadata,
            Child::EndpointSlice(object, _) => &object.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }
}

/// Everything one pass writes, in the order it is written: the value between planning and
/// writing. Made by [`writes`] (pure), written by [`Writer::write`].
#[derive(Debug, Clone, Default)]
pub struct Writes {
    create_server_key: Option<Secret>,
    applies: Vec<Apply>,
    prune: Vec<ChildRef>,
    /// Kinds of the applies skipped because the cache already holds the desired body.
    skipped: Vec<&'static str>,
}

impl Writes {
    /// Requests writing these makes.
    pub fn len(&self) -> usize {
        usize::from(self.create_server_key.is_some()) + self.applies.len() + self.prune.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which cache shows a written child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrittenKind {
    /// Not watched (the proxies' API access objects): nothing to wait for.
    NotCached,
    DaemonSet,
    Service,
    EndpointSlice,
    ConfigMap,
}

/// A child a pass wrote, as the watch caches show it once they have caught up with the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub kind: WrittenKind,
    pub name: String,
    /// The resourceVersion the API server returned (`None`: deleted, or not said).
    pub version: Option<String>,
    /// The resourceVersion the cache held before the write (`None`: none).
    pub before: Option<String>,
    pub deleted: bool,
}

/// `desired` stamped with its applied-hash (made a [`Child`] by `child`), or `None` when
/// skipping is allowed and the cached copy already carries this exact body.
fn stamped<K>(
    desired: &Desired<K>,
    mode: ApplyMode,
    child: impl FnOnce(K) -> Child,
) -> Result<Option<Apply>, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize,
{
    let mut object = desired.object.clone();
    let hash = stamp(&mut object).map_err(|source| Error::Serialise {
        kind: K::kind(&()).into_owned(),
        source,
    })?;
    let cached = desired.cached.as_deref();
    if mode == ApplyMode::SkipUnchanged && is_current(&hash, cached) {
        return Ok(None);
    }
    Ok(Some(Apply {
        child: child(object),
        before: cached.and_then(|cached| cached.meta().resource_version.clone()),
    }))
}

/// A child no cache holds.
fn uncached<K>(object: K) -> Desired<K> {
    Desired { object, cached: None }
}

/// Pure: what writing `plan` in `mode` takes. The children in order (server key, allow-lists,
/// DaemonSet, Service, slices, ConfigMap), then the prune.
pub fn writes(plan: &Plan, mode: ApplyMode) -> Result<Writes, Error> {
    let mut out = Writes {
        create_server_key: plan.create_server_key.clone(),
        prune: plan.prune.clone(),
        ..Writes::default()
    };
    let mut add = |apply: Option<Apply>, kind: &'static str| match apply {
        Some(apply) => out.applies.push(apply),
        None => out.skipped.push(kind),
    };
    if let Some(allow_list) = &plan.allow_list {
        add(stamped(allow_list, mode, Child::ConfigMap)?, "ConfigMap");
    }
    if let Some(daemon_set) = &plan.daemon_set {
        let daemon_set = stamped(daemon_set, mode, |ds| Child::DaemonSet(Box::new(ds)))?;
        // The proxies' API access goes with every write of their DaemonSet (before it), and
        // with every full apply: three objects that change only with the spec need no watch.
        if let (Some(access), Some(_)) = (&plan.proxy_access, &daemon_set) {
            let all = ApplyMode::ReapplyAll;
            let account = uncached(access.service_account.clone());
            add(
                stamped(&account, all, |o| Child::ServiceAccount(Box::new(o)))?,
                "ServiceAccount",
            );
            let role = uncached(access.role.clone());
            add(stamped(&role, all, |o| Child::Role(Box::new(o)))?, "Role");
            let binding = uncached(access.binding.clone());
            add(
                stamped(&binding, all, |o| Child::RoleBinding(Box::new(o)))?,
                "RoleBinding",
            );
        }
        add(daemon_set, "DaemonSet");
    }
    add(
        stamped(&plan.service, mode, |service| Child::Service(Box::new(service)))?,
        "Service",
    );
    for planned in &plan.slices {
        let since = planned.newly_ready_since.clone();
        let slice = stamped(&planned.slice, mode, |slice| Child::EndpointSlice(slice, since))?;
        add(slice, "EndpointSlice");
    }
    if let Some(config_map) = &plan.config_map {
        add(stamped(config_map, mode, Child::ConfigMap)?, "ConfigMap");
    }
    Ok(out)
}

/// Writes plans. Cheap to share; one per controller.
pub struct Writer {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    /// True while this replica holds the leader lease.
    leading: watch::Receiver<bool>,
}

impl Writer {
    pub fn new(client: Client, recorder: Recorder, metrics: Metrics, leading: watch::Receiver<bool>) -> Self {
        Self {
            client,
            recorder,
            metrics,
            leading,
        }
    }

    /// The one leadership check, made before every request.
    fn lease(&self) -> Result<(), Error> {
        if *self.leading.borrow() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Writes `writes` in order (what the proxy pods mount first: the server key, the
    /// allow-lists), then prunes. Returns what was written, for the caller to wait until the
    /// caches show it.
    pub async fn write(&self, namespace: &str, writes: &Writes) -> Result<Vec<Written>, Error> {
        for kind in &writes.skipped {
            self.metrics.skipped(kind);
        }
        if let Some(secret) = &writes.create_server_key {
            self.create_server_key(namespace, secret).await?;
        }
        let mut written = Vec::with_capacity(writes.len());
        let mut rest = writes.applies.as_slice();
        while let Some(first) = rest.first() {
            // Slices of one tier do not depend on each other: a run of them goes out several at
            // a time (a full re-apply of 5 000 nodes' 50 slices would otherwise hold the group
            // for ~1.5 s). The top tier goes before the relays' assignments (a proxy promoted to
            // relay is reachable before its old relay drops it), everything else in order.
            let run = match first.slice_tier() {
                Some(tier) => rest
                    .iter()
                    .take_while(|apply| apply.slice_tier() == Some(tier))
                    .count(),
                None => 1,
            };
            let (now, later) = rest.split_at(run);
            for chunk in now.chunks(SLICES_IN_FLIGHT) {
                let applies: Vec<_> = chunk
                    .iter()
                    .map(|apply| self.apply_one(namespace, apply))
                    .collect();
                written.extend(futures::future::try_join_all(applies).await?);
            }
            rest = later;
        }
        for child in &writes.prune {
            self.delete(namespace, child).await?;
            written.push(Written {
                kind: match child.kind {
                    ChildKind::EndpointSlice => WrittenKind::EndpointSlice,
                    ChildKind::ConfigMap => WrittenKind::ConfigMap,
                },
                name: child.name.clone(),
                version: None,
                before: None,
                deleted: true,
            });
        }
        Ok(written)
    }

    /// Writes the status when the report has one, then publishes its Events (best effort).
    pub async fn write_report(&self, group: &FanoutGroup, report: &Report) -> Result<(), Error> {
        if let Some(status) = &report.status {
            self.apply_status(group, status).await?;
        }
        for notice in &report.notices {
            self.event(group, notice).await;
        }
        Ok(())
    }

    async fn apply_one(&self, namespace: &str, Apply { child, before }: &Apply) -> Result<Written, Error> {
        let (kind, version) = match child {
            Child::ServiceAccount(object) => (
                WrittenKind::NotCached,
                self.apply(namespace, object.as_ref()).await?,
            ),
            Child::Role(object) => (
                WrittenKind::NotCached,
                self.apply(namespace, object.as_ref()).await?,
            ),
            Child::RoleBinding(object) => (
                WrittenKind::NotCached,
                self.apply(namespace, object.as_ref()).await?,
            ),
            Child::ConfigMap(object) => (WrittenKind::ConfigMap, self.apply(namespace, object).await?),
            Child::DaemonSet(object) => (
                WrittenKind::DaemonSet,
                self.apply(namespace, object.as_ref()).await?,
            ),
            Child::Service(object) => (
                WrittenKind::Service,
                self.apply(namespace, object.as_ref()).await?,
            ),
            Child::EndpointSlice(object, newly_ready_since) => {
                let version = self.apply(namespace, object).await?;
                self.metrics
                    .observe_publish_latency(newly_ready_since, Timestamp::now());
                (WrittenKind::EndpointSlice, version)
            }
        };
        Ok(Written {
            kind,
            name: child.name().to_string(),
            version,
            before: before.clone(),
            deleted: false,
        })
    }

    /// Server-side apply of an object [`writes`] stamped; returns the resourceVersion the API
    /// server gave it.
    async fn apply<K>(&self, namespace: &str, object: &K) -> Result<Option<String>, Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        let kind = K::kind(&()).into_owned();
        self.lease()?;
        let name = object.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        // SSA's own `force`: take over fields another manager set (we own every child).
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = api
            .patch(&name, &params, &Patch::Apply(object))
            .await
            .map_err(|source| Error::Api {
                verb: "apply",
                kind: kind.clone(),
                name,
                source: Box::new(source),
            })?;
        self.metrics.write(&kind, "apply", Some(body_size(object)));
        Ok(applied.meta().resource_version.clone())
    }

    /// Creates the group's server key Secret as planned (`objects::server_key_secret`), with a
    /// new key pair. Created once and never applied again: a second writer racing us gets 409
    /// and keeps the first key, so the key publishers learnt stays valid.
    async fn create_server_key(&self, namespace: &str, planned: &Secret) -> Result<(), Error> {
        self.lease()?;
        let name = planned.name_any();
        let pair = KeyPair::generate().map_err(Error::KeyGeneration)?;
        let secret = Secret {
            string_data: Some(BTreeMap::from([
                (PUBLIC_KEY_FILE.to_string(), format!("{}\n", pair.public.to_z85())),
                (SECRET_KEY_FILE.to_string(), format!("{}\n", pair.secret.to_z85())),
            ])),
            ..planned.clone()
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                self.metrics.write("Secret", "create", Some(body_size(&secret)));
                tracing::info!(secret = %name, public_key = %pair.public.to_z85(), "created the group's CURVE key pair");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(source) => Err(Error::Api {
                verb: "create",
                kind: "Secret".into(),
                name: name.to_string(),
                source: Box::new(source),
            }),
        }
    }

    async fn delete(&self, namespace: &str, child: &ChildRef) -> Result<(), Error> {
        match child.kind {
            ChildKind::EndpointSlice => self.delete_one::<EndpointSlice>(namespace, &child.name).await,
            ChildKind::ConfigMap => self.delete_one::<ConfigMap>(namespace, &child.name).await,
        }
    }

    /// Deletes a child; one already gone is fine.
    async fn delete_one<K>(&self, namespace: &str, name: &str) -> Result<(), Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        self.lease()?;
        let kind = K::kind(&()).into_owned();
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                self.metrics.write(&kind, "delete", None);
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(Error::Api {
                verb: "delete",
                kind,
                name: name.to_string(),
                source: Box::new(source),
            }),
        }
    }

    async fn apply_status(&self, group: &FanoutGroup, status: &FanoutGroupStatus) -> Result<(), Error> {
        self.lease()?;
        let namespace = group.namespace().unwrap_or_default();
        let api: Api<FanoutGroup> = Api::namespaced(self.client.clone(), &namespace);
        // An apply body names apiVersion and kind; only status, since this is the status subresource.
        let body = serde_json::json!({
            "apiVersion": FanoutGroup::api_version(&()),
            "kind": FanoutGroup::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch_status(&group.name_any(), &params, &Patch::Apply(&body))
            .await
            .map_err(|source| Error::Api {
                verb: "apply status",
                kind: "FanoutGroup".into(),
                name: group.name_any(),
                source: Box::new(source),
            })?;
        self.metrics
            .write("FanoutGroup", "status", Some(body_size(&body)));
        Ok(())
    }

    /// Events are best effort: a refused event never fails the reconcile.
    async fn event(&self, group: &FanoutGroup, notice: &Notice) {
        if self.lease().is_err() {
            return;
        }
        let event = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.clone(),
            note: Some(notice.note.clone()),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        match self.recorder.publish(&event, &group.object_ref(&())).await {
            // kube's recorder builds the body: its size is not counted.
            Ok(()) => self.metrics.write("Event", "create", None),
            Err(err) => tracing::warn!(error = %err, reason = %notice.reason, "cannot publish an event"),
        }
    }
}

/// Bytes of a request body (for `api_write_bytes_total`).
fn body_size(body: &impl Serialize) -> u64 {
    serde_json::to_vec(body).map_or(0, |bytes| bytes.len() as u64)
}

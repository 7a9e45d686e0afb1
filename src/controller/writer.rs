//! The one place that writes to the API: it applies a [`Plan`] (server-side apply with one
//! field manager, skipping children whose cached copy already carries the desired body),
//! prunes, writes the status and publishes Events. Every request passes [`Writer::lease`]
//! first, so a replica that lost the lease writes nothing (linkerd's policy-controller: the
//! writer alone checks leadership).

use super::apply::{is_current, stamp};
use super::error::Error;
use super::metrics::Metrics;
use super::notices::Notice;
use super::objects::FIELD_MANAGER;
use super::plan::{ChildKind, ChildRef, Desired, Plan, Report};
use super::proxy_access::ProxyAccess;
use crate::crd::{FanoutGroup, FanoutGroupStatus};
use crate::curve::{KeyPair, PUBLIC_KEY_FILE, SECRET_KEY_FILE};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use tokio::sync::watch;

/// How the children of a plan are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Skip a child whose cached copy carries the applied-hash of the desired body.
    SkipUnchanged,
    /// Apply every child whatever the cache says, re-asserting every field we own (undoes
    /// drift: the hash only says what we last wrote).
    ReapplyAll,
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

    /// Applies the plan's children in order (server key, allow-lists, DaemonSet, Service,
    /// slices, ConfigMap), then prunes the children it does not want.
    pub async fn write_children(&self, namespace: &str, plan: &Plan, mode: ApplyMode) -> Result<(), Error> {
        // What the proxy pods mount comes first: the server key, the allow-lists.
        if let Some(secret) = &plan.create_server_key {
            self.create_server_key(namespace, secret).await?;
        }
        if let Some(allow_list) = &plan.allow_list {
            self.apply(namespace, allow_list, mode).await?;
        }
        if let Some(daemon_set) = &plan.daemon_set {
            if let Some(access) = &plan.proxy_access
                && (mode == ApplyMode::ReapplyAll || !self.is_unchanged(daemon_set)?)
            {
                self.apply_proxy_access(namespace, access).await?;
            }
            self.apply(namespace, daemon_set, mode).await?;
        }
        self.apply(namespace, &plan.service, mode).await?;
        for planned in &plan.slices {
            if self.apply(namespace, &planned.slice, mode).await? {
                self.metrics
                    .observe_publish_latency(&planned.newly_ready_since, Timestamp::now());
            }
        }
        if let Some(config_map) = &plan.config_map {
            self.apply(namespace, config_map, mode).await?;
        }
        for child in &plan.prune {
            self.delete(namespace, child).await?;
        }
        Ok(())
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

    /// Server-side apply of `desired` unless skipping is allowed and the cached copy already
    /// has this exact body. Returns whether a write happened.
    async fn apply<K>(&self, namespace: &str, desired: &Desired<K>, mode: ApplyMode) -> Result<bool, Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        let kind = K::kind(&()).into_owned();
        let mut object = desired.object.clone();
        let hash = stamp(&mut object).map_err(|source| Error::Serialise {
            kind: kind.clone(),
            source,
        })?;
        if mode == ApplyMode::SkipUnchanged && is_current(&hash, desired.cached.as_deref()) {
            self.metrics.skipped(&kind);
            return Ok(false);
        }
        self.lease()?;
        let name = object.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        // SSA's own `force`: take over fields another manager set (we own every child).
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|source| Error::Api {
                verb: "apply",
                kind: kind.clone(),
                name,
                source: Box::new(source),
            })?;
        self.metrics.write(&kind, "apply");
        Ok(true)
    }

    /// Whether the cache already holds `desired` as last applied (the skip `apply` makes).
    fn is_unchanged<K: Resource<DynamicType = ()> + Clone + Serialize>(
        &self,
        desired: &Desired<K>,
    ) -> Result<bool, Error> {
        let mut object = desired.object.clone();
        let hash = stamp(&mut object).map_err(|source| Error::Serialise {
            kind: K::kind(&()).into_owned(),
            source,
        })?;
        Ok(is_current(&hash, desired.cached.as_deref()))
    }

    /// The proxies' ServiceAccount, Role and RoleBinding (not cached: applied as they are).
    async fn apply_proxy_access(&self, namespace: &str, access: &ProxyAccess) -> Result<(), Error> {
        fn uncached<K>(object: &K) -> Desired<K>
        where
            K: Clone,
        {
            Desired {
                object: object.clone(),
                cached: None,
            }
        }
        self.apply(
            namespace,
            &uncached(&access.service_account),
            ApplyMode::ReapplyAll,
        )
        .await?;
        self.apply(namespace, &uncached(&access.role), ApplyMode::ReapplyAll)
            .await?;
        self.apply(namespace, &uncached(&access.binding), ApplyMode::ReapplyAll)
            .await?;
        Ok(())
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
                self.metrics.write("Secret", "create");
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
                self.metrics.write(&kind, "delete");
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
        self.metrics.write("FanoutGroup", "status");
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
            Ok(()) => self.metrics.write("Event", "create"),
            Err(err) => tracing::warn!(error = %err, reason = %notice.reason, "cannot publish an event"),
        }
    }
}

//! The reconciler: `Context`, `reconcile` and `error_policy` side by side (kube-rs controller-rs
//! style). It reads only from the watch caches, computes the desired objects with the pure
//! modules, and writes with server-side apply (one field manager, forced), skipping objects
//! whose cached copy already carries the desired body. Stale slices are pruned by label.

use crate::controller::apply::{is_current, stamp};
use crate::controller::metrics::{GroupLabels, Metrics};
use crate::controller::notices::notices;
use crate::controller::objects::{
    self, FIELD_MANAGER, GroupId, SLICE_MANAGED_BY_LABEL, SLICE_MANAGER, Unrealisable,
};
use crate::controller::slices::{self, ExistingSlice, ProxyEndpoint};
use crate::controller::status::{Observed, Problem, compute_status};
use crate::crd::{FanoutGroup, FanoutGroupStatus, GROUP_LABEL};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a group is reconciled with no event at all (drift, lost events).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Least time between the starts of two reconciles of one group. While a group waits or
/// reconciles, every further event for it folds into one pending request, so a burst of N pod
/// changes costs about `burst length / MIN_INTERVAL` reconciles (each writing only the slices
/// that changed), and a single change is published at once.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// How long a reconcile waits for the watch caches to list everything once.
const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a reconcile failed. `metric_label` is the `reason` of `reconcile_errors`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{verb} {kind} {name}: {source}")]
    Api {
        verb: &'static str,
        kind: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("not the leader any more: no writes")]
    NotLeader,
    #[error("the watch caches did not sync within {0:?}")]
    CacheNotSynced(Duration),
    #[error("cannot serialise {kind}: {source}")]
    Serialise {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Unrealisable(#[from] Unrealisable),
}

impl Error {
    /// The Degraded reason when the API refused an object for good (invalid or forbidden);
    /// `None` for errors that a retry may cure.
    pub fn rejection_reason(&self) -> Option<&'static str> {
        match self {
            Error::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
                    Some("ObjectRejected")
                }
                kube::Error::Api(status) if status.code == 403 => Some("Forbidden"),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn metric_label(&self) -> String {
        match self {
            Error::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => match status.code {
                    409 => "api_conflict".into(),
                    403 => "api_forbidden".into(),
                    404 => "api_not_found".into(),
                    422 => "api_invalid".into(),
                    code if code >= 500 => "api_server_error".into(),
                    _ => "api_other".into(),
                },
                _ => "api_unreachable".into(),
            },
            Error::NotLeader => "not_leader".into(),
            Error::CacheNotSynced(_) => "cache_not_synced".into(),
            Error::Serialise { .. } => "serialise".into(),
            Error::Unrealisable(problem) => problem.reason().into(),
        }
    }
}

/// The watch caches the reconciler reads (filled by reflectors in `mod.rs`).
#[derive(Clone)]
pub struct Caches {
    pub pods: Store<Pod>,
    pub slices: Store<EndpointSlice>,
    pub daemon_sets: Store<DaemonSet>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
}

impl Caches {
    async fn wait_until_synced(&self) -> Result<(), Error> {
        let all = async {
            // A dropped writer only happens at shutdown; treat it like "not synced".
            self.pods.wait_until_ready().await.is_ok()
                && self.slices.wait_until_ready().await.is_ok()
                && self.daemon_sets.wait_until_ready().await.is_ok()
                && self.services.wait_until_ready().await.is_ok()
                && self.config_maps.wait_until_ready().await.is_ok()
        };
        match tokio::time::timeout(CACHE_SYNC_TIMEOUT, all).await {
            Ok(true) => Ok(()),
            _ => Err(Error::CacheNotSynced(CACHE_SYNC_TIMEOUT)),
        }
    }
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub caches: Caches,
    /// `--default-proxy-image`.
    pub default_image: Option<String>,
    /// True while this replica holds the leader lease; checked before every write.
    pub leading: watch::Receiver<bool>,
    /// Consecutive failures per group, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// When each group's last reconcile started, for the per-group throttle.
    last_start: Mutex<HashMap<String, Instant>>,
    /// When each group's children were last applied without the skip-if-unchanged check.
    last_full_apply: Mutex<HashMap<String, Instant>>,
}

/// Pure: whether a group is due for an apply of every child regardless of the applied-hash
/// annotation. The hash only says what we last wrote; a field of ours that someone else edited
/// since leaves it unchanged, so every `every` the controller re-asserts all it owns (a no-op
/// server-side apply costs the API server no write).
pub fn full_apply_due(last: Option<Instant>, now: Instant, every: Duration) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= every)
}

/// Pure: how long to wait before reconciling a group that last started at `last`.
pub fn throttle_delay(last: Option<Instant>, now: Instant, min_interval: Duration) -> Duration {
    last.map(|last| min_interval.saturating_sub(now.saturating_duration_since(last)))
        .unwrap_or(Duration::ZERO)
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Metrics,
        caches: Caches,
        default_image: Option<String>,
        leading: watch::Receiver<bool>,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            caches,
            default_image,
            leading,
            failures: Mutex::new(HashMap::new()),
            last_start: Mutex::new(HashMap::new()),
            last_full_apply: Mutex::new(HashMap::new()),
        }
    }

    /// Waits out the group's throttle and records this start. The runner holds further
    /// requests for the group meanwhile, so they coalesce.
    async fn throttle(&self, key: &str) {
        let delay = match self.last_start.lock() {
            Ok(starts) => throttle_delay(starts.get(key).copied(), Instant::now(), MIN_INTERVAL),
            Err(_) => Duration::ZERO,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Ok(mut starts) = self.last_start.lock() {
            starts.insert(key.to_string(), Instant::now());
        }
    }

    fn full_apply_due(&self, key: &str) -> bool {
        match self.last_full_apply.lock() {
            Ok(last) => full_apply_due(last.get(key).copied(), Instant::now(), RESYNC),
            Err(_) => true,
        }
    }

    /// Records that every child of the group was just applied (the next full apply is one
    /// RESYNC away). A fresh replica knows nothing, so its first pass is a full apply.
    pub fn full_apply_done(&self, key: &str) {
        if let Ok(mut last) = self.last_full_apply.lock() {
            last.insert(key.to_string(), Instant::now());
        }
    }

    fn ensure_leader(&self) -> Result<(), Error> {
        if *self.leading.borrow() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Server-side apply of `object` unless the cached copy already has this exact body.
    /// Returns whether a write happened.
    async fn apply<K>(&self, namespace: &str, mut object: K, cached: Option<&K>) -> Result<bool, Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        let kind = K::kind(&()).into_owned();
        let hash = stamp(&mut object).map_err(|source| Error::Serialise {
            kind: kind.clone(),
            source,
        })?;
        if is_current(&hash, cached) {
            self.metrics.skipped(&kind);
            return Ok(false);
        }
        self.ensure_leader()?;
        let name = object.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
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

    /// Deletes a child; one already gone is fine.
    async fn delete<K>(&self, namespace: &str, name: &str) -> Result<(), Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        self.ensure_leader()?;
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

    async fn publish_status(
        &self,
        group: &FanoutGroup,
        id: &GroupId,
        status: &FanoutGroupStatus,
    ) -> Result<(), Error> {
        self.ensure_leader()?;
        let api: Api<FanoutGroup> = Api::namespaced(self.client.clone(), &id.namespace);
        // An apply body names apiVersion and kind; only status, since this is the status subresource.
        let body = serde_json::json!({
            "apiVersion": FanoutGroup::api_version(&()),
            "kind": FanoutGroup::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch_status(&id.name, &params, &Patch::Apply(&body))
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

    async fn event(&self, group: &FanoutGroup, warning: bool, reason: &str, note: String) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if self.ensure_leader().is_err() {
            return;
        }
        // Events are best effort: a refused event never fails the reconcile.
        match self.recorder.publish(&event, &group.object_ref(&())).await {
            Ok(()) => self.metrics.write("Event", "create"),
            Err(err) => tracing::warn!(error = %err, reason, "cannot publish an event"),
        }
    }
}

fn cached<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

fn belongs_to<K: Resource>(object: &K, id: &GroupId) -> bool {
    object.meta().namespace.as_deref() == Some(id.namespace.as_str())
        && object
            .meta()
            .labels
            .as_ref()
            .and_then(|labels| labels.get(GROUP_LABEL))
            == Some(&id.name)
}

/// Pods with a ready endpoint in the given slices.
fn ready_pods_in(slices: &[Arc<EndpointSlice>]) -> BTreeSet<String> {
    slices
        .iter()
        .flat_map(|slice| slice.endpoints.iter())
        .filter(|endpoint| endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .filter_map(|endpoint| endpoint.target_ref.as_ref()?.name.clone())
        .collect()
}

fn ready_pods_of(endpoints: &[ProxyEndpoint]) -> BTreeSet<String> {
    endpoints
        .iter()
        .filter(|e| e.ready)
        .map(|e| e.pod_name.clone())
        .collect()
}

/// What the writes of one pass saw, for status and events.
struct Written {
    cached_ds: Option<Arc<DaemonSet>>,
    slices_before: Vec<Arc<EndpointSlice>>,
    endpoints: Vec<ProxyEndpoint>,
    problem: Option<Problem>,
}

/// One pass over a group: DaemonSet, Service, EndpointSlices (+ prune), ConfigMap, status, events.
pub async fn reconcile(group: Arc<FanoutGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let id = match GroupId::of(&group) {
        Ok(id) => id,
        Err(Unrealisable::InvalidName(name)) => {
            // Nothing can be created under this name: say so in the status and wait for a change.
            let problem = Unrealisable::InvalidName(name);
            let id = GroupId {
                namespace: group.namespace().unwrap_or_default(),
                name: group.name_any(),
            };
            report_problem(&group, &ctx, &id, problem.reason(), problem.to_string()).await;
            return Ok(Action::await_change());
        }
        Err(other) => return Err(other.into()),
    };
    if group.meta().deletion_timestamp.is_some() {
        // Owner references make the garbage collector remove the children.
        return Ok(Action::await_change());
    }
    ctx.caches.wait_until_synced().await?;
    ctx.throttle(&format!("{}/{}", id.namespace, id.name)).await;

    let written = match write_children(&group, &ctx, &id).await {
        Ok(written) => written,
        Err(err) => {
            // The API refusing our objects (invalid, forbidden) will not heal by retrying
            // alone: make it visible as Degraded, then back off.
            if let Some(reason) = err.rejection_reason() {
                report_problem(&group, &ctx, &id, reason, err.to_string()).await;
            }
            return Err(err);
        }
    };

    let published = i32::try_from(written.endpoints.iter().filter(|e| e.ready).count()).unwrap_or(i32::MAX);
    ctx.metrics
        .endpoints_published
        .get_or_create(&GroupLabels {
            namespace: id.namespace.clone(),
            group: id.name.clone(),
        })
        .set(i64::from(published));
    let observed = Observed {
        generation: group.meta().generation,
        daemon_set: written.cached_ds.as_deref(),
        published_endpoints: published,
        problem: written.problem,
    };
    let old_status = group.status.as_ref();
    let new_status = compute_status(&observed, old_status, Timestamp::now());
    if old_status != Some(&new_status) {
        ctx.publish_status(&group, &id, &new_status).await?;
    }
    let before = ready_pods_in(&written.slices_before);
    let after = ready_pods_of(&written.endpoints);
    for notice in notices(&before, &after, old_status, &new_status) {
        ctx.event(&group, notice.warning, &notice.reason, notice.note)
            .await;
    }

    if let Ok(mut failures) = ctx.failures.lock() {
        failures.remove(&format!("{}/{}", id.namespace, id.name));
    }
    Ok(Action::requeue(RESYNC))
}

/// Best effort: a Degraded status with `reason` and a warning event. Failures are logged only,
/// the caller already has an error (or nothing to do) to report.
async fn report_problem(group: &FanoutGroup, ctx: &Context, id: &GroupId, reason: &str, message: String) {
    let cached_ds = cached(&ctx.caches.daemon_sets, &id.namespace, &id.name);
    let observed = Observed {
        generation: group.meta().generation,
        daemon_set: cached_ds.as_deref(),
        published_endpoints: group.status.as_ref().map(|s| s.published_endpoints).unwrap_or(0),
        problem: Some(Problem {
            reason: reason.to_string(),
            message,
        }),
    };
    let old_status = group.status.as_ref();
    let new_status = compute_status(&observed, old_status, Timestamp::now());
    if old_status != Some(&new_status)
        && let Err(err) = ctx.publish_status(group, id, &new_status).await
    {
        tracing::warn!(error = %err, group = %id.name, "cannot publish the Degraded status");
    }
    let none = BTreeSet::new();
    for notice in notices(&none, &none, old_status, &new_status) {
        ctx.event(group, notice.warning, &notice.reason, notice.note)
            .await;
    }
}

/// Steps 1-4: DaemonSet, Service, EndpointSlices with pruning, ConfigMap.
async fn write_children(group: &FanoutGroup, ctx: &Context, id: &GroupId) -> Result<Written, Error> {
    let spec = &group.spec;
    let caches = &ctx.caches;
    let key = format!("{}/{}", id.namespace, id.name);
    // When due, compare with nothing: every child is applied and drift is undone.
    let force = ctx.full_apply_due(&key);

    // 1. The proxy DaemonSet (unless the group cannot be realised).
    let cached_ds = cached(&caches.daemon_sets, &id.namespace, &id.name);
    let mut problem = None;
    match objects::daemon_set(group, ctx.default_image.as_deref()) {
        Ok(ds) => {
            ctx.apply(&id.namespace, ds, cached_ds.as_deref().filter(|_| !force))
                .await?;
        }
        Err(unrealisable) => {
            tracing::warn!(group = %id.name, namespace = %id.namespace, reason = unrealisable.reason(), "group cannot be realised");
            problem = Some(Problem {
                reason: unrealisable.reason().to_string(),
                message: unrealisable.to_string(),
            });
        }
    }

    // 2. The headless Service the slices belong to.
    let service = objects::headless_service(group)?;
    let cached_service = cached(&caches.services, &id.namespace, &id.name);
    ctx.apply(
        &id.namespace,
        service,
        cached_service.as_deref().filter(|_| !force),
    )
    .await?;

    // 3. EndpointSlices from the proxy pods, with stable slots.
    let mut pods: Vec<Arc<Pod>> = caches.pods.state_filter(|pod| belongs_to(pod, id));
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let endpoints = slices::endpoints_from_pods(pods.iter().map(|pod| pod.as_ref()), spec.host_network);
    let mut slices_before: Vec<Arc<EndpointSlice>> = caches.slices.state_filter(|slice| {
        belongs_to(slice, id)
            && slice
                .meta()
                .labels
                .as_ref()
                .and_then(|labels| labels.get(SLICE_MANAGED_BY_LABEL))
                .map(String::as_str)
                == Some(SLICE_MANAGER)
    });
    slices_before.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let existing: Vec<ExistingSlice> = slices_before
        .iter()
        .filter_map(|slice| ExistingSlice::from_slice(slice))
        .collect();
    let per_slice = usize::try_from(spec.endpoints_per_slice).unwrap_or(1);
    let plans = slices::plan_slices(&id.name, endpoints.clone(), &existing, per_slice);

    for plan in &plans {
        let before = slices_before
            .iter()
            .find(|slice| slice.metadata.name.as_deref() == Some(plan.name.as_str()));
        let slice = slices::endpoint_slice(group, plan)?;
        let fresh = slices::newly_ready(plan, before.map(|s| s.as_ref()));
        if ctx
            .apply(
                &id.namespace,
                slice,
                before.map(|s| s.as_ref()).filter(|_| !force),
            )
            .await?
        {
            let now = Timestamp::now();
            for endpoint in fresh {
                if let Some(since) = endpoint.ready_since {
                    let seconds = now.duration_since(since).as_secs_f64();
                    if seconds >= 0.0 {
                        ctx.metrics.publish_latency.observe(seconds);
                    }
                }
            }
        }
    }
    // Prune: our labelled slices that this pass did not want.
    let wanted: BTreeSet<&str> = plans.iter().map(|plan| plan.name.as_str()).collect();
    for slice in &slices_before {
        if let Some(name) = slice.metadata.name.as_deref()
            && !wanted.contains(name)
        {
            ctx.delete::<EndpointSlice>(&id.namespace, name).await?;
        }
    }

    // 4. The ConfigMap with the ready endpoints (or its removal when turned off).
    let cm_name = id.configmap_name();
    let cached_cm = cached(&caches.config_maps, &id.namespace, &cm_name);
    if spec.config_map {
        let list = slices::endpoint_list(&endpoints, spec.publisher_port);
        let cm = objects::endpoints_configmap(group, list)?;
        ctx.apply(&id.namespace, cm, cached_cm.as_deref().filter(|_| !force))
            .await?;
    } else if cached_cm.as_deref().is_some_and(|cm| belongs_to(cm, id)) {
        ctx.delete::<ConfigMap>(&id.namespace, &cm_name).await?;
    }

    if force {
        ctx.full_apply_done(&key);
    }
    Ok(Written {
        cached_ds,
        slices_before,
        endpoints,
        problem,
    })
}

/// Backoff for a failed reconcile: 1 s doubling per consecutive failure of the group, capped
/// at 5 minutes. An error never stops the controller.
pub fn error_policy(group: Arc<FanoutGroup>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::controller::metrics::ReasonLabels {
            reason: error.metric_label(),
        })
        .inc();
    let key = format!("{}/{}", group.namespace().unwrap_or_default(), group.name_any());
    let failures = match ctx.failures.lock() {
        Ok(mut failures) => {
            let count = failures.entry(key).or_insert(0);
            *count = count.saturating_add(1);
            *count
        }
        Err(_) => 1,
    };
    let delay = backoff(failures);
    tracing::warn!(group = %group.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// 1 s, 2 s, 4 s ... capped at 300 s.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let exponent = consecutive_failures.saturating_sub(1).min(9);
    Duration::from_secs((1u64 << exponent).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_waits_out_the_rest_of_the_interval() {
        let now = Instant::now();
        let min = Duration::from_millis(250);
        assert_eq!(throttle_delay(None, now, min), Duration::ZERO);
        assert_eq!(
            throttle_delay(Some(now), now + Duration::from_millis(100), min),
            Duration::from_millis(150)
        );
        assert_eq!(
            throttle_delay(Some(now), now + Duration::from_secs(1), min),
            Duration::ZERO
        );
    }

    #[test]
    fn a_full_apply_is_due_first_and_then_every_resync() {
        let now = Instant::now();
        assert!(full_apply_due(None, now, RESYNC));
        assert!(!full_apply_due(Some(now), now + Duration::from_secs(1), RESYNC));
        assert!(full_apply_due(Some(now), now + RESYNC, RESYNC));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u64> = [1, 2, 3, 9, 10, 40]
            .iter()
            .map(|n| backoff(*n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 256, 300, 300]);
    }
}

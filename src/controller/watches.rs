//! The leader's watches: FanoutGroups and every labelled child kind, each into a reflector
//! cache the reconciler reads, every change mapped to the group it belongs to, all driven by
//! kube's `applier`. A group's deletion (or its absence after a relist) makes the reconciler
//! forget it.

use super::children::{Caches, relay_watch_selector, watch_selector};
use super::memory::GroupKey;
use super::reconcile::{self, Context};
use crate::crd::FanoutGroup;
use crate::endpoint_list::GROUP_LABEL;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{PredicateConfig, WatchStreamExt, applier, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A short debounce to fold the events of one API write (object + status) together. Kept far
/// below the per-group throttle (`memory::MIN_INTERVAL`): kube's debounce is trailing-edge, so
/// a steady stream of events closer together than the debounce would postpone the reconcile
/// indefinitely (measured: 250 pods joining over 23 s with a 200 ms debounce got 5 reconciles
/// and ~5 s publish latency). Bursts are coalesced by the throttle instead.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// What the leader's reconciler gets besides the client and its caches.
pub(super) struct Leader {
    pub recorder: Recorder,
    pub metrics: super::metrics::Metrics,
    pub policy: super::policy::ProxyPolicy,
    pub leading: watch::Receiver<bool>,
}

type GroupRefStream = Pin<Box<dyn Stream<Item = Result<ObjectRef<FanoutGroup>, watcher::Error>> + Send>>;

fn api_for<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Watches children (`children::watch_selector`, filtered by the API server) into `writer`'s
/// cache and maps every change
/// to the group named by the label (the `.owns()`/`.watches()` of kube's Controller, with the
/// caches shared with the reconciler instead of a second watch per kind).
fn child_trigger<K>(api: Api<K>, writer: Writer<K>) -> GroupRefStream
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    labelled_trigger(api, writer, watch_selector(), GROUP_LABEL)
}

/// Watches the objects `selector` picks into `writer`'s cache and maps every change to the
/// group that the label `group_label` names.
fn labelled_trigger<K>(
    api: Api<K>,
    writer: Writer<K>,
    selector: String,
    group_label: &'static str,
) -> GroupRefStream
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().labels(&selector);
    let stream = watcher(api, config)
        .backoff(crate::watch_backoff::WatchBackoff::default())
        // Managed fields are a large part of every object and the reconciler never reads them.
        .modify(|object: &mut K| object.managed_fields_mut().clear());
    reflector::reflector(writer, stream)
        .touched_objects()
        .try_filter_map(move |object: K| async move {
            let group = object.labels().get(group_label).cloned();
            Ok(match (group, object.namespace()) {
                (Some(group), Some(namespace)) => {
                    Some(ObjectRef::<FanoutGroup>::new(&group).within(&namespace))
                }
                _ => None,
            })
        })
        .boxed()
}

/// Watches the public-key Secrets (`keys::secret_watch_selector`) into `writer`'s cache,
/// keeping only their `public.key`, and maps every change to the CURVE groups of the Secret's
/// namespace (a key Secret may be named or selected by any of them).
fn key_secret_trigger(
    api: Api<Secret>,
    writer: Writer<Secret>,
    groups: Store<FanoutGroup>,
) -> GroupRefStream {
    let config = watcher::Config::default().labels(&super::keys::secret_watch_selector());
    let stream = watcher(api, config)
        .backoff(crate::watch_backoff::WatchBackoff::default())
        .modify(|secret: &mut Secret| {
            secret.managed_fields_mut().clear();
            // Never cache a secret key: the group's own is written once by the writer and read by
            // the proxies only; a publisher's must not be in the controller at all.
            secret.string_data = None;
            if let Some(data) = secret.data.as_mut() {
                data.retain(|key, _| key == crate::curve::PUBLIC_KEY_FILE);
            }
        });
    reflector::reflector(writer, stream)
        .touched_objects()
        .map_ok(move |secret: Secret| {
            let namespace = secret.namespace();
            futures::stream::iter(
                groups
                    .state()
                    .into_iter()
                    .filter(|group| group.spec.security.curve && group.namespace() == namespace)
                    .map(|group| Ok(ObjectRef::from_obj(group.as_ref())))
                    .collect::<Vec<_>>(),
            )
        })
        .try_flatten()
        .boxed()
}

pub(super) async fn run_controller(client: Client, namespace: Option<String>, leader: Leader) {
    let (groups, groups_writer) = reflector::store::<FanoutGroup>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (slices_store, slices_writer) = reflector::store::<EndpointSlice>();
    let (daemon_sets, daemon_sets_writer) = reflector::store::<DaemonSet>();
    let (services, services_writer) = reflector::store::<Service>();
    let (config_maps, config_maps_writer) = reflector::store::<ConfigMap>();
    let (secrets, secrets_writer) = reflector::store::<Secret>();
    let (relay_slices, relay_slices_writer) = reflector::store::<EndpointSlice>();

    let ctx = Arc::new(Context::new(
        client.clone(),
        leader.recorder,
        leader.metrics,
        Caches {
            pods,
            slices: slices_store,
            daemon_sets,
            services,
            config_maps,
            secrets,
            relay_slices,
        },
        leader.policy,
        leader.leading,
    ));

    let forgetting = ctx.clone();
    let known = groups.clone();
    let group_stream: GroupRefStream = reflector::reflector(
        groups_writer,
        watcher(
            api_for::<FanoutGroup>(&client, &namespace),
            watcher::Config::default(),
        )
        .backoff(crate::watch_backoff::WatchBackoff::default())
        .modify(|group: &mut FanoutGroup| group.managed_fields_mut().clear()),
    )
    // After the reflector, so the store already reflects the event.
    .inspect_ok(move |event| match event {
        watcher::Event::Delete(group) => forgetting.forget(&GroupKey::of(group)),
        watcher::Event::InitDone => {
            // A relist reports no deletions: forget the groups it did not list.
            for gone in forgetting.memory.retain(|key| {
                known
                    .get(&ObjectRef::new(&key.name).within(&key.namespace))
                    .is_some()
            }) {
                forgetting.metrics.forget_group(&gone);
            }
        }
        _ => {}
    })
    .touched_objects()
    // Only spec changes (generation) trigger: our own status writes would otherwise each cause
    // another (no-op) reconcile that also takes the group's throttle slot.
    .predicate_filter(predicates::generation, PredicateConfig::default())
    .map_ok(|group: FanoutGroup| ObjectRef::from_obj(&group))
    .boxed();

    let queue = futures::stream::select_all(vec![
        group_stream,
        child_trigger(api_for::<Pod>(&client, &namespace), pods_writer),
        child_trigger(api_for::<EndpointSlice>(&client, &namespace), slices_writer),
        labelled_trigger(
            api_for::<EndpointSlice>(&client, &namespace),
            relay_slices_writer,
            relay_watch_selector(),
            crate::endpoint_list::RELAY_FOR_LABEL,
        ),
        child_trigger(api_for::<DaemonSet>(&client, &namespace), daemon_sets_writer),
        child_trigger(api_for::<Service>(&client, &namespace), services_writer),
        child_trigger(api_for::<ConfigMap>(&client, &namespace), config_maps_writer),
        key_secret_trigger(
            api_for::<Secret>(&client, &namespace),
            secrets_writer,
            groups.clone(),
        ),
    ]);

    applier(
        |group, ctx| reconcile::reconcile(group, ctx).boxed(),
        reconcile::error_policy,
        ctx,
        groups,
        queue,
        kube::runtime::Config::default().debounce(DEBOUNCE),
    )
    .for_each(|result| async move {
        match result {
            Ok((group, _action)) => tracing::debug!(%group, "reconciled"),
            Err(kube::runtime::controller::Error::QueueError(err)) => {
                tracing::warn!(error = %err, "watch error (retrying with backoff)")
            }
            Err(err) => tracing::debug!(error = %err, "reconcile failed"),
        }
    })
    .await;
}

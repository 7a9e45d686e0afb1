//! `fanout controller`: the operator.
//!
//! Layout: the pure core (`objects`: spec → DaemonSet/Service/ConfigMap; `slices`: pods →
//! EndpointSlices; `status`: observations → status and conditions; `notices`: what deserves an
//! Event; `apply`: whether a write is needed; `leader`: the lease decision) and the edges
//! (`reconcile`: Context/reconcile/error_policy; `leader::LeaderElector`; this file: CLI,
//! watches, HTTP, the leader loop).
//!
//! Only the Lease holder watches and writes. Standbys run the election loop and the HTTP
//! endpoint only. `/readyz` is 200 for the leader and for standbys alike: a standby is
//! healthy and ready to take over, and a readiness gate that only the leader passes would
//! stall every rolling update of a two-replica Deployment.

pub mod apply;
pub mod leader;
pub mod metrics;
pub mod notices;
pub mod objects;
pub mod reconcile;
pub mod slices;
pub mod status;

use crate::crd::{FanoutGroup, GROUP_LABEL};
use crate::http::Health;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, store::Writer};
use kube::runtime::{PredicateConfig, WatchStreamExt, applier, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A short debounce to fold the events of one API write (object + status) together. Kept far
/// below the per-group throttle: kube's debounce is trailing-edge, so a steady stream of events
/// closer together than the debounce would postpone the reconcile indefinitely (measured: 250
/// pods joining over 23 s with a 200 ms debounce got 5 reconciles and ~5 s publish latency).
/// Bursts are coalesced by `reconcile::Throttle` instead.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Address of the /healthz, /readyz and /metrics endpoint.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Proxy image for groups that do not set spec.image.
    #[arg(long, env = "FANOUT_PROXY_IMAGE")]
    pub default_proxy_image: Option<String>,
    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, default_value = "fanout-controller")]
    pub lease_name: String,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Identity in the Lease (default: hostname and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "fanout-controller".to_string());
    format!("{host}-{}", std::process::id())
}

pub fn run(args: ControllerArgs) -> crate::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

pub async fn run_async(args: ControllerArgs) -> crate::Result<()> {
    let client = Client::try_default().await?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);

    let mut registry = Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let health = Arc::new(Health::default());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut http_shutdown = shutdown_rx.clone();
    let (http_addr, http_serve) =
        crate::http::bind(args.http, health.clone(), Arc::new(registry), async move {
            let _ = http_shutdown.wait_for(|stop| *stop).await;
        })
        .await?;
    let http_task = tokio::spawn(http_serve);
    tracing::info!(%http_addr, %identity, namespace = ?args.namespace, "fanout controller starting");

    let (leading_tx, mut leading_rx) = watch::channel(false);
    let elector = leader::LeaderElector {
        api: Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        lease_name: args.lease_name.clone(),
        identity: identity.clone(),
    };
    let elector_task = tokio::spawn(elector.run(leading_tx, shutdown_rx.clone()));
    // Leader or standby, this replica is ready (see the module comment).
    health.set_ready(true);

    let signal_task = tokio::spawn(async move {
        crate::shutdown::signal().await;
        tracing::info!("termination requested");
        let _ = shutdown_tx.send(true);
    });

    let mut shutdown = shutdown_rx.clone();
    loop {
        tokio::select! {
            _ = leading_rx.wait_for(|leading| *leading) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        tracing::info!(%identity, "leading: starting the reconciler");
        metrics.leader.set(1);
        let leader = Leader {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: objects::FIELD_MANAGER.into(),
                    instance: Some(identity.clone()),
                },
            ),
            metrics: metrics.clone(),
            default_image: args.default_proxy_image.clone(),
            leading: leading_rx.clone(),
        };
        let controller = run_controller(client.clone(), args.namespace.clone(), leader);
        // Dropping the controller future cancels in-flight writes at once.
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => {}
            _ = controller => tracing::warn!("the reconciler stopped on its own"),
            _ = leading_rx.wait_for(|leading| !*leading) => tracing::warn!("lost the lease: reconciler stopped"),
        }
        metrics.leader.set(0);
        if *shutdown.borrow() {
            break;
        }
    }

    // The elector releases the lease on shutdown.
    if let Err(err) = elector_task.await {
        tracing::warn!(error = %err, "leader election task failed");
    }
    signal_task.abort();
    match http_task.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "HTTP endpoint failed"),
        Err(err) => tracing::warn!(error = %err, "HTTP task failed"),
    }
    tracing::info!("fanout controller stopped");
    Ok(())
}

/// What the leader's reconciler gets besides the client and its caches.
struct Leader {
    recorder: Recorder,
    metrics: metrics::Metrics,
    default_image: Option<String>,
    leading: watch::Receiver<bool>,
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

/// Watches children labelled `fanout.dev/group` into `writer`'s cache and maps every change
/// to the group named by the label (the `.owns()`/`.watches()` of kube's Controller, with the
/// caches shared with the reconciler instead of a second watch per kind).
fn child_trigger<K>(api: Api<K>, writer: Writer<K>) -> GroupRefStream
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().labels(GROUP_LABEL);
    let stream = watcher(api, config)
        .default_backoff()
        // Managed fields are a large part of every object and the reconciler never reads them.
        .modify(|object: &mut K| object.managed_fields_mut().clear());
    reflector::reflector(writer, stream)
        .touched_objects()
        .try_filter_map(|object: K| async move {
            let group = object.labels().get(GROUP_LABEL).cloned();
            Ok(match (group, object.namespace()) {
                (Some(group), Some(namespace)) => {
                    Some(ObjectRef::<FanoutGroup>::new(&group).within(&namespace))
                }
                _ => None,
            })
        })
        .boxed()
}

async fn run_controller(client: Client, namespace: Option<String>, leader: Leader) {
    let (groups, groups_writer) = reflector::store::<FanoutGroup>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (slices_store, slices_writer) = reflector::store::<EndpointSlice>();
    let (daemon_sets, daemon_sets_writer) = reflector::store::<DaemonSet>();
    let (services, services_writer) = reflector::store::<Service>();
    let (config_maps, config_maps_writer) = reflector::store::<ConfigMap>();

    let ctx = Arc::new(reconcile::Context::new(
        client.clone(),
        leader.recorder,
        leader.metrics,
        reconcile::Caches {
            pods,
            slices: slices_store,
            daemon_sets,
            services,
            config_maps,
        },
        leader.default_image,
        leader.leading,
    ));

    let group_stream: GroupRefStream = reflector::reflector(
        groups_writer,
        watcher(
            api_for::<FanoutGroup>(&client, &namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|group: &mut FanoutGroup| group.managed_fields_mut().clear()),
    )
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
        child_trigger(api_for::<DaemonSet>(&client, &namespace), daemon_sets_writer),
        child_trigger(api_for::<Service>(&client, &namespace), services_writer),
        child_trigger(api_for::<ConfigMap>(&client, &namespace), config_maps_writer),
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

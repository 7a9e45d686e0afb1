//! `fanout controller`: the operator.
//!
//! Where things are:
//! - `plan`: the pure function from a group and its cached children to everything a
//!   reconcile wants (children, prune set, status, Events), built on the pure `objects`
//!   `policy` (what the admin allows a group), `objects` (spec → DaemonSet/Service/
//!   ConfigMaps/key Secret), `keys` (CURVE key pair and allow-lists), `slices` (pods →
//!   EndpointSlices), `relays` (the relay tree's tiers and assignment slices), `proxy_access`
//!   (the proxies' ServiceAccount, Role and token for relaying and CURVE allow-lists), `status`, `notices` and
//!   `apply` (the applied-hash);
//! - `writer`: the one place that writes to the API, and checks leadership;
//! - `reconcile`: `Context`, `reconcile` (sync, throttle, plan, write, status, events) and
//!   `error_policy`; `memory`: what is kept per group between passes; `children`: the caches
//!   and which objects are a group's; `error`;
//! - `watches`: the leader's watches and caches; `leader`: the Lease election (decision
//!   pure); this file: the process (HTTP, election, the leader loop).
//!
//! Only the Lease holder watches and writes. Standbys run the election loop and the HTTP
//! endpoint only. `/readyz` is 200 for the leader and for standbys alike: a standby is
//! healthy and ready to take over, and a readiness gate that only the leader passes would
//! stall every rolling update of a two-replica Deployment.

pub mod apply;
pub mod children;
pub mod error;
pub mod keys;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod notices;
pub mod objects;
pub mod plan;
pub mod policy;
pub mod proxy_access;
pub mod reconcile;
pub mod relays;
pub mod slices;
pub mod status;
pub mod watches;
pub mod writer;

pub use error::{ControllerError, Error};

use crate::http::Health;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use watches::{Leader, run_controller};

/// How the controller runs (built from `fanout controller`'s flags).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Watch only this namespace (None: all).
    pub namespace: Option<String>,
    /// Address of `/healthz`, `/readyz`, `/metrics`.
    pub http: SocketAddr,
    /// What groups may ask for: the own proxy image, the allow-list, the socket root, ...
    pub policy: policy::ProxyPolicy,
    pub lease_name: String,
    pub lease_namespace: String,
    /// Identity in the Lease (None: hostname and pid).
    pub identity: Option<String>,
    pub lease_timings: leader::LeaseTimings,
}
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "fanout-controller".to_string());
    format!("{host}-{}", std::process::id())
}

pub fn run(args: ControllerConfig) -> crate::Result<()> {
    Ok(crate::runtime::block_on_multi_thread(run_async(args)).map_err(ControllerError::Runtime)??)
}

pub async fn run_async(args: ControllerConfig) -> Result<(), ControllerError> {
    let client = Client::try_default().await?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);

    let mut registry = crate::metrics::registry();
    let metrics = metrics::Metrics::register(&mut registry);
    let health = Arc::new(Health::default());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut http_shutdown = shutdown_rx.clone();
    let (http_addr, http_serve) =
        crate::http::bind(args.http, health.clone(), Arc::new(registry), async move {
            let _ = http_shutdown.wait_for(|stop| *stop).await;
        })
        .await
        .map_err(|source| ControllerError::Http {
            addr: args.http,
            source,
        })?;
    let http_task = tokio::spawn(http_serve);
    tracing::info!(%http_addr, %identity, namespace = ?args.namespace, "fanout controller starting");

    let (leading_tx, mut leading_rx) = watch::channel(false);
    let elector = leader::LeaderElector {
        api: Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        lease_name: args.lease_name.clone(),
        identity: identity.clone(),
        timings: args.lease_timings,
    };
    let elector_task = tokio::spawn(elector.run(leading_tx, shutdown_rx.clone()));
    // Leader or standby, this replica is ready (see the module comment).
    health.set_ready(true);

    let signal_task = tokio::spawn(async move {
        let signal = crate::runtime::shutdown_signal().await;
        tracing::info!(%signal, "termination requested");
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
        metrics.leadership_acquired.inc();
        let leader = Leader {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: objects::FIELD_MANAGER.into(),
                    instance: Some(identity.clone()),
                },
            ),
            metrics: metrics.clone(),
            policy: args.policy.clone(),
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

//! `fanout proxy` as a process: a [`Proxy`](super::Proxy) with the HTTP endpoint
//! (`/healthz`, `/readyz`, `/metrics`) beside it, until SIGTERM or SIGINT stops both cleanly;
//! as a relay, with the follower of its assignment beside it too.

use super::relay::{RelayMetrics, leaf_feed};
use super::{ProxyConfig, ProxyError};
use crate::http::Health;
use crate::membership::{Membership, MembershipSource};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Runs the proxy until SIGTERM or SIGINT, then stops it cleanly and returns (exit 0).
pub fn run(config: ProxyConfig, http: Option<SocketAddr>) -> Result<(), ProxyError> {
    crate::runtime::block_on(serve(config, http, None)).map_err(ProxyError::io("starting a runtime"))?
}

/// [`run`] for a proxy that may relay: `assignment` follows the leaves assigned to it. A
/// follower that fails for good (it cannot even build a client) stops the proxy with an
/// error: a relay that cannot learn its leaves would leave them without messages unnoticed,
/// a failing container is seen and restarted.
pub fn run_relay(
    config: ProxyConfig,
    http: Option<SocketAddr>,
    assignment: Box<dyn MembershipSource>,
) -> Result<(), ProxyError> {
    crate::runtime::block_on(serve(config, http, Some(assignment)))
        .map_err(ProxyError::io("starting a runtime"))?
}

async fn serve(
    config: ProxyConfig,
    http_addr: Option<SocketAddr>,
    assignment: Option<Box<dyn MembershipSource>>,
) -> Result<(), ProxyError> {
    let health = Arc::new(Health::default());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let relay_metrics = RelayMetrics::default();
    let (proxy, follower) = match assignment {
        None => {
            let proxy = tokio::task::spawn_blocking(move || super::start(config))
                .await
                .map_err(|e| ProxyError::Thread(format!("starting the proxy: {e}")))??;
            (proxy, None)
        }
        Some(source) => {
            let (feed, input) = leaf_feed(relay_metrics.clone())?;
            let proxy = tokio::task::spawn_blocking(move || super::start_relay(config, input))
                .await
                .map_err(|e| ProxyError::Thread(format!("starting the proxy: {e}")))??;
            let (updates, mut leaves) = tokio::sync::watch::channel(Membership::new());
            tokio::spawn(async move {
                while leaves.changed().await.is_ok() {
                    if !feed.deliver(leaves.borrow_and_update().clone()) {
                        break;
                    }
                }
            });
            (proxy, Some(tokio::spawn(source.run(updates))))
        }
    };
    let mut registry = crate::metrics::registry();
    proxy.metrics().register(&mut registry);
    if follower.is_some() {
        relay_metrics.register(&mut registry);
    }
    let registry = Arc::new(registry);

    let http = match http_addr {
        Some(addr) => {
            let mut stop = shutdown_rx.clone();
            let shutdown = async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            };
            let (local, server) = crate::http::bind(addr, health.clone(), registry, shutdown)
                .await
                .map_err(ProxyError::io(format!("serving HTTP on {addr}")))?;
            tracing::info!(%local, "serving /healthz, /readyz, /metrics");
            Some(tokio::spawn(server))
        }
        None => None,
    };
    // Every socket is bound: start() returned.
    health.set_ready(true);

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let signal = crate::runtime::shutdown_signal();
    tokio::pin!(signal);
    let mut follower = follower;
    let mut failure = None;
    let signal = loop {
        tokio::select! {
            signal = &mut signal => break Some(signal),
            ended = async {
                match follower.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            }, if follower.is_some() => {
                follower = None;
                let why = match ended {
                    Ok(Ok(())) => "the assignment follower stopped".to_string(),
                    Ok(Err(err)) => format!("cannot follow the relay assignment: {err}"),
                    Err(err) => format!("the assignment follower failed: {err}"),
                };
                tracing::error!(error = %why, "stopping the proxy");
                failure = Some(ProxyError::Relay(why));
                break None;
            }
            _ = ticker.tick() => {
                if !proxy.is_running() {
                    // The forwarding thread ended on an error: nothing forwards any more, so
                    // the process ends at once (non-zero, the error printed once by `main`
                    // from `shutdown`) and the kubelet restarts it, instead of waiting for the
                    // liveness probe to notice.
                    health.set_live(false);
                    health.set_ready(false);
                    break None;
                }
            }
        }
    };
    if let Some(signal) = signal {
        tracing::info!(%signal, "stopping the proxy");
    }
    if let Some(follower) = follower {
        follower.abort();
    }
    health.set_ready(false);
    let stats = tokio::task::spawn_blocking(move || proxy.shutdown())
        .await
        .map_err(|e| ProxyError::Thread(format!("stopping the proxy: {e}")))?;
    let _ = shutdown_tx.send(true);
    if let Some(http) = http {
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        }
    }
    let stats = stats?;
    tracing::info!(?stats, "proxy stopped");
    failure.map_or(Ok(()), Err)
}

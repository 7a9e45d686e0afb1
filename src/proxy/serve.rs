//! `fanout proxy` as a process: a [`Proxy`](super::Proxy) with the HTTP endpoint
//! (`/healthz`, `/readyz`, `/metrics`) beside it, until SIGTERM or SIGINT stops both cleanly;
//! with the followers that feed it beside it too (a relay's assignment, the allow-lists).

use super::allow_lists::{AllowListSource, allow_list_feed};
use super::relay::{RelayMetrics, leaf_feed};
use super::{AllowListApiError, ProxyConfig, ProxyError, ProxyInputs};
use crate::http::Health;
use crate::membership::{Membership, MembershipSource};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a proxy process follows besides its files (through the API, in the CLI).
#[derive(Default)]
pub struct Followers {
    /// A relay's assignment: the leaves it forwards to.
    pub relay_assignment: Option<Box<dyn MembershipSource>>,
    /// CURVE: the allow-lists, which replace the files' once the first arrives
    /// (`allow_lists`).
    pub allow_lists: Option<Box<dyn AllowListSource>>,
}

/// Runs the proxy until SIGTERM or SIGINT, then stops it cleanly and returns (exit 0).
///
/// A follower that fails for good (it cannot even build a client) stops the proxy with an
/// error: a relay that cannot learn its leaves would leave them without messages unnoticed,
/// a proxy that cannot hear of revocations would admit revoked keys until the kubelet's next
/// refresh unnoticed; a failing container is seen and restarted. Failures a follower can
/// retry (the API unreachable) it retries while the proxy keeps what it has.
pub fn run(config: ProxyConfig, http: Option<SocketAddr>, followers: Followers) -> Result<(), ProxyError> {
    crate::runtime::block_on(serve(config, http, followers)).map_err(ProxyError::io("starting a runtime"))?
}

async fn serve(
    config: ProxyConfig,
    http_addr: Option<SocketAddr>,
    followers: Followers,
) -> Result<(), ProxyError> {
    let health = Arc::new(Health::default());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let relay_metrics = RelayMetrics::default();
    let Followers {
        relay_assignment,
        allow_lists,
    } = followers;
    let mut inputs = ProxyInputs::default();
    let relay = match relay_assignment {
        Some(source) => {
            let (feed, input) = leaf_feed(relay_metrics.clone())?;
            inputs.relay = Some(input);
            Some((source, feed))
        }
        None => None,
    };
    let allow_lists = match allow_lists {
        Some(source) => {
            let (feed, input) = allow_list_feed()?;
            inputs.allow_lists = Some(input);
            Some((source, feed))
        }
        None => None,
    };
    let proxy = tokio::task::spawn_blocking(move || super::start_with(config, inputs))
        .await
        .map_err(|source| ProxyError::Task {
            context: "starting the proxy",
            source,
        })??;
    // Each follower task ends only with the reason it stopped.
    let mut followers = FuturesUnordered::new();
    let relaying = relay.is_some();
    if let Some((source, feed)) = relay {
        let (updates, mut leaves) = tokio::sync::watch::channel(Membership::new());
        tokio::spawn(async move {
            while leaves.changed().await.is_ok() {
                if !feed.deliver(leaves.borrow_and_update().clone()) {
                    break;
                }
            }
        });
        followers.push(tokio::spawn(async move {
            match source.run(updates).await {
                Ok(()) => ProxyError::RelayFollowerStopped,
                Err(err) => ProxyError::Relay(err),
            }
        }));
    }
    if let Some((source, feed)) = allow_lists {
        let errors = proxy.metrics().allow_list_api_errors.clone();
        followers.push(tokio::spawn(async move {
            match source.run(feed, errors).await {
                Ok(()) => AllowListApiError::FollowerStopped.into(),
                Err(err) => err,
            }
        }));
    }
    let mut registry = crate::metrics::registry();
    proxy.metrics().register(&mut registry);
    if relaying {
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
    let mut failure = None;
    let signal = loop {
        tokio::select! {
            signal = &mut signal => break Some(signal),
            Some(ended) = followers.next(), if !followers.is_empty() => {
                let why = ended.unwrap_or_else(|source| ProxyError::Task { context: "a follower failed", source });
                tracing::error!(error = %why, "stopping the proxy");
                failure = Some(why);
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
    for follower in followers.iter() {
        follower.abort();
    }
    health.set_ready(false);
    let stats = tokio::task::spawn_blocking(move || proxy.shutdown())
        .await
        .map_err(|source| ProxyError::Task {
            context: "stopping the proxy",
            source,
        })?;
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

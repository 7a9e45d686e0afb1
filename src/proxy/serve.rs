//! `fanout proxy` as a process: a [`Proxy`](super::Proxy) with the HTTP endpoint
//! (`/healthz`, `/readyz`, `/metrics`) beside it, until SIGTERM or SIGINT stops both cleanly.

use super::{ProxyConfig, ProxyError};
use crate::http::Health;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Runs the proxy until SIGTERM or SIGINT, then stops it cleanly and returns (exit 0).
pub fn run(config: ProxyConfig, http: Option<SocketAddr>) -> Result<(), ProxyError> {
    crate::runtime::block_on(serve(config, http)).map_err(ProxyError::io("starting a runtime"))?
}

async fn serve(config: ProxyConfig, http_addr: Option<SocketAddr>) -> Result<(), ProxyError> {
    let health = Arc::new(Health::default());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let proxy = tokio::task::spawn_blocking(move || super::start(config))
        .await
        .map_err(|e| ProxyError::Thread(format!("starting the proxy: {e}")))??;
    let mut registry = crate::metrics::registry();
    proxy.metrics().register(&mut registry);
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
    let signal = loop {
        tokio::select! {
            signal = &mut signal => break signal,
            _ = ticker.tick() => {
                if !proxy.is_running() {
                    health.set_live(false);
                    health.set_ready(false);
                }
            }
        }
    };
    tracing::info!(%signal, "stopping the proxy");
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
    Ok(())
}

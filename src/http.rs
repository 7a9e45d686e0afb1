//! The small HTTP endpoint every long-running role exposes: `/healthz` (the process is alive
//! and its loops turn), `/readyz` (what the role means by ready: a proxy once its sockets are
//! bound; a controller replica from the start, leader or standby, see `controller`; `fanout
//! publish` once it is connected to a first proxy) and `/metrics` (OpenMetrics text).
//!
//! Whoever reaches the port is a client to bound ([`HttpLimits`]): a request head must arrive
//! within a few seconds (a slowloris client trickling bytes is cut off), no connection lives
//! longer than a minute, one address holds a few connections at most and everyone together a
//! few dozen, so the kubelet's probes get through and the process's memory and descriptors
//! stay bounded whatever one client does.

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Liveness and readiness flags, flipped by the role that owns them.
#[derive(Debug)]
pub struct Health {
    live: AtomicBool,
    ready: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            live: AtomicBool::new(true),
            ready: AtomicBool::new(false),
        }
    }
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    registry: Arc<Registry>,
}

/// What one client may hold of the HTTP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; more wait in the listen backlog until one ends.
    pub max_connections: usize,
    /// Connections one address may hold at once; more are closed at once, so that one client
    /// cannot take every slot from the kubelet's probes.
    pub max_connections_per_peer: usize,
    /// Time for a request head (request line and headers) to arrive, from the first byte
    /// awaited.
    pub header_timeout: Duration,
    /// The longest a connection lives (a client that never reads its response, or idles in
    /// keep-alive); it is then closed gracefully.
    pub max_connection_age: Duration,
}

impl Default for HttpLimits {
    /// Room for probes and a few scrapers: 64 connections, 8 per address, 5 s for a request
    /// head, 60 s per connection.
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_connections_per_peer: 8,
            header_timeout: Duration::from_secs(5),
            max_connection_age: Duration::from_secs(60),
        }
    }
}

/// Binds `addr` now (so a port clash is an immediate, clear error) and returns the bound
/// address and a future that serves, within [`HttpLimits::default`], until `shutdown`
/// completes.
pub async fn bind(
    addr: SocketAddr,
    health: Arc<Health>,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    bind_with(addr, health, registry, HttpLimits::default(), shutdown).await
}

/// [`bind`] with other limits.
pub async fn bind_with(
    addr: SocketAddr,
    health: Arc<Health>,
    registry: Arc<Registry>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { health, registry });
    Ok((local, serve(listener, app, limits, shutdown)))
}

/// Connections held per address.
#[derive(Debug, Default)]
struct PerPeer(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`PerPeer`], given back when the connection ends.
struct PeerSlot {
    peers: Arc<PerPeer>,
    peer: IpAddr,
}

impl PerPeer {
    fn take(peers: &Arc<PerPeer>, peer: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut held = peers.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(peer).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: peers.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

/// The accept loop: a slot (of `max_connections`) before each accept, a per-address slot
/// after it, and one task per connection under the time limits. On `shutdown` it stops
/// accepting, asks every connection to finish gracefully and waits for them.
async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let peers = Arc::new(PerPeer::default());
    let (closing, closing_seen) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connections so the set stays as small as the slots.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors, for instance: back off instead of spinning.
                tracing::warn!(error = %err, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(peer_slot) = PerPeer::take(&peers, peer.ip(), limits.max_connections_per_peer) else {
            tracing::debug!(%peer, "HTTP: too many connections from this address; closed");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let closing = closing_seen.clone();
        connections.spawn(async move {
            serve_connection(stream, service, limits, closing).await;
            drop((slot, peer_slot));
        });
    }
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One connection: HTTP/1 with the header timeout, closed gracefully at its age limit or at
/// shutdown, and dropped if it still has not finished a header timeout later.
async fn serve_connection(
    stream: TcpStream,
    service: TowerToHyperService<Router>,
    limits: HttpLimits,
    mut closing: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let too_old = tokio::time::sleep(limits.max_connection_age);
    tokio::pin!(too_old);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "HTTP connection ended with an error");
            }
            return;
        }
        () = &mut too_old => {}
        _ = closing.wait_for(|closing| *closing) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.header_timeout, connection).await;
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not live\n")
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain; charset=utf-8")],
            format!("encoding metrics failed: {err}\n"),
        ),
    }
}

/// The HTTP endpoint served from a thread of its own, for a command that is not async
/// (`fanout publish`). Stops when [`stop`](Background::stop) is called or it is dropped.
pub struct Background {
    pub addr: SocketAddr,
    pub health: Arc<Health>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Binds `addr` (a clash is an error here, not later) and serves `registry`.
    pub fn start(addr: SocketAddr, registry: Registry) -> std::io::Result<Self> {
        let health = Arc::new(Health::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let served_health = health.clone();
        let thread = crate::runtime::spawn_thread("fanout-http", async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            match bind(addr, served_health, Arc::new(registry), shutdown).await {
                Ok((local, serve)) => {
                    let _ = bound_tx.send(Ok(local));
                    if let Err(err) = serve.await {
                        tracing::warn!(error = %err, "HTTP endpoint failed");
                    }
                }
                Err(err) => {
                    let _ = bound_tx.send(Err(err));
                }
            }
        })?;
        let addr = bound_rx
            .recv()
            .map_err(|_| std::io::Error::other("the HTTP thread ended before binding"))??;
        Ok(Self {
            addr,
            health,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops serving and waits for the thread.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the HTTP thread panicked");
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.shut_down();
    }
}

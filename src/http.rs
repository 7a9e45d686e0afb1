//! The small HTTP endpoint every long-running role exposes: `/healthz` (the process is alive
//! and its loops turn), `/readyz` (what the role means by ready: a proxy once its sockets are
//! bound; a controller replica from the start, leader or standby, see `controller`; `fanout
//! publish` once it is connected to a first proxy) and `/metrics` (OpenMetrics text).

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

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

/// Binds `addr` now (so a port clash is an immediate, clear error) and returns the bound
/// address and a future that serves until `shutdown` completes.
pub async fn bind(
    addr: SocketAddr,
    health: Arc<Health>,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { health, registry });
    let serve = async move { axum::serve(listener, app).with_graceful_shutdown(shutdown).await };
    Ok((local, serve))
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

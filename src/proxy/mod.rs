//! `fanout proxy`, the per-node data plane: an XSUB socket where publishers connect, an XPUB
//! socket (a unix socket and/or TCP) where local subscribers connect, and a forwarding thread
//! between them. Every message goes through unchanged; subscriptions go upstream as libzmq's
//! XPUB reference-counts them.

pub mod auth;
mod config;
mod curve_server;
mod error;
mod forwarder;
mod ipc;
mod metrics;
pub(crate) mod monitor;
mod relay;
#[cfg(feature = "http")]
mod serve;
pub mod socket_dir;
mod subscriptions;

pub use config::{
    CurveServerConfig, DEFAULT_HEARTBEAT, DEFAULT_HWM, DEFAULT_MAX_FRAMES, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_SOCKET_MODE, MAX_QUEUED_BYTES_PER_PEER, ProxyConfig, SHUTDOWN_LINGER, queue_bound_exceeded,
};
pub use curve_server::ALLOW_LIST_RECHECK;
pub use error::ProxyError;
pub use forwarder::{Proxy, apply_socket_options, start, start_relay};
pub use metrics::{ProxyMetrics, ProxyStats, Side, SideMetrics, SideStats};
pub use relay::{LeafFeed, RelayInput, RelayMetrics, leaf_feed};
#[cfg(feature = "http")]
pub use serve::{run, run_relay};
pub use subscriptions::{LiveSubscriptions, SubscriptionLimits, Upstream};

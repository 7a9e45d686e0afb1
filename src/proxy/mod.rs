//! `fanout proxy`, the per-node data plane: an XSUB socket where publishers connect, an XPUB
//! socket (a unix socket and/or TCP) where local subscribers connect, and a forwarding thread
//! between them. Every message goes through unchanged; subscriptions are counted per subscriber
//! connection and go upstream once per distinct topic. What one peer can make the proxy hold is
//! bounded (docs/security.md).

#[cfg(feature = "kubernetes")]
pub mod allow_list_api;
pub mod allow_lists;
pub mod auth;
mod config;
mod connections;
mod curve_server;
mod error;
mod forwarder;
mod handoff;
mod in_flight;
mod ipc;
mod leaf_links;
mod message_source;
mod metrics;
mod peer;
mod relay;
mod route;
#[cfg(feature = "http")]
mod serve;
pub mod socket_dir;
mod sockets;
mod subscriber_book;
mod subscription_relay;
mod subscriptions;

pub use config::{
    CURVE_FRAME_EXTRA, CurveServerConfig, DEFAULT_HEARTBEAT, DEFAULT_HWM, DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_SOCKET_MODE, MAX_QUEUED_BYTES_PER_PEER, ProxyConfig, SHUTDOWN_LINGER,
    SUBSCRIBER_FRAME_FLOOR, queue_bound_exceeded,
};
pub use curve_server::ALLOW_LIST_RECHECK;
pub use error::{AllowListApiError, ProxyError};
pub use forwarder::{Proxy, ProxyInputs, start, start_relay, start_with};
pub use handoff::Handoff;
pub use metrics::{CutOff, ProxyMetrics, ProxyStats, Side, SideMetrics, SideStats};
pub use relay::{LeafFeed, RelayInput, RelayMetrics, leaf_feed};
#[cfg(feature = "http")]
pub use serve::{Followers, run};
pub use sockets::apply_socket_options;
pub use subscriptions::{LiveSubscriptions, SubscriptionLimits, UpstreamChange};

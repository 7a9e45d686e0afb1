//! fanout: a ZeroMQ publish/subscribe fanout fabric with live Kubernetes group membership.
//!
//! The pure core (the endpoint-list contract, membership diffs, desired Kubernetes objects and
//! the controller's plan, endpoint slicing, the wire envelope) has no I/O; sockets, HTTP and
//! the Kubernetes API sit around it. Cargo features: `kubernetes` (following groups through
//! the API, the FanoutGroup types; picks no Kubernetes API version), `http` (the `/metrics`
//! endpoint), `controller`, and `cli` (the `fanout` binary; default).

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "controller")]
pub mod controller;
#[cfg(feature = "kubernetes")]
pub mod crd;
pub mod curve;
pub mod demo;
pub mod endpoint_list;
pub mod error;
pub mod followed_file;
#[cfg(feature = "http")]
pub mod http;
pub mod membership;
pub mod message_budget;
pub mod metrics;
pub(crate) mod nodrop;
pub mod probe;
pub mod proxy;
pub mod publisher;
pub mod relay_tree;
pub mod runtime;
pub(crate) mod socket_monitor;
pub mod socket_options;
pub mod subscriber;
#[cfg(feature = "cli")]
pub mod telemetry;
#[cfg(feature = "kubernetes")]
pub mod watch_backoff;
pub mod wire;

pub use endpoint_list::Endpoint;
pub use error::{Error, Result};
pub use membership::{Membership, MembershipSource};
pub use publisher::Publisher;
pub use subscriber::Subscriber;

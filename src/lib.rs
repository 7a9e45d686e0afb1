//! fanout: a ZeroMQ publish/subscribe fanout fabric with live Kubernetes group membership.
//!
//! The pure core (membership diffs, desired Kubernetes objects, endpoint slicing, the wire
//! envelope) has no I/O; sockets, HTTP and the Kubernetes API sit around it.

pub mod cli;
pub mod controller;
pub mod crd;
pub mod demo;
pub mod error;
pub mod http;
pub mod membership;
pub mod proxy;
pub mod publisher;
pub mod shutdown;
pub mod subscriber;
pub mod telemetry;
pub mod wire;

pub use error::{Error, Result};
pub use membership::{Membership, MembershipSink, MembershipSource};
pub use publisher::Publisher;
pub use subscriber::Subscriber;

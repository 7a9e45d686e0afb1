//! What starting, running or stopping a proxy can fail with.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid proxy configuration: {0}")]
    Config(String),
    #[error("ZeroMQ {context}: {source}")]
    Zmq {
        context: String,
        #[source]
        source: zmq::Error,
    },
    #[error("unix socket {path}: {reason}")]
    SocketFile { path: PathBuf, reason: String },
    #[error("I/O {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The forwarding thread ended before it was told to, or panicked.
    #[error("the forwarding thread {0}")]
    Thread(&'static str),
    /// A blocking task (starting or stopping the forwarder) or a follower task that panicked or
    /// was cancelled.
    #[error("{context}: {source}")]
    Task {
        context: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The CURVE key the proxy was given is unusable.
    #[error("{context}: {source}")]
    Key {
        context: &'static str,
        #[source]
        source: crate::curve::CurveError,
    },
    /// A relay that cannot follow its assignment.
    #[error("relay: cannot follow the relay assignment: {0}")]
    Relay(#[source] crate::membership::MembershipError),
    /// A relay whose assignment follower ended without an error.
    #[error("relay: the assignment follower stopped")]
    RelayFollowerStopped,
    /// A CURVE proxy that cannot follow its allow-lists through the API.
    #[error("allow-lists through the API: {0}")]
    AllowListApi(#[from] AllowListApiError),
}

/// Why a proxy stopped following its allow-lists through the API.
#[derive(Debug, thiserror::Error)]
pub enum AllowListApiError {
    #[cfg(feature = "kubernetes")]
    #[error("building a client: {0}")]
    Client(#[source] kube::Error),
    #[error("the watch on ConfigMap {namespace}/{name} ended")]
    WatchEnded { namespace: String, name: String },
    #[error("the follower stopped")]
    FollowerStopped,
}

impl ProxyError {
    pub(crate) fn zmq(context: impl Into<String>) -> impl FnOnce(zmq::Error) -> ProxyError {
        let context = context.into();
        move |source| ProxyError::Zmq { context, source }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProxyError {
        let context = context.into();
        move |source| ProxyError::Io { context, source }
    }
}

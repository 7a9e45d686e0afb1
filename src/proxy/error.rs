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
    #[error("the forwarding thread stopped unexpectedly: {0}")]
    Thread(String),
    /// A relay that cannot follow its assignment.
    #[error("relay: {0}")]
    Relay(String),
    /// A CURVE proxy that cannot follow its allow-lists through the API.
    #[error("allow-lists through the API: {0}")]
    AllowListApi(String),
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

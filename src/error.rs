//! The error a subcommand returns to `main`. Each module keeps its own precise error type and
//! converts into this one at the edge.

/// Everything a subcommand can fail with, with the module's own error as the source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("ZeroMQ: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("membership: {0}")]
    Membership(#[from] crate::membership::MembershipError),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The error a subcommand returns to `main`. Each module keeps its own precise error type;
//! this one only says which module failed, with that error as its source.

/// Everything a subcommand can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--curve-secret-key-file needs --proxy-public-key (or, for fanout publish, --group)")]
    MissingProxyPublicKey,
    #[error("--{flag} {value}: {source}")]
    InvalidSeconds {
        flag: String,
        value: f64,
        source: std::time::TryFromFloatSecsError,
    },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Membership(#[from] crate::membership::MembershipError),
    #[error(transparent)]
    Curve(#[from] crate::curve::CurveError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error(transparent)]
    SocketDir(#[from] crate::proxy::socket_dir::SocketDirError),
    #[error(transparent)]
    Publish(#[from] crate::publisher::command::PublishError),
    #[error(transparent)]
    Subscribe(#[from] crate::subscriber::command::SubscribeError),
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[cfg(feature = "kubernetes")]
    #[error(transparent)]
    GroupKey(#[from] crate::membership::kubernetes::GroupKeyError),
    #[cfg(feature = "kubernetes")]
    #[error("cannot read the group's maxMessageBytes from the Kubernetes API: {0}")]
    GroupMessageCap(#[source] kube::Error),
    #[cfg(feature = "kubernetes")]
    #[error("cannot render the CRD: {0}")]
    Crd(#[from] serde_norway::Error),
    #[cfg(feature = "controller")]
    #[error(transparent)]
    Controller(#[from] crate::controller::ControllerError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

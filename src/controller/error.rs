//! Why a reconcile failed, and why the controller could not start.

use super::objects::Unrealisable;
use std::time::Duration;

/// Why a reconcile failed. `metric_label` is the `reason` of `reconcile_errors`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{verb} {kind} {name}: {source}")]
    Api {
        verb: &'static str,
        kind: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("not the leader any more: no writes")]
    NotLeader,
    #[error("the watch caches did not sync within {0:?}")]
    CacheNotSynced(Duration),
    #[error("cannot serialise {kind}: {source}")]
    Serialise {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Unrealisable(#[from] Unrealisable),
    #[error("cannot make the group's CURVE key pair: {0}")]
    KeyGeneration(#[source] crate::curve::CurveError),
}

impl Error {
    /// The Degraded reason when the API refused an object for good (invalid or forbidden);
    /// `None` for errors that a retry may cure.
    pub fn rejection_reason(&self) -> Option<&'static str> {
        match self {
            Error::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
                    Some("ObjectRejected")
                }
                kube::Error::Api(status) if status.code == 403 => Some("Forbidden"),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn metric_label(&self) -> String {
        match self {
            Error::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => match status.code {
                    409 => "api_conflict".into(),
                    403 => "api_forbidden".into(),
                    404 => "api_not_found".into(),
                    422 => "api_invalid".into(),
                    code if code >= 500 => "api_server_error".into(),
                    _ => "api_other".into(),
                },
                _ => "api_unreachable".into(),
            },
            Error::NotLeader => "not_leader".into(),
            Error::CacheNotSynced(_) => "cache_not_synced".into(),
            Error::Serialise { .. } => "serialise".into(),
            Error::Unrealisable(problem) => problem.reason().into(),
            Error::KeyGeneration(_) => "key_generation".into(),
        }
    }
}

/// Why `fanout controller` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("invalid leader election timings: {0}")]
    LeaseTimings(#[source] super::leader::LeaseTimingsError),
}

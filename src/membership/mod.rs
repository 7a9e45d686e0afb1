//! Group membership: the set of proxy endpoints a publisher must be connected to.
//!
//! The pure part is [`Membership`] and [`diff`]. Sources ([`MembershipSource`]) push full
//! snapshots into a [`MembershipSink`]; whoever owns the sink (a `Publisher`, or the
//! `fanout endpoints` printer) diffs snapshots and acts on joins and leaves at once.

use futures::future::BoxFuture;
use std::collections::BTreeSet;
use std::sync::Arc;

pub mod file;
pub mod kubernetes;

/// A full snapshot of a group's live endpoints (`tcp://IP:PORT`), sorted and de-duplicated.
pub type Membership = BTreeSet<String>;

/// What changed between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipDiff {
    /// Endpoints in the new snapshot only, sorted.
    pub joined: Vec<String>,
    /// Endpoints in the old snapshot only, sorted.
    pub left: Vec<String>,
}

impl MembershipDiff {
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty()
    }
}

/// Joins and leaves that turn `old` into `new`.
pub fn diff(old: &Membership, new: &Membership) -> MembershipDiff {
    MembershipDiff {
        joined: new.difference(old).cloned().collect(),
        left: old.difference(new).cloned().collect(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("the membership sink is closed (its publisher has shut down)")]
    SinkClosed,
    #[error("membership file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("Kubernetes membership source: {0}")]
    Kubernetes(String),
}

/// Where a source delivers snapshots. Cheap to clone; `update` never blocks on the network.
#[derive(Clone)]
pub struct MembershipSink {
    deliver: Arc<dyn Fn(Membership) -> Result<(), MembershipError> + Send + Sync>,
}

impl MembershipSink {
    /// A sink that hands each snapshot to `deliver`, which returns `Err(SinkClosed)` once its
    /// owner has gone away (the source then stops).
    pub fn new(deliver: impl Fn(Membership) -> Result<(), MembershipError> + Send + Sync + 'static) -> Self {
        Self {
            deliver: Arc::new(deliver),
        }
    }

    /// Delivers a full snapshot. Sinks are level-triggered: sending the same snapshot twice is
    /// harmless.
    pub fn update(&self, members: Membership) -> Result<(), MembershipError> {
        (self.deliver)(members)
    }
}

/// A source of membership snapshots: a static list, a file, the Kubernetes API.
///
/// `run` delivers the first snapshot as soon as it knows it, then one on every change, until
/// the sink reports it is closed (then it returns `Ok`) or the source fails for good. Sources
/// are async so that the Kubernetes watch and the file watcher share one shape; a publisher
/// drives them on a runtime of its own.
pub trait MembershipSource: Send + 'static {
    fn run(self: Box<Self>, sink: MembershipSink) -> BoxFuture<'static, Result<(), MembershipError>>;
}

/// A fixed list, delivered once.
#[derive(Debug, Clone)]
pub struct StaticSource {
    members: Membership,
}

impl StaticSource {
    pub fn new(endpoints: impl IntoIterator<Item = String>) -> Result<Self, MembershipError> {
        let members = endpoints
            .into_iter()
            .map(|e| validate_endpoint(&e).map(|()| e))
            .collect::<Result<_, _>>()?;
        Ok(Self { members })
    }
}

impl MembershipSource for StaticSource {
    fn run(self: Box<Self>, sink: MembershipSink) -> BoxFuture<'static, Result<(), MembershipError>> {
        Box::pin(async move {
            match sink.update(self.members) {
                Ok(()) | Err(MembershipError::SinkClosed) => Ok(()),
                Err(other) => Err(other),
            }
        })
    }
}

/// Checks that `endpoint` is a ZeroMQ endpoint a publisher can connect to: `tcp://HOST:PORT`
/// (IPv6 hosts in brackets) or `ipc://PATH`.
pub fn validate_endpoint(endpoint: &str) -> Result<(), MembershipError> {
    let invalid = |reason: &str| MembershipError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    if let Some(rest) = endpoint.strip_prefix("tcp://") {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| invalid("expected tcp://HOST:PORT"))?;
        if host.is_empty() {
            return Err(invalid("empty host"));
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(invalid("an IPv6 host must be in brackets"));
        }
        match port.parse::<u16>() {
            Ok(0) | Err(_) => Err(invalid("port must be 1..65535")),
            Ok(_) => Ok(()),
        }
    } else if let Some(path) = endpoint.strip_prefix("ipc://") {
        if path.is_empty() {
            Err(invalid("empty ipc path"))
        } else {
            Ok(())
        }
    } else {
        Err(invalid("expected tcp:// or ipc://"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> Membership {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn diff_reports_joins_and_leaves_sorted() {
        let old = set(&[
            "tcp://10.0.0.1:7100",
            "tcp://10.0.0.2:7100",
            "tcp://10.0.0.3:7100",
        ]);
        let new = set(&[
            "tcp://10.0.0.3:7100",
            "tcp://10.0.0.4:7100",
            "tcp://10.0.0.1:7100",
        ]);
        let d = diff(&old, &new);
        assert_eq!(d.joined, vec!["tcp://10.0.0.4:7100"]);
        assert_eq!(d.left, vec!["tcp://10.0.0.2:7100"]);
    }

    #[test]
    fn diff_of_equal_sets_is_empty() {
        let a = set(&["tcp://10.0.0.1:7100"]);
        assert!(diff(&a, &a.clone()).is_empty());
        assert!(diff(&Membership::new(), &Membership::new()).is_empty());
    }

    #[test]
    fn diff_from_and_to_empty() {
        let a = set(&["tcp://10.0.0.1:7100", "tcp://10.0.0.2:7100"]);
        assert_eq!(diff(&Membership::new(), &a).joined.len(), 2);
        assert_eq!(diff(&a, &Membership::new()).left.len(), 2);
    }

    #[test]
    fn endpoints_are_validated() {
        for ok in [
            "tcp://10.0.0.1:7100",
            "tcp://[fd00::1]:7100",
            "tcp://proxy.ns.svc:1",
            "ipc:///tmp/x.sock",
        ] {
            assert!(validate_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.1:7100",
            "tcp://10.0.0.1",
            "tcp://:7100",
            "tcp://10.0.0.1:0",
            "tcp://10.0.0.1:70000",
            "tcp://fd00::1:7100",
            "ipc://",
            "udp://1.2.3.4:5",
        ] {
            assert!(validate_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn static_source_rejects_bad_endpoints() {
        assert!(StaticSource::new(vec!["tcp://10.0.0.1:7100".to_string()]).is_ok());
        assert!(StaticSource::new(vec!["nonsense".to_string()]).is_err());
    }
}

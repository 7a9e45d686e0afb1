//! Group membership: the set of proxy endpoints a publisher must be connected to.
//!
//! The pure part is [`Membership`] and [`diff`]. Sources ([`MembershipSource`]) send full
//! snapshots into a `tokio::sync::watch` channel (the newest snapshot wins; nothing queues
//! up behind a slow reader); whoever holds the receiving end (a `Publisher`'s socket thread,
//! the `fanout endpoints` printer) diffs snapshots and acts on joins and leaves at once.

use crate::endpoint_list::{Endpoint, InvalidEndpoint};
use futures::future::BoxFuture;
use std::collections::BTreeSet;
use tokio::sync::watch;

pub mod file;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod print;

/// A full snapshot of a group's live endpoints, sorted and de-duplicated.
pub type Membership = BTreeSet<Endpoint>;

/// What changed between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipDiff {
    /// Endpoints in the new snapshot only, sorted.
    pub joined: Vec<Endpoint>,
    /// Endpoints in the old snapshot only, sorted.
    pub left: Vec<Endpoint>,
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
    #[error(transparent)]
    InvalidEndpoint(#[from] InvalidEndpoint),
    #[error("the group name is empty")]
    EmptyGroupName,
    #[cfg(feature = "kubernetes")]
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("the Kubernetes watch stream ended")]
    WatchEnded,
}

/// Where a source sends its snapshots: the sending half of a `watch` channel.
pub type MembershipSender = watch::Sender<Membership>;

/// Sends a snapshot; false once every receiver has gone (the source should stop then).
pub fn deliver(updates: &MembershipSender, members: Membership) -> bool {
    updates.send(members).is_ok()
}

/// A source of membership snapshots: a static list, a file, the Kubernetes API.
///
/// `run` sends the first snapshot as soon as it knows it, then one on every change, until
/// every receiver is gone (then it returns `Ok`) or the source fails for good. Sources are
/// async so that the Kubernetes watch and the file watcher share one shape; a publisher
/// drives them on a runtime of its own.
pub trait MembershipSource: Send + 'static {
    fn run(self: Box<Self>, updates: MembershipSender) -> BoxFuture<'static, Result<(), MembershipError>>;
}

/// A fixed list, delivered once.
#[derive(Debug, Clone)]
pub struct StaticSource {
    members: Membership,
}

impl StaticSource {
    /// Checks every endpoint.
    pub fn new(endpoints: impl IntoIterator<Item = String>) -> Result<Self, MembershipError> {
        let members = endpoints
            .into_iter()
            .map(|e| Endpoint::parse(&e))
            .collect::<Result<_, _>>()?;
        Ok(Self { members })
    }
}

impl MembershipSource for StaticSource {
    fn run(self: Box<Self>, updates: MembershipSender) -> BoxFuture<'static, Result<(), MembershipError>> {
        Box::pin(async move {
            deliver(&updates, self.members);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> Membership {
        items.iter().map(|s| Endpoint::parse(s).unwrap()).collect()
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
        assert_eq!(
            d.joined,
            set(&["tcp://10.0.0.4:7100"]).into_iter().collect::<Vec<_>>()
        );
        assert_eq!(
            d.left,
            set(&["tcp://10.0.0.2:7100"]).into_iter().collect::<Vec<_>>()
        );
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
    fn static_source_rejects_bad_endpoints() {
        assert!(StaticSource::new(vec!["tcp://10.0.0.1:7100".to_string()]).is_ok());
        assert!(StaticSource::new(vec!["nonsense".to_string()]).is_err());
    }

    #[test]
    fn delivering_to_nobody_says_stop() {
        let (updates, receiver) = watch::channel(Membership::new());
        assert!(deliver(&updates, set(&["tcp://10.0.0.1:7100"])));
        drop(receiver);
        assert!(!deliver(&updates, Membership::new()));
    }
}

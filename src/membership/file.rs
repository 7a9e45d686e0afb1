//! Membership from a file of `tcp://IP:PORT` lines, re-read when it changes.
//!
//! This is how a publisher that cannot watch the API follows the group's ConfigMap mounted as a
//! volume; how the file is followed (directory watch plus a re-check timer, because the kubelet
//! swaps a `..data` symlink rather than writing the file) is [`crate::followed_file`].
//!
//! The format is the ConfigMap's (`endpoint_list::parse_list`): blank lines and `#` comments
//! are ignored; invalid lines are logged and skipped. A missing or
//! unreadable file keeps the last known list (with a warning) until it is readable again.

use super::{Membership, MembershipError, MembershipSender, MembershipSource, deliver};
use crate::endpoint_list::parse_list;
use crate::followed_file::FollowedFile;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::time::Duration;

/// Follows a membership file. See the module documentation.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    recheck: Duration,
}

impl FileSource {
    /// Follows `path`, re-checking every 5 s besides reacting to directory events.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            recheck: Duration::from_secs(5),
        }
    }

    /// Sets the safety-net re-check interval.
    pub fn with_recheck_interval(mut self, every: Duration) -> Self {
        self.recheck = every.max(Duration::from_millis(10));
        self
    }
}

impl MembershipSource for FileSource {
    fn run(self: Box<Self>, updates: MembershipSender) -> BoxFuture<'static, Result<(), MembershipError>> {
        Box::pin(async move {
            let file = FollowedFile {
                path: self.path.clone(),
                recheck: self.recheck,
                what: "membership",
            };
            let mut last: Option<Membership> = None;
            let path = self.path.clone();
            let sender = updates.clone();
            let on_change = move |members: &Membership, _: &[_]| {
                // Called when the invalid lines changed too: only a new list is news.
                if last.as_ref() == Some(members) {
                    return true;
                }
                last = Some(members.clone());
                tracing::debug!(path = %path.display(), endpoints = members.len(), "membership file changed");
                deliver(&sender, members.clone())
            };
            // Every receiver gone (the publisher closed): stop following.
            file.follow(parse_list, on_change, updates.closed()).await;
            Ok(())
        })
    }
}

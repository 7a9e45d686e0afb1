//! Membership from a file of `tcp://IP:PORT` lines, re-read when it changes.
//!
//! This is how a publisher that cannot watch the API follows the group's ConfigMap mounted as a
//! volume. The kubelet updates such a mount by writing a new timestamped directory and
//! atomically swapping the `..data` symlink, so the file itself is never modified in place:
//! we watch the *directory* (any event there triggers a re-read) and also re-read on a slow
//! timer as a safety net (missed events, network filesystems, a directory that appears later).
//!
//! The format is the ConfigMap's (`endpoint_list::parse_list`): blank lines and `#` comments
//! are ignored; invalid lines are logged and skipped. A missing or
//! unreadable file keeps the last known list (with a warning) until it is readable again.

use super::{Membership, MembershipError, MembershipSender, MembershipSource, deliver};
use crate::endpoint_list::{InvalidLine, parse_list};
use futures::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Pause after a directory event before reading the file.
const DEBOUNCE: Duration = Duration::from_millis(20);

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

    fn directory(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// Watches `dir` and pokes `changed` on every event. `None` (with a warning) if the watch
/// cannot be set up; the timer still covers us then.
fn watch_directory(dir: &Path, changed: Arc<tokio::sync::Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match &event {
            // Our own reads of the file show up as access (open/close) events: reacting to
            // them would re-read forever.
            Ok(e) if e.kind.is_access() => return,
            Ok(e) => tracing::trace!(kind = ?e.kind, paths = ?e.paths, "membership directory event"),
            Err(err) => tracing::debug!(error = %err, "membership file watch error"),
        }
        changed.notify_one();
    }) {
        Ok(w) => w,
        Err(err) => {
            tracing::warn!(error = %err, "cannot create a file watcher; relying on the re-check timer");
            return None;
        }
    };
    match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(err) => {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot watch the membership directory yet; relying on the re-check timer");
            None
        }
    }
}

/// Reading state: what was last delivered and whether we already warned about the file.
struct Reader {
    path: PathBuf,
    delivered: Option<Membership>,
    warned_missing: bool,
    last_invalid: Vec<InvalidLine>,
}

impl Reader {
    /// Reads the file; returns a snapshot to deliver if it differs from the last one.
    async fn poll(&mut self) -> Option<Membership> {
        match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => {
                if self.warned_missing {
                    tracing::info!(path = %self.path.display(), "membership file is readable again");
                    self.warned_missing = false;
                }
                let (members, invalid) = parse_list(&text);
                if invalid != self.last_invalid {
                    for bad in &invalid {
                        tracing::warn!(path = %self.path.display(), line = bad.line, text = %bad.text, reason = %bad.reason, "skipping invalid endpoint line");
                    }
                    self.last_invalid = invalid;
                }
                if self.delivered.as_ref() == Some(&members) {
                    None
                } else {
                    self.delivered = Some(members.clone());
                    Some(members)
                }
            }
            Err(err) => {
                if !self.warned_missing {
                    tracing::warn!(path = %self.path.display(), error = %err, "cannot read the membership file; keeping the last known list");
                    self.warned_missing = true;
                }
                None
            }
        }
    }
}

impl MembershipSource for FileSource {
    fn run(self: Box<Self>, updates: MembershipSender) -> BoxFuture<'static, Result<(), MembershipError>> {
        Box::pin(async move {
            let dir = self.directory();
            let changed = Arc::new(tokio::sync::Notify::new());
            let mut watcher = watch_directory(&dir, changed.clone());
            let mut timer = tokio::time::interval(self.recheck);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut reader = Reader {
                path: self.path.clone(),
                delivered: None,
                warned_missing: false,
                last_invalid: Vec::new(),
            };
            loop {
                if let Some(members) = reader.poll().await {
                    tracing::debug!(path = %self.path.display(), endpoints = members.len(), "membership file changed");
                    if !deliver(&updates, members) {
                        return Ok(());
                    }
                }
                tokio::select! {
                    _ = changed.notified() => {
                        // Events come in bursts (create, write, rename); a writer that
                        // rewrites in place may have truncated the file a moment ago. Wait
                        // briefly so we read the finished file, not an empty one.
                        tokio::time::sleep(DEBOUNCE).await;
                    }
                    _ = timer.tick() => {
                        // The directory may have appeared since we last tried to watch it.
                        if watcher.is_none() && dir.is_dir() {
                            watcher = watch_directory(&dir, changed.clone());
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_watches_current_directory() {
        assert_eq!(FileSource::new("endpoints").directory(), PathBuf::from("."));
        assert_eq!(
            FileSource::new("/a/b/endpoints").directory(),
            PathBuf::from("/a/b")
        );
    }
}

//! A line-oriented file followed live: a publisher's membership file, a proxy's allow-list.
//!
//! Such files are usually a Kubernetes ConfigMap or Secret mounted as a volume. The kubelet
//! updates such a mount by writing a new timestamped directory and atomically swapping the
//! `..data` symlink, so the file itself is never modified in place: we watch the *directory*
//! (any event there triggers a re-read) and also re-read on a slow timer as a safety net
//! (missed events, network filesystems, a directory that appears later).
//!
//! What a line means is the caller's parser; invalid lines are logged (once per change of
//! the set of invalid lines) and skipped, the rest applies. A missing or unreadable file keeps
//! the last known value (with a warning) until it is readable again.

use crate::endpoint_list::InvalidLine;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Pause after a directory event before reading the file.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Where the file is and how often to re-read it without an event.
#[derive(Debug, Clone)]
pub struct FollowedFile {
    pub path: PathBuf,
    pub recheck: Duration,
    /// What the file is, for the logs ("membership", "publisher allow-list").
    pub what: &'static str,
}

impl FollowedFile {
    /// The directory watched: the file's parent.
    pub fn directory(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Re-reads the file on every directory event and every `recheck`, parses it with `parse`
    /// and calls `deliver` with each new value (the first read included) and the invalid
    /// lines it had. Ends when `deliver` returns false or `stop` completes.
    pub async fn follow<T, P, D>(self, parse: P, mut deliver: D, stop: impl Future<Output = ()>)
    where
        T: PartialEq,
        P: Fn(&str) -> (T, Vec<InvalidLine>),
        D: FnMut(&T, &[InvalidLine]) -> bool,
    {
        let dir = self.directory();
        let changed = Arc::new(tokio::sync::Notify::new());
        let mut watcher = watch_directory(&dir, changed.clone(), self.what);
        let mut timer = tokio::time::interval(self.recheck.max(Duration::from_millis(10)));
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reader = Reader {
            file: &self,
            delivered: None,
            warned_missing: false,
            last_invalid: Vec::new(),
        };
        tokio::pin!(stop);
        loop {
            if reader.poll(&parse).await
                && let Some(value) = &reader.delivered
                && !deliver(value, &reader.last_invalid)
            {
                return;
            }
            tokio::select! {
                () = &mut stop => return,
                _ = changed.notified() => {
                    // Events come in bursts (create, write, rename); a writer that rewrites
                    // in place may have truncated the file a moment ago. Wait briefly so we
                    // read the finished file, not an empty one.
                    tokio::time::sleep(DEBOUNCE).await;
                }
                _ = timer.tick() => {
                    // The directory may have appeared since we last tried to watch it.
                    if watcher.is_none() && dir.is_dir() {
                        watcher = watch_directory(&dir, changed.clone(), self.what);
                    }
                }
            }
        }
    }
}

/// Watches `dir` and pokes `changed` on every event. `None` (with a warning) if the watch
/// cannot be set up; the timer still covers us then.
fn watch_directory(
    dir: &Path,
    changed: Arc<tokio::sync::Notify>,
    what: &'static str,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match &event {
            // Our own reads of the file show up as access (open/close) events: reacting to
            // them would re-read forever.
            Ok(e) if e.kind.is_access() => return,
            Ok(e) => tracing::trace!(what, kind = ?e.kind, paths = ?e.paths, "followed directory event"),
            Err(err) => tracing::debug!(what, error = %err, "file watch error"),
        }
        changed.notify_one();
    }) {
        Ok(w) => w,
        Err(err) => {
            tracing::warn!(what, error = %err, "cannot create a file watcher; relying on the re-check timer");
            return None;
        }
    };
    match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(err) => {
            tracing::warn!(what, dir = %dir.display(), error = %err, "cannot watch the directory yet; relying on the re-check timer");
            None
        }
    }
}

/// Reading state: what was last delivered and whether we already warned about the file.
struct Reader<'a, T> {
    file: &'a FollowedFile,
    delivered: Option<T>,
    warned_missing: bool,
    last_invalid: Vec<InvalidLine>,
}

impl<T: PartialEq> Reader<'_, T> {
    /// Reads the file; true if its value or its invalid lines changed.
    async fn poll(&mut self, parse: &impl Fn(&str) -> (T, Vec<InvalidLine>)) -> bool {
        let path = &self.file.path;
        let what = self.file.what;
        match tokio::fs::read_to_string(path).await {
            Ok(text) => {
                if self.warned_missing {
                    tracing::info!(what, path = %path.display(), "file is readable again");
                    self.warned_missing = false;
                }
                let (value, invalid) = parse(&text);
                let mut changed = false;
                if invalid != self.last_invalid {
                    for bad in &invalid {
                        tracing::warn!(what, path = %path.display(), line = bad.line, text = %bad.text, reason = %bad.reason, "skipping invalid line");
                    }
                    self.last_invalid = invalid;
                    changed = true;
                }
                if self.delivered.as_ref() != Some(&value) {
                    self.delivered = Some(value);
                    changed = true;
                }
                changed
            }
            Err(err) => {
                if !self.warned_missing {
                    tracing::warn!(what, path = %path.display(), error = %err, "cannot read the file; keeping the last known value");
                    self.warned_missing = true;
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_watches_current_directory() {
        let file = |path: &str| FollowedFile {
            path: path.into(),
            recheck: Duration::from_secs(5),
            what: "test",
        };
        assert_eq!(file("endpoints").directory(), PathBuf::from("."));
        assert_eq!(file("/a/b/endpoints").directory(), PathBuf::from("/a/b"));
    }
}

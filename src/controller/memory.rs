//! What the controller remembers about each group between reconciles, in one place keyed by
//! one [`GroupKey`]: when its last reconcile started (the throttle), when every child was last
//! applied without the skip-if-unchanged check (drift), and how many reconciles in a row
//! failed (the backoff). Forgotten when the group is deleted. The decisions are pure
//! functions of that memory and the clock.

use super::writer::ApplyMode;
use crate::crd::FanoutGroup;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a group is reconciled with no event at all (drift, lost events), and how often
/// every child is applied regardless of the applied-hash annotation.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Least time between the starts of two reconciles of one group. While a group waits or
/// reconciles, every further event for it folds into one pending request, so a burst of N pod
/// changes costs about `burst length / MIN_INTERVAL` reconciles (each writing only the slices
/// that changed), and a single change is published at once.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// A group's namespace and name: the one key of everything kept per group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub namespace: String,
    pub name: String,
}

impl GroupKey {
    pub fn of(group: &FanoutGroup) -> Self {
        Self {
            namespace: group.namespace().unwrap_or_default(),
            name: group.name_any(),
        }
    }
}

impl From<&ObjectRef<FanoutGroup>> for GroupKey {
    fn from(reference: &ObjectRef<FanoutGroup>) -> Self {
        Self {
            namespace: reference.namespace.clone().unwrap_or_default(),
            name: reference.name.clone(),
        }
    }
}

/// What is remembered about one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupMemory {
    pub last_start: Option<Instant>,
    pub last_full_apply: Option<Instant>,
    pub consecutive_failures: u32,
}

/// Pure: how long to wait before reconciling a group that last started at `last`.
pub fn throttle_delay(last: Option<Instant>, now: Instant, min_interval: Duration) -> Duration {
    last.map(|last| min_interval.saturating_sub(now.saturating_duration_since(last)))
        .unwrap_or(Duration::ZERO)
}

/// Pure: whether a group is due for an apply of every child regardless of the applied-hash
/// annotation. The hash only says what we last wrote; a field of ours that someone else edited
/// since leaves it unchanged, so every `every` the controller re-asserts all it owns (a no-op
/// server-side apply costs the API server no write). A replica that knows nothing of a group
/// (just started, or just took over) therefore applies everything first.
pub fn full_apply_due(last: Option<Instant>, now: Instant, every: Duration) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= every)
}

/// Pure: 1 s, 2 s, 4 s ... capped at 300 s, for the n-th failure in a row.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let exponent = consecutive_failures.saturating_sub(1).min(9);
    Duration::from_secs((1u64 << exponent).min(300))
}

/// Every group's memory.
#[derive(Debug, Default)]
pub struct Memory {
    groups: Mutex<HashMap<GroupKey, GroupMemory>>,
}

impl Memory {
    fn groups(&self) -> MutexGuard<'_, HashMap<GroupKey, GroupMemory>> {
        // A poisoned lock means a panic elsewhere mid-update of plain timestamps and counters:
        // still good enough to throttle and back off with.
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What is remembered of `key` (nothing yet: the default).
    pub fn get(&self, key: &GroupKey) -> GroupMemory {
        self.groups().get(key).copied().unwrap_or_default()
    }

    fn update<T>(&self, key: &GroupKey, change: impl FnOnce(&mut GroupMemory) -> T) -> T {
        change(self.groups().entry(key.clone()).or_default())
    }

    /// Waits out the group's throttle and records this start. The runner holds further
    /// requests for the group meanwhile, so they coalesce.
    pub async fn throttle(&self, key: &GroupKey) {
        let delay = throttle_delay(self.get(key).last_start, Instant::now(), MIN_INTERVAL);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.update(key, |group| group.last_start = Some(Instant::now()));
    }

    /// How this pass applies the group's children.
    pub fn apply_mode(&self, key: &GroupKey) -> ApplyMode {
        if full_apply_due(self.get(key).last_full_apply, Instant::now(), RESYNC) {
            ApplyMode::ReapplyAll
        } else {
            ApplyMode::SkipUnchanged
        }
    }

    /// Records that every child of the group was just applied.
    pub fn full_apply_done(&self, key: &GroupKey) {
        self.update(key, |group| group.last_full_apply = Some(Instant::now()));
    }

    /// Counts a failed reconcile; returns the failures in a row.
    pub fn failed(&self, key: &GroupKey) -> u32 {
        self.update(key, |group| {
            group.consecutive_failures = group.consecutive_failures.saturating_add(1);
            group.consecutive_failures
        })
    }

    pub fn succeeded(&self, key: &GroupKey) {
        self.update(key, |group| group.consecutive_failures = 0);
    }

    /// Drops everything remembered of a deleted group.
    pub fn forget(&self, key: &GroupKey) {
        self.groups().remove(key);
    }

    /// Keeps only the groups `exists` says are still there (after a relist, which reports
    /// no deletions).
    pub fn retain(&self, exists: impl Fn(&GroupKey) -> bool) -> Vec<GroupKey> {
        let mut groups = self.groups();
        let gone: Vec<GroupKey> = groups.keys().filter(|key| !exists(key)).cloned().collect();
        for key in &gone {
            groups.remove(key);
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.groups().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> GroupKey {
        GroupKey {
            namespace: "net".into(),
            name: name.into(),
        }
    }

    #[test]
    fn throttle_waits_out_the_rest_of_the_interval() {
        let now = Instant::now();
        let min = Duration::from_millis(250);
        assert_eq!(throttle_delay(None, now, min), Duration::ZERO);
        assert_eq!(
            throttle_delay(Some(now), now + Duration::from_millis(100), min),
            Duration::from_millis(150)
        );
        assert_eq!(
            throttle_delay(Some(now), now + Duration::from_secs(1), min),
            Duration::ZERO
        );
    }

    #[test]
    fn a_full_apply_is_due_first_and_then_every_resync() {
        let now = Instant::now();
        assert!(full_apply_due(None, now, RESYNC));
        assert!(!full_apply_due(Some(now), now + Duration::from_secs(1), RESYNC));
        assert!(full_apply_due(Some(now), now + RESYNC, RESYNC));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u64> = [1, 2, 3, 9, 10, 40]
            .iter()
            .map(|n| backoff(*n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 256, 300, 300]);
    }

    #[test]
    fn one_entry_per_group_counted_reset_and_forgotten() {
        let memory = Memory::default();
        assert_eq!(memory.apply_mode(&key("a")), ApplyMode::ReapplyAll);
        memory.full_apply_done(&key("a"));
        assert_eq!(memory.apply_mode(&key("a")), ApplyMode::SkipUnchanged);
        assert_eq!((memory.failed(&key("a")), memory.failed(&key("a"))), (1, 2));
        assert_eq!(memory.failed(&key("b")), 1);
        memory.succeeded(&key("a"));
        assert_eq!(memory.get(&key("a")).consecutive_failures, 0);
        assert_eq!(memory.len(), 2);
        memory.forget(&key("a"));
        assert_eq!(memory.get(&key("a")), GroupMemory::default());
        assert_eq!(memory.retain(|k| k.name != "b"), [key("b")]);
        assert!(memory.is_empty());
    }
}

//! What the controller remembers about each group between reconciles, in one place keyed by
//! one [`GroupId`]: when its children were last written (the write throttle), when every child
//! was last applied without the skip-if-unchanged check (drift), how many reconciles in a row
//! failed (the backoff), and the report (status, Events) waiting to be written. Forgotten when
//! the group is deleted. The decisions are pure functions of that memory and the clock.
//!
//! Two kinds of write, two paces:
//! - **Children** (slices, ConfigMap, ...) go out at once when the group's last write is at
//!   least [`MIN_INTERVAL`] old (leading edge: a lone change is published as soon as it is
//!   seen); a change within the interval waits for its end, and everything that arrives
//!   meanwhile goes out with it (trailing coalescing). Passes that write nothing never wait.
//! - **The report** (status, Events) is written [`REPORT_INTERVAL`] after the first change
//!   that wants one, with every change of the interval in it: at most one status write and
//!   one Event of each kind per group per interval, however fast proxies come and go.

use super::notices::{Notice, ProxyChanges, is_proxy_change};
use super::objects::GroupId;
use super::plan::Report;
use super::writer::ApplyMode;
use crate::crd::FanoutGroup;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a group is reconciled with no event at all (drift, lost events), and how often
/// every child is applied regardless of the applied-hash annotation.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Least time between two writes of a group's children. While a group waits or reconciles,
/// every further event for it folds into one pending request, so a burst of N pod changes costs
/// about `burst length / MIN_INTERVAL` rounds of writes (each writing only the slices that
/// changed, and the ConfigMap), and a single change is published at once.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// How long a changed status, and the Events, wait to be written: everything that changes within
/// it goes out in one status write and one Event of each kind.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The key of what is kept about a group, from the controller's queue.
impl From<&ObjectRef<FanoutGroup>> for GroupId {
    fn from(reference: &ObjectRef<FanoutGroup>) -> Self {
        Self {
            namespace: reference.namespace.clone().unwrap_or_default(),
            name: reference.name.clone(),
        }
    }
}

/// What is remembered about one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupMemory {
    /// When the group's children were last written.
    pub last_write: Option<Instant>,
    pub last_full_apply: Option<Instant>,
    pub consecutive_failures: u32,
    /// The report waiting to be written: since when, and the proxies' changes so far.
    pub pending_report: Option<PendingReport>,
}

/// A report (status, Events) waiting for the end of its interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReport {
    pub since: Instant,
    pub proxies: ProxyChanges,
}

/// Pure: how long a write of a group's children waits when its last write was at `last`.
pub fn throttle_delay(last: Option<Instant>, now: Instant, min_interval: Duration) -> Duration {
    last.map(|last| min_interval.saturating_sub(now.saturating_duration_since(last)))
        .unwrap_or(Duration::ZERO)
}

/// What to do with a pass's report.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportStep {
    /// Nothing to report.
    Idle,
    /// Write this now (then [`Memory::report_written`]).
    Write(Report),
    /// Reconcile again in this long to write it.
    Wait(Duration),
}

/// Pure: folds a pass's `report` into what is pending and decides. The status is the pass's
/// own (computed against the status last written, which the cache holds again by the time an
/// interval has passed), and so are the degraded/recovered notices; the proxies' changes add
/// up over the interval, since each pass only sees its own.
pub fn report_step(
    pending: &mut Option<PendingReport>,
    report: &Report,
    now: Instant,
    interval: Duration,
) -> ReportStep {
    let (proxy_notices, others): (Vec<&Notice>, Vec<&Notice>) =
        report.notices.iter().partition(|notice| is_proxy_change(notice));
    let mut proxies = pending
        .as_ref()
        .map(|pending| pending.proxies.clone())
        .unwrap_or_default();
    proxies.fold(&proxy_notices.into_iter().cloned().collect::<Vec<_>>());
    if report.status.is_none() && others.is_empty() && proxies.is_empty() {
        *pending = None;
        return ReportStep::Idle;
    }
    let since = pending.as_ref().map_or(now, |pending| pending.since);
    let waited = now.saturating_duration_since(since);
    let mut notices = proxies.notices();
    *pending = Some(PendingReport { since, proxies });
    if waited < interval {
        return ReportStep::Wait(interval - waited);
    }
    notices.extend(others.into_iter().cloned());
    ReportStep::Write(Report {
        status: report.status.clone(),
        notices,
    })
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
    groups: Mutex<HashMap<GroupId, GroupMemory>>,
}

impl Memory {
    fn groups(&self) -> MutexGuard<'_, HashMap<GroupId, GroupMemory>> {
        // A poisoned lock means a panic elsewhere mid-update of plain timestamps and counters:
        // still good enough to throttle and back off with.
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What is remembered of `key` (nothing yet: the default).
    #[cfg(test)]
    pub fn get(&self, key: &GroupId) -> GroupMemory {
        self.groups().get(key).cloned().unwrap_or_default()
    }

    /// One field of what is remembered of `key`, read under the lock: no copy of the group's
    /// pending report (its joined and left sets can hold thousands of names in a node storm).
    fn read<T: Default>(&self, key: &GroupId, field: impl FnOnce(&GroupMemory) -> T) -> T {
        self.groups().get(key).map(field).unwrap_or_default()
    }

    fn update<T>(&self, key: &GroupId, change: impl FnOnce(&mut GroupMemory) -> T) -> T {
        change(self.groups().entry(key.clone()).or_default())
    }

    /// How long a write of the group's children has to wait (zero: write now). The runner
    /// holds further requests for the group while its reconcile waits, so they coalesce.
    pub fn write_delay(&self, key: &GroupId) -> Duration {
        throttle_delay(
            self.read(key, |group| group.last_write),
            Instant::now(),
            MIN_INTERVAL,
        )
    }

    /// Records that the group's children were just written.
    pub fn wrote(&self, key: &GroupId) {
        self.update(key, |group| group.last_write = Some(Instant::now()));
    }

    /// Folds this pass's report into the group's pending one (see [`report_step`]).
    pub fn report_step(&self, key: &GroupId, report: &Report, interval: Duration) -> ReportStep {
        self.update(key, |group| {
            report_step(&mut group.pending_report, report, Instant::now(), interval)
        })
    }

    /// Records that the pending report was written.
    pub fn report_written(&self, key: &GroupId) {
        self.update(key, |group| group.pending_report = None);
    }

    /// How this pass applies the group's children.
    pub fn apply_mode(&self, key: &GroupId) -> ApplyMode {
        if full_apply_due(
            self.read(key, |group| group.last_full_apply),
            Instant::now(),
            RESYNC,
        ) {
            ApplyMode::ReapplyAll
        } else {
            ApplyMode::SkipUnchanged
        }
    }

    /// Records that every child of the group was just applied.
    pub fn full_apply_done(&self, key: &GroupId) {
        self.update(key, |group| group.last_full_apply = Some(Instant::now()));
    }

    /// Counts a failed reconcile; returns the failures in a row.
    pub fn failed(&self, key: &GroupId) -> u32 {
        self.update(key, |group| {
            group.consecutive_failures = group.consecutive_failures.saturating_add(1);
            group.consecutive_failures
        })
    }

    pub fn succeeded(&self, key: &GroupId) {
        self.update(key, |group| group.consecutive_failures = 0);
    }

    /// Drops everything remembered of a deleted group.
    pub fn forget(&self, key: &GroupId) {
        self.groups().remove(key);
    }

    /// Keeps only the groups `exists` says are still there (after a relist, which reports
    /// no deletions).
    pub fn retain(&self, exists: impl Fn(&GroupId) -> bool) -> Vec<GroupId> {
        let mut groups = self.groups();
        let gone: Vec<GroupId> = groups.keys().filter(|key| !exists(key)).cloned().collect();
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

    fn key(name: &str) -> GroupId {
        GroupId {
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

    fn notice(reason: &str, pods: &[&str]) -> Notice {
        Notice {
            warning: false,
            reason: reason.into(),
            note: String::new(),
            pods: pods.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn status(ready: i32) -> crate::crd::FanoutGroupStatus {
        crate::crd::FanoutGroupStatus {
            ready_proxies: ready,
            ..Default::default()
        }
    }

    #[test]
    fn a_report_waits_for_its_interval_and_carries_every_change_of_it() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut pending = None;
        // Nothing to say: nothing pending.
        assert_eq!(
            report_step(&mut pending, &Report::default(), t0, second),
            ReportStep::Idle
        );
        assert_eq!(pending, None);
        // A proxy joins: the status and the event wait a whole interval ...
        let joined = Report {
            status: Some(status(1)),
            notices: vec![notice("ProxiesJoined", &["a"])],
        };
        assert_eq!(
            report_step(&mut pending, &joined, t0, second),
            ReportStep::Wait(second)
        );
        // ... a second proxy joins in the next pass ...
        let caught_up = Report {
            status: Some(status(2)),
            notices: vec![notice("ProxiesJoined", &["b"])],
        };
        assert_eq!(
            report_step(&mut pending, &caught_up, at(400), second),
            ReportStep::Wait(Duration::from_millis(600))
        );
        // ... and once the interval is over, one status (the latest) and one event for both.
        let warning = Notice {
            warning: true,
            ..notice("ProxiesUnavailable", &[])
        };
        let last = Report {
            status: Some(status(2)),
            notices: vec![warning.clone()],
        };
        let ReportStep::Write(written) = report_step(&mut pending, &last, at(1000), second) else {
            panic!("due after one interval");
        };
        assert_eq!(written.status, Some(status(2)));
        let reasons: Vec<(&str, usize)> = written
            .notices
            .iter()
            .map(|n| (n.reason.as_str(), n.pods.len()))
            .collect();
        assert_eq!(reasons, [("ProxiesJoined", 2), ("ProxiesUnavailable", 0)]);
        // A change undone within the interval leaves nothing to say.
        let mut pending = None;
        let left = Report {
            status: None,
            notices: vec![notice("ProxiesLeft", &["a"])],
        };
        let back = Report {
            status: None,
            notices: vec![notice("ProxiesJoined", &["a"])],
        };
        assert!(matches!(
            report_step(&mut pending, &left, t0, second),
            ReportStep::Wait(_)
        ));
        assert_eq!(report_step(&mut pending, &back, at(10), second), ReportStep::Idle);
        assert_eq!(pending, None);
        // With no interval every report is written at once.
        assert!(matches!(
            report_step(&mut None, &joined, t0, Duration::ZERO),
            ReportStep::Write(_)
        ));
    }

    #[test]
    fn a_lone_write_goes_at_once_and_a_burst_waits_for_the_interval() {
        let memory = Memory::default();
        assert_eq!(memory.write_delay(&key("a")), Duration::ZERO, "leading edge");
        memory.wrote(&key("a"));
        let delay = memory.write_delay(&key("a"));
        assert!(delay > Duration::ZERO && delay <= MIN_INTERVAL, "{delay:?}");
        assert_eq!(memory.write_delay(&key("b")), Duration::ZERO, "per group");
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

//! How every watch of ours (the controller's, and a publisher's `GroupSource`) waits before
//! retrying after the API server failed it.
//!
//! kube's `default_backoff` is client-go's: 0.8 s doubling to 30 s, reset only after 120 s. After
//! an API server outage of 30 s that schedule sleeps through the return by up to another 30 s,
//! so the fabric would learn of joins and leaves long after the API could tell it. Ours doubles
//! from 100 ms and stops at 1 s, so a watch retries at most about a second after the server is
//! back and membership reconverges within the 2 s. The price is at most one request a
//! second per watch while the server is down: six in the controller, one per publisher, one per
//! relay for its assignment (about √N of a group's N proxies). Each retry is one cheap failed
//! request. The delay is jittered down to half its step so that watchers that failed together
//! do not retry in lockstep.
//!
//! A watch that runs on every node ([`WatchBackoff::per_node`]: each proxy of a CURVE group
//! follows its allow-list ConfigMap) stops at 10 s instead: 5 000 proxies retrying every second
//! would be 5 000 requests a second at a returning API server, every 10 s (jittered over 5-10 s)
//! is at most 1 000. What that costs: after an outage a proxy may learn of an allow-list change
//! up to 10 s after the API is back (none can happen while it is away: the controller writes
//! the list through the same API).

use kube::runtime::utils::Backoff;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// The first retry's step.
pub const FIRST_STEP: Duration = Duration::from_millis(100);
/// The longest step: a watch retries at least this often while the API server is away.
pub const MAX_STEP: Duration = Duration::from_secs(1);
/// The longest step of a watch that runs on every node (`WatchBackoff::per_node`).
pub const PER_NODE_MAX_STEP: Duration = Duration::from_secs(10);

/// Capped exponential backoff with "equal jitter": each delay lies in `[step / 2, step]`.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    step: Duration,
    max_step: Duration,
    jitter: u64,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        // A per-process random seed without another dependency: RandomState is seeded randomly.
        let seed = RandomState::new().hash_one(std::process::id());
        Self::with_seed(seed)
    }
}

impl WatchBackoff {
    /// A backoff whose jitter follows `seed` (tests pin it).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            step: FIRST_STEP,
            max_step: MAX_STEP,
            // xorshift needs a non-zero state.
            jitter: seed | 1,
        }
    }

    /// For a watch that runs on every node: steps stop at [`PER_NODE_MAX_STEP`].
    pub fn per_node() -> Self {
        Self {
            max_step: PER_NODE_MAX_STEP,
            ..Self::default()
        }
    }

    fn next_jitter(&mut self) -> u64 {
        // xorshift64: enough to spread retries, no cryptographic claim.
        let mut x = self.jitter;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter = x;
        x
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let step = self.step;
        self.step = (step * 2).min(self.max_step);
        let half = step / 2;
        // At most 5 s in nanoseconds: fits u64 with room.
        let spread = half.as_nanos() as u64 + 1;
        Some(half + Duration::from_nanos(self.next_jitter() % spread))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.step = FIRST_STEP;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_step_and_never_pass_a_second() {
        let mut backoff = WatchBackoff::with_seed(42);
        let steps = [100, 200, 400, 800, 1000, 1000, 1000];
        for step in steps {
            let step = Duration::from_millis(step);
            let delay = backoff.next().unwrap();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        for _ in 0..1000 {
            assert!(backoff.next().unwrap() <= MAX_STEP);
        }
    }

    #[test]
    fn a_watch_on_every_node_backs_off_to_ten_seconds() {
        let delays: Vec<Duration> = WatchBackoff {
            jitter: 9,
            ..WatchBackoff::per_node()
        }
        .take(12)
        .collect();
        assert!(delays.iter().all(|d| *d <= PER_NODE_MAX_STEP));
        assert!(
            delays[8..].iter().all(|d| *d >= PER_NODE_MAX_STEP / 2),
            "{delays:?}"
        );
    }

    #[test]
    fn reset_starts_over_and_jitter_differs_between_seeds() {
        let mut backoff = WatchBackoff::with_seed(7);
        for _ in 0..10 {
            backoff.next();
        }
        backoff.reset();
        assert!(backoff.next().unwrap() <= FIRST_STEP);
        let delays = |seed| -> Vec<Duration> { WatchBackoff::with_seed(seed).take(8).collect() };
        assert_ne!(
            delays(1),
            delays(2),
            "two watchers that failed together retry apart"
        );
        assert_eq!(delays(3), delays(3));
    }
}

//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's `leaderelection`
//! does it. `kube-lease-manager` 0.13 supports kube 5, but ours stays: its decision is a pure
//! function with plain tests (below), expiry is measured on our own clock so skew between
//! replicas cannot matter, a standby takes over within one retry period because the holder
//! releases the lease on shutdown, and the whole of it is one file we can read, not another
//! dependency to keep in step with kube.
//!
//! Longer than 500 lines for a reason: the decision, the loop that acts on it and their tests
//! (paused-clock tests against an API that stops answering among them) are one protocol, read
//! together.
//!
//! - Every `RETRY_PERIOD` a replica reads the Lease and decides (pure [`decide`]): renew it
//!   (it holds it), acquire it (absent, unheld, released, or not renewed for
//!   `leaseDurationSeconds` as measured on *our* clock since we last saw it change, so clock
//!   skew between replicas does not matter), or wait.
//! - Writes use the Lease's `resourceVersion` (optimistic concurrency): of two replicas racing
//!   for an expired lease exactly one update succeeds; the other gets 409 and waits.
//! - The holder stops leading at once when a renewal is refused (409: someone else wrote the
//!   lease) or when it could not renew for the renew deadline (< lease duration, so it has
//!   stopped before anyone else may take over). `leading` flips to false and the controller
//!   stops writing. Every request of a round is bounded by what is left of that deadline, so a
//!   connection that hangs (packets dropped, not refused: no error ever comes back) ends
//!   leadership on time as well; a standby's requests are bounded by one retry period.
//! - The timings are flags ([`LeaseTimings`]); the defaults are client-go's (15 s, 10 s, 2 s).
//! - On shutdown the holder releases the lease (empty holder), so a standby takes over within
//!   one retry period instead of a full lease duration.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use std::future::Future;
use std::time::Duration;
// tokio's clock, so that the tests can run the election on paused time.
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a lease lasts, how long its holder keeps trying to renew before it stops leading,
/// and how often every replica looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

/// Why a set of lease timings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseTimingsError {
    #[error(
        "the lease duration must be a whole number of seconds from 1 s to 1 day (it is written as leaseDurationSeconds), got {0:?}"
    )]
    LeaseDuration(Duration),
    #[error(
        "the renew deadline ({renew_deadline:?}) must be shorter than the lease duration ({lease_duration:?}): the holder must stop before anyone else may take over"
    )]
    RenewDeadline {
        renew_deadline: Duration,
        lease_duration: Duration,
    },
    #[error(
        "the retry period ({retry_period:?}) must be above zero and shorter than the renew deadline ({renew_deadline:?}): the holder must get at least one retry before it gives up"
    )]
    RetryPeriod {
        retry_period: Duration,
        renew_deadline: Duration,
    },
}

impl Default for LeaseTimings {
    /// client-go's defaults (and the chart's).
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTimings {
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, LeaseTimingsError> {
        if lease_duration.subsec_nanos() != 0
            || lease_duration < Duration::from_secs(1)
            || lease_duration > Duration::from_secs(86_400)
        {
            return Err(LeaseTimingsError::LeaseDuration(lease_duration));
        }
        if renew_deadline >= lease_duration {
            return Err(LeaseTimingsError::RenewDeadline {
                renew_deadline,
                lease_duration,
            });
        }
        if retry_period.is_zero() || retry_period >= renew_deadline {
            return Err(LeaseTimingsError::RetryPeriod {
                retry_period,
                renew_deadline,
            });
        }
        Ok(Self {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }

    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    pub fn retry_period(&self) -> Duration {
        self.retry_period
    }

    fn lease_duration_seconds(&self) -> i32 {
        // At most 86 400 (checked in `new`).
        self.lease_duration.as_secs() as i32
    }
}

/// What to do with the lease this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: write a fresh renewTime.
    Renew,
    /// Free or expired: take it (leaseTransitions + 1).
    Acquire,
    /// Someone else holds it and renews it.
    Wait,
}

/// The part of a lease whose change proves its holder is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    duration_seconds: Option<i32>,
}

impl Observation {
    pub fn of(spec: Option<&LeaseSpec>) -> Self {
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
        }
    }
}

/// Pure decision. `spec` is the lease as read (None: the Lease does not exist or has no spec),
/// `unchanged_for` how long, on our clock, it has looked exactly like this.
/// `default_duration` applies when the lease names none.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let observed = Observation::of(spec);
    match observed.holder.as_deref() {
        None => Decision::Acquire,
        Some(holder) if holder == me => Decision::Renew,
        Some(_) => {
            let duration = observed
                .duration_seconds
                .filter(|seconds| *seconds > 0)
                .map(|seconds| Duration::from_secs(seconds as u64))
                .unwrap_or(default_duration);
            if unchanged_for >= duration {
                Decision::Acquire
            } else {
                Decision::Wait
            }
        }
    }
}

/// The spec to write for `decision` (Renew or Acquire) over the `old` spec.
pub fn next_spec(
    decision: Decision,
    old: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    timings: &LeaseTimings,
) -> LeaseSpec {
    let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
    let held_by_me = Observation::of(old).holder.as_deref() == Some(me);
    let (acquire_time, transitions) = match decision {
        Decision::Renew if held_by_me => (old.and_then(|s| s.acquire_time.clone()), transitions),
        _ => (
            Some(MicroTime(now)),
            if old.is_some() && !held_by_me {
                transitions + 1
            } else {
                transitions
            },
        ),
    };
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(timings.lease_duration_seconds()),
        acquire_time,
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// Runs the election loop until `shutdown` fires; `leading` carries whether we hold the lease.
pub struct LeaderElector {
    pub api: Api<Lease>,
    pub lease_name: String,
    pub identity: String,
    pub timings: LeaseTimings,
}

/// A request of the election that did not come back.
enum Call<T> {
    Done(Result<T, kube::Error>),
    /// No answer within the time left: treated like an error that cannot be retried in time.
    TimedOut(Duration),
}

impl LeaderElector {
    pub async fn run(self, leading: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut observed: Option<(Observation, Instant)> = None;
        let mut last_renewal: Option<Instant> = None;
        loop {
            self.round(&leading, &mut observed, &mut last_renewal).await;
            tokio::select! {
                _ = tokio::time::sleep(self.timings.retry_period) => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            self.release().await;
        }
    }

    /// How long the next request may take: for the holder, what is left of the renew deadline
    /// since its last renewal (zero once it has passed); for a standby, one retry period.
    fn budget(&self, leading: bool, last_renewal: &Option<Instant>) -> Duration {
        match (leading, last_renewal) {
            (true, Some(at)) => self.timings.renew_deadline.saturating_sub(at.elapsed()),
            (true, None) => Duration::ZERO,
            (false, _) => self.timings.retry_period,
        }
    }

    async fn call<T>(
        &self,
        budget: Duration,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Call<T> {
        match tokio::time::timeout(budget, request).await {
            Ok(result) => Call::Done(result),
            Err(_) => Call::TimedOut(budget),
        }
    }

    /// Stops leading if the renew deadline has passed (after a failed or unanswered request).
    fn step_down_if_late(&self, leading: &watch::Sender<bool>, last_renewal: &Option<Instant>) {
        if *leading.borrow() && self.budget(true, last_renewal).is_zero() {
            tracing::warn!(
                lease = %self.lease_name,
                renew_deadline = ?self.timings.renew_deadline,
                "could not renew the lease within the renew deadline: stepping down"
            );
            leading.send_replace(false);
        }
    }

    async fn round(
        &self,
        leading: &watch::Sender<bool>,
        observed: &mut Option<(Observation, Instant)>,
        last_renewal: &mut Option<Instant>,
    ) {
        let budget = self.budget(*leading.borrow(), last_renewal);
        let current = match self.call(budget, self.api.get_opt(&self.lease_name)).await {
            Call::Done(Ok(current)) => current,
            Call::Done(Err(err)) => {
                tracing::warn!(error = %err, lease = %self.lease_name, "cannot read the leader lease");
                self.step_down_if_late(leading, last_renewal);
                return;
            }
            Call::TimedOut(after) => {
                tracing::warn!(?after, lease = %self.lease_name, "no answer reading the leader lease");
                self.step_down_if_late(leading, last_renewal);
                return;
            }
        };
        let spec = current.as_ref().and_then(|lease| lease.spec.as_ref());
        let now_seen = Observation::of(spec);
        let since = match observed {
            Some((seen, at)) if *seen == now_seen => *at,
            _ => {
                let at = Instant::now();
                *observed = Some((now_seen, at));
                at
            }
        };
        let decision = decide(spec, &self.identity, since.elapsed(), self.timings.lease_duration);
        if decision == Decision::Wait {
            if *leading.borrow() {
                tracing::warn!(lease = %self.lease_name, "the lease is held by another replica: stepping down");
                leading.send_replace(false);
            }
            return;
        }
        let body = Lease {
            metadata: ObjectMeta {
                name: Some(self.lease_name.clone()),
                // The optimistic-concurrency token: the write fails if anyone wrote in between.
                resource_version: current
                    .as_ref()
                    .and_then(|lease| lease.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(next_spec(
                decision,
                spec,
                &self.identity,
                Timestamp::now(),
                &self.timings,
            )),
        };
        // The renewal counts from when it was sent, not when its answer came: the others measure
        // the lease from when they see it change, which is later still.
        let sent = Instant::now();
        let budget = self.budget(*leading.borrow(), last_renewal);
        let post = PostParams::default();
        let result = match current {
            Some(_) => {
                self.call(budget, self.api.replace(&self.lease_name, &post, &body))
                    .await
            }
            None => self.call(budget, self.api.create(&post, &body)).await,
        };
        match result {
            Call::Done(Ok(_)) => {
                *last_renewal = Some(sent);
                if !*leading.borrow() {
                    tracing::info!(identity = %self.identity, lease = %self.lease_name, "acquired the leader lease");
                    leading.send_replace(true);
                }
            }
            Call::Done(Err(kube::Error::Api(status))) if status.code == 409 => {
                if *leading.borrow() {
                    tracing::warn!("the lease changed under us: stepping down");
                    leading.send_replace(false);
                }
            }
            Call::Done(Err(err)) => {
                tracing::warn!(error = %err, lease = %self.lease_name, "cannot write the leader lease");
                self.step_down_if_late(leading, last_renewal);
            }
            Call::TimedOut(after) => {
                tracing::warn!(?after, lease = %self.lease_name, "no answer writing the leader lease");
                self.step_down_if_late(leading, last_renewal);
            }
        }
    }

    /// Gives the lease up (empty holder) so a standby need not wait for it to expire. Bounded
    /// by one retry period: shutdown must not hang on an API that does not answer.
    async fn release(&self) {
        let budget = self.timings.retry_period;
        let Call::Done(Ok(Some(mut lease))) = self.call(budget, self.api.get_opt(&self.lease_name)).await
        else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let post = PostParams::default();
        match self
            .call(budget, self.api.replace(&self.lease_name, &post, &lease))
            .await
        {
            Call::Done(Ok(_)) => tracing::info!(lease = %self.lease_name, "released the leader lease"),
            Call::Done(Err(err)) => tracing::warn!(error = %err, "cannot release the leader lease"),
            Call::TimedOut(after) => tracing::warn!(?after, "no answer releasing the leader lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default lease duration.
    const D: Duration = Duration::from_secs(15);

    fn held_by(holder: &str, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(1_000).unwrap())),
            acquire_time: Some(MicroTime(Timestamp::from_second(900).unwrap())),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn absent_or_released_lease_is_acquired() {
        assert_eq!(decide(None, "me", Duration::ZERO, D), Decision::Acquire);
        let released = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held_by("x", 1)
        };
        assert_eq!(
            decide(Some(&released), "me", Duration::ZERO, D),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "me", Duration::ZERO, D),
            Decision::Acquire
        );
    }

    #[test]
    fn our_own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&held_by("me", 3)), "me", Duration::from_secs(100), D),
            Decision::Renew
        );
    }

    #[test]
    fn a_live_lease_of_another_is_respected_until_it_expires_on_our_clock() {
        let other = held_by("other", 3);
        assert_eq!(
            decide(Some(&other), "me", Duration::from_secs(14), D),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&other), "me", Duration::from_secs(15), D),
            Decision::Acquire
        );
        let short = LeaseSpec {
            lease_duration_seconds: Some(2),
            ..other
        };
        assert_eq!(
            decide(Some(&short), "me", Duration::from_secs(3), D),
            Decision::Acquire
        );
    }

    #[test]
    fn takeover_counts_a_transition_and_renewal_does_not() {
        let now = Timestamp::from_second(2_000).unwrap();
        let taken = next_spec(
            Decision::Acquire,
            Some(&held_by("other", 3)),
            "me",
            now,
            &LeaseTimings::default(),
        );
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_duration_seconds, Some(15));

        let renewed = next_spec(
            Decision::Renew,
            Some(&held_by("me", 3)),
            "me",
            now,
            &LeaseTimings::default(),
        );
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(
            renewed.acquire_time,
            held_by("me", 3).acquire_time,
            "acquireTime kept"
        );
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));

        let created = next_spec(Decision::Acquire, None, "me", now, &LeaseTimings::default());
        assert_eq!(created.lease_transitions, Some(0));
    }

    /// One election round against a mocked API server that answers `responses` in order
    /// (status code, JSON body); returns the requests (method, path, body) and `leading` after.
    async fn round_against(
        was_leading: bool,
        responses: Vec<(u16, serde_json::Value)>,
    ) -> (Vec<(String, String, serde_json::Value)>, bool) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            let mut seen = Vec::new();
            for (code, answer) in responses {
                let Some((request, respond)) = handle.next_request().await else {
                    break;
                };
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                seen.push((parts.method.to_string(), parts.uri.path().to_string(), body));
                let response = Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()));
                respond.send_response(response.unwrap());
            }
            seen
        });
        let elector = LeaderElector {
            api: Api::namespaced(kube::Client::new(service, "default"), "ops"),
            lease_name: "fanout-controller".into(),
            identity: "me".into(),
            timings: LeaseTimings::default(),
        };
        let (leading, _rx) = watch::channel(was_leading);
        let mut observed = None;
        let mut last_renewal = was_leading.then(Instant::now);
        elector.round(&leading, &mut observed, &mut last_renewal).await;
        let seen = server.await.unwrap();
        let now_leading = *leading.borrow();
        (seen, now_leading)
    }

    fn lease_json(holder: &str, resource_version: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "fanout-controller", "namespace": "ops", "resourceVersion": resource_version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 2}
        })
    }

    fn not_found() -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "metadata": {}})
    }

    fn conflict() -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409, "metadata": {}})
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_and_makes_us_leader() {
        let (seen, leading) =
            round_against(false, vec![(404, not_found()), (201, lease_json("me", "1"))]).await;
        let calls: Vec<_> = seen.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
        assert_eq!(
            calls,
            [
                "GET /apis/coordination.k8s.io/v1/namespaces/ops/leases/fanout-controller",
                "POST /apis/coordination.k8s.io/v1/namespaces/ops/leases",
            ]
        );
        assert_eq!(seen[1].2["spec"]["holderIdentity"], "me");
        assert!(leading);
    }

    #[tokio::test]
    async fn renewal_carries_the_resource_version_and_a_conflict_ends_leadership_at_once() {
        let (seen, leading) =
            round_against(true, vec![(200, lease_json("me", "41")), (409, conflict())]).await;
        assert_eq!(seen[1].0, "PUT");
        assert_eq!(seen[1].2["metadata"]["resourceVersion"], "41");
        assert_eq!(
            seen[1].2["spec"]["leaseTransitions"], 2,
            "a renewal is no transition"
        );
        assert!(!leading, "a refused renewal stops us at once");
    }

    #[tokio::test]
    async fn a_lease_held_by_another_is_not_written_and_a_leader_who_sees_it_steps_down() {
        let (seen, leading) = round_against(false, vec![(200, lease_json("other", "7"))]).await;
        assert_eq!(seen.len(), 1, "only the GET");
        assert!(!leading);
        let (_, leading) = round_against(true, vec![(200, lease_json("other", "8"))]).await;
        assert!(!leading);
    }

    #[test]
    fn lease_timings_refuse_a_holder_that_could_outlive_its_lease() {
        let s = Duration::from_secs;
        assert!(LeaseTimings::new(s(15), s(10), s(2)).is_ok());
        assert_eq!(
            LeaseTimings::new(s(15), s(10), s(2)).ok(),
            Some(LeaseTimings::default())
        );
        assert!(matches!(
            LeaseTimings::new(s(10), s(10), s(2)),
            Err(LeaseTimingsError::RenewDeadline { .. })
        ));
        assert!(matches!(
            LeaseTimings::new(s(15), s(10), s(10)),
            Err(LeaseTimingsError::RetryPeriod { .. })
        ));
        assert!(matches!(
            LeaseTimings::new(s(15), s(10), Duration::ZERO),
            Err(LeaseTimingsError::RetryPeriod { .. })
        ));
        assert!(matches!(
            LeaseTimings::new(Duration::from_millis(1500), s(1), Duration::from_millis(500)),
            Err(LeaseTimingsError::LeaseDuration(_))
        ));
        assert!(matches!(
            LeaseTimings::new(Duration::ZERO, Duration::ZERO, Duration::ZERO),
            Err(LeaseTimingsError::LeaseDuration(_))
        ));
        let message = LeaseTimings::new(s(10), s(12), s(2)).unwrap_err().to_string();
        assert!(message.contains("shorter than the lease duration"), "{message}");
    }

    /// The whole election loop against an API server that answers the first `answered`
    /// requests and then never again (packets dropped: no error ever comes back). Returns the
    /// times, on tokio's paused clock, at which `leading` changed and of each answered request.
    async fn hang_after(
        answered: Vec<(u16, serde_json::Value)>,
        timings: LeaseTimings,
        run_for: Duration,
    ) -> (Vec<(Instant, bool)>, Vec<Instant>) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            let mut answers = answered.into_iter();
            let mut answered_at = Vec::new();
            // Unanswered requests are kept, not dropped: a dropped one would be an error.
            let mut hung = Vec::new();
            while let Some((_request, respond)) = handle.next_request().await {
                match answers.next() {
                    Some((code, answer)) => {
                        answered_at.push(Instant::now());
                        let response = Response::builder()
                            .status(code)
                            .body(Body::from(serde_json::to_vec(&answer).unwrap()));
                        respond.send_response(response.unwrap());
                    }
                    None => hung.push(respond),
                }
            }
            answered_at
        });
        let elector = LeaderElector {
            api: Api::namespaced(kube::Client::new(service, "default"), "ops"),
            lease_name: "fanout-controller".into(),
            identity: "me".into(),
            timings,
        };
        let (leading_tx, mut leading_rx) = watch::channel(false);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let changes = tokio::spawn(async move {
            let mut changes = Vec::new();
            while leading_rx.changed().await.is_ok() {
                changes.push((Instant::now(), *leading_rx.borrow_and_update()));
            }
            changes
        });
        let election = tokio::spawn(elector.run(leading_tx, shutdown_rx));
        tokio::time::sleep(run_for).await;
        shutdown_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(600), election)
            .await
            .expect("the election loop hung on an unanswered request")
            .unwrap();
        let changes = changes.await.unwrap();
        let answered_at = server.await.unwrap();
        (changes, answered_at)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_api_ends_leadership_within_the_renew_deadline() {
        let timings = LeaseTimings::default();
        // Acquire (GET 404, POST), one renewal (GET, PUT), then silence.
        let answers = vec![
            (404, not_found()),
            (201, lease_json("me", "1")),
            (200, lease_json("me", "1")),
            (200, lease_json("me", "2")),
        ];
        let start = Instant::now();
        let (changes, answered_at) = hang_after(answers, timings, Duration::from_secs(60)).await;
        assert_eq!(answered_at.len(), 4);
        let flips: Vec<bool> = changes.iter().map(|(_, leading)| *leading).collect();
        assert_eq!(flips, [true, false], "led once, then stepped down");
        // The last renewal was sent just before its PUT was answered (no time passes on a
        // paused clock while the mock answers); leadership must end within the renew deadline
        // of it, well before the lease (15 s) lets anyone else take over.
        let last_renewal = answered_at[3];
        let stepped_down = changes[1].0;
        let held_on = stepped_down - last_renewal;
        assert!(
            held_on <= timings.renew_deadline(),
            "stepped down {held_on:?} after the last renewal"
        );
        assert!(
            held_on >= timings.renew_deadline() - timings.retry_period(),
            "stepped down early: {held_on:?}"
        );
        assert!(
            stepped_down - start < Duration::from_secs(60),
            "the loop kept going"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_on_a_hung_api_never_leads_and_shuts_down_promptly() {
        let timings = LeaseTimings::default();
        let start = Instant::now();
        let (changes, answered_at) = hang_after(Vec::new(), timings, Duration::from_secs(30)).await;
        assert!(changes.is_empty(), "never led: {changes:?}");
        assert!(answered_at.is_empty());
        // Shutdown at 30 s waits for at most one request bounded by the retry period.
        assert!(Instant::now() - start <= Duration::from_secs(30) + timings.retry_period());
    }
}

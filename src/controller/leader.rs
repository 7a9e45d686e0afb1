//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's `leaderelection`
//! does it. `kube-lease-manager` 0.13 supports kube 5, but ours stays: its decision is a pure
//! function with plain tests (below), expiry is measured on our own clock so skew between
//! replicas cannot matter, a standby takes over within one retry period because the holder
//! releases the lease on shutdown, and the whole of it is one file we can read, not another
//! dependency to keep in step with kube.
//!
//! - Every `RETRY_PERIOD` a replica reads the Lease and decides (pure [`decide`]): renew it
//!   (it holds it), acquire it (absent, unheld, released, or not renewed for
//!   `leaseDurationSeconds` as measured on *our* clock since we last saw it change, so clock
//!   skew between replicas does not matter), or wait.
//! - Writes use the Lease's `resourceVersion` (optimistic concurrency): of two replicas racing
//!   for an expired lease exactly one update succeeds; the other gets 409 and waits.
//! - The holder stops leading at once when a renewal is refused (409: someone else wrote the
//!   lease) or when it could not renew for `RENEW_DEADLINE` (< lease duration, so it has stopped
//!   before anyone else may take over). `leading` flips to false and the controller stops writing.
//! - On shutdown the holder releases the lease (empty holder), so a standby takes over within
//!   one retry period instead of a full lease duration.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
// The holder must give up before anyone else may take over, and retry within that window.
const _: () = assert!(RENEW_DEADLINE.as_secs() < LEASE_DURATION.as_secs());
const _: () = assert!(RETRY_PERIOD.as_secs() < RENEW_DEADLINE.as_secs());

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
pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
    let observed = Observation::of(spec);
    match observed.holder.as_deref() {
        None => Decision::Acquire,
        Some(holder) if holder == me => Decision::Renew,
        Some(_) => {
            let duration = observed
                .duration_seconds
                .filter(|seconds| *seconds > 0)
                .map(|seconds| Duration::from_secs(seconds as u64))
                .unwrap_or(LEASE_DURATION);
            if unchanged_for >= duration {
                Decision::Acquire
            } else {
                Decision::Wait
            }
        }
    }
}

/// The spec to write for `decision` (Renew or Acquire) over the `old` spec.
pub fn next_spec(decision: Decision, old: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseSpec {
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
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
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
}

impl LeaderElector {
    pub async fn run(self, leading: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut observed: Option<(Observation, Instant)> = None;
        let mut last_renewal: Option<Instant> = None;
        loop {
            self.round(&leading, &mut observed, &mut last_renewal).await;
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PERIOD) => {}
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

    async fn round(
        &self,
        leading: &watch::Sender<bool>,
        observed: &mut Option<(Observation, Instant)>,
        last_renewal: &mut Option<Instant>,
    ) {
        let lost_by_deadline = |last: &Option<Instant>| last.is_none_or(|at| at.elapsed() >= RENEW_DEADLINE);
        let current = match self.api.get_opt(&self.lease_name).await {
            Ok(current) => current,
            Err(err) => {
                tracing::warn!(error = %err, lease = %self.lease_name, "cannot read the leader lease");
                if *leading.borrow() && lost_by_deadline(last_renewal) {
                    tracing::warn!("could not renew the lease within the renew deadline: stepping down");
                    leading.send_replace(false);
                }
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
        let decision = decide(spec, &self.identity, since.elapsed());
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
            spec: Some(next_spec(decision, spec, &self.identity, Timestamp::now())),
        };
        let result = match current {
            Some(_) => {
                self.api
                    .replace(&self.lease_name, &PostParams::default(), &body)
                    .await
            }
            None => self.api.create(&PostParams::default(), &body).await,
        };
        match result {
            Ok(_) => {
                *last_renewal = Some(Instant::now());
                if !*leading.borrow() {
                    tracing::info!(identity = %self.identity, lease = %self.lease_name, "acquired the leader lease");
                    leading.send_replace(true);
                }
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                if *leading.borrow() {
                    tracing::warn!("the lease changed under us: stepping down");
                    leading.send_replace(false);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, lease = %self.lease_name, "cannot write the leader lease");
                if *leading.borrow() && lost_by_deadline(last_renewal) {
                    tracing::warn!("could not renew the lease within the renew deadline: stepping down");
                    leading.send_replace(false);
                }
            }
        }
    }

    /// Gives the lease up (empty holder) so a standby need not wait for it to expire.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.lease_name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.lease_name, "released the leader lease"),
            Err(err) => tracing::warn!(error = %err, "cannot release the leader lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(decide(None, "me", Duration::ZERO), Decision::Acquire);
        let released = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held_by("x", 1)
        };
        assert_eq!(decide(Some(&released), "me", Duration::ZERO), Decision::Acquire);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "me", Duration::ZERO),
            Decision::Acquire
        );
    }

    #[test]
    fn our_own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&held_by("me", 3)), "me", Duration::from_secs(100)),
            Decision::Renew
        );
    }

    #[test]
    fn a_live_lease_of_another_is_respected_until_it_expires_on_our_clock() {
        let other = held_by("other", 3);
        assert_eq!(
            decide(Some(&other), "me", Duration::from_secs(14)),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&other), "me", Duration::from_secs(15)),
            Decision::Acquire
        );
        let short = LeaseSpec {
            lease_duration_seconds: Some(2),
            ..other
        };
        assert_eq!(
            decide(Some(&short), "me", Duration::from_secs(3)),
            Decision::Acquire
        );
    }

    #[test]
    fn takeover_counts_a_transition_and_renewal_does_not() {
        let now = Timestamp::from_second(2_000).unwrap();
        let taken = next_spec(Decision::Acquire, Some(&held_by("other", 3)), "me", now);
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_duration_seconds, Some(15));

        let renewed = next_spec(Decision::Renew, Some(&held_by("me", 3)), "me", now);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(
            renewed.acquire_time,
            held_by("me", 3).acquire_time,
            "acquireTime kept"
        );
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));

        let created = next_spec(Decision::Acquire, None, "me", now);
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
}

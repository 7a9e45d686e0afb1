//! Pure: what the controller observed → the FanoutGroup status and its conditions. No I/O.
//!
//! Conditions follow `metav1.Condition`: `lastTransitionTime` only moves when `status` flips,
//! so recomputing an unchanged status gives an equal value and no status write.

use crate::crd::FanoutGroupStatus;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// Something that keeps a group from being realised, with its CamelCase reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

/// Inputs of the status computation.
#[derive(Debug, Clone, Default)]
pub struct Observed<'a> {
    /// `metadata.generation` of the group.
    pub generation: Option<i64>,
    /// The proxy DaemonSet as last seen (None before it exists).
    pub daemon_set: Option<&'a DaemonSet>,
    /// Ready endpoints published (all families).
    pub published_endpoints: i32,
    pub problem: Option<Problem>,
    /// The group's CURVE public key as published (Z85), with `security.curve`.
    pub curve_public_key: Option<String>,
    /// Key Secrets named or selected that give no key, `<secret>: <why>`.
    pub unresolved_keys: Vec<String>,
    /// With `spec.configMap`: the endpoint list's size when it is too large for a ConfigMap
    /// (which is then left as last written; the slices carry every endpoint).
    pub endpoint_list_too_large: Option<usize>,
}

/// The Degraded reason for an endpoint list too large for the ConfigMap.
pub const ENDPOINT_LIST_TOO_LARGE: &str = "EndpointListTooLarge";

fn condition(type_: &str, status: bool, reason: &str, message: String, generation: Option<i64>) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        // Filled in by `carry_transition_times`.
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// Keeps `lastTransitionTime` of conditions whose status did not change; stamps `now` otherwise.
fn carry_transition_times(conditions: &mut [Condition], previous: &[Condition], now: Timestamp) {
    for condition in conditions {
        condition.last_transition_time = previous
            .iter()
            .find(|old| old.type_ == condition.type_ && old.status == condition.status)
            .map(|old| old.last_transition_time.clone())
            .unwrap_or(Time(now));
    }
}

/// The status for `observed`, keeping transition times from `previous`.
pub fn compute_status(
    observed: &Observed<'_>,
    previous: Option<&FanoutGroupStatus>,
    now: Timestamp,
) -> FanoutGroupStatus {
    let generation = observed.generation;
    let ds_status = observed.daemon_set.and_then(|ds| ds.status.as_ref());
    let desired = ds_status.map(|s| s.desired_number_scheduled).unwrap_or(0);
    let ready = ds_status.map(|s| s.number_ready).unwrap_or(0);
    let updated = ds_status.and_then(|s| s.updated_number_scheduled).unwrap_or(0);
    let ds_generation = observed.daemon_set.and_then(|ds| ds.metadata.generation);
    let ds_observed = ds_status.and_then(|s| s.observed_generation);
    let ds_caught_up = observed.daemon_set.is_some() && ds_observed >= ds_generation;

    let mut conditions = if let Some(problem) = &observed.problem {
        vec![
            condition(READY, false, &problem.reason, problem.message.clone(), generation),
            condition(
                PROGRESSING,
                false,
                &problem.reason,
                problem.message.clone(),
                generation,
            ),
            condition(
                DEGRADED,
                true,
                &problem.reason,
                problem.message.clone(),
                generation,
            ),
        ]
    } else {
        let rolling = !ds_caught_up || updated < desired;
        let progressing = if observed.daemon_set.is_none() {
            condition(
                PROGRESSING,
                true,
                "Creating",
                "creating the proxy DaemonSet".into(),
                generation,
            )
        } else if rolling {
            condition(
                PROGRESSING,
                true,
                "RollingOut",
                format!("{updated} of {desired} proxies run the current spec"),
                generation,
            )
        } else {
            condition(
                PROGRESSING,
                false,
                "RolloutComplete",
                format!("{desired} proxies run the current spec"),
                generation,
            )
        };
        let ready_condition = if observed.daemon_set.is_none() {
            condition(
                READY,
                false,
                "Creating",
                "the proxy DaemonSet does not exist yet".into(),
                generation,
            )
        } else if desired == 0 {
            condition(
                READY,
                false,
                "NoNodes",
                "no node matches the nodeSelector and tolerations".into(),
                generation,
            )
        } else if ready >= desired {
            condition(
                READY,
                true,
                "AllProxiesReady",
                format!("{ready} of {desired} proxies ready"),
                generation,
            )
        } else {
            condition(
                READY,
                false,
                "ProxiesNotReady",
                format!("{ready} of {desired} proxies ready"),
                generation,
            )
        };
        // Not-ready proxies during a rollout are expected; outside one they are a fault.
        let degraded = if let Some(size) = observed.endpoint_list_too_large {
            condition(
                DEGRADED,
                true,
                ENDPOINT_LIST_TOO_LARGE,
                format!(
                    "the ready endpoints take {size} bytes, more than a ConfigMap holds ({} bytes): \
                     the ConfigMap is no longer updated; follow the EndpointSlices (fanout publish \
                     --group does), or set spec.configMap: false to remove it",
                    super::objects::CONFIGMAP_DATA_LIMIT
                ),
                generation,
            )
        } else if ready < desired && !rolling {
            condition(
                DEGRADED,
                true,
                "ProxiesUnavailable",
                format!("{} of {desired} proxies not ready", desired - ready),
                generation,
            )
        } else {
            condition(DEGRADED, false, "AsExpected", "no fault".into(), generation)
        };
        vec![ready_condition, progressing, degraded]
    };
    carry_transition_times(
        &mut conditions,
        previous.map(|p| &p.conditions[..]).unwrap_or(&[]),
        now,
    );

    FanoutGroupStatus {
        observed_generation: generation,
        desired_proxies: desired,
        ready_proxies: ready,
        published_endpoints: observed.published_endpoints,
        conditions,
        curve_public_key: observed.curve_public_key.clone(),
        unresolved_keys: observed.unresolved_keys.clone(),
        // The plan sets it (plan::report): the tree is not the status module's to know.
        relays: 0,
    }
}

/// The condition of `type_`, if present.
pub fn find<'a>(status: Option<&'a FanoutGroupStatus>, type_: &str) -> Option<&'a Condition> {
    status?
        .conditions
        .iter()
        .find(|condition| condition.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ds(desired: i32, ready: i32, updated: i32, caught_up: bool) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(DaemonSetStatus {
                desired_number_scheduled: desired,
                number_ready: ready,
                updated_number_scheduled: Some(updated),
                observed_generation: Some(if caught_up { 2 } else { 1 }),
                ..DaemonSetStatus::default()
            }),
        }
    }

    fn summary(status: &FanoutGroupStatus) -> Vec<(String, String, String)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn s(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn all_ready_is_ready_and_not_degraded_unless_the_endpoint_list_is_too_large() {
        let d = ds(3, 3, 3, true);
        let observed = Observed {
            generation: Some(7),
            daemon_set: Some(&d),
            published_endpoints: 3,
            problem: None,
            ..Observed::default()
        };
        let status = compute_status(&observed, None, t(100));
        assert_eq!(
            summary(&status),
            [
                s("Ready", "True", "AllProxiesReady"),
                s("Progressing", "False", "RolloutComplete"),
                s("Degraded", "False", "AsExpected")
            ]
        );
        assert_eq!(
            (
                status.desired_proxies,
                status.ready_proxies,
                status.published_endpoints
            ),
            (3, 3, 3)
        );
        assert_eq!(status.observed_generation, Some(7));
        assert!(status.conditions.iter().all(|c| c.observed_generation == Some(7)));

        // The same group with an endpoint list too large for its ConfigMap: degraded, but the
        // proxies (and the slices) are as ready as before.
        let too_large = Observed {
            endpoint_list_too_large: Some(1_100_000),
            ..observed
        };
        let status = compute_status(&too_large, None, t(100));
        assert_eq!(
            summary(&status),
            [
                s("Ready", "True", "AllProxiesReady"),
                s("Progressing", "False", "RolloutComplete"),
                s("Degraded", "True", ENDPOINT_LIST_TOO_LARGE)
            ]
        );
        let message = &status.conditions[2].message;
        assert!(
            message.contains("1100000 bytes") && message.contains("spec.configMap: false"),
            "{message}"
        );
    }

    #[test]
    fn rollout_is_progressing_not_degraded() {
        let d = ds(3, 1, 1, true);
        let observed = Observed {
            generation: Some(1),
            daemon_set: Some(&d),
            published_endpoints: 1,
            problem: None,
            ..Observed::default()
        };
        let status = compute_status(&observed, None, t(100));
        assert_eq!(
            summary(&status),
            [
                s("Ready", "False", "ProxiesNotReady"),
                s("Progressing", "True", "RollingOut"),
                s("Degraded", "False", "AsExpected")
            ]
        );
        let stale = ds(3, 3, 3, false);
        let observed = Observed {
            daemon_set: Some(&stale),
            ..observed
        };
        assert_eq!(
            compute_status(&observed, None, t(1)).conditions[1].reason,
            "RollingOut"
        );
    }

    #[test]
    fn unready_proxies_outside_a_rollout_are_degraded() {
        let d = ds(4, 3, 4, true);
        let observed = Observed {
            generation: Some(1),
            daemon_set: Some(&d),
            published_endpoints: 3,
            problem: None,
            ..Observed::default()
        };
        let status = compute_status(&observed, None, t(100));
        assert_eq!(status.conditions[2].reason, "ProxiesUnavailable");
        assert_eq!(status.conditions[2].message, "1 of 4 proxies not ready");
    }

    #[test]
    fn problem_makes_it_degraded_with_the_reason() {
        let observed = Observed {
            generation: Some(1),
            daemon_set: None,
            published_endpoints: 0,
            problem: Some(Problem {
                reason: "NoProxyImage".into(),
                message: "no image".into(),
            }),
            ..Observed::default()
        };
        let status = compute_status(&observed, None, t(100));
        assert_eq!(
            summary(&status),
            [
                s("Ready", "False", "NoProxyImage"),
                s("Progressing", "False", "NoProxyImage"),
                s("Degraded", "True", "NoProxyImage")
            ]
        );
    }

    #[test]
    fn no_nodes_and_not_created_yet_are_distinguished() {
        let none = Observed {
            generation: Some(1),
            ..Observed::default()
        };
        assert_eq!(compute_status(&none, None, t(1)).conditions[0].reason, "Creating");
        let d = ds(0, 0, 0, true);
        let empty = Observed {
            generation: Some(1),
            daemon_set: Some(&d),
            ..Observed::default()
        };
        assert_eq!(compute_status(&empty, None, t(1)).conditions[0].reason, "NoNodes");
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let d = ds(3, 2, 3, true);
        let observed = Observed {
            generation: Some(1),
            daemon_set: Some(&d),
            published_endpoints: 2,
            problem: None,
            ..Observed::default()
        };
        let first = compute_status(&observed, None, t(100));
        let again = compute_status(&observed, Some(&first), t(200));
        assert_eq!(first, again, "an unchanged observation gives an equal status");
        let healed = ds(3, 3, 3, true);
        let observed = Observed {
            daemon_set: Some(&healed),
            published_endpoints: 3,
            ..observed
        };
        let later = compute_status(&observed, Some(&again), t(300));
        assert_eq!(
            later.conditions[0].last_transition_time,
            Time(t(300)),
            "Ready flipped"
        );
        assert_eq!(
            later.conditions[1].last_transition_time,
            Time(t(100)),
            "Progressing stayed False"
        );
        assert_eq!(
            later.conditions[2].last_transition_time,
            Time(t(300)),
            "Degraded flipped"
        );
    }
}

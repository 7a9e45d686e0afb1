//! Pure: which changes deserve a Kubernetes Event. Proxies joining or leaving the published
//! list, and the group turning degraded or recovering. One event per kind per reconcile (names
//! capped), so a node storm gives a handful of events, not thousands.

use crate::controller::status::{DEGRADED, find};
use crate::crd::FanoutGroupStatus;
use std::collections::BTreeSet;

/// Names listed in one event before "and N more".
const NAMES_SHOWN: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

fn name_list(names: &[&String]) -> String {
    let shown: Vec<&str> = names.iter().take(NAMES_SHOWN).map(|name| name.as_str()).collect();
    let mut text = shown.join(", ");
    if names.len() > NAMES_SHOWN {
        text.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    text
}

/// `before`/`after`: pods with a ready published endpoint before and after this reconcile.
pub fn notices(
    before: &BTreeSet<String>,
    after: &BTreeSet<String>,
    old_status: Option<&FanoutGroupStatus>,
    new_status: &FanoutGroupStatus,
) -> Vec<Notice> {
    let mut out = Vec::new();
    let joined: Vec<&String> = after.difference(before).collect();
    let left: Vec<&String> = before.difference(after).collect();
    if !joined.is_empty() {
        out.push(Notice {
            warning: false,
            reason: "ProxiesJoined".into(),
            note: format!("{} proxies published: {}", joined.len(), name_list(&joined)),
        });
    }
    if !left.is_empty() {
        out.push(Notice {
            warning: false,
            reason: "ProxiesLeft".into(),
            note: format!("{} proxies withdrawn: {}", left.len(), name_list(&left)),
        });
    }
    let was = find(old_status, DEGRADED);
    let now = find(Some(new_status), DEGRADED);
    match (was.map(|c| (c.status.as_str(), c.reason.as_str())), now) {
        (old, Some(new)) if new.status == "True" && old != Some(("True", new.reason.as_str())) => {
            out.push(Notice {
                warning: true,
                reason: new.reason.clone(),
                note: new.message.clone(),
            })
        }
        (Some(("True", _)), Some(new)) if new.status != "True" => out.push(Notice {
            warning: false,
            reason: "Recovered".into(),
            note: "the group is no longer degraded".into(),
        }),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn degraded(status: &str, reason: &str) -> FanoutGroupStatus {
        FanoutGroupStatus {
            conditions: vec![Condition {
                type_: DEGRADED.into(),
                status: status.into(),
                reason: reason.into(),
                message: format!("{reason} message"),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..FanoutGroupStatus::default()
        }
    }

    #[test]
    fn joins_and_leaves_are_one_event_each() {
        let ok = degraded("False", "AsExpected");
        let notes = notices(&set(&["a", "b"]), &set(&["b", "c", "d"]), Some(&ok), &ok);
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0].reason, "ProxiesJoined");
        assert_eq!(notes[0].note, "2 proxies published: c, d");
        assert_eq!(notes[1].reason, "ProxiesLeft");
        assert_eq!(notes[1].note, "1 proxies withdrawn: a");
        assert!(notices(&set(&["a"]), &set(&["a"]), Some(&ok), &ok).is_empty());
    }

    #[test]
    fn long_lists_are_capped() {
        let many: BTreeSet<String> = (0..25).map(|i| format!("p{i:02}")).collect();
        let ok = degraded("False", "AsExpected");
        let notes = notices(&BTreeSet::new(), &many, None, &ok);
        assert!(notes[0].note.ends_with("p09 and 15 more"), "{}", notes[0].note);
    }

    #[test]
    fn degraded_warns_once_and_recovery_is_noted() {
        let ok = degraded("False", "AsExpected");
        let bad = degraded("True", "NoProxyImage");
        let empty = BTreeSet::new();
        let first = notices(&empty, &empty, Some(&ok), &bad);
        assert_eq!(
            first,
            [Notice {
                warning: true,
                reason: "NoProxyImage".into(),
                note: "NoProxyImage message".into()
            }]
        );
        assert!(
            notices(&empty, &empty, Some(&bad), &bad).is_empty(),
            "no repeat while unchanged"
        );
        let healed = notices(&empty, &empty, Some(&bad), &ok);
        assert_eq!(healed[0].reason, "Recovered");
        assert!(!healed[0].warning);
    }
}

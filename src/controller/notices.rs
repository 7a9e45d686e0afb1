//! Pure: which changes deserve a Kubernetes Event. Proxies joining or leaving the published
//! list, and the group turning degraded or recovering. One event per kind per report (names
//! capped), so a node storm gives a handful of events, not thousands; and the proxies' changes of
//! several passes fold into one report ([`ProxyChanges`]), so the controller publishes at most
//! one of each per group per report interval (`memory::REPORT_INTERVAL`).

use crate::controller::status::{DEGRADED, find};
use crate::crd::FanoutGroupStatus;
use std::collections::BTreeSet;

/// Names listed in one event before "and N more".
const NAMES_SHOWN: usize = 10;
pub const PROXIES_JOINED: &str = "ProxiesJoined";
pub const PROXIES_LEFT: &str = "ProxiesLeft";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
    /// The proxies (pod names) a `ProxiesJoined` / `ProxiesLeft` notice is about, all of them
    /// (the note names the first ten); empty for the others.
    pub pods: BTreeSet<String>,
}

impl Notice {
    fn about(warning: bool, reason: &str, note: String) -> Self {
        Self {
            warning,
            reason: reason.to_string(),
            note,
            pods: BTreeSet::new(),
        }
    }
}

fn name_list(names: &BTreeSet<String>) -> String {
    let shown: Vec<&str> = names.iter().take(NAMES_SHOWN).map(String::as_str).collect();
    let mut text = shown.join(", ");
    if names.len() > NAMES_SHOWN {
        text.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    text
}

/// Proxies that joined and left the published list since the last report, net of each other:
/// one that joined and left again (or left and came back) in between is in neither.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyChanges {
    joined: BTreeSet<String>,
    left: BTreeSet<String>,
}

impl ProxyChanges {
    /// The change from `before` to `after` (pods with a published endpoint).
    pub fn between(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Self {
        Self {
            joined: after.difference(before).cloned().collect(),
            left: before.difference(after).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty()
    }

    /// Folds in the proxy notices of a later pass (the other notices are not proxy changes).
    pub fn fold(&mut self, notices: &[Notice]) {
        for notice in notices {
            let (arrived, undone) = match notice.reason.as_str() {
                PROXIES_JOINED => (&mut self.joined, &mut self.left),
                PROXIES_LEFT => (&mut self.left, &mut self.joined),
                _ => continue,
            };
            for pod in &notice.pods {
                if !undone.remove(pod) {
                    arrived.insert(pod.clone());
                }
            }
        }
    }

    /// One notice for the proxies that joined, one for those that left (when any).
    pub fn notices(&self) -> Vec<Notice> {
        let mut out = Vec::new();
        if !self.joined.is_empty() {
            out.push(Notice {
                pods: self.joined.clone(),
                ..Notice::about(
                    false,
                    PROXIES_JOINED,
                    format!(
                        "{} proxies published: {}",
                        self.joined.len(),
                        name_list(&self.joined)
                    ),
                )
            });
        }
        if !self.left.is_empty() {
            out.push(Notice {
                pods: self.left.clone(),
                ..Notice::about(
                    false,
                    PROXIES_LEFT,
                    format!("{} proxies withdrawn: {}", self.left.len(), name_list(&self.left)),
                )
            });
        }
        out
    }
}

/// Whether a notice is about proxies joining or leaving (those fold across passes).
pub fn is_proxy_change(notice: &Notice) -> bool {
    notice.reason == PROXIES_JOINED || notice.reason == PROXIES_LEFT
}

/// `before`/`after`: pods with a ready published endpoint before and after this reconcile.
pub fn notices(
    before: &BTreeSet<String>,
    after: &BTreeSet<String>,
    old_status: Option<&FanoutGroupStatus>,
    new_status: &FanoutGroupStatus,
) -> Vec<Notice> {
    let mut out = ProxyChanges::between(before, after).notices();
    let was = find(old_status, DEGRADED);
    let now = find(Some(new_status), DEGRADED);
    match (was.map(|c| (c.status.as_str(), c.reason.as_str())), now) {
        (old, Some(new)) if new.status == "True" && old != Some(("True", new.reason.as_str())) => {
            out.push(Notice::about(true, &new.reason, new.message.clone()))
        }
        (Some(("True", _)), Some(new)) if new.status != "True" => out.push(Notice::about(
            false,
            "Recovered",
            "the group is no longer degraded".into(),
        )),
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
                note: "NoProxyImage message".into(),
                pods: BTreeSet::new(),
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

    #[test]
    fn proxy_changes_fold_across_passes_and_cancel_out() {
        let ok = degraded("False", "AsExpected");
        let mut pending = ProxyChanges::default();
        // Pass 1: a and b join; pass 2: c joins, a leaves again; pass 3: d leaves, then comes back.
        pending.fold(&notices(&set(&["d"]), &set(&["a", "b", "d"]), Some(&ok), &ok));
        pending.fold(&notices(
            &set(&["a", "b", "d"]),
            &set(&["b", "c", "d"]),
            Some(&ok),
            &ok,
        ));
        pending.fold(&notices(
            &set(&["b", "c", "d"]),
            &set(&["b", "c"]),
            Some(&ok),
            &ok,
        ));
        pending.fold(&notices(
            &set(&["b", "c"]),
            &set(&["b", "c", "d"]),
            Some(&ok),
            &ok,
        ));
        let folded = pending.notices();
        assert_eq!(folded.len(), 1, "{folded:?}");
        assert_eq!(folded[0].reason, PROXIES_JOINED);
        assert_eq!(folded[0].note, "2 proxies published: b, c");
        assert_eq!(folded[0].pods, set(&["b", "c"]));
        // A degraded warning is not a proxy change and does not fold.
        pending.fold(&notices(&set(&[]), &set(&[]), Some(&ok), &degraded("True", "X")));
        assert_eq!(pending.notices(), folded);
        pending.fold(&notices(&set(&["b", "c", "e"]), &set(&["e"]), Some(&ok), &ok));
        assert!(pending.is_empty(), "{pending:?}");
        assert!(is_proxy_change(&folded[0]));
    }
}

//! What `fanout endpoints` does: follows a membership source and prints every change with a
//! timestamp, as text lines or one JSON object a change. A debugging aid that shows exactly
//! what a publisher following the same group sees.

use super::{Membership, MembershipError, MembershipSource, diff};
use crate::endpoint_list::Endpoint;
use std::io::Write;
use tokio::sync::watch;

/// How each change is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum OutputFormat {
    /// `TIME joined E`, `TIME left E`, then `TIME members N`.
    #[default]
    Text,
    /// One JSON object a change: `{"time", "joined", "left", "members"}`.
    Json,
}

#[derive(serde::Serialize)]
struct JsonChange<'a> {
    time: &'a str,
    joined: &'a [Endpoint],
    left: &'a [Endpoint],
    members: &'a Membership,
}

/// The lines printed for the change from `old` to `new`, stamped with `now`.
pub fn render_change(now: &str, old: &Membership, new: &Membership, format: OutputFormat) -> Vec<String> {
    let change = diff(old, new);
    match format {
        OutputFormat::Text => {
            let mut lines: Vec<String> = change
                .joined
                .iter()
                .map(|e| format!("{now} joined {e}"))
                .collect();
            lines.extend(change.left.iter().map(|e| format!("{now} left {e}")));
            lines.push(format!("{now} members {}", new.len()));
            lines
        }
        OutputFormat::Json => {
            let line = serde_json::to_string(&JsonChange {
                time: now,
                joined: &change.joined,
                left: &change.left,
                members: new,
            });
            // Serialising strings and lists of strings cannot fail.
            vec![line.unwrap_or_default()]
        }
    }
}

/// Follows `source` and writes every change to `out` until the source ends, `out` is closed
/// (e.g. piped into `head`), or `stop` resolves.
pub async fn print_changes(
    source: Box<dyn MembershipSource>,
    format: OutputFormat,
    mut out: impl Write,
    stop: impl Future<Output = ()>,
) -> Result<(), MembershipError> {
    let (updates, mut changes) = watch::channel(Membership::new());
    let print = async move {
        let mut previous = Membership::new();
        while changes.changed().await.is_ok() {
            let members = changes.borrow_and_update().clone();
            let now = jiff::Timestamp::now().to_string();
            let lines = render_change(&now, &previous, &members, format);
            let written = lines
                .iter()
                .try_for_each(|line| writeln!(out, "{line}"))
                .and_then(|()| out.flush());
            if written.is_err() {
                // Nobody reads any more: dropping `changes` stops the source too.
                return;
            }
            previous = members;
        }
    };
    let (followed, ()) = tokio::select! {
        both = async { tokio::join!(source.run(updates), print) } => both,
        () = stop => (Ok(()), ()),
    };
    followed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::StaticSource;

    fn set(items: &[&str]) -> Membership {
        items.iter().map(|s| Endpoint::parse(s).unwrap()).collect()
    }

    #[test]
    fn a_change_prints_joins_leaves_and_the_size() {
        let old = set(&["tcp://10.0.0.1:7100", "tcp://10.0.0.2:7100"]);
        let new = set(&["tcp://10.0.0.2:7100", "tcp://10.0.0.3:7100"]);
        assert_eq!(
            render_change("T", &old, &new, OutputFormat::Text),
            vec![
                "T joined tcp://10.0.0.3:7100",
                "T left tcp://10.0.0.1:7100",
                "T members 2"
            ]
        );
        assert_eq!(
            render_change("T", &new, &new, OutputFormat::Text),
            vec!["T members 2"]
        );
    }

    #[test]
    fn json_is_one_object_a_change() {
        let old = set(&["tcp://10.0.0.1:7100"]);
        let new = set(&["tcp://10.0.0.2:7100"]);
        let lines = render_change("T", &old, &new, OutputFormat::Json);
        assert_eq!(lines.len(), 1);
        let value: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"time": "T", "joined": ["tcp://10.0.0.2:7100"],
                               "left": ["tcp://10.0.0.1:7100"], "members": ["tcp://10.0.0.2:7100"]})
        );
    }

    #[tokio::test]
    async fn a_static_source_prints_once_and_ends() {
        let source = StaticSource::new(vec!["tcp://10.0.0.1:7100".to_string()]).unwrap();
        let mut out = Vec::new();
        print_changes(
            Box::new(source),
            OutputFormat::Text,
            &mut out,
            std::future::pending(),
        )
        .await
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let tails: Vec<_> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(tails, ["joined tcp://10.0.0.1:7100", "members 1"]);
    }
}

//! `fanout endpoints`: follows a group's membership and prints every change with a timestamp.
//! A debugging aid that shows exactly what a publisher following the same group sees.

use crate::membership::kubernetes::{GroupObject, GroupSource};
use crate::membership::{Membership, MembershipSink, MembershipSource, diff};
use std::io::Write;
use std::sync::Mutex;

#[derive(clap::Args, Debug)]
pub struct EndpointsArgs {
    /// The FanoutGroup to follow.
    #[arg(long)]
    pub group: String,
    /// Its namespace (default: the kubeconfig context's namespace, or the pod's own).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Which object to follow: the EndpointSlices or the `<group>-endpoints` ConfigMap.
    #[arg(long, value_enum, default_value_t = GroupObject::Slices)]
    pub from: GroupObject,
}

/// One line per joined or left endpoint, then the new size, each stamped with `now`.
pub fn render_change(now: &str, old: &Membership, new: &Membership) -> Vec<String> {
    let change = diff(old, new);
    let mut lines: Vec<String> = change
        .joined
        .iter()
        .map(|e| format!("{now} joined {e}"))
        .collect();
    lines.extend(change.left.iter().map(|e| format!("{now} left {e}")));
    lines.push(format!("{now} members {}", new.len()));
    lines
}

pub fn run(args: EndpointsArgs) -> crate::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let source = Box::new(GroupSource::new(args.namespace, args.group, args.from));
    let previous = Mutex::new(None::<Membership>);
    let sink = MembershipSink::new(move |members| {
        let mut previous = previous.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = jiff::Timestamp::now().to_string();
        let lines = render_change(&now, previous.as_ref().unwrap_or(&Membership::new()), &members);
        let mut out = std::io::stdout().lock();
        for line in lines {
            // stdout closed (e.g. piped into `head`): stop following.
            writeln!(out, "{line}").map_err(|_| crate::membership::MembershipError::SinkClosed)?;
        }
        out.flush()
            .map_err(|_| crate::membership::MembershipError::SinkClosed)?;
        *previous = Some(members);
        Ok(())
    });
    runtime.block_on(async move {
        tokio::select! {
            result = source.run(sink) => result.map_err(crate::Error::from),
            _ = crate::shutdown::signal() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_prints_joins_leaves_and_the_size() {
        let old: Membership = ["tcp://10.0.0.1:7100", "tcp://10.0.0.2:7100"]
            .map(String::from)
            .into();
        let new: Membership = ["tcp://10.0.0.2:7100", "tcp://10.0.0.3:7100"]
            .map(String::from)
            .into();
        assert_eq!(
            render_change("T", &old, &new),
            vec![
                "T joined tcp://10.0.0.3:7100",
                "T left tcp://10.0.0.1:7100",
                "T members 2"
            ]
        );
        assert_eq!(render_change("T", &new, &new), vec!["T members 2"]);
    }
}

//! `fanout controller`: the operator's flags.

use crate::controller::ControllerConfig;
use crate::controller::leader::LeaseTimings;
use crate::controller::policy::{
    DEFAULT_SOCKET_ROOT, ProxyPolicy, is_normalized_absolute, parse_image_pattern,
};
use k8s_openapi::api::core::v1::Toleration;
use std::net::SocketAddr;
use std::time::Duration;

/// Tolerations as JSON (`[{"key": "dedicated", "operator": "Exists"}]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tolerations(pub Vec<Toleration>);

/// `--socket-root`: a normalized absolute path (a trailing `/` is dropped).
fn parse_socket_root(text: &str) -> Result<String, String> {
    let root = text.trim_end_matches('/');
    if is_normalized_absolute(root) {
        Ok(root.to_string())
    } else {
        Err(format!(
            "{text:?} is not a normalized absolute directory other than `/` (no `//`, `.` or `..`)"
        ))
    }
}

fn parse_tolerations(text: &str) -> Result<Tolerations, String> {
    serde_json::from_str(text)
        .map(Tolerations)
        .map_err(|err| format!("not a JSON list of tolerations: {err}"))
}

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Address of the /healthz, /readyz and /metrics endpoint.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// The controller's own proxy image (by digest when known): proxies of groups that set no
    /// spec.image run it, and the root init container of every proxy pod always does. Without
    /// it no DaemonSet is written.
    #[arg(long, env = "FANOUT_PROXY_IMAGE")]
    pub default_proxy_image: Option<String>,
    /// Another image spec.image may name: an exact reference, `REPO@*` (any digest of REPO),
    /// `REPO:*` (any tag of REPO), `PATH/*` (any repository below PATH) or `*`. Repeat for
    /// more. Default: only --default-proxy-image.
    #[arg(long = "allowed-proxy-image", value_name = "IMAGE", value_parser = parse_image_pattern)]
    pub allowed_proxy_images: Vec<String>,
    /// Every group's spec.socketDir must be this directory or below it; each group gets its
    /// own directory `<socketDir>/<namespace>.<name>`.
    #[arg(long, default_value = DEFAULT_SOCKET_ROOT, value_name = "DIR", value_parser = parse_socket_root)]
    pub socket_root: String,
    /// Allow groups to set spec.hostNetwork: true.
    #[arg(long)]
    pub allow_host_network: bool,
    /// A PriorityClass spec.priorityClassName may name. Repeat for more. Default: none.
    #[arg(long = "allowed-priority-class", value_name = "NAME")]
    pub allowed_priority_classes: Vec<String>,
    /// Tolerations (JSON list) of proxy pods whose group sets none. Default: none (the
    /// DaemonSet controller still adds its node-condition tolerations).
    #[arg(long, env = "FANOUT_PROXY_TOLERATIONS", default_value = "[]", value_parser = parse_tolerations)]
    pub default_proxy_tolerations: Tolerations,
    /// Allow proxy pods to tolerate the control-plane taint (and so run on control-plane nodes).
    #[arg(long)]
    pub allow_control_plane: bool,
    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, default_value = "fanout-controller")]
    pub lease_name: String,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Identity in the Lease (default: hostname and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a Lease lasts without renewal before a standby may take it (whole seconds).
    #[arg(long, default_value = "15s", value_parser = parse_duration, help_heading = "Leader election")]
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops writing (< lease duration).
    /// Every request of the election is bounded by what is left of it, so a hung connection
    /// ends leadership on time too.
    #[arg(long, default_value = "10s", value_parser = parse_duration, help_heading = "Leader election")]
    pub renew_deadline: Duration,
    /// How often every replica reads the Lease (< renew deadline).
    #[arg(long, default_value = "2s", value_parser = parse_duration, help_heading = "Leader election")]
    pub retry_period: Duration,
}

/// `15s`, `500ms`, `1m30s` (jiff's friendly duration format).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = text
        .parse()
        .map_err(|err| format!("not a duration like 15s or 500ms: {err}"))?;
    Duration::try_from(signed).map_err(|_| format!("a duration cannot be negative: {text}"))
}

impl ControllerArgs {
    pub fn policy(&self) -> ProxyPolicy {
        ProxyPolicy {
            own_image: self.default_proxy_image.clone(),
            allowed_images: self.allowed_proxy_images.clone(),
            socket_root: self.socket_root.clone(),
            allow_host_network: self.allow_host_network,
            allowed_priority_classes: self.allowed_priority_classes.clone(),
            default_tolerations: self.default_proxy_tolerations.0.clone(),
            allow_control_plane: self.allow_control_plane,
        }
    }

    pub fn run(self) -> crate::Result<()> {
        let lease_timings = LeaseTimings::new(self.lease_duration, self.renew_deadline, self.retry_period)
            .map_err(crate::controller::ControllerError::LeaseTimings)?;
        crate::controller::run(ControllerConfig {
            policy: self.policy(),
            namespace: self.namespace,
            http: self.http,
            lease_name: self.lease_name,
            lease_namespace: self.lease_namespace,
            identity: self.identity,
            lease_timings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    fn parse(argv: &[&str]) -> Result<ControllerArgs, clap::Error> {
        <Cli as clap::Parser>::try_parse_from(std::iter::once("x").chain(argv.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn policy_flags_default_to_the_narrowest() {
        let args = parse(&["--default-proxy-image", "reg/fanout@sha256:1"]).unwrap();
        assert_eq!(
            args.policy(),
            ProxyPolicy {
                own_image: Some("reg/fanout@sha256:1".into()),
                ..ProxyPolicy::default()
            }
        );
    }

    #[test]
    fn policy_flags_widen_what_the_admin_asks() {
        let args = parse(&[
            "--allowed-proxy-image",
            "a:1",
            "--allowed-proxy-image",
            "b/*",
            "--socket-root",
            "/var/run/fanout/prod",
            "--allow-host-network",
            "--allowed-priority-class",
            "system-node-critical",
            "--default-proxy-tolerations",
            r#"[{"key": "dedicated", "operator": "Exists"}]"#,
            "--allow-control-plane",
        ])
        .unwrap();
        let policy = args.policy();
        assert_eq!(policy.allowed_images, ["a:1", "b/*"]);
        assert_eq!(policy.socket_root, "/var/run/fanout/prod");
        assert!(policy.allow_host_network && policy.allow_control_plane);
        assert_eq!(policy.allowed_priority_classes, ["system-node-critical"]);
        assert_eq!(policy.default_tolerations[0].key.as_deref(), Some("dedicated"));
        let bad = parse(&["--default-proxy-tolerations", "{"]).unwrap_err();
        assert!(bad.to_string().contains("tolerations"), "{bad}");
        let sibling = parse(&["--allowed-proxy-image", "registry/fanout*"]).unwrap_err();
        assert!(sibling.to_string().contains("registry/fanout-evil"), "{sibling}");
        assert_eq!(
            parse(&["--socket-root", "/var/run/fanout/"])
                .unwrap()
                .policy()
                .socket_root,
            "/var/run/fanout"
        );
        for bad_root in ["/", "relative", "/var/../etc", "/var//run"] {
            assert!(parse(&["--socket-root", bad_root]).is_err(), "{bad_root}");
        }
    }
}

//! `fanout controller`: the operator's flags.

use crate::controller::ControllerConfig;
use crate::controller::leader::LeaseTimings;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Address of the /healthz, /readyz and /metrics endpoint.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Proxy image for groups that do not set spec.image.
    #[arg(long, env = "FANOUT_PROXY_IMAGE")]
    pub default_proxy_image: Option<String>,
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
    pub fn run(self) -> crate::Result<()> {
        let lease_timings = LeaseTimings::new(self.lease_duration, self.renew_deadline, self.retry_period)
            .map_err(crate::controller::ControllerError::LeaseTimings)?;
        crate::controller::run(ControllerConfig {
            namespace: self.namespace,
            http: self.http,
            default_proxy_image: self.default_proxy_image,
            lease_name: self.lease_name,
            lease_namespace: self.lease_namespace,
            identity: self.identity,
            lease_timings,
        })
    }
}

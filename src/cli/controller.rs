//! `fanout controller`: the operator's flags.

use crate::controller::ControllerConfig;
use std::net::SocketAddr;

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
}

impl ControllerArgs {
    pub fn run(self) -> crate::Result<()> {
        crate::controller::run(ControllerConfig {
            namespace: self.namespace,
            http: self.http,
            default_proxy_image: self.default_proxy_image,
            lease_name: self.lease_name,
            lease_namespace: self.lease_namespace,
            identity: self.identity,
        })
    }
}

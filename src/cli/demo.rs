//! `fanout demo`: the whole fabric on one machine.

use crate::demo::DemoOptions;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Proxies (nodes) at the start.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Messages per second from the publisher.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Length of the run in seconds.
    #[arg(long, default_value_t = 15.0)]
    pub seconds: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

impl DemoArgs {
    pub fn run(self) -> crate::Result<()> {
        Ok(crate::demo::run(DemoOptions {
            nodes: self.nodes,
            rate: self.rate,
            duration: super::publish::seconds("seconds", self.seconds)?,
            size: self.size,
        })?)
    }
}

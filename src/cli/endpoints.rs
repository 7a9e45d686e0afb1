//! `fanout endpoints`: follows a group's membership and prints every change.

use crate::membership::kubernetes::{GroupObject, GroupSource};
use crate::membership::print::{OutputFormat, print_changes};

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
    /// Output: text lines, or one JSON object a change.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl EndpointsArgs {
    pub fn run(self) -> crate::Result<()> {
        let source = Box::new(GroupSource::new(self.namespace, self.group, self.from));
        let stop = async {
            crate::runtime::shutdown_signal().await;
        };
        crate::runtime::block_on(print_changes(source, self.output, std::io::stdout(), stop))??;
        Ok(())
    }
}

//! The per-node proxy (skeleton: to be written).

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {}

pub fn run(_args: ProxyArgs) -> crate::Result<()> {
    Err(crate::Error::Other("fanout proxy is not written yet".into()))
}

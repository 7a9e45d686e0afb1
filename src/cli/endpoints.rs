//! `fanout endpoints` (skeleton: to be written).

#[derive(clap::Args, Debug)]
pub struct EndpointsArgs {}

pub fn run(_args: EndpointsArgs) -> crate::Result<()> {
    Err(crate::Error::Other("fanout endpoints is not written yet".into()))
}

//! `fanout publish` (skeleton: to be written).

#[derive(clap::Args, Debug)]
pub struct PublishArgs {}

pub fn run(_args: PublishArgs) -> crate::Result<()> {
    Err(crate::Error::Other("fanout publish is not written yet".into()))
}

//! `fanout subscribe` (skeleton: to be written).

#[derive(clap::Args, Debug)]
pub struct SubscribeArgs {}

pub fn run(_args: SubscribeArgs) -> crate::Result<()> {
    Err(crate::Error::Other("fanout subscribe is not written yet".into()))
}

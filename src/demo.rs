//! `fanout demo` (skeleton: to be written).

#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> crate::Result<()> {
    Err(crate::Error::Other("fanout demo is not written yet".into()))
}
